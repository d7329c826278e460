"""How fast the audit log's Merkle tree is over a million transactions.

Run: .venv/bin/python bench/merkle.py [--leaves N]
Prints, measured in the same run: leaf hashing, the root by level-by-level pairing
(`root_of`), by appending to the incremental `LogTree`, through a `TreeView` (what proofs
use), and by the RFC's recursive definition written naively with list slices; then
inclusion and consistency proofs per second from a warm `TreeView`.
"""

from __future__ import annotations

import argparse
import hashlib
import time
from collections.abc import Callable
from typing import TypeVar

from gateway.audit.merkle import LogTree, TreeView, leaf_hash, root_of, verify_consistency, verify_inclusion

T = TypeVar("T")


def timed(label: str, n: int, fn: Callable[[], T]) -> T:
    started = time.perf_counter()
    result = fn()
    took = time.perf_counter() - started
    print(f"{label:<44} {took:7.2f} s  {n / took:>12,.0f} /s")
    return result


def naive_root(leaves: list[bytes]) -> bytes:
    """MTH of RFC 9162 §2.1.1 as written: recursion on slices of leaf hashes."""
    if not leaves:
        return hashlib.sha256(b"").digest()
    if len(leaves) == 1:
        return leaves[0]
    k = 1 << ((len(leaves) - 1).bit_length() - 1)
    return hashlib.sha256(b"\x01" + naive_root(leaves[:k]) + naive_root(leaves[k:])).digest()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--leaves", type=int, default=1_000_000)
    n = parser.parse_args().leaves
    print(f"{n:,} leaves (transactions of ~100 bytes)\n")
    data = [b"%08d" % i * 12 for i in range(n)]
    hashes = timed("leaf hashes SHA-256(0x00 || tx)", n, lambda: [leaf_hash(d) for d in data])
    root = timed("root, level by level (root_of)", n, lambda: root_of(hashes))
    assert timed("root, appending to LogTree", n, lambda: LogTree.of(hashes).root()) == root
    view = TreeView(hashes)
    assert timed("root, TreeView (fills the subtree cache)", n, view.root) == root
    assert timed("root, naive recursive definition", n, lambda: naive_root(hashes)) == root
    indices = range(0, n, max(1, n // 2000))
    timed(f"{len(indices)} inclusion proofs, made and verified", len(indices), lambda: inclusion(view, hashes, indices))
    sizes = range(1, n, max(1, n // 500))
    timed(f"{len(sizes)} consistency proofs, made and verified", len(sizes), lambda: consistency(view, sizes, root))


def inclusion(view: TreeView, hashes: list[bytes], indices: range) -> None:
    n, root = len(hashes), view.root()
    for i in indices:
        verify_inclusion(i, n, hashes[i], view.inclusion_proof(i), root)


def consistency(view: TreeView, sizes: range, root: bytes) -> None:
    n = len(view)
    for m in sizes:
        verify_consistency(m, n, view.consistency_proof(m), view.root(m), root)


if __name__ == "__main__":
    main()
