"""`make kind-e2e` is for hosts with Docker: here it must refuse at once and say why, and its kind
cluster must be what the chart's e2e values expect."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import asyncssh
import yaml

from chart.helmchart import REPO, documents, find, template_text, tool_env

SCRIPT = REPO / "scripts" / "kind-e2e.sh"


def run_script(path_dirs: list[Path], **extra: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KUBECONFIG", "DOCKER_HOST")}
    env["PATH"] = os.pathsep.join(str(d) for d in path_dirs)
    env.update(extra)
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


def fake_host(tmp_path: Path, kind_version: str, docker: str = "exit 0") -> tuple[Path, Path]:
    """Docker answering `info`, a kind of the given version, ssh tools; every call recorded."""
    calls = tmp_path / "calls"
    record = f'echo "$(basename "$0") $*" >> {calls}'
    bin_dir = tool_dir(
        tmp_path,
        basename="echo ${1##*/}",
        docker=f"{record}\n{docker}",
        kind=f'{record}\n[[ "$1" == version ]] && echo "kind {kind_version} go1.24.6 linux/amd64"',
        ssh=record,
        **{"ssh-keygen": record},
        curl=record,
    )
    return bin_dir, calls


def test_a_kind_older_than_0_30_is_refused_before_anything(tmp_path: Path) -> None:
    bin_dir, calls = fake_host(tmp_path, "v0.29.0")
    result = run_script([bin_dir])
    assert result.returncode == 1
    assert "FAILED: kind >= 0.30 is needed (kind version: 'kind v0.29.0" in result.stderr
    assert calls.read_text().splitlines() == ["docker info", "kind version"]


def test_with_build_images_0_a_missing_image_is_named_before_any_cluster(tmp_path: Path) -> None:
    # docker: `info` works, `image inspect` finds nothing.
    bin_dir, calls = fake_host(tmp_path, "v0.30.0", docker='[[ "$1" == info ]]')
    result = run_script([bin_dir], BUILD_IMAGES="0")
    assert result.returncode == 1
    assert "Docker has no bbp-notebooks/operator:e2e (docker load it first)" in result.stderr
    assert not any(line.startswith("kind create") for line in calls.read_text().splitlines())


def script_values() -> dict[str, Any]:
    """The chart values kind-e2e.sh installs with (its heredoc, with the default tag)."""
    match = re.search(r'cat >"\$work/values.yaml" <<YAML\n(.*?)\nYAML\n', SCRIPT.read_text(), re.S)
    assert match, "kind-e2e.sh writes no values.yaml heredoc"
    values: dict[str, Any] = yaml.safe_load(match.group(1).replace("$tag", "e2e"))
    return values


def script_values_with_keys() -> dict[str, Any]:
    """script_values() plus the keys the script hands over with --set-file."""
    key = asyncssh.generate_private_key("ssh-ed25519")
    values = script_values()
    values["mockSlurm"].update(
        hostCaPrivateKey=key.export_private_key().decode(),
        hostCaPublicKey=key.export_public_key().decode(),
        userCaPublicKey=key.export_public_key().decode(),
    )
    values["userCa"]["privateKey"] = key.export_private_key().decode()
    return values


def test_every_image_the_chart_runs_in_kind_is_one_the_script_loads_and_never_pulled() -> None:
    # The proxy's image was once neither built, loaded nor set to Never: the chart then pulled it.
    loaded = re.search(r"^images=\(([^)]*)\)$", SCRIPT.read_text(), re.M)
    assert loaded
    wanted = {f"bbp-notebooks/{name}:e2e" for name in loaded.group(1).split()}
    values = script_values_with_keys()
    docs = documents(
        template_text(values, release="bbp", namespace="bbp-notebooks", env=tool_env())
    )
    containers = [
        container
        for doc in docs
        if doc["kind"] in ("Deployment", "StatefulSet", "DaemonSet", "Job")
        for field in ("containers", "initContainers")
        for container in doc["spec"]["template"]["spec"].get(field, [])
    ]
    assert {c["image"] for c in containers} == wanted
    assert {c["name"]: c["imagePullPolicy"] for c in containers} == {
        c["name"]: "Never" for c in containers
    }


def test_the_scripts_ssh_check_names_the_host_as_the_chart_and_its_certificate_do() -> None:
    script = SCRIPT.read_text()
    match = re.search(r'^mock_host="(.*)"$', script, re.M)
    assert match
    release = re.search(r"^release=(\S+)$", script, re.M)
    namespace = re.search(r"^namespace=(\S+)$", script, re.M)
    assert release and namespace
    alias = (
        match.group(1)
        .replace("$release", release.group(1))
        .replace("$namespace", namespace.group(1))
    )
    values = script_values_with_keys()
    docs = documents(
        template_text(
            values, release=release.group(1), namespace=namespace.group(1), env=tool_env()
        )
    )
    (geneva,) = find(docs, "SlurmSite", "geneva")
    assert geneva["spec"]["frontend"]["host"] == alias
    (config_map,) = find(docs, "ConfigMap", f"{release.group(1)}-bbp-notebooks-mockslurm")
    sites = yaml.safe_load(config_map["data"]["config.yaml"])["sites"]
    assert all(alias in site["host_principals"] for site in sites)


def test_the_scripts_peering_check_reads_the_peering_object_the_chart_creates() -> None:
    # The chart's operator serves only the session namespace, so its peering is namespaced; the
    # script once read a ClusterKopfPeering that no longer exists and saw no peers.
    script = SCRIPT.read_text()
    match = re.search(
        r"kubectl get (kopfpeering|clusterkopfpeering)( -n \"\$sessions\")? (\S+)", script
    )
    assert match
    values = script_values_with_keys()
    values["operator"]["replicas"] = 2
    docs = documents(
        template_text(values, release="bbp", namespace="bbp-notebooks", env=tool_env())
    )
    peerings = [d for d in docs if d["kind"] in ("KopfPeering", "ClusterKopfPeering")]
    namespace = re.search(r"^sessions=\$namespace-sessions$", script, re.M)
    assert namespace
    wanted = {"KopfPeering" if match.group(1) == "kopfpeering" else "ClusterKopfPeering"}
    assert {d["kind"] for d in peerings} == wanted
    assert [d["metadata"]["name"] for d in peerings] == [match.group(3)]
    if match.group(2):
        assert [d["metadata"]["namespace"] for d in peerings] == ["bbp-notebooks-sessions"]
