"""Real Slurm (Debian 12 slurm-wlm 22.05) as two clusters, geneva and lugano, on loopback.

Each cluster has its own slurmctld, slurmd and slurmdbd (so sacct and `sacctmgr show assoc`
behave as on a production site) and sits behind its own OpenSSH sshd on a 127.0.0.x address,
with a host certificate signed by a host CA and user certificates trusted from a user CA, as
the operator meets a production site. One munged and one MariaDB (a database per cluster) serve
both clusters.

Config text comes from pure builders; `up` writes it under a directory, starts every daemon
and records their PIDs in `state.json`; `down` stops exactly those PIDs.

    python -m bbp_notebooks.devtools.realslurm up --dir /tmp/rs
    python -m bbp_notebooks.devtools.realslurm down --dir /tmp/rs
    python -m bbp_notebooks.devtools.realslurm samples --dir /tmp/rs2 --out tests/realslurm/samples

The frontends and controllers are configured as charts/bbp-notebooks/README.md tells a site to:
no root login, certificates accepted only for the principal docs/site/authorized-principals
prints (nothing for root and system accounts), and slurmctld refusing jobs from root.

Needs root and scripts/install-test-deps.sh (packages and the users alice, bob and slurmop).
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bbp_notebooks.devtools import processes, topology
from bbp_notebooks.devtools.controlplane import ControlPlaneError, repo_root
from bbp_notebooks.devtools.waiting import wait_until

STATE_FILE = "state.json"
# Where the last started deployment lives, for the "already running" message.
CURRENT_POINTER = Path(tempfile.gettempdir()) / "bbp-realslurm.current"
# MariaDB listens here.
SHARED_ADDRESS = topology.REAL_SLURM_SHARED_ADDRESS
# With CommunicationParameters=NoInAddrAny, slurmctld/slurmd/slurmdbd bind to the address this
# machine's hostname resolves to instead of 0.0.0.0; `up` checks that it is on loopback.
SLURM_ADDRESS = topology.LOOPBACK
MARIADB_PORT = 3306
SSH_PORT = topology.REAL_SLURM_SSH_PORT
TEST_USERS = ("alice", "bob")
# A site account with sacctmgr AdminLevel=Operator (a SlurmSite's adminUser): it may raise jobs'
# time limits, which users may not do to their own jobs. It has no association of its own.
ADMIN_USER = "slurmop"
DEFAULT_MIN_JOB_AGE_S = 10
START_TIMEOUT_S = 90.0
STOP_TIMEOUT_S = 15.0
DAEMON_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# The site guide's AuthorizedPrincipalsCommand, installed byte for byte (relative to the repo).
PRINCIPALS_COMMAND_SOURCE = Path("docs/site/authorized-principals")
# sshd runs that command only from a path that root owns and no one else can write, every
# directory above included; a deployment under /tmp (world-writable) cannot hold it, so each
# deployment installs its copy here.
PRINCIPALS_COMMAND_DIR = Path("/run/bbp-realslurm")
PRINCIPALS_COMMAND_USER = "nobody"


class RealSlurmError(RuntimeError):
    """A daemon could not be configured, started or reached in time."""


@dataclass(frozen=True)
class PartitionSpec:
    name: str
    max_time: str  # Slurm time format, e.g. "1-00:00:00"
    default: bool = False


@dataclass(frozen=True)
class ClusterSpec:
    """One Slurm cluster with its frontend sshd."""

    name: str
    node_name: str
    address: str  # 127.0.0.x: the frontend sshd listens here
    slurmctld_port: int
    slurmd_port: int
    slurmdbd_port: int
    first_job_id: int
    partitions: tuple[PartitionSpec, ...]
    # user -> accounts; the first one is the user's default account
    accounts: Mapping[str, tuple[str, ...]]
    ssh_port: int = SSH_PORT
    admins: tuple[str, ...] = ()  # users given AdminLevel=Operator
    cpus: int = 8
    real_memory_mb: int = 16000


GENEVA = ClusterSpec(
    name="geneva",
    node_name="gva-n1",
    address=topology.REAL_SLURM_ADDRESSES["geneva"],
    slurmctld_port=6817,
    slurmd_port=6818,
    slurmdbd_port=6819,
    first_job_id=1_000_000,
    partitions=(
        PartitionSpec("prod", "1-00:00:00", default=True),
        PartitionSpec("debug", "01:00:00"),
    ),
    accounts={"alice": ("bbp",), "bob": ("bbp",)},
    admins=(ADMIN_USER,),
)
LUGANO = ClusterSpec(
    name="lugano",
    node_name="lug-n1",
    address=topology.REAL_SLURM_ADDRESSES["lugano"],
    slurmctld_port=6827,
    slurmd_port=6828,
    slurmdbd_port=6829,
    first_job_id=2_000_000,
    partitions=(PartitionSpec("prod", "1-00:00:00", default=True),),
    accounts={"alice": ("proj16", "proj42"), "bob": ("proj42",)},
)
DEFAULT_CLUSTERS = (GENEVA, LUGANO)


@dataclass(frozen=True)
class SharedPaths:
    """Files shared by both clusters (munge, database, the two CAs, logs)."""

    root: Path

    @property
    def munge_key(self) -> Path:
        return self.root / "munge" / "munge.key"

    @property
    def munge_socket(self) -> Path:
        return self.root / "munge" / "munge.socket"

    @property
    def db_dir(self) -> Path:
        return self.root / "mariadb"

    @property
    def db_socket(self) -> Path:
        return self.root / "mariadb.sock"

    @property
    def host_ca_key(self) -> Path:
        return self.root / "ca" / "host_ca"

    @property
    def user_ca_key(self) -> Path:
        return self.root / "ca" / "user_ca"

    @property
    def logs(self) -> Path:
        return self.root / "logs"

    @property
    def principals_command(self) -> Path:
        digest = hashlib.sha256(str(self.root).encode()).hexdigest()[:16]
        return PRINCIPALS_COMMAND_DIR / digest / "authorized-principals"


@dataclass(frozen=True)
class ClusterPaths:
    root: Path

    @property
    def slurm_conf(self) -> Path:
        return self.root / "slurm.conf"

    @property
    def slurmdbd_conf(self) -> Path:
        # slurmdbd reads slurmdbd.conf from the directory of $SLURM_CONF
        return self.root / "slurmdbd.conf"

    @property
    def state_save(self) -> Path:
        return self.root / "state"

    @property
    def spool(self) -> Path:
        return self.root / "spool"

    @property
    def host_key(self) -> Path:
        return self.root / "ssh_host_ed25519_key"

    @property
    def host_cert(self) -> Path:
        return self.root / "ssh_host_ed25519_key-cert.pub"

    @property
    def sshd_config(self) -> Path:
        return self.root / "sshd_config"


def _cluster_paths(root: Path, cluster: ClusterSpec) -> ClusterPaths:
    return ClusterPaths(root / cluster.name)


# ---------------------------------------------------------------------------------------------
# Pure config builders


def slurm_conf(
    cluster: ClusterSpec,
    paths: ClusterPaths,
    shared: SharedPaths,
    *,
    hostname: str,
    min_job_age_s: int = DEFAULT_MIN_JOB_AGE_S,
) -> str:
    """slurm.conf for one cluster; `hostname` is this machine's short name (slurmctld checks it)."""
    logs = shared.logs
    lines = [
        f"ClusterName={cluster.name}",
        f"SlurmctldHost={hostname}({SLURM_ADDRESS})",
        f"SlurmctldPort={cluster.slurmctld_port}",
        f"SlurmdPort={cluster.slurmd_port}",
        # Daemons bind to the hostname's (loopback) address instead of 0.0.0.0.
        "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
        "SlurmUser=root",
        "SlurmdUser=root",
        # No job runs as root, whoever submits it (the site guide's rule).
        "DisableRootJobs=YES",
        "AuthType=auth/munge",
        "CredType=cred/munge",
        f"AuthInfo=socket={shared.munge_socket}",
        # Connections to slurmdbd take their munge socket from here, not from AuthInfo.
        f"AccountingStoragePass=socket={shared.munge_socket}",
        f"StateSaveLocation={paths.state_save}",
        f"SlurmdSpoolDir={paths.spool}/slurmd-%n",
        f"SlurmctldPidFile={paths.root}/slurmctld.pid",
        f"SlurmdPidFile={paths.root}/slurmd-%n.pid",
        f"SlurmctldLogFile={logs}/{cluster.name}-slurmctld.log",
        f"SlurmdLogFile={logs}/{cluster.name}-slurmd-%n.log",
        "SlurmctldDebug=info",
        "MailProg=/bin/true",
        "SlurmdDebug=info",
        "ProctrackType=proctrack/linuxproc",
        "TaskPlugin=task/none",
        "JobAcctGatherType=jobacct_gather/none",
        "MpiDefault=none",
        "SwitchType=switch/none",
        "LaunchParameters=use_interactive_step",
        "SchedulerType=sched/backfill",
        "SchedulerParameters=batch_sched_delay=0",
        "SelectType=select/cons_tres",
        "SelectTypeParameters=CR_Core",
        # Declare more CPUs/memory than the machine has, so several jobs share the node.
        "SlurmdParameters=config_overrides",
        f"FirstJobId={cluster.first_job_id}",
        f"MinJobAge={min_job_age_s}",
        "ReturnToService=2",
        "SlurmctldTimeout=30",
        "SlurmdTimeout=60",
        "InactiveLimit=0",
        "KillWait=5",
        "Waittime=0",
        "AccountingStorageType=accounting_storage/slurmdbd",
        f"AccountingStorageHost={SLURM_ADDRESS}",
        f"AccountingStoragePort={cluster.slurmdbd_port}",
        "AccountingStorageEnforce=associations",
        "JobCompType=jobcomp/none",
        (
            f"NodeName={cluster.node_name} NodeHostname={hostname} NodeAddr={SLURM_ADDRESS}"
            f" CPUs={cluster.cpus} RealMemory={cluster.real_memory_mb} State=UNKNOWN"
        ),
    ]
    for partition in cluster.partitions:
        lines.append(
            f"PartitionName={partition.name} Nodes={cluster.node_name}"
            f" Default={'YES' if partition.default else 'NO'}"
            f" MaxTime={partition.max_time} State=UP OverSubscribe=NO"
        )
    return "\n".join(lines) + "\n"


