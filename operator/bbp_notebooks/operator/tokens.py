"""Per-session callback tokens: HMAC of the session uid under the operator's secret key."""

from __future__ import annotations

import hashlib
import hmac


def session_token(key: bytes, uid: str) -> str:
    return hmac.new(key, f"bbp-notebooks/endpoint/{uid}".encode(), hashlib.sha256).hexdigest()


def verify(key: bytes, uid: str, presented: str) -> bool:
    return hmac.compare_digest(session_token(key, uid), presented)
