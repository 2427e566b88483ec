"""One interface over real Slurm 22.05 and the mock Slurm (see conftest.py's `site` fixture).

The mock is configured from the same ClusterSpecs that configure the real clusters
(bbp_notebooks.devtools.realslurm.GENEVA/LUGANO), so partitions, node names, CPUs, accounts,
first job ids, MinJobAge and KillWait agree by construction.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import datetime as dt
import pwd
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from pathlib import Path
from typing import Literal

import pytest

from bbp_notebooks.devtools import realslurm, topology
from bbp_notebooks.devtools.realslurm import ClusterSpec
from bbp_notebooks.mockslurm.config import NodeConfig, PartitionConfig, SiteConfig, UserConfig
from bbp_notebooks.mockslurm.site import MockSite
from bbp_notebooks.slurm.commands import JobSpec
from bbp_notebooks.ssh import (
    CertificateAuthority,
    CommandResult,
    Identity,
    SiteEndpoint,
    SlurmClient,
    SshError,
    SshPool,
)

Kind = Literal["real", "mock"]
SITE_NAMES = ("geneva", "lugano")
CLUSTERS: dict[str, ClusterSpec] = {c.name: c for c in realslurm.DEFAULT_CLUSTERS}
# The mock sites' ssh addresses; ports are picked by the kernel.
MOCK_ADDRESSES = {site.name: site.address for site in topology.EMULATED_SITES}
# Mirrors realslurm.slurm_conf: KillWait=5, MinJobAge=DEFAULT_MIN_JOB_AGE_S, no EnforcePartLimits.
KILL_WAIT_S = 5.0
# What real 22.05 clients take to give up on a stopped slurmctld (see tests/realslurm/samples).
CONTROLLER_DOWN_DELAY_S = 9.0
# Generous for real Slurm: squeue retries and takes ~18 s when slurmctld is down.
CLIENT_TIMEOUT_S = 45.0
# The 1-minute job submitted at start-up (geneva), checked for TIMEOUT by the last test.
TIMEOUT_JOB_LIMIT_MIN = 1
JOB_SCRIPT_SLEEP = "#!/bin/bash\nexec sleep 600\n"


@dataclasses.dataclass
class ContractSite:
    """One Slurm site as the operator sees it (a SlurmClient), plus the facts tests compare to."""

    kind: Kind
    name: str
    client: SlurmClient
    ca: CertificateAuthority
    first_job_id: int
    partitions: tuple[str, ...]
    default_partition: str
    accounts: dict[str, list[str]]
    node_name: str
    cpus_per_node: int
    min_job_age_s: float
    tag: str  # unique per run: job names and output files carry it
    _set_controller: Callable[[bool], Awaitable[None]]
    _identities: dict[str, Identity] = dataclasses.field(default_factory=dict)
    submitted: list[tuple[str, int]] = dataclasses.field(default_factory=list)

    def identity(self, user: str) -> Identity:
        """A certificate identity for a test user, minted by the CA the frontend trusts."""
        if user not in self._identities:
            self._identities[user] = self.ca.mint(user, dt.timedelta(minutes=30))
        return self._identities[user]

    def job_name(self, what: str) -> str:
        return f"bbpnb-contract-{self.tag}-{what}"

    def spec(
        self,
        what: str,
        *,
        partition: str | None = None,
        account: str | None = None,
        cpus: int = 1,
        minutes: int = 5,
    ) -> JobSpec:
        """A small job whose output lands in the user's home as <job name>-<id>.out."""
        name = self.job_name(what)
        return JobSpec(
            name=name,
            partition=partition,
            account=account,
            cpus_per_task=cpus,
            memory_mb=100,
            time_limit_minutes=minutes,
            output=f"{name}-%j.out",
        )

    async def submit(self, user: str, spec: JobSpec, script: str) -> int:
        """client.submit, remembering the job so that teardown can cancel it."""
        job_id = await self.client.submit(self.identity(user), spec, script)
        self.submitted.append((user, job_id))
        return job_id

    async def cancel_submitted(self) -> None:
        for user in sorted({user for user, _ in self.submitted}):
            ids = [job_id for owner, job_id in self.submitted if owner == user]
            with contextlib.suppress(SshError):
                await self.client.cancel(self.identity(user), ids)

    @staticmethod
    def output_file(user: str, spec: JobSpec, job_id: int) -> Path:
        assert spec.output is not None
        return Path(pwd.getpwnam(user).pw_dir) / spec.output.replace("%j", str(job_id))

    async def run(self, user: str, argv: Sequence[str], stdin: str | None = None) -> CommandResult:
        """A raw command as the user (for the fields the client does not parse)."""
        return await self.client.pool.run(
            self.client.endpoint,
            self.identity(user),
            argv,
            stdin=stdin,
            timeout=CLIENT_TIMEOUT_S,
            check=False,
        )

    @contextlib.asynccontextmanager
    async def controller_down(self) -> AsyncIterator[None]:
        """slurmctld unreachable inside the block (real: stopped; mock: the fault), back after."""
        await self._set_controller(False)
        try:
            yield
        finally:
            await self._set_controller(True)


