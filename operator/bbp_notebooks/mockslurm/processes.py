"""Runs batch scripts as real processes, the way slurmd/slurmstepd would on a compute node.

The script is written to the spool and executed directly (its #! line picks the interpreter), in
its own session so the whole process group can be signalled, as the submitting POSIX user when
the emulator runs as root and that user exists.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import stat
from pathlib import Path

from bbp_notebooks.mockslurm.cluster import Cluster, Job
from bbp_notebooks.mockslurm.formats import compress_hostlist
from bbp_notebooks.mockslurm.srun import SCRIPT as SRUN_SCRIPT

log = logging.getLogger(__name__)


class OutputError(Exception):
    """The job's stdout/stderr file cannot be opened by its user."""


class ProcessRunner:
    def __init__(self, spool_dir: Path, run_as_users: bool = True):
        self.spool_dir = spool_dir
        self.run_as_users = run_as_users
        self._tasks: dict[int, asyncio.Task[None]] = {}
        self._closing = False

    def launch(self, cluster: Cluster, job: Job) -> None:
        task = asyncio.get_running_loop().create_task(self._run(cluster, job))
        self._tasks[job.job_id] = task
        task.add_done_callback(lambda _t: self._tasks.pop(job.job_id, None))

    def signal(self, job: Job, signum: int) -> bool:
        if job.pid is None:
            return False
        try:
            os.killpg(job.pid, signum)
        except ProcessLookupError:
            return False
        except PermissionError:
            log.warning("not allowed to signal job %s (pid %s)", job.job_id, job.pid)
            return False
        return True

    async def shutdown(self, cluster: Cluster) -> None:
        """Kill every job's processes (the node goes away with the emulator)."""
        self._closing = True
        for job in list(cluster.running.values()):
            self.signal(job, signal.SIGKILL)
        tasks = list(self._tasks.values())
        if not tasks:
            return
        _, stuck = await asyncio.wait(tasks, timeout=5)
        for task in stuck:
            task.cancel()
        if stuck:
            await asyncio.wait(stuck, timeout=5)

    def _switch_user(self, job: Job) -> bool:
        return self.run_as_users and os.geteuid() == 0 and job.user.posix

    async def _run(self, cluster: Cluster, job: Job) -> None:
        returncode = 1
        try:
            returncode = await self._execute(cluster, job)
        except OutputError as error:
            log.warning("job %s failed to start: %s", job.job_id, error)
        except Exception:
            log.exception("job %s could not be started", job.job_id)
        finally:
            cluster.process_exited(job, returncode)

    async def _execute(self, cluster: Cluster, job: Job) -> int:
        switch = self._switch_user(job)
        script_path, cwd, stdout_fd, stderr_fd, notes = self._prepare(job, switch)
        try:
            for note in notes:
                os.write(stderr_fd, note.encode())
            env = self._environment(cluster, job, job.nodes[0] if job.nodes else "localhost")
            env["PATH"] = f"{script_path.parent / 'bin'}:{env['PATH']}"
            extra: dict[str, object] = {}
            if switch:
                extra = {
                    "user": job.user.uid,
                    "group": job.user.gid,
                    "extra_groups": os.getgrouplist(job.user.name, job.user.gid),
                }
            process = await asyncio.create_subprocess_exec(
                str(script_path),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=stdout_fd,
                stderr=stderr_fd,
                cwd=cwd,
                env=env,
                start_new_session=True,
                **extra,  # type: ignore[arg-type]
            )
        finally:
            os.close(stdout_fd)
            if stderr_fd != stdout_fd:
                os.close(stderr_fd)
        cluster.process_started(job, process.pid)
        try:
            if self._closing:  # started while the emulator was shutting down
                _kill_group(process.pid)
            return await process.wait()
        finally:
            # The batch script is gone (or we are); like slurmstepd, take stragglers with it.
            _kill_group(process.pid)

    def _prepare(self, job: Job, switch: bool) -> tuple[Path, str, int, int, list[str]]:
        """Spool the script and open the output files (blocking file work, done up front)."""
        uid, gid = job.user.uid, job.user.gid
        spool = self.spool_dir / f"job{job.job_id:05d}"
        spool.mkdir(parents=True, exist_ok=True)
        os.chmod(spool, 0o700)
        if switch:
            os.chmod(self.spool_dir, 0o711)  # noqa: S103 - job users must traverse, like slurmd spool
        script_path = spool / "slurm_script"
        with open(script_path, "w", encoding="utf-8", errors="surrogateescape") as handle:
            handle.write(job.script)
        os.chmod(script_path, 0o700)
        # Job steps: the emulator's srun, first on the script's PATH (see mockslurm/srun.py).
        bin_dir = spool / "bin"
        bin_dir.mkdir(exist_ok=True)
        srun_path = bin_dir / "srun"
        srun_path.write_text(SRUN_SCRIPT, encoding="utf-8")
        os.chmod(srun_path, 0o755)  # noqa: S103 - run by the job's user, inside its 0700 spool
        if switch:
            os.chown(spool, uid, gid)
            os.chown(script_path, uid, gid)
            os.chown(bin_dir, uid, gid)
            os.chown(srun_path, uid, gid)
        first_node = job.nodes[0] if job.nodes else "localhost"
        notes: list[str] = []
        cwd = job.workdir
        if not os.path.isdir(cwd):
            notes.append(
                f"slurmstepd: error: couldn't chdir to `{cwd}': No such file or directory: "
                "going to /tmp instead\n"
            )
            cwd = "/tmp"
        stdout_path = job.stdout_path.replace("%N", first_node)
        stderr_path = job.stderr_path.replace("%N", first_node)
        stdout_fd = self._open_output(stdout_path, job, switch)
        stderr_fd = (
            stdout_fd if stderr_path == stdout_path else self._open_output(stderr_path, job, switch)
        )
        return script_path, cwd, stdout_fd, stderr_fd, notes

    def _open_output(self, path: str, job: Job, switch: bool) -> int:
        """Open an output file as the job's user could; like slurmstepd, fail the job if not."""
        target = path if os.path.exists(path) else (os.path.dirname(path) or ".")
        if switch and not _writable_by(target, job.user.uid, job.user.gid):
            raise OutputError(f"Could not open output file {path}: Permission denied")
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
        except OSError as error:
            raise OutputError(f"Could not open output file {path}: {error.strerror}") from error
        if switch:
            os.fchown(fd, job.user.uid, job.user.gid)
        return fd

    def _environment(self, cluster: Cluster, job: Job, first_node: str) -> dict[str, str]:
        config = cluster.config
        env = dict(job.environment)
        nodelist = compress_hostlist(job.nodes)
        cpus_on_node = str(job.cpus_per_node)
        slurm = {
            "SLURM_JOB_ID": str(job.job_id),
            "SLURM_JOBID": str(job.job_id),
            "SLURM_JOB_NAME": job.name,
            "SLURM_JOB_USER": job.user.name,
            "SLURM_JOB_UID": str(job.user.uid),
            "SLURM_JOB_GID": str(job.user.gid),
            "SLURM_JOB_ACCOUNT": job.account,
            "SLURM_JOB_PARTITION": job.partition,
            "SLURM_JOB_QOS": "normal",
            "SLURM_JOB_NODELIST": nodelist,
            "SLURM_NODELIST": nodelist,
            "SLURM_JOB_NUM_NODES": str(job.num_nodes),
            "SLURM_NNODES": str(job.num_nodes),
            "SLURM_JOB_CPUS_PER_NODE": _cpus_per_node(job),
            "SLURM_CPUS_ON_NODE": cpus_on_node,
            "SLURM_TASKS_PER_NODE": _tasks_per_node(job),
            "SLURMD_NODENAME": first_node,
            "SLURM_TOPOLOGY_ADDR": first_node,
            "SLURM_TOPOLOGY_ADDR_PATTERN": "node",
            "SLURM_CLUSTER_NAME": config.name,
            "SLURM_SUBMIT_DIR": job.environment.get("SLURM_SUBMIT_DIR", job.workdir),
            "SLURM_SUBMIT_HOST": f"{config.name}-login",
            "SLURM_NODEID": "0",
            "SLURM_PROCID": "0",
            "SLURM_LOCALID": "0",
            "SLURM_GTIDS": "0",
            "SLURM_PRIO_PROCESS": "0",
            "SLURM_WORKING_DIR": job.workdir,
            "ENVIRONMENT": "BATCH",
            "HOSTNAME": first_node,
        }
        if job.cpus_per_task_set:
            slurm["SLURM_CPUS_PER_TASK"] = str(job.cpus_per_task)
        if job.memory_mb:
            slurm["SLURM_MEM_PER_NODE"] = str(job.memory_mb)
        if job.ntasks is not None:
            slurm["SLURM_NTASKS"] = slurm["SLURM_NPROCS"] = str(job.ntasks)
        if job.time_limit is not None:
            slurm["SLURM_JOB_END_TIME"] = str(int((job.start_time or 0) + job.time_limit * 60))
        if job.start_time is not None:
            slurm["SLURM_JOB_START_TIME"] = str(int(job.start_time))
        if job.export is not None:
            slurm["SLURM_EXPORT_ENV"] = job.export
        env.update(slurm)
        env.setdefault("HOME", job.user.home)
        env.setdefault("USER", job.user.name)
        env.setdefault("LOGNAME", job.user.name)
        env.setdefault("PATH", "/usr/local/bin:/usr/bin:/bin")
        return env


def _kill_group(pgid: int) -> None:
    try:
        os.killpg(pgid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass


def _cpus_per_node(job: Job) -> str:
    cpus = job.cpus_per_node
    return f"{cpus}(x{job.num_nodes})" if job.num_nodes > 1 else str(cpus)


def _tasks_per_node(job: Job) -> str:
    tasks = job.tasks_per_node
    return f"{tasks}(x{job.num_nodes})" if job.num_nodes > 1 else str(tasks)


def _writable_by(path: str, uid: int, gid: int) -> bool:
    """Whether uid could write the file (or create files in the directory), by mode bits."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    if uid == 0:
        return True
    is_dir = stat.S_ISDIR(info.st_mode)
    if info.st_uid == uid:
        write, search = stat.S_IWUSR, stat.S_IXUSR
    elif info.st_gid == gid:
        write, search = stat.S_IWGRP, stat.S_IXGRP
    else:
        write, search = stat.S_IWOTH, stat.S_IXOTH
    return bool(info.st_mode & write) and (not is_dir or bool(info.st_mode & search))
