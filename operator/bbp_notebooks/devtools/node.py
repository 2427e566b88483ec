"""A real single-node Kubernetes cluster on this machine, for the chart's end-to-end test.

The control plane of devtools/controlplane.py (kube-apiserver + etcd) plus what a node needs:
kube-controller-manager, kube-scheduler, Debian's containerd (CRI) with runc and the bridge and
host-local CNI plugins, the kubelet, kube-proxy (iptables) and CoreDNS (a process of the node,
answering for cluster.local only). Every binary but Debian's is built by `scripts/build-tools.sh
--node` from pinned Go modules; the pod sandbox image is our static pause (tools/pause).

Addresses exist only on this machine (the project's network rule, issue 11's exception): the node
is 10.89.0.1/32 on `lo`, pods 10.88.0.0/16 on the bridge bbp0, Services 10.96.0.0/16. Before any
process starts, blackhole routes for each range and iptables DROP rules for packets from the pod
range leaving by the external interface are installed; nothing is masqueraded to the outside.
`stop` ends every process by PID, removes pods' network namespaces, mounts, cgroups and the
bridge, and restores the routes, addresses, iptables rules and sysctls captured by `HostState`
before start. NetworkPolicies are not enforced here: the bridge plugin has no policy engine.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml

from bbp_notebooks.devtools import processes
from bbp_notebooks.devtools.controlplane import (
    ControlPlane,
    ControlPlaneError,
    _free_ports,
    tools_bin,
)
from bbp_notebooks.devtools.processes import Child
from bbp_notebooks.devtools.waiting import wait_until

NODE_IP = "10.89.0.1"
POD_CIDR = "10.88.0.0/16"
POD_GATEWAY = "10.88.0.1"
SERVICE_CIDR = "10.96.0.0/16"
KUBERNETES_SERVICE_IP = "10.96.0.1"
NODE_NAME = "bbp-node"
BRIDGE = "bbp0"
# A metric of our own: the bridge's connected route (metric 0) wins while it exists, the
# blackhole catches everything in the range when it does not.
BLACKHOLE_METRIC = 4242
PAUSE_IMAGE = "localhost/bbp-notebooks/pause:node"
# What the kubelet, kube-proxy and the CNI plugins may change and `stop` puts back.
SYSCTLS = (
    "kernel/panic",
    "kernel/panic_on_oops",
    "vm/overcommit_memory",
    "net/ipv4/ip_forward",
    "net/ipv4/conf/all/route_localnet",
    "net/bridge/bridge-nf-call-iptables",
)
# Held from start to the end of stop: one user of the host's network state at a time (the
# node tests compare it before and after; a kind run or a second node would change it meanwhile).
HOST_LOCK = Path("/tmp/node-net.lock")
NODE_TOOLS = ("kubelet", "kube-proxy", "kube-controller-manager", "kube-scheduler", "coredns")


class NodeError(RuntimeError):
    pass


def _run(*argv: str, check: bool = True, input: str | None = None, timeout: float = 600) -> str:
    result = subprocess.run(
        argv, capture_output=True, text=True, check=False, input=input, timeout=timeout
    )
    if check and result.returncode != 0:
        raise NodeError(f"{' '.join(argv)} failed ({result.returncode}): {result.stderr.strip()}")
    return result.stdout


def _iptables_dump(command: str) -> str:
    """`iptables-save` without comments, counters and tables that hold nothing (only built-in
    chains, policy ACCEPT, no rule): equal when the rules are equal."""
    text = _run(command, check=False)
    tables: list[list[str]] = []
    for line in text.splitlines():
        if line.startswith("#") or not line.strip():
            continue
        if line.startswith("*"):
            tables.append([])
        if line.startswith(":"):
            line = line.split(" [")[0]
        if tables:
            tables[-1].append(line)
    kept = [
        table
        for table in tables
        if any(line.startswith("-A") for line in table)
        or any(line.startswith(":") and not line.endswith(" ACCEPT") for line in table)
    ]
    return "\n".join(line for table in kept for line in table)


def _flush_iptables(command: str) -> None:
    """Empty every table `command`-save shows (before restoring what was there at start)."""
    for line in _run(f"{command}-save", check=False).splitlines():
        if line.startswith("*"):
            table = line[1:].strip()
            _run(command, "-t", table, "-F", check=False)
            _run(command, "-t", table, "-X", check=False)
            for chain in ("INPUT", "FORWARD", "OUTPUT", "PREROUTING", "POSTROUTING"):
                _run(command, "-t", table, "-P", chain, "ACCEPT", check=False)


def _cgroups() -> list[str]:
    root = Path("/sys/fs/cgroup")
    found = []
    for controller in sorted(root.iterdir()) if root.is_dir() else []:
        if controller.is_dir():
            found += [f"{controller.name}/{d.name}" for d in controller.iterdir() if d.is_dir()]
    return sorted(found)


@dataclass(frozen=True)
class HostState:
    """What a node changes on the host, captured to compare and to restore."""

    routes: str
    addresses: str
    links: tuple[str, ...]
    iptables: str
    ip6tables: str
    sysctls: tuple[tuple[str, str], ...]
    cgroups: tuple[str, ...]
    mounts: tuple[str, ...]

    @classmethod
    def capture(cls) -> HostState:
        links = json.loads(_run("ip", "-j", "link", "show"))
        return cls(
            routes=_run("ip", "route", "show", "table", "all"),
            addresses=_run("ip", "-br", "addr", "show"),
            links=tuple(sorted(link["ifname"] for link in links)),
            iptables=_iptables_dump("iptables-save"),
            ip6tables=_iptables_dump("ip6tables-save"),
            sysctls=tuple((name, _read_sysctl(name)) for name in SYSCTLS),
            cgroups=tuple(_cgroups()),
            # Image builds (buildah, anyone's) mount and unmount under its store meanwhile.
            mounts=tuple(
                sorted(
                    mount
                    for mount in _mount_points()
                    if not mount.startswith("/var/lib/containers/")
                )
            ),
        )

    def differences(self, other: HostState) -> dict[str, tuple[Any, Any]]:
        return {
            name: (getattr(self, name), getattr(other, name))
            for name in self.__dataclass_fields__
            if getattr(self, name) != getattr(other, name)
        }


def _mount_points() -> list[str]:
    return [line.split()[1] for line in Path("/proc/mounts").read_text().splitlines()]


def _read_sysctl(name: str) -> str:
    try:
        return (Path("/proc/sys") / name).read_text().strip()
    except OSError:
        return ""


def _write_sysctl(name: str, value: str) -> None:
    if value:
        with contextlib.suppress(OSError):
            (Path("/proc/sys") / name).write_text(value + "\n")


def external_interfaces() -> list[str]:
    routes = json.loads(_run("ip", "-j", "route", "show", "default"))
    return sorted({route["dev"] for route in routes if "dev" in route})


class Node:
    """The cluster in `workdir`: start() / stop(), or a context manager."""

    def __init__(self, workdir: Path, *, bin_dir: Path | None = None) -> None:
        self.workdir = workdir.resolve()
        self._bin_dir = bin_dir
        self.before: HostState | None = None
        self._children: list[Child] = []
        self._iptables_before = ""
        self._ip6tables_before = ""
        self._lock: Any = None
        self.lock_wait_s = 0.0  # how long start waited for another user of the host
        self.control_plane = ControlPlane(
            self.workdir / "controlplane",
            NODE_IP,
            bin_dir=bin_dir,
            service_cluster_ip_range=SERVICE_CIDR,
            service_ip=KUBERNETES_SERVICE_IP,
        )

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = tools_bin()
        return self._bin_dir

    @property
    def kubeconfig(self) -> Path:
        return self.control_plane.kubeconfig

    @property
    def containerd_socket(self) -> Path:
        return self.workdir / "containerd" / "containerd.sock"

    def log_file(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = 180.0) -> None:
        missing = [t for t in NODE_TOOLS + ("pause",) if not (self.bin_dir / t).is_file()]
        missing += [t for t in ("containerd", "runc", "iptables") if not shutil.which(t)]
        if not Path("/usr/lib/cni/bridge").is_file():
            missing.append("containernetworking-plugins")
        if missing:
            raise NodeError(f"missing for the node: {', '.join(missing)}")
        lock = HOST_LOCK.open("a")
        began = time.monotonic()
        try:
            fcntl.flock(lock, fcntl.LOCK_EX)
        except BaseException:
            lock.close()
            raise
        self._lock = lock  # from here on, stop() puts the host back
        self.lock_wait_s = time.monotonic() - began
        deadline = time.monotonic() + timeout
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.before = HostState.capture()
        self._iptables_before = _run("iptables-save")
        self._ip6tables_before = _run("ip6tables-save", check=False)
        try:
            self._protect_network()
            self._start(deadline)
        except BaseException:
            self.stop()
            raise

    def _protect_network(self) -> None:
        for cidr in (POD_CIDR, SERVICE_CIDR, f"{NODE_IP}/32"):
            _run("ip", "route", "add", "blackhole", cidr, "metric", str(BLACKHOLE_METRIC))
        for device in external_interfaces():
            for chain in ("FORWARD", "OUTPUT"):
                _run("iptables", "-I", chain, "1", "-s", POD_CIDR, "-o", device, "-j", "DROP")
        _run("ip", "addr", "add", f"{NODE_IP}/32", "dev", "lo")
        # Pods reach Services through the host (DNAT, then back onto the bridge).
        _write_sysctl("net/ipv4/ip_forward", "1")
        # The pods' bridge exists before the first pod (the CNI plugin takes it as it is), so
        # the host reaches Services too: a Service address routes onto the bridge, and
        # kube-proxy's DNAT in OUTPUT turns it into a pod's (or the API server's) before the
        # packet leaves. Without this route the blackhole refuses the connect (EINVAL). Either
        # way nothing in the range can leave the machine.
        _run("ip", "link", "add", BRIDGE, "type", "bridge")
        _run("ip", "addr", "add", f"{POD_GATEWAY}/16", "dev", BRIDGE)
        _run("ip", "link", "set", BRIDGE, "up")
        _run("ip", "route", "add", SERVICE_CIDR, "dev", BRIDGE, "src", POD_GATEWAY)

    def _start(self, deadline: float) -> None:
        self.control_plane.start(timeout=max(10.0, deadline - time.monotonic()))
        kubeconfig = str(self.kubeconfig)
        self._spawn(
            "kube-controller-manager",
            [
                str(self.bin_dir / "kube-controller-manager"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
                "--use-service-account-credentials=false",
                f"--service-account-private-key-file={self._pki_file('service-account', 'key')}",
                f"--root-ca-file={self._pki_file('ca', 'crt')}",
                f"--service-cluster-ip-range={SERVICE_CIDR}",
                "--controllers=*,-nodeipam,-cloud-node-lifecycle,-service-lb-controller",
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                str(self.bin_dir / "kube-scheduler"),
                f"--kubeconfig={kubeconfig}",
                f"--authentication-kubeconfig={kubeconfig}",
                f"--authorization-kubeconfig={kubeconfig}",
                "--bind-address=127.0.0.1",
                "--secure-port=0",
                "--leader-elect=false",
            ],
        )
        self._start_containerd()
        self._wait(lambda: self._ctr_ok(), deadline, "containerd")
        self._import_pause()
        self._spawn("coredns", [str(self.bin_dir / "coredns"), "-conf", str(self._corefile())])
        self._start_kubelet()
        self._start_kube_proxy()
        self._wait(self._node_ready, deadline, f"node {NODE_NAME} Ready")

    def _pki_file(self, stem: str, suffix: str) -> Path:
        """ca.crt, service-account.key, ... of the control plane (devtools/_certs.py)."""
        return self.control_plane.workdir / "pki" / f"{stem}.{suffix}"

    def _start_containerd(self) -> None:
        root = self.workdir / "containerd"
        (root / "root").mkdir(parents=True, exist_ok=True)
        cni = self.workdir / "cni"
        (cni / "net.d").mkdir(parents=True, exist_ok=True)
        conflist = {
            "cniVersion": "0.4.0",
            "name": "bbp-node",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": BRIDGE,
                    "isGateway": True,
                    "isDefaultGateway": True,
                    "ipMasq": False,
                    "hairpinMode": True,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": POD_CIDR, "gateway": POD_GATEWAY}]],
                        "dataDir": str(cni / "ipam"),
                    },
                }
            ],
        }
        (cni / "net.d" / "10-bbp-node.conflist").write_text(json.dumps(conflist, indent=2))
        config = f"""version = 2