def slurmdbd_conf(
    cluster: ClusterSpec,
    paths: ClusterPaths,
    shared: SharedPaths,
    *,
    hostname: str,
    db_password: str,
) -> str:
    """slurmdbd.conf for one cluster (holds the database password: written 0600)."""
    return (
        "\n".join(
            [
                "AuthType=auth/munge",
                f"AuthInfo=socket={shared.munge_socket}",
                f"DbdHost={hostname}",
                f"DbdAddr={SLURM_ADDRESS}",
                "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
                f"DbdPort={cluster.slurmdbd_port}",
                "SlurmUser=root",
                "DebugLevel=info",
                f"LogFile={shared.logs}/{cluster.name}-slurmdbd.log",
                f"PidFile={paths.root}/slurmdbd.pid",
                "StorageType=accounting_storage/mysql",
                f"StorageHost={SHARED_ADDRESS}",
                f"StoragePort={MARIADB_PORT}",
                "StorageUser=slurm",
                f"StoragePass={db_password}",
                f"StorageLoc={database_name(cluster)}",
            ]
        )
        + "\n"
    )


def database_name(cluster: ClusterSpec) -> str:
    return f"slurm_acct_db_{cluster.name}"


def sshd_config(cluster: ClusterSpec, paths: ClusterPaths, shared: SharedPaths) -> str:
    """sshd_config for a cluster frontend: certificates only, for regular users only (the site
    guide's configuration), SLURM_CONF set for every session."""
    return (
        "\n".join(
            [
                f"ListenAddress {cluster.address}:{cluster.ssh_port}",
                f"HostKey {paths.host_key}",
                f"HostCertificate {paths.host_cert}",
                f"TrustedUserCAKeys {shared.user_ca_key}.pub",
                f"AuthorizedPrincipalsCommand {shared.principals_command} %u",
                f"AuthorizedPrincipalsCommandUser {PRINCIPALS_COMMAND_USER}",
                "AuthorizedKeysFile none",
                "PubkeyAuthentication yes",
                "PasswordAuthentication no",
                "KbdInteractiveAuthentication no",
                "PermitRootLogin no",
                "UsePAM no",
                "StrictModes no",
                "MaxSessions 10",
                "MaxStartups 10:30:100",
                "X11Forwarding no",
                "AllowTcpForwarding no",
                "PrintMotd no",
                "LogLevel VERBOSE",
                f"PidFile {paths.root}/sshd.pid",
                # Server-side (OpenSSH >= 8.7): applies to exec sessions too, no AcceptEnv needed.
                f"SetEnv SLURM_CONF={paths.slurm_conf}",
            ]
        )
        + "\n"
    )


def known_hosts_line(cluster: ClusterSpec, host_ca_public_key: str) -> str:
    """A known_hosts line trusting every host key the host CA signed for this frontend."""
    patterns = f"{cluster.address},[{cluster.address}]:{cluster.ssh_port}"
    return f"@cert-authority {patterns} {host_ca_public_key.strip()}\n"


def sacctmgr_setup_commands(cluster: ClusterSpec) -> list[list[str]]:
    """sacctmgr argvs that register a cluster, its accounts and user associations."""
    commands: list[list[str]] = [["sacctmgr", "-i", "add", "cluster", cluster.name]]
    account_names = sorted({a for accounts in cluster.accounts.values() for a in accounts})
    commands.append(["sacctmgr", "-i", "add", "account", *account_names, f"cluster={cluster.name}"])
    for user, accounts in sorted(cluster.accounts.items()):
        commands.append(
            [
                "sacctmgr", "-i", "add", "user", user,
                f"account={','.join(accounts)}",
                f"defaultaccount={accounts[0]}",
                f"cluster={cluster.name}",
            ]
        )  # fmt: skip
    for admin in cluster.admins:
        # AdminLevel is a user property: the user needs an entry, so it gets an association with
        # the cluster's first account (it never submits).
        commands.append(
            ["sacctmgr", "-i", "add", "user", admin, f"account={account_names[0]}",
             "adminlevel=Operator", f"cluster={cluster.name}"]
        )  # fmt: skip
    return commands


