"""The chart on a real node: images built here, every pod running under the kubelet, and the e2e
of `scripts/kind-e2e.sh`: session Ready with its Slurm job RUNNING as the user (asked over ssh
through the mock's Service, its host certificate checked under the Service's name), cancelled on
delete; alice logs in through the proxy Service, spawns, and her notebook answers through the
proxy's route; two operator replicas with distinct priorities; an uninstall in seconds (the
chart's pre-delete hook deletes the sites while the operator runs) that leaves the sessions; the
host as before.

The node is devtools/node.py (kube-apiserver, etcd, controller manager, scheduler, containerd,
kubelet, kube-proxy, CoreDNS on 10.89.0.1; pods 10.88.0.0/16; Services 10.96.0.0/16). The last
test stops it and compares the host's routes, addresses, links, iptables rules, sysctls, cgroups
and mounts with what they were before it started. The node does not enforce NetworkPolicies (the
bridge CNI has no policy engine): their render tests are in tests/chart. `make node-e2e` runs
this file alone.
"""

from __future__ import annotations

import json
import os
import secrets
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from typing import Any

import asyncssh
import pytest
import yaml

from bbp_notebooks.devtools.admission import admin_annotations
from bbp_notebooks.devtools.node import HostState, Node
from bbp_notebooks.devtools.waiting import wait_until
from chart.helmchart import CHART, REPO
from e2e.test_make_dev import Browserless

TAG = "e2e"
pytestmark = [pytest.mark.timeout(3600), pytest.mark.images, pytest.mark.helm]
RELEASE, NAMESPACE = "bbp", "bbp-notebooks"
SESSIONS = f"{NAMESPACE}-sessions"
MOCK = f"{RELEASE}-bbp-notebooks-mockslurm"
IMAGES = ("operator", "hub", "mockslurm", "proxy")
TIMINGS: dict[str, float] = {}
HUB_PASSWORD = secrets.token_urlsafe(16)


def site(name: str, display: str, **extra: Any) -> dict[str, Any]:
    return {
        "name": name,
        "spec": {
            "displayName": display,
            "frontend": {"host": "replaced-by-the-mock"},
            "hostKeys": {"knownHosts": ["replaced-by-the-mock"]},
            "auth": {"method": "Certificate", "caSecretName": "bbp-user-ca"},
            "monitorUser": "bbpmon",
            "pollIntervalSeconds": 5,
            **extra,
        },
    }


VALUES: dict[str, Any] = {
    "operator": {
        "image": {"tag": TAG, "pullPolicy": "Never"},
        # The mock's pod has no Jupyter: a stdlib web server stands in for the notebook.
        "settings": {
            "notebookCommand": ["python3", "-m", "http.server", "--bind", "{host}", "{port}"]
        },
    },
    "hub": {
        "image": {"tag": TAG, "pullPolicy": "Never"},
        # Rendered only with the mock Slurm (development); a password of this run.
        "authenticator": {"type": "dummy", "dummy": {"password": HUB_PASSWORD}},
    },
    "proxy": {"image": {"tag": TAG, "pullPolicy": "Never"}},
    "mockSlurm": {"enabled": True, "image": {"tag": TAG, "pullPolicy": "Never"}},
    "userCa": {"create": True},
    "slurmSites": [
        site("geneva", "Geneva", partitions=[{"name": "prod", "default": True}, {"name": "debug"}]),
        site(
            "lugano",
            "Lugano",
            partitions=[{"name": "prod", "default": True}],
            accountPolicy="Required",
        ),  # fmt: skip
    ],
}