root = "{root / "root"}"
state = "{root / "state"}"
[grpc]
  address = "{self.containerd_socket}"
[ttrpc]
  address = "{root / "ttrpc.sock"}"
[debug]
  address = "{root / "debug.sock"}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni / "net.d"}"
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "overlayfs"
"""
        path = root / "config.toml"
        path.write_text(config)
        self._spawn("containerd", ["containerd", "--config", str(path)])

    def ctr(self, *argv: str, check: bool = True) -> str:
        return _run("ctr", "--address", str(self.containerd_socket), "-n", "k8s.io", *argv,
                    check=check)  # fmt: skip

    def _ctr_ok(self) -> bool:
        try:
            self.ctr("version")
        except NodeError:
            return False
        return True

    def _import_pause(self) -> None:
        archive = self.workdir / "pause.tar"
        env = dict(os.environ)
        ctr = subprocess.run(["buildah", "from", "scratch"], capture_output=True, text=True,
                             check=True, env=env).stdout.strip()  # fmt: skip
        try:
            for argv in (
                ["buildah", "copy", ctr, str(self.bin_dir / "pause"), "/pause"],
                ["buildah", "config", "--entrypoint", '["/pause"]', ctr],
                ["buildah", "commit", "--quiet", ctr, PAUSE_IMAGE],
                [
                    "buildah",
                    "push",
                    "--quiet",
                    PAUSE_IMAGE,
                    f"docker-archive:{archive}:{PAUSE_IMAGE}",
                ],
            ):
                subprocess.run(argv, capture_output=True, check=True, env=env)
        finally:
            subprocess.run(["buildah", "rm", ctr], capture_output=True, check=False, env=env)
        self.ctr("images", "import", str(archive))

    def import_image(self, archive: Path) -> None:
        self.ctr("images", "import", str(archive))

    def _corefile(self) -> Path:
        path = self.workdir / "Corefile"
        path.write_text(
            f""".:53 {{
    bind {NODE_IP}
    errors
    kubernetes cluster.local in-addr.arpa ip6.arpa {{
        kubeconfig {self.kubeconfig} dev
        pods insecure
        fallthrough in-addr.arpa ip6.arpa
    }}
}}
"""
        )
        return path

    def _start_kubelet(self) -> None:
        directory = self.workdir / "kubelet"
        directory.mkdir(parents=True, exist_ok=True)
        resolv = self.workdir / "resolv.conf"
        resolv.write_text(f"nameserver {NODE_IP}\n")
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": NODE_IP,
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": 0,
            "authentication": {
                "anonymous": {"enabled": False},
                "webhook": {"enabled": False},
                "x509": {"clientCAFile": str(self._pki_file("ca", "crt"))},
            },
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "cgroupsPerQOS": True,
            "enforceNodeAllocatable": [],
            "failSwapOn": False,
            "clusterDNS": [NODE_IP],
            "clusterDomain": "cluster.local",
            "resolvConf": str(resolv),
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "evictionHard": {
                "memory.available": "50Mi",
                "nodefs.available": "1%",
                "imagefs.available": "1%",
            },
            "imageGCHighThresholdPercent": 100,
            "protectKernelDefaults": False,
            "serializeImagePulls": False,
            "localStorageCapacityIsolation": False,
        }
        path = directory / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn(
            "kubelet",
            [
                str(self.bin_dir / "kubelet"),
                f"--config={path}",
                f"--kubeconfig={self.kubeconfig}",
                f"--hostname-override={NODE_NAME}",
                f"--node-ip={NODE_IP}",
                f"--root-dir={directory / 'root'}",
                f"--cert-dir={directory / 'pki'}",
            ],
        )

    def _start_kube_proxy(self) -> None:
        healthz, metrics = _free_ports("127.0.0.1", 2)
        config = {
            "apiVersion": "kubeproxy.config.k8s.io/v1alpha1",
            "kind": "KubeProxyConfiguration",
            "mode": "iptables",
            "clientConnection": {"kubeconfig": str(self.kubeconfig)},
            "clusterCIDR": POD_CIDR,
            "hostnameOverride": NODE_NAME,
            "bindAddress": NODE_IP,
            "healthzBindAddress": f"127.0.0.1:{healthz}",
            "metricsBindAddress": f"127.0.0.1:{metrics}",
            "nodePortAddresses": [f"{NODE_IP}/32"],
            # Every connection to a Service leaves with the bridge's address, so replies come
            # back through the host's conntrack (no br_netfilter needed).
            "iptables": {"masqueradeAll": True},
            # No conntrack sysctls: the host's stay as they are.
            "conntrack": {
                "maxPerCore": 0,
                "tcpEstablishedTimeout": "0s",
                "tcpCloseWaitTimeout": "0s",
            },
        }
        path = self.workdir / "kube-proxy.yaml"
        path.write_text(yaml.safe_dump(config))
        self._spawn("kube-proxy", [str(self.bin_dir / "kube-proxy"), f"--config={path}"])

    def _node_ready(self) -> bool:
        out = self.kubectl("get", "node", NODE_NAME, "-o", "json", check=False)
        if not out:
            return False
        conditions = json.loads(out)["status"].get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions)

    def kubectl(self, *argv: str, check: bool = True, input: str | None = None) -> str:
        return _run(str(self.bin_dir / "kubectl"), f"--kubeconfig={self.kubeconfig}", *argv,
                    check=check, input=input)  # fmt: skip

    def _wait(self, condition: Any, deadline: float, what: str) -> None:
        def ready() -> bool:
            for child in self._children:
                if child.returncode is not None:
                    raise NodeError(
                        f"{child.name} exited ({child.returncode}) while waiting for {what}:\n"
                        + _tail(self.log_file(child.name))
                    )
            return bool(condition())

        wait_until(ready, max(1.0, deadline - time.monotonic()), what)

    def _spawn(self, name: str, argv: list[str]) -> None:
        child = processes.start(name, argv, self.log_file(name))
        self._children.append(child)

    # -- teardown --------------------------------------------------------------------------

    def stop(self) -> None:
        """Stop everything (by PID) and put the host back as `start` found it. Once: a second
        call (or one without start) does nothing, since another user may hold the host by then."""
        if self._lock is None:
            return
        # No controller may replace the pods the kubelet is about to remove.
        for child in self._children:
            if child.name in ("kube-controller-manager", "kube-scheduler"):
                child.stop(grace=15.0)
        with contextlib.suppress(Exception):
            self._remove_pods()
        for child in reversed(self._children):
            child.stop(grace=15.0)
        self._children.clear()
        self.control_plane.stop()
        self._kill_shims()
        self._release_mounts()
        self._remove_cgroups()
        _run("ip", "link", "del", BRIDGE, check=False)
        if self.before is not None:
            with contextlib.suppress(NodeError):
                _run(str(self.bin_dir / "kube-proxy"), "--cleanup", check=False)
            _flush_iptables("iptables")
            _run("iptables-restore", input=self._iptables_before)
            _flush_iptables("ip6tables")
            _run("ip6tables-restore", input=self._ip6tables_before, check=False)
        for cidr in (POD_CIDR, SERVICE_CIDR, f"{NODE_IP}/32"):
            _run("ip", "route", "del", "blackhole", cidr, "metric", str(BLACKHOLE_METRIC),
                 check=False)  # fmt: skip
        _run("ip", "addr", "del", f"{NODE_IP}/32", "dev", "lo", check=False)
        if self.before is not None:
            for name, value in self.before.sysctls:
                if _read_sysctl(name) != value:
                    _write_sysctl(name, value)
        if self._lock is not None:
            self._lock.close()  # releases the flock
            self._lock = None

    def _remove_pods(self) -> None:
        """Let the kubelet tear every pod down (CNI DEL, network namespaces, volumes)."""
        if not self._children or not self._ctr_ok():
            return
        self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=0",
                     "--force", "--wait=false", check=False)  # fmt: skip

        def no_sandboxes() -> bool:
            # Stopped sandboxes (network namespace gone, CNI DEL done) have no task left.
            return not self.ctr("tasks", "list", "-q", check=False).strip()

        with contextlib.suppress(TimeoutError):
            wait_until(no_sandboxes, 60.0, "the kubelet to remove every pod")

    def _kill_shims(self) -> None:
        """containerd's shims outlive it by design; ours are those whose address is our state."""
        marker = str(self.workdir / "containerd")
        for proc in Path("/proc").iterdir():
            if not proc.name.isdigit():
                continue
            try:
                cmdline = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode()
            except OSError:
                continue
            if "containerd-shim" in cmdline and marker in cmdline:
                with contextlib.suppress(OSError):
                    os.kill(int(proc.name), 9)

    def _release_mounts(self) -> None:
        ours = [str(self.workdir), "/run/netns/cni-", "/var/run/netns/cni-"]
        before = set(self.before.mounts) if self.before else set()
        for _ in range(3):
            mounts = _mount_points()
            extra = [m for m in mounts if m not in before and any(m.startswith(o) for o in ours)]
            if not extra:
                break
            for mount in sorted(extra, key=len, reverse=True):
                _run("umount", "-l", mount, check=False)
        for netns in Path("/run/netns").glob("cni-*") if Path("/run/netns").is_dir() else []:
            with contextlib.suppress(OSError):
                netns.unlink()

    def _remove_cgroups(self) -> None:
        before = set(self.before.cgroups) if self.before else set()
        for top in sorted(set(_cgroups()) - before):
            root = Path("/sys/fs/cgroup") / top
            for directory in sorted(
                (d for d in root.rglob("*") if d.is_dir()), key=lambda d: len(d.parts), reverse=True
            ):
                with contextlib.suppress(OSError):
                    directory.rmdir()
            with contextlib.suppress(OSError):
                root.rmdir()

    def __enter__(self) -> Node:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@contextlib.contextmanager
def running_node(workdir: Path) -> Iterator[Node]:
    node = Node(workdir)
    node.start()
    try:
        yield node
    finally:
        node.stop()


__all__ = ["HostState", "Node", "NodeError", "ControlPlaneError", "running_node"]
