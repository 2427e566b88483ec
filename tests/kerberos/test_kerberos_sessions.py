"""Kerberos end to end, all real: MIT krb5kdc, the hub's KerberosAuthenticator (as the hub's
ServiceAccount), the operator, an OpenSSH sshd with GSSAPI in front of the real Slurm 22.05 cluster
geneva (same slurm.conf as its own frontend), and the job on geneva's node.

Run under the real-Slurm lock: ``flock /tmp/realslurm.lock python -m pytest tests/kerberos``.
"""

from __future__ import annotations

import asyncio
import base64
import gc
import json
import logging
import os
import pwd
import shutil
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbp_notebooks.api.constants import API_VERSION
from bbp_notebooks.api.kerberos import job_ccache_path, parse_ccache, ticket_secret_name
from bbp_notebooks.devtools.admission import admin_annotations, install_hub_identity
from bbp_notebooks.devtools.controlplane import ControlPlane, repo_root
from bbp_notebooks.devtools.kdc import Kdc
from bbp_notebooks.devtools.stack import OPERATOR_NAMESPACE, Operator, wait_for
from bbp_notebooks.hub.kerberos import KerberosAuthenticator
from bbp_notebooks.hub.kube import close_api_clients
from bbp_notebooks.operator.planning import job_name
from fixtures.kdc import PASSWORDS, GssapiSshd, login, start_gssapi_sshd, stop_sshd
from fixtures.realslurm import RealSlurm

pytestmark = [pytest.mark.kube, pytest.mark.realslurm]

SITE = "geneva-krb"
CA_SECRET = "geneva-krb-user-ca"  # noqa: S105  (a Secret name)
SESSIONS_NAMESPACE = "default"


def kerberos_notebook(service: str) -> list[str]:
    """The notebook: records what Kerberos looks like inside the job (klist, and a service
    ticket for ``service`` from the KDC with the job's ticket), then serves HTTP."""
    return [
        "bash",
        "-c",
        'out="$HOME/.bbpnb-krb5-$SLURM_JOB_ID"; umask 077\n'
        f'{{ echo "KRB5CCNAME=$KRB5CCNAME"; klist; kvno {service}; echo "kvno-exit=$?"; }}'
        ' >"$out" 2>&1\n'
        'exec python3 -m http.server --bind "$0" "$1"',
        "{host}",
        "{port}",
    ]


class ArgvWatch:
    """Snapshots of every process's command line, sampled while the tests run."""

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            for entry in Path("/proc").iterdir():
                if entry.name.isdigit():
                    try:
                        self.seen.add((entry / "cmdline").read_bytes())
                    except OSError:
                        pass
            self._stop.wait(0.1)

    def __enter__(self) -> ArgvWatch:
        self._thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


