"""The emulated controller: job table, nodes, FIFO scheduler, time limits, faults, accounting.

Everything here is synchronous and driven by `Cluster.tick()`; the process runner and the ssh
server are the only asynchronous edges.
"""

from __future__ import annotations

import asyncio
import grp
import json
import logging
import os
import pwd
import signal
import time
import zlib
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, fields
from enum import Enum
from pathlib import Path
from typing import Protocol

from bbp_notebooks.mockslurm.config import SiteConfig
from bbp_notebooks.mockslurm.formats import Minutes

log = logging.getLogger(__name__)

SLURM_VERSION = "22.05.8"
TOP_PRIORITY = 4294901760
# Pending reasons the scheduler passes over: a job over its partition's MaxTime, a held job.
NEVER_SCHEDULED = frozenset({"PartitionTimeLimit", "JobHeldAdmin"})
ID_BLOCK = 100


class JobState(Enum):
    PENDING = "PENDING"
    RUNNING = "RUNNING"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    CANCELLED = "CANCELLED"
    TIMEOUT = "TIMEOUT"
    NODE_FAIL = "NODE_FAIL"

    @property
    def compact(self) -> str:
        return _COMPACT[self]

    @property
    def finished(self) -> bool:
        return self not in (JobState.PENDING, JobState.RUNNING)


_COMPACT = {
    JobState.PENDING: "PD",
    JobState.RUNNING: "R",
    JobState.COMPLETED: "CD",
    JobState.FAILED: "F",
    JobState.CANCELLED: "CA",
    JobState.TIMEOUT: "TO",
    JobState.NODE_FAIL: "NF",
}


@dataclass(frozen=True)
class Identity:
    """A user as Slurm sees them, and whether jobs can really run as that POSIX user."""

    name: str
    uid: int
    gid: int
    group: str
    home: str
    posix: bool


