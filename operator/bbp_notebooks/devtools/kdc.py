"""A real MIT Kerberos KDC (Debian's krb5-kdc) on a loopback address, for tests and `make dev`.

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

REALM = "BBP.TEST"
DEFAULT_ADDRESS = "127.0.0.30"
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
        principal = f"host/{host}"
        self.kadmin(f"addprinc -randkey {principal}")
        self.kadmin(f"ktadd -k {keytab} {principal}")
        os.chmod(keytab, 0o600)
        return f"{principal}@{self.realm}"

    def environment(self, extra: Mapping[str, str] | None = None) -> dict[str, str]:
        return {**os.environ, **self.env, **(extra or {})}
