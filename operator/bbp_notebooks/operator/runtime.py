"""What the operator holds while it runs: settings, the ssh pool, identities, known endpoints.

Built once in the startup handler and kept in kopf's memo; handlers and the site pollers share it.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import secrets
from dataclasses import dataclass, field

from kubernetes_asyncio import client as k8s

from bbp_notebooks.api.models import AuthMethod, Endpoint, SlurmSiteSpec
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.operator.kube import Kube
from bbp_notebooks.operator.metrics import observe_command
from bbp_notebooks.ssh import CertificateAuthority, Identity, SiteEndpoint, SlurmClient, SshPool


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
    )


class CredentialsUnavailable(Exception):
    """The CA or user-key Secret the site's auth method needs cannot be read."""


@dataclass
class _CachedIdentity:
    identity: Identity
    renew_after: dt.datetime


@dataclass
class Runtime:
    settings: OperatorSettings
    kube: Kube
    pool: SshPool
    token_key: bytes
    # uid -> (job id, endpoint) reported by jobs; also persisted in status: a restart loses nothing.
    endpoints: dict[str, tuple[int, Endpoint]] = field(default_factory=dict)
    _identities: dict[tuple[str, str], _CachedIdentity] = field(default_factory=dict)
    _cas: dict[str, CertificateAuthority] = field(default_factory=dict)
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @classmethod
    def create(cls, settings: OperatorSettings, kube: Kube) -> Runtime:
        key = settings.token_key.get_secret_value().encode() or secrets.token_bytes(32)
        pool = SshPool(
            max_channels_per_connection=settings.max_channels_per_connection,
            max_handshakes_per_host=settings.max_handshakes_per_frontend,
            observer=observe_command,
        )
        return cls(settings=settings, kube=kube, pool=pool, token_key=key)

    def client(self, name: str, spec: SlurmSiteSpec) -> SlurmClient:
        return SlurmClient(
            self.pool,
            site_endpoint(name, spec),
            timeout=float(self.settings.command_timeout_seconds),
        )

    async def identity(self, site: str, spec: SlurmSiteSpec, user: str) -> Identity:
        """Log-in material for ``user`` at ``site``: a fresh short-lived certificate, or a key."""
        now = dt.datetime.now(dt.UTC)
        cached = self._identities.get((site, user))
        if cached is not None and cached.renew_after > now:
            return cached.identity
        async with self._lock:
            try:
                return await self._mint(site, spec, user, now)
            except (k8s.ApiException, KeyError, ValueError) as error:
                raise CredentialsUnavailable(
                    f"cannot log in as {user} at {site}: {_describe(error)}"
                ) from error

    async def _mint(self, site: str, spec: SlurmSiteSpec, user: str, now: dt.datetime) -> Identity:
        auth = spec.auth
        if auth.method == AuthMethod.CERTIFICATE:
            ca = await self._ca(auth.ca_secret_name or f"{site}-user-ca")
            validity = dt.timedelta(minutes=auth.certificate_validity_minutes)
            identity = ca.mint(
                user,
                validity=validity,
                source_addresses=self.settings.certificate_source_addresses,
            )
            renew_after = now + validity / 2
        elif auth.method == AuthMethod.USER_KEY:
            data = await self.kube.read_secret(
                self.settings.namespace, f"{auth.user_key_secret_prefix}{user}"
            )
            identity = Identity.from_private_key(user, data["ssh-privatekey"])
            renew_after = now + dt.timedelta(minutes=5)
        else:
            raise NotImplementedError("GSSAPI (Kerberos) login is not implemented yet")
        self._identities[(site, user)] = _CachedIdentity(identity, renew_after)
        return identity

    async def _ca(self, secret_name: str) -> CertificateAuthority:
        ca = self._cas.get(secret_name)
        if ca is None:
            data = await self.kube.read_secret(self.settings.namespace, secret_name)
            ca = CertificateAuthority(data["ca"])
            self._cas[secret_name] = ca
        return ca

    async def close(self) -> None:
        await self.pool.close()


def _describe(error: Exception) -> str:
    if isinstance(error, k8s.ApiException):
        return f"Secret not readable ({error.status} {error.reason})"
    if isinstance(error, KeyError):
        return f"Secret has no key {error}"
    return str(error)
