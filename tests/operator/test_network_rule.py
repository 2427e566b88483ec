"""Everything the stack starts listens and connects on 127.0.0.0/8 only."""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
from pathlib import Path

import pytest

from fixtures.operator import Stack, session

pytestmark = pytest.mark.kube
_SOCKET = re.compile(r"^\S+\s+\d+\s+\d+\s+(\S+):(\d+)\s+(\S+):(\S+)\s+users:(.*)$")


def _descendants(root: int) -> set[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry))
    found, todo = set(), [root]
    while todo:
        pid = todo.pop()
        found.add(pid)
        todo += children.get(pid, [])
    return found


def _sockets(state: str) -> list[tuple[str, str, set[int]]]:
    """(local address, peer address, pids) for TCP sockets in ``state``."""
    out = subprocess.run(
        ["ss", "-Htnp", "state", state], capture_output=True, text=True, check=True, timeout=30
    ).stdout
    rows = []
    for line in out.splitlines():
        parts = line.split()
        users = line[line.find("users:") :] if "users:" in line else ""
        pids = {int(p) for p in re.findall(r"pid=(\d+)", users)}
        local, peer = parts[2], parts[3]
        rows.append((local.rsplit(":", 1)[0].strip("[]"), peer.rsplit(":", 1)[0].strip("[]"), pids))
    return rows


def _loopback(address: str) -> bool:
    if address in ("*", "0.0.0.0", "::"):  # noqa: S104 (what we look for, not what we bind)
        return False
    return ipaddress.ip_address(address.split("%")[0]).is_loopback


def test_the_stack_listens_and_connects_on_loopback_only(stack: Stack) -> None:
    stack.apply(session("network"))
    stack.wait_phase("network", {"Ready"})
    assert stack.operator.process is not None and stack.mock.process is not None
    ours = _descendants(stack.operator.process.pid) | _descendants(stack.mock.process.pid)
    # etcd and kube-apiserver (their command lines name the control plane's folder) and the
    # notebooks the jobs started.
    marks = (str(stack.cp.workdir).encode(), b"http.server")
    ours |= {
        int(p)
        for p in os.listdir("/proc")
        if p.isdigit() and any(mark in _cmdline(int(p)) for mark in marks)
    }
    checked = 0
    for state in ("listening", "established"):
        for local, peer, pids in _sockets(state):
            if pids & ours:
                checked += 1
                assert _loopback(local), f"{state} socket on {local} (pids {pids & ours})"
                if state == "established":
                    assert _loopback(peer), f"connection to {peer} (pids {pids & ours})"
    assert checked >= 4, "the operator, the sites and the notebook must all have sockets"
    stack.kubectl("delete", "notebooksession", "network", "--wait=false")
    stack.wait_gone("network")


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""
