"""The real operator, run with the token of the chart's ServiceAccount and the chart's settings,
starts, peers and reconciles without a single permission error.

The Slurm site here is unreachable on purpose: what is exercised is the Kubernetes calls the
operator makes before it needs a site (watches, indexes, finalizer, status patches, events, the
peering keep-alive, the site's status), not Slurm. Reading a session's environment Secret happens
only once a site answers: test_chart_on_apiserver proves the chart allows it. The full lifecycle
against a Slurm site is the operator suite's job.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from bbp_notebooks.api.constants import FINALIZER
from bbp_notebooks.devtools.admission import admin_annotations
from bbp_notebooks.devtools.controlplane import ControlPlane
from bbp_notebooks.devtools.stack import free_port, wait_for
from chart.helmchart import Release, install, ssh_keypair
from fixtures.ownership import owner_patch

pytestmark = pytest.mark.kube
DEADLINE_S = 60.0
# HTTP 403 as the clients print it ("(403)", "status=403"), not any number that contains 403.
PERMISSION_PROBLEMS = ("Forbidden", "forbidden", "(403)", "status=403", "Not enough permissions")


@pytest.fixture(scope="module")
def release(
    control_plane: ControlPlane, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Release]:
    user_ca = ssh_keypair(tmp_path_factory.mktemp("keys"), "user_ca")
    host_ca = ssh_keypair(tmp_path_factory.mktemp("keys"), "host_ca")
    release = install(
        control_plane,
        "smoke",
        namespace="bbp-smoke",
        values={
            "operator": {"replicas": 2},
            "hub": {"enabled": False},
            "sessions": {"namespace": "smoke-sessions"},
            "userCa": {"create": True, "privateKey": user_ca.private},
            # Nothing listens on port 1 of this loopback alias: every ssh attempt fails fast.
            "slurmSites": [
                {
                    "name": "smoke-site",
                    "spec": {
                        "displayName": "Smoke",
                        "frontend": {"host": "127.0.0.29", "port": 1},
                        "hostKeys": {"certificateAuthorities": [host_ca.public]},
                        "partitions": [{"name": "prod", "default": True}],
                        "auth": {"method": "Certificate", "caSecretName": "bbp-user-ca"},
                        "monitorUser": "bbpmon",
                        "pollIntervalSeconds": 2,
                    },
                }
            ],
            "notebookProfiles": [
                {"name": "smoke", "spec": {"displayName": "Smoke", "cores": 1, "memoryMiB": 512}}
            ],
        },
    )
    yield release
    release.remove()


@pytest.fixture(scope="module")
def operator_log(release: Release, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """The operator process, authenticated only by the chart's ServiceAccount token."""
    env = {**os.environ, **release.operator_env()}
    env.update(
        {
            "KUBECONFIG": str(release.operator_kubeconfig()),
            "BBP_HTTP_HOST": "127.0.0.1",
            "BBP_HTTP_PORT": str(free_port()),
        }
    )
    env.pop("BBP_SETTINGS_FILE", None)
    log = tmp_path_factory.mktemp("operator") / "operator.log"
    with log.open("wb") as stream:
        process = subprocess.Popen(
            [sys.executable, "-m", "bbp_notebooks.operator.main", "--verbose"],
            env=env,
            stdout=stream,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        yield log
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=30)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)


def get(release: Release, *args: str) -> dict[str, Any]:
    result: dict[str, Any] = json.loads(release.kubectl("get", *args, "-o", "json"))
    return result


def session_body(name: str, namespace: str, profile: str) -> str:
    return yaml.safe_dump(
        {
            "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
            "kind": "NotebookSession",
            "metadata": {"name": name, "namespace": namespace, "annotations": admin_annotations()},
            "spec": {
                "user": "alice",
                "profile": profile,
                "site": "smoke-site",
                "environmentSecretRef": {"name": "smoke-env"},
            },
        }
    )


