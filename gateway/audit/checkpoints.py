"""Signed checkpoints: the log's size, root hash and time, signed with the gateway's Ed25519 key.

The text is a transparency-log checkpoint in the C2SP "signed note" form (the one the Go
checksum database and Sigstore's logs use), so standard note tooling can check it too:

    commonwatt/<site>\\n                          origin: names the log
    <tree size, decimal>\\n
    <root hash, standard base64 with padding>\\n
    time <UTC, YYYY-MM-DDTHH:MM:SSZ>\\n          commonwatt's one extension line
    \\n
    — <key name> <base64(key id || signature)>\\n

The signature is Ed25519 over the four body lines exactly as written (newlines included).
The key id is the first 4 bytes of SHA-256(key name || 0x0A || 0x01 || public key); the
key name is the origin. The public key is published as a verifier key,
`<name>+<key id, 8 hex digits>+<base64(0x01 || public key)>`, which is what members give
to `commonwatt audit check-proof` to check checkpoints offline.

Parsing is strict: one canonical spelling of every number and base64 string, so changing
any byte of a checkpoint makes it fail, never silently mean the same thing.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import os
import re
import stat
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from gateway.audit.merkle import HASH_SIZE, AuditError

ED25519_ALG = b"\x01"
SIG_PREFIX = "— "  # em dash and space, as in every signed note
TIME_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_NAME = re.compile(r"[^\s+]+")
_SIZE = re.compile(r"0|[1-9][0-9]*")


class CheckpointError(AuditError):
    """A checkpoint that cannot be read, or whose signature does not verify."""


@dataclass(frozen=True, slots=True)
class Checkpoint:
    """What the log commits to at one moment. `time` is whole seconds, UTC."""

    origin: str
    size: int
    root: bytes
    time: datetime

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.origin):
            raise CheckpointError(f"origin {self.origin!r} must be one word without spaces or '+'")
        if self.size < 0 or len(self.root) != HASH_SIZE:
            raise CheckpointError("a checkpoint needs a size >= 0 and a 32-byte root")
        if self.time.tzinfo is None or self.time.utcoffset() or self.time.microsecond:
            raise CheckpointError("checkpoint time must be whole seconds in UTC")

    @property
    def time_text(self) -> str:
        return self.time.strftime(TIME_FORMAT)

    def body(self) -> bytes:
        """The exact bytes that are signed."""
        root = base64.b64encode(self.root).decode()
        return f"{self.origin}\n{self.size}\n{root}\ntime {self.time_text}\n".encode()


def at_second(ts: float) -> datetime:
    """A UNIX time as a checkpoint time (truncated to the second)."""
    return datetime.fromtimestamp(int(ts), UTC)


class Verifier:
    """A log's public key under its name; checks the checkpoints the log signed."""

    def __init__(self, name: str, public_key: bytes) -> None:
        if not _NAME.fullmatch(name) or len(public_key) != 32:
            raise CheckpointError("a verifier needs a one-word name and a 32-byte Ed25519 public key")
        self.name = name
        self.public_key = public_key
        self.key_id = hashlib.sha256(name.encode() + b"\n" + ED25519_ALG + public_key).digest()[:4]
        self._key = Ed25519PublicKey.from_public_bytes(public_key)

    @classmethod
    def parse(cls, text: str) -> Verifier:
        """From a verifier key `<name>+<key id hex>+<base64(0x01 || key)>`."""
        parts = text.strip().split("+", 2)  # the base64 key itself may hold '+'
        if len(parts) != 3:
            raise CheckpointError(f"not a verifier key (name+id+key): {text.strip()!r}")
        raw = _b64decode(parts[2], "verifier key")
        if len(raw) != 33 or raw[:1] != ED25519_ALG:
            raise CheckpointError("the verifier key is not an Ed25519 key")
        verifier = cls(parts[0], raw[1:])
        if parts[1] != verifier.key_id.hex():
            raise CheckpointError(f"the verifier key's id {parts[1]} does not match its key")
        return verifier

    def __str__(self) -> str:
        key = base64.b64encode(ED25519_ALG + self.public_key).decode()
        return f"{self.name}+{self.key_id.hex()}+{key}"

    def verify(self, signed: str | bytes) -> Checkpoint:
        """The checkpoint in `signed` if this key signed it; CheckpointError saying why not."""
        checkpoint = parse_body(self.verify_note(signed))
        if checkpoint.origin != self.name:
            raise CheckpointError(f"the checkpoint is for log {checkpoint.origin!r}, this key is for {self.name!r}")
        return checkpoint

    def verify_note(self, signed: str | bytes) -> bytes:
        """The signed text of any signed note carrying a valid signature by this key."""
        body, signatures = _split_note(signed)
        mine = [sig for name, key_id, sig in signatures if name == self.name and key_id == self.key_id]
        if not mine:
            raise CheckpointError(f"the checkpoint carries no signature by the key {self.key_id.hex()} of {self.name}")
        for sig in mine:
            try:
                self._key.verify(sig, body)
                return body
            except InvalidSignature:
                continue
        raise CheckpointError("the checkpoint's signature does not verify: it was altered or signed by another key")