# ---------------------------------------------------------------------------------------------
# Running state


@dataclass(frozen=True)
class Daemon:
    name: str
    pid: int
    executable: str  # basename checked against /proc/PID/exe before a signal is sent


@dataclass(frozen=True)
class SiteInfo:
    """What a test needs to reach one cluster as a user."""

    name: str
    ssh_host: str
    ssh_port: int
    known_hosts: str
    user_ca_key: str  # path of the user CA private key (mint user certificates with it)
    slurm_conf: str
    first_job_id: int
    node_name: str
    partitions: tuple[str, ...]
    default_partition: str
    accounts: dict[str, list[str]]


@dataclass
class Deployment:
    root: str
    daemons: list[Daemon] = field(default_factory=list)
    sites: list[SiteInfo] = field(default_factory=list)
    timings_s: dict[str, float] = field(default_factory=dict)

    def site(self, name: str) -> SiteInfo:
        for site in self.sites:
            if site.name == name:
                return site
        raise KeyError(name)

    def save(self) -> None:
        path = Path(self.root) / STATE_FILE
        path.write_text(json.dumps(asdict(self), indent=2) + "\n")

    @classmethod
    def load(cls, root: Path) -> Deployment:
        raw: dict[str, Any] = json.loads((root / STATE_FILE).read_text())
        return cls(
            root=raw["root"],
            daemons=[Daemon(**d) for d in raw["daemons"]],
            sites=[SiteInfo(**{**s, "partitions": tuple(s["partitions"])}) for s in raw["sites"]],
            timings_s=dict(raw.get("timings_s", {})),
        )


# ---------------------------------------------------------------------------------------------
# I/O


def _run(
    argv: Sequence[str],
    *,
    env: Mapping[str, str] | None = None,
    stdin: str | None = None,
    timeout: float = 30.0,
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        env=dict(env) if env is not None else _daemon_env(),
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        raise RealSlurmError(
            f"{shlex.join(argv)} exited {result.returncode}: {result.stderr.strip()}"
        )
    return result


def _daemon_env(slurm_conf: Path | None = None) -> dict[str, str]:
    env = {"PATH": DAEMON_PATH, "LANG": "C.UTF-8", "HOME": "/root"}
    if slurm_conf is not None:
        env["SLURM_CONF"] = str(slurm_conf)
    return env


def _write(path: Path, text: str, mode: int = 0o644) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(mode)


# What a daemon that is still starting answers: ask again (anything else ends the wait).
_NOT_YET = (OSError, RealSlurmError, subprocess.TimeoutExpired)


def _port_open(address: str, port: int) -> bool:
    with contextlib.suppress(OSError), socket.create_connection((address, port), timeout=1.0):
        return True
    return False


# Daemons started by this Python process, kept so that they are waited for, not leaked.
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


class _Starter:
    """Starts daemons in their own sessions and records them in the deployment as it goes."""

    def __init__(self, deployment: Deployment, logs: Path) -> None:
        self.deployment = deployment
        self.logs = logs

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str]) -> processes.Child:
        child = processes.start(name, argv, self.logs / f"{name}.out", env=env)
        _CHILDREN[child.pid] = child.process
        self.deployment.daemons.append(Daemon(name, child.pid, Path(argv[0]).name))
        self.deployment.save()
        return child


def _require_root_and_tools() -> None:
    if os.geteuid() != 0:
        raise RealSlurmError("real Slurm needs root (run scripts/install-test-deps.sh as root)")
    tools = ["munged", "mariadbd", "mariadb-install-db", "slurmdbd", "slurmctld", "slurmd",
             "sshd", "ssh-keygen", "sacctmgr", "sinfo"]  # fmt: skip
    missing = [t for t in tools if shutil.which(t, path=DAEMON_PATH) is None]
    if missing:
        raise RealSlurmError(f"missing {missing}: run scripts/install-test-deps.sh")
    for user in (*TEST_USERS, ADMIN_USER, PRINCIPALS_COMMAND_USER):
        _run(["id", "-u", user])


def _install_principals_command(target: Path) -> None:
    """Copy the site guide's principals command where sshd accepts to run it (see above)."""
    try:
        source = repo_root() / PRINCIPALS_COMMAND_SOURCE
    except ControlPlaneError as error:
        raise RealSlurmError(f"cannot find {PRINCIPALS_COMMAND_SOURCE}: {error}") from error
    for directory in (target.parent.parent, target.parent):
        directory.mkdir(mode=0o755, exist_ok=True)
        os.chown(directory, 0, 0)
        directory.chmod(0o755)
    target.write_bytes(source.read_bytes())
    os.chown(target, 0, 0)
    target.chmod(0o755)


def _remove_principals_command(target: Path) -> None:
    target.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        target.parent.rmdir()


def _make_ca(key: Path) -> None:
    key.parent.mkdir(mode=0o700, exist_ok=True)
    _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", key.name, "-f", str(key)])


def up(
    root: Path,
    clusters: Sequence[ClusterSpec] = DEFAULT_CLUSTERS,
    *,
    min_job_age_s: int = DEFAULT_MIN_JOB_AGE_S,
    timeout: float = START_TIMEOUT_S,
) -> Deployment:
    """Write every config under `root` and start all daemons; stops what it started on failure."""
    _require_root_and_tools()
    started = time.monotonic()
    root = root.resolve()
    root.mkdir(parents=True, exist_ok=True)
    if (root / STATE_FILE).exists():
        raise RealSlurmError(f"{root / STATE_FILE} exists: run `down --dir {root}` first")
    # Test users' sbatch/squeue read slurm.conf and talk to munged under here; munged wants
    # every directory above its socket searchable by all.
    root.chmod(0o755)
    for directory in root.parents:
        mode = directory.stat().st_mode
        if mode & 0o111 != 0o111:
            raise RealSlurmError(f"{directory} is not searchable by all: choose another --dir")
    shared = SharedPaths(root)
    hostname = socket.gethostname().split(".")[0]
    _check_hostname_is_loopback(hostname)
    _check_ports_free(clusters)
    deployment = Deployment(root=str(root))
    deployment.save()
    shared.logs.mkdir(exist_ok=True)
    starter = _Starter(deployment, shared.logs)
    try:
        _up(deployment, starter, shared, clusters, hostname, min_job_age_s, timeout)
    except (TimeoutError, processes.ChildExited) as error:
        down(root)
        raise RealSlurmError(str(error)) from error
    except BaseException:
        down(root)
        raise
    deployment.timings_s["total"] = round(time.monotonic() - started, 3)
    deployment.save()
    CURRENT_POINTER.write_text(f"{root}\n")
    return deployment


