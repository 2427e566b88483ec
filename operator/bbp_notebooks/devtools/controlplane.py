"""A real kube-apiserver backed by etcd, on loopback, for the kube tests and `make dev`.

There is no controller manager, scheduler or kubelet: objects are validated, stored, watched and
authorised exactly as in a cluster, but nothing runs them. What a controller manager would have
done that the tests rely on (a `default` ServiceAccount per namespace) is done here instead.

    bbp-notebooks-controlplane up            # foreground until Ctrl-C
    bbp-notebooks-controlplane up --detach   # for Makefiles; stop with `down`
    eval "$(bbp-notebooks-controlplane env)"
    bbp-notebooks-controlplane down
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import yaml
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException

from bbp_notebooks.devtools import processes
from bbp_notebooks.devtools._certs import PkiFiles, write_pki
from bbp_notebooks.devtools.processes import Child
from bbp_notebooks.devtools.waiting import wait_until

REPO_ROOT_ENV = "BBP_NOTEBOOKS_ROOT"
TOOLS_BIN_ENV = "BBP_TOOLS_BIN"
WORKDIR_ENV = "BBP_CONTROLPLANE_DIR"
TOOLS = ("kube-apiserver", "kubectl", "etcd", "helm")

# The API server insists on a Service IP range and gives the `kubernetes` Service the first address
# in it. Service IPs are virtual: only kube-proxy would ever program them and there is none here.
# The range is taken from loopback (127.0.0.0/8) rather than the usual private 10.x default so that
# even a stray connection to a Service IP cannot leave the machine (the project's network rule), and
# far from the 127.0.0.x site aliases. The API server accepts any IPv4 range of /12 or smaller
# whose family matches --advertise-address.
SERVICE_CLUSTER_IP_RANGE = "127.240.0.0/20"

# Readiness of a warm start is ~5-10 s on two cores; the deadline covers a loaded CI machine.
START_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 15.0
TOOLS_BUILD_TIMEOUT_S = 3600.0


class ControlPlaneError(RuntimeError):
    pass


def repo_root() -> Path:
    """The checkout this module lives in, or $BBP_NOTEBOOKS_ROOT."""
    if env := os.environ.get(REPO_ROOT_ENV):
        return Path(env)
    # operator/bbp_notebooks/devtools/controlplane.py -> the repository root
    root = Path(__file__).resolve().parents[3]
    if not (root / "scripts" / "build-tools.sh").is_file():
        raise ControlPlaneError(
            f"{root} is not a bbp-notebooks checkout; set {REPO_ROOT_ENV} to the repository root"
        )
    return root


def tools_bin(root: Path | None = None) -> Path:
    """The directory with kube-apiserver, kubectl, etcd and helm: $BBP_TOOLS_BIN, or whatever
    scripts/build-tools.sh reports after building the pinned versions (a no-op when cached)."""
    if env := os.environ.get(TOOLS_BIN_ENV):
        directory = Path(env)
    else:
        script = (root or repo_root()) / "scripts" / "build-tools.sh"
        # stderr passes through: a cold build takes many minutes and says what it is doing.
        result = subprocess.run(
            ["bash", str(script)],
            stdout=subprocess.PIPE,
            text=True,
            check=False,
            timeout=TOOLS_BUILD_TIMEOUT_S,
        )
        if result.returncode != 0:
            raise ControlPlaneError(f"{script} failed with exit status {result.returncode}")
        directory = Path(result.stdout.strip().splitlines()[-1])
    missing = [tool for tool in TOOLS if not os.access(directory / tool, os.X_OK)]
    if missing:
        raise ControlPlaneError(f"{directory} lacks {', '.join(missing)}")
    return directory


@dataclass(frozen=True)
class _Started:
    """A process this control plane started, identified beyond its PID (PIDs are reused)."""

    name: str
    pid: int
    start_ticks: int


class ControlPlane:
    """etcd + kube-apiserver on `host`; every file (PKI, data, logs, kubeconfig) is in `workdir`."""

    def __init__(
        self,
        workdir: Path,
        host: str = "127.0.0.1",
        *,
        bin_dir: Path | None = None,
        service_cluster_ip_range: str = SERVICE_CLUSTER_IP_RANGE,
        service_ip: str | None = None,
    ):
        """With `service_ip` (the `kubernetes` Service's address) the control plane serves a real
        node (devtools/node.py): its certificate names that address too, it publishes its own
        endpoint, and it reaches kubelets by their InternalIP with the admin certificate."""
        self.workdir = workdir.resolve()
        self.host = host
        self.service_cluster_ip_range = service_cluster_ip_range
        self.service_ip = service_ip
        self._bin_dir = bin_dir
        self._children: dict[int, Child] = {}
        self.server: str | None = None
        self.startup_seconds: float | None = None

    # -- paths and environment -------------------------------------------------------------

    @property
    def kubeconfig(self) -> Path:
        return self.workdir / "kubeconfig"

    @property
    def bin_dir(self) -> Path:
        if self._bin_dir is None:
            self._bin_dir = tools_bin()
        return self._bin_dir

    @property
    def env(self) -> dict[str, str]:
        """The environment for a subprocess that should talk to this control plane as admin."""
        env = dict(os.environ)
        env["KUBECONFIG"] = str(self.kubeconfig)
        env["PATH"] = os.pathsep.join([str(self.bin_dir), env.get("PATH", os.defpath)])
        return env

    @property
    def _pid_file(self) -> Path:
        return self.workdir / "processes.json"

    def log_file(self, name: str) -> Path:
        return self.workdir / f"{name}.log"

    # -- lifecycle -------------------------------------------------------------------------

    def start(self, timeout: float = START_TIMEOUT_S) -> None:
        self.bin_dir  # noqa: B018 (locate, or build, the tools before the clock starts)
        began = time.monotonic()
        self.workdir.mkdir(parents=True, exist_ok=True)
        if _alive(_read_records(self._pid_file)):
            raise ControlPlaneError(f"a control plane from {self.workdir} is still running")
        self._pid_file.unlink(missing_ok=True)
        # Every start is a fresh cluster: state from an earlier run (signed by keys that no longer
        # exist) would only surprise.
        shutil.rmtree(self.workdir / "etcd", ignore_errors=True)
        try:
            self._start(began + timeout)
        except BaseException:
            self.stop()
            raise
        self.startup_seconds = time.monotonic() - began

    def _start(self, deadline: float) -> None:
        bin_dir = self.bin_dir
        ips = [self.host, *([self.service_ip] if self.service_ip else [])]
        dns = ["localhost", "kubernetes", "kubernetes.default", "kubernetes.default.svc"]
        pki = write_pki(self.workdir / "pki", ip_addresses=ips, dns_names=dns)
        etcd_client, etcd_peer, apiserver_port = _free_ports(self.host, 3)
        etcd_url = f"http://{self.host}:{etcd_client}"
        peer_url = f"http://{self.host}:{etcd_peer}"
        self.server = f"https://{self.host}:{apiserver_port}"

        # etcd speaks plain HTTP: it listens on loopback only and holds nothing but test data.
        self._spawn(
            "etcd",
            [
                str(bin_dir / "etcd"),
                "--name=bbp-notebooks-dev",
                f"--data-dir={self.workdir / 'etcd'}",
                f"--listen-client-urls={etcd_url}",
                f"--advertise-client-urls={etcd_url}",
                f"--listen-peer-urls={peer_url}",
                f"--initial-advertise-peer-urls={peer_url}",
                f"--initial-cluster=bbp-notebooks-dev={peer_url}",
                # Durability is worthless for throw-away data; fsync dominates etcd latency.
                "--unsafe-no-fsync",
                "--log-level=warn",
            ],
        )
        self._spawn(
            "kube-apiserver",
            [
                str(bin_dir / "kube-apiserver"),
                f"--etcd-servers={etcd_url}",
                f"--bind-address={self.host}",
                f"--advertise-address={self.host}",
                f"--secure-port={apiserver_port}",
                f"--tls-cert-file={pki.serving_cert}",
                f"--tls-private-key-file={pki.serving_key}",
                f"--client-ca-file={pki.ca_cert}",
                f"--cert-dir={self.workdir / 'pki'}",
                "--authorization-mode=RBAC",
                f"--service-account-issuer={self.server}",
                f"--service-account-key-file={pki.service_account_public_key}",
                f"--service-account-signing-key-file={pki.service_account_private_key}",
                f"--service-cluster-ip-range={self.service_cluster_ip_range}",
                *self._node_args(pki),
                # Admission stays at the defaults, ServiceAccount included, so pods are admitted
                # as in a real cluster; `ensure_namespace` creates the `default` ServiceAccount
                # that admission looks up and a controller manager would have created.
                "--profiling=false",
            ],
        )
        self._write_admin_kubeconfig(pki)
        self._wait_ready(pki, deadline)
        self.ensure_namespace("default")

    def _node_args(self, pki: PkiFiles) -> list[str]:
        if self.service_ip is None:
            # The default reconciler would publish 127.0.0.1 as the endpoint of the
            # `kubernetes` Service, which Endpoints validation rejects (loopback), and log the
            # failure every few seconds. Nothing here needs that Service to have endpoints.
            return ["--endpoint-reconciler-type=none"]
        return [
            "--kubelet-preferred-address-types=InternalIP",
            f"--kubelet-client-certificate={pki.admin_cert}",
            f"--kubelet-client-key={pki.admin_key}",
        ]

    def stop(self, timeout: float = STOP_TIMEOUT_S) -> None:
        """Stop what this control plane, or an earlier `up --detach` on its workdir, started."""
        records = _read_records(self._pid_file)
        _terminate(records, timeout, self._children)
        self._children.clear()
        self._pid_file.unlink(missing_ok=True)

    def __enter__(self) -> ControlPlane:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def processes(self) -> list[_Started]:
        return _read_records(self._pid_file)

    def _spawn(self, name: str, argv: list[str]) -> None:
        # A session of its own: Ctrl-C in the terminal reaches only `up`, which then stops the
        # children in order (API server before etcd).
        child = processes.start(name, argv, self.log_file(name))
        self._children[child.pid] = child
        record = _Started(name, child.pid, _start_ticks(child.pid) or 0)
        _write_records(self._pid_file, [*_read_records(self._pid_file), record])

    def _wait_ready(self, pki: PkiFiles, deadline: float) -> None:
        assert self.server is not None
        context = ssl.create_default_context(cafile=str(pki.ca_cert))
        context.load_cert_chain(str(pki.admin_cert), str(pki.admin_key))

        def ready() -> bool:
            for child in self._children.values():
                if (status := child.returncode) is not None:
                    raise ControlPlaneError(
                        f"{child.name} exited with status {status} during start-up:\n"
                        + _tail(self.log_file(child.name))
                    )
            with urllib.request.urlopen(  # noqa: S310 (https URL built above)
                f"{self.server}/readyz", context=context, timeout=2
            ) as response:
                return bool(response.status == 200)

        try:
            wait_until(
                ready, max(0.0, deadline - time.monotonic()), f"kube-apiserver at {self.server}",
                retry_on=(urllib.error.URLError, OSError),
            )  # fmt: skip
        except TimeoutError as error:
            raise ControlPlaneError(f"{error}:\n{_tail(self.log_file('kube-apiserver'))}") from None

    def _write_admin_kubeconfig(self, pki: PkiFiles) -> None:
        assert self.server is not None
        kubeconfig = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": "bbp-notebooks-dev",
                    "cluster": {"server": self.server, "certificate-authority": str(pki.ca_cert)},
                }
            ],
            "users": [
                {
                    "name": "user",
                    "user": {
                        "client-certificate": str(pki.admin_cert),
                        "client-key": str(pki.admin_key),
                    },
                }
            ],
            "contexts": [
                {"name": "dev", "context": {"cluster": "bbp-notebooks-dev", "user": "user"}}
            ],
            "current-context": "dev",
        }
        _write_private_yaml(self.kubeconfig, kubeconfig)

    # -- API helpers -----------------------------------------------------------------------

    def api_client(self, kubeconfig: Path | None = None) -> Any:
        """A kubernetes (sync) ApiClient, admin unless another kubeconfig is given. Close it."""
        path = str(kubeconfig or self.kubeconfig)
        return config.new_client_from_config(config_file=path)  # type: ignore[no-untyped-call]

    @contextlib.contextmanager
    def _core(self) -> Iterator[Any]:
        api = self.api_client()
        try:
            yield client.CoreV1Api(api)
        finally:
            api.close()

    def ensure_namespace(self, name: str) -> None:
        """Create namespace `name` if missing, with the `default` ServiceAccount that a controller
        manager would add (ServiceAccount admission refuses pods without it)."""
        with self._core() as core:
            _create_unless_exists(
                core.create_namespace, client.V1Namespace(metadata=client.V1ObjectMeta(name=name))
            )
            _create_unless_exists(
                core.create_namespaced_service_account,
                name,
                client.V1ServiceAccount(metadata=client.V1ObjectMeta(name="default")),
            )

    def install_crds(self, crd_dir: Path, timeout: float = 60.0) -> list[str]:
        """Apply every YAML file in `crd_dir` and wait until each CRD in them is Established.
        Returns the CRD names."""
        files = sorted(p for p in crd_dir.iterdir() if p.suffix in (".yaml", ".yml"))
        names = [
            document["metadata"]["name"]
            for path in files
            for document in yaml.safe_load_all(path.read_text())
            if document and document.get("kind") == "CustomResourceDefinition"
        ]
        if not files:
            return names
        deadline = time.monotonic() + timeout
        # Server-side apply: client-side apply stores the whole object in an annotation, which a
        # CRD with a large schema overflows (256 KiB limit).
        self.kubectl(
            [
                "apply",
                "--server-side",
                "--force-conflicts",
                *(arg for path in files for arg in ("-f", str(path))),
            ],
            timeout=max(1.0, deadline - time.monotonic()),
        )
        if names:
            remaining = max(1.0, deadline - time.monotonic())
            self.kubectl(
                [
                    "wait",
                    "--for=condition=Established",
                    f"--timeout={int(remaining)}s",
                    *(f"crd/{name}" for name in names),
                ],
                timeout=remaining + 5,
            )
        return names

    def mint_identity(
        self,
        namespace: str,
        service_account: str,
        *,
        expiration: datetime.timedelta = datetime.timedelta(hours=1),
    ) -> Path:
        """Create `service_account` in `namespace` (and the namespace) and return the path of a
        kubeconfig that authenticates as it with a TokenRequest token. It has no rights beyond
        what RBAC grants a service account: bind Roles to it to give it some."""
        self.ensure_namespace(namespace)
        with self._core() as core:
            _create_unless_exists(
                core.create_namespaced_service_account,
                namespace,
                client.V1ServiceAccount(metadata=client.V1ObjectMeta(name=service_account)),
            )
            # Empty audiences: the token is for this API server's own audience.
            request = client.AuthenticationV1TokenRequest(
                spec=client.V1TokenRequestSpec(
                    audiences=[], expiration_seconds=int(expiration.total_seconds())
                )
            )
            token = core.create_namespaced_service_account_token(
                service_account, namespace, request
            ).status.token
        directory = self.workdir / "identities"
        directory.mkdir(exist_ok=True)
        path = directory / f"{namespace}.{service_account}.kubeconfig"
        # Same cluster and context as the admin kubeconfig; only the credentials differ.
        kubeconfig = yaml.safe_load(self.kubeconfig.read_text())
        kubeconfig["users"] = [{"name": "user", "user": {"token": token}}]
        _write_private_yaml(path, kubeconfig)
        return path

    def kubectl(self, args: Sequence[str], *, timeout: float = 60.0) -> str:
        result = subprocess.run(
            [str(self.bin_dir / "kubectl"), *args],
            env=self.env,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if result.returncode != 0:
            raise ControlPlaneError(
                f"kubectl {shlex.join(args)} failed ({result.returncode}): {result.stderr.strip()}"
            )
        return result.stdout


def _write_private_yaml(path: Path, document: dict[str, Any]) -> None:
    """Write a file only its owner can read: kubeconfigs carry credentials."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as stream:
        os.fchmod(stream.fileno(), 0o600)
        yaml.safe_dump(document, stream)


def _create_unless_exists(create: Any, *args: Any) -> None:
    try:
        create(*args)
    except ApiException as error:
        if error.status != 409:
            raise


# -- processes -------------------------------------------------------------------------------


def _free_ports(host: str, count: int) -> list[int]:
    # All sockets stay open until every port is chosen, so the ports are distinct.
    with contextlib.ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(sock.getsockname()[1])
        return ports


def _start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot, or None if it does not exist or is a
    zombie (exited: only its exit status remains)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    fields = stat[stat.rindex(")") + 2 :].split()  # the command name may contain spaces
    if fields[0] in ("Z", "X"):
        return None
    return int(fields[19])


def _is_running(record: _Started) -> bool:
    ticks = _start_ticks(record.pid)
    return ticks is not None and ticks == record.start_ticks


def _alive(records: list[_Started]) -> list[_Started]:
    return [record for record in records if _is_running(record)]


def _read_records(path: Path) -> list[_Started]:
    try:
        raw = json.loads(path.read_text())
    except FileNotFoundError:
        return []
    return [_Started(r["name"], int(r["pid"]), int(r["start_ticks"])) for r in raw]


def _write_records(path: Path, records: list[_Started]) -> None:
    path.write_text(json.dumps([r.__dict__ for r in records], indent=2))


def _terminate(records: list[_Started], timeout: float, children: dict[int, Child]) -> None:
    """Stop each process newest first (the API server before its etcd): SIGTERM, then SIGKILL if
    it outlives its share of the deadline. Only a PID whose start time matches the record is
    signalled, so a reused PID is never hit."""

    def running(record: _Started) -> bool:
        # Our own child is asked directly, which also reaps it (else it lingers as a zombie).
        if (child := children.get(record.pid)) is not None:
            return child.running()
        return _is_running(record)

    deadline = time.monotonic() + timeout
    stubborn = []
    for index, record in enumerate(reversed(records)):
        share = max(0.0, deadline - time.monotonic()) / (len(records) - index)
        gone = processes.stop_pid(
            record.pid, running=functools.partial(running, record), grace=share, kill_wait=5.0
        )
        if not gone:
            stubborn.append(record)
    if stubborn:
        raise ControlPlaneError(
            f"could not stop {', '.join(f'{r.name}[{r.pid}]' for r in stubborn)}"
        )


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except FileNotFoundError:
        return f"({path} missing)"


# -- CLI -------------------------------------------------------------------------------------


def _default_workdir() -> Path:
    if env := os.environ.get(WORKDIR_ENV):
        return Path(env)
    return Path.home() / ".cache" / "bbp-notebooks" / "controlplane"


def _env_lines(plane: ControlPlane) -> list[str]:
    return [
        f"export KUBECONFIG={shlex.quote(str(plane.kubeconfig))}",
        f'export PATH={shlex.quote(str(plane.bin_dir))}:"$PATH"',
    ]


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="bbp-notebooks-controlplane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        default=_default_workdir(),
        help=f"state directory (default ${WORKDIR_ENV} or ~/.cache/...)",
    )
    commands = parser.add_subparsers(dest="command", required=True)
    up = commands.add_parser("up", help="start etcd + kube-apiserver and install the CRDs")
    up.add_argument(
        "--detach",
        action="store_true",
        help="return once ready and leave it running (stop with `down`)",
    )
    up.add_argument(
        "--crds",
        type=Path,
        default=None,
        help="directory of CRD YAML to install (default: the repository's crds/)",
    )
    commands.add_parser("down", help="stop what `up --detach` started")
    commands.add_parser("env", help="print shell exports (KUBECONFIG, PATH) for eval")
    args = parser.parse_args(argv)

    plane = ControlPlane(args.workdir)
    if args.command == "down":
        stopped = plane.processes()
        plane.stop()
        print(f"stopped {', '.join(f'{r.name}[{r.pid}]' for r in stopped) or 'nothing'}")
        return 0
    if args.command == "env":
        print("\n".join(_env_lines(plane)))
        return 0

    stop_requested = threading.Event()
    if not args.detach:
        for signum in (signal.SIGINT, signal.SIGTERM):
            signal.signal(signum, lambda *_: stop_requested.set())
    try:
        plane.start()
        crd_dir = args.crds or repo_root() / "crds"
        installed = plane.install_crds(crd_dir) if crd_dir.is_dir() else []
    except BaseException:
        plane.stop()
        raise
    print(
        f"control plane ready in {plane.startup_seconds:.1f} s at {plane.server}", file=sys.stderr
    )
    print(f"installed {len(installed)} CRDs from {crd_dir}", file=sys.stderr)
    print("\n".join(_env_lines(plane)))
    sys.stdout.flush()
    if args.detach:
        return 0
    print("Ctrl-C stops it", file=sys.stderr)
    try:
        while not stop_requested.wait(1.0):
            if len(_alive(plane.processes())) < len(plane.processes()):
                print(
                    f"a control-plane process exited; see the logs in {plane.workdir}",
                    file=sys.stderr,
                )
                return 1
        return 0
    finally:
        plane.stop()


if __name__ == "__main__":
    sys.exit(main())
