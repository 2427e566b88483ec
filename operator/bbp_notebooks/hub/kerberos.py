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

    c.JupyterHub.authenticator_class = "bbp_notebooks.hub.kerberos.KerberosAuthenticator"
    c.KerberosAuthenticator.realm = "EXAMPLE.ORG"
"""

from __future__ import annotations

import asyncio
import base64
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


def acquire_ticket(principal: str, password: str, lifetime_s: int | None = None) -> bytes:
    """A TGT for ``principal`` from the KDC, as the bytes of a FILE ccache (blocking)."""
    name = gssapi.Name(principal, gssapi.NameType.kerberos_principal)
    try:
        acquired = gssapi.raw.acquire_cred_with_password(
            name, password.encode(), lifetime=lifetime_s, mechs=[_KRB5_MECH], usage="initiate"
        )
    except gssapi.raw.GSSError as error:
        # The minor message names the cause (e.g. "Preauthentication failed"), not the password.
        raise LoginRefused(f"no ticket for {principal}: {error.gen_message()}") from None
    with tempfile.TemporaryDirectory(prefix="bbp-krb5-login-") as folder:
        path = Path(folder) / "ccache"
        # Seen once in the Kerberos lane: a store that reported success but left no file. It is
        # stored again (the same credentials, no second password check); still nothing is an
        # error, never a silent login without a ticket.
        for _attempt in range(2):
            gssapi.raw.store_cred_into(
                {"ccache": f"FILE:{path}"},
                acquired.creds,
                usage="initiate",
                mech=_KRB5_MECH,
                overwrite=True,
            )
            if path.exists():
                return path.read_bytes()
        raise RuntimeError(f"the ticket of {principal} could not be stored")


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
            raw = await asyncio.to_thread(acquire_ticket, principal, password, lifetime)
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


__all__ = ["KerberosAuthenticator", "KerberosLogoutHandler", "LoginRefused", "acquire_ticket"]
