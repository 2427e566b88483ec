"""KerberosAuthenticator: hub login with a Kerberos password, no PAM on the hub.

The user's name and password become a forwardable, renewable TGT for ``user@REALM`` straight
from the KDC (python-gssapi's acquire_cred_with_password; forwardable and renewable as the hub's
krb5.conf asks: ``forwardable = true``, ``renew_lifetime``). A wrong password is the hub's normal
"Invalid username or password". The ticket cache goes into one Secret per user in the sessions
namespace (``bbp-krb5-<user>``, labelled, created by the hub's ServiceAccount), which the operator
reads for that user's sessions only and whose client principal it checks again. The password is
never stored, logged or put anywhere: it lives in this call's memory only.

The Secret is deleted at logout and once its ticket has ended (refresh_user, which then makes
the hub ask for the password again).

A KDC answering for the realm could be anyone's (a spoofed address, a poisoned DNS answer): a
TGT alone proves only that *some* KDC knew a key for the password it was sent. With ``keytab``
set, the hub checks that the KDC is the realm's own, as pam_krb5's ``validate`` does: it asks
the KDC for a service ticket for ``service_principal`` with the new TGT and accepts it with the
key in its keytab. Only the real KDC shares that key; any other answer refuses the login.

    c.JupyterHub.authenticator_class = "bbp_notebooks.hub.kerberos.KerberosAuthenticator"
    c.KerberosAuthenticator.realm = "EXAMPLE.ORG"
    c.KerberosAuthenticator.keytab = "/etc/bbp-hub/krb5.keytab"             # optional
    c.KerberosAuthenticator.service_principal = "HTTP/hub.example.org"     # its principal
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import re
import tempfile
from pathlib import Path
from typing import Any

import gssapi
import gssapi.raw
from jupyterhub.auth import Authenticator
from jupyterhub.handlers.login import LoginHandler, LogoutHandler
from kubernetes_asyncio import client as k8s
from traitlets import Integer, Unicode, default

from bbp_notebooks.api.constants import POSIX_USER_PATTERN
from bbp_notebooks.api.kerberos import (
    TICKET_EXPIRY_ANNOTATION,
    TICKET_KEY,
    TICKET_LABEL,
    TICKET_RENEW_UNTIL_ANNOTATION,
    TICKET_USER_ANNOTATION,
    Ticket,
    TicketError,
    parse_ccache,
    ticket_secret_name,
)
from bbp_notebooks.hub.kube import (
    ApiException,
    HubKube,
    api_client,
    is_conflict,
    is_not_found,
    own_namespace,
)

_USER = re.compile(POSIX_USER_PATTERN)
_KRB5_MECH = gssapi.OID.from_int_seq("1.2.840.113554.1.2.2")


class LoginRefused(Exception):
    """The KDC did not issue a ticket (wrong password, unknown or locked principal)."""


class TicketNotStored(RuntimeError):
    """The KDC issued a ticket but the hub could not write it to a ticket cache (the hub's
    fault, not the user's password): the login fails loudly instead of going on without it."""


def _cred_store(**elements: str) -> dict[bytes | str, bytes | str]:
    """A GSSAPI cred store (``ccache=...``, ``keytab=...``) with bytes keys and values only.

    python-gssapi (up to 1.12 at least; ``c_create_key_value_set`` in ext_cred_store.pyx)
    encodes a *str* key or value into a temporary bytes object, keeps only its char pointer and
    drops the object before gss_store_cred_into / gss_acquire_cred_from runs, which it runs
    without the GIL. Any other Python thread allocating meanwhile can reuse that memory: MIT
    krb5 then sees a garbled key (not "ccache", so it stores into the process's *default*
    ccache and returns GSS_S_COMPLETE) or a garbled value (a ccache of another name, e.g. a file
    with a garbage name in the working directory). Bytes are used as they are: their pointers
    stay valid while the dict, held by the caller for the whole call, holds them. (Typed as
    python-gssapi's stubs want it; every key and value is bytes.)"""
    return {key.encode(): value.encode() for key, value in elements.items()}


@dataclasses.dataclass(frozen=True)
class KdcCheck:
    """Prove the KDC is the realm's own: a service ticket for ``service`` (a principal,
    ``name/instance`` or ``name/instance@REALM``) that the key in ``keytab`` accepts."""

    keytab: str
    service: str


def verify_kdc(creds: gssapi.raw.Creds, principal: str, check: KdcCheck) -> None:
    """LoginRefused unless the KDC that issued ``creds`` issues a service ticket for
    ``check.service`` that the hub's own keytab accepts (blocking)."""
    service = gssapi.Name(check.service, gssapi.NameType.kerberos_principal)
    try:
        store = _cred_store(keytab=check.keytab)  # bytes, referenced until the call returns
        acceptor = gssapi.raw.acquire_cred_from(
            store, name=service, mechs=[_KRB5_MECH], usage="accept"
        ).creds
    except gssapi.raw.GSSError as error:
        # The hub's own configuration is wrong, not the user's password: say so loudly.
        raise RuntimeError(
            f"the hub's keytab {check.keytab} has no key for {check.service}: {error.gen_message()}"
        ) from None
    try:
        initiator = gssapi.SecurityContext(
            name=service, creds=gssapi.Credentials(creds), mech=_KRB5_MECH, usage="initiate"
        )
        token = initiator.step()
        accepted = gssapi.SecurityContext(creds=gssapi.Credentials(acceptor), usage="accept")
        accepted.step(token)
        # python-gssapi may raise a step's error only when the context is next looked at.
        complete, client = accepted.complete, str(accepted.initiator_name)
    except gssapi.raw.GSSError as error:
        raise LoginRefused(
            f"the KDC's answer for {principal} is not the realm's own: a service ticket for "
            f"{check.service} that the hub's keytab does not accept ({error.gen_message()})"
        ) from None
    if not complete or client != principal:
        raise LoginRefused(f"the service ticket for {check.service} is not {principal}'s")


def acquire_ticket(
    principal: str, password: str, lifetime_s: int | None = None, check: KdcCheck | None = None
) -> bytes:
    """A TGT for ``principal`` from the KDC, as the bytes of a FILE ccache (blocking). With
    ``check``, the KDC must prove it is the realm's own (verify_kdc) first."""
    name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
    try:
        acquired = gssapi.raw.acquire_cred_with_password(
            name, password.encode(), lifetime=lifetime_s, mechs=[_KRB5_MECH], usage="initiate"
        )
    except gssapi.raw.GSSError as error:
        # The minor message names the cause (e.g. "Preauthentication failed"), not the password.
        raise LoginRefused(f"no ticket for {principal}: {error.gen_message()}") from None
    data = _stored(principal, acquired.creds)
    if check is not None:
        # After the cache was read: the hub's own service ticket stays out of the user's.
        verify_kdc(acquired.creds, principal, check)
    return data


def _stored(principal: str, creds: gssapi.raw.Creds) -> bytes:
    """The bytes of a FILE ccache holding ``creds`` (TicketNotStored if it cannot be written)."""
    with tempfile.TemporaryDirectory(prefix="bbp-krb5-login-") as folder:
        path = Path(folder) / "ccache"
        # Bytes, not str, and held in `store` until the call returns: see _cred_store.
        store = _cred_store(ccache=f"FILE:{path}")
        try:
            gssapi.raw.store_cred_into(
                store, creds, usage="initiate", mech=_KRB5_MECH, overwrite=True
            )
        except gssapi.raw.GSSError as error:
            # E.g. GSS_S_CREDENTIALS_EXPIRED (krb5_gss_store_cred_into: lifetime 0).
            raise TicketNotStored(
                f"the ticket of {principal} could not be stored: {error.gen_message()}"
            ) from None
        data = path.read_bytes() if path.exists() else b""
        if not data:
            # GSS_S_COMPLETE for a cache elsewhere: never a silent login without a ticket.
            raise TicketNotStored(
                f"the ticket of {principal} could not be stored: the GSSAPI reported success "
                f"but wrote no ticket cache at {path}"
            )
        return data


class KerberosLogoutHandler(LogoutHandler):  # type: ignore[misc]
    """Logout also deletes the user's ticket Secret: no new job gets a ticket after it."""

    async def handle_logout(self) -> None:
        user = self.current_user
        if user is not None:
            await self.authenticator.forget_ticket(str(user.name))
        await super().handle_logout()


class KerberosAuthenticator(Authenticator):  # type: ignore[misc]
    """Username + Kerberos password -> a ticket in the user's Secret, or the normal refusal."""

    realm = Unicode(help="Kerberos realm of the hub's users (principal <name>@<realm>).").tag(
        config=True
    )
    namespace = Unicode(
        help="Namespace of the sessions (where the ticket Secrets go). Default: the hub pod's "
        "namespace in a cluster, else 'default'.",
    ).tag(config=True)
    kubeconfig = Unicode(
        None, allow_none=True, help="kubeconfig file; None: in-cluster credentials."
    ).tag(config=True)
    ticket_lifetime = Integer(
        0, help="Seconds of ticket lifetime to ask for; 0: what krb5.conf and the KDC give."
    ).tag(config=True)
    keytab = Unicode(
        "",
        help="Keytab with the key of service_principal. When set, each login proves that the "
        "KDC is the realm's own (a service ticket for service_principal that this key accepts); "
        "empty: any KDC that answers is believed.",
    ).tag(config=True)
    service_principal = Unicode(
        "",
        help="The hub's own principal in keytab, e.g. HTTP/hub.example.org (realm optional).",
    ).tag(config=True)

    def kdc_check(self) -> KdcCheck | None:
        if not self.keytab:
            return None
        if not self.service_principal:
            raise ValueError("KerberosAuthenticator.keytab is set: set service_principal too")
        return KdcCheck(self.keytab, self.service_principal)

    @default("namespace")
    def _default_namespace(self) -> str:
        return own_namespace()

    @default("auth_refresh_age")
    def _default_auth_refresh_age(self) -> int:
        return 60  # notice an ended ticket within a minute

    @default("refresh_pre_spawn")
    def _default_refresh_pre_spawn(self) -> bool:
        return True  # never start a server without a ticket

    def get_handlers(self, app: Any) -> list[tuple[str, Any]]:
        return [("/login", LoginHandler), ("/logout", KerberosLogoutHandler)]

    async def kube(self) -> HubKube:
        return HubKube(await api_client(self.kubeconfig))

    async def authenticate(self, handler: Any, data: dict[str, str]) -> str | None:
        username = (data or {}).get("username", "")
        password = (data or {}).get("password", "")
        if not _USER.match(username) or not password or not self.realm:
            return None
        principal = f"{username}@{self.realm}"
        lifetime = self.ticket_lifetime or None
        try:
            raw = await asyncio.to_thread(
                acquire_ticket, principal, password, lifetime, self.kdc_check()
            )
            ticket = parse_ccache(raw)
            ticket.check_owner(username, self.realm)
        except (LoginRefused, TicketError) as error:
            self.log.warning("Kerberos login refused for %s: %s", username, error)
            return None
        await self.store_ticket(username, ticket)
        self.log.info("Kerberos ticket for %s stored (until %s)", principal, ticket.end)
        return username

    async def store_ticket(self, username: str, ticket: Ticket) -> None:
        kube = await self.kube()
        name = ticket_secret_name(username)
        annotations = {
            TICKET_USER_ANNOTATION: username,
            TICKET_EXPIRY_ANNOTATION: ticket.end.isoformat(),
        }
        if ticket.renew_until is not None:
            annotations[TICKET_RENEW_UNTIL_ANNOTATION] = ticket.renew_until.isoformat()
        body = k8s.V1Secret(
            metadata=k8s.V1ObjectMeta(
                name=name,
                namespace=self.namespace,
                labels={TICKET_LABEL: "true", "app.kubernetes.io/managed-by": "bbp-notebooks-hub"},
                annotations=annotations,
            ),
            type="Opaque",
            data={TICKET_KEY: base64.b64encode(ticket.data).decode()},
        )
        try:
            await kube.core.create_namespaced_secret(self.namespace, body)
        except ApiException as error:
            if not is_conflict(error):
                raise
            await kube.core.replace_namespaced_secret(name, self.namespace, body)

    async def ticket_of(self, username: str) -> Ticket | None:
        kube = await self.kube()
        try:
            secret = await kube.core.read_namespaced_secret(
                ticket_secret_name(username), self.namespace
            )
        except ApiException as error:
            if is_not_found(error):
                return None
            raise
        try:
            return parse_ccache(base64.b64decode((secret.data or {})[TICKET_KEY]))
        except (KeyError, TicketError):
            return None

    async def forget_ticket(self, username: str) -> None:
        kube = await self.kube()
        try:
            await kube.core.delete_namespaced_secret(ticket_secret_name(username), self.namespace)
        except ApiException as error:
            if not is_not_found(error):
                raise

    async def refresh_user(self, user: Any, handler: Any = None) -> bool:
        """False (log in again) once the user's ticket has ended or is gone; the ended one's
        Secret is deleted. The operator renews renewable tickets in the meantime."""
        name = str(user.name)
        ticket = await self.ticket_of(name)
        if ticket is not None and ticket.end > dt.datetime.now(dt.UTC):
            return True
        if ticket is not None:
            await self.forget_ticket(name)
        self.log.info("Kerberos ticket of %s has ended: asking for the password again", name)
        return False


__all__ = [
    "KdcCheck",
    "KerberosAuthenticator",
    "KerberosLogoutHandler",
    "LoginRefused",
    "TicketNotStored",
    "acquire_ticket",
    "verify_kdc",
]
