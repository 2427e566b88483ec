"""JupyterHub for `make dev`: the NotebookSessionSpawner against the local control plane.

`make dev` (bbp_notebooks.devtools.dev) starts the hub with this file and sets every variable below;
to run it by hand, set them yourself. Everything listens on 127.0.0.1. Secrets come from the
environment, never from this file:

    JPY_COOKIE_SECRET        hex, e.g. `openssl rand -hex 32`
    CONFIGPROXY_AUTH_TOKEN   the hub <-> configurable-http-proxy token
    BBP_DEV_PASSWORD         the shared password of the development users
    KUBECONFIG               the hub's own identity: `make dev` writes a token of the chart's hub
                             ServiceAccount (devtools.admission.install_hub_identity); the
                             admission policy lets only that identity set the groups annotation

Optional: BBP_CHP (path of configurable-http-proxy; scripts/install-dev-deps.sh installs a pinned
one from npm and prints its path), BBP_HUB_PORT (8000), BBP_HUB_API_PORT (8081),
BBP_PROXY_API_PORT (8001), BBP_HUB_STATE_DIR (.), BBP_SESSION_NAMESPACE (default), and
BBP_IDLE_TIMEOUT / BBP_IDLE_CULL_EVERY (seconds; idle culling is off unless the timeout is set).

Kerberos (`make dev KERBEROS=1`): BBP_KERBEROS_REALM switches the login to KerberosAuthenticator
(passwords checked by the KDC that KRB5_CONFIG names; the user's ticket goes into a Secret in the
sessions namespace); optional BBP_KERBEROS_KEYTAB and BBP_KERBEROS_SERVICE check that the KDC is
the realm's own (see bbp_notebooks.hub.kerberos).

    jupyterhub -f examples/jupyterhub_config.py

Development only: SharedPasswordAuthenticator lets any allowed user name in with one shared
password (at least 8 characters).
"""

# ruff: noqa: F821  (`c` is injected by JupyterHub's config loader)

from __future__ import annotations

import os
import sys
from pathlib import Path


def _required(name: str) -> str:
    value = os.environ.get(name)
    if not value:
        raise SystemExit(f"jupyterhub_config.py: set {name} in the environment")
    return value


HOST = "127.0.0.1"
hub_port = int(os.environ.get("BBP_HUB_PORT", "8000"))
hub_api_port = int(os.environ.get("BBP_HUB_API_PORT", "8081"))
proxy_api_port = int(os.environ.get("BBP_PROXY_API_PORT", "8001"))
state_dir = Path(os.environ.get("BBP_HUB_STATE_DIR", ".")).resolve()
state_dir.mkdir(parents=True, exist_ok=True)

c = get_config()  # type: ignore[name-defined]  # noqa: F821

# Where the hub, its API and the proxy listen: loopback only.
c.JupyterHub.ip = HOST
c.JupyterHub.port = hub_port
c.JupyterHub.hub_ip = HOST
c.JupyterHub.hub_port = hub_api_port
# Notebooks of the emulated sites run on this machine and reach the hub API here.
c.JupyterHub.hub_connect_url = f"http://{HOST}:{hub_api_port}"
c.JupyterHub.db_url = f"sqlite:///{state_dir / 'jupyterhub.sqlite'}"
c.JupyterHub.pid_file = str(state_dir / "jupyterhub.pid")

# Secrets from the environment (hex cookie secret, proxy token).
c.JupyterHub.cookie_secret = bytes.fromhex(_required("JPY_COOKIE_SECRET"))
c.ConfigurableHTTPProxy.auth_token = _required("CONFIGPROXY_AUTH_TOKEN")
c.ConfigurableHTTPProxy.command = [os.environ.get("BBP_CHP", "configurable-http-proxy")]
c.ConfigurableHTTPProxy.api_url = f"http://{HOST}:{proxy_api_port}"
c.ConfigurableHTTPProxy.pid_file = str(state_dir / "jupyterhub-proxy.pid")

# Development users: alice and bob exist as POSIX users at the emulated sites; alice is in the
# thalamus group, so only she is offered the Thalamus profile.
kerberos_realm = os.environ.get("BBP_KERBEROS_REALM")
if kerberos_realm:
    c.JupyterHub.authenticator_class = "bbp_notebooks.hub.kerberos.KerberosAuthenticator"
    c.KerberosAuthenticator.realm = kerberos_realm
    c.KerberosAuthenticator.namespace = os.environ.get("BBP_SESSION_NAMESPACE", "default")
    c.KerberosAuthenticator.kubeconfig = _required("KUBECONFIG")
    # The hub's own keytab: each login proves the KDC is the realm's own.
    c.KerberosAuthenticator.keytab = os.environ.get("BBP_KERBEROS_KEYTAB", "")
    c.KerberosAuthenticator.service_principal = os.environ.get("BBP_KERBEROS_SERVICE", "")
else:
    c.JupyterHub.authenticator_class = "shared-password"
    c.SharedPasswordAuthenticator.user_password = _required("BBP_DEV_PASSWORD")
c.Authenticator.allowed_users = {"alice", "bob"}
c.Authenticator.admin_users = set()
c.JupyterHub.load_groups = {"thalamus": {"users": ["alice"]}}

# One NotebookSession per server; several named servers per user (one per site, say).
c.JupyterHub.spawner_class = "notebooksession"
c.JupyterHub.allow_named_servers = True
c.JupyterHub.named_server_limit_per_user = 3
c.NotebookSessionSpawner.namespace = os.environ.get("BBP_SESSION_NAMESPACE", "default")
c.NotebookSessionSpawner.kubeconfig = _required("KUBECONFIG")
# The emulator starts jobs within seconds; a real queue may take much longer (default: 1 h).
c.NotebookSessionSpawner.start_timeout = 600
c.NotebookSessionSpawner.http_timeout = 60
# A restarted hub re-adopts running sessions instead of stopping them.
c.JupyterHub.cleanup_servers = False

# The home page shows each server's site, node and time left, with an Extend button; its data and
# the extension come from the hub's own API under /hub/api/bbp/ (bbp_notebooks.hub.handlers).
from bbp_notebooks.hub import handlers as bbp_handlers  # noqa: E402

c.JupyterHub.template_paths = [bbp_handlers.TEMPLATES]
c.JupyterHub.extra_handlers = bbp_handlers.extra_handlers()

# Sharing (JupyterHub >= 5): a user may share a server with another user and revoke it; sharing
# by name needs read:users:name, and the home page lists a server's shares.
c.JupyterHub.load_roles = [
    {
        "name": "user",
        "scopes": ["self", "shares!user", "read:users:name", "read:groups:name"],
    },
]

# Idle culling: jupyterhub-idle-culler stops servers without kernel or terminal activity for
# BBP_IDLE_TIMEOUT seconds (0: off); the spawner's stop deletes the session, the operator cancels
# the job.
idle_timeout = int(os.environ.get("BBP_IDLE_TIMEOUT", "0"))
if idle_timeout > 0:
    c.JupyterHub.services = [
        {
            "name": "idle-culler",
            "command": [
                sys.executable, "-m", "jupyterhub_idle_culler",
                f"--timeout={idle_timeout}",
                f"--cull-every={int(os.environ.get('BBP_IDLE_CULL_EVERY', '60'))}",
            ],
        },
    ]  # fmt: skip
    c.JupyterHub.load_roles.append(
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    )
