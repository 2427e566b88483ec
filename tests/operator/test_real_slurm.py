"""The operator's main path against real Slurm 22.05 (slurm-wlm behind OpenSSH), not the mock."""

from __future__ import annotations

import base64
import json
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bbp_notebooks.api.constants import API_VERSION
from bbp_notebooks.devtools.admission import admin_annotations, install_admission_policy
from bbp_notebooks.devtools.controlplane import ControlPlane, repo_root
from bbp_notebooks.devtools.stack import OPERATOR_NAMESPACE, USER_CA_SECRET, Operator, wait_for
from bbp_notebooks.operator.planning import job_name
from fixtures.operator import RECORDING_NOTEBOOK
from fixtures.realslurm import RealSlurm

pytestmark = [pytest.mark.kube, pytest.mark.realslurm]


class RealStack:
    def __init__(self, cp: ControlPlane, operator: Operator, slurm: RealSlurm) -> None:
        self.cp, self.operator, self.slurm = cp, operator, slurm

    def kubectl(self, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], input=stdin, env=self.cp.env, capture_output=True, text=True,
            timeout=60, check=False,
        )  # fmt: skip

    def status(self, name: str) -> dict[str, Any]:
        result = self.kubectl("get", "notebooksession", name, "-o", "json")
        if result.returncode != 0:
            return {}
        status: dict[str, Any] = json.loads(result.stdout).get("status", {})
        return status

    def squeue(self, job_id: int) -> str:
        site = self.slurm.sites["geneva"]
        result = subprocess.run(
            ["squeue", "-h", "--states=all", "-j", str(job_id), "-o", "%T"],
            env={"SLURM_CONF": site.slurm_conf, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        return result.stdout.strip()

    def sacct_state(self, job_id: int) -> str:
        """The job's final state in the accounting database ("" until slurmdbd has it)."""
        site = self.slurm.sites["geneva"]
        result = subprocess.run(
            ["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "State"],
            env={"SLURM_CONF": site.slurm_conf, "PATH": "/usr/bin:/bin"},
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
        state = result.stdout.strip()
        return "" if state in {"", "RUNNING", "PENDING"} else state


def site_object(name: str, info: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "SlurmSite",
        "metadata": {"name": name},
        "spec": {
            "displayName": name.title(),
            "frontend": {"host": info.ssh_host, "port": info.ssh_port},
            "hostKeys": {"knownHosts": [line for line in info.known_hosts.splitlines() if line]},
            "partitions": [
                {"name": p, "default": p == info.default_partition} for p in info.partitions
            ],
            "auth": {"method": "Certificate", "caSecretName": USER_CA_SECRET},
            "monitorUser": "bob",
            "pollIntervalSeconds": 1,
            "notebookHost": "127.0.0.1",
        },
    }


@pytest.fixture(scope="module")
def real(real_slurm: RealSlurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    workdir = tmp_path_factory.mktemp("real-operator")
    cp = ControlPlane(workdir / "controlplane")
    cp.start()
    try:
        cp.install_crds(repo_root() / "crds")
        # The chart's policy, as in a deployment; the site's monitor user here is bob.
        install_admission_policy(cp, protected_users=["bob"])
        geneva = real_slurm.sites["geneva"]
        ca = Path(geneva.user_ca_key).read_bytes()
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": USER_CA_SECRET, "namespace": OPERATOR_NAMESPACE},
                "data": {"ca": base64.b64encode(ca).decode()},
            },  # fmt: skip
            site_object("geneva", geneva),
        ]
        stack = RealStack(cp, Operator(workdir / "operator", cp.kubeconfig), real_slurm)
        result = stack.kubectl(
            "apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects)
        )
        assert result.returncode == 0, result.stderr
        result = stack.kubectl("apply", "-f", str(repo_root() / "examples" / "profiles.yaml"))
        assert result.returncode == 0, result.stderr
        stack.operator.settings.update(
            {
                "BBP_NOTEBOOK_COMMAND": json.dumps(RECORDING_NOTEBOOK),
            }
        )
        stack.operator.start()
        yield stack
    finally:
        if "stack" in locals():
            stack.operator.stop()
        cp.stop()


def test_on_real_slurm_a_session_becomes_ready_and_deleting_it_cancels_the_job(
    real: RealStack,
) -> None:
    body = {
        "apiVersion": API_VERSION,
        "kind": "NotebookSession",
        "metadata": {"name": "real", "namespace": "default", "annotations": admin_annotations()},
        "spec": {"user": "alice", "profile": "bluepy", "site": "geneva"},
    }
    assert real.kubectl("apply", "-f", "-", stdin=json.dumps(body)).returncode == 0

    def ready() -> dict[str, Any] | None:
        # The job's callback may make the session Ready before the next poll names its node.
        status = real.status("real")
        return status if status.get("phase") == "Ready" and status.get("node") else None

    try:
        status = wait_for(ready, 90, "the session on real Slurm to be Ready", 0.5)
    except TimeoutError as error:
        raise AssertionError(
            f"{error}: {real.status('real')}\n{real.operator.log_path.read_text()[-3000:]}"
        ) from None
    assert status["jobId"] >= real.slurm.sites["geneva"].first_job_id
    assert status["node"] == real.slurm.sites["geneva"].node_name
    assert real.squeue(status["jobId"]) == "RUNNING"
    with urllib.request.urlopen(status["endpoint"]["url"], timeout=5) as response:  # noqa: S310
        assert response.status == 200
    env_file = Path(f"~alice/.bbpnb-test-env-{status['jobId']}").expanduser()
    assert json.loads(env_file.read_text())["USER"] == "alice"

    def site_sees_the_job() -> dict[str, Any] | None:
        site = json.loads(real.kubectl("get", "slurmsite", "geneva", "-o", "json").stdout)
        status: dict[str, Any] = site.get("status", {})
        return status if status.get("runningJobs", 0) >= 1 else None

    site = wait_for(site_sees_the_job, 30, "geneva's status to count the running job", 0.5)
    assert site["slurmVersion"].startswith("22.05")
    assert {c["type"]: c["status"] for c in site["conditions"]}["Reachable"] == "True"
    assert {e["user"]: e["accounts"] for e in site["userAccounts"]}["alice"] == ["bbp"]

    assert real.kubectl("delete", "notebooksession", "real", "--wait=false").returncode == 0
    wait_for(lambda: not real.status("real"), 60, "the session to go", 0.5)
    # scancel returns before the job ends: squeue says COMPLETING while slurmd kills its steps.
    job_id = status["jobId"]
    wait_for(lambda: real.squeue(job_id) in {"CANCELLED", ""}, 30, "the job's end", 0.5)
    wait_for(lambda: real.sacct_state(job_id), 30, "sacct to record the job's end", 0.5)
    assert real.sacct_state(job_id).startswith("CANCELLED")


def test_on_real_slurm_a_lost_callback_is_covered_by_the_connection_file(real: RealStack) -> None:
    """The job cannot reach the operator (callback URL points nowhere); the operator reads the
    connection file the job wrote, over ssh as the user, and the session still becomes Ready."""
    real.operator.stop()
    real.operator.settings.update(
        {"BBP_CALLBACK_URL": "http://127.0.0.1:9", "BBP_ENDPOINT_FALLBACK_AFTER_SECONDS": "2"}
    )
    patch = {"spec": {"connectionFileFallback": True}}
    assert (
        real.kubectl(
            "patch", "slurmsite", "geneva", "--type=merge", "-p", json.dumps(patch)
        ).returncode
        == 0
    )
    real.operator.start()
    try:
        body = {
            "apiVersion": API_VERSION,
            "kind": "NotebookSession",
            "metadata": {
                "name": "no-callback",
                "namespace": "default",
                "annotations": admin_annotations(),
            },
            "spec": {"user": "alice", "profile": "bluepy", "site": "geneva"},
        }
        assert real.kubectl("apply", "-f", "-", stdin=json.dumps(body)).returncode == 0
        status = wait_for(
            lambda: (s := real.status("no-callback")) and s.get("phase") == "Ready" and s,
            90,
            "Ready through the connection file",
            0.5,
        )
        with urllib.request.urlopen(status["endpoint"]["url"], timeout=5) as response:  # noqa: S310
            assert response.status == 200
        assert "read from its connection file" in real.operator.log_path.read_text()
        assert (
            real.kubectl("delete", "notebooksession", "no-callback", "--wait=false").returncode == 0
        )
        wait_for(lambda: not real.status("no-callback"), 60, "the session to go", 0.5)
    finally:
        real.operator.stop()
        for key in ("BBP_CALLBACK_URL", "BBP_ENDPOINT_FALLBACK_AFTER_SECONDS"):
            real.operator.settings.pop(key, None)
        real.operator.start()


ORPHAN_GRACE_S = 15


def test_on_real_slurm_the_sweep_cancels_only_our_orphans_and_only_after_the_grace(
    real: RealStack,
) -> None:
    """Another installation's job and a job whose name forges an squeue record (claiming one of
    our tags for alice's own job) are left running; our installation's true orphan is cancelled,
    and only once it is older than the grace."""
    real.operator.stop()
    real.operator.settings.update(
        {"BBP_ORPHAN_GRACE_SECONDS": str(ORPHAN_GRACE_S), "BBP_ORPHAN_SWEEP_EVERY_POLLS": "1"}
    )
    real.operator.start()
    site = real.slurm.sites["geneva"]
    submitted: list[int] = []

    def sbatch(user: str, name: str) -> int:
        result = subprocess.run(
            ["runuser", "-u", user, "--", "env", f"SLURM_CONF={site.slurm_conf}", "sbatch",
             "--parsable", f"--job-name={name}", "--time=5", "--chdir=/tmp",
             "--output=/dev/null"],
            input="#!/bin/bash\nsleep 300\n", capture_output=True, text=True, timeout=60,
            check=False,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        submitted.append(int(result.stdout.strip().split(";")[0]))
        return submitted[-1]

    try:
        started = time.monotonic()
        victim = sbatch("alice", "my-own-analysis")
        forged = (
            f"x\n{victim}|alice|RUNNING|None|{site.node_name}|N/A|2020-01-01T00:00:00|5:00|4:00"
            f"|{site.default_partition}|bbp|{job_name('default', str(uuid.uuid4()))}"
        )
        forger = sbatch("bob", forged)
        other = sbatch("bob", job_name("other", str(uuid.uuid4())))
        # alice: the sweep never logs in as a protected user (bob is the monitor user here).
        orphan = sbatch("alice", job_name("default", str(uuid.uuid4())))
        alive = {"RUNNING", "PENDING"}
        while time.monotonic() - started < ORPHAN_GRACE_S - 3:
            assert real.squeue(orphan) in alive, "the orphan was cancelled inside its grace"
            time.sleep(0.5)
        survived = time.monotonic() - started
        wait_for(lambda: real.squeue(orphan) == "CANCELLED", 30, "the orphan's cancel", 0.2)
        cancelled = time.monotonic() - started
        print(
            f"\nreal Slurm, orphan grace {ORPHAN_GRACE_S} s, sweep every 1 s poll: orphan alive "
            f"at {survived:.1f} s, seen CANCELLED at {cancelled:.1f} s after its submission"
        )
        assert cancelled >= ORPHAN_GRACE_S
        time.sleep(3)  # a few more sweeps
        states = {job_id: real.squeue(job_id) for job_id in (victim, forger, other)}
        print(f"left running: victim {victim}, forger {forger}, other installation {other}:")
        print(f"  {states}")
        assert set(states.values()) <= alive, states
        log = real.operator.log_path.read_text()
        assert f"cancelled orphan job {orphan} " in log
        assert not any(f"orphan job {job_id} " in log for job_id in (victim, forger, other))
        with urllib.request.urlopen(f"{real.operator.url}/metrics", timeout=5) as response:  # noqa: S310
            metrics = response.read().decode()
        dropped = [
            line for line in metrics.splitlines()
            if line.startswith('bbp_notebooks_squeue_rows_dropped_total{site="geneva"}')
        ]  # fmt: skip
        print(f"  {dropped}")
        assert dropped and float(dropped[0].split()[-1]) >= 1
    finally:
        if submitted:
            subprocess.run(
                ["scancel", *map(str, submitted)], env={"SLURM_CONF": site.slurm_conf,
                "PATH": "/usr/bin:/bin"}, capture_output=True, timeout=60, check=False,
            )  # fmt: skip
        real.operator.stop()
        for key in ("BBP_ORPHAN_GRACE_SECONDS", "BBP_ORPHAN_SWEEP_EVERY_POLLS"):
            real.operator.settings.pop(key, None)
        real.operator.start()
