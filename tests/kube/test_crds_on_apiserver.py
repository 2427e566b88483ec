"""The generated CRDs, served by a real kube-apiserver: columns, explain, and refusals."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bbp_notebooks.devtools.admission import admin_annotations

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.kube


def kubectl(cp: Any, *args: str, stdin: str | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["kubectl", *args],
        input=stdin,
        env=cp.env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def session(name: str, **spec: Any) -> str:
    body = {
        "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
        "kind": "NotebookSession",
        "metadata": {"name": name, "namespace": "default", "annotations": admin_annotations()},
        "spec": {"user": "alice", "profile": "bluepy", **spec},
    }
    return yaml.safe_dump(body)


@pytest.fixture(scope="module")
def applied(control_plane: Any) -> Any:
    for sample in ("profiles.yaml", "sites.yaml", "session.yaml"):
        result = kubectl(control_plane, "apply", "-f", str(REPO / "examples" / sample))
        assert result.returncode == 0, result.stderr
    return control_plane


def test_sessions_list_with_their_printer_columns(applied: Any) -> None:
    result = kubectl(applied, "get", "notebooksessions", "-A")
    assert result.returncode == 0, result.stderr
    header = result.stdout.splitlines()[0].split()
    assert header == [
        "NAMESPACE",
        "NAME",
        "USER",
        "PROFILE",
        "SITE",
        "PHASE",
        "JOBID",
        "NODE",
        "URL",
        "ENDS",
        "AGE",
    ]
    assert "alice-default" in result.stdout and "bluepy" in result.stdout
    short = kubectl(applied, "get", "nbs", "-A")
    assert short.returncode == 0 and "alice-default" in short.stdout


def test_profiles_and_sites_have_their_columns(applied: Any) -> None:
    profiles = kubectl(applied, "get", "notebookprofiles")
    assert profiles.stdout.splitlines()[0].split() == [
        "NAME",
        "CORES",
        "MEMORY",
        "TIME",
        "SITES",
        "AGE",
    ]
    assert "synthesis" in profiles.stdout and '["geneva"]' in profiles.stdout
    sites = kubectl(applied, "get", "slurmsites")
    assert sites.returncode == 0, sites.stderr
    assert sites.stdout.splitlines()[0].split() == [
        "NAME",
        "REACHABLE",
        "IDLE",
        "NODES",
        "PENDING",
        "AGE",
    ]
    assert "geneva" in sites.stdout and "lugano" in sites.stdout


def test_kubectl_explain_teaches_every_field(applied: Any) -> None:
    result = kubectl(applied, "explain", "notebooksession.spec.user")
    assert result.returncode == 0, result.stderr
    assert "The POSIX user the job runs as at the Slurm site." in result.stdout
    site = kubectl(applied, "explain", "slurmsite.spec.hostKeys")
    assert "Never skipped" in site.stdout


@pytest.mark.parametrize(
    ("name", "spec", "expected"),
    [
        ("negative-cores", {"resources": {"cores": -1}}, "spec.resources.cores"),
        ("hostile-user", {"user": "root; rm -rf /"}, "spec.user"),
        ("unknown-field", {"gpus": 2}, 'unknown field "spec.gpus"'),
        ("long-profile", {"profile": "p" * 300}, "spec.profile"),
        ("newline-account", {"account": "proj\n#SBATCH --uid=0"}, "spec.account"),
    ],
)
def test_the_api_server_refuses_invalid_sessions(
    applied: Any, name: str, spec: dict[str, Any], expected: str
) -> None:
    result = kubectl(applied, "apply", "-f", "-", stdin=session(name, **spec))
    assert result.returncode != 0
    assert expected in result.stderr, result.stderr
    if name == "negative-cores":
        assert "should be greater than or equal to 1" in result.stderr
    if name == "long-profile":
        assert "Too long" in result.stderr
    missing = kubectl(applied, "get", "notebooksession", name, "-n", "default")
    assert missing.returncode != 0, "a refused session must not exist"


def test_a_session_spec_is_immutable(applied: Any) -> None:
    assert (
        kubectl(applied, "apply", "-f", "-", stdin=session("immutable", site="geneva")).returncode
        == 0
    )
    result = kubectl(applied, "apply", "-f", "-", stdin=session("immutable", site="lugano"))
    assert result.returncode != 0
    assert "immutable" in result.stderr


def patch_spec(plane: Any, name: str, spec: dict[str, Any]) -> Any:
    return kubectl(plane, "patch", "notebooksession", name, "-n", "default", "--type=merge",
                   "-p", json.dumps({"spec": spec}))  # fmt: skip


def test_only_the_time_limit_may_change_and_only_upwards(applied: Any) -> None:
    """The extension request is the one mutable spec field (asked for by the hub's Extend)."""
    assert kubectl(applied, "apply", "-f", "-", stdin=session("extend")).returncode == 0
    for minutes in (90, 120, 120):  # from unset, upwards, and the same again
        result = patch_spec(applied, "extend", {"resources": {"timeLimitMinutes": minutes}})
        assert result.returncode == 0, result.stderr
    shrink = patch_spec(applied, "extend", {"resources": {"timeLimitMinutes": 100}})
    assert shrink.returncode != 0 and "may only grow" in shrink.stderr
    removed = patch_spec(applied, "extend", {"resources": {"timeLimitMinutes": None}})
    assert removed.returncode != 0 and "may only grow" in removed.stderr
    for change in (
        {"resources": {"cores": 4}},
        {"resources": {"memoryMiB": 4096}},
        {"user": "bob"},
        {"profile": "synthesis"},
        {"account": "proj42"},
        {"serverName": "other"},
        {"environmentSecretRef": {"name": "x"}},
    ):
        result = patch_spec(applied, "extend", change)
        assert result.returncode != 0 and "immutable" in result.stderr, (change, result.stderr)
    got = json.loads(kubectl(applied, "get", "notebooksession", "extend", "-o", "json").stdout)
    assert got["spec"]["resources"] == {"timeLimitMinutes": 120}
    assert got["spec"]["user"] == "alice"


def test_a_site_without_host_key_trust_is_refused(applied: Any) -> None:
    site = {
        "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
        "kind": "SlurmSite",
        "metadata": {"name": "no-trust"},
        "spec": {
            "displayName": "No trust",
            "frontend": {"host": "127.0.0.21", "port": 2222},
            "hostKeys": {},
            "partitions": [{"name": "prod", "default": True}],
            "monitorUser": "bbpmon",
        },
    }
    result = kubectl(applied, "apply", "-f", "-", stdin=json.dumps(site))
    assert result.returncode != 0
    assert "host key checking cannot be disabled" in result.stderr
