"""`make kind-e2e` is for hosts with Docker: here it must refuse at once and say why, and its kind
cluster must be what the chart's e2e values expect."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import yaml

from chart.helmchart import REPO

SCRIPT = REPO / "scripts" / "kind-e2e.sh"


def run_script(path_dirs: list[Path]) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "DOCKER_HOST")}
    env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    return subprocess.run(
        ["/bin/bash", str(SCRIPT)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        stdin=subprocess.DEVNULL,
    )


def tool_dir(tmp_path: Path, **stubs: str) -> Path:
    """A PATH directory with only `dirname` (the script's first need) and the given stubs."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    dirname = shutil.which("dirname")
    assert dirname
    (bin_dir / "dirname").symlink_to(dirname)
    for name, body in stubs.items():
        stub = bin_dir / name
        stub.write_text(f"#!/bin/bash\n{body}\n")
        stub.chmod(0o755)
    return bin_dir


def test_without_docker_the_e2e_stops_before_doing_anything(tmp_path: Path) -> None:
    result = run_script([tool_dir(tmp_path)])
    assert result.returncode == 1
    assert "FAILED: docker is not installed" in result.stderr
    assert "creating kind cluster" not in result.stderr


def test_without_a_docker_daemon_the_e2e_says_so(tmp_path: Path) -> None:
    calls = tmp_path / "docker-calls"
    bin_dir = tool_dir(tmp_path, docker=f'echo "$*" >> {calls}\nexit 1')
    result = run_script([bin_dir])
    assert result.returncode == 1
    assert "the Docker daemon is not reachable" in result.stderr
    assert calls.read_text().split() == ["info"], "nothing but `docker info` may run"


def test_the_kind_cluster_is_pinned_local_and_exposes_the_proxy_node_port() -> None:
    config = yaml.safe_load((REPO / "kind-config.yaml").read_text())
    assert config["networking"]["apiServerAddress"] == "127.0.0.1"
    (node,) = config["nodes"]
    assert re.fullmatch(r"kindest/node:v1\.\d+\.\d+@sha256:[0-9a-f]{64}", node["image"])
    (mapping,) = node["extraPortMappings"]
    assert mapping["listenAddress"] == "127.0.0.1"
    script = SCRIPT.read_text()
    assert f"nodePort: {mapping['containerPort']}" in script
    assert f"http://127.0.0.1:{mapping['hostPort']}/hub/health" in script
