"""A real MIT Kerberos KDC (Debian's krb5-kdc) on a loopback address, and a real OpenSSH sshd
accepting GSSAPI logins with its host keytab, for tests and `make dev --kerberos`.

Everything lives in one folder: krb5.conf (clients: pass ``env`` / KRB5_CONFIG), kdc.conf, the
database, keytabs. Host names are never resolved: ``dns_canonicalize_hostname = false`` and
``rdns = false`` make ``host@127.0.0.31`` the principal ``host/127.0.0.31@REALM``, so no /etc/hosts
entry is needed. Nothing is installed system-wide.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import asyncssh

from bbp_notebooks.ssh import CertificateAuthority, SiteEndpoint

REALM = "BBP.TEST"
DEFAULT_ADDRESS = "127.0.0.30"
SSHD_ADDRESS = "127.0.0.31"
KDC_BINARIES = ("krb5kdc", "kdb5_util", "kadmin.local", "kinit", "klist", "kvno")


class KdcError(RuntimeError):
    """The KDC could not be set up or started."""


def _free_port(address: str) -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((address, 0))
        port = int(sock.getsockname()[1])
    return port


def missing_binaries() -> list[str]:
    found = {
        name: shutil.which(name) or shutil.which(name, path="/usr/sbin:/usr/bin")
        for name in KDC_BINARIES
    }
    return [name for name, path in found.items() if path is None]


@dataclass
class Kdc:
    """``kdc = Kdc(folder); kdc.start(); kdc.add_user("alice", "pw")``; ``kdc.stop()``."""

    root: Path
    realm: str = REALM
    address: str = DEFAULT_ADDRESS
    # Lifetimes the KDC grants at most (krbtgt and every principal it creates).
    max_life: str = "10h"
    max_renewable_life: str = "7d"
    port: int = 0
    process: subprocess.Popen[bytes] | None = field(default=None, repr=False)

    @property
    def krb5_conf(self) -> Path:
        return self.root / "krb5.conf"

    @property
    def env(self) -> dict[str, str]:
        """Environment for clients (kinit, klist, gssapi in a child process, sshd)."""
        return {"KRB5_CONFIG": str(self.krb5_conf), "KRB5_KDC_PROFILE": str(self.root / "kdc.conf")}

    def client_krb5_conf(self, *, ticket_lifetime: str = "10h", renew_lifetime: str = "7d") -> str:
        return (
            "[libdefaults]\n"
            f"  default_realm = {self.realm}\n"
            "  dns_lookup_kdc = false\n"
            "  dns_lookup_realm = false\n"
            "  dns_canonicalize_hostname = false\n"
            "  rdns = false\n"
            "  forwardable = true\n"
            f"  ticket_lifetime = {ticket_lifetime}\n"
            f"  renew_lifetime = {renew_lifetime}\n"
            "  udp_preference_limit = 1\n"  # TCP only: one loopback port to pick
            "[realms]\n"
            f"  {self.realm} = {{\n"
            f"    kdc = {self.address}:{self.port}\n"
            "  }\n"
            "[domain_realm]\n"
            f"  127.0.0.1 = {self.realm}\n"
        )

    def start(self, timeout: float = 30.0) -> None:
        missing = missing_binaries()
        if missing:
            raise KdcError(
                f"MIT Kerberos tools missing: {', '.join(missing)} (install krb5-kdc, "
                "krb5-admin-server and krb5-user: scripts/install-test-deps.sh)"
            )
        self.root.mkdir(parents=True, exist_ok=True)
        os.chmod(self.root, 0o755)  # noqa: S103  (sshd and users read krb5.conf)
        self.port = self.port or _free_port(self.address)
        db = self.root / "principal"
        (self.root / "kdc.conf").write_text(
            "[kdcdefaults]\n"
            f"  kdc_listen = {self.address}:{self.port}\n"
            f"  kdc_tcp_listen = {self.address}:{self.port}\n"
            "[realms]\n"
            f"  {self.realm} = {{\n"
            f"    database_name = {db}\n"
            f"    key_stash_file = {self.root / 'stash'}\n"
            f"    acl_file = {self.root / 'kadm5.acl'}\n"
            f"    max_life = {self.max_life}\n"
            f"    max_renewable_life = {self.max_renewable_life}\n"
            "    supported_enctypes = aes256-cts-hmac-sha1-96:normal\n"
            "  }\n"
            "[logging]\n"
            f"  kdc = FILE:{self.root / 'kdc.log'}\n"
        )
        (self.root / "kadm5.acl").write_text("")
        self.krb5_conf.write_text(self.client_krb5_conf())
        os.chmod(self.krb5_conf, 0o644)
        if not db.exists():
            self._run(["kdb5_util", "create", "-s", "-r", self.realm, "-P", os.urandom(16).hex()])
            self.limit(
                f"krbtgt/{self.realm}",
                max_life=self.max_life,
                max_renewable_life=self.max_renewable_life,
            )
        with open(self.root / "krb5kdc.out", "ab") as out:
            self.process = subprocess.Popen(
                ["krb5kdc", "-n", "-r", self.realm, "-P", str(self.root / "kdc.pid")],
                env={**os.environ, **self.env},
                stdout=out,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise KdcError(f"krb5kdc exited: {(self.root / 'krb5kdc.out').read_text()[-2000:]}")
            try:
                socket.create_connection((self.address, self.port), timeout=0.5).close()
                return
            except OSError:
                time.sleep(0.1)
        raise KdcError(f"krb5kdc did not listen on {self.address}:{self.port} in {timeout} s")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            os.killpg(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=10)
        self.process = None

    def _run(self, argv: list[str], stdin: str | None = None) -> str:
        result = subprocess.run(
            argv, input=stdin, env={**os.environ, **self.env}, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip
        if result.returncode != 0:
            raise KdcError(f"{argv[0]} failed ({result.returncode}): {result.stderr.strip()}")
        return result.stdout

    def kadmin(self, query: str) -> str:
        """One kadmin.local query (passwords go on stdin, never on the command line)."""
        return self._run(["kadmin.local", "-r", self.realm, "-q", query])

    def add_user(self, user: str, password: str, *, max_life: str | None = None,
                 max_renewable_life: str | None = None) -> None:  # fmt: skip
        # kadmin.local reads the password twice from its terminal or stdin.
        self._run(
            ["kadmin.local", "-r", self.realm, "-q", f"addprinc {user}"],
            stdin=f"{password}\n{password}\n",
        )
        self.limit(user, max_life=max_life, max_renewable_life=max_renewable_life)

    def limit(self, principal: str, *, max_life: str | None = None,
              max_renewable_life: str | None = None) -> None:  # fmt: skip
        options = []
        if max_life is not None:
            options += ["-maxlife", f'"{max_life}"']
        if max_renewable_life is not None:
            options += ["-maxrenewlife", f'"{max_renewable_life}"']
        if options:
            self.kadmin(f"modprinc {' '.join(options)} {principal}")

    def add_host(self, host: str, keytab: Path) -> str:
        """``host/<host>`` with a random key, exported to ``keytab`` (0600); its name."""
        return self.add_service(f"host/{host}", keytab)

    def add_service(self, principal: str, keytab: Path) -> str:
        """``principal`` (``name/instance``) with a random key, exported to ``keytab`` (0600);
        its full name."""
        self.kadmin(f"addprinc -randkey {principal}")
        self.kadmin(f"ktadd -k {keytab} {principal}")
        os.chmod(keytab, 0o600)
        return f"{principal}@{self.realm}"

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, **(extra or {})}


@dataclass
class GssapiSshd:
    """A real sshd accepting GSSAPI (keytab host/<address>) and certificates of ``user_ca``."""

    address: str
    port: int
    host_principal: str
    host_key: asyncssh.SSHKey
    user_ca: CertificateAuthority
    user_ca_key: asyncssh.SSHKey
    root: Path
    process: subprocess.Popen[bytes]

    @property
    def known_hosts(self) -> str:
        key = self.host_key.export_public_key().decode().strip()
        return f"[{self.address}]:{self.port} {key}\n"

    def endpoint(self, name: str = "kerberos") -> SiteEndpoint:
        return SiteEndpoint(name, self.address, self.port, self.known_hosts, gss_host=self.address)

    @property
    def log(self) -> str:
        return (self.root / "sshd.log").read_text(errors="replace")

    def accepted_logins(self, user: str) -> int:
        return self.log.count(f"Accepted gssapi-with-mic for {user} ")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            self.process.wait(timeout=10)


def start_gssapi_sshd(
    kdc: Kdc, root: Path, *, set_env: Mapping[str, str] | None = None,
    address: str = SSHD_ADDRESS, timeout: float = 20.0,
) -> GssapiSshd:  # fmt: skip
    """OpenSSH's sshd on ``address`` with ``GSSAPIAuthentication yes`` (its keytab from ``kdc``)
    and a fresh user CA; ``set_env`` reaches every login session (e.g. SLURM_CONF)."""
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)  # noqa: S103  (sshd reads its config; nothing secret is world-readable)
    port = _free_port(address)
    keytab = root / "krb5.keytab"
    principal = kdc.add_host(address, keytab)
    host_key = asyncssh.generate_private_key("ssh-ed25519")
    host_key_path = root / "host_ed25519"
    host_key.write_private_key(str(host_key_path))
    os.chmod(host_key_path, 0o600)
    ca_key = asyncssh.generate_private_key("ssh-ed25519")
    ca = CertificateAuthority(ca_key)
    (root / "user_ca.pub").write_text(ca.public_key + "\n")
    env_lines = [
        f"{k}={v}" for k, v in {"KRB5_CONFIG": str(kdc.krb5_conf), **(set_env or {})}.items()
    ]
    config = root / "sshd_config"
    config.write_text(
        "\n".join(
            [
                f"ListenAddress {address}:{port}",
                f"HostKey {host_key_path}",
                f"TrustedUserCAKeys {root / 'user_ca.pub'}",
                "AuthorizedKeysFile none",
                "PubkeyAuthentication yes",
                "GSSAPIAuthentication yes",
                "GSSAPICleanupCredentials yes",
                # The acceptor's own host name is this machine's, not the loopback address.
                "GSSAPIStrictAcceptorCheck no",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                "UsePAM no",
                "StrictModes no",
                "MaxSessions 10",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "PrintMotd no",
                "LogLevel VERBOSE",
                "Subsystem sftp internal-sftp",
                f"PidFile {root / 'sshd.pid'}",
                f"SetEnv {' '.join(env_lines)}",
            ]
        )
        + "\n"
    )
    env = kdc.environment({"KRB5_KTNAME": f"FILE:{keytab}"})
    check = subprocess.run(
        ["/usr/sbin/sshd", "-t", "-f", str(config)], env=env, capture_output=True, text=True,
        check=False,
    )  # fmt: skip
    if check.returncode != 0:
        raise KdcError(f"sshd -t: {check.stderr}")
    os.makedirs("/run/sshd", mode=0o755, exist_ok=True)
    process = subprocess.Popen(
        ["/usr/sbin/sshd", "-D", "-E", str(root / "sshd.log"), "-f", str(config)],
        env=env,
        start_new_session=True,
    )
    sshd = GssapiSshd(address, port, principal, host_key, ca, ca_key, root, process)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise KdcError(f"sshd exited: {sshd.log[-2000:]}")
        try:
            socket.create_connection((address, port), timeout=0.5).close()
            return sshd
        except OSError:
            time.sleep(0.1)
    sshd.stop()
    raise KdcError(f"sshd did not listen on {address}:{port} in {timeout} s")
