"""The operator's own trust checks, with the real operator and apiserver and the emulated site:
a user the site's policy refuses never gets a job (InvalidSpec, UserNotAllowed), a session naming
someone else's environment Secret never runs, and without the admission policy nothing is
submitted until it is back."""

from __future__ import annotations

import base64
import json
import time

from bbp_notebooks.devtools.admission import install_admission_policy
from bbp_notebooks.devtools.stack import MONITOR_USER, wait_for
from bbp_notebooks.operator.planning import job_name
from fixtures.operator import Stack, condition, session


def test_a_user_the_site_denies_gets_no_job_and_a_named_refusal(stack: Stack) -> None:
    original = json.loads(stack.kubectl("get", "slurmsite", "geneva", "-o", "json").stdout)
    policy = {"spec": {"userPolicy": {"deniedUsers": ["bob"]}}}
    patched = stack.kubectl(
        "patch", "slurmsite", "geneva", "--type=merge", "-p", json.dumps(policy)
    )
    assert patched.returncode == 0, patched.stderr
    try:
        time.sleep(2)  # the operator's SlurmSite index follows the watch within moments
        stack.apply(session("denied-bob", user="bob"))
        status = stack.wait_phase("denied-bob", {"InvalidSpec", "Ready"})
        assert status["phase"] == "InvalidSpec", status
        submitted = condition(status, "Submitted")
        assert submitted["reason"] == "UserNotAllowed"
        assert "'bob'" in submitted["message"] and "denied" in submitted["message"]
        uid = stack.get("notebooksession", "denied-bob")["metadata"]["uid"]  # type: ignore[index]
        assert stack.jobs(name=job_name("default", uid)) == []
        assert "callbackTokenSHA256" not in status
        # A refused session is deleted without logging in anywhere.
        stack.kubectl("delete", "notebooksession", "denied-bob", "--wait=false")
        stack.wait_gone("denied-bob", timeout=20)
    finally:
        restore = {"spec": {"userPolicy": original["spec"].get("userPolicy")}}
        stack.kubectl("patch", "slurmsite", "geneva", "--type=merge", "-p", json.dumps(restore))


def test_the_monitor_user_can_never_be_a_sessions_user(stack: Stack) -> None:
    # The admission policy refuses it first; the operator refuses it too (defence in depth).
    refused = stack.kubectl(
        "apply", "-f", "-", stdin=json.dumps(session("as-monitor", user=MONITOR_USER))
    )
    assert refused.returncode != 0 and "protected" in refused.stderr.lower(), refused.stderr


def test_a_session_naming_another_sessions_secret_never_runs(stack: Stack) -> None:
    stack.apply(
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "victim-env", "namespace": "default"},
            "data": {"JUPYTERHUB_API_TOKEN": base64.b64encode(b"victims-token").decode()},
        }
    )
    stack.apply(session("victim", environmentSecretRef={"name": "victim-env"}))
    stack.own_secret("victim-env", "victim")
    stack.wait_phase("victim", {"Ready"})
    stack.apply(session("thief", user="bob", environmentSecretRef={"name": "victim-env"}))
    status = stack.wait_phase("thief", {"InvalidSpec", "Ready"}, timeout=30)
    assert status["phase"] == "InvalidSpec", status
    submitted = condition(status, "Submitted")
    assert submitted["reason"] == "EnvironmentSecretNotOwned", submitted
    thief_uid = stack.get("notebooksession", "thief")["metadata"]["uid"]  # type: ignore[index]
    assert stack.jobs(name=job_name("default", thief_uid)) == []
    for name in ("thief", "victim"):
        stack.kubectl("delete", "notebooksession", name, "--wait=false")
    for name in ("thief", "victim"):
        stack.wait_gone(name)
    stack.kubectl("delete", "secret", "victim-env")


def test_without_the_admission_policy_nothing_is_submitted_until_it_is_back(
    stack: Stack,
) -> None:
    deleted = stack.kubectl("delete", "validatingadmissionpolicybinding", "bbp-notebooks-sessions")
    assert deleted.returncode == 0, deleted.stderr
    try:
        time.sleep(11)  # the operator looks for the policy every 10 s
        stack.apply(session("unvouched"))
        waiting = wait_for(
            lambda: (s := stack.status("unvouched")).get("conditions") and s,
            30,
            "the session's conditions",
        )
        submitted = condition(waiting, "Submitted")
        assert submitted["status"] == "False"
        assert submitted["reason"] == "AdmissionPolicyMissing", submitted
        assert "bbp-notebooks-sessions" in submitted["message"]
        assert waiting["phase"] == "Pending" and "jobId" not in waiting
        assert stack.warnings("unvouched", "AdmissionPolicyMissing")
        uid = stack.get("notebooksession", "unvouched")["metadata"]["uid"]  # type: ignore[index]
        time.sleep(3)
        assert stack.jobs(name=job_name("default", uid)) == []
    finally:
        install_admission_policy(stack.cp, protected_users=[MONITOR_USER])
    ready = stack.wait_phase("unvouched", {"Ready"}, timeout=60)
    assert condition(ready, "Submitted")["reason"] == "JobSubmitted"
    stack.kubectl("delete", "notebooksession", "unvouched", "--wait=false")
    stack.wait_gone("unvouched")