class KerberosStack:
    def __init__(
        self, cp: ControlPlane, operator: Operator, slurm: RealSlurm, kdc: Kdc, sshd: GssapiSshd,
        hub_kubeconfig: Path, argv: ArgvWatch,
    ) -> None:  # fmt: skip
        self.cp, self.operator, self.slurm, self.kdc, self.sshd = cp, operator, slurm, kdc, sshd
        self.hub_kubeconfig, self.argv = hub_kubeconfig, argv
        self.tickets: list[bytes] = []  # every ccache issued in these tests (for the grep)

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], input=stdin, env=self.cp.env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    def session(self, name: str) -> dict[str, Any]:
        result = self.kubectl("get", "notebooksession", name, "-o", "json")
        return json.loads(result.stdout) if result.returncode == 0 else {}

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.session(name).get("status", {})
        return status

    def condition(self, name: str, type_: str) -> dict[str, Any]:
        found = [c for c in self.status(name).get("conditions", []) if c["type"] == type_]
        return found[0] if found else {}

    def events(self, name: str) -> list[dict[str, Any]]:
        result = self.kubectl(
            "get", "events", "-n", SESSIONS_NAMESPACE, "-o", "json",
            f"--field-selector=involvedObject.name={name}",
        )  # fmt: skip
        items: list[dict[str, Any]] = json.loads(result.stdout).get("items", [])
        return items

    def create_session(self, name: str) -> None:
        body = {
            "apiVersion": API_VERSION,
            "kind": "NotebookSession",
            "metadata": {
                "name": name,
                "namespace": SESSIONS_NAMESPACE,
                "annotations": admin_annotations(),
            },
            "spec": {"user": "alice", "profile": "bluepy", "site": SITE},
        }
        result = self.kubectl("apply", "-f", "-", stdin=json.dumps(body))
        assert result.returncode == 0, result.stderr

    def delete_session(self, name: str) -> None:
        assert self.kubectl("delete", "notebooksession", name, "--wait=false").returncode == 0
        wait_for(lambda: not self.session(name), 60, f"session {name} to go", 0.5)

    def squeue(self, job_id: int, fmt: str = "%T") -> str:
        result = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", str(job_id), "-o", fmt],
            env={"SLURM_CONF": self.slurm.sites["geneva"].slurm_conf, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.stdout.strip()

    def hub(self) -> KerberosAuthenticator:
        return KerberosAuthenticator(
            realm=self.kdc.realm, namespace=SESSIONS_NAMESPACE, kubeconfig=str(self.hub_kubeconfig)
        )

    def hub_login(self, password: str) -> str | None:
        async def attempt() -> str | None:
            try:
                result: str | None = await self.hub().authenticate(
                    None, {"username": "alice", "password": password}
                )
                return result
            finally:
                await close_api_clients()

        name = asyncio.run(attempt())
        secret = self.ticket_secret()
        if secret is not None:
            self.tickets.append(base64.b64decode(secret["data"]["ccache"]))
        return name

    def ticket_secret(self) -> dict[str, Any] | None:
        result = self.kubectl(
            "get", "secret", ticket_secret_name("alice"), "-n", SESSIONS_NAMESPACE, "-o", "json"
        )
        return json.loads(result.stdout) if result.returncode == 0 else None

    def put_ticket_secret(self, ccache: bytes) -> None:
        secret = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": ticket_secret_name("alice"), "namespace": SESSIONS_NAMESPACE},
            "data": {"ccache": base64.b64encode(ccache).decode()},
        }
        result = self.kubectl("apply", "-f", "-", stdin=json.dumps(secret))
        assert result.returncode == 0, result.stderr


def site_object(slurm: RealSlurm, sshd: GssapiSshd, realm: str) -> dict[str, Any]:
    geneva = slurm.sites["geneva"]
    return {
        "apiVersion": API_VERSION,
        "kind": "SlurmSite",
        "metadata": {"name": SITE},
        "spec": {
            "displayName": "Geneva (Kerberos)",
            "frontend": {"host": sshd.address, "port": sshd.port},
            "hostKeys": {"knownHosts": [sshd.known_hosts.strip()]},
            "partitions": [
                {"name": p, "default": p == geneva.default_partition} for p in geneva.partitions
            ],
            "auth": {
                "method": "GSSAPI",
                "caSecretName": CA_SECRET,
                "kerberos": {"realm": realm, "hostPrincipalHost": sshd.address},
            },
            "monitorUser": "bob",
            "pollIntervalSeconds": 1,
            "notebookHost": "127.0.0.1",
        },
    }


def _collect_startup_garbage() -> None:
    """ControlPlane.start's readiness probe drops the HTTPError of an early /readyz 500 without
    closing its SSL socket (devtools/controlplane.py, _wait_ready); collect it here, where it
    was made, instead of reporting it against whichever test the collector runs in."""
    hook = sys.unraisablehook

    def ignore_that_socket(unraisable: Any) -> None:
        if "SSLSocket" not in repr(unraisable.object):
            hook(unraisable)

    sys.unraisablehook = ignore_that_socket
    try:
        gc.collect()
    finally:
        sys.unraisablehook = hook


