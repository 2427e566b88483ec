"""The node on its own: Ready, a pod runs in its sandbox on the bridge, a Service answers through
kube-proxy's rules, CoreDNS names it, and after `stop` the host is exactly as before."""

from __future__ import annotations

import json
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

from bbp_notebooks.devtools.node import (
    KUBERNETES_SERVICE_IP,
    NODE_IP,
    PAUSE_IMAGE,
    HostState,
    Node,
)
from bbp_notebooks.devtools.waiting import wait_until

POD = {
    "apiVersion": "v1",
    "kind": "Pod",
    "metadata": {"name": "sleeper", "namespace": "default"},
    "spec": {
        "containers": [{"name": "pause", "image": PAUSE_IMAGE, "imagePullPolicy": "Never"}],
        "automountServiceAccountToken": False,
    },
}


def dns_a(name: str, server: str) -> list[str]:
    """One A query over UDP (RFC 1035), the answers' addresses."""
    query = struct.pack(">HHHHHH", 0x4242, 0x0100, 1, 0, 0, 0)
    query += b"".join(bytes([len(p)]) + p.encode() for p in name.split(".")) + b"\0"
    query += struct.pack(">HH", 1, 1)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(5)
        sock.sendto(query, (server, 53))
        reply = sock.recv(4096)
    answers = struct.unpack(">H", reply[6:8])[0]
    offset = len(query)
    found = []
    for _ in range(answers):
        while reply[offset] and reply[offset] & 0xC0 != 0xC0:  # the owner name: labels,
            offset += reply[offset] + 1
        offset += 2 if reply[offset] & 0xC0 == 0xC0 else 1  # then a pointer or the root
        kind, _, _, length = struct.unpack(">HHIH", reply[offset : offset + 10])
        offset += 10
        if kind == 1:
            found.append(socket.inet_ntoa(reply[offset : offset + length]))
        offset += length
    return found


def _cmdline(proc: Path) -> str:
    try:
        return (proc / "cmdline").read_bytes().rstrip(b"\0").decode(errors="replace")
    except OSError:
        return ""


def _netns(proc: Path) -> str:
    try:
        return os.readlink(proc / "ns" / "net")
    except OSError:
        return ""


def test_a_pod_runs_services_answer_and_the_host_is_restored(tmp_path: Path) -> None:
    node = Node(tmp_path / "node")
    node.start()
    own = _netns(Path("/proc/self"))
    before = node.before
    assert before is not None
    try:
        nodes = json.loads(node.kubectl("get", "nodes", "-o", "json"))["items"]
        assert [n["metadata"]["name"] for n in nodes] == ["bbp-node"]
        addresses = {a["type"]: a["address"] for a in nodes[0]["status"]["addresses"]}
        assert addresses["InternalIP"] == NODE_IP
        node.kubectl("apply", "-f", "-", input=json.dumps(POD))
        node.kubectl("wait", "pod/sleeper", "--for=condition=Ready", "--timeout=120s")
        pod = json.loads(node.kubectl("get", "pod", "sleeper", "-o", "json"))
        assert pod["status"]["podIP"].startswith("10.88.")
        # From the pod's network namespace, the `kubernetes` Service (kube-proxy's DNAT on the
        # host) is the API server, its certificate valid for the Service's name.
        pauses = {
            _netns(proc): int(proc.name)
            for proc in Path("/proc").iterdir()
            if proc.name.isdigit() and _cmdline(proc) == "/pause" and _netns(proc) != own
        }
        assert len(pauses) == 1, f"one pod, one network namespace of its own: {pauses}"
        (pid,) = pauses.values()
        ca = node.control_plane.workdir / "pki" / "ca.crt"
        probe = (
            "import socket, ssl, sys; c = ssl.create_default_context(cafile=sys.argv[1]); "
            "s = c.wrap_socket(socket.create_connection((sys.argv[2], 443), timeout=3), "
            "server_hostname='kubernetes.default.svc'); print(s.version())"
        )

        def answers() -> str:
            result = subprocess.run(
                ["nsenter", f"--net=/proc/{pid}/ns/net", sys.executable, "-c", probe, str(ca),
                 KUBERNETES_SERVICE_IP],
                capture_output=True, text=True, timeout=30, check=False,
            )  # fmt: skip
            return result.stdout.strip()

        assert wait_until(answers, 60, "the kubernetes Service from the pod").startswith("TLS")
        # And from the host (the route onto the bridge, then kube-proxy's DNAT in OUTPUT).
        host = subprocess.run(
            [sys.executable, "-c", probe, str(ca), KUBERNETES_SERVICE_IP],
            capture_output=True, text=True, timeout=30, check=False,
        )  # fmt: skip
        assert host.stdout.strip().startswith("TLS"), host.stderr[-2000:]
        name = "kubernetes.default.svc.cluster.local"
        found = wait_until(lambda: dns_a(name, NODE_IP), 60, f"CoreDNS to answer {name}",
                           retry_on=(OSError,))  # fmt: skip
        assert found == [KUBERNETES_SERVICE_IP]
        assert dns_a("example.org", NODE_IP) == [], "CoreDNS answers for the cluster only"
    finally:
        node.stop()
    assert before.differences(HostState.capture()) == {}
