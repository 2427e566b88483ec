"""A session's time as the scientist lives it, on real Slurm 22.05: the end time in status is
Slurm's, a warning comes at the lead time, an extension within bounds raises Slurm's TimeLimit
(carried out by the site's AdminLevel=Operator account), one beyond the profile's maximum is
refused with a message, and a notebook that fails shows its last output lines in status and
in ``kubectl notebooks logs``."""

from __future__ import annotations

import base64
import datetime as dt
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from test_real_slurm import RealStack, site_object

from bbp_notebooks.api.constants import API_VERSION
from bbp_notebooks.devtools.admission import admin_annotations, install_admission_policy
from bbp_notebooks.devtools.controlplane import ControlPlane, repo_root
from bbp_notebooks.devtools.realslurm import ADMIN_USER
from bbp_notebooks.devtools.stack import OPERATOR_NAMESPACE, USER_CA_SECRET, Operator, wait_for
from bbp_notebooks.hub import cards
from fixtures.operator import RECORDING_NOTEBOOK
from fixtures.realslurm import RealSlurm

pytestmark = [pytest.mark.kube, pytest.mark.realslurm]

LEAD_MINUTES = 25  # larger than the short profile's limit: its sessions are warned at once
FAILING_SETUP = (
    'for i in $(seq 1 80); do echo "setup line $i"; done\n'
    "printf 'colour \\033[31mred\\033[0m and a bell \\a\\n'\n"
    "echo 'ModuleNotFoundError: No module named bbp_kernel' >&2\n"
    "exit 1\n"
)


def profile(name: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NotebookProfile",
        "metadata": {"name": name},
        "spec": {"displayName": name, "cores": 1, "memoryMiB": 512, **spec},
    }


def session(name: str, profile_name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "NotebookSession",
        "metadata": {"name": name, "namespace": "default", "annotations": admin_annotations()},
        "spec": {"user": "alice", "profile": profile_name, "site": "geneva"},
    }