@pytest.fixture(scope="module")
def stack(
    real_slurm: RealSlurm, kdc: Kdc, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[KerberosStack]:
    workdir = tmp_path_factory.mktemp("kerberos-stack")
    sshd_root = Path(tempfile.mkdtemp(prefix="bbp-krb-frontend-"))
    sshd = start_gssapi_sshd(
        kdc, sshd_root, set_env={"SLURM_CONF": real_slurm.sites["geneva"].slurm_conf}
    )
    cp = ControlPlane(workdir / "controlplane")
    cp.start()
    watch = ArgvWatch().__enter__()
    operator: Operator | None = None
    try:
        from bbp_notebooks.devtools.admission import install_admission_policy

        cp.install_crds(repo_root() / "crds")
        install_admission_policy(cp, protected_users=["bob"])
        hub_kubeconfig = install_hub_identity(cp, SESSIONS_NAMESPACE)
        ca = sshd.user_ca_key.export_private_key().decode()
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": CA_SECRET, "namespace": OPERATOR_NAMESPACE},
                "data": {"ca": base64.b64encode(ca.encode()).decode()},
            },
            site_object(real_slurm, sshd, kdc.realm),
        ]
        operator = Operator(workdir / "operator", cp.kubeconfig)
        operator.settings.update(
            {
                "BBP_NOTEBOOK_COMMAND": json.dumps(kerberos_notebook(sshd.host_principal)),
                "KRB5_CONFIG": str(kdc.krb5_conf),
            }
        )
        built = KerberosStack(cp, operator, real_slurm, kdc, sshd, hub_kubeconfig, watch)
        result = built.kubectl(
            "apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects)
        )
        assert result.returncode == 0, result.stderr
        result = built.kubectl("apply", "-f", str(repo_root() / "examples" / "profiles.yaml"))
        assert result.returncode == 0, result.stderr
        os.environ["KRB5_CONFIG"] = str(kdc.krb5_conf)  # the hub's krb5.conf, in this process
        operator.start()
        _collect_startup_garbage()
        yield built
    finally:
        watch.__exit__()
        if operator is not None:
            operator.stop()
        cp.stop()
        stop_sshd(sshd)
        shutil.rmtree(sshd_root, ignore_errors=True)
        kdc.limit("alice", max_life="10h", max_renewable_life="7d")


