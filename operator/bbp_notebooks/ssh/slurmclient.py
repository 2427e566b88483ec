"""Slurm over ssh: the pure builders and parsers of :mod:`bbp_notebooks.slurm` run through the pool.

Answers and failures are kept apart: "Invalid job id specified" from slurmctld is an answer (the
job is not in its memory any more); a controller that cannot be reached is SiteUnavailable.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from collections.abc import Iterable, Sequence

from bbp_notebooks.slurm import commands
from bbp_notebooks.slurm.commands import (
    AccountingEntry,
    JobSpec,
    PartitionAvailability,
    QueueEntry,
    QueueListing,
    SacctSource,
)
from bbp_notebooks.slurm.jobscript import Connection, connection_file_argv, parse_connection
from bbp_notebooks.slurm.values import SlurmOutputError
from bbp_notebooks.ssh.errors import CommandFailed, SshError, SubmissionRejected, error_for_exit
from bbp_notebooks.ssh.identity import Identity, SiteEndpoint
from bbp_notebooks.ssh.pool import CommandResult, SshPool

__all__ = ["SlurmClient"]

log = logging.getLogger(__name__)

_UNKNOWN_JOB = "invalid job id specified"
# squeue output at least this long is parsed in a worker thread (about 400 jobs' records).
PARSE_INLINE_BYTES = 64 * 1024
_ALREADY_DONE = "already completing or completed"


def _sentinel() -> str:
    """A fresh squeue record sentinel: nobody can have put it in a job name beforehand."""
    return "bbpnb" + secrets.token_hex(8)


class SlurmClient:
    """One site's Slurm, as seen by whichever user an identity logs in as."""

    def __init__(
        self,
        pool: SshPool,
        endpoint: SiteEndpoint,
        *,
        timeout: float = 30.0,
        submit_timeout: float | None = None,
        sacct_source: SacctSource = SacctSource.DATABASE,
    ) -> None:
        self.pool = pool
        self.endpoint = endpoint
        self.timeout = timeout
        self.submit_timeout = submit_timeout if submit_timeout is not None else timeout
        self.sacct_source = sacct_source

    async def _run(
        self,
        identity: Identity,
        argv: Sequence[str],
        *,
        stdin: str | None = None,
        timeout: float | None = None,  # noqa: ASYNC109 - passed on to SshPool.run's deadline
        check: bool = True,
    ) -> CommandResult:
        return await self.pool.run(
            self.endpoint,
            identity,
            argv,
            stdin=stdin,
            timeout=self.timeout if timeout is None else timeout,
            check=check,
        )

    def _fail(self, argv: Sequence[str], result: CommandResult) -> SshError:
        return error_for_exit(self.endpoint.name, argv, result.exit_status, result.stderr)

    def _parse_error(self, argv: Sequence[str], error: SlurmOutputError) -> CommandFailed:
        # Output we cannot read is a failed command, not a guess.
        return CommandFailed(self.endpoint.name, argv[0], 0, f"unreadable output: {error}")

    async def submit(self, identity: Identity, spec: JobSpec, script: str) -> int:
        """Submit ``script`` (on stdin) and return the job id.

        Not idempotent: after a CommandTimeout with ``started`` set, or a lost connection, the job
        may exist; look for it by its tag (the job name) before submitting again.
        """
        argv = commands.sbatch_argv(spec)
        result = await self._run(
            identity, argv, stdin=script, timeout=self.submit_timeout, check=False
        )
        if result.exit_status != 0:
            error = self._fail(argv, result)
            if type(error) is CommandFailed:  # slurmctld answered: this job is refused
                raise SubmissionRejected(
                    self.endpoint.name, argv[0], result.exit_status, result.stderr
                )
            raise error
        try:
            return commands.parse_sbatch(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def queue(
        self,
        identity: Identity,
        job_ids: Iterable[int] = (),
        names: Iterable[str] = (),
        users: Iterable[str] = (),
    ) -> list[QueueEntry]:
        """Jobs slurmctld still knows (ended ones stay until MinJobAge) matching all filters.

        Records that do not parse are dropped (and logged): see :meth:`queue_all`."""
        ids = list(job_ids)
        sentinel = _sentinel()
        argv = commands.squeue_argv(ids, names, users, sentinel=sentinel)
        result = await self._run(identity, argv, check=False)
        if result.exit_status != 0:
            if ids and _UNKNOWN_JOB in result.stderr.lower():
                # squeue -j with one id that slurmctld has purged: an answer, "no such job".
                return []
            raise self._fail(argv, result)
        listing = commands.parse_squeue(result.stdout, sentinel)
        if listing.dropped:
            log.warning(
                "%s: %d unreadable squeue record(s) dropped", self.endpoint.name, listing.dropped
            )
        return list(listing.entries)

    async def queue_all(self, identity: Identity) -> QueueListing:
        """Every job the identity may see: one squeue per poll, whatever the number of sessions.

        Deliberately a separate call from :meth:`queue`, so that an empty filter there can never
        turn into "all jobs" by accident. Filter the result by tag before acting on it.

        Every record starts with a sentinel drawn for this call, so a job name (chosen by any
        user of the site) cannot forge a record; a record that does not parse is dropped and
        counted in ``dropped``, never guessed at and never a failed poll.
        """
        sentinel = _sentinel()
        argv = commands.squeue_all_argv(sentinel=sentinel)
        result = await self._run(identity, argv)
        if len(result.stdout) < PARSE_INLINE_BYTES:
            return commands.parse_squeue(result.stdout, sentinel)
        # A busy site's whole queue is megabytes: parse it in a thread, so the event loop keeps
        # serving callbacks, watches and the other sites' polls meanwhile.
        return await asyncio.to_thread(commands.parse_squeue, result.stdout, sentinel)

    async def accounting(self, identity: Identity, job_ids: Iterable[int]) -> list[AccountingEntry]:
        """How these jobs ended, from sacct (the authority once squeue has forgotten them)."""
        ids = list(job_ids)
        if not ids:
            return []
        sentinel = _sentinel()
        argv = commands.sacct_argv(ids, sentinel=sentinel, source=self.sacct_source)
        result = await self._run(identity, argv)
        try:
            return commands.parse_sacct(result.stdout, sentinel)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def cancel(
        self,
        identity: Identity,
        job_ids: Iterable[int],
        *,
        name: str | None = None,
        user: str | None = None,
    ) -> None:
        """Cancel these jobs; jobs that already ended or are unknown count as cancelled.

        With ``name`` and ``user``, only jobs of that name and owner are cancelled (a job id that
        does not match both is left alone, silently, as scancel does)."""
        argv = commands.scancel_argv(job_ids, name=name, user=user)
        result = await self._run(identity, argv, check=False)
        if result.exit_status == 0:
            return
        errors = [line for line in result.stderr.lower().splitlines() if "error" in line]
        benign = (_UNKNOWN_JOB, _ALREADY_DONE)
        if errors and all(any(text in line for text in benign) for line in errors):
            return
        raise self._fail(argv, result)

    async def partitions(self, identity: Identity) -> list[PartitionAvailability]:
        argv = commands.sinfo_argv()
        result = await self._run(identity, argv)
        try:
            return commands.parse_sinfo(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def version(self, identity: Identity) -> str:
        argv = commands.version_argv()
        result = await self._run(identity, argv)
        try:
            return commands.parse_version(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def accounts(self, identity: Identity, user: str) -> list[str]:
        """Accounts ``user`` may charge (needs slurmdbd; sites without it raise CommandFailed)."""
        argv = commands.accounts_argv(user)
        result = await self._run(identity, argv)
        try:
            return commands.parse_accounts(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def show_job(self, identity: Identity, job_id: int) -> dict[str, str] | None:
        """``scontrol show job`` as a dict, or None when slurmctld no longer knows the job."""
        argv = commands.scontrol_show_job_argv(job_id)
        result = await self._run(identity, argv, check=False)
        if result.exit_status != 0:
            if _UNKNOWN_JOB in result.stderr.lower():
                return None
            raise self._fail(argv, result)
        try:
            return commands.parse_scontrol_show_job(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def associations(self, identity: Identity) -> dict[str, list[str]]:
        """Every user's accounts at the site, in one sacctmgr call."""
        argv = commands.associations_argv()
        result = await self._run(identity, argv)
        try:
            return commands.parse_associations(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def read_connection(self, identity: Identity, session_uid: str) -> Connection | None:
        """The connection file a job wrote, for sites that allow ``cat`` over ssh; None if absent.

        Not a Slurm command: sites (and the mock) that allow only Slurm commands refuse it, which
        surfaces as CommandFailed. The operator's primary path is the job's callback.
        """
        argv = connection_file_argv(session_uid)
        result = await self._run(identity, argv, check=False)
        if result.exit_status != 0:
            if "no such file" in result.stderr.lower():
                return None
            raise self._fail(argv, result)
        try:
            return parse_connection(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def set_time_limit(self, identity: Identity, job_id: int, minutes: int) -> None:
        """``scontrol update JobId=... TimeLimit=...``; Slurm's refusal (permission, a limit,
        the job ended) is a CommandFailed with Slurm's words."""
        argv = commands.scontrol_update_time_limit_argv(job_id, minutes)
        result = await self._run(identity, argv, check=False)
        if result.exit_status != 0:
            raise self._fail(argv, result)

    async def partition_max_time(self, identity: Identity, partition: str) -> int | None:
        """The partition's MaxTime in minutes; None when unlimited."""
        argv = commands.partition_max_time_argv(partition)
        result = await self._run(identity, argv)
        try:
            return commands.parse_partition_max_time(result.stdout)
        except SlurmOutputError as error:
            raise self._parse_error(argv, error) from None

    async def output_tail(self, identity: Identity, path: str, max_bytes: int) -> bytes:
        """The last ``max_bytes`` of a file the identity's user can read (a job's output).

        Not a Slurm command: frontends that allow only Slurm commands refuse it (CommandFailed).
        """
        argv = commands.output_tail_argv(path, max_bytes)
        result = await self._run(identity, argv, check=False)
        if result.exit_status != 0:
            raise self._fail(argv, result)
        return result.stdout.encode("utf-8", errors="surrogateescape")[-max_bytes:]
