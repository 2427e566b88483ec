"""Hostile input is refused or carried as data, never executed; secrets stay out of sight."""

from __future__ import annotations

import base64
import json
import os
import secrets
from pathlib import Path

import pytest

from bbp_notebooks.operator.tokens import digest
from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube

CANARY = Path(f"/tmp/bbpnb-canary-{secrets.token_hex(4)}")

HOSTILE = {
    "QUOTES": f"'; touch {CANARY}; echo '\"",
    "SUBSHELL": f"$(touch {CANARY})",
    "BACKTICKS": f"`touch {CANARY}`",
    "NEWLINES": f"first\n#SBATCH --uid=0\ntouch {CANARY}\n",
    "LONG": "x" * 2048,
    "UNICODE": "ünïcødé ✓ 日本語 \u202e",
    "DOLLARS": "$HOME ${PATH} $$ \\ \\n",
    "HEREDOC": f"EOF\nBBPNB_KERNEL_SETUP\ntouch {CANARY}",
}


def secret(name: str, data: dict[str, str]) -> dict[str, object]:
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": "default"},
        "data": {k: base64.b64encode(v.encode()).decode() for k, v in data.items()},
    }


def recorded_environment(job_id: int) -> dict[str, str]:
    path = Path(os.path.expanduser(f"~alice/.bbpnb-test-env-{job_id}"))
    env: dict[str, str] = json.loads(path.read_text())
    return env


def test_hostile_environment_values_reach_the_notebook_verbatim_and_run_nothing(
    stack: Stack,
) -> None:
    stack.apply(secret("hostile-env", HOSTILE))
    stack.apply(session("hostile", environmentSecretRef={"name": "hostile-env"}))
    stack.own_secret("hostile-env", "hostile")
    status = stack.wait_phase("hostile", {"Ready"})
    env = recorded_environment(status["jobId"])
    assert {k: env.get(k) for k in HOSTILE} == HOSTILE
    assert not CANARY.exists(), "a hostile value was executed"
    stack.kubectl("delete", "notebooksession", "hostile", "--wait=false")
    stack.wait_gone("hostile")
    assert not CANARY.exists()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("user", "alice$(touch /tmp/x)"),
        ("serverName", "`id`"),
        ("account", "proj'; scancel -u alice; '"),
        ("profile", "bluepy\n#SBATCH --uid=0"),
        ("site", "geneva;id"),
    ],
)
def test_hostile_strings_in_session_fields_are_refused_by_the_api_server(
    stack: Stack, field: str, value: str
) -> None:
    body = session("refused")
    body["spec"][field] = value
    result = stack.kubectl("apply", "-f", "-", stdin=json.dumps(body))
    assert result.returncode != 0 and f"spec.{field}" in result.stderr, result.stderr


def _all_command_lines() -> str:
    lines = []
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                lines.append(
                    Path(f"/proc/{pid}/cmdline")
                    .read_bytes()
                    .replace(b"\0", b" ")
                    .decode(errors="replace")
                )
            except OSError:
                continue
    return "\n".join(lines)


def test_tokens_never_appear_in_argv_job_names_comments_slurm_output_or_logs(stack: Stack) -> None:
    api_token = secrets.token_hex(24)
    stack.apply(secret("token-env", {"JUPYTERHUB_API_TOKEN": api_token}))
    stack.apply(session("secretive", environmentSecretRef={"name": "token-env"}))
    stack.own_secret("token-env", "secretive")
    status = stack.wait_phase("secretive", {"Ready"})
    found = stack.get("notebooksession", "secretive")
    assert found is not None
    callback_token = stack.callback_token(status["jobId"])
    assert digest(callback_token) == found["status"]["callbackTokenSHA256"]
    assert recorded_environment(status["jobId"])["JUPYTERHUB_API_TOKEN"] == api_token
    assert "BBPNB_CALLBACK_TOKEN" not in recorded_environment(status["jobId"])

    haystacks = {
        "argv of every process": _all_command_lines(),
        "job names and comments": json.dumps(stack.jobs()),
        "the session object": json.dumps(found),
        "operator log": stack.operator.log_path.read_text(errors="replace"),
        "mock Slurm log": (stack.mock.workdir / "mockslurm.log").read_text(errors="replace"),
    }
    for command in (
        ["squeue", "-h", "-o", "%i|%j|%k|%u|%T|%N"],
        ["sacct", "-a", "-X", "-P", "-n", "-o", "JobID,JobName,User,State"],
    ):
        status, stdout, stderr = stack.ssh_run("bob", command)
        assert status == 0 and "bbpnb-" in stdout, f"the query must list our tagged jobs: {stderr}"
        haystacks[" ".join(command)] = stdout + stderr
    for where, text in haystacks.items():
        assert api_token not in text, f"hub API token visible in {where}"
        assert callback_token not in text, f"callback token visible in {where}"
    stack.kubectl("delete", "notebooksession", "secretive", "--wait=false")
    stack.wait_gone("secretive")