@dataclasses.dataclass
class Contract:
    """Both sites of one kind; `timeout_job` is geneva's 1-minute job submitted at start-up."""

    kind: Kind
    geneva: ContractSite
    lugano: ContractSite
    timeout_job: int
    timeout_spec: JobSpec

    def __getitem__(self, name: str) -> ContractSite:
        return {"geneva": self.geneva, "lugano": self.lugano}[name]


def mock_site_config(cluster: ClusterSpec, state_dir: Path, user_ca: str) -> SiteConfig:
    """A mock site with the real cluster's shape: partitions, node, CPUs, accounts, ids, ages."""
    return SiteConfig(
        name=cluster.name,
        address=MOCK_ADDRESSES[cluster.name],
        port=0,
        state_dir=state_dir,
        host_ca_key_path=state_dir.parent / "host_ca",
        user_ca_keys=[user_ca],
        users=[
            *(
                UserConfig(name=user, accounts=list(accounts), default_account=accounts[0])
                for user, accounts in cluster.accounts.items()
            ),
            *(UserConfig(name=admin, admin_level="Operator") for admin in cluster.admins),
        ],
        nodes=[
            NodeConfig(names=cluster.node_name, cpus=cluster.cpus, memory_mb=cluster.real_memory_mb)
        ],
        partitions=[
            PartitionConfig(name=p.name, default=p.default, max_time=p.max_time)
            for p in cluster.partitions
        ],
        first_job_id=cluster.first_job_id,
        min_job_age=float(realslurm.DEFAULT_MIN_JOB_AGE_S),
        kill_wait=KILL_WAIT_S,
        # The real clusters do not set EnforcePartLimits: over-limit jobs pend, not fail.
        enforce_partition_limits=False,
        controller_down_delay=CONTROLLER_DOWN_DELAY_S,
        run_as_users=True,
    )


def make_site(
    kind: Kind,
    cluster: ClusterSpec,
    endpoint: SiteEndpoint,
    pool: SshPool,
    ca: CertificateAuthority,
    tag: str,
    set_controller: Callable[[bool], Awaitable[None]],
) -> ContractSite:
    default = next(p.name for p in cluster.partitions if p.default)
    return ContractSite(
        kind=kind,
        name=cluster.name,
        client=SlurmClient(pool, endpoint, timeout=CLIENT_TIMEOUT_S),
        ca=ca,
        first_job_id=cluster.first_job_id,
        partitions=tuple(p.name for p in cluster.partitions),
        default_partition=default,
        accounts={user: list(accounts) for user, accounts in cluster.accounts.items()},
        node_name=cluster.node_name,
        cpus_per_node=cluster.cpus,
        min_job_age_s=float(realslurm.DEFAULT_MIN_JOB_AGE_S),
        tag=tag,
        _set_controller=set_controller,
    )


def _stop_slurmctld(deployment: realslurm.Deployment, site: str) -> None:
    """Stop one cluster's slurmctld (by the PID the deployment recorded) and reap it."""
    if not realslurm.stop_daemon(deployment, f"{site}-slurmctld"):
        pytest.fail(f"{site} slurmctld did not stop")


def real_controller(
    deployment: realslurm.Deployment, site: str
) -> Callable[[bool], Awaitable[None]]:
    async def set_up(up: bool) -> None:
        if up:
            await asyncio.to_thread(realslurm.restart_slurmctld, deployment, site)
        else:
            await asyncio.to_thread(_stop_slurmctld, deployment, site)

    return set_up


def mock_controller(mock: MockSite) -> Callable[[bool], Awaitable[None]]:
    async def set_up(up: bool) -> None:
        mock.set_faults(controller_down=not up)

    return set_up


def remove_outputs(tag: str) -> None:
    for user in ("alice", "bob"):
        for path in Path(pwd.getpwnam(user).pw_dir).glob(f"bbpnb-contract-{tag}-*.out"):
            path.unlink(missing_ok=True)


async def submit_timeout_job(geneva: ContractSite) -> tuple[int, JobSpec]:
    spec = geneva.spec("timeout", minutes=TIMEOUT_JOB_LIMIT_MIN)
    return await geneva.submit("alice", spec, JOB_SCRIPT_SLEEP), spec