def _check_hostname_is_loopback(hostname: str) -> None:
    """NoInAddrAny makes the Slurm daemons bind to the hostname's address: it must be loopback."""
    try:
        address = socket.gethostbyname(hostname)
    except OSError as error:
        raise RealSlurmError(f"hostname {hostname!r} does not resolve: {error}") from error
    if address != SLURM_ADDRESS:
        raise RealSlurmError(
            f"hostname {hostname!r} resolves to {address}, not {SLURM_ADDRESS}: the Slurm daemons"
            " would listen off loopback (add it to /etc/hosts as 127.0.0.1)"
        )


def _check_ports_free(clusters: Sequence[ClusterSpec]) -> None:
    endpoints = [(SHARED_ADDRESS, MARIADB_PORT)]
    for c in clusters:
        endpoints += [(SLURM_ADDRESS, c.slurmctld_port), (SLURM_ADDRESS, c.slurmd_port),
                      (SLURM_ADDRESS, c.slurmdbd_port), (c.address, c.ssh_port)]  # fmt: skip
    busy = [f"{a}:{p}" for a, p in endpoints if _port_open(a, p)]
    if busy:
        previous = CURRENT_POINTER.read_text().strip() if CURRENT_POINTER.exists() else "?"
        raise RealSlurmError(
            f"ports already in use: {', '.join(busy)}. Another real-Slurm deployment is running"
            f" (the last one started is in {previous}; stop it with"
            f" `python -m bbp_notebooks.devtools.realslurm down --dir {previous}`)"
        )


def _up(
    deployment: Deployment,
    starter: _Starter,
    shared: SharedPaths,
    clusters: Sequence[ClusterSpec],
    hostname: str,
    min_job_age_s: int,
    timeout: float,
) -> None:
    t0 = time.monotonic()

    def mark(step: str) -> None:
        deployment.timings_s[step] = round(time.monotonic() - t0, 3)

    # munge
    shared.munge_key.parent.mkdir(mode=0o755, exist_ok=True)
    _write(shared.munge_key, "", 0o600)
    shared.munge_key.unlink()
    _run(["mungekey", "--create", f"--keyfile={shared.munge_key}"])
    munged = starter.start(
        "munged",
        [
            "/usr/sbin/munged", "--foreground",
            f"--socket={shared.munge_socket}",
            f"--key-file={shared.munge_key}",
            f"--pid-file={shared.root}/munge/munged.pid",
            f"--seed-file={shared.root}/munge/munged.seed",
            f"--log-file={shared.logs}/munged.log",
        ],
        _daemon_env(),
    )  # fmt: skip

    def munged_ready() -> bool:
        munged.check_alive()
        return shared.munge_socket.exists()

    wait_until(munged_ready, timeout, "munged", 0.2, retry_on=_NOT_YET)
    mark("munged")

    # MariaDB for slurmdbd
    db_password = secrets.token_urlsafe(18)
    _run(
        [
            "mariadb-install-db", "--no-defaults", f"--datadir={shared.db_dir}", "--user=root",
            "--auth-root-authentication-method=socket", "--skip-test-db",
        ],
        timeout=timeout,
    )  # fmt: skip
    mariadbd = starter.start(
        "mariadbd",
        [
            "/usr/sbin/mariadbd", "--no-defaults", f"--datadir={shared.db_dir}",
            f"--socket={shared.db_socket}", f"--bind-address={SHARED_ADDRESS}",
            f"--port={MARIADB_PORT}", "--user=root", f"--pid-file={shared.root}/mariadbd.pid",
            f"--log-error={shared.logs}/mariadbd.log", "--innodb-buffer-pool-size=64M",
            "--skip-name-resolve",
        ],
        _daemon_env(),
    )  # fmt: skip
    mariadb = ["mariadb", "--no-defaults", f"--socket={shared.db_socket}", "-uroot"]

    def db_ready() -> bool:
        mariadbd.check_alive()
        _run([*mariadb, "-e", "SELECT 1"], timeout=5)
        return True

    wait_until(db_ready, timeout, "mariadbd", 0.2, retry_on=_NOT_YET)
    # The password travels on stdin, never in argv.
    grants = "".join(f"GRANT ALL ON {database_name(c)}.* TO 'slurm'@'127.%';\n" for c in clusters)
    _run(mariadb, stdin=f"CREATE USER 'slurm'@'127.%' IDENTIFIED BY '{db_password}';\n{grants}")
    mark("mariadbd")

    # slurmdbd per cluster (reads slurmdbd.conf beside $SLURM_CONF), started together
    cluster_paths = [_cluster_paths(shared.root, c) for c in clusters]
    dbds: list[tuple[ClusterSpec, dict[str, str], processes.Child]] = []
    for cluster, paths in zip(clusters, cluster_paths, strict=True):
        paths.state_save.mkdir(parents=True, exist_ok=True)
        (paths.spool / f"slurmd-{cluster.node_name}").mkdir(parents=True, exist_ok=True)
        paths.root.chmod(0o755)
        _write(
            paths.slurm_conf,
            slurm_conf(cluster, paths, shared, hostname=hostname, min_job_age_s=min_job_age_s),
        )
        _write(
            paths.slurmdbd_conf,
            slurmdbd_conf(cluster, paths, shared, hostname=hostname, db_password=db_password),
            0o600,
        )
        env = _daemon_env(paths.slurm_conf)
        dbd = starter.start(f"{cluster.name}-slurmdbd", ["/usr/sbin/slurmdbd", "-D"], env)
        dbds.append((cluster, env, dbd))
    for cluster, env, dbd in dbds:

        def dbd_ready(p: processes.Child = dbd, c: ClusterSpec = cluster,
                      e: dict[str, str] = env) -> bool:  # fmt: skip
            p.check_alive()
            _run(["sacctmgr", "-n", "show", "cluster"], env=e, timeout=10)
            return True

        wait_until(dbd_ready, timeout, f"{cluster.name} slurmdbd", 0.2, retry_on=_NOT_YET)
        for argv in sacctmgr_setup_commands(cluster):
            _run(argv, env=env)
    mark("slurmdbd")

    # CAs
    _make_ca(shared.host_ca_key)
    _make_ca(shared.user_ca_key)
    host_ca_public = Path(f"{shared.host_ca_key}.pub").read_text()

    # Controllers, then nodes
    controllers: list[tuple[ClusterSpec, ClusterPaths, processes.Child]] = []
    for cluster, paths in zip(clusters, cluster_paths, strict=True):
        slurmctld = starter.start(
            f"{cluster.name}-slurmctld",
            ["/usr/sbin/slurmctld", "-D", "-i"],
            _daemon_env(paths.slurm_conf),
        )
        controllers.append((cluster, paths, slurmctld))
    for cluster, paths, slurmctld in controllers:
        env = _daemon_env(paths.slurm_conf)

        def ctld_ready(p: processes.Child = slurmctld, c: ClusterSpec = cluster,
                       e: dict[str, str] = env) -> bool:  # fmt: skip
            p.check_alive()
            return "UP" in _run(["scontrol", "ping"], env=e, timeout=10).stdout

        wait_until(ctld_ready, timeout, f"{cluster.name} slurmctld", 0.2, retry_on=_NOT_YET)
        starter.start(
            f"{cluster.name}-slurmd", ["/usr/sbin/slurmd", "-D", "-N", cluster.node_name], env
        )
    mark("slurmctld")

    # sshd frontends
    Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    _install_principals_command(shared.principals_command)
    for cluster in clusters:
        paths = _cluster_paths(shared.root, cluster)
        _run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", f"{cluster.name}-frontend",
              "-f", str(paths.host_key)])  # fmt: skip
        _run(
            [
                "ssh-keygen", "-q", "-s", str(shared.host_ca_key), "-h",
                "-I", f"{cluster.name}-frontend", "-n", f"{cluster.address},{cluster.name}",
                "-V", "-5m:+520w", f"{paths.host_key}.pub",
            ]
        )  # fmt: skip
        _write(paths.sshd_config, sshd_config(cluster, paths, shared))
        _run(["/usr/sbin/sshd", "-t", "-f", str(paths.sshd_config)])
        sshd = starter.start(
            f"{cluster.name}-sshd",
            ["/usr/sbin/sshd", "-D", "-e", "-f", str(paths.sshd_config)],
            _daemon_env(),
        )

        def sshd_ready(p: processes.Child = sshd, c: ClusterSpec = cluster) -> bool:
            p.check_alive()
            return _port_open(c.address, c.ssh_port)

        wait_until(sshd_ready, timeout, f"{cluster.name} sshd", 0.2, retry_on=_NOT_YET)
    mark("sshd")

    # Nodes idle
    for cluster, paths, _ in controllers:
        env = _daemon_env(paths.slurm_conf)

        def node_idle(c: ClusterSpec = cluster, e: dict[str, str] = env) -> bool:
            out = _run(["sinfo", "-h", "-N", "-n", c.node_name, "-o", "%t"], env=e).stdout
            # one line per partition the node is in
            states = set(out.split())
            return bool(states) and states <= {"idle", "mix"}

        wait_until(
            node_idle,
            timeout,
            f"{cluster.name} node {cluster.node_name} idle",
            0.2,
            retry_on=_NOT_YET,
        )
        deployment.sites.append(
            SiteInfo(
                name=cluster.name,
                ssh_host=cluster.address,
                ssh_port=cluster.ssh_port,
                known_hosts=known_hosts_line(cluster, host_ca_public),
                user_ca_key=str(shared.user_ca_key),
                slurm_conf=str(paths.slurm_conf),
                first_job_id=cluster.first_job_id,
                node_name=cluster.node_name,
                partitions=tuple(p.name for p in cluster.partitions),
                default_partition=next(p.name for p in cluster.partitions if p.default),
                accounts={u: list(a) for u, a in cluster.accounts.items()},
            )
        )
    mark("nodes_idle")
    deployment.save()


