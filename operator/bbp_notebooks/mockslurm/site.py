"""A mock Slurm site: controller + compute "nodes" + ssh login node, with a Python fault API."""

from __future__ import annotations

import asyncio
import logging
import os
import shutil
import stat
import tempfile
import time
from functools import partial
from pathlib import Path

import asyncssh

from bbp_notebooks.mockslurm.cluster import Cluster, Faults, Job, JobState
from bbp_notebooks.mockslurm.config import SiteConfig
from bbp_notebooks.mockslurm.processes import ProcessRunner
from bbp_notebooks.mockslurm.sshd import LoginServer

log = logging.getLogger(__name__)


def load_or_create_host_key(path: Path) -> asyncssh.SSHKey:
    """A stable host key: read it, or generate an ed25519 key once and keep it (mode 0600)."""
    if path.exists():
        return asyncssh.read_private_key(str(path))
    path.parent.mkdir(parents=True, exist_ok=True)
    key = asyncssh.generate_private_key("ssh-ed25519")
    fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(key.export_private_key())
    return key


def host_principals(config: SiteConfig) -> list[str]:
    """The names a client may know this site's login node by, all in its host certificate."""
    names = [config.address, config.name, f"{config.name}-login", "localhost"]
    return list(dict.fromkeys([*names, *config.host_principals]))


def _spool_dir(config: SiteConfig) -> tuple[Path, bool]:
    """Where job scripts live. Jobs running as other users must reach it (like slurmd's
    /var/spool/slurmd), so when the state directory is private, use a fresh one under /tmp."""
    spool = config.state_dir / "spool"
    if os.geteuid() != 0 or not config.run_as_users or _traversable(config.state_dir):
        spool.mkdir(parents=True, exist_ok=True)
        return spool, False
    private = Path(tempfile.mkdtemp(prefix=f"mockslurm-{config.name}-spool-"))
    os.chmod(private, 0o711)  # noqa: S103 - job users must traverse, like slurmd spool
    return private, True


def _traversable(path: Path) -> bool:
    current = path.resolve()
    for directory in [current, *current.parents]:
        try:
            if not os.stat(directory).st_mode & stat.S_IXOTH:
                return False
        except OSError:
            return False
    return True