@pytest.fixture(scope="module")
def real(real_slurm: RealSlurm, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RealStack]:
    workdir = tmp_path_factory.mktemp("real-time")
    cp = ControlPlane(workdir / "controlplane")
    cp.start()
    try:
        cp.install_crds(repo_root() / "crds")
        install_admission_policy(cp, protected_users=["bob", ADMIN_USER])
        geneva = real_slurm.sites["geneva"]
        site = site_object("geneva", geneva)
        site["spec"]["adminUser"] = ADMIN_USER
        objects = [
            {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": OPERATOR_NAMESPACE}},
            {
                "apiVersion": "v1",
                "kind": "Secret",
                "metadata": {"name": USER_CA_SECRET, "namespace": OPERATOR_NAMESPACE},
                "data": {"ca": base64.b64encode(Path(geneva.user_ca_key).read_bytes()).decode()},
            },  # fmt: skip
            site,
            profile("short", defaultTimeLimitMinutes=20, maxTimeLimitMinutes=30),
            profile("broken", kernelSetup=FAILING_SETUP),
            # Allows more than geneva's debug partition (MaxTime 1 h): the partition is the bound.
            profile("long", defaultTimeLimitMinutes=20, maxTimeLimitMinutes=120),
            # One minute more than the lead: the warning comes while the job runs.
            profile("lead", defaultTimeLimitMinutes=LEAD_MINUTES + 1, maxTimeLimitMinutes=30),
        ]
        stack = RealStack(cp, Operator(workdir / "operator", cp.kubeconfig), real_slurm)
        result = stack.kubectl(
            "apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects)
        )
        assert result.returncode == 0, result.stderr
        stack.operator.settings.update(
            {
                "BBP_NOTEBOOK_COMMAND": json.dumps(RECORDING_NOTEBOOK),
                "BBP_WARNING_LEAD_MINUTES": str(LEAD_MINUTES),
            }
        )
        stack.operator.start()
        yield stack
    finally:
        if "stack" in locals():
            stack.operator.stop()
        cp.stop()


def slurm_job(real: RealStack, job_id: int) -> dict[str, str]:
    """``scontrol show job`` at geneva, read directly (not through the operator)."""
    site = real.slurm.sites["geneva"]
    result = subprocess.run(
        ["scontrol", "-o", "show", "job", str(job_id)],
        env={"SLURM_CONF": site.slurm_conf, "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    return dict(w.split("=", 1) for w in result.stdout.split() if "=" in w)


def slurm_end(job: dict[str, str]) -> dt.datetime:
    return dt.datetime.fromisoformat(job["EndTime"]).replace(tzinfo=dt.UTC)  # site timeZone UTC


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    return next((c for c in status.get("conditions", []) if c["type"] == type_), {})


def events(real: RealStack, name: str) -> list[dict[str, Any]]:
    result = real.kubectl(
        "get", "events", "--field-selector", f"involvedObject.name={name}", "-o", "json"
    )
    items: list[dict[str, Any]] = json.loads(result.stdout)["items"]
    return items


def test_end_time_warning_and_extension_on_real_slurm(real: RealStack) -> None:
    assert real.kubectl("apply", "-f", "-", stdin=json.dumps(session("t", "short"))).returncode == 0
    try:
        status = wait_for(
            lambda: (s := real.status("t")).get("expectedEndTime") and s,
            90, "the session to run with an end time", 0.5,
        )  # fmt: skip
    except TimeoutError as error:
        raise AssertionError(f"{error}: {real.status('t')}") from None
    job_id = status["jobId"]
    job = slurm_job(real, job_id)
    assert job["TimeLimit"] == "00:20:00"
    assert dt.datetime.fromisoformat(status["expectedEndTime"]) == slurm_end(job)
    assert status["timeLimitMinutes"] == 20

    # 20 minutes left < the 25-minute lead: warned at once, condition and one Warning Event.
    warned = condition(status, "TimeLimit")
    assert (warned["status"], warned["reason"]) == ("False", "EndingSoon"), warned
    warning = wait_for(
        lambda: [e for e in events(real, "t") if e["reason"] == "EndingSoon"], 20, "the Event", 0.5
    )
    assert warning[0]["type"] == "Warning" and "min left" in warning[0]["message"]

    # The hub's card of this very status carries the warning as its notice.
    card = cards.card("", {"spec": {"site": "geneva"}, "status": status},
                      now=dt.datetime.now(dt.UTC), max_time_limit_minutes=30)  # fmt: skip
    assert (card.notice_reason, card.notice) == ("EndingSoon", warned["message"]), card

    # Within the profile's maximum (30): Slurm's TimeLimit rises, status follows.
    patch = {"spec": {"resources": {"timeLimitMinutes": 30}}}
    result = real.kubectl("patch", "notebooksession", "t", "--type=merge", "-p", json.dumps(patch))
    assert result.returncode == 0, result.stderr
    status = wait_for(
        lambda: (s := real.status("t")).get("timeLimitMinutes") == 30 and s,
        30, "the extension", 0.5,
    )  # fmt: skip
    job = slurm_job(real, job_id)
    assert job["TimeLimit"] == "00:30:00"
    assert dt.datetime.fromisoformat(status["expectedEndTime"]) == slurm_end(job)
    assert condition(status, "TimeLimit")["reason"] == "Extended"
    assert [e for e in events(real, "t") if e["reason"] == "Extended"]

    # Beyond the profile's maximum: refused with a message; Slurm's limit stays.
    patch = {"spec": {"resources": {"timeLimitMinutes": 45}}}
    result = real.kubectl("patch", "notebooksession", "t", "--type=merge", "-p", json.dumps(patch))
    assert result.returncode == 0, result.stderr
    status = wait_for(
        lambda: condition(s := real.status("t"), "TimeLimit").get("reason") == "ExtensionRefused"
        and s,
        30, "the refusal", 0.5,
    )  # fmt: skip
    refused = condition(status, "TimeLimit")
    assert refused["status"] == "False"
    assert "exceeds the profile's maximum of 30 minutes" in refused["message"]
    assert slurm_job(real, job_id)["TimeLimit"] == "00:30:00"
    assert status["timeLimitMinutes"] == 30
    assert [e for e in events(real, "t") if e["reason"] == "ExtensionRefused"]
    card = cards.card("", {"spec": {"site": "geneva"}, "status": status},
                      now=dt.datetime.now(dt.UTC), max_time_limit_minutes=30)  # fmt: skip
    assert (card.notice_reason, card.notice) == ("ExtensionRefused", refused["message"]), card

    # And the schema never lets the request shrink.
    patch = {"spec": {"resources": {"timeLimitMinutes": 25}}}
    result = real.kubectl("patch", "notebooksession", "t", "--type=merge", "-p", json.dumps(patch))
    assert result.returncode != 0 and "may only grow" in result.stderr

    assert real.kubectl("delete", "notebooksession", "t", "--wait=false").returncode == 0
    wait_for(lambda: not real.status("t"), 60, "the session to go", 0.5)


def test_a_failing_notebook_shows_its_last_output_lines(real: RealStack) -> None:
    assert (
        real.kubectl("apply", "-f", "-", stdin=json.dumps(session("f", "broken"))).returncode == 0
    )
    try:
        status = wait_for(
            lambda: (s := real.status("f")).get("phase") == "Failed" and s.get("logTail") and s,
            90, "the failed session with its log", 0.5,
        )  # fmt: skip
    except TimeoutError as error:
        raise AssertionError(
            f"{error}: {real.status('f')}\n{real.operator.log_path.read_text()[-3000:]}"
        ) from None
    tail = status["logTail"]
    assert "ModuleNotFoundError: No module named bbp_kernel" in tail
    assert "setup line 80" in tail and "setup line 20" not in tail  # the last ~50 lines only
    assert "\x1b" not in tail and "\x07" not in tail  # control characters removed
    assert len(tail.encode()) <= 8192
    assert "ModuleNotFoundError" in status["message"]  # what the hub shows as the error
    plugin = subprocess.run(
        ["kubectl-notebooks", "logs", "f", "-n", "default"],
        env=real.cp.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert plugin.returncode == 0, plugin.stderr
    assert "ModuleNotFoundError: No module named bbp_kernel" in plugin.stdout
    described = subprocess.run(
        ["kubectl-notebooks", "describe", "f", "-n", "default"],
        env=real.cp.env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert described.returncode == 0, described.stderr
    assert f"Id:       {status['jobId']}" in described.stdout
    assert "Site:       geneva" in described.stdout and "Slurm:    22.05" in described.stdout
    assert real.kubectl("delete", "notebooksession", "f", "--wait=false").returncode == 0
    wait_for(lambda: not real.status("f"), 60, "the session to go", 0.5)


def test_an_extension_beyond_the_partitions_max_time_is_refused_with_its_reason(
    real: RealStack,
) -> None:
    """geneva's debug partition has MaxTime=01:00:00; the profile would allow 120 min. Slurm
    itself lets an AdminLevel=Operator account go past MaxTime (tests/realslurm contract), so
    the operator's own check is what refuses, naming the partition and its MaxTime."""
    debug_first = {"spec": {"partitions": [{"name": "debug", "default": True}, {"name": "prod"}]}}
    original = json.loads(real.kubectl("get", "slurmsite", "geneva", "-o", "json").stdout)
    result = real.kubectl("patch", "slurmsite", "geneva", "--type=merge", "-p",
                          json.dumps(debug_first))  # fmt: skip
    assert result.returncode == 0, result.stderr
    try:
        created = real.kubectl("apply", "-f", "-", stdin=json.dumps(session("m", "long")))
        assert created.returncode == 0, created.stderr
        try:
            status = wait_for(
                lambda: (s := real.status("m")).get("expectedEndTime") and s,
                90, "the session to run with an end time", 0.5,
            )  # fmt: skip
        except TimeoutError as error:
            raise AssertionError(f"{error}: {real.status('m')}") from None
        job_id = status["jobId"]
        job = slurm_job(real, job_id)
        assert (job["Partition"], job["TimeLimit"]) == ("debug", "00:20:00"), job

        patch = {"spec": {"resources": {"timeLimitMinutes": 90}}}
        result = real.kubectl(
            "patch", "notebooksession", "m", "--type=merge", "-p", json.dumps(patch)
        )
        assert result.returncode == 0, result.stderr
        status = wait_for(
            lambda: condition(s := real.status("m"), "TimeLimit").get("reason")
            == "ExtensionRefused" and s,
            30, "the refusal", 0.5,
        )  # fmt: skip
        refused = condition(status, "TimeLimit")
        assert refused["message"] == (
            "extension refused: 90 minutes exceeds partition debug's MaxTime of 60 minutes"
        ), refused
        assert slurm_job(real, job_id)["TimeLimit"] == "00:20:00"
        assert status["timeLimitMinutes"] == 20
        warnings = [e for e in events(real, "m") if e["reason"] == "ExtensionRefused"]
        assert warnings and warnings[0]["type"] == "Warning", warnings
        assert "MaxTime of 60 minutes" in warnings[0]["message"]
        card = cards.card("", {"spec": {"site": "geneva"}, "status": status},
                          now=dt.datetime.now(dt.UTC), max_time_limit_minutes=120)  # fmt: skip
        assert (card.notice_reason, card.notice) == ("ExtensionRefused", refused["message"])
        assert real.kubectl("delete", "notebooksession", "m", "--wait=false").returncode == 0
        wait_for(lambda: not real.status("m"), 60, "the session to go", 0.5)
    finally:
        restore = {"spec": {"partitions": original["spec"]["partitions"]}}
        real.kubectl("patch", "slurmsite", "geneva", "--type=merge", "-p", json.dumps(restore))


def test_a_running_session_is_warned_when_it_reaches_the_lead_time(real: RealStack) -> None:
    """A 26 min job with a 25 min lead: TimeRemaining first, then, about a minute in (at Slurm's
    end time minus the lead, not before), EndingSoon with one Warning Event and the hub's notice."""
    created = real.kubectl("apply", "-f", "-", stdin=json.dumps(session("w", "lead")))
    assert created.returncode == 0, created.stderr
    try:
        status = wait_for(
            lambda: (s := real.status("w")).get("expectedEndTime") and s,
            90, "the session to run with an end time", 0.5,
        )  # fmt: skip
    except TimeoutError as error:
        raise AssertionError(f"{error}: {real.status('w')}") from None
    end = slurm_end(slurm_job(real, status["jobId"]))
    assert dt.datetime.fromisoformat(status["expectedEndTime"]) == end
    due = end - dt.timedelta(minutes=LEAD_MINUTES)
    if dt.datetime.now(dt.UTC) < due - dt.timedelta(seconds=5):  # the normal case: ~55 s to go
        early = condition(status, "TimeLimit")
        assert (early["status"], early["reason"]) == ("True", "TimeRemaining"), early
        assert not [e for e in events(real, "w") if e["reason"] == "EndingSoon"]
    status = wait_for(
        lambda: condition(s := real.status("w"), "TimeLimit").get("reason") == "EndingSoon" and s,
        150, "the warning at the lead time", 0.5,
    )  # fmt: skip
    warned = condition(status, "TimeLimit")
    at = dt.datetime.fromisoformat(warned["lastTransitionTime"].replace("Z", "+00:00"))
    assert due <= at <= due + dt.timedelta(seconds=30), (due, warned)
    warning = wait_for(
        lambda: [e for e in events(real, "w") if e["reason"] == "EndingSoon"], 20, "the Event", 0.5
    )
    assert len(warning) == 1 and warning[0]["type"] == "Warning", warning
    assert f"({LEAD_MINUTES} min left)" in warning[0]["message"] or (
        f"({LEAD_MINUTES - 1} min left)" in warning[0]["message"]
    ), warning
    card = cards.card("", {"spec": {"site": "geneva"}, "status": status},
                      now=dt.datetime.now(dt.UTC), max_time_limit_minutes=30)  # fmt: skip
    assert (card.notice_reason, card.notice) == ("EndingSoon", warned["message"]), card
    assert real.kubectl("delete", "notebooksession", "w", "--wait=false").returncode == 0
    wait_for(lambda: not real.status("w"), 60, "the session to go", 0.5)