def _is_ours(daemon: Daemon) -> bool:
    """True while PID still runs the executable we started (PIDs get reused)."""
    try:
        exe = os.readlink(f"/proc/{daemon.pid}/exe")
    except OSError:
        return False
    return Path(exe.removesuffix(" (deleted)")).name.startswith(daemon.executable.split("-")[0])


def down(root: Path, *, timeout: float = STOP_TIMEOUT_S) -> list[str]:
    """Stop the daemons recorded in `root`/state.json (newest first); returns their names."""
    state = root.resolve() / STATE_FILE
    if not state.exists():
        return []
    root = root.resolve()
    deployment = Deployment.load(root)
    _cancel_all_jobs(root)
    stopped: list[str] = []
    for daemon in reversed(deployment.daemons):
        if not _is_ours(daemon):
            _reap(daemon.pid)
            continue
        _stop(daemon, timeout)
        stopped.append(daemon.name)
    stopped += _kill_strays(root, timeout)
    _remove_principals_command(SharedPaths(root).principals_command)
    state.unlink()
    return stopped


def stop_daemon(deployment: Deployment, name: str, timeout: float = STOP_TIMEOUT_S) -> bool:
    """Stop one recorded daemon (SIGTERM, SIGKILL after ``timeout``) and reap it; True when
    gone."""
    return _stop(next(d for d in deployment.daemons if d.name == name), timeout)


def _stop(daemon: Daemon, timeout: float) -> bool:
    def running() -> bool:
        _reap(daemon.pid)
        return _is_ours(daemon)

    gone = processes.stop_pid(daemon.pid, running=running, grace=timeout, kill_wait=5.0)
    _reap(daemon.pid)
    return gone


def _cancel_all_jobs(root: Path) -> None:
    """Best effort: scancel every job while the controllers still run (jobs outlive slurmd)."""
    for conf in sorted(root.glob("*/slurm.conf")):
        env = _daemon_env(conf)
        try:
            ids = _run(["squeue", "-h", "-o", "%i"], env=env, timeout=15).stdout.split()
            if ids:
                _run(["scancel", *ids], env=env, timeout=15)

                def queue_empty(e: dict[str, str] = env) -> bool:
                    return not _run(["squeue", "-h", "-o", "%i"], env=e).stdout.strip()

                wait_until(
                    queue_empty, 15, f"jobs of {conf.parent.name} to end", 0.2, retry_on=_NOT_YET
                )
        except (RealSlurmError, subprocess.TimeoutExpired, TimeoutError):
            continue


def _kill_strays(root: Path, timeout: float) -> list[str]:
    """Kill what outlived the daemons: slurmstepd and job scripts, sshd sessions still open."""
    strays = _stray_pids(root)
    if not strays:
        return []
    children: dict[int, list[int]] = {}
    for pid, ppid in _parents().items():
        children.setdefault(ppid, []).append(pid)
    victims: list[int] = []
    pending = list(strays)
    while pending:  # strays and all their descendants (the job's own processes)
        pid = pending.pop()
        if pid not in victims and pid != os.getpid():
            victims.append(pid)
            pending += children.get(pid, [])
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for pid in victims:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, sig)
        deadline = time.monotonic() + (timeout if sig == signal.SIGTERM else 5.0)
        while time.monotonic() < deadline and any(_alive(p) for p in victims):
            for pid in victims:
                _reap(pid)
            time.sleep(0.05)
    return [f"stray pid {pid}" for pid in victims]


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def _parents() -> dict[int, int]:
    parents: dict[int, int] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                stat = (entry / "stat").read_text()
                parents[int(entry.name)] = int(stat.rsplit(")", 1)[1].split()[1])
    return parents


