"""A user's Kerberos ticket between the hub and the operator: where it is kept, whose it is.

A ticket cache is the MIT FILE format (version 4). It is parsed here in pure Python, so that whose
ticket it is and until when are known before any GSSAPI call or ssh: a cache is used for a
session only when its client principal is exactly ``user@REALM``.

The hub (its ServiceAccount only, by admission) writes one Secret per user in the sessions
namespace, named from the user; the operator reads that one name for that user's sessions and
checks the client principal inside the ticket cache anyway.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import hashlib
import re
import struct

from bbp_notebooks.api.constants import LABEL_PREFIX

TICKET_SECRET_PREFIX = "bbp-krb5-"  # noqa: S105  (a name prefix, not a secret)
# The Secret's data key holding the MIT ccache file (FILE type, format 4), and annotations the
# hub and operator read without decoding it.
TICKET_KEY = "ccache"
TICKET_LABEL = f"{LABEL_PREFIX}/kerberos-ticket"  # value: "true"
TICKET_USER_ANNOTATION = f"{LABEL_PREFIX}/kerberos-user"
TICKET_EXPIRY_ANNOTATION = f"{LABEL_PREFIX}/kerberos-expires"  # RFC 3339, UTC
TICKET_RENEW_UNTIL_ANNOTATION = f"{LABEL_PREFIX}/kerberos-renew-until"

_DNS_SAFE = re.compile(r"^[a-z0-9]([a-z0-9-]{0,50}[a-z0-9])?$")


def ticket_secret_name(user: str) -> str:
    """``bbp-krb5-<user>``; a user whose name is not DNS-safe (``_``) gets a digest instead, so
    two users never share a name."""
    if _DNS_SAFE.match(user):
        return f"{TICKET_SECRET_PREFIX}{user}"
    return f"{TICKET_SECRET_PREFIX}x-{hashlib.sha256(user.encode()).hexdigest()[:20]}"


def job_ccache_path(session_uid: str) -> str:
    """Where the job's copy of the ticket lives, relative to the user's home (0600 in a 0700
    folder the job script also uses)."""
    return f".bbp-notebooks/{session_uid}/krb5cc"


# krb5 ticket flags (RFC 4120 5.3, as MIT stores them in a ccache)
_FORWARDABLE = 0x40000000
_RENEWABLE = 0x00800000
_CONFIG_REALM = b"X-CACHECONF:"


class TicketError(ValueError):
    """Not a ticket cache we can use (unreadable, no TGT, wrong principal, renewal refused)."""


@dataclasses.dataclass(frozen=True)
class Ticket:
    """A user's ticket-granting ticket, as its ccache says. ``data`` is the whole cache file."""

    principal: str  # client principal of the cache, e.g. alice@EXAMPLE.ORG
    realm: str
    start: dt.datetime
    end: dt.datetime
    renew_until: dt.datetime | None  # None: not renewable
    forwardable: bool
    data: bytes = dataclasses.field(repr=False)

    @property
    def renewable(self) -> bool:
        return self.renew_until is not None and self.renew_until > self.end

    def check_owner(self, user: str, realm: str) -> None:
        """Raise TicketError unless this is ``user@realm``'s own ticket."""
        expected = f"{user}@{realm}"
        if self.principal != expected:
            raise TicketError(f"ticket cache belongs to {self.principal}, not {expected}")

    def remaining(self, now: dt.datetime | None = None) -> dt.timedelta:
        return self.end - (now or dt.datetime.now(dt.UTC))


class _Reader:
    def __init__(self, data: bytes) -> None:
        self.data, self.at = data, 0

    def take(self, size: int) -> bytes:
        if self.at + size > len(self.data):
            raise TicketError("ticket cache is truncated")
        chunk = self.data[self.at : self.at + size]
        self.at += size
        return chunk

    def u8(self) -> int:
        return int(self.take(1)[0])

    def u16(self) -> int:
        return int(struct.unpack(">H", self.take(2))[0])

    def u32(self) -> int:
        return int(struct.unpack(">I", self.take(4))[0])

    def blob(self) -> bytes:
        return self.take(self.u32())

    def principal(self) -> tuple[bytes, list[bytes]]:
        self.u32()  # name type
        count = self.u32()
        if count > 32:
            raise TicketError("ticket cache principal has too many components")
        realm = self.blob()
        return realm, [self.blob() for _ in range(count)]

    @property
    def done(self) -> bool:
        return self.at >= len(self.data)


def _name(realm: bytes, components: list[bytes]) -> str:
    return "/".join(c.decode("utf-8", "replace") for c in components) + "@" + realm.decode()


def _when(seconds: int) -> dt.datetime:
    return dt.datetime.fromtimestamp(seconds, dt.UTC)


def parse_ccache(data: bytes) -> Ticket:
    """The TGT of a FILE ccache (format 4); TicketError when there is none or it is not one."""
    reader = _Reader(data)
    if reader.u16() != 0x0504:
        raise TicketError("not a version 4 ticket cache")
    reader.take(reader.u16())  # header tags (KDC time offset)
    realm, components = reader.principal()
    principal = _name(realm, components)
    tgt = f"krbtgt/{realm.decode()}@{realm.decode()}"
    while not reader.done:
        client = _name(*reader.principal())
        server_realm, server_components = reader.principal()
        reader.u16()  # enctype
        reader.blob()  # session key
        _auth, start, end, renew_till = (reader.u32() for _ in range(4))
        reader.u8()  # is_skey
        flags = reader.u32()
        for _ in range(reader.u32()):  # addresses
            reader.u16()
            reader.blob()
        for _ in range(reader.u32()):  # authdata
            reader.u16()
            reader.blob()
        reader.blob()  # ticket
        reader.blob()  # second ticket
        if server_realm == _CONFIG_REALM or client != principal:
            continue
        if _name(server_realm, server_components) != tgt:
            continue
        renewable = bool(flags & _RENEWABLE) and renew_till > end
        return Ticket(
            principal=principal,
            realm=realm.decode(),
            start=_when(start or _auth),
            end=_when(end),
            renew_until=_when(renew_till) if renewable else None,
            forwardable=bool(flags & _FORWARDABLE),
            data=data,
        )
    raise TicketError(f"ticket cache of {principal} holds no ticket-granting ticket")
