"""What the operator holds while it runs: settings, the ssh pool, identities, known endpoints.

Built once in the startup handler and kept in kopf's memo; handlers and the site pollers share it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from dataclasses import dataclass, field

from kubernetes_asyncio import client as k8s

from bbp_notebooks.api.kerberos import (
    TICKET_KEY,
    Ticket,
    TicketError,
    parse_ccache,
    ticket_secret_name,
)
from bbp_notebooks.api.models import AuthMethod, Endpoint, SlurmSiteSpec
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.api.vocabulary import Reason
from bbp_notebooks.operator.admission import admission_policy_installed
from bbp_notebooks.operator.kube import Kube
from bbp_notebooks.operator.metrics import observe_command
from bbp_notebooks.operator.observe import SparkReport
from bbp_notebooks.operator.shards import Shard
from bbp_notebooks.ssh import CertificateAuthority, Identity, SiteEndpoint, SlurmClient, SshPool
from bbp_notebooks.ssh.kerberos import TicketFiles


def known_hosts_text(spec: SlurmSiteSpec) -> str:
    """known_hosts lines for the frontend: explicit keys, plus host CAs scoped to that host."""
    host = spec.frontend.host
    pattern = host if spec.frontend.port == 22 else f"[{host}]:{spec.frontend.port}"
    lines = list(spec.host_keys.known_hosts)
    lines += [
        f"@cert-authority {pattern} {key.strip()}" for key in spec.host_keys.certificate_authorities
    ]
    return "\n".join(lines) + "\n"


def site_endpoint(name: str, spec: SlurmSiteSpec) -> SiteEndpoint:
    return SiteEndpoint(
        name=name,
        host=spec.frontend.host,
        port=spec.frontend.port,
        known_hosts=known_hosts_text(spec),
        gss_host=(spec.auth.kerberos.host_principal_host if spec.auth.kerberos else None)
        or spec.frontend.host,
    )


log = logging.getLogger(__name__)


class CredentialsUnavailable(Exception):
    """The CA or user-key Secret the site's auth method needs cannot be read."""