@dataclass
class Job:
    job_id: int
    name: str
    user: Identity
    account: str
    partition: str
    comment: str | None
    time_limit: Minutes
    cpus_per_task: int
    cpus_per_task_set: bool
    memory_mb: int
    num_nodes: int
    workdir: str
    stdout_path: str
    stderr_path: str
    script: str
    command: str | None
    environment: dict[str, str]
    submit_time: float
    priority: int
    state: JobState = JobState.PENDING
    reason: str = "None"
    completing: bool = False
    start_time: float | None = None
    end_time: float | None = None
    nodes: list[str] = field(default_factory=list)
    ran: bool = False
    exit_status: int = 0
    exit_signal: int = 0
    batch_state: JobState | None = None
    cancelled_by: int | None = None
    pid: int | None = None
    kill_deadline: float | None = None
    export: str | None = None
    ntasks: int | None = None

    @property
    def tasks_per_node(self) -> int:
        return max(1, -(-(self.ntasks or 1) // self.num_nodes))

    @property
    def cpus_per_node(self) -> int:
        return self.cpus_per_task * self.tasks_per_node

    @property
    def num_cpus(self) -> int:
        return self.cpus_per_node * self.num_nodes

    def state_name(self) -> str:
        return "COMPLETING" if self.completing else self.state.value

    def state_compact(self) -> str:
        return "CG" if self.completing else self.state.compact

    def accounting_state(self) -> str:
        if self.state is JobState.CANCELLED and self.cancelled_by is not None:
            return f"CANCELLED by {self.cancelled_by}"
        return self.state.value

    def elapsed(self, now: float) -> int:
        if self.start_time is None:
            return 0
        end = self.end_time if self.end_time is not None else now
        return max(0, int(end) - int(self.start_time))

    def exit_code(self) -> str:
        """ExitCode of the job allocation ("status:signal")."""
        if self.state in (JobState.CANCELLED, JobState.TIMEOUT, JobState.NODE_FAIL):
            return "0:0"
        return f"{self.exit_status}:{self.exit_signal}"

    def batch_exit_code(self) -> str:
        return f"{self.exit_status}:{self.exit_signal}"

    def to_dict(self, now: float) -> dict[str, object]:
        return {
            "job_id": self.job_id,
            "name": self.name,
            "user": self.user.name,
            "uid": self.user.uid,
            "account": self.account,
            "partition": self.partition,
            "state": self.state_name(),
            "base_state": self.state.value,
            "reason": self.reason,
            "nodes": list(self.nodes),
            "time_limit_minutes": self.time_limit,
            "cpus_per_task": self.cpus_per_task,
            "memory_mb": self.memory_mb,
            "num_nodes": self.num_nodes,
            "submit_time": self.submit_time,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "elapsed_s": self.elapsed(now),
            "exit_code": self.exit_code(),
            "pid": self.pid,
            "workdir": self.workdir,
            "stdout": self.stdout_path,
            "comment": self.comment,
        }


@dataclass
class Node:
    name: str
    cpus: int
    memory_mb: int
    alloc_cpus: int = 0
    alloc_memory_mb: int = 0
    down: bool = False
    jobs: set[int] = field(default_factory=set)

    def fits(self, cpus: int, memory_mb: int) -> bool:
        return (
            not self.down
            and self.cpus - self.alloc_cpus >= cpus
            and self.memory_mb - self.alloc_memory_mb >= memory_mb
        )

    def state(self) -> str:
        """sinfo's compact node state."""
        if self.down:
            return "down*"
        if self.alloc_cpus == 0:
            return "idle"
        if self.alloc_cpus >= self.cpus:
            return "alloc"
        return "mix"


@dataclass
class Faults:
    """Injectable failures; every field can be flipped at any time, from tests or over HTTP."""

    def hides(self, job: Job, caller: str) -> bool:
        """Whether PrivateData keeps ``job`` from ``caller``'s squeue and sacct."""
        private = self.private_jobs or job.job_id in self.private_job_ids
        return private and job.user.name != caller

    controller_down: bool = False
    controller_latency: float = 0.0
    ssh_refused: bool = False
    stuck_pending: bool = False
    # Jobs submitted while this is set are held (PENDING, reason JobHeldAdmin, as `scontrol
    # hold` leaves them in slurmctld) and never start: the rest of the queue schedules as usual.
    hold_new: bool = False
    sbatch_response_lost: bool = False
    # slurmctld takes this long to register a submission (on top of controller_latency): the
    # job appears only then, after a client with a shorter deadline has given up on the answer.
    sbatch_latency: float = 0.0
    # PrivateData=jobs: squeue and sacct show a user only their own jobs (the monitor too).
    private_jobs: bool = False
    # The same for these jobs only (a job in a partition the monitor may not see).
    private_job_ids: list[int] = field(default_factory=list)
    database_down: bool = False

    def to_dict(self) -> dict[str, object]:
        return {
            "controller_down": self.controller_down,
            "controller_latency": self.controller_latency,
            "ssh_refused": self.ssh_refused,
            "stuck_pending": self.stuck_pending,
            "hold_new": self.hold_new,
            "sbatch_response_lost": self.sbatch_response_lost,
            "sbatch_latency": self.sbatch_latency,
            "private_jobs": self.private_jobs,
            "private_job_ids": list(self.private_job_ids),
            "database_down": self.database_down,
        }


class Runner(Protocol):
    """Starts a job's batch script and delivers signals to its process group."""

    def launch(self, cluster: Cluster, job: Job) -> None: ...

    def signal(self, job: Job, signum: int) -> bool: ...


class SubmitError(Exception):
    """A submission slurmctld rejects; the message is Slurm's error string, `notes` are the
    lines sbatch prints before it."""

    def __init__(self, message: str, notes: tuple[str, ...] = ()):
        super().__init__(message)
        self.notes = notes


@dataclass
class Partition:
    name: str
    nodes: list[str]
    default: bool
    max_time: Minutes
    default_time: Minutes


class Cluster:
    def __init__(self, config: SiteConfig, runner: Runner, clock: Callable[[], float] = time.time):
        self.config = config
        self.runner = runner
        self.clock = clock
        self.faults = Faults()
        self.command_counts: Counter[str] = Counter()
        self.nodes: dict[str, Node] = {}
        for group in config.nodes:
            for name in group.expanded():
                self.nodes[name] = Node(name, group.cpus, group.memory_mb)
        self.partitions: dict[str, Partition] = {}
        for spec in config.partitions:
            members = (
                list(self.nodes)
                if spec.nodes is None
                else [n for n in self.nodes if n in set(_expand(spec.nodes))]
            )
            self.partitions[spec.name] = Partition(
                spec.name, members, spec.default, spec.max_minutes, spec.default_minutes
            )
        self.default_partition = next((p.name for p in self.partitions.values() if p.default), None)
        self.jobs: dict[int, Job] = {}  # what slurmctld holds (squeue, scontrol)
        self.accounting: dict[int, Job] = {}  # what slurmdbd holds (sacct)
        self.pending: list[Job] = []
        self.running: dict[int, Job] = {}
        self.next_job_id = config.first_job_id
        self.version = 0
        self.stopped = False
        self._last_save = 0.0
        self._wakeup = asyncio.Event()
        self._estimate_cache: tuple[tuple[int, int], dict[int, float | None]] | None = None
        self._id_file = config.state_dir / "next_job_id"
        self._state_file = config.state_dir / "jobs.json"
        self._saved_version = -1
        self._load_next_job_id()
        self._reserved_ids = self.next_job_id
        self._load_jobs()

    # ---- identities

    def identity(self, name: str) -> Identity:
        try:
            entry = pwd.getpwnam(name)
        except KeyError:
            user = self.config.user(name)
            index = self.config.users.index(user) if user else zlib.crc32(name.encode()) % 1000
            uid = user.uid if user and user.uid is not None else 20000 + index
            home = self.config.state_dir / "home" / name
            return Identity(name, uid, uid, name, str(home), posix=False)
        try:
            group = grp.getgrgid(entry.pw_gid).gr_name
        except KeyError:
            group = str(entry.pw_gid)
        return Identity(name, entry.pw_uid, entry.pw_gid, group, entry.pw_dir, posix=True)

    def user_known(self, name: str) -> bool:
        if self.config.user(name) is not None:
            return True
        try:
            pwd.getpwnam(name)
        except KeyError:
            return False
        return True

    def uid_of(self, name: str) -> int | None:
        return self.identity(name).uid if self.user_known(name) else None

    def accounts_of(self, name: str) -> list[str]:
        user = self.config.user(name)
        return list(user.accounts) if user else []

    def default_account(self, name: str) -> str | None:
        user = self.config.user(name)
        if user is None or self.config.require_account:
            return None
        if user.default_account:
            return user.default_account
        return user.accounts[0] if user.accounts else None

    # ---- submission

    def submit(
        self,
        *,
        user: Identity,
        name: str,
        script: str,
        command: str | None,
        partition: str | None,
        account: str | None,
        time_limit: Minutes | str,
        cpus_per_task: int | None,
        memory_mb: int | None,
        num_nodes: int,
        workdir: str,
        stdout_pattern: str | None,
        stderr_pattern: str | None,
        comment: str | None,
        environment: dict[str, str],
        export: str | None = None,
        ntasks: int | None = None,
    ) -> Job:
        """Validate like slurmctld's job_allocate and queue the job; raises SubmitError."""
        part_name = partition or self.default_partition
        if part_name is None:
            raise SubmitError("No partition specified or system default partition")
        if "," in part_name:
            part_name = part_name.split(",")[0]
        part = self.partitions.get(part_name)
        if part is None:
            # sbatch checks the name itself first, then slurmctld refuses it (22.05 prints both).
            raise SubmitError(
                "Invalid partition name specified", (f"invalid partition specified: {part_name}",)
            )
        if account is None:
            account = self.default_account(user.name)
        if account is None or account not in self.accounts_of(user.name):
            raise SubmitError("Invalid account or account/partition combination specified")
        limit: Minutes = part.default_time if time_limit == "default" else time_limit  # type: ignore[assignment]
        over_limit = part.max_time is not None and (limit is None or limit > part.max_time)
        if over_limit and self.config.enforce_partition_limits:
            raise SubmitError("Requested time limit is invalid (missing or exceeds some limit)")
        cpus = (cpus_per_task or 1) * max(1, -(-(ntasks or 1) // num_nodes))
        memory = memory_mb or 0
        if num_nodes > len(part.nodes):
            raise SubmitError("Node count specification invalid")
        capable = [
            n
            for n in part.nodes
            if self.nodes[n].cpus >= cpus and self.nodes[n].memory_mb >= memory
        ]
        if len(capable) < num_nodes:
            notes: tuple[str, ...] = ()
            if memory and not any(self.nodes[n].memory_mb >= memory for n in part.nodes):
                notes = ("Memory specification can not be satisfied",)
            raise SubmitError("Requested node configuration is not available", notes)
        job_id = self.next_job_id
        self.next_job_id += 1
        if self.next_job_id > self._reserved_ids:
            # Persist a block of ids at a time: after a restart ids continue past the block.
            self._reserved_ids = self.next_job_id + ID_BLOCK
            self._save_next_job_id(self._reserved_ids)
        values = {"j": str(job_id), "u": user.name, "x": name, "A": str(job_id), "a": "4294967294"}
        stdout = _expand_pattern(stdout_pattern or "slurm-%j.out", values, workdir)
        stderr = _expand_pattern(stderr_pattern, values, workdir) if stderr_pattern else stdout
        job = Job(
            job_id=job_id,
            name=name,
            user=user,
            account=account,
            partition=part.name,
            comment=comment,
            time_limit=limit,
            cpus_per_task=cpus_per_task or 1,
            cpus_per_task_set=cpus_per_task is not None,
            memory_mb=memory,
            num_nodes=num_nodes,
            workdir=workdir,
            stdout_path=stdout,
            stderr_path=stderr,
            script=script,
            command=command,
            environment=environment,
            submit_time=self.clock(),
            priority=max(1, TOP_PRIORITY - (job_id - self.config.first_job_id)),
            export=export,
            ntasks=ntasks,
        )
        if over_limit:
            job.reason = "PartitionTimeLimit"
        elif self.faults.hold_new:
            job.reason = "JobHeldAdmin"
        self.jobs[job_id] = job
        self.accounting[job_id] = job
        self.pending.append(job)
        self._changed()
        return job

    # ---- cancellation and signals

    def cancel(self, job: Job, by_uid: int, signum: int = signal.SIGKILL) -> None:
        """scancel: pending jobs end at once, running ones get SIGTERM, then SIGKILL."""
        now = self.clock()
        if job.state is JobState.PENDING:
            self.pending.remove(job)
            job.state = JobState.CANCELLED
            job.cancelled_by = by_uid
            job.start_time = job.end_time = now
            self._changed()
            return
        if job.state is JobState.RUNNING:
            if signum != signal.SIGKILL:
                self.runner.signal(job, signum)
                return
            self._end_running(job, JobState.CANCELLED, signal.SIGTERM, by_uid=by_uid)

    def _end_running(
        self, job: Job, state: JobState, signum: int, by_uid: int | None = None
    ) -> None:
        job.state = state
        job.cancelled_by = by_uid
        job.end_time = self.clock()
        job.completing = True
        job.reason = {JobState.TIMEOUT: "TimeLimit", JobState.NODE_FAIL: "NodeDown"}.get(
            state, "None"
        )
        job.kill_deadline = self.clock() + (
            0 if signum == signal.SIGKILL else self.config.kill_wait
        )
        if job.pid is None or not self.runner.signal(job, signum):
            # Nothing left to signal (the launch is still under way or already gone).
            pass
        self._changed()

    def kill_from_outside(self, job: Job, state: JobState = JobState.FAILED) -> None:
        """A job dying for reasons of its own (OOM killer, admin kill -9): FAILED, or CANCELLED
        as if an administrator had run scancel."""
        if job.state is not JobState.RUNNING:
            raise ValueError(f"job {job.job_id} is not running")
        if state is JobState.CANCELLED:
            self._end_running(job, JobState.CANCELLED, signal.SIGKILL, by_uid=0)
        else:
            self.runner.signal(job, signal.SIGKILL)

    def set_time_limit(self, job: Job, minutes: Minutes) -> None:
        job.time_limit = minutes
        self._changed()

    # ---- nodes

    def fail_node(self, name: str) -> None:
        node = self.nodes[name]
        node.down = True
        for job_id in sorted(node.jobs):
            job = self.running.get(job_id)
            if job is not None and not job.completing:
                self._end_running(job, JobState.NODE_FAIL, signal.SIGKILL)
        self._changed()

    def resume_node(self, name: str) -> None:
        self.nodes[name].down = False
        self._changed()

    # ---- process callbacks

    def process_started(self, job: Job, pid: int) -> None:
        job.pid = pid
        if job.completing:  # cancelled while the process was being spawned
            self.runner.signal(job, signal.SIGTERM)

    def process_exited(self, job: Job, returncode: int) -> None:
        """The batch script ended; the job ends with it (unless it was already ending)."""
        now = self.clock()
        job.pid = None
        if returncode < 0:
            job.exit_status, job.exit_signal = 0, -returncode
        else:
            job.exit_status, job.exit_signal = returncode & 0xFF, 0
        if job.completing:
            job.completing = False
            job.batch_state = (
                JobState.CANCELLED if job.exit_signal else _result_state(job.exit_status, 0)
            )
        else:
            job.state = _result_state(job.exit_status, job.exit_signal)
            job.batch_state = job.state
            job.end_time = now
            if job.state is JobState.FAILED:
                job.reason = (
                    f"RaisedSignal:{job.exit_signal}({_signal_name(job.exit_signal)})"
                    if job.exit_signal
                    else "NonZeroExitCode"
                )
        job.kill_deadline = None
        self._release(job)
        log.info("%s: job %s ended %s (%s)", self.config.name, job.job_id,
                 job.accounting_state(), job.batch_exit_code())  # fmt: skip
        self._changed()

    # ---- the scheduler

    async def run(self) -> None:
        self.stopped = False
        while not self.stopped:
            try:
                self.tick()
            except Exception:  # one bad pass must not stop the controller
                log.exception("scheduler pass failed")
            self._wakeup.clear()
            # asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation.
            try:
                async with asyncio.timeout(self.config.sched_interval):
                    await self._wakeup.wait()
            except TimeoutError:
                pass

    def stop(self) -> None:
        self.stopped = True
        self._wakeup.set()

    def tick(self) -> None:
        now = self.clock()
        for job in list(self.running.values()):
            if job.completing:
                if job.kill_deadline is not None and now >= job.kill_deadline:
                    self.runner.signal(job, signal.SIGKILL)
                    job.kill_deadline = now + max(self.config.kill_wait, 1.0)
                continue
            if job.time_limit is not None and job.start_time is not None:
                if now >= job.start_time + job.time_limit * self.config.seconds_per_minute:
                    self._end_running(job, JobState.TIMEOUT, signal.SIGTERM)
        if not self.faults.stuck_pending:
            self._schedule(now)
        else:
            self._mark_blocked()
        self._purge(now)
        if (
            self.version != self._saved_version
            and now - self._last_save >= self.config.state_save_interval
        ):
            self.save_jobs()

    def _schedule(self, now: float) -> None:
        blocked: set[str] = set()
        started: list[Job] = []
        for job in self.pending:
            if job.reason in NEVER_SCHEDULED:
                continue
            if job.partition in blocked:
                if job.reason != "Priority":
                    job.reason = "Priority"
                continue
            nodes = self._find_nodes(job)
            if nodes is None:
                job.reason = "Resources"
                blocked.add(job.partition)
                if len(blocked) == len(self.partitions):
                    # Everything behind is waiting on priority; no need to look further.
                    for rest in self.pending[self.pending.index(job) + 1 :]:
                        if rest.reason != "Priority" and rest.reason not in NEVER_SCHEDULED:
                            rest.reason = "Priority"
                    break
                continue
            self._start(job, nodes, now)
            started.append(job)
        if started:
            started_ids = {job.job_id for job in started}
            self.pending = [job for job in self.pending if job.job_id not in started_ids]
            self._changed()

    def _mark_blocked(self) -> None:
        seen: set[str] = set()
        for job in self.pending:
            if job.reason in NEVER_SCHEDULED:
                continue
            job.reason = "Priority" if job.partition in seen else "Resources"
            seen.add(job.partition)

    def _find_nodes(self, job: Job) -> list[str] | None:
        chosen: list[str] = []
        for name in self.partitions[job.partition].nodes:
            if self.nodes[name].fits(job.cpus_per_node, job.memory_mb):
                chosen.append(name)
                if len(chosen) == job.num_nodes:
                    return chosen
        return None

    def _start(self, job: Job, nodes: list[str], now: float) -> None:
        for name in nodes:
            node = self.nodes[name]
            node.alloc_cpus += job.cpus_per_node
            node.alloc_memory_mb += job.memory_mb
            node.jobs.add(job.job_id)
        job.nodes = nodes
        job.state = JobState.RUNNING
        job.reason = "None"
        job.start_time = now
        job.ran = True
        job.batch_state = JobState.RUNNING
        self.running[job.job_id] = job
        log.info("%s: job %s of %s started on %s", self.config.name, job.job_id, job.user.name,
                 ",".join(nodes))  # fmt: skip
        self.runner.launch(self, job)

    def _release(self, job: Job) -> None:
        for name in job.nodes:
            node = self.nodes[name]
            if job.job_id in node.jobs:
                node.jobs.discard(job.job_id)
                node.alloc_cpus -= job.cpus_per_node
                node.alloc_memory_mb -= job.memory_mb
        self.running.pop(job.job_id, None)

    def _purge(self, now: float) -> None:
        age = self.config.min_job_age
        expired = [
            job_id
            for job_id, job in self.jobs.items()
            if job.state.finished
            and not job.completing
            and job.end_time is not None
            and now - job.end_time >= age
        ]
        for job_id in expired:
            del self.jobs[job_id]
        if expired:
            self._changed()

    def _changed(self) -> None:
        self.version += 1
        self._wakeup.set()

    # ---- start time estimates

    def estimated_starts(self) -> dict[int, float | None]:
        """When each pending job would start if running jobs used their whole time limit."""
        now = self.clock()
        key = (self.version, int(now))
        if self._estimate_cache is not None and self._estimate_cache[0] == key:
            return self._estimate_cache[1]
        inf = float("inf")
        free_at: dict[str, float] = {}
        for name, node in self.nodes.items():
            if node.down:
                free_at[name] = inf
                continue
            latest = now
            for job_id in node.jobs:
                job = self.running[job_id]
                if job.time_limit is None or job.start_time is None:
                    latest = inf
                else:
                    latest = max(
                        latest, job.start_time + job.time_limit * self.config.seconds_per_minute
                    )
            free_at[name] = latest
        estimates: dict[int, float | None] = {}
        floor: dict[str, float] = {}
        for job in self.pending:
            if job.reason in NEVER_SCHEDULED or self.faults.stuck_pending:
                estimates[job.job_id] = None
                continue
            members = sorted(self.partitions[job.partition].nodes, key=lambda n: free_at[n])
            chosen = members[: job.num_nodes]
            start = max([now, floor.get(job.partition, now)] + [free_at[n] for n in chosen])
            if start == inf:
                estimates[job.job_id] = None
                continue
            estimates[job.job_id] = start
            floor[job.partition] = start
            end = (
                inf
                if job.time_limit is None
                else start + job.time_limit * self.config.seconds_per_minute
            )
            for name in chosen:
                free_at[name] = end
        self._estimate_cache = (key, estimates)
        return estimates

    # ---- persistence (like slurmctld's StateSaveLocation)

    def save_jobs(self) -> None:
        """Write the job table; finished jobs are kept for sacct."""
        self._last_save = self.clock()
        self._saved_version = self.version
        records = [_job_record(job) for job in self.accounting.values()]
        visible = sorted(self.jobs)
        try:
            tmp = self._state_file.with_suffix(".tmp")
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            with os.fdopen(fd, "w") as handle:
                json.dump({"jobs": records, "in_squeue": visible}, handle)
            os.replace(tmp, self._state_file)
        except OSError:
            log.warning("cannot save the job table in %s", self._state_file)

    def _load_jobs(self) -> None:
        """Reload saved jobs. Their processes died with the previous emulator, so jobs that were
        running end NODE_FAIL (as if their node had rebooted); pending jobs queue again."""
        try:
            data = json.loads(self._state_file.read_text())
        except (OSError, ValueError):
            return
        now = self.clock()
        visible = set(data.get("in_squeue", []))
        for record in data.get("jobs", []):
            try:
                job = _job_from_record(record)
            except (KeyError, TypeError, ValueError):
                log.warning("skipping an unreadable saved job")
                continue
            if job.partition not in self.partitions:
                continue
            if job.state is JobState.RUNNING or job.completing:
                if job.state is JobState.RUNNING:
                    job.state = JobState.NODE_FAIL
                    job.reason = "NodeDown"
                    job.end_time = now
                job.completing = False
                job.batch_state = JobState.CANCELLED
                job.exit_status, job.exit_signal = 0, signal.SIGKILL
                job.pid = None
            self.accounting[job.job_id] = job
            if job.job_id in visible or job.state is JobState.NODE_FAIL:
                self.jobs[job.job_id] = job
            if job.state is JobState.PENDING:
                self.pending.append(job)
            self.next_job_id = max(self.next_job_id, job.job_id + 1)

    def _load_next_job_id(self) -> None:
        try:
            saved = int(self._id_file.read_text().strip())
        except (OSError, ValueError):
            return
        self.next_job_id = max(self.next_job_id, saved)

    def _save_next_job_id(self, value: int) -> None:
        try:
            self._id_file.parent.mkdir(parents=True, exist_ok=True)
            tmp = self._id_file.with_suffix(".tmp")
            tmp.write_text(f"{value}\n")
            os.replace(tmp, self._id_file)
        except OSError:
            log.warning("cannot persist the job id counter in %s", self._id_file)


def _job_record(job: Job) -> dict[str, object]:
    record = {f.name: getattr(job, f.name) for f in fields(Job)}
    record["user"] = asdict(job.user)
    record["state"] = job.state.value
    record["batch_state"] = job.batch_state.value if job.batch_state else None
    return record


def _job_from_record(record: dict[str, object]) -> Job:
    values = dict(record)
    values["user"] = Identity(**values["user"])  # type: ignore[arg-type]
    values["state"] = JobState(values["state"])
    batch = values.get("batch_state")
    values["batch_state"] = JobState(batch) if isinstance(batch, str) else None
    known = {f.name for f in fields(Job)}
    return Job(**{k: v for k, v in values.items() if k in known})  # type: ignore[arg-type]


def _result_state(exit_status: int, exit_signal: int) -> JobState:
    return JobState.COMPLETED if exit_status == 0 and exit_signal == 0 else JobState.FAILED


def _signal_name(signum: int) -> str:
    try:
        return signal.strsignal(signum) or str(signum)
    except ValueError:
        return str(signum)


def _expand(expression: str) -> list[str]:
    from bbp_notebooks.mockslurm.formats import expand_hostlist

    return expand_hostlist(expression)


def _expand_pattern(pattern: str, values: dict[str, str], workdir: str) -> str:
    """sbatch filename patterns (%j %u %x %A %a %N %%), relative to the working directory."""
    out = []
    index = 0
    while index < len(pattern):
        char = pattern[index]
        if char == "%" and index + 1 < len(pattern):
            nxt = pattern[index + 1]
            # %5j style zero padding
            digits = ""
            probe = index + 1
            while probe < len(pattern) and pattern[probe].isdigit():
                digits += pattern[probe]
                probe += 1
            if probe < len(pattern):
                nxt = pattern[probe]
            if nxt == "%":
                out.append("%")
                index = probe + 1
                continue
            if nxt in values or nxt == "N":
                value = values.get(nxt, "%N")
                if digits and value.isdigit():
                    value = value.zfill(int(digits))
                out.append(value)
                index = probe + 1
                continue
        out.append(char)
        index += 1
    path = "".join(out)
    return path if os.path.isabs(path) else str(Path(workdir) / path)
