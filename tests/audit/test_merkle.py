"""RFC 9162 Merkle hashing and proofs: published vectors, an independent reference, every size up to 200."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from typing import Any, overload

import pytest

from gateway.audit import merkle
from gateway.audit.merkle import (
    EMPTY_ROOT,
    LogTree,
    ProofError,
    TreeView,
    leaf_hash,
    root_from_inclusion_proof,
    root_of,
    verify_consistency,
    verify_inclusion,
)

# The Certificate Transparency test data, as published in transparency-dev/merkle
# proof/verify_test.go (inherited from the RFC 6962 reference implementation's
# merkle_tree_test.cc). Copied from there, not recomputed: these are what every other
# CT implementation agrees on. Leaf numbers in that file are 1-based; here they are 0-based.
CT_LEAVES = [
    bytes.fromhex(h)
    for h in ["", "00", "10", "2021", "3031", "40414243", "5051525354555657", "606162636465666768696a6b6c6d6e6f"]
]
CT_ROOTS = [  # index = tree size
    "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
    "6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
    "fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125",
    "aeb6bcfe274b70a14fb067a5e5578264db0fa9b51af5e0ba159158f329e06e77",
    "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7",
    "4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4",
    "76e67dadbcdf1e10e1b74ddc608abd2f98dfb16fbce75277b5232a127f2087ef",
    "ddb89be403809e325750d3d263cd78929c2942b7942a34b77e122c9594a74c8c",
    "5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328",
]
CT_INCLUSION = [  # (leaf index, tree size, audit path)
    (0, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (5, 8, ["bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 3, ["fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125"]),
    (1, 5, ["6e340b9cffb37a989ca544e6bb780a2c78901d3fb33738768511a30617afa01d",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (0, 1, []),
]  # fmt: skip
CT_CONSISTENCY = [  # (old size, new size, consistency proof)
    (1, 1, []),
    (1, 8, ["96a296d224f285c67bee93c30f8a309157f0daa35dc5b87e410b78630a09cfc7",
            "5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "6b47aaf29ee3c2af9af889bc1fb9254dabd31177f16232dd6aab035ca39bf6e4"]),
    (6, 8, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "ca854ea128ed050b41b35ffc1b87b8eb2bde461e9e3b5596ece6b9d5975a0ae0",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
    (2, 5, ["5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e",
            "bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"]),
    (6, 7, ["0ebc5d3437fbe2db158b9f126a1d118e308181031d0a949f8dededebc558ef6a",
            "b08693ec2e721597130641e8211e7eedccb4c26413963eee6c1e2ed16ffb1a5f",
            "d37ee418976dd95753c1c73862b9398fa2a2cf9b4ff0fdfe8b30cd95209614b7"]),
]  # fmt: skip
CT_HASHES = [leaf_hash(d) for d in CT_LEAVES]


# ---- an independent reference: the RFC's definitions, word for word, on lists ----


def ref_mth(d: list[bytes]) -> bytes:
    """MTH(D[n]) of RFC 9162 §2.1.1, on the leaves themselves (not their hashes)."""
    if not d:
        return hashlib.sha256(b"").digest()
    if len(d) == 1:
        return hashlib.sha256(b"\x00" + d[0]).digest()
    k = 1
    while k * 2 < len(d):
        k *= 2
    return hashlib.sha256(b"\x01" + ref_mth(d[:k]) + ref_mth(d[k:])).digest()


def ref_path(m: int, d: list[bytes]) -> list[bytes]:
    """PATH(m, D[n]) of §2.1.3.1."""
    if len(d) == 1:
        return []
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m < k:
        return [*ref_path(m, d[:k]), ref_mth(d[k:])]
    return [*ref_path(m - k, d[k:]), ref_mth(d[:k])]


def ref_subproof(m: int, d: list[bytes], b: bool) -> list[bytes]:
    """SUBPROOF(m, D[n], b) of §2.1.4.1."""
    if m == len(d):
        return [] if b else [ref_mth(d)]
    k = 1
    while k * 2 < len(d):
        k *= 2
    if m <= k:
        return [*ref_subproof(m, d[:k], b), ref_mth(d[k:])]
    return [*ref_subproof(m - k, d[k:], False), ref_mth(d[:k])]


def data(n: int) -> list[bytes]:
    return [i.to_bytes(4, "big") * (i % 3) for i in range(n)]


# ---- published vectors ----


def test_hashing_primitives() -> None:
    assert EMPTY_ROOT.hex() == CT_ROOTS[0]
    assert leaf_hash(b"").hex() == CT_ROOTS[1]  # a one-leaf tree's root is its leaf hash
    assert merkle.node_hash(CT_HASHES[0], CT_HASHES[1]).hex() == CT_ROOTS[2]


@pytest.mark.parametrize("size", range(9))
def test_roots_match_published_vectors(size: int) -> None:
    assert root_of(CT_HASHES[:size]).hex() == CT_ROOTS[size]
    assert LogTree.of(CT_HASHES[:size]).root().hex() == CT_ROOTS[size]
    assert TreeView(CT_HASHES).root(size).hex() == CT_ROOTS[size]
    assert ref_mth(CT_LEAVES[:size]).hex() == CT_ROOTS[size]


@pytest.mark.parametrize(("index", "size", "path"), CT_INCLUSION)
def test_inclusion_proofs_match_published_vectors(index: int, size: int, path: list[str]) -> None:
    assert [h.hex() for h in TreeView(CT_HASHES).inclusion_proof(index, size)] == path
    verify_inclusion(index, size, CT_HASHES[index], [bytes.fromhex(h) for h in path], bytes.fromhex(CT_ROOTS[size]))


@pytest.mark.parametrize(("old", "new", "proof"), CT_CONSISTENCY)
def test_consistency_proofs_match_published_vectors(old: int, new: int, proof: list[str]) -> None:
    assert [h.hex() for h in TreeView(CT_HASHES).consistency_proof(old, new)] == proof
    roots = bytes.fromhex(CT_ROOTS[old]), bytes.fromhex(CT_ROOTS[new])
    verify_consistency(old, new, [bytes.fromhex(h) for h in proof], *roots)


def test_reference_reproduces_published_proofs() -> None:
    """The in-test reference agrees with the vectors, so agreeing with it below means something."""
    for index, size, path in CT_INCLUSION:
        assert [h.hex() for h in ref_path(index, CT_LEAVES[:size])] == path
    for old, new, proof in CT_CONSISTENCY:
        got = [] if old == new else ref_subproof(old, CT_LEAVES[:new], True)
        assert [h.hex() for h in got] == proof


# ---- against the reference, and every size up to 200 ----


@pytest.mark.parametrize("cache_min_size", [2, merkle.CACHE_MIN_SIZE])
def test_proofs_equal_the_reference_for_every_size_up_to_40(cache_min_size: int) -> None:
    leaves = data(40)
    view = TreeView([leaf_hash(x) for x in leaves], cache_min_size=cache_min_size)
    for n in range(1, 41):
        assert view.root(n) == ref_mth(leaves[:n])
        for m in range(n):
            assert view.inclusion_proof(m, n) == ref_path(m, leaves[:n])
        for m in range(1, n):
            assert view.consistency_proof(m, n) == ref_subproof(m, leaves[:n], True)


def test_every_proof_verifies_for_every_size_up_to_200() -> None:
    hashes = [leaf_hash(x) for x in data(200)]
    view = TreeView(hashes, cache_min_size=2)  # cache every full subtree: 40,000 proofs in a blink
    growing, roots = LogTree(), [EMPTY_ROOT]
    for h in hashes:
        growing.append(h)
        roots.append(growing.root())
    for n in range(1, 201):
        assert roots[n] == root_of(hashes[:n])
        for m in range(n):
            verify_inclusion(m, n, hashes[m], view.inclusion_proof(m, n), roots[n])
        for m in range(n + 1):
            verify_consistency(m, n, view.consistency_proof(m, n), roots[m], roots[n])


# ---- tampering: the probes of transparency-dev/merkle's verifier tests ----

SOME_HASH = bytes.fromhex("abacaba000000000000000000000000000000000000000000060061e00123456")


def flipped(proof: list[bytes], i: int) -> list[bytes]:
    return [bytes([h[0] ^ 8]) + h[1:] if j == i else h for j, h in enumerate(proof)]


def inclusion_probes(index: int, size: int, leaf: bytes, proof: list[bytes], root: bytes) -> Iterator[tuple[Any, ...]]:
    yield index - 1, size, leaf, proof, root
    yield index + 1, size, leaf, proof, root
    yield index ^ 2, size, leaf, proof, root
    yield index, size * 2, leaf, proof, root
    yield index, size // 2, leaf, proof, root
    yield index, size, SOME_HASH, proof, root
    yield index, size, leaf, proof, EMPTY_ROOT
    yield index, size, leaf, proof, SOME_HASH
    yield index, size, leaf, [*proof, root], root
    yield index, size, leaf, [root, *proof], root
    yield index, size, leaf, proof[:-1], root
    yield index, size, leaf, [SOME_HASH, *proof[1:]], root
    for i in range(len(proof)):
        yield index, size, leaf, flipped(proof, i), root


@pytest.mark.parametrize("size", [2, 3, 5, 8, 13, 64, 100, 197])
def test_tampered_inclusion_proofs_are_rejected(size: int) -> None:
    hashes = [leaf_hash(x) for x in data(size)]
    view, root = TreeView(hashes), root_of(hashes)
    for index in range(size):
        proof = view.inclusion_proof(index)
        for probe in inclusion_probes(index, size, hashes[index], proof, root):
            with pytest.raises(ProofError):
                verify_inclusion(*probe)


def consistency_probes(m: int, n: int, proof: list[bytes], r1: bytes, r2: bytes) -> Iterator[tuple[Any, ...]]:
    yield m - 1, n, proof, r1, r2
    yield m + 1, n, proof, r1, r2
    yield m ^ 2, n, proof, r1, r2
    yield m, n * 2, proof, r1, r2
    yield m, n // 2, proof, r1, r2
    yield m, n, proof, SOME_HASH, r2
    yield m, n, proof, r1, SOME_HASH
    yield m, n, proof, r2, r1
    yield m, n, [], r1, r2
    yield m, n, [*proof, r1], r1, r2
    yield m, n, [*proof, r2], r1, r2
    yield m, n, [r1, *proof], r1, r2
    yield m, n, [r2, *proof], r1, r2
    yield m, n, [proof[0], *proof], r1, r2
    yield m, n, proof[:-1], r1, r2
    for i in range(len(proof)):
        yield m, n, flipped(proof, i), r1, r2


@pytest.mark.parametrize("n", [2, 3, 7, 8, 9, 33, 150])
def test_tampered_consistency_proofs_are_rejected(n: int) -> None:
    hashes = [leaf_hash(x) for x in data(n)]
    view = TreeView(hashes)
    for m in range(1, n):
        proof, r1, r2 = view.consistency_proof(m, n), view.root(m), view.root(n)
        for probe in consistency_probes(m, n, proof, r1, r2):
            with pytest.raises(ProofError):
                verify_consistency(*probe)


def test_a_rewritten_leaf_breaks_consistency_with_the_old_root() -> None:
    hashes = [leaf_hash(x) for x in data(50)]
    old_root = root_of(hashes[:30])
    rewritten = [*hashes[:12], leaf_hash(b"a different transaction"), *hashes[13:]]
    view = TreeView(rewritten)
    with pytest.raises(ProofError, match="does not lead to the root of size 30"):
        verify_consistency(30, 50, view.consistency_proof(30, 50), old_root, view.root())


def test_edge_cases_of_consistency() -> None:
    r = root_of(CT_HASHES[:3])
    verify_consistency(0, 3, [], EMPTY_ROOT, r)
    verify_consistency(3, 3, [], r, r)
    verify_consistency(0, 0, [], EMPTY_ROOT, EMPTY_ROOT)
    with pytest.raises(ProofError, match="forked"):
        verify_consistency(3, 3, [], r, SOME_HASH)
    with pytest.raises(ProofError, match="never shrinks"):
        verify_consistency(3, 2, [], r, r)
    with pytest.raises(ProofError, match="must be empty"):
        verify_consistency(3, 3, [r], r, r)
    with pytest.raises(ProofError, match="empty-tree root"):
        verify_consistency(0, 3, [], SOME_HASH, r)
    with pytest.raises(ProofError, match="32"):
        verify_consistency(3, 3, [], r[:31], r)


def test_edge_cases_of_inclusion() -> None:
    for index, size in [(0, 0), (1, 0), (2, 1), (-1, 4)]:
        with pytest.raises(ProofError):
            root_from_inclusion_proof(index, size, SOME_HASH, [])
    verify_inclusion(0, 1, CT_HASHES[0], [], CT_HASHES[0])
    with pytest.raises(ProofError, match="32"):
        verify_inclusion(0, 1, b"short", [], CT_HASHES[0])
    view = TreeView(CT_HASHES)
    with pytest.raises(ProofError):
        view.inclusion_proof(8, 8)
    with pytest.raises(ProofError):
        view.inclusion_proof(0, 9)
    with pytest.raises(ProofError):
        view.consistency_proof(5, 4)


# ---- the incremental log and large, lazy stores ----


def test_log_tree_appends_and_restores_from_its_frontier() -> None:
    hashes = [leaf_hash(x) for x in data(300)]
    tree = LogTree()
    for i, h in enumerate(hashes):
        assert tree.append(h) == i
        assert len(tree.frontier) == (i + 1).bit_count()
        if i % 37 == 0:
            restored = LogTree.restore(tree.size, tree.frontier)
            assert restored.root() == tree.root() == root_of(hashes[: i + 1])
            restored.append(hashes[0])
            tree_copy = LogTree.of([*hashes[: i + 1], hashes[0]])
            assert restored.root() == tree_copy.root()
    assert LogTree().root() == EMPTY_ROOT


def test_log_tree_refuses_a_frontier_that_cannot_fit_its_size() -> None:
    with pytest.raises(merkle.AuditError):
        LogTree.restore(5, [SOME_HASH])
    with pytest.raises(merkle.AuditError):
        LogTree.restore(1, [b"short"])


class LazyLeaves(Sequence[bytes]):
    """Leaf hashes made on demand, like a sequence backed by a database; counts reads."""

    def __init__(self, n: int) -> None:
        self.n = n
        self.reads = 0

    def __len__(self) -> int:
        return self.n

    @overload
    def __getitem__(self, i: int) -> bytes: ...
    @overload
    def __getitem__(self, i: slice) -> Sequence[bytes]: ...
    def __getitem__(self, i: int | slice) -> bytes | Sequence[bytes]:
        if isinstance(i, slice):
            rows = range(self.n)[i]
            self.reads += len(rows)
            return [leaf_hash(j.to_bytes(8, "big")) for j in rows]
        self.reads += 1
        return leaf_hash(range(self.n)[i].to_bytes(8, "big"))


def test_a_lazy_store_of_many_leaves_caches_full_subtrees() -> None:
    n = 20_000
    store = LazyLeaves(n)
    view = TreeView(store)
    root = view.root()
    assert root == LogTree.of(store[0:n]).root()
    store.reads = 0
    for index in range(0, n, 1999):
        verify_inclusion(index, n, store[index], view.inclusion_proof(index), root)
    # each proof re-reads only the uncached leaves near its own: far fewer than the 20,000
    assert store.reads < 10 * 2 * merkle.CACHE_MIN_SIZE + 20
    verify_consistency(12_345, n, view.consistency_proof(12_345), view.root(12_345), root)


def test_a_view_stays_right_as_the_log_grows() -> None:
    hashes = [leaf_hash(x) for x in data(600)]
    stored = hashes[:300]
    view = TreeView(stored)
    old_root = view.root()
    stored.extend(hashes[300:])  # append-only: cached full subtrees stay valid
    assert view.root() == root_of(hashes)
    verify_consistency(300, 600, view.consistency_proof(300), old_root, view.root())