def _stray_pids(root: Path) -> list[int]:
    """Live processes tied to this deployment: a path under root open or on their command line
    (slurmstepd keeps slurmd's log open; job scripts live in the spool), or an sshd holding a
    connection to one of our frontends."""
    prefix = f"{root}/"
    ssh_inodes = _socket_inodes(_sshd_endpoints(root))
    strays: list[int] = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        pid = int(entry.name)
        if not _alive(pid):
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().decode(errors="replace")
            targets = [os.readlink(fd) for fd in (entry / "fd").iterdir()]
        except OSError:
            continue
        if prefix in cmdline or any(t.startswith(prefix) for t in targets):
            strays.append(pid)
        elif any(t.startswith("socket:[") and t[8:-1] in ssh_inodes for t in targets):
            strays.append(pid)
    return strays


def _sshd_endpoints(root: Path) -> set[str]:
    """Our frontends' listen addresses as /proc/net/tcp writes them (hex ip:port)."""
    endpoints: set[str] = set()
    for config in root.glob("*/sshd_config"):
        for line in config.read_text().splitlines():
            if line.startswith("ListenAddress "):
                address, port = line.split()[1].rsplit(":", 1)
                hex_ip = socket.inet_aton(address)[::-1].hex().upper()
                endpoints.add(f"{hex_ip}:{int(port):04X}")
    return endpoints


def _socket_inodes(local_endpoints: set[str]) -> set[str]:
    inodes: set[str] = set()
    with contextlib.suppress(OSError):
        for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
            fields = line.split()
            if len(fields) > 9 and fields[1] in local_endpoints:
                inodes.add(fields[9])
    return inodes


def _reap(pid: int) -> None:
    """Collect our own exited child so it does not linger as a zombie."""
    process = _CHILDREN.get(pid)
    if process is not None:  # started by this process: let Popen collect it (no ResourceWarning)
        if process.poll() is not None:
            del _CHILDREN[pid]
        return
    with contextlib.suppress(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)


# ---------------------------------------------------------------------------------------------
# Golden samples: real output of the Slurm client commands, captured from a running deployment


SQUEUE_FORMAT = "%i|%j|%u|%T|%r|%N|%S|%l|%L|%P|%a"
SINFO_FORMAT = "%P|%a|%F|%C"
SACCT_ARGV = [
    "sacct",
    "-X",
    "-n",
    "-P",
    "-o",
    "JobID,JobName,User,State,ExitCode,Start,End,NodeList",
]


@dataclass(frozen=True)
class Capture:
    name: str
    user: str
    site: str
    argv: tuple[str, ...]
    exit_status: int
    stdout: str
    stderr: str
    seconds: float


class SampleRecorder:
    """Runs client commands as a test user against a site and keeps what they printed."""

    def __init__(self, deployment: Deployment) -> None:
        self.deployment = deployment
        self.captures: list[Capture] = []
        self.notes: list[str] = []

    def run(
        self,
        site: str,
        user: str,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        name: str | None = None,
        timeout: float = 60.0,
    ) -> Capture:
        info = self.deployment.site(site)
        home = Path(pwd.getpwnam(user).pw_dir)
        env_argv = [
            "env",
            "-i",
            f"PATH={DAEMON_PATH}",
            "LANG=C.UTF-8",
            f"HOME={home}",
            f"USER={user}",
            f"SLURM_CONF={info.slurm_conf}",
        ]
        started = time.monotonic()
        result = subprocess.run(
            ["runuser", "-u", user, "--", *env_argv, *argv],
            input=stdin,
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=home,
            check=False,
        )
        capture = Capture(
            name=name or "",
            user=user,
            site=site,
            argv=tuple(argv),
            exit_status=result.returncode,
            stdout=result.stdout,
            stderr=result.stderr,
            seconds=round(time.monotonic() - started, 3),
        )
        if name:
            self.captures.append(capture)
        return capture

    def write(self, out_dir: Path, note: str) -> None:
        out_dir.mkdir(parents=True, exist_ok=True)
        index = [
            "# Real Slurm output samples",
            "",
            "Captured from OUR local runs of Debian 12 slurm-wlm "
            f"({_slurm_version()}) started by bbp_notebooks.devtools.realslurm",
            "(`python -m bbp_notebooks.devtools.realslurm samples --dir DIR --out DIR`).",
            "Each NAME.stdout.txt / NAME.stderr.txt is exactly what the command printed;",
            "job ids repeat on every capture (a fresh deployment each time); times do not. " + note,
            "",
            *(f"- {n}" for n in self.notes),
            "",
            "| name | site | user | command | exit | seconds |",
            "| --- | --- | --- | --- | --- | --- |",
        ]
        for c in self.captures:
            (out_dir / f"{c.name}.stdout.txt").write_text(c.stdout)
            stderr_path = out_dir / f"{c.name}.stderr.txt"
            if c.stderr:
                stderr_path.write_text(c.stderr)
            elif stderr_path.exists():
                stderr_path.unlink()
            command = shlex.join(c.argv).replace("|", "\\|")
            index.append(
                f"| {c.name} | {c.site} | {c.user} | `{command}` | {c.exit_status} | {c.seconds} |"
            )
        (out_dir / "INDEX.md").write_text("\n".join(index) + "\n")


def _slurm_version() -> str:
    return (
        subprocess.run(
            ["dpkg-query", "-W", "-f=${Version}", "slurm-client"],
            capture_output=True,
            text=True,
            check=False,
        ).stdout.strip()
        or "unknown"
    )


def _script(body: str) -> str:
    return "#!/bin/bash\n" + body + "\n"


def _wait_state(
    rec: SampleRecorder, site: str, job_id: str, states: set[str], timeout: float = 30.0
) -> str:
    """The job's state once it is one of `states`, or "" once it has left the queue."""

    def reached() -> tuple[str] | None:
        state = rec.run(site, "root", ["squeue", "-h", "-j", job_id, "-o", "%T"]).stdout.strip()
        return (state,) if state in states or not state else None

    (state,) = wait_until(reached, timeout, f"job {job_id} to reach {sorted(states)} or leave")
    return state


def _wait_sacct(rec: SampleRecorder, site: str, job_id: str, timeout: float = 30.0) -> None:
    """Wait until slurmdbd has the job's end (accounting is asynchronous)."""

    def ended() -> bool:
        out = rec.run(site, "root", ["sacct", "-X", "-n", "-P", "-j", job_id, "-o", "End"]).stdout
        return bool(out.strip()) and "Unknown" not in out

    wait_until(ended, timeout, f"sacct to have the end of job {job_id}", 0.2)