class MockSite:
    """Run with `await site.start()` / `await site.stop()` (or `async with site`)."""

    def __init__(self, config: SiteConfig):
        self.config = config
        config.state_dir.mkdir(parents=True, exist_ok=True)
        self.spool_dir, self._own_spool = _spool_dir(config)
        self.runner = ProcessRunner(self.spool_dir, config.run_as_users)
        self.cluster = Cluster(config, self.runner)
        self.host_key = load_or_create_host_key(
            config.host_key_path or config.state_dir / "ssh_host_ed25519_key"
        )
        self.host_certificate = self._host_certificate()
        self._server: asyncssh.SSHAcceptor | None = None
        self._scheduler: asyncio.Task[None] | None = None
        self.port = config.port

    # ---- lifecycle

    async def start(self) -> None:
        if self._scheduler is None:
            self._scheduler = asyncio.get_running_loop().create_task(self.cluster.run())
        await self.start_ssh()

    async def start_ssh(self) -> None:
        if self._server is not None:
            return
        certs = [self.host_certificate] if self.host_certificate is not None else ()
        self._server = await asyncssh.create_server(
            partial(LoginServer, self),
            self.config.address,
            self.port,
            server_host_keys=[self.host_key],
            server_host_certs=certs,
            allow_pty=False,
            x11_forwarding=False,
            agent_forwarding=False,
            allow_scp=False,
            sftp_factory=None,
            keepalive_interval=0,
        )
        sockets = self._server.sockets
        if sockets:
            self.port = sockets[0].getsockname()[1]
        log.info("site %s: ssh on %s:%s", self.config.name, self.config.address, self.port)

    async def stop_ssh(self) -> None:
        """Stop listening and drop connections (a login node going away)."""
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
            self._server = None

    async def stop(self) -> None:
        await self.stop_ssh()
        if self._scheduler is not None:
            self.cluster.stop()
            try:
                async with asyncio.timeout(5):
                    await self._scheduler
            except TimeoutError:
                self._scheduler.cancel()
            self._scheduler = None
        # Saved before the processes are killed: a restart reports them as NODE_FAIL.
        self.cluster.save_jobs()
        await self.runner.shutdown(self.cluster)
        if self._own_spool:
            shutil.rmtree(self.spool_dir, ignore_errors=True)

    async def __aenter__(self) -> MockSite:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    # ---- what clients need to connect

    @property
    def address(self) -> str:
        return self.config.address

    def host_public_key(self) -> str:
        return self.host_key.export_public_key().decode().strip()

    def known_hosts(self) -> str:
        """An OpenSSH known_hosts line for this site ("[addr]:port key", port 22 bare)."""
        host = self.address if self.port == 22 else f"[{self.address}]:{self.port}"
        return f"{host} {self.host_public_key()}\n"

    def _host_certificate(self) -> asyncssh.SSHCertificate | None:
        config = self.config
        if config.host_ca_key_path is not None:
            ca = asyncssh.read_private_key(str(config.host_ca_key_path))
            cert = ca.generate_host_certificate(
                self.host_key,
                f"{config.name}-login",
                principals=host_principals(config),
                valid_after="-5m",
                valid_before="+3650d",
            )
            if config.host_certificate_path is not None:
                config.host_certificate_path.parent.mkdir(parents=True, exist_ok=True)
                cert.write_certificate(str(config.host_certificate_path))
            return cert
        if config.host_certificate_path is not None and config.host_certificate_path.exists():
            return asyncssh.read_certificate(str(config.host_certificate_path))
        return None

    # ---- inspection

    def job(self, job_id: int) -> Job:
        return self.cluster.accounting[job_id]

    def jobs(self) -> list[dict[str, object]]:
        now = time.time()
        return [job.to_dict(now) for job in self.cluster.accounting.values()]

    @property
    def command_counts(self) -> dict[str, int]:
        return dict(self.cluster.command_counts)

    def reset_command_counts(self) -> None:
        self.cluster.command_counts.clear()

    # ---- faults

    @property
    def faults(self) -> Faults:
        return self.cluster.faults

    @property
    def ssh_running(self) -> bool:
        return self._server is not None

    def set_faults(
        self,
        *,
        controller_down: bool | None = None,
        controller_latency: float | None = None,
        ssh_refused: bool | None = None,
        stuck_pending: bool | None = None,
        hold_new: bool | None = None,
        sbatch_response_lost: bool | None = None,
        database_down: bool | None = None,
        controller_down_delay: float | None = None,
        sbatch_latency: float | None = None,
        private_jobs: bool | None = None,
        private_job_ids: list[int] | None = None,
    ) -> None:
        faults = self.cluster.faults
        if controller_down is not None:
            faults.controller_down = controller_down
        if controller_latency is not None:
            faults.controller_latency = controller_latency
        if ssh_refused is not None:
            faults.ssh_refused = ssh_refused
        if stuck_pending is not None:
            faults.stuck_pending = stuck_pending
        if hold_new is not None:
            faults.hold_new = hold_new
        if sbatch_response_lost is not None:
            faults.sbatch_response_lost = sbatch_response_lost
        if database_down is not None:
            faults.database_down = database_down
        if sbatch_latency is not None:
            faults.sbatch_latency = sbatch_latency
        if private_jobs is not None:
            faults.private_jobs = private_jobs
        if private_job_ids is not None:
            faults.private_job_ids = list(private_job_ids)
        if controller_down_delay is not None:
            self.config.controller_down_delay = controller_down_delay

    def clear_faults(self) -> None:
        self.set_faults(
            controller_down=False,
            controller_latency=0.0,
            ssh_refused=False,
            stuck_pending=False,
            sbatch_response_lost=False,
            database_down=False,
            sbatch_latency=0.0,
            private_jobs=False,
            private_job_ids=[],
        )

    def fail_node(self, name: str) -> None:
        self.cluster.fail_node(name)

    def resume_node(self, name: str) -> None:
        self.cluster.resume_node(name)

    def kill_job(self, job_id: int, state: str = "FAILED") -> None:
        """Kill a running job from outside Slurm: FAILED (signal 9) or CANCELLED (by root)."""
        self.cluster.kill_from_outside(self.job(job_id), JobState(state))

    async def wait_for_state(self, job_id: int, states: set[str], within: float = 10.0) -> Job:
        """Wait (with a deadline) until a job reaches one of the given base states."""
        deadline = time.monotonic() + within
        while True:
            job = self.cluster.accounting.get(job_id)
            if job is not None and job.state.value in states and not job.completing:
                return job
            if time.monotonic() > deadline:
                state = job.state_name() if job else "missing"
                raise TimeoutError(f"job {job_id} is {state}, not in {sorted(states)}")
            await asyncio.sleep(0.05)
