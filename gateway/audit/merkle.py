"""The Merkle tree of the credit ledger, hashed exactly as RFC 9162 (and RFC 6962) say.

Every ledger transaction is one leaf. With SHA-256:

    leaf hash   = SHA-256(0x00 || leaf bytes)
    node hash   = SHA-256(0x01 || left || right)
    empty tree  = SHA-256("")

A tree of n > 1 leaves splits at k, the largest power of two smaller than n: the left
subtree holds leaves [0, k), the right one [k, n). Because the left part of every split is
a full, aligned power-of-two subtree, its hash never changes once those leaves exist; that
is what makes an append-only log checkable by anyone holding an old root.

Three pieces:
- `LogTree`: the log as it grows. It keeps only the right edge (one hash per set bit of the
  size), so an append and the current root cost O(log n), and the edge can be saved and
  restored instead of re-reading every leaf at start-up.
- `TreeView`: proofs over stored leaf hashes (a list, or a lazy sequence backed by SQLite)
  for any tree size up to their count: inclusion proofs (RFC 9162 §2.1.3.1) and
  consistency proofs (§2.1.4.1).
- `verify_inclusion` / `verify_consistency`: the RFC's verification algorithms
  (§2.1.3.2, §2.1.4.2). They need only the proof, the sizes and the roots, never the tree.

Hashes are 32-byte `bytes` throughout; hex or base64 belong to the file formats.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

HASH_SIZE = 32
LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
EMPTY_ROOT = hashlib.sha256(b"").digest()

#: Full aligned subtrees at least this large are remembered by `TreeView` (their hash is
#: final). 1M leaves cost about 32,000 cache entries (3 MB); a proof then hashes at most a
#: hundred or so nodes of its own.
CACHE_MIN_SIZE = 64

_sha256 = hashlib.sha256


class AuditError(Exception):
    """Something in the audit log or in a proof does not hold. The message says what."""


class ProofError(AuditError):
    """A proof that is malformed or does not lead to the claimed root."""


def leaf_hash(leaf: bytes) -> bytes:
    """The hash of one leaf: SHA-256(0x00 || leaf)."""
    return _sha256(LEAF_PREFIX + leaf).digest()


def node_hash(left: bytes, right: bytes) -> bytes:
    """The hash of an interior node: SHA-256(0x01 || left || right)."""
    return _sha256(NODE_PREFIX + left + right).digest()


def split_point(n: int) -> int:
    """The largest power of two smaller than n (n >= 2): the size of the left subtree."""
    return 1 << ((n - 1).bit_length() - 1)


def root_of(leaf_hashes: Sequence[bytes]) -> bytes:
    """The Merkle Tree Hash of these leaf hashes, computed level by level.

    Pairing neighbours and carrying an odd last node up unchanged gives the same tree as the
    RFC's recursive split (the right edge is the only ragged part), in one pass per level.
    """
    level = list(leaf_hashes)
    if not level:
        return EMPTY_ROOT
    while len(level) > 1:
        level = _pair_up(level)
    return level[0]


def _pair_up(level: list[bytes]) -> list[bytes]:
    sha, prefix = _sha256, NODE_PREFIX
    paired = [sha(prefix + level[i] + level[i + 1]).digest() for i in range(0, len(level) - 1, 2)]
    if len(level) % 2:
        paired.append(level[-1])
    return paired


class LogTree:
    """The append-only log's current shape: its size and the hashes of its right edge.

    The edge ("frontier") holds the roots of the full subtrees the leaves fall into, from the
    largest to the smallest: for 13 = 8 + 4 + 1 leaves, three hashes. Appending a leaf merges
    equal-sized subtrees like carrying in binary addition.
    """

    __slots__ = ("_frontier", "_size")

    def __init__(self) -> None:
        self._size = 0
        self._frontier: list[bytes] = []

    @classmethod
    def restore(cls, size: int, frontier: Sequence[bytes]) -> LogTree:
        """A tree from a saved `size` and `frontier` (one hash per set bit of size)."""
        if size < 0 or len(frontier) != size.bit_count():
            raise AuditError(f"a frontier of {len(frontier)} hashes cannot belong to a tree of {size} leaves")
        if any(len(h) != HASH_SIZE for h in frontier):
            raise AuditError("frontier hashes must be 32 bytes")
        tree = cls()
        tree._size, tree._frontier = size, list(frontier)
        return tree

    @classmethod
    def of(cls, leaf_hashes: Sequence[bytes]) -> LogTree:
        tree = cls()
        for h in leaf_hashes:
            tree.append(h)
        return tree

    @property
    def size(self) -> int:
        return self._size

    @property
    def frontier(self) -> tuple[bytes, ...]:
        return tuple(self._frontier)

    def append(self, leaf_hash_: bytes) -> int:
        """Add one leaf (its hash, see `leaf_hash`); returns its index."""
        index, carry, h = self._size, self._size, leaf_hash_
        while carry & 1:
            h = node_hash(self._frontier.pop(), h)
            carry >>= 1
        self._frontier.append(h)
        self._size += 1
        return index

    def root(self) -> bytes:
        """The root hash of the whole log: the frontier folded from the right."""
        if not self._frontier:
            return EMPTY_ROOT
        r = self._frontier[-1]
        for h in reversed(self._frontier[:-1]):
            r = node_hash(h, r)
        return r


class TreeView:
    """Roots and proofs for any size m <= len(leaf_hashes), from the stored leaf hashes.

    `leaf_hashes` must support `len()` and slicing (`leaf_hashes[a:b]`) and must not change
    while the view is in use: the log is append-only, so growing it is fine, rewriting it
    is exactly what the proofs exist to expose. Hashes of full aligned subtrees of at least
    `cache_min_size` leaves are cached, so many proofs over one large log stay cheap.
    """

    def __init__(self, leaf_hashes: Sequence[bytes], *, cache_min_size: int = CACHE_MIN_SIZE) -> None:
        self._leaves = leaf_hashes
        self._cache: dict[tuple[int, int], bytes] = {}
        self._cache_min = max(2, cache_min_size)

    def __len__(self) -> int:
        return len(self._leaves)

    def root(self, size: int | None = None) -> bytes:
        """MTH of the first `size` leaves (all of them by default)."""
        n = len(self._leaves) if size is None else self._check_size(size)
        return self._hash(0, n) if n else EMPTY_ROOT

    def inclusion_proof(self, index: int, size: int | None = None) -> list[bytes]:
        """The audit path of leaf `index` in the tree of the first `size` leaves (RFC 9162 §2.1.3.1)."""
        n = len(self._leaves) if size is None else self._check_size(size)
        if not 0 <= index < n:
            raise ProofError(f"leaf {index} is not in a tree of {n} leaves")
        return self._path(index, 0, n)

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> list[bytes]:
        """The proof that the tree of `old_size` leaves is a prefix of the one of `new_size` (§2.1.4.1).

        Empty when old_size is 0 or equal to new_size: nothing needs proving then.
        """
        n = len(self._leaves) if new_size is None else self._check_size(new_size)
        if not 0 <= old_size <= n:
            raise ProofError(f"cannot prove size {old_size} consistent with the larger-or-equal size {n}")
        if old_size in (0, n):
            return []
        return self._subproof(old_size, 0, n, True)

    def _check_size(self, size: int) -> int:
        if not 0 <= size <= len(self._leaves):
            raise ProofError(f"tree size {size} is beyond the {len(self._leaves)} leaves stored")
        return size

    def _path(self, m: int, start: int, n: int) -> list[bytes]:
        # PATH(m, D[start:start+n]), written with offsets instead of list copies.
        if n == 1:
            return []
        k = split_point(n)
        if m < k:
            return [*self._path(m, start, k), self._hash(start + k, n - k)]
        return [*self._path(m - k, start + k, n - k), self._hash(start, k)]

    def _subproof(self, m: int, start: int, n: int, whole: bool) -> list[bytes]:
        # SUBPROOF(m, D[start:start+n], b) of RFC 9162 §2.1.4.1.
        if m == n:
            return [] if whole else [self._hash(start, n)]
        k = split_point(n)
        if m <= k:
            return [*self._subproof(m, start, k, whole), self._hash(start + k, n - k)]
        return [*self._subproof(m - k, start + k, n - k, False), self._hash(start, k)]

    def _hash(self, start: int, n: int) -> bytes:
        """MTH of leaves [start, start + n): full power-of-two subtrees cached, the ragged edge split."""
        if n & (n - 1) == 0:
            return self._full(start, n)
        k = split_point(n)
        return node_hash(self._full(start, k), self._hash(start + k, n - k))

    def _full(self, start: int, n: int) -> bytes:
        if n < self._cache_min:
            return root_of(self._leaves[start : start + n])
        key = (start, n)
        cached = self._cache.get(key)
        if cached is None:
            half = n // 2
            cached = node_hash(self._full(start, half), self._full(start + half, half))
            self._cache[key] = cached
        return cached


def root_from_inclusion_proof(index: int, size: int, leaf_hash_: bytes, proof: Sequence[bytes]) -> bytes:
    """The root an audit path leads to, per RFC 9162 §2.1.3.2; raises ProofError if malformed."""
    if not 0 <= index < size:
        raise ProofError(f"leaf index {index} is outside a tree of {size} leaves")
    _check_hashes([leaf_hash_, *proof])
    fn, sn, r = index, size - 1, leaf_hash_
    for p in proof:
        if sn == 0:
            raise ProofError(f"the audit path is too long: {len(proof)} hashes for leaf {index} of {size}")
        if fn & 1 or fn == sn:
            r = node_hash(p, r)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            r = node_hash(r, p)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the audit path is too short: {len(proof)} hashes for leaf {index} of {size}")
    return r


def verify_inclusion(index: int, size: int, leaf_hash_: bytes, proof: Sequence[bytes], root: bytes) -> None:
    """Raise ProofError unless `proof` shows leaf `index` of a `size`-leaf tree is under `root`."""
    if root_from_inclusion_proof(index, size, leaf_hash_, proof) != root:
        raise ProofError(f"the audit path of leaf {index} does not lead to the root of the tree of size {size}")


def verify_consistency(old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes) -> None:
    """Raise ProofError unless `proof` shows the `old_size` tree is a prefix of the `new_size` one.

    RFC 9162 §2.1.4.2 for 0 < old_size < new_size; the edge cases are decided here: equal
    sizes need equal roots and an empty proof, size 0 needs the empty-tree root.
    """
    _check_hashes([old_root, new_root, *proof])
    if not 0 <= old_size <= new_size:
        raise ProofError(f"size {new_size} cannot extend the larger size {old_size}: a log never shrinks")
    if old_size in (0, new_size):
        _verify_trivial_consistency(old_size, new_size, proof, old_root, new_root)
        return
    old_calc, new_calc = _roots_from_consistency_proof(old_size, new_size, proof, old_root)
    if old_calc != old_root:
        raise ProofError(f"the consistency proof does not lead to the root of size {old_size}")
    if new_calc != new_root:
        raise ProofError(f"the tree of size {new_size} does not extend the tree of size {old_size}")


def _verify_trivial_consistency(
    old_size: int, new_size: int, proof: Sequence[bytes], old_root: bytes, new_root: bytes
) -> None:
    if proof:
        raise ProofError(f"the consistency proof from {old_size} to {new_size} must be empty")
    if old_size == 0 and old_root != EMPTY_ROOT:
        raise ProofError("a tree of size 0 must have the empty-tree root")
    if old_size == new_size and old_root != new_root:
        raise ProofError(f"two different roots for the same tree size {old_size}: the log has forked")


def _roots_from_consistency_proof(
    first: int, second: int, proof: Sequence[bytes], first_hash: bytes
) -> tuple[bytes, bytes]:
    # RFC 9162 §2.1.4.2, steps 1-7, with 0 < first < second.
    if not proof:
        raise ProofError(f"the consistency proof from {first} to {second} is empty")
    path = [first_hash, *proof] if first & (first - 1) == 0 else list(proof)
    fn, sn = first - 1, second - 1
    while fn & 1:
        fn, sn = fn >> 1, sn >> 1
    fr = sr = path[0]
    for c in path[1:]:
        if sn == 0:
            raise ProofError(f"the consistency proof from {first} to {second} is too long")
        if fn & 1 or fn == sn:
            fr, sr = node_hash(c, fr), node_hash(c, sr)
            while not fn & 1 and fn != 0:
                fn, sn = fn >> 1, sn >> 1
        else:
            sr = node_hash(sr, c)
        fn, sn = fn >> 1, sn >> 1
    if sn != 0:
        raise ProofError(f"the consistency proof from {first} to {second} is too short")
    return fr, sr


def _check_hashes(hashes: Sequence[bytes]) -> None:
    for h in hashes:
        if len(h) != HASH_SIZE:
            raise ProofError(f"a hash of {len(h)} bytes where SHA-256 gives {HASH_SIZE}")