def capture_samples(deployment: Deployment, out_dir: Path) -> list[Capture]:
    """Exercise both sites as alice and bob and write every output under out_dir."""
    rec = SampleRecorder(deployment)
    gva, lug = "geneva", "lugano"
    for site in (gva, lug):  # a clean queue: pending leftovers would delay every new job
        for user in TEST_USERS:
            rec.run(site, "root", ["scancel", "-u", user])
    rec.run(gva, "alice", ["sinfo", "-V"], name="sinfo_version")
    rec.run(gva, "alice", ["sinfo", "-h", "-o", SINFO_FORMAT], name="sinfo_geneva_idle")
    rec.run(lug, "alice", ["sinfo", "-h", "-o", SINFO_FORMAT], name="sinfo_lugano_idle")
    rec.run(gva, "alice", ["sinfo"], name="sinfo_default_format_geneva")
    for site in (gva, lug):
        rec.run(
            site,
            "alice",
            [
                "sacctmgr",
                "-n",
                "-P",
                "show",
                "assoc",
                "where",
                "user=alice",
                "format=Cluster,Account,User",
            ],
            name=f"sacctmgr_assoc_alice_{site}",
        )
        rec.run(
            site,
            "alice",
            ["sacctmgr", "-n", "-P", "show", "user", "alice", "format=User,DefaultAccount"],
            name=f"sacctmgr_user_alice_{site}",
        )
    rec.run(
        lug,
        "bob",
        ["sacctmgr", "-n", "-P", "show", "assoc", "where", "user=bob", "format=Account"],
        name="sacctmgr_assoc_bob_lugano_accounts_only",
    )

    # A job that will hit its 1-minute limit (checked at the end)
    timeout_job = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-J", "bbpnb-sample-timeout", "-t", "1"],
        stdin=_script("sleep 600"),
    ).stdout.strip()
    # Submissions (on a fresh deployment: timeout 1000000, plain 1000001, run 1000002)
    rec.run(
        gva,
        "alice",
        ["sbatch", "-J", "bbpnb-sample-plain", "-t", "5"],
        stdin=_script("sleep 1"),
        name="sbatch_not_parsable_ok",
    )
    long_job = _script("id -un; hostname; echo $SLURM_CLUSTER_NAME $SLURMD_NODENAME; sleep 300")
    sub = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-J", "bbpnb-sample-run", "-t", "30", "-c", "2", "--mem=1000"],
        stdin=long_job,
        name="sbatch_parsable_ok",
    )
    running = sub.stdout.strip()
    _wait_state(rec, gva, running, {"RUNNING"})
    # Fill the 8 CPUs (1 timeout + 2 run + 5) so the next job pends on Resources.
    filler = rec.run(
        gva,
        "bob",
        ["sbatch", "--parsable", "-J", "bbpnb-sample-filler", "-t", "30", "-c", "5"],
        stdin=long_job,
    ).stdout.strip()
    _wait_state(rec, gva, filler, {"RUNNING"})
    pending = rec.run(
        gva,
        "alice",
        [
            "sbatch",
            "--parsable",
            "-J",
            "bbpnb-sample-pending",
            "-p",
            "debug",
            "-t",
            "60",
            "-c",
            "4",
        ],
        stdin=long_job,
    ).stdout.strip()
    dependent = rec.run(
        gva,
        "alice",
        [
            "sbatch",
            "--parsable",
            "-J",
            "bbpnb-sample-dep",
            f"--dependency=afterok:{running}",
            "-t",
            "1-00:00:00",
        ],
        stdin=long_job,
    ).stdout.strip()
    held = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-H", "-J", "bbpnb-sample-held", "-t", "10"],
        stdin=long_job,
    ).stdout.strip()
    time.sleep(1.5)
    rec.run(gva, "alice", ["squeue", "-h", "-o", SQUEUE_FORMAT], name="squeue_all_mixed_states")
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", ",".join([running, pending, dependent, held])],
        name="squeue_by_job_ids",
    )
    rec.run(
        gva, "alice", ["squeue", "-h", "-o", SQUEUE_FORMAT, "-u", "alice"], name="squeue_by_user"
    )
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-n", "bbpnb-sample-run"],
        name="squeue_by_name",
    )
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-n", "no-such-name"],
        name="squeue_by_name_no_match",
    )
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", "999"],
        name="squeue_unknown_job_id",
    )
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", f"{running},999"],
        name="squeue_known_and_unknown_job_ids",
    )
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", "abc"],
        name="squeue_invalid_job_id",
    )
    rec.run(gva, "alice", ["sinfo", "-h", "-o", SINFO_FORMAT], name="sinfo_geneva_busy")
    rec.run(gva, "alice", ["scontrol", "show", "job", running], name="scontrol_show_job_running")
    rec.run(gva, "alice", ["scontrol", "show", "job", pending], name="scontrol_show_job_pending")
    rec.run(gva, "alice", ["scontrol", "show", "job", "999"], name="scontrol_show_job_unknown")
    rec.run(
        gva, "alice", [*SACCT_ARGV, "-j", f"{running},{pending}"], name="sacct_running_and_pending"
    )

    # Submission errors
    rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-A", "proj16", "-t", "5"],
        stdin=_script("true"),
        name="sbatch_invalid_account",
    )
    rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-p", "nosuch", "-t", "5"],
        stdin=_script("true"),
        name="sbatch_invalid_partition",
    )
    over_limit = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-p", "debug", "-t", "02:00:00"],
        stdin=_script("true"),
        name="sbatch_time_limit_over_partition_max",
    )
    too_big = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-t", "5", "-c", "64"],
        stdin=_script("true"),
        name="sbatch_more_cpus_than_node",
    )
    rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-t", "5"],
        stdin="echo no shebang\n",
        name="sbatch_script_without_shebang",
    )
    rec.run(
        lug,
        "bob",
        ["sbatch", "--parsable", "-A", "proj16", "-t", "5"],
        stdin=_script("true"),
        name="sbatch_lugano_bob_not_in_account",
    )
    time.sleep(1.0)
    rec.run(
        gva,
        "alice",
        [
            "squeue",
            "-h",
            "-o",
            SQUEUE_FORMAT,
            "-j",
            f"{over_limit.stdout.strip()},{too_big.stdout.strip()}",
        ],
        name="squeue_unsatisfiable_jobs",
    )
    rec.run(gva, "alice", ["scancel", over_limit.stdout.strip(), too_big.stdout.strip()])
    lug_sub = rec.run(
        lug,
        "alice",
        ["sbatch", "--parsable", "-A", "proj42", "-t", "5"],
        stdin=_script("id -un; sleep 2"),
        name="sbatch_lugano_with_account",
    )
    rec.run(
        lug,
        "alice",
        ["sbatch", "--parsable", "-M", "lugano", "-t", "5"],
        stdin=_script("true"),
        name="sbatch_parsable_with_cluster_option",
    )

    # Cancel
    rec.run(gva, "bob", ["scancel", running], name="scancel_other_users_job")
    rec.run(gva, "alice", ["scancel", "999"], name="scancel_unknown_job_id")
    rec.run(gva, "alice", ["scancel", "-v", "999"], name="scancel_verbose_unknown_job_id")
    rec.run(gva, "alice", ["scancel", held], name="scancel_own_pending_job")
    rec.run(gva, "alice", ["scancel", running], name="scancel_own_running_job")
    time.sleep(0.5)
    rec.run(gva, "alice", ["scancel", running], name="scancel_already_cancelled_job")
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", f"{running},{held}"],
        name="squeue_recently_cancelled_jobs",
    )

    # Free the node: a pending higher-priority job would hold small jobs back until backfill.
    rec.run(gva, "root", ["scancel", filler, pending, dependent])
    time.sleep(0.5)

    # Ends of life for sacct: success, failure, signal, cancel
    ok = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-J", "bbpnb-sample-ok", "-t", "5"],
        stdin=_script("exit 0"),
    ).stdout.strip()
    failed = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-J", "bbpnb-sample-fail", "-t", "5"],
        stdin=_script("exit 3"),
    ).stdout.strip()
    killed = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-J", "bbpnb-sample-sig", "-t", "5"],
        stdin=_script("kill -9 $$"),
    ).stdout.strip()
    for job in (ok, failed, killed, running, held):
        _wait_sacct(rec, gva, job)
    time.sleep(0.5)
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", f"{ok},{failed},{killed}"],
        name="squeue_just_finished_jobs",
    )
    ids = ",".join([ok, failed, killed, running, held, pending])
    rec.run(gva, "alice", [*SACCT_ARGV, "-j", ids], name="sacct_ends_of_life")
    rec.run(
        gva,
        "alice",
        [
            "sacct",
            "-n",
            "-P",
            "-o",
            "JobID,JobName,User,State,ExitCode,Start,End,NodeList",
            "-j",
            ids,
        ],
        name="sacct_with_steps",
    )
    rec.run(gva, "bob", [*SACCT_ARGV, "-j", ids], name="sacct_other_users_jobs")
    rec.run(gva, "alice", [*SACCT_ARGV, "-j", "999"], name="sacct_unknown_job_id")
    rec.run(
        gva,
        "alice",
        [*SACCT_ARGV, "-j", lug_sub.stdout.strip()],
        name="sacct_geneva_asked_for_lugano_id",
    )
    rec.run(
        gva,
        "alice",
        ["sacct", "-X", "-n", "-P", "-c", "-j", ok],
        name="sacct_completion_flag_without_jobcomp",
    )

    # Leaving squeue: right after the end, then after MinJobAge
    short = rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-J", "bbpnb-sample-short", "-t", "5"],
        stdin=_script("sleep 2"),
    ).stdout.strip()
    _wait_state(rec, gva, short, {"RUNNING"})
    _wait_state(rec, gva, short, set(), timeout=30)  # default states: gone once not RUNNING
    ended = time.monotonic()
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-j", short],
        name="squeue_default_states_just_finished",
    )
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-t", "all", "-j", short],
        name="squeue_all_states_just_finished",
    )
    rec.run(
        gva, "alice", ["scontrol", "show", "job", short], name="scontrol_show_job_just_finished"
    )
    deadline = ended + 180
    while time.monotonic() < deadline:
        probe = rec.run(gva, "alice", ["squeue", "-h", "-t", "all", "-j", short, "-o", "%T"])
        if probe.exit_status != 0:
            break
        time.sleep(1)
    rec.notes.append(
        f"A finished job left `squeue -t all -j` {time.monotonic() - ended:.0f}s after it ended"
        f" (MinJobAge={_min_job_age(deployment, gva)}s; slurmctld purges on a timer)."
    )
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-t", "all", "-j", short],
        name="squeue_purged_job",
    )
    rec.run(gva, "alice", [*SACCT_ARGV, "-j", short], name="sacct_purged_job")

    # The 1-minute job has timed out by now or soon
    _wait_state(rec, gva, timeout_job, set(), timeout=150)
    _wait_sacct(rec, gva, timeout_job)
    rec.run(gva, "alice", [*SACCT_ARGV, "-j", timeout_job], name="sacct_timeout")

    # Controller down: stop geneva's slurmctld, then ask
    stop_daemon(deployment, "geneva-slurmctld")
    rec.run(
        gva,
        "alice",
        ["squeue", "-h", "-o", SQUEUE_FORMAT, "-u", "alice"],
        name="controller_down_squeue",
    )
    rec.run(
        gva,
        "alice",
        ["sbatch", "--parsable", "-t", "5"],
        stdin=_script("true"),
        name="controller_down_sbatch",
    )
    rec.run(gva, "alice", ["scancel", ok], name="controller_down_scancel")
    rec.run(gva, "alice", ["sinfo", "-h", "-o", SINFO_FORMAT], name="controller_down_sinfo")
    rec.run(gva, "alice", [*SACCT_ARGV, "-j", ok], name="controller_down_sacct")
    rec.run(gva, "alice", ["sinfo", "-V"], name="controller_down_sinfo_version")
    restart_slurmctld(deployment, "geneva")
    rec.write(out_dir, "The controller_down_* samples were taken with geneva's slurmctld stopped.")
    return rec.captures


