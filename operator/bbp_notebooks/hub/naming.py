"""Names and labels of the objects the spawner creates, derived from hub user and server. Pure."""

from __future__ import annotations

import hashlib
import re

from bbp_notebooks.api.constants import ANNOTATION_PREFIX, LABEL_PREFIX

# The Secret is named after the session plus this suffix, and environmentSecretRef.name is a DNS
# label (at most 63 characters): session names leave room for it.
SECRET_SUFFIX = "-env"  # noqa: S105 (a name suffix, not a password)
MAX_SESSION_NAME = 63 - len(SECRET_SUFFIX)
_HASH_CHARS = 8

HUB_USER_LABEL = f"{LABEL_PREFIX}/hub-user"
SERVER_NAME_LABEL = f"{LABEL_PREFIX}/server-name"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
MANAGED_BY = "bbp-notebooks-hub"

# The operator reads the hub groups of a session's user from this annotation (comma-separated).
# Exact hub user and server names: labels must be sanitised, annotations need not be.
HUB_USER_ANNOTATION = f"{ANNOTATION_PREFIX}/hub-user"
SERVER_NAME_ANNOTATION = f"{ANNOTATION_PREFIX}/server-name"

_NOT_DNS = re.compile(r"[^a-z0-9-]+")
_NOT_LABEL = re.compile(r"[^A-Za-z0-9_.-]+")
_LABEL_EDGE = re.compile(r"^[^A-Za-z0-9]+|[^A-Za-z0-9]+$")
GROUP_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")


def _digest(*parts: str) -> str:
    return hashlib.sha256("\x00".join(parts).encode()).hexdigest()[:_HASH_CHARS]


def session_name(hub_user: str, server_name: str) -> str:
    """``<user>[-<server>]-<hash>``: a DNS label, stable for one (user, server) pair.

    The hash of the exact pair is always appended: user and server names may both contain '-',
    so ``a-b`` + ``""`` and ``a`` + ``b`` would otherwise collide, and sanitising (lower-casing,
    dropping '@') is not injective either.
    """
    readable = hub_user if not server_name else f"{hub_user}-{server_name}"
    readable = _NOT_DNS.sub("-", readable.lower()).strip("-")
    readable = readable[: MAX_SESSION_NAME - _HASH_CHARS - 1].strip("-") or "nb"
    return f"{readable}-{_digest(hub_user, server_name)}"


def secret_name(session: str) -> str:
    return session + SECRET_SUFFIX


def label_value(value: str) -> str:
    """A valid label value that identifies ``value`` (hash-suffixed when it had to change)."""
    cleaned = _LABEL_EDGE.sub("", _NOT_LABEL.sub("-", value))
    if cleaned == value and len(value) <= 63:
        return value
    cleaned = _LABEL_EDGE.sub("", cleaned[: 63 - _HASH_CHARS - 1])
    return f"{cleaned}-{_digest(value)}" if cleaned else _digest(value)


def labels(hub_user: str, server_name: str) -> dict[str, str]:
    return {
        MANAGED_BY_LABEL: MANAGED_BY,
        HUB_USER_LABEL: label_value(hub_user),
        SERVER_NAME_LABEL: label_value(server_name),
    }


def safe_groups(names: list[str]) -> tuple[list[str], list[str]]:
    """(usable, refused) group names. A name with a comma would smuggle extra groups into the
    comma-separated annotation the operator trusts, so anything outside the CRD's group pattern
    is refused rather than escaped."""
    usable = sorted({n for n in names if GROUP_NAME.match(n)})
    refused = sorted({n for n in names if not GROUP_NAME.match(n)})
    return usable, refused
