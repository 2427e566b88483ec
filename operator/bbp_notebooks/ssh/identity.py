"""Who we log in as and where: site endpoints, user identities, the CA that mints certificates."""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import ipaddress
import re
import secrets
from collections.abc import Sequence

import asyncssh

from bbp_notebooks.api.constants import POSIX_USER_PATTERN

__all__ = ["CertificateAuthority", "Identity", "IdentityKind", "SiteEndpoint"]

_USER = re.compile(POSIX_USER_PATTERN)


@dataclasses.dataclass(frozen=True)
class SiteEndpoint:
    """An ssh frontend of a Slurm site and the host keys (or host CAs) we trust for it.

    ``known_hosts`` is OpenSSH known_hosts text: plain key lines and ``@cert-authority`` lines,
    with ``[host]:port`` patterns for ports other than 22. It must not be empty: there is no
    "accept any host key" mode.
    """

    name: str
    host: str
    port: int
    known_hosts: str = dataclasses.field(repr=False)
    # The host part of the frontend's Kerberos service principal (host/<gss_host>), for GSSAPI.
    gss_host: str | None = None

    def __post_init__(self) -> None:
        if not self.known_hosts.strip():
            raise ValueError(f"site {self.name}: known_hosts is empty; refusing to trust any key")
        if not 0 < self.port < 65536:
            raise ValueError(f"site {self.name}: bad port {self.port}")
        try:
            self.trusted_host_keys()
        except ValueError as error:
            raise ValueError(f"site {self.name}: unreadable known_hosts: {error}") from None

    def trusted_host_keys(self) -> asyncssh.SSHKnownHosts:
        return asyncssh.import_known_hosts(self.known_hosts)


class IdentityKind(enum.Enum):
    CERTIFICATE = "certificate"
    KEY = "key"
    # Kerberos: the user's ticket cache, used with GSSAPI user authentication and delegation.
    GSSAPI = "gssapi"


@dataclasses.dataclass(frozen=True)
class Identity:
    """Log-in material for one POSIX user: a key, optionally with a certificate for it.

    ``valid_before`` is the certificate's (or ticket's) expiry (UTC), None for a plain key.
    A Kerberos identity has no key but ``ccache``: the ticket cache file GSSAPI reads
    (``FILE:<path>``, 0600, whose client principal was checked to be this user's).
    """

    username: str
    key: asyncssh.SSHKey | None = dataclasses.field(repr=False)
    certificate: asyncssh.SSHCertificate | None = dataclasses.field(default=None, repr=False)
    valid_before: dt.datetime | None = None
    ccache: str | None = None

    def __post_init__(self) -> None:
        if not _USER.match(self.username):
            raise ValueError(f"not a POSIX user name: {self.username!r}")
        if self.certificate is not None and self.key is None:
            raise ValueError("a certificate needs its private key")
        if (self.key is None) == (self.ccache is None):
            raise ValueError("an identity has either a key or a Kerberos ticket cache")
        if self.valid_before is None and self.certificate is not None:
            object.__setattr__(self, "valid_before", _certificate_expiry(self.certificate))

    @property
    def kind(self) -> IdentityKind:
        if self.key is None:
            return IdentityKind.GSSAPI
        return IdentityKind.CERTIFICATE if self.certificate is not None else IdentityKind.KEY

    @property
    def fingerprint(self) -> str:
        """The key's SHA256 fingerprint (safe to log), or "gssapi"."""
        return self.key.get_fingerprint() if self.key is not None else "gssapi"

    def expires_within(self, margin: dt.timedelta, *, now: dt.datetime | None = None) -> bool:
        if self.valid_before is None:
            return False
        return self.valid_before - (now or dt.datetime.now(dt.UTC)) <= margin

    @classmethod
    def from_private_key(
        cls,
        username: str,
        private_key: bytes | str,
        certificate: bytes | str | None = None,
        *,
        passphrase: str | None = None,
    ) -> Identity:
        """From OpenSSH-format text (as kept in a Kubernetes Secret)."""
        key = asyncssh.import_private_key(private_key, passphrase)
        cert = asyncssh.import_certificate(certificate) if certificate is not None else None
        return cls(username, key, cert)

    @classmethod
    def gssapi(
        cls, username: str, ccache: str, valid_before: dt.datetime | None = None
    ) -> Identity:
        """A Kerberos identity: log in with the ticket in ``ccache`` (checked by the caller)."""
        return cls(username, None, valid_before=valid_before, ccache=ccache)


def _certificate_expiry(certificate: asyncssh.SSHCertificate) -> dt.datetime | None:
    # asyncssh keeps the validity window on the OpenSSH certificate object without a public getter.
    valid_before = getattr(certificate, "_valid_before", None)
    if not isinstance(valid_before, int) or valid_before >= 2**63:
        return None
    return dt.datetime.fromtimestamp(valid_before, dt.UTC)


class CertificateAuthority:
    """Mints short-lived user certificates that site frontends trust (TrustedUserCAKeys).

    Certificates carry one principal (the user), a validity starting a minute in the past (clock
    skew), and none of the interactive extensions: no pty, no port/agent/X11 forwarding, no rc.
    Given ``source_addresses`` (the operator's egress addresses or CIDRs), they also carry the
    ``source-address`` critical option: sshd then refuses them from anywhere else.
    """

    def __init__(self, ca_private_key: bytes | str | asyncssh.SSHKey) -> None:
        if isinstance(ca_private_key, asyncssh.SSHKey):
            self._key = ca_private_key
        else:
            self._key = asyncssh.import_private_key(ca_private_key)

    @property
    def public_key(self) -> str:
        """The CA's public key line, for sshd's TrustedUserCAKeys."""
        return self._key.export_public_key().decode().strip()

    def mint(
        self,
        user: str,
        validity: dt.timedelta = dt.timedelta(minutes=10),
        *,
        now: dt.datetime | None = None,
        source_addresses: Sequence[str] = (),
    ) -> Identity:
        if not _USER.match(user):
            raise ValueError(f"not a POSIX user name: {user!r}")
        if validity <= dt.timedelta(0):
            raise ValueError("certificate validity must be positive")
        if isinstance(source_addresses, str):
            raise TypeError("source_addresses is a sequence of addresses, not one string")
        sources = [_source_address(address) for address in source_addresses]
        moment = now or dt.datetime.now(dt.UTC)
        valid_after = moment - dt.timedelta(minutes=1)
        valid_before = moment + validity
        user_key = asyncssh.generate_private_key("ssh-ed25519")
        serial = secrets.randbits(63)
        certificate = self._key.generate_user_certificate(
            user_key,
            f"bbp-notebooks:{user}:{serial}",
            serial=serial,
            principals=[user],
            valid_after=int(valid_after.timestamp()),
            valid_before=int(valid_before.timestamp()),
            source_address=sources or None,
            permit_x11_forwarding=False,
            permit_agent_forwarding=False,
            permit_port_forwarding=False,
            permit_pty=False,
            permit_user_rc=False,
        )
        return Identity(
            user,
            user_key,
            certificate,
            valid_before=valid_before.replace(microsecond=0),
        )


def _source_address(address: str) -> str:
    """An address or CIDR as sshd's source-address option reads it; anything else is refused
    here, because sshd refuses a certificate whose source-address it cannot parse."""
    try:
        return str(ipaddress.ip_network(address.strip(), strict=False))
    except ValueError:
        raise ValueError(f"not an IP address or CIDR: {address!r}") from None
