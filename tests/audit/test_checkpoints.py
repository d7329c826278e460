"""Signed checkpoints: the signed-note format, byte-exact; any change breaks them; the key on disk."""

from __future__ import annotations

import base64
import hashlib
import os
import stat
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from gateway.audit.checkpoints import (
    Checkpoint,
    CheckpointError,
    Signer,
    Verifier,
    at_second,
    load_or_create_key,
    parse_body,
)
from gateway.audit.merkle import leaf_hash

ORIGIN = "commonwatt/fablab-nord"
ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
WHEN = datetime(2025, 7, 5, 12, 30, 0, tzinfo=UTC)
# A fixed key so the expected text below is exact (Ed25519 signatures are deterministic).
SEED = hashlib.sha256(b"commonwatt test key").digest()
SIGNER = Signer(Ed25519PrivateKey.from_private_bytes(SEED), ORIGIN)

# The reference example of golang.org/x/mod/sumdb/note (note_test.go, its package doc):
# checking our key ids, key encoding and signatures against it means Go tooling and
# transparency-log witnesses read our checkpoints as we do.
GO_VKEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SKEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = "If you think cryptography is the answer to your problem,\nthen you don't know what your problem is.\n"
GO_SIG = "x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdngotpRZb6KE6RyyBwJnAM="
GO_NOTE = f"{GO_TEXT}\n— PeterNeumann {GO_SIG}\n"


def signed(size: int = 8, root: bytes = ROOT, when: datetime = WHEN) -> str:
    return SIGNER.sign(Checkpoint(ORIGIN, size, root, when))


def test_the_text_is_exactly_the_documented_format() -> None:
    text = signed()
    body, sig_line = text.split("\n\n")
    assert body + "\n" == (
        "commonwatt/fablab-nord\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\ntime 2025-07-05T12:30:00Z\n"
    )
    name, sig = sig_line.removeprefix("— ").removesuffix("\n").split(" ")
    raw = base64.b64decode(sig)
    key = SIGNER.verifier.public_key
    assert name == ORIGIN
    assert raw[:4] == hashlib.sha256(ORIGIN.encode() + b"\n\x01" + key).digest()[:4]
    assert len(raw) == 4 + 64
    assert SIGNER.verifier.verify(text) == Checkpoint(ORIGIN, 8, ROOT, WHEN)


def test_matches_the_go_signed_note_reference() -> None:
    verifier = Verifier.parse(GO_VKEY)
    assert verifier.name == "PeterNeumann" and verifier.key_id.hex() == "c74f20a3"
    assert str(verifier) == GO_VKEY
    assert verifier.verify_note(GO_NOTE) == GO_TEXT.encode()
    seed = base64.b64decode(GO_SKEY.split("+", 4)[4])[1:]
    key = Ed25519PrivateKey.from_private_bytes(seed)
    assert base64.b64encode(verifier.key_id + key.sign(GO_TEXT.encode())).decode() == GO_SIG


def test_any_byte_changed_breaks_the_checkpoint() -> None:
    text = signed().encode()
    for i in range(len(text)):
        for delta in (1, 0x20, 0x80):
            changed = text[:i] + bytes([text[i] ^ delta]) + text[i + 1 :]
            with pytest.raises(CheckpointError):
                SIGNER.verifier.verify(changed)


def test_bytes_added_or_removed_break_it_too() -> None:
    text = signed()
    for i in range(len(text)):
        with pytest.raises(CheckpointError):
            SIGNER.verifier.verify(text[:i] + text[i + 1 :])
    for extra in ("0", " ", "\n"):
        with pytest.raises(CheckpointError):
            SIGNER.verifier.verify(text.replace("\n8\n", f"\n{extra}8\n"))


def test_a_second_signature_line_is_allowed_but_ours_must_be_there() -> None:
    text = signed()
    witness = Signer(Ed25519PrivateKey.generate(), "witness.example")
    cosig = witness.sign(Checkpoint("witness.example", 8, ROOT, WHEN)).split("\n\n")[1]
    assert SIGNER.verifier.verify(text + cosig).size == 8
    only_theirs = text.split("\n\n")[0] + "\n\n" + cosig
    with pytest.raises(CheckpointError, match="no signature by the key"):
        SIGNER.verifier.verify(only_theirs)


