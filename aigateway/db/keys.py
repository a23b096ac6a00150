"""API key format, generation and hashing, shared by the server and the CLIs.

A key is `aig_` followed by 43 URL-safe characters (256 random bits from `secrets`).
Only `sha256(key)` and a short display prefix are ever stored; the full key is shown
once, when it is made.
"""

from __future__ import annotations

import hashlib
import re
import secrets
from dataclasses import dataclass

KEY_PREFIX = "aig_"
SECRET_BYTES = 32
DISPLAY_CHARS = 8  # characters of the secret kept for display, after the prefix
KEY_RE = re.compile(r"^aig_[A-Za-z0-9_-]{43}$")


@dataclass(frozen=True, slots=True)
class NewKey:
    secret: str
    key_hash: str
    display_prefix: str


def generate_key() -> NewKey:
    secret = KEY_PREFIX + secrets.token_urlsafe(SECRET_BYTES)
    return NewKey(secret=secret, key_hash=hash_key(secret), display_prefix=display_prefix(secret))


def hash_key(secret: str) -> str:
    return hashlib.sha256(secret.encode()).hexdigest()


def display_prefix(secret: str) -> str:
    """The part of a key that may be shown and logged: `aig_` and 8 characters."""
    return secret[: len(KEY_PREFIX) + DISPLAY_CHARS]


def looks_like_key(token: str) -> bool:
    return KEY_RE.match(token) is not None
