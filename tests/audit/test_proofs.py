"""Proof bundles a member downloads, checked offline as `commonwatt audit check-proof` does."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit import (
    BundleError,
    Checkpoint,
    CheckpointError,
    LogTree,
    ProofError,
    Signer,
    TreeView,
    check_bundle,
    check_proof_files,
    consistency_bundle,
    inclusion_bundle,
    leaf_hash,
)

ORIGIN = "commonwatt/fablab-nord"
T0 = datetime(2025, 7, 1, tzinfo=UTC)


def tx(i: int) -> bytes:
    """Stand-in for a transaction's canonical bytes."""
    return json.dumps({"id": i, "postings": [["member:alice", -150 * i], ["machine:laser", 150 * i]]}).encode()


class Log:
    """A small log that signs checkpoints, as the gateway will."""

    def __init__(self, signer: Signer | None = None) -> None:
        self.signer = signer or Signer(Ed25519PrivateKey.generate(), ORIGIN)
        self.leaves: list[bytes] = []
        self.hashes: list[bytes] = []
        self.view = TreeView(self.hashes)

    def grow(self, n: int) -> None:
        for _ in range(n):
            self.leaves.append(tx(len(self.leaves)))
            self.hashes.append(leaf_hash(self.leaves[-1]))

    def checkpoint(self, size: int | None = None) -> str:
        size = len(self.hashes) if size is None else size
        return self.signer.sign(Checkpoint(ORIGIN, size, self.view.root(size), T0 + timedelta(hours=size)))

    def inclusion(self, index: int, note: str) -> dict[str, Any]:
        return inclusion_bundle(self.view, index, self.leaves[index], note, self.signer.verifier, label=f"tx {index}")


@pytest.fixture
def log() -> Log:
    log = Log()
    log.grow(100)
    return log


def write(tmp_path: Path, name: str, content: Any) -> Path:
    path = tmp_path / name
    path.write_text(json.dumps(content, indent=2), encoding="utf-8")
    return path


def test_a_member_checks_inclusion_and_extension_offline(log: Log, tmp_path: Path) -> None:
    old = log.checkpoint()
    mine = [log.inclusion(i, old) for i in (3, 41, 99)]
    log.grow(900)
    new = log.checkpoint()
    files = [
        write(tmp_path, "march.json", mine),
        write(tmp_path, "ext.json", consistency_bundle(log.view, old, new, log.signer.verifier)),
    ]
    ok, lines = check_proof_files(files, [str(log.signer.verifier)])
    assert ok, lines
    assert lines[0].startswith("ok    ") and "transaction 3 (tx 3) is in commonwatt/fablab-nord at size 100" in lines[0]
    assert "at size 1000" in lines[3] and "extends size 100" in lines[3]
    assert not any(line.startswith("note") for line in lines)


def test_an_old_proof_still_verifies_after_thousands_of_transactions(log: Log) -> None:
    first = log.checkpoint()
    bundle = log.inclusion(7, first)
    log.grow(5000)
    later = log.checkpoint()
    # the old bundle is untouched and still good; a new one under the later checkpoint agrees
    assert "size 100" in check_bundle(bundle).summary
    assert "size 5100" in check_bundle(log.inclusion(7, later)).summary
    check_bundle(consistency_bundle(log.view, first, later, log.signer.verifier))


def test_without_a_trusted_key_the_files_own_key_is_used_and_said_so(log: Log, tmp_path: Path) -> None:
    ok, lines = check_proof_files([write(tmp_path, "p.json", log.inclusion(0, log.checkpoint()))])
    assert ok
    assert lines[-2].startswith("note  checked against the key inside the files: commonwatt/fablab-nord+")


def test_a_key_the_member_does_not_trust_is_refused(log: Log, tmp_path: Path) -> None:
    path = write(tmp_path, "p.json", log.inclusion(0, log.checkpoint()))
    stranger = Signer(Ed25519PrivateKey.generate(), ORIGIN).verifier
    ok, lines = check_proof_files([path], [str(stranger)])
    assert not ok
    assert "not a key you trust" in lines[0]


def test_a_checkpoint_signed_by_someone_else_is_refused(log: Log) -> None:
    bundle = log.inclusion(5, log.checkpoint())
    forger = Signer(Ed25519PrivateKey.generate(), ORIGIN)
    bundle["checkpoint"] = forger.sign(Checkpoint(ORIGIN, 100, log.view.root(100), T0))
    with pytest.raises(CheckpointError, match="no signature by the key"):
        check_bundle(bundle)


def test_a_changed_transaction_is_refused(log: Log) -> None:
    bundle = log.inclusion(5, log.checkpoint())
    altered = tx(5).replace(b"-750", b"-75")
    with pytest.raises(BundleError, match="was altered"):
        check_bundle({**bundle, "leaf": base64.b64encode(altered).decode()})
    del bundle["leaf_hash"]
    with pytest.raises(ProofError, match="does not lead to the root"):
        check_bundle({**bundle, "leaf": base64.b64encode(altered).decode()})


