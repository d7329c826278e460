"""The proof files members download, and the offline check behind `commonwatt audit check-proof`.

Two kinds of bundle, each a JSON object (a file holds one object or a list of them):

An inclusion bundle shows that one transaction is in the log under a signed checkpoint:

    {"type": "commonwatt/inclusion-proof/v1",
     "log_key": "<verifier key: name+keyid+base64>",
     "checkpoint": "<signed checkpoint text>",
     "tree_size": 1234,                       (must equal the checkpoint's size)
     "leaf_index": 41,                        (0-based position of the transaction)
     "leaf": "<base64 of the transaction's canonical bytes>",
     "leaf_hash": "<hex SHA-256(0x00 || leaf)>",   (either or both of leaf / leaf_hash)
     "audit_path": ["<hex>", ...],
     "label": "free text for people; not part of the proof"}

A consistency bundle shows that a later checkpoint only appended to an earlier one:

    {"type": "commonwatt/consistency-proof/v1",
     "log_key": "...", "old_checkpoint": "...", "new_checkpoint": "...",
     "consistency_path": ["<hex>", ...]}

Hashes in proofs are lowercase hex (what `sha256sum` prints); the checkpoint keeps the
signed-note convention of base64. Nothing here reads the ledger: a member needs only the
files and, ideally, the log's key as their lab publishes it.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

from gateway.audit.checkpoints import Checkpoint, CheckpointError, Verifier
from gateway.audit.merkle import AuditError, TreeView, leaf_hash, verify_consistency, verify_inclusion

INCLUSION = "commonwatt/inclusion-proof/v1"
CONSISTENCY = "commonwatt/consistency-proof/v1"


T = TypeVar("T")


class BundleError(AuditError):
    """A proof file that is not a bundle we can read."""


@dataclass(frozen=True, slots=True)
class Checked:
    """A bundle that verified: what it showed, and the checkpoints it vouched for."""

    summary: str
    log_key: str
    checkpoints: tuple[Checkpoint, ...]


# ---- making bundles (the gateway's side) ----


def inclusion_bundle(
    view: TreeView, index: int, leaf: bytes, signed_checkpoint: str, verifier: Verifier, label: str = ""
) -> dict[str, Any]:
    """The inclusion bundle of leaf `index` (whose bytes are `leaf`) under `signed_checkpoint`."""
    checkpoint = verifier.verify(signed_checkpoint)
    bundle: dict[str, Any] = {
        "type": INCLUSION,
        "log_key": str(verifier),
        "checkpoint": signed_checkpoint,
        "tree_size": checkpoint.size,
        "leaf_index": index,
        "leaf": base64.b64encode(leaf).decode(),
        "leaf_hash": leaf_hash(leaf).hex(),
        "audit_path": [h.hex() for h in view.inclusion_proof(index, checkpoint.size)],
    }
    if label:
        bundle["label"] = label
    return bundle


def consistency_bundle(view: TreeView, old_signed: str, new_signed: str, verifier: Verifier) -> dict[str, Any]:
    """The consistency bundle from the checkpoint `old_signed` to the later `new_signed`."""
    old, new = verifier.verify(old_signed), verifier.verify(new_signed)
    return {
        "type": CONSISTENCY,
        "log_key": str(verifier),
        "old_checkpoint": old_signed,
        "new_checkpoint": new_signed,
        "consistency_path": [h.hex() for h in view.consistency_proof(old.size, new.size)],
    }


# ---- checking bundles (the member's side) ----


def check_bundle(bundle: Mapping[str, Any], trusted: Sequence[Verifier] = ()) -> Checked:
    """Verify one bundle; raises an AuditError subclass saying what is wrong.

    With `trusted` keys, the bundle's key must be one of them; without, the key inside the
    bundle is used (which proves consistency with that key only).
    """
    kind = bundle.get("type")
    verifier = _verifier(bundle, trusted)
    if kind == INCLUSION:
        return _check_inclusion(bundle, verifier)
    if kind == CONSISTENCY:
        return _check_consistency(bundle, verifier)
    raise BundleError(f"unknown bundle type {kind!r} (expected {INCLUSION} or {CONSISTENCY})")


def _verifier(bundle: Mapping[str, Any], trusted: Sequence[Verifier]) -> Verifier:
    verifier = Verifier.parse(_field(bundle, "log_key", str))
    if trusted and all(str(t) != str(verifier) for t in trusted):
        raise CheckpointError(f"the bundle is signed by {verifier}, which is not a key you trust")
    return verifier


def _check_inclusion(bundle: Mapping[str, Any], verifier: Verifier) -> Checked:
    checkpoint = verifier.verify(_field(bundle, "checkpoint", str))
    size, index = _field(bundle, "tree_size", int), _field(bundle, "leaf_index", int)
    if size != checkpoint.size:
        raise BundleError(f"tree_size {size} differs from the checkpoint's size {checkpoint.size}")
    verify_inclusion(index, size, _leaf_hash(bundle), _hashes(bundle, "audit_path"), checkpoint.root)
    label = f" ({bundle['label']})" if isinstance(bundle.get("label"), str) else ""
    summary = (
        f"transaction {index}{label} is in {checkpoint.origin} at size {size}, checkpoint of {checkpoint.time_text}"
    )
    return Checked(summary, str(verifier), (checkpoint,))


def _check_consistency(bundle: Mapping[str, Any], verifier: Verifier) -> Checked:
    old = verifier.verify(_field(bundle, "old_checkpoint", str))
    new = verifier.verify(_field(bundle, "new_checkpoint", str))
    if new.time < old.time:
        raise BundleError(f"the new checkpoint ({new.time_text}) is dated before the old one ({old.time_text})")
    verify_consistency(old.size, new.size, _hashes(bundle, "consistency_path"), old.root, new.root)
    summary = (
        f"{new.origin} at size {new.size} ({new.time_text}) extends size {old.size} ({old.time_text}): "
        "only appended, nothing rewritten"
    )
    return Checked(summary, str(verifier), (old, new))


def _leaf_hash(bundle: Mapping[str, Any]) -> bytes:
    given = _hex(_field(bundle, "leaf_hash", str), "leaf_hash") if "leaf_hash" in bundle else None
    if "leaf" not in bundle:
        if given is None:
            raise BundleError("the bundle has neither 'leaf' nor 'leaf_hash'")
        return given
    try:
        computed = leaf_hash(base64.b64decode(_field(bundle, "leaf", str), validate=True))
    except binascii.Error as e:
        raise BundleError("'leaf' is not valid base64") from e
    if given is not None and given != computed:
        raise BundleError("'leaf_hash' is not the hash of 'leaf': the transaction was altered")
    return computed


def _hashes(bundle: Mapping[str, Any], name: str) -> list[bytes]:
    items = _field(bundle, name, list)
    if not all(isinstance(h, str) for h in items):
        raise BundleError(f"'{name}' must be a list of hex strings")
    return [_hex(h, name) for h in items]


def _hex(text: str, what: str) -> bytes:
    if len(text) != 64 or text != text.lower():
        raise BundleError(f"'{what}' holds {text!r}, not 64 lowercase hex digits")
    try:
        return bytes.fromhex(text)
    except ValueError as e:
        raise BundleError(f"'{what}' holds {text!r}, not hex") from e


def _field(bundle: Mapping[str, Any], name: str, kind: type[T]) -> T:
    value = bundle.get(name)
    if not isinstance(value, kind) or isinstance(value, bool):
        raise BundleError(f"'{name}' is missing or not a {kind.__name__}")
    return value


# ---- files ----


def check_proof_files(paths: Sequence[Path], trusted_keys: Sequence[str] = ()) -> tuple[bool, list[str]]:
    """Check every bundle in these files; (all good, one line per bundle and per finding).

    Across files, two checkpoints of one log at the same size must have the same root: two
    different roots signed for one size are proof that the log showed members different
    histories.
    """
    try:
        trusted = [Verifier.parse(k) for k in trusted_keys]
    except CheckpointError as e:
        return False, [f"FAIL  bad --key: {e}"]
    lines: list[str] = []
    seen: dict[tuple[str, int], tuple[bytes, str]] = {}
    bundles = _bundles(paths, lines)
    results = [b is not None and _check_one(where, b, trusted, seen, lines) for where, b in bundles]
    if not bundles:
        lines.append("FAIL  no proof bundles in the files given")
    if not trusted and seen:
        keys = sorted({key for key, _ in seen})
        lines.append(f"note  checked against the key inside the files: {', '.join(keys)}")
        lines.append("      compare it with the key your lab publishes, or pass it with --key")
    return bool(bundles) and all(results), lines


def _check_one(
    where: str,
    bundle: Mapping[str, Any],
    trusted: Sequence[Verifier],
    seen: dict[tuple[str, int], tuple[bytes, str]],
    lines: list[str],
) -> bool:
    try:
        checked = check_bundle(bundle, trusted)
    except AuditError as e:
        lines.append(f"FAIL  {where}: {e}")
        return False
    lines.append(f"ok    {where}: {checked.summary}")
    good = True
    for cp in checked.checkpoints:
        first = seen.setdefault((checked.log_key, cp.size), (cp.root, where))
        if first[0] != cp.root:
            lines.append(f"FAIL  {where}: FORK — size {cp.size} has another signed root in {first[1]}")
            good = False
    return good


def _bundles(paths: Sequence[Path], lines: list[str]) -> list[tuple[str, Mapping[str, Any] | None]]:
    """(where, bundle) for every bundle in the files; unreadable files as (where, None) with a line."""
    found: list[tuple[str, Mapping[str, Any] | None]] = []
    for path in paths:
        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            lines.append(f"FAIL  {path}: cannot read a JSON proof file: {e}")
            found.append((str(path), None))
            continue
        items = data if isinstance(data, list) else [data]
        for i, item in enumerate(items):
            where = f"{path}[{i}]" if isinstance(data, list) else str(path)
            if isinstance(item, dict):
                found.append((where, item))
            else:
                lines.append(f"FAIL  {where}: a proof bundle must be a JSON object")
                found.append((where, None))
    return found