class Signer:
    """The gateway's side: signs checkpoints under the log's name."""

    def __init__(self, key: Ed25519PrivateKey, name: str) -> None:
        self._key = key
        raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        self.verifier = Verifier(name, raw)

    def sign(self, checkpoint: Checkpoint) -> str:
        """The signed note text of `checkpoint` (its origin must be this log's name)."""
        if checkpoint.origin != self.verifier.name:
            raise CheckpointError(f"this key signs for {self.verifier.name!r}, not {checkpoint.origin!r}")
        body = checkpoint.body()
        sig = base64.b64encode(self.verifier.key_id + self._key.sign(body)).decode()
        return f"{body.decode()}\n{SIG_PREFIX}{self.verifier.name} {sig}\n"


def parse_body(body: bytes) -> Checkpoint:
    """The four lines of a checkpoint body, strictly (no signature check: use Verifier.verify)."""
    try:
        lines = body.decode("utf-8").split("\n")
    except UnicodeDecodeError as e:
        raise CheckpointError("the checkpoint is not UTF-8 text") from e
    if len(lines) != 5 or lines[4] != "":
        raise CheckpointError("a checkpoint body is 4 lines: origin, size, root hash, time")
    origin, size, root, time = lines[:4]
    if not _SIZE.fullmatch(size):
        raise CheckpointError(f"the tree size {size!r} is not a plain decimal number")
    if not time.startswith("time "):
        raise CheckpointError(f"the fourth line must be 'time <UTC time>', not {time!r}")
    try:
        when = datetime.strptime(time[5:], TIME_FORMAT).replace(tzinfo=UTC)
    except ValueError as e:
        raise CheckpointError(f"bad checkpoint time {time[5:]!r}") from e
    checkpoint = Checkpoint(origin, int(size), _b64decode(root, "root hash"), when)
    if checkpoint.body() != body:
        raise CheckpointError("the checkpoint is not written in its one canonical form")
    return checkpoint


def _split_note(signed: str | bytes) -> tuple[bytes, list[tuple[str, bytes, bytes]]]:
    """(body bytes, [(key name, key id, signature)]) of a signed note."""
    data = signed.encode() if isinstance(signed, str) else signed
    body, sep, sig_block = data.rpartition(b"\n\n")
    if not sep or not sig_block.endswith(b"\n"):
        raise CheckpointError("not a signed checkpoint: no blank line before the signatures")
    try:
        sig_lines = sig_block.decode("utf-8")[:-1].split("\n")
    except UnicodeDecodeError as e:
        raise CheckpointError("the signature lines are not UTF-8 text") from e
    return body + b"\n", [_parse_signature_line(line) for line in sig_lines]


def _parse_signature_line(line: str) -> tuple[str, bytes, bytes]:
    name, _, sig = line.removeprefix(SIG_PREFIX).partition(" ")
    if not line.startswith(SIG_PREFIX) or not _NAME.fullmatch(name):
        raise CheckpointError(f"not a signature line: {line!r}")
    raw = _b64decode(sig, "signature")
    if len(raw) < 5:
        raise CheckpointError("a signature line too short to hold a key id and a signature")
    return name, raw[:4], raw[4:]


def _b64decode(text: str, what: str) -> bytes:
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as e:
        raise CheckpointError(f"the {what} is not valid base64") from e
    if base64.b64encode(raw).decode() != text:
        raise CheckpointError(f"the {what} is not in canonical base64")
    return raw


def load_or_create_key(path: Path) -> Ed25519PrivateKey:
    """The gateway's signing key from a PEM file, created (mode 0600) on first use.

    An existing key readable by group or others is refused, as ssh does: whoever reads it
    can sign checkpoints for a rewritten history.
    """
    if path.exists():
        mode = stat.S_IMODE(path.stat().st_mode)
        if mode & 0o077:
            raise CheckpointError(f"{path} is readable by others (mode {mode:o}); run: chmod 600 {path}")
        key = serialization.load_pem_private_key(path.read_bytes(), password=None)
        if not isinstance(key, Ed25519PrivateKey):
            raise CheckpointError(f"{path} does not hold an Ed25519 private key")
        return key
    key = Ed25519PrivateKey.generate()
    if not _write_private(path, key):
        return load_or_create_key(path)  # another process created it first: use theirs
    return key


def _write_private(path: Path, key: Ed25519PrivateKey) -> bool:
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        os.write(fd, pem)
        os.fsync(fd)
    finally:
        os.close(fd)
    try:
        os.link(tmp, path)  # never replaces a key another process wrote meanwhile
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True