def _min_job_age(deployment: Deployment, site: str) -> str:
    for line in Path(deployment.site(site).slurm_conf).read_text().splitlines():
        if line.startswith("MinJobAge="):
            return line.removeprefix("MinJobAge=")
    return "?"


def restart_slurmctld(deployment: Deployment, site: str, timeout: float = START_TIMEOUT_S) -> None:
    """Start a stopped slurmctld again (recovering its state) and wait until it answers."""
    info = deployment.site(site)
    name = f"{site}-slurmctld"
    deployment.daemons = [d for d in deployment.daemons if d.name != name]
    starter = _Starter(deployment, SharedPaths(Path(deployment.root)).logs)
    env = _daemon_env(Path(info.slurm_conf))
    process = starter.start(name, ["/usr/sbin/slurmctld", "-D"], env)

    def ready() -> bool:
        process.check_alive()
        return "UP" in _run(["scontrol", "ping"], env=env, timeout=10).stdout

    wait_until(ready, timeout, f"{site} slurmctld", 0.2, retry_on=_NOT_YET)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bbp_notebooks.devtools.realslurm")
    parser.add_argument("action", choices=["up", "down", "samples"])
    parser.add_argument("--dir", required=True, type=Path, help="where configs/state/logs go")
    parser.add_argument("--min-job-age", type=int, default=DEFAULT_MIN_JOB_AGE_S)
    parser.add_argument(
        "--out",
        type=Path,
        help="samples: start a fresh deployment in --dir, capture real client"
        " output into --out, stop it",
    )
    args = parser.parse_args(argv)
    try:
        if args.action == "up":
            deployment = up(args.dir, min_job_age_s=args.min_job_age)
            json.dump(asdict(deployment), sys.stdout, indent=2)
            sys.stdout.write("\n")
        elif args.action == "samples":
            if args.out is None:
                parser.error("samples needs --out")
            # A fresh deployment, so job ids in the samples are the same on every capture.
            deployment = up(args.dir, min_job_age_s=args.min_job_age)
            try:
                for capture in capture_samples(deployment, args.out.resolve()):
                    print(f"{capture.name}: exit {capture.exit_status} in {capture.seconds}s")
            finally:
                deployment.save()
                down(args.dir)
        else:
            for name in down(args.dir):
                print(f"stopped {name}")
    except (RealSlurmError, TimeoutError) as error:
        print(f"realslurm: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
