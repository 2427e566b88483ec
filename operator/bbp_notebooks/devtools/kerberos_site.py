"""`make dev KERBEROS=1`: a Kerberos realm and a GSSAPI site next to the emulated ones.

A real MIT KDC (realm BBP.TEST on 127.0.0.30) with alice and bob under generated passwords, real
Slurm (devtools/realslurm.py, cluster geneva, as in the Kerberos tests) behind a real OpenSSH sshd
with ``GSSAPIAuthentication yes`` on 127.0.0.31, and the SlurmSite ``geneva-krb`` for it
(``auth.method: GSSAPI``, certificates of its own user CA for the monitor and for cancels without
a ticket). The hub logs users in with KerberosAuthenticator against this KDC.

Real Slurm needs root and the fixed loopback ports of devtools/topology.py (REAL_SLURM_*): while
the Kerberos tests run, take /tmp/realslurm.lock first, or borrow their deployment (``real_slurm``).
"""

from __future__ import annotations

import base64
import json
import secrets
import shutil
import subprocess
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bbp_notebooks.api.constants import API_VERSION
from bbp_notebooks.devtools import realslurm
from bbp_notebooks.devtools.kdc import GssapiSshd, Kdc, start_gssapi_sshd
from bbp_notebooks.devtools.stack import OPERATOR_NAMESPACE

SITE = "geneva-krb"
CA_SECRET = "geneva-krb-user-ca"  # noqa: S105  (a Secret name)
USERS = ("alice", "bob")
# Real Slurm's site account (AdminLevel=Operator): it sees every job (monitor) and may raise
# time limits (adminUser); protected from being a session's user by the admission policy.
SITE_ACCOUNT = realslurm.ADMIN_USER
REAL_SLURM_CLUSTER = "geneva"
# The hub's own principal: with its keytab the hub checks at each login that the KDC is ours.
HUB_SERVICE = "HTTP/hub.bbp.test"

Kubectl = Callable[..., subprocess.CompletedProcess[str]]


@dataclass
class KerberosSite:
    """The realm, real Slurm and the GSSAPI frontend; ``stop()`` undoes ``start()``."""

    workdir: Path
    # A running real-Slurm deployment to use (the Kerberos tests' own); None: start one.
    real_slurm: realslurm.Deployment | None = None
    passwords: dict[str, str] = field(
        default_factory=lambda: {u: secrets.token_urlsafe(12) for u in USERS}, repr=False
    )
    kdc: Kdc | None = None
    sshd: GssapiSshd | None = None
    _own_slurm: bool = False

    @property
    def realm(self) -> str:
        assert self.kdc is not None, "not started"
        return self.kdc.realm

    @property
    def krb5_conf(self) -> Path:
        assert self.kdc is not None, "not started"
        return self.kdc.krb5_conf

    @property
    def cluster(self) -> realslurm.SiteInfo:
        assert self.real_slurm is not None, "not started"
        return self.real_slurm.site(REAL_SLURM_CLUSTER)

    def start(self) -> None:
        """KDC, real Slurm (unless borrowed), the GSSAPI sshd. Stops what it started on failure."""
        for part in ("kdc", "gssapi-sshd"):
            shutil.rmtree(self.workdir / part, ignore_errors=True)
        try:
            self.kdc = Kdc(self.workdir / "kdc")
            self.kdc.start()
            for user, password in self.passwords.items():
                self.kdc.add_user(user, password)
            self.kdc.add_service(HUB_SERVICE, self.hub_keytab)
            if self.real_slurm is None:
                root = self.workdir / "realslurm"
                if (root / realslurm.STATE_FILE).exists():
                    realslurm.down(root)  # left by a `make dev` that was killed
                shutil.rmtree(root, ignore_errors=True)
                self.real_slurm = realslurm.up(root)
                self._own_slurm = True
            self.sshd = start_gssapi_sshd(
                self.kdc,
                self.workdir / "gssapi-sshd",
                set_env={"SLURM_CONF": self.cluster.slurm_conf},
            )
        except BaseException:
            self.stop()
            raise

    def objects(self, poll_interval: int) -> list[dict[str, Any]]:
        """The site's CA Secret (for the monitor and ticketless cancels) and its SlurmSite."""
        assert self.sshd is not None, "not started"
        cluster = self.cluster
        ca = self.sshd.user_ca_key.export_private_key()
        return [
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": CA_SECRET, "namespace": OPERATOR_NAMESPACE},
                "type": "Opaque",
                "data": {"ca": base64.b64encode(ca).decode()},
            },
            {
                "apiVersion": API_VERSION,
                "kind": "SlurmSite",
                "metadata": {"name": SITE},
                "spec": {
                    "displayName": "Geneva (Kerberos, real Slurm)",
                    "frontend": {"host": self.sshd.address, "port": self.sshd.port},
                    "hostKeys": {"knownHosts": [self.sshd.known_hosts.strip()]},
                    "partitions": [
                        {"name": p, **({"default": True} if p == cluster.default_partition else {})}
                        for p in cluster.partitions
                    ],
                    "auth": {
                        "method": "GSSAPI",
                        "caSecretName": CA_SECRET,
                        "kerberos": {
                            "realm": self.realm,
                            "hostPrincipalHost": self.sshd.address,
                        },
                    },
                    "monitorUser": SITE_ACCOUNT,
                    "adminUser": SITE_ACCOUNT,
                    "pollIntervalSeconds": poll_interval,
                    "notebookHost": "127.0.0.1",
                },
            },
        ]

    def install(self, kubectl: Kubectl, poll_interval: int) -> None:
        manifest = "\n---\n".join(json.dumps(o) for o in self.objects(poll_interval))
        result = kubectl("apply", "--server-side", "--force-conflicts", "-f", "-", stdin=manifest)
        if result.returncode != 0:
            raise RuntimeError(f"kubectl apply (Kerberos site) failed: {result.stderr}")

    @property
    def hub_keytab(self) -> Path:
        return self.workdir / "kdc" / "hub.keytab"

    def hub_environment(self) -> Mapping[str, str]:
        """What examples/jupyterhub_config.py needs to log users in with Kerberos."""
        return {
            "BBP_KERBEROS_REALM": self.realm,
            "KRB5_CONFIG": str(self.krb5_conf),
            "BBP_KERBEROS_KEYTAB": str(self.hub_keytab),
            "BBP_KERBEROS_SERVICE": HUB_SERVICE,
        }

    def operator_settings(self) -> Mapping[str, str]:
        return {"KRB5_CONFIG": str(self.krb5_conf)}

    def banner_lines(self) -> list[str]:
        assert self.kdc is not None and self.sshd is not None, "not started"
        logins = ", ".join(f"{user} / {pw}" for user, pw in self.passwords.items())
        return [
            f"  Kerberos:    realm {self.realm}, KDC {self.kdc.address}:{self.kdc.port} "
            f"(KRB5_CONFIG={self.kdc.krb5_conf})",
            f"  log in as:   {logins}  (Kerberos passwords, generated for this run)",
            f"  GSSAPI site: {SITE} {self.sshd.address}:{self.sshd.port} "
            f"(sshd with GSSAPI in front of real Slurm {REAL_SLURM_CLUSTER})",
        ]

    def stop(self) -> None:
        if self.sshd is not None:
            self.sshd.stop()
            self.sshd = None
        if self._own_slurm and self.real_slurm is not None:
            realslurm.down(Path(self.real_slurm.root))
            self._own_slurm = False
        if self.kdc is not None:
            self.kdc.stop()