class TicketUnusable(CredentialsUnavailable):
    """The user's Kerberos ticket is missing, someone else's, or ended: no ssh is tried."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # a vocabulary.Reason value


@dataclass
class _CachedIdentity:
    identity: Identity
    renew_after: dt.datetime
    ca_version: str = ""


@dataclass
class _CachedCa:
    ca: CertificateAuthority
    version: str  # the Secret's resourceVersion
    checked: dt.datetime


# How often a CA Secret is read again: a rotated CA is used within this long, without a restart.
CA_RECHECK = dt.timedelta(seconds=30)
# How often the admission policy is looked for again (it is removed or restored rarely).
ADMISSION_RECHECK = dt.timedelta(seconds=10)


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: Kube
    pool: SshPool
    # uid -> (job id, endpoint) accepted here. Status holds the truth (written before this);
    # the copy keeps this replica's poller from writing a status older than its own write.
    endpoints: dict[str, tuple[int, Endpoint]] = field(default_factory=dict)
    # uid -> the Spark cluster report accepted here (same reason as endpoints).
    spark_reports: dict[str, SparkReport] = field(default_factory=dict)
    _identities: dict[tuple[str, str], _CachedIdentity] = field(default_factory=dict)
    _cas: dict[str, _CachedCa] = field(default_factory=dict)
    # One lock per (site, user): minting for one user never waits for another user's Secret read.
    _locks: dict[tuple[str, str], asyncio.Lock] = field(default_factory=dict)
    _admission: tuple[dt.datetime, bool | None] | None = None
    # (namespace, user) -> the newest ticket seen (renewed here, or the hub's from its Secret)
    tickets: dict[tuple[str, str], Ticket] = field(default_factory=dict)
    _ticket_files: TicketFiles | None = None
    # What this operator serves (shards.py): every session and site unless it is a shard.
    shard: Shard = field(default_factory=Shard)

    @classmethod
    def create(cls, settings: OperatorSettings, kube: Kube) -> Runtime:
        pool = SshPool(
            max_channels_per_connection=settings.max_channels_per_connection,
            max_handshakes_per_host=settings.max_handshakes_per_frontend,
            observer=observe_command,
        )
        shard = Shard.from_settings(settings.shard, settings.sites, settings.places_auto)
        return cls(settings=settings, kube=kube, pool=pool, shard=shard)

    def client(self, name: str, spec: SlurmSiteSpec) -> SlurmClient:
        return SlurmClient(
            self.pool,
            site_endpoint(name, spec),
            timeout=float(self.settings.command_timeout_seconds),
        )

    async def identity(
        self,
        site: str,
        spec: SlurmSiteSpec,
        user: str,
        *,
        namespace: str | None = None,
        for_cancel: bool = False,
    ) -> Identity:
        """Log-in material for ``user`` at ``site``: a fresh short-lived certificate, or a key.

        At a GSSAPI site a session's own work (``namespace`` given: the session's) logs in with
        the user's Kerberos ticket; the monitor user, the sweep and a cancel whose ticket has
        ended (``for_cancel``) use certificates from the site's caSecretName.
        """
        if spec.auth.method == AuthMethod.GSSAPI and namespace is not None:
            try:
                return await self.kerberos_identity(site, spec, user, namespace)
            except TicketUnusable:
                if not (for_cancel and spec.auth.ca_secret_name):
                    raise
                log.warning(
                    "%s at %s: no usable ticket, cancelling with a certificate instead", user, site
                )
        now = dt.datetime.now(dt.UTC)
        cached = self._identities.get((site, user))
        if cached is not None and cached.renew_after > now and self._ca_fresh(spec, site, now):
            return cached.identity
        async with self._locks.setdefault((site, user), asyncio.Lock()):
            try:
                return await self._mint(site, spec, user, now)
            except (k8s.ApiException, KeyError, ValueError) as error:
                raise CredentialsUnavailable(
                    f"cannot log in as {user} at {site}: {_secret_named(site, spec, user)}"
                    f"{_describe(error)}"
                ) from error

    async def _mint(self, site: str, spec: SlurmSiteSpec, user: str, now: dt.datetime) -> Identity:
        auth = spec.auth
        if auth.method in (AuthMethod.CERTIFICATE, AuthMethod.GSSAPI):
            cached_ca = await self._ca(_ca_secret(site, spec), now)
            cached = self._identities.get((site, user))
            if (
                cached is not None
                and cached.renew_after > now
                and cached.ca_version == cached_ca.version
            ):
                return cached.identity
            validity = dt.timedelta(minutes=auth.certificate_validity_minutes)
            identity = cached_ca.ca.mint(
                user,
                validity=validity,
                source_addresses=self.settings.certificate_source_addresses,
            )
            renew_after = now + validity / 2
            self._identities[(site, user)] = _CachedIdentity(
                identity, renew_after, cached_ca.version
            )
            return identity
        if auth.method == AuthMethod.USER_KEY:
            data = await self.kube.read_secret(
                self.settings.namespace, f"{auth.user_key_secret_prefix}{user}"
            )
            identity = Identity.from_private_key(user, data["ssh-privatekey"])
            self._identities[(site, user)] = _CachedIdentity(
                identity, now + dt.timedelta(minutes=5)
            )
            return identity
        raise NotImplementedError(f"auth method {auth.method}")

    async def ticket(self, namespace: str, user: str, realm: str) -> Ticket:
        """``user``'s ticket: the newer of the one renewed here and the hub's Secret (named from
        the user, in the session's namespace). Raises TicketUnusable unless its client
        principal is exactly ``user@realm`` — checked before any ssh, whoever wrote the Secret.
        """
        secret = ticket_secret_name(user)
        found: Ticket | None = None
        try:
            data = await self.kube.read_secret(namespace, secret)
            found = parse_ccache(data[TICKET_KEY])
        except k8s.ApiException as error:
            if error.status != 404:
                raise CredentialsUnavailable(f"Secret {secret}: {_describe(error)}") from None
        except (KeyError, TicketError) as error:
            raise TicketUnusable(
                Reason.TICKET_MISSING, f"Secret {secret} holds no usable ticket: {error}"
            ) from None
        held = self.tickets.get((namespace, user))
        if found is None:
            # The hub deletes the Secret at logout: a ticket renewed here is not used after it.
            self.tickets.pop((namespace, user), None)
            raise TicketUnusable(
                Reason.TICKET_MISSING,
                f"no Kerberos ticket for {user}: log in to the hub again (Secret {secret})",
            )
        try:
            found.check_owner(user, realm)
        except TicketError as error:
            self.tickets.pop((namespace, user), None)
            raise TicketUnusable(Reason.TICKET_PRINCIPAL_MISMATCH, str(error)) from None
        newest = held if held is not None and held.start > found.start else found
        self.tickets[(namespace, user)] = newest
        return newest

    async def kerberos_identity(
        self, site: str, spec: SlurmSiteSpec, user: str, namespace: str
    ) -> Identity:
        """A GSSAPI identity from ``user``'s checked ticket, in a 0600 cache file of its own."""
        assert spec.auth.kerberos is not None  # the model requires it with GSSAPI
        ticket = await self.ticket(namespace, user, spec.auth.kerberos.realm)
        if ticket.remaining() <= dt.timedelta(0):
            raise TicketUnusable(
                Reason.TICKET_EXPIRED, f"the Kerberos ticket of {ticket.principal} has ended"
            )
        if self._ticket_files is None:
            self._ticket_files = TicketFiles()
        path = self._ticket_files.write(f"{namespace}-{site}-{user}", ticket)
        return Identity.gssapi(user, path, valid_before=ticket.end)

    def prune(self, now: dt.datetime, live_sessions: set[str]) -> None:
        """Forget what no longer serves: identities past their renewal time (and their locks),
        endpoints of sessions that are gone. Caches keyed by user or session stay bounded by
        the sessions that exist."""
        expired = [key for key, value in self._identities.items() if value.renew_after <= now]
        for key in expired:
            del self._identities[key]
        for key in [k for k in self._locks if k not in self._identities]:
            if not self._locks[key].locked():
                del self._locks[key]
        for uid in [uid for uid in self.endpoints if uid not in live_sessions]:
            del self.endpoints[uid]
        for uid in [uid for uid in self.spark_reports if uid not in live_sessions]:
            del self.spark_reports[uid]

    def _ca_fresh(self, spec: SlurmSiteSpec, site: str, now: dt.datetime) -> bool:
        if spec.auth.method not in (AuthMethod.CERTIFICATE, AuthMethod.GSSAPI):
            return True
        cached = self._cas.get(_ca_secret(site, spec))
        return cached is not None and now - cached.checked < CA_RECHECK

    async def _ca(self, secret_name: str, now: dt.datetime) -> _CachedCa:
        """The CA from its Secret, read again every CA_RECHECK: a rotated key is picked up, and
        certificates minted from the old one are not reused."""
        cached = self._cas.get(secret_name)
        if cached is not None and now - cached.checked < CA_RECHECK:
            return cached
        data, _, version = await self.kube.read_secret_with_owners(
            self.settings.namespace, secret_name
        )
        if cached is not None and cached.version == version:
            cached.checked = now
            return cached
        fresh = _CachedCa(CertificateAuthority(data["ca"]), version, now)
        if cached is not None:
            log.warning("CA Secret %s changed: minting from the new key", secret_name)
            self._identities = {
                key: value
                for key, value in self._identities.items()
                if value.ca_version != cached.version
            }
        self._cas[secret_name] = fresh
        return fresh

    async def admission_policy_in_force(self) -> bool | None:
        """Whether the admission policy that vouches for spec.user is installed and denies
        (None: could not ask). Asked at most every ADMISSION_RECHECK; True when not required."""
        if not self.settings.require_admission_policy:
            return True
        now = dt.datetime.now(dt.UTC)
        if self._admission is None or now - self._admission[0] >= ADMISSION_RECHECK:
            found = await admission_policy_installed(self.kube, self.settings.admission_policy_name)
            self._admission = (now, found)
        return self._admission[1]

    async def close(self) -> None:
        await self.pool.close()
        if self._ticket_files is not None:
            self._ticket_files.close()


def _ca_secret(site: str, spec: SlurmSiteSpec) -> str:
    return spec.auth.ca_secret_name or f"{site}-user-ca"


def _secret_named(site: str, spec: SlurmSiteSpec, user: str) -> str:
    """Which Secret the site's auth method reads, for the message (an operator must fix it)."""
    if spec.auth.method == AuthMethod.CERTIFICATE:
        return f"CA Secret {_ca_secret(site, spec)!r}: "
    if spec.auth.method == AuthMethod.USER_KEY:
        return f"key Secret {spec.auth.user_key_secret_prefix + user!r}: "
    return ""


def _describe(error: Exception) -> str:
    if isinstance(error, k8s.ApiException):
        return f"Secret not readable ({error.status} {error.reason})"
    if isinstance(error, KeyError):
        return f"Secret has no key {error}"
    return str(error)