def test_a_path_that_does_not_lead_to_the_root_is_refused(log: Log) -> None:
    bundle = log.inclusion(5, log.checkpoint())
    path = list(bundle["audit_path"])
    path[2] = path[2][:-1] + ("0" if path[2][-1] != "0" else "1")
    with pytest.raises(ProofError, match="does not lead to the root"):
        check_bundle({**bundle, "audit_path": path})
    with pytest.raises(ProofError, match="does not lead to the root"):
        check_bundle({**bundle, "leaf_index": 6})
    with pytest.raises(ProofError, match="too short"):
        check_bundle({**bundle, "audit_path": bundle["audit_path"][:-1]})


def test_a_later_checkpoint_that_rewrote_history_is_refused(log: Log) -> None:
    old = log.checkpoint(60)
    log.leaves[30] = b"a rewritten transaction"
    log.hashes[30] = leaf_hash(log.leaves[30])
    rewritten = Log(log.signer)
    rewritten.leaves, rewritten.hashes = log.leaves, log.hashes
    rewritten.view = TreeView(rewritten.hashes)
    new = rewritten.checkpoint()
    bundle = consistency_bundle(rewritten.view, old, new, log.signer.verifier)
    with pytest.raises(ProofError, match="does not lead to the root of size 60"):
        check_bundle(bundle)


def test_a_later_checkpoint_with_fewer_transactions_is_refused(log: Log) -> None:
    bundle = consistency_bundle(log.view, log.checkpoint(50), log.checkpoint(80), log.signer.verifier)
    swapped = {**bundle, "old_checkpoint": bundle["new_checkpoint"], "new_checkpoint": bundle["old_checkpoint"]}
    with pytest.raises(BundleError, match="dated before"):
        check_bundle(swapped)
    backdated = log.signer.sign(Checkpoint(ORIGIN, 50, log.view.root(50), T0 + timedelta(days=30)))
    with pytest.raises(ProofError, match="never shrinks"):
        check_bundle({**swapped, "new_checkpoint": backdated})


def test_two_roots_signed_for_one_size_are_reported_as_a_fork(log: Log, tmp_path: Path) -> None:
    honest = log.inclusion(1, log.checkpoint())
    forked = Log(log.signer)
    forked.grow(100)
    forked.leaves[1] = b"the version shown to someone else"
    forked.hashes[1] = leaf_hash(forked.leaves[1])
    other = forked.inclusion(1, forked.checkpoint())
    ok, lines = check_proof_files([write(tmp_path, "a.json", honest), write(tmp_path, "b.json", other)])
    assert not ok
    assert lines[0].startswith("ok") and lines[1].startswith("ok")
    assert "FORK" in lines[2] and "a.json" in lines[2]


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"type": "something/else"}, "unknown bundle type"),
        ({"log_key": 5}, "'log_key' is missing"),
        ({"tree_size": 99}, "differs from the checkpoint"),
        ({"tree_size": True}, "'tree_size' is missing or not a int"),
        ({"leaf_index": "3"}, "'leaf_index'"),
        ({"audit_path": "abc"}, "'audit_path'"),
        ({"audit_path": [1, 2]}, "list of hex"),
        ({"audit_path": ["AB" * 32]}, "lowercase"),
        ({"audit_path": ["zz" * 32]}, "not hex"),
        ({"leaf": "not base64!"}, "not valid base64"),
        ({"leaf_hash": "00"}, "64 lowercase hex"),
        ({"checkpoint": "hello"}, "no blank line"),
    ],
)
def test_malformed_bundles_say_what_is_wrong(log: Log, change: dict[str, Any], message: str) -> None:
    bundle = {**log.inclusion(3, log.checkpoint()), **change}
    with pytest.raises((BundleError, CheckpointError, ProofError), match=message):
        check_bundle(bundle)


def test_a_bundle_may_carry_only_the_leaf_hash(log: Log) -> None:
    bundle = log.inclusion(3, log.checkpoint())
    del bundle["leaf"]
    check_bundle(bundle)
    del bundle["leaf_hash"]
    with pytest.raises(BundleError, match="neither"):
        check_bundle(bundle)


def test_unreadable_files_and_bad_keys_are_reported(log: Log, tmp_path: Path) -> None:
    good = write(tmp_path, "good.json", log.inclusion(0, log.checkpoint()))
    broken = tmp_path / "broken.json"
    broken.write_text("{not json", encoding="utf-8")
    ok, lines = check_proof_files([good, broken, tmp_path / "missing.json", write(tmp_path, "n.json", [3])])
    assert not ok
    assert sum(line.startswith("FAIL") for line in lines) == 3
    assert check_proof_files([write(tmp_path, "empty.json", [])]) == (
        False,
        ["FAIL  no proof bundles in the files given"],
    )
    ok, lines = check_proof_files([good], ["nonsense"])
    assert not ok and lines[0].startswith("FAIL  bad --key")


def test_bundles_match_the_log_tree_the_gateway_keeps(log: Log) -> None:
    tree = LogTree.of(log.hashes)
    note = log.signer.sign(Checkpoint(ORIGIN, tree.size, tree.root(), T0))
    check_bundle(log.inclusion(42, note))
