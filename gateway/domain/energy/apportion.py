"""Integer splits whose parts add up exactly: the largest remainder method.

Every share in the energy domain is an integer (mWh, mg) cut from an integer whole. A plain
`round()` of each share loses or invents a unit now and then; the largest remainder method
gives each part the floor of its exact share and hands the units left over, one each, to the
parts with the largest fractional remainders. Ties go to the earlier part, so the same
inputs always give the same split.
"""

from __future__ import annotations

from collections.abc import Sequence


def split(total: int, weights: Sequence[int]) -> list[int]:
    """`total` cut in proportion to `weights` (integers >= 0); the parts sum to `total` exactly.

    A negative total is split like its opposite and negated. When every weight is zero there
    is no proportion to follow: the whole goes to the last part (by convention the grid, or
    the machine's unattributed account; see the README).
    """
    n = len(weights)
    if total < 0:
        return [-p for p in split(-total, weights)]
    wsum = sum(weights)
    if wsum <= 0:
        return [0] * (n - 1) + [total]
    parts = [0] * n
    rems = [0] * n
    given = 0
    for i, w in enumerate(weights):
        q, r = divmod(total * w, wsum)
        parts[i] = q
        rems[i] = r
        given += q
    left = total - given
    if left:
        order = sorted(range(n), key=lambda i: (-rems[i], i))
        for i in order[:left]:
            parts[i] += 1
    return parts


def split_pair(total: int, a: int, b: int) -> int:
    """The first of two parts of `total` split a : b (the second is `total` minus it).

    The hot-path version of `split(total, [a, b])` (same result), for the battery pool.
    """
    wsum = a + b
    if wsum <= 0:
        return 0
    if total < 0:
        return -split_pair(-total, a, b)
    q, r = divmod(total * a, wsum)
    # The other part's remainder is wsum - r when r > 0; the first part wins ties.
    return q + 1 if r and r * 2 >= wsum else q


def split4(total: int, w0: int, w1: int, w2: int, w3: int) -> tuple[int, int, int, int]:
    """The hot-path version of `split(total, [w0, w1, w2, w3])` (same result), for source mixes."""
    ws = w0 + w1 + w2 + w3
    if ws <= 0:
        return 0, 0, 0, total
    if total < 0:
        a, b, c, d = split4(-total, w0, w1, w2, w3)
        return -a, -b, -c, -d
    q = [0, 0, 0, 0]
    r = [0, 0, 0, 0]
    q[0], r[0] = divmod(total * w0, ws)
    q[1], r[1] = divmod(total * w1, ws)
    q[2], r[2] = divmod(total * w2, ws)
    q[3], r[3] = divmod(total * w3, ws)
    left = total - q[0] - q[1] - q[2] - q[3]
    while left:
        i = r.index(max(r))
        q[i] += 1
        r[i] = -1
        left -= 1
    return q[0], q[1], q[2], q[3]
