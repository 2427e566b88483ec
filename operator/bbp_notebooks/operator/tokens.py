"""Callback tokens: a fresh random token per submission; only its SHA-256 is ever stored.

The token lives in the job's script (on sbatch's stdin) and nowhere else. Its digest goes into the
session's status before sbatch runs, so a restarted operator, or any replica, can check a report
without a shared key.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


def new_token() -> str:
    return secrets.token_urlsafe(32)


def digest(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header; None for anything else
    (missing, another scheme, non-ASCII or control characters, an absurd length)."""
    if not authorization or len(authorization) > 512 or not authorization.isascii():
        return None
    scheme, _, token = authorization.partition(" ")
    token = token.strip()
    if scheme != "Bearer" or not token or not token.isprintable() or " " in token:
        return None
    return token


def matches(presented: str, expected_digest: str | None) -> bool:
    """Whether ``presented`` is the token whose digest was stored (constant time)."""
    if expected_digest is None:
        return False
    return hmac.compare_digest(digest(presented).encode(), expected_digest.encode())