@pytest.fixture(scope="module")
def keys(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    directory = tmp_path_factory.mktemp("node-keys")
    found: dict[str, Any] = {"dir": directory}
    for name in ("host_ca", "user_ca"):
        key = asyncssh.generate_private_key("ssh-ed25519")
        key.write_private_key(str(directory / name))
        key.write_public_key(str(directory / f"{name}.pub"))
        found[name] = key
    return found


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    workdir = tmp_path_factory.mktemp("node")
    began = time.monotonic()
    archives = workdir / "images"
    result = subprocess.run(
        ["bash", str(REPO / "scripts" / "build-images.sh")],
        env={**os.environ, "BASE": "local", "IMAGE_TAG": TAG, "OUT": str(archives)},
        capture_output=True, text=True, timeout=3000, check=False,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr[-4000:]
    TIMINGS["images built"] = time.monotonic() - began
    cluster = Node(workdir / "cluster")
    began = time.monotonic()
    cluster.start()
    TIMINGS["node ready"] = time.monotonic() - began - cluster.lock_wait_s
    TIMINGS["waited for the host"] = cluster.lock_wait_s
    began = time.monotonic()
    for image in IMAGES:
        cluster.import_image(archives / f"{image}.tar")
    TIMINGS["images imported"] = time.monotonic() - began
    try:
        yield cluster
    finally:
        cluster.stop()
        print("timings (s):", {k: round(v, 1) for k, v in TIMINGS.items()})


def helm(node: Node, *argv: str, timeout: float = 600) -> str:
    result = subprocess.run(
        [str(node.bin_dir / "helm"), f"--kubeconfig={node.kubeconfig}", *argv],
        capture_output=True, text=True, timeout=timeout, check=False,
        env={**os.environ, "HELM_CACHE_HOME": str(node.workdir / "helm-cache"),
             "HELM_CONFIG_HOME": str(node.workdir / "helm-config"),
             "HELM_DATA_HOME": str(node.workdir / "helm-data")},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr + result.stdout
    return result.stdout


@pytest.fixture(scope="module")
def release(node: Node, keys: dict[str, Any]) -> str:
    directory = keys["dir"]
    values = directory / "values.yaml"
    values.write_text(yaml.safe_dump(VALUES))
    began = time.monotonic()
    helm(node, "install", RELEASE, str(CHART), "--namespace", NAMESPACE, "--create-namespace",
         "--values", str(values),
         "--set-file", f"mockSlurm.hostCaPrivateKey={directory / 'host_ca'}",
         "--set-file", f"mockSlurm.hostCaPublicKey={directory / 'host_ca.pub'}",
         "--set-file", f"mockSlurm.userCaPublicKey={directory / 'user_ca.pub'}",
         "--set-file", f"userCa.privateKey={directory / 'user_ca'}",
         "--wait", "--timeout", "5m")  # fmt: skip
    TIMINGS["helm install --wait"] = time.monotonic() - began
    return RELEASE


@pytest.fixture(autouse=True)
def explained(request: pytest.FixtureRequest) -> Iterator[None]:
    """After a failed test, what the cluster knows: pods, sessions, and the chart's logs."""
    yield
    report = getattr(request.node, "rep_call", None)
    if report is None or not report.failed or "node" not in request.fixturenames:
        return
    node: Node = request.getfixturevalue("node")
    for argv in (
        ("get", "pods,services", "-A", "-o", "wide"),
        ("get", "notebooksessions", "-A", "-o", "yaml"),
        *(("logs", "-n", NAMESPACE, "--tail=60", "-l", f"app.kubernetes.io/component={c}")
          for c in ("operator", "mockslurm", "hub", "proxy")),
    ):  # fmt: skip
        print(f"--- kubectl {' '.join(argv)}\n{node.kubectl(*argv, check=False)}")


def pods(node: Node) -> list[dict[str, Any]]:
    return list(json.loads(node.kubectl("get", "pods", "-A", "-o", "json"))["items"])


def test_every_chart_pod_runs_and_is_ready_on_the_node(node: Node, release: str) -> None:
    print(node.kubectl("get", "pods", "-A", "-o", "wide"))
    chart_pods = [p for p in pods(node) if p["metadata"]["namespace"] == NAMESPACE]
    components = {p["metadata"]["labels"].get("app.kubernetes.io/component") for p in chart_pods}
    assert {"operator", "hub", "proxy", "mockslurm"} <= components, components
    for pod in chart_pods:
        assert pod["status"]["phase"] == "Running", pod["metadata"]["name"]
        ready = {c["type"]: c["status"] for c in pod["status"]["conditions"]}
        assert ready["Ready"] == "True", pod["metadata"]["name"]
        assert pod["spec"]["nodeName"] == "bbp-node"
    reachable = '--for=jsonpath={.status.conditions[?(@.type=="Reachable")].status}=True'
    for name in ("geneva", "lugano"):
        node.kubectl("wait", f"slurmsite/{name}", "--timeout=180s", reachable)


async def mock_ssh(node: Node, keys: dict[str, Any], command: str) -> str:
    """Ask the mock Geneva over ssh as the monitor user (a certificate from the user CA), through
    the Service's ClusterIP, trusting its host certificate under the Service's DNS name."""
    service = json.loads(node.kubectl("get", "service", "-n", NAMESPACE, MOCK, "-o", "json"))
    address = service["spec"]["clusterIP"]
    (port,) = [p["port"] for p in service["spec"]["ports"] if p["name"] == "ssh-geneva"]
    alias = f"{MOCK}.{NAMESPACE}.svc"
    host_ca = keys["host_ca"].export_public_key().decode().strip()
    user_key = asyncssh.generate_private_key("ssh-ed25519")
    cert = keys["user_ca"].generate_user_certificate(
        user_key, "node-e2e", principals=["bbpmon"], valid_after="-5m", valid_before="+30m"
    )
    async with asyncssh.connect(
        address, port, username="bbpmon", client_keys=[(user_key, cert)],
        known_hosts=asyncssh.import_known_hosts(f"@cert-authority {alias} {host_ca}\n"),
        host_key_alias=alias, agent_path=None, config=[],
    ) as conn:  # fmt: skip
        result = await conn.run(command, check=True)
        return str(result.stdout)


async def test_a_session_runs_as_the_user_and_its_job_is_cancelled_on_delete(
    node: Node, release: str, keys: dict[str, Any]
) -> None:
    session = {
        "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
        "kind": "NotebookSession",
        "metadata": {
            "name": "e2e-alice",
            "namespace": SESSIONS,
            "annotations": admin_annotations(),
        },
        "spec": {"user": "alice", "profile": "bluepy", "site": "geneva"},
    }
    began = time.monotonic()
    node.kubectl("apply", "-f", "-", input=json.dumps(session))
    node.kubectl("wait", "-n", SESSIONS, "notebooksession/e2e-alice",
                 "--for=jsonpath={.status.phase}=Ready", "--timeout=240s")  # fmt: skip
    TIMINGS["session Ready"] = time.monotonic() - began
    job = node.kubectl("get", "-n", SESSIONS, "notebooksession/e2e-alice",
                       "-o", "jsonpath={.status.jobId}")  # fmt: skip
    assert job.isdigit(), job
    line = await mock_ssh(node, keys, f"squeue -h -j {job} -o '%T %u'")
    assert line.split() == ["RUNNING", "alice"]
    node.kubectl("delete", "-n", SESSIONS, "notebooksession/e2e-alice", "--timeout=120s")
    state = await mock_ssh(node, keys, f"sacct -a -n -X -P -j {job} -o State")
    assert state.strip().startswith("CANCELLED"), state
    assert not (await mock_ssh(node, keys, f"squeue -h -j {job} -t PENDING,RUNNING -o %i")).strip()


def test_a_server_spawned_through_the_hub_answers_through_the_proxy_service(
    node: Node, release: str
) -> None:
    """Alice logs in through the chart's proxy Service, spawns, and her notebook (the stand-in
    web server in the mock's pod) answers at /user/alice/ through the proxy's route to it."""
    proxy = f"{RELEASE}-bbp-notebooks-proxy-public"
    service = json.loads(node.kubectl("get", "service", "-n", NAMESPACE, proxy, "-o", "json"))
    base = f"http://{service['spec']['clusterIP']}:{service['spec']['ports'][0]['port']}"
    hub = Browserless(base)
    wait_until(lambda: hub.get("/hub/login") is not None, 120, "the hub through the proxy",
               retry_on=(OSError,))  # fmt: skip
    with pytest.raises(urllib.error.HTTPError) as refused:
        hub.post("/hub/login", {"username": "alice", "password": "wrong"})
    assert refused.value.code == 403
    refused.value.close()  # its response holds the socket: unclosed, GC warns in a later test
    hub.post("/hub/login", {"username": "alice", "password": HUB_PASSWORD})
    began = time.monotonic()
    hub.post("/hub/spawn", {"profile": "bluepy", "site": "geneva"})

    def answered() -> tuple[int, str] | None:
        # Until the proxy has alice's route, the hub answers (its spawn-pending page); then the
        # stand-in does, 404 for /user/alice/ (no such file): the route reached it.
        try:
            with hub.opener.open(f"{base}/user/alice/", timeout=10) as response:
                status, server = response.status, response.headers.get("Server", "")
        except urllib.error.HTTPError as error:
            with error:
                status, server = error.code, error.headers.get("Server", "")
        return (status, server) if server.startswith("SimpleHTTP") else None

    status, server = wait_until(answered, 240, "alice's notebook through the proxy",
                                retry_on=(OSError,))  # fmt: skip
    TIMINGS["spawn to notebook via proxy"] = time.monotonic() - began
    assert server.startswith("SimpleHTTP"), (status, server)
    sessions = json.loads(node.kubectl("get", "notebooksessions", "-n", SESSIONS, "-o", "json"))
    (mine,) = [s for s in sessions["items"] if s["spec"]["user"] == "alice"]
    assert mine["status"]["phase"] == "Ready"
    assert mine["status"]["endpoint"]
    # Stop the server through the hub: the session goes, and with it the job.
    with hub.opener.open(
        urllib.request.Request(  # noqa: S310 (http to the proxy Service)
            f"{base}/hub/api/users/alice/server", method="DELETE",
            headers={"X-XSRFToken": hub.xsrf(), "Referer": f"{base}/hub/home"},
        ),
        timeout=60,
    ) as stopped:  # fmt: skip
        assert stopped.status in (202, 204), stopped.status
    name = mine["metadata"]["name"]
    node.kubectl("wait", "-n", SESSIONS, f"notebooksession/{name}", "--for=delete",
                 "--timeout=180s")  # fmt: skip


def test_two_operator_replicas_peer_with_distinct_priorities(node: Node, release: str) -> None:
    helm(node, "upgrade", RELEASE, str(CHART), "--namespace", NAMESPACE, "--reuse-values",
         "--set", "operator.replicas=2", "--wait", "--timeout", "5m")  # fmt: skip

    def priorities() -> list[int] | None:
        # The operator serves the sessions namespace only: its peering is namespaced there.
        out = node.kubectl("get", "kopfpeering", "-n", SESSIONS, "bbp-notebooks", "-o", "json",
                           check=False)  # fmt: skip
        status = json.loads(out).get("status", {}) if out else {}
        seen = [int(peer["priority"]) for peer in status.values() if "priority" in peer]
        return seen if len(seen) == 2 else None

    seen = wait_until(priorities, 120, "two peers in the KopfPeering")
    assert seen and len(set(seen)) == 2, seen


def test_uninstall_finishes_in_seconds_and_leaves_the_sessions(node: Node, release: str) -> None:
    """helm deletes the operator, its RBAC and the SlurmSites in one pass; kopf's finalizer on
    the sites (each runs a poll daemon) held that for ever. The chart's pre-delete hook deletes the
    sites first, while the operator runs (bbp_notebooks.operator.uninstall). Sessions stay, as the
    sessions namespace does (helm.sh/resource-policy: keep)."""
    kept = {
        "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
        "kind": "NotebookSession",
        "metadata": {"name": "e2e-kept", "namespace": SESSIONS, "annotations": admin_annotations()},
        "spec": {"user": "alice", "profile": "bluepy", "site": "geneva"},
    }
    node.kubectl("apply", "-f", "-", input=json.dumps(kept))
    node.kubectl("wait", "-n", SESSIONS, "notebooksession/e2e-kept",
                 "--for=jsonpath={.status.phase}=Ready", "--timeout=240s")  # fmt: skip
    began = time.monotonic()
    try:
        helm(node, "uninstall", RELEASE, "--namespace", NAMESPACE, "--wait", "--timeout", "2m")
    finally:
        TIMINGS["helm uninstall"] = time.monotonic() - began
        print(node.kubectl("get", "slurmsites,jobs,pods", "-A", check=False)[-3000:])
    # Within the hook's grace (20 s): the running operator released the sites, not the fallback.
    assert TIMINGS["helm uninstall"] < 20, TIMINGS["helm uninstall"]
    selector = f"app.kubernetes.io/instance={RELEASE}"
    assert node.kubectl("get", "slurmsites", "-l", selector, "-o", "name").strip() == ""
    hooks = node.kubectl("get", "jobs,serviceaccounts", "-n", NAMESPACE, "-o", "name")
    assert "uninstall" not in hooks, hooks  # hook-succeeded: the hook cleans up after itself
    assert "uninstall" not in node.kubectl("get", "clusterroles", "-l", selector, "-o", "name")
    left = json.loads(node.kubectl("get", "-n", SESSIONS, "notebooksession/e2e-kept", "-o", "json"))
    assert "deletionTimestamp" not in left["metadata"], left["metadata"]
    assert left["status"]["phase"] == "Ready"


def test_after_the_node_stops_the_host_is_as_before(node: Node) -> None:
    assert node.before is not None
    before = node.before
    node.stop()
    assert before.differences(HostState.capture()) == {}