def test_hub_login_issues_a_ticket_for_the_right_password_and_refuses_a_wrong_one(
    stack: KerberosStack, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    assert stack.hub_login("not-" + PASSWORDS["alice"]) is None
    assert stack.ticket_secret() is None
    assert stack.hub_login(PASSWORDS["alice"]) == "alice"
    secret = stack.ticket_secret()
    assert secret is not None
    labels = secret["metadata"]["labels"]
    assert labels["notebooks.bbp.epfl.ch/kerberos-ticket"] == "true"
    ticket = parse_ccache(base64.b64decode(secret["data"]["ccache"]))
    assert ticket.principal == f"alice@{stack.kdc.realm}"
    assert ticket.forwardable and ticket.renewable
    assert PASSWORDS["alice"] not in json.dumps(secret)
    assert PASSWORDS["alice"] not in caplog.text


def test_bobs_ticket_is_refused_for_alices_session_before_any_ssh(stack: KerberosStack) -> None:
    bobs = login(stack.kdc, "bob")
    stack.tickets.append(bobs)
    stack.put_ticket_secret(bobs)
    logins_before = stack.sshd.accepted_logins("alice")
    # Any authentication attempt as alice, accepted or not ("Failed ... for alice", "Postponed
    # ... for alice"): sshd's own refusal of bob's ticket would be one, the operator's is none.
    attempts_before = stack.sshd.log.count(" for alice ")
    stack.create_session("krb-wrong-owner")
    try:
        condition = wait_for(
            lambda: (
                (c := stack.condition("krb-wrong-owner", "CredentialsValid"))
                and c["status"] == "False"
                and c
            ),
            60,
            "CredentialsValid=False for bob's ticket",
            0.5,
        )
        assert condition["reason"] == "TicketPrincipalMismatch"
        assert f"bob@{stack.kdc.realm}" in condition["message"]
        warnings = [
            e for e in stack.events("krb-wrong-owner") if e["reason"] == "TicketPrincipalMismatch"
        ]
        assert warnings and warnings[0]["type"] == "Warning"
        time.sleep(3)  # a few more submit attempts
        status = stack.status("krb-wrong-owner")
        assert status.get("jobId") is None, status
        assert stack.sshd.accepted_logins("alice") == logins_before
        assert stack.sshd.log.count(" for alice ") == attempts_before, stack.sshd.log[-3000:]
    finally:
        stack.delete_session("krb-wrong-owner")


TICKET_EXPIRY_METRIC = "bbp_notebooks_site_earliest_ticket_expiry_timestamp_seconds"


def ticket_expiry_metric(stack: KerberosStack) -> float | None:
    """The site's earliest-ticket-end gauge on the operator's /metrics, or None when absent."""
    for line in stack.operator.metrics().splitlines():
        if line.startswith(f'{TICKET_EXPIRY_METRIC}{{site="{SITE}"}} '):
            return float(line.split()[-1])
    return None


def _job_ticket_file(session_uid: str) -> Path:
    return Path(pwd.getpwnam("alice").pw_dir) / job_ccache_path(session_uid)


def test_a_session_runs_with_alices_ticket_which_is_renewed_while_it_runs(
    stack: KerberosStack,
) -> None:
    # Short tickets: 30 s, renewable for 10 min. The operator renews at half the lifetime.
    stack.kdc.limit("alice", max_life="30 seconds", max_renewable_life="10 minutes")
    assert stack.hub_login(PASSWORDS["alice"]) == "alice"
    issued = parse_ccache(stack.tickets[-1])
    assert issued.end - issued.start <= dt_seconds(31)
    stack.create_session("krb-alice")
    status = wait_for(
        lambda: (s := stack.status("krb-alice")).get("phase") == "Ready" and s.get("node") and s,
        90,
        "alice's Kerberos session to be Ready",
        0.5,
    )
    uid = stack.session("krb-alice")["metadata"]["uid"]
    job_id = status["jobId"]
    assert stack.squeue(job_id) == "RUNNING"
    record = Path(pwd.getpwnam("alice").pw_dir) / f".bbpnb-krb5-{job_id}"
    text = wait_for(lambda: record.exists() and record.read_text(), 30, "the job's klist", 0.5)
    print(f"\ninside job {job_id}:\n{text}")
    assert f"KRB5CCNAME=FILE:{pwd.getpwnam('alice').pw_dir}/{job_ccache_path(uid)}" in text
    assert f"Default principal: alice@{stack.kdc.realm}" in text
    assert "kvno-exit=0" in text and "kvno = " in text  # the KDC gave a service ticket for it
    placed = _job_ticket_file(uid)
    assert stat.S_IMODE(placed.stat().st_mode) == 0o600
    assert placed.stat().st_uid == pwd.getpwnam("alice").pw_uid
    first_end = parse_ccache(placed.read_bytes()).end
    # Written by the operator's credentials timer (every 5 s), next to the poller's conditions.
    wait_for(
        lambda: stack.condition("krb-alice", "CredentialsValid").get("status") == "True",
        20,
        "CredentialsValid=True",
        0.5,
    )

    def renewed_in_the_job() -> Any:
        current = parse_ccache(placed.read_bytes())
        return current.end > first_end and current

    renewed = wait_for(renewed_in_the_job, 45, "the job's ticket to be renewed", 0.5)
    stack.tickets.append(renewed.data)
    print(f"job's ticket renewed: ended {first_end}, now ends {renewed.end}")
    condition = wait_for(
        lambda: (
            (c := stack.condition("krb-alice", "CredentialsValid"))["reason"] == "TicketRenewed"
            and c
        ),
        30,
        "CredentialsValid reason TicketRenewed",
        0.5,
    )
    assert condition["status"] == "True"
    expiry = stack.status("krb-alice")["credentialsExpiry"]
    assert expiry >= renewed.end.strftime("%Y-%m-%dT%H:%M:%S")
    # The site's metric follows the renewed ticket (one series for the site, no user label).
    gauge = wait_for(
        lambda: (v := ticket_expiry_metric(stack)) and v >= renewed.end.timestamp() and v,
        20,
        "the site's earliest ticket end metric to show the renewed ticket",
        0.5,
    )
    print(f"earliest ticket end metric: {gauge} (renewed ticket ends {renewed.end.timestamp()})")
    # Still the same running job, and the original ticket has ended by now.
    wait_for(lambda: time.time() > issued.end.timestamp() + 1, 40, "the first ticket's end", 0.5)
    assert stack.squeue(job_id) == "RUNNING"
    assert stack.status("krb-alice")["phase"] == "Ready"
    stack.delete_session("krb-alice")
    wait_for(lambda: stack.squeue(job_id) in {"CANCELLED", ""}, 30, "the job's end", 0.5)
    wait_for(lambda: not placed.exists(), 30, "the job to remove its ticket", 0.5)


def dt_seconds(seconds: int) -> Any:
    import datetime as dt

    return dt.timedelta(seconds=seconds)


def test_a_ticket_that_cannot_be_renewed_is_reported_the_job_keeps_running_delete_cancels(
    stack: KerberosStack,
) -> None:
    stack.kdc.limit("alice", max_life="30 seconds", max_renewable_life="0 seconds")
    assert stack.hub_login(PASSWORDS["alice"]) == "alice"
    assert not parse_ccache(stack.tickets[-1]).renewable
    stack.create_session("krb-short")
    status = wait_for(
        lambda: (s := stack.status("krb-short")).get("phase") == "Ready" and s,
        90,
        "the session with a non-renewable ticket to be Ready",
        0.5,
    )
    job_id = status["jobId"]
    condition = wait_for(
        lambda: (
            (c := stack.condition("krb-short", "CredentialsValid")) and c["status"] == "False" and c
        ),
        45,
        "CredentialsValid=False for a ticket that cannot be renewed",
        0.5,
    )
    assert condition["reason"] in {"TicketNotRenewable", "TicketExpired"}
    assert "log in to the hub again" in condition["message"]
    warnings = [e for e in stack.events("krb-short") if e["reason"] == condition["reason"]]
    assert warnings and warnings[0]["type"] == "Warning", stack.events("krb-short")
    # The hub asks for the password again once the ticket has ended.
    ended = parse_ccache(stack.tickets[-1]).end.timestamp()
    wait_for(lambda: time.time() > ended + 1, 40, "the ticket's end", 0.5)

    async def refreshed() -> bool:
        try:

            class User:
                name = "alice"

            return await stack.hub().refresh_user(User())
        finally:
            await close_api_clients()

    assert asyncio.run(refreshed()) is False
    assert stack.ticket_secret() is None  # the ended ticket's Secret is gone
    wait_for(
        lambda: stack.condition("krb-short", "CredentialsValid")["reason"] == "TicketMissing",
        20,
        "CredentialsValid to say the ticket is gone",
        0.5,
    )
    assert stack.squeue(job_id) == "RUNNING"
    assert stack.status("krb-short")["phase"] == "Ready"
    # No valid ticket at the site any more: its metric is absent, not a moment in the past.
    wait_for(lambda: ticket_expiry_metric(stack) is None, 20, "the ticket metric to go", 0.5)
    # Deleting still cancels: with no ticket the operator cancels with a site certificate.
    stack.delete_session("krb-short")
    wait_for(lambda: stack.squeue(job_id) in {"CANCELLED", ""}, 30, "the job's end", 0.5)
    assert "cancelling with a certificate instead" in stack.operator.log_path.read_text()


def test_no_ticket_or_password_in_argv_job_names_comments_logs_events_or_status(
    stack: KerberosStack,
) -> None:
    assert stack.tickets, "the tests above issued tickets"
    secrets: list[bytes] = [p.encode() for p in PASSWORDS.values()]
    for ccache in stack.tickets:
        secrets += [ccache, base64.b64encode(ccache), ccache.hex().encode()]
        # the ticket itself (the part a thief would need) inside the cache
        secrets.append(ccache[-300:-100])
    places: dict[str, bytes] = {
        "argv (/proc/*/cmdline snapshots)": b"\n".join(stack.argv.seen),
        "operator log": stack.operator.log_path.read_bytes(),
        "sshd log": (stack.sshd.root / "sshd.log").read_bytes(),
        "events": stack.kubectl("get", "events", "-A", "-o", "json").stdout.encode(),
        "sessions": stack.kubectl("get", "notebooksessions", "-A", "-o", "json").stdout.encode(),
    }
    geneva = stack.slurm.sites["geneva"]
    sacct = subprocess.run(
        ["sacct", "-a", "-n", "-X", "-P", "-o", "JobID,JobName%200,Comment%200", "-S", "now-1hour"],
        env={"SLURM_CONF": geneva.slurm_conf, "PATH": "/usr/bin:/bin"},
        capture_output=True, timeout=60, check=False,
    )  # fmt: skip
    places["job names and comments (sacct)"] = sacct.stdout
    logs = stack.slurm.root / "logs"
    for path in logs.glob("*") if logs.is_dir() else []:
        if path.is_file():
            places[f"slurm log {path.name}"] = path.read_bytes()
    # The sampler saw the processes of a whole session's life (a loaded machine samples fewer).
    assert len(stack.argv.seen) > 30
    found = [
        where for where, data in places.items() for secret in secrets if secret and secret in data
    ]
    print(
        f"\nsearched {len(secrets)} secrets in {len(places)} places "
        f"({len(stack.argv.seen)} distinct command lines): {len(found)} hits"
    )
    assert not found, found
    assert job_name("default", "x").startswith("bbpnb-")
