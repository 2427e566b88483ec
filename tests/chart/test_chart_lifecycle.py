"""The chart's RBAC is enough for a whole session lifecycle: the real operator, authenticated only
by the chart's ServiceAccount token and configured by the chart's settings, submits a job to the
emulated Geneva, reads the session's environment Secret, reports Ready, and cancels the job when
the session is deleted."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest

from bbp_notebooks.devtools.admission import admin_annotations
from bbp_notebooks.devtools.controlplane import ControlPlane
from bbp_notebooks.devtools.stack import Keys, MockSlurm, Operator, free_port, wait_for
from chart.helmchart import Release, install
from fixtures.operator import RECORDING_NOTEBOOK
from fixtures.ownership import owner_patch

pytestmark = pytest.mark.kube
SESSIONS = "life-sessions"


@pytest.fixture(scope="module")
def chart_stack(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Release, MockSlurm, Operator]]:
    workdir = tmp_path_factory.mktemp("chart-life")
    keys = Keys.create(workdir / "keys")
    mock = MockSlurm(workdir / "mockslurm", keys, min_job_age=5.0)
    mock.start()
    geneva = mock.sites[0]
    port = mock.ports[geneva.name]
    release = install(
        control_plane,
        "life",
        namespace="bbp-life",
        values={
            "hub": {"enabled": False},
            "sessions": {"namespace": SESSIONS},
            "userCa": {
                "create": True,
                "privateKey": bytes(keys.user_ca.export_private_key()).decode(),
            },
            "slurmSites": [
                {
                    "name": "life-geneva",
                    "spec": {
                        "displayName": "Geneva (emulated)",
                        "frontend": {"host": geneva.address, "port": port},
                        "hostKeys": {
                            "knownHosts": [f"[{geneva.address}]:{port} {keys.host_public}"]
                        },
                        "partitions": [{"name": "prod", "default": True}],
                        "auth": {"method": "Certificate", "caSecretName": "bbp-user-ca"},
                        "monitorUser": "bbpmon",
                        "pollIntervalSeconds": 1,
                        "notebookHost": "127.0.0.1",
                    },
                }
            ],
            "notebookProfiles": [
                {"name": "life", "spec": {"displayName": "Life", "cores": 1, "memoryMiB": 512}}
            ],
        },
    )
    http_port = free_port()
    env = {k: v for k, v in release.operator_env().items() if k != "BBP_SETTINGS_FILE"}
    operator = Operator(
        workdir / "operator",
        release.operator_kubeconfig(),
        settings={
            **env,
            "BBP_HTTP_PORT": str(http_port),
            "BBP_CALLBACK_URL": f"http://127.0.0.1:{http_port}",
            "BBP_NOTEBOOK_COMMAND": json.dumps(RECORDING_NOTEBOOK),
        },
        http_port=http_port,
    )
    try:
        operator.start()
        yield release, mock, operator
    finally:
        operator.stop()
        release.remove()
        mock.stop()


def test_the_operator_with_only_the_charts_rbac_runs_a_whole_session(
    chart_stack: tuple[Release, MockSlurm, Operator], control_plane: ControlPlane
) -> None:
    release, mock, operator = chart_stack

    def kubectl(*args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["kubectl", *args], input=stdin, env=control_plane.env, capture_output=True,
            text=True, timeout=60, check=False,
        )  # fmt: skip

    token = base64.b64encode(b"hub-token-for-the-chart-test").decode()
    objects: list[dict[str, Any]] = [
        {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": "life-env", "namespace": SESSIONS},
            "data": {"JUPYTERHUB_API_TOKEN": token},
        },  # fmt: skip
        {
            "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
            "kind": "NotebookSession",
            "metadata": {"name": "life", "namespace": SESSIONS, "annotations": admin_annotations()},
            "spec": {
                "user": "alice",
                "profile": "life",
                "site": "life-geneva",
                "environmentSecretRef": {"name": "life-env"},
            },  # fmt: skip
        },
    ]
    result = kubectl("apply", "-f", "-", stdin="\n---\n".join(json.dumps(o) for o in objects))
    assert result.returncode == 0, result.stderr
    created = json.loads(
        kubectl("get", "notebooksession", "life", "-n", SESSIONS, "-o", "json").stdout
    )
    owned = kubectl(
        "patch", "secret", "life-env", "-n", SESSIONS, "--type=merge", "-p", owner_patch(created)
    )
    assert owned.returncode == 0, owned.stderr

    def status() -> dict[str, Any]:
        found = kubectl("get", "notebooksession", "life", "-n", SESSIONS, "-o", "json")
        return json.loads(found.stdout).get("status", {}) if found.returncode == 0 else {}

    try:
        ready = wait_for(lambda: (s := status()).get("phase") == "Ready" and s, 60, "Ready")
    except TimeoutError as error:
        raise AssertionError(
            f"{error}: {status()}\n{operator.log_path.read_text()[-3000:]}"
        ) from None
    env_file = os.path.expanduser(f"~alice/.bbpnb-test-env-{ready['jobId']}")
    with open(env_file) as stream:
        expected = "hub-token-for-the-chart-test"  # noqa: S105  (a test value)
        assert json.load(stream)["JUPYTERHUB_API_TOKEN"] == expected
    with urllib.request.urlopen(ready["endpoint"]["url"], timeout=5) as response:  # noqa: S310
        assert response.status == 200

    assert (
        kubectl("delete", "notebooksession", "life", "-n", SESSIONS, "--wait=false").returncode == 0
    )
    wait_for(lambda: not status(), 60, "the session to go")
    job = next(j for j in mock.jobs("geneva") if j["job_id"] == ready["jobId"])
    assert job["state"] == "CANCELLED"
    log = operator.log_path.read_text()
    assert "Forbidden" not in log and "(403)" not in log


_ = asyncssh  # the emulator's keys are asyncssh keys