@pytest.fixture(scope="module")
def session(release: Release, operator_log: Path) -> Iterator[dict[str, Any]]:
    """A valid session (its site is unreachable) and one naming a profile that does not exist."""
    namespace = release.session_namespace
    release.kubectl(
        "create",
        "secret",
        "generic",
        "smoke-env",
        "-n",
        namespace,
        "--from-literal=JUPYTERHUB_API_TOKEN=not-a-real-token",
    )
    release.kubectl("create", "-f", "-", stdin=session_body("smoke", namespace, "smoke"))
    owner = owner_patch(get(release, "notebooksession", "smoke", "-n", namespace))
    release.kubectl("patch", "secret", "smoke-env", "-n", namespace, "--type=merge", "-p", owner)
    release.kubectl("create", "-f", "-", stdin=session_body("smoke-invalid", namespace, "nope"))
    yield get(release, "notebooksession", "smoke", "-n", namespace)
    # The operator is stopped by now or soon: release the finalizers ourselves.
    for name in ("smoke", "smoke-invalid"):
        release.kubectl(
            "patch",
            "notebooksession",
            name,
            "-n",
            namespace,
            "--type=merge",
            "-p",
            '{"metadata":{"finalizers":null}}',
        )
        release.kubectl("delete", "notebooksession", name, "-n", namespace, "--wait=false")


def test_the_operator_peers_through_the_charts_peering_object(
    release: Release, operator_log: Path
) -> None:
    peers = wait_for(
        lambda: get(release, "kopfpeering", "bbp-notebooks", "-n", release.session_namespace).get(
            "status"
        ),
        DEADLINE_S,
        "the operator's keep-alive in the session namespace's KopfPeering",
    )
    (peer,) = peers.values()
    assert peer["priority"] == 0  # the pod index the chart maps to BBP_PRIORITY


def test_the_operator_reconciles_a_session_with_the_charts_rbac_alone(
    release: Release, session: dict[str, Any], operator_log: Path
) -> None:
    namespace = release.session_namespace

    def reconciled() -> dict[str, Any] | None:
        body = get(release, "notebooksession", "smoke", "-n", namespace)
        conditions = {c["type"] for c in body.get("status", {}).get("conditions", [])}
        if FINALIZER in body["metadata"].get("finalizers", []) and conditions:
            return body
        return None

    body = wait_for(reconciled, DEADLINE_S, "the finalizer and a status written by the operator")
    assert body["metadata"]["uid"] == session["metadata"]["uid"]
    # The invalid session is refused before any ssh: its phase and a Warning Event say so.
    wait_for(
        lambda: (
            get(release, "notebooksession", "smoke-invalid", "-n", namespace)
            .get("status", {})
            .get("phase")
            == "InvalidSpec"
        ),
        DEADLINE_S,
        "the invalid session's InvalidSpec phase",
    )
    events = wait_for(
        lambda: [
            e
            for e in get(release, "events", "-n", namespace)["items"]
            if e["involvedObject"].get("name") == "smoke-invalid"
        ],
        DEADLINE_S,
        "an Event about it",
    )
    assert [(e["type"], e["reason"]) for e in events] == [("Warning", "UnknownProfile")]
    site = wait_for(
        lambda: get(release, "slurmsite", "smoke-site").get("status", {}).get("conditions"),
        DEADLINE_S,
        "the site poller's status",
    )
    assert {c["type"]: c["status"] for c in site}["Reachable"] == "False"


def test_the_operator_log_shows_no_permission_problem(
    release: Release, session: dict[str, Any], operator_log: Path
) -> None:
    wait_for(
        lambda: get(release, "slurmsite", "smoke-site").get("status"), DEADLINE_S, "a site poll"
    )
    text = operator_log.read_text(errors="replace")
    problems = [
        line
        for line in text.splitlines()
        if any(word in line for word in PERMISSION_PROBLEMS)
        # A body the API server returned is a problem only when it is a 403 Status: the
        # admission policy the operator reads carries the word Forbidden (its refusals' reason).
        and ("response body:" not in line or '"code":403' in line)
    ]
    assert problems == [], "\n".join(problems[:20])