def test_another_key_or_another_log_is_refused() -> None:
    impostor = Signer(Ed25519PrivateKey.generate(), ORIGIN)
    with pytest.raises(CheckpointError, match="no signature by the key"):
        SIGNER.verifier.verify(impostor.sign(Checkpoint(ORIGIN, 8, ROOT, WHEN)))
    other_log = Signer(Ed25519PrivateKey.from_private_bytes(SEED), "commonwatt/elsewhere")
    with pytest.raises(CheckpointError, match="no signature by the key"):  # the key name is the log's name
        SIGNER.verifier.verify(other_log.sign(Checkpoint("commonwatt/elsewhere", 8, ROOT, WHEN)))
    with pytest.raises(CheckpointError, match="signs for"):
        SIGNER.sign(Checkpoint("commonwatt/elsewhere", 8, ROOT, WHEN))


def test_a_forged_signature_under_our_key_id_is_refused() -> None:
    text = signed()
    body = text.split("\n\n")[0]
    forged = base64.b64encode(SIGNER.verifier.key_id + bytes(64)).decode()
    with pytest.raises(CheckpointError, match="does not verify"):
        SIGNER.verifier.verify(f"{body}\n\n— {ORIGIN} {forged}\n")


@pytest.mark.parametrize(
    "body",
    [
        b"commonwatt/x\n08\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\ntime 2025-07-05T12:30:00Z\n",
        b"commonwatt/x\n-8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\ntime 2025-07-05T12:30:00Z\n",
        b"commonwatt/x\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg\ntime 2025-07-05T12:30:00Z\n",
        b"commonwatt/x\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyh=\ntime 2025-07-05T12:30:00Z\n",
        b"commonwatt/x\n8\nXcnaeacG\ntime 2025-07-05T12:30:00Z\n",
        b"commonwatt/x\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\ntime 2025-7-05T12:30:00Z\n",
        b"commonwatt/x\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\nat 2025-07-05T12:30:00Z\n",
        b"commonwatt/x\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
        b"commonwatt/x\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\ntime 2025-07-05T12:30:00Z\nmore\n",
        b"common watt\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\ntime 2025-07-05T12:30:00Z\n",
        b"\xff\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\ntime 2025-07-05T12:30:00Z\n",
    ],
)
def test_non_canonical_bodies_are_refused(body: bytes) -> None:
    with pytest.raises(CheckpointError):
        parse_body(body)


def test_checkpoint_fields_are_checked() -> None:
    with pytest.raises(CheckpointError):
        Checkpoint("has space", 1, ROOT, WHEN)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT[:31], WHEN)
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT, datetime(2025, 7, 5, 12, 30))  # no time zone
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT, datetime(2025, 7, 5, 12, 30, tzinfo=timezone(timedelta(hours=2))))
    with pytest.raises(CheckpointError):
        Checkpoint(ORIGIN, 1, ROOT, WHEN.replace(microsecond=5))
    assert at_second(1751718600.9) == WHEN
    assert parse_body(Checkpoint(ORIGIN, 0, leaf_hash(b""), WHEN).body()).size == 0


def test_verifier_keys_round_trip_and_reject_manglings() -> None:
    vkey = str(SIGNER.verifier)
    assert Verifier.parse(vkey).public_key == SIGNER.verifier.public_key
    name, key_id, key = vkey.split("+", 2)
    for bad in [
        f"{name}+{key_id}",
        f"{name}+00000000+{key}",
        f"{name}+{key_id.upper()}+{key}",
        f"other+{key_id}+{key}",
        f"{name}+{key_id}+{key[:-4]}",
        f"{name}+{key_id}+!!!!",
        f"{name}+{key_id}+" + base64.b64encode(b"\x02" + SIGNER.verifier.public_key).decode(),
    ]:
        with pytest.raises(CheckpointError):
            Verifier.parse(bad)


def test_the_key_is_created_private_and_loaded_again(tmp_path: Path) -> None:
    path = tmp_path / "keys" / "audit.pem"
    key = load_or_create_key(path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert path.read_bytes().startswith(b"-----BEGIN PRIVATE KEY-----")
    again = load_or_create_key(path)
    raw = serialization.Encoding.Raw, serialization.PublicFormat.Raw
    assert again.public_key().public_bytes(*raw) == key.public_key().public_bytes(*raw)
    assert [p.name for p in path.parent.iterdir()] == ["audit.pem"]  # no temporary file left


def test_a_key_others_can_read_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.pem"
    load_or_create_key(path)
    os.chmod(path, 0o644)
    with pytest.raises(CheckpointError, match="chmod 600"):
        load_or_create_key(path)


def test_a_key_of_another_kind_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "audit.pem"
    other = ec.generate_private_key(ec.SECP256R1())
    pem = other.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )
    path.write_bytes(pem)
    path.chmod(0o600)
    with pytest.raises(CheckpointError, match="Ed25519"):
        load_or_create_key(path)
