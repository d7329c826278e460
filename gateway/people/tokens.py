"""API bearer tokens: `cw_<id>_<secret>`, of which the database keeps only the id and a hash.

The id is public (it names the token in `tokens list`, in logs, in `tokens revoke`); the
secret is 32 random bytes, shown once when the token is created and never stored.

Why plain SHA-256 and not a slow password hash (scrypt, argon2): slow hashes exist to
make guessing a *human-chosen* password expensive. A 256-bit random secret cannot be
guessed at any hash speed (2^256 tries), so a slow hash would only add milliseconds to
every API request. What matters is that the database, its backups and the journal never
hold anything from which a working token can be rebuilt; a SHA-256 of the secret is that.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets

PREFIX = "cw"
_TOKEN = re.compile(r"cw_([0-9a-f]{10})_([0-9a-f]{64})")
#: Compared against when the id is unknown, so an unknown id costs the same time as a wrong secret.
_DUMMY_HASH = hashlib.sha256(b"commonwatt: no such token").hexdigest()


def new_token() -> tuple[str, str, str]:
    """(token id, the full token to hand out once, the hash to store)."""
    token_id = secrets.token_hex(5)
    secret = secrets.token_hex(32)
    return token_id, f"{PREFIX}_{token_id}_{secret}", hash_secret(secret)


def hash_secret(secret: str) -> str:
    return hashlib.sha256(secret.encode("ascii")).hexdigest()


def parse_token(bearer: str) -> tuple[str, str] | None:
    """(token id, secret) of a well-formed token, else None."""
    match = _TOKEN.fullmatch(bearer.strip())
    return None if match is None else (match[1], match[2])


def secret_matches(secret: str, stored_hash: str | None) -> bool:
    """Constant-time comparison of the secret's hash with the stored one (the dummy when None)."""
    expected = _DUMMY_HASH if stored_hash is None else stored_hash
    return hmac.compare_digest(hash_secret(secret), expected) and stored_hash is not None
