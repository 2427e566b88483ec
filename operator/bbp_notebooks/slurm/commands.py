"""Slurm commands as data: argv builders and parsers for the formats those argv ask for.

Every builder returns a list of strings meant for ``shlex.join``; every option carries its value in
the same element (``--name=value``) so that a value starting with ``-`` stays a value. Every parser
reads an explicit field list with the one free-text field (the job name) last; squeue and sacct,
whose job names any user chooses, mark records or fields with a sentinel the caller draws per call.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import enum
import re
from collections.abc import Iterable

from bbp_notebooks.api.constants import POSIX_USER_PATTERN
from bbp_notebooks.slurm.values import (
    JobState,
    SlurmOutputError,
    parse_duration,
    parse_exit_code,
    parse_job_id,
    parse_state,
    parse_timestamp,
)

__all__ = [
    "AccountingEntry",
    "JobSpec",
    "PartitionAvailability",
    "QueueEntry",
    "QueueListing",
    "SacctSource",
    "accounts_argv",
    "parse_accounts",
    "parse_sacct",
    "parse_sbatch",
    "parse_scontrol_show_job",
    "parse_sinfo",
    "parse_squeue",
    "parse_version",
    "sacct_argv",
    "sbatch_argv",
    "scancel_argv",
    "scontrol_show_job_argv",
    "sinfo_argv",
    "squeue_all_argv",
    "squeue_argv",
    "version_argv",
]

# Control characters would let a value end an argv line in Slurm's own parsers (and in logs).
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
# Partitions and accounts are admin-chosen identifiers; a comma would split a Slurm list.
_IDENTIFIER = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.@+-]{0,127}$")
_USER = re.compile(POSIX_USER_PATTERN)
_MAX_TEXT = 1024


def _check_text(what: str, value: str, *, forbid: str = "") -> str:
    if not value:
        raise ValueError(f"{what} must not be empty")
    if len(value) > _MAX_TEXT:
        raise ValueError(f"{what} is longer than {_MAX_TEXT} characters")
    if _CONTROL.search(value):
        raise ValueError(f"{what} must not contain control characters: {value!r}")
    for char in forbid:
        if char in value:
            raise ValueError(f"{what} must not contain {char!r}: {value!r}")
    return value


def _check_identifier(what: str, value: str) -> str:
    if not _IDENTIFIER.match(value):
        raise ValueError(f"{what} is not a valid Slurm identifier: {value!r}")
    return value


def _check_user(value: str) -> str:
    if not _USER.match(value):
        raise ValueError(f"not a POSIX user name: {value!r}")
    return value


def _check_job_ids(job_ids: Iterable[int]) -> list[str]:
    checked = []
    for job_id in job_ids:
        if isinstance(job_id, bool) or not isinstance(job_id, int) or job_id <= 0:
            raise ValueError(f"not a Slurm job id: {job_id!r}")
        checked.append(str(job_id))
    return list(dict.fromkeys(checked))


@dataclasses.dataclass(frozen=True)
class JobSpec:
    """What we ask sbatch for; every field becomes one ``--option=value`` argv element."""

    name: str
    partition: str | None
    account: str | None
    cpus_per_task: int
    memory_mb: int
    time_limit_minutes: int
    workdir: str | None = None
    output: str | None = None
    # A Spark cluster job: one task per worker, spread over as many nodes as Slurm likes
    # (nodes None), memory per CPU instead of per node.
    ntasks: int = 1
    nodes: int | None = 1
    memory_per_cpu: bool = False

    def __post_init__(self) -> None:
        _check_text("job name", self.name, forbid=",")
        if self.partition is not None:
            _check_identifier("partition", self.partition)
        if self.account is not None:
            _check_identifier("account", self.account)
        for what, number in (
            ("cpus_per_task", self.cpus_per_task),
            ("memory_mb", self.memory_mb),
            ("time_limit_minutes", self.time_limit_minutes),
            ("ntasks", self.ntasks),
            ("nodes", 1 if self.nodes is None else self.nodes),
        ):
            if isinstance(number, bool) or not isinstance(number, int) or number <= 0:
                raise ValueError(f"{what} must be a positive integer, not {number!r}")
        if self.workdir is not None:
            _check_text("workdir", self.workdir)
        if self.output is not None:
            _check_text("output", self.output)


def sbatch_argv(spec: JobSpec) -> list[str]:
    """sbatch with every option on the command line; the batch script goes on stdin.

    Options are never written as ``#SBATCH`` lines, so nothing in the script body can change them.
    """
    argv = [
        "sbatch",
        "--parsable",
        f"--job-name={spec.name}",
        *([f"--nodes={spec.nodes}"] if spec.nodes is not None else []),
        f"--ntasks={spec.ntasks}",
        f"--cpus-per-task={spec.cpus_per_task}",
        f"--mem-per-cpu={spec.memory_mb}M" if spec.memory_per_cpu else f"--mem={spec.memory_mb}M",
        f"--time={spec.time_limit_minutes}",
    ]
    if spec.partition is not None:
        argv.append(f"--partition={spec.partition}")
    if spec.account is not None:
        argv.append(f"--account={spec.account}")
    if spec.workdir is not None:
        argv.append(f"--chdir={spec.workdir}")
    if spec.output is not None:
        argv.append(f"--output={spec.output}")
    return argv


def parse_sbatch(stdout: str) -> int:
    """The job id from ``sbatch --parsable``: "123" or "123;cluster" on the last line."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise SlurmOutputError("sbatch printed no job id")
    return parse_job_id(lines[-1].split(";", 1)[0])


# --- squeue -------------------------------------------------------------------------------------

# %A is the plain job id even for array elements; %V (submit time) dates the job for the orphan
# grace; the name (%j) is last because it is free text.
_SQUEUE_FIELDS = ("%A", "%u", "%T", "%r", "%N", "%S", "%V", "%l", "%L", "%P", "%a", "%j")
# A record sentinel: literal text squeue prints as is at the start of every record. The caller
# draws a fresh one per call, so no job name (which any user chooses) can contain it.
_SENTINEL = re.compile(r"^[A-Za-z0-9]{16,64}$")


@dataclasses.dataclass(frozen=True)
class QueueEntry:
    """One job as squeue shows it while slurmctld still remembers it (up to MinJobAge after end)."""

    job_id: int
    name: str
    user: str
    state: JobState
    reason: str | None
    nodes: str | None
    start_time: dt.datetime | None
    time_limit_s: int | None
    time_left_s: int | None
    partition: str
    account: str | None
    submit_time: dt.datetime | None = None


@dataclasses.dataclass(frozen=True)
class QueueListing:
    """The records squeue printed that parse, and how many did not (never guessed at)."""

    entries: tuple[QueueEntry, ...]
    dropped: int


def _check_sentinel(sentinel: str) -> str:
    if not _SENTINEL.match(sentinel):
        raise ValueError(f"a record sentinel is 16 to 64 letters or digits, not {sentinel!r}")
    return sentinel


def _squeue_format(sentinel: str) -> str:
    return "--format=" + _check_sentinel(sentinel) + "|".join(_SQUEUE_FIELDS)


def squeue_argv(
    job_ids: Iterable[int] = (),
    names: Iterable[str] = (),
    users: Iterable[str] = (),
    *,
    sentinel: str,
) -> list[str]:
    """squeue filtered by job ids, names and/or users (ANDed); refuses to ask for every job.

    ``--states=all`` keeps finished jobs visible until MinJobAge, so an ended job is seen as ended
    rather than as missing. ``sentinel`` starts every record (see :func:`parse_squeue`).
    """
    ids = _check_job_ids(job_ids)
    name_list = [_check_text("job name", name, forbid=",") for name in names]
    user_list = [_check_user(user) for user in users]
    if not (ids or name_list or user_list):
        raise ValueError("squeue without job ids, names or users would list every job")
    argv = ["squeue", "--noheader", "--states=all", _squeue_format(sentinel)]
    if ids:
        argv.append("--jobs=" + ",".join(ids))
    if name_list:
        argv.append("--name=" + ",".join(dict.fromkeys(name_list)))
    if user_list:
        argv.append("--user=" + ",".join(dict.fromkeys(user_list)))
    return argv


def squeue_all_argv(*, sentinel: str) -> list[str]:
    """squeue for every job the caller may see: one RPC per site poll, filtered by tag afterwards.

    A separate builder on purpose: no combination of empty filters can produce it. ``--all``
    includes hidden partitions, whose jobs would otherwise look "gone" to the monitor.
    """
    return ["squeue", "--noheader", "--all", "--states=all", _squeue_format(sentinel)]


def _optional(text: str, *absent: str) -> str | None:
    value = text.strip()
    return None if value in ("", "(null)", *absent) else value


def _split_rows(stdout: str, fields: int) -> list[list[str]]:
    """Rows of ``fields`` columns; the last column is free text and may hold '|' or newlines."""
    rows: list[list[str]] = []
    for line in stdout.splitlines():
        if not line.strip():
            continue
        columns = line.split("|", fields - 1)
        if len(columns) < fields:
            if not rows:
                raise SlurmOutputError(f"expected {fields} '|'-separated fields: {line!r}")
            # A job name with a newline in it: the rest of the name continues the last row.
            rows[-1][-1] += "\n" + line
            continue
        rows.append(columns)
    return rows


def _queue_entry(columns: list[str]) -> QueueEntry:
    job_id, user, state, reason, nodes, start, submit, limit, left, partition, account, name = (
        columns
    )
    return QueueEntry(
        job_id=parse_job_id(job_id),
        name=name,
        user=user.strip(),
        state=parse_state(state),
        reason=_optional(reason, "None"),
        nodes=_optional(nodes),
        start_time=parse_timestamp(start),
        time_limit_s=parse_duration(limit),
        time_left_s=parse_duration(left),
        partition=partition.strip(),
        account=_optional(account),
        submit_time=parse_timestamp(submit),
    )


def parse_squeue(stdout: str, sentinel: str) -> QueueListing:
    """Entries from the output of :func:`squeue_argv` or :func:`squeue_all_argv`.

    A record is the text from one ``sentinel`` to the next, ending in squeue's newline. A record
    that does not read as exactly one job (a field count other than ours, a bad id, state or
    time, a name holding a newline or a '|') is dropped and counted, never repaired: a job name
    that tries to forge a record stays inside its own record, which is then dropped whole.
    """
    head, *records = stdout.split(_check_sentinel(sentinel))
    dropped = 1 if head.strip() else 0  # squeue prints nothing before the first record
    entries = []
    for record in records:
        body = record.removesuffix("\n")
        columns = body.split("|")
        if body == record or "\n" in body or "\r" in body or len(columns) != len(_SQUEUE_FIELDS):
            dropped += 1
            continue
        try:
            entries.append(_queue_entry(columns))
        except SlurmOutputError:
            dropped += 1
    return QueueListing(tuple(entries), dropped)


# --- sacct --------------------------------------------------------------------------------------


class SacctSource(enum.Enum):
    """Where sacct reads finished jobs from; the only place that chooses sacct's data flags."""

    # accounting_storage/slurmdbd: the normal case.
    DATABASE = "database"
    # No slurmdbd, JobCompType=jobcomp/filetxt: read the completion log (``sacct --completion``).
    JOBCOMP = "jobcomp"


_SACCT_SOURCE_FLAGS: dict[SacctSource, tuple[str, ...]] = {
    SacctSource.DATABASE: ("--allocations",),
    SacctSource.JOBCOMP: ("--completion",),
}
_SACCT_FIELDS = ("JobIDRaw", "User", "State", "ExitCode", "Start", "End", "NodeList", "JobName")


@dataclasses.dataclass(frozen=True)
class AccountingEntry:
    """How a job ended (or is doing), as sacct records it: the authority once squeue forgets."""

    job_id: int
    name: str
    user: str
    state: JobState
    exit_code: int
    signal: int
    start: dt.datetime | None
    end: dt.datetime | None
    nodes: str | None


def sacct_argv(
    job_ids: Iterable[int], *, sentinel: str, source: SacctSource = SacctSource.DATABASE
) -> list[str]:
    """sacct for the given jobs only (never "all jobs since midnight").

    ``sentinel`` is the field delimiter (``--delimiter``): drawn per call, no job name can hold
    it, so a name with newlines and '|' in it stays one field (see :func:`parse_sacct`)."""
    ids = _check_job_ids(job_ids)
    if not ids:
        raise ValueError("sacct without job ids would list every job")
    return [
        "sacct",
        "--noheader",
        "--parsable2",
        "--delimiter=" + _check_sentinel(sentinel),
        *_SACCT_SOURCE_FLAGS[source],
        "--jobs=" + ",".join(ids),
        "--format=" + ",".join(_SACCT_FIELDS),
    ]


def _delimited_records(stdout: str, delimiter: str, fields: int) -> list[list[str]]:
    """Records of ``fields`` fields separated by ``delimiter``, each ending in a newline.

    Only the last field (the job name) is free text and the first (the job id) never holds a
    newline, so the newline that ends a record is the last one before the next record's first
    delimiter: a name may hold newlines and stays whole."""
    if not stdout.strip():
        return []
    chunks = stdout.split(delimiter)
    if (len(chunks) - 1) % (fields - 1) != 0:
        raise SlurmOutputError(f"sacct output is not records of {fields} fields")
    records = []
    current = [chunks[0]]
    for chunk in chunks[1:]:
        if len(current) < fields - 1:
            current.append(chunk)
            continue
        last, newline, first = chunk.rpartition("\n")
        if not newline:
            raise SlurmOutputError(f"sacct record does not end in a newline: {chunk[:80]!r}")
        records.append([*current, last])
        current = [first]
    if current != [""]:
        raise SlurmOutputError(f"sacct output ends inside a record: {current[0][:80]!r}")
    return records


def _accounting_entry(columns: list[str]) -> AccountingEntry | None:
    job_id, user, state, exit_code, start, end, nodes, name = columns
    if "." in job_id:
        # A job step (batch, extern, 0...) when --allocations is unavailable: not a job.
        return None
    status, signal = parse_exit_code(exit_code)
    return AccountingEntry(
        job_id=parse_job_id(job_id),
        name=name,
        user=user.strip(),
        state=parse_state(state),
        exit_code=status,
        signal=signal,
        start=parse_timestamp(start),
        end=parse_timestamp(end),
        nodes=_optional(nodes, "None assigned"),
    )


def parse_sacct(stdout: str, delimiter: str) -> list[AccountingEntry]:
    """Entries from the output of :func:`sacct_argv` with its sentinel as ``delimiter``; job
    steps are dropped.

    Unlike squeue's, an unreadable sacct record is an error, not a drop: sacct is asked only
    about our sessions' jobs, and a missing answer would read as "job gone". A job name cannot
    forge a record (it cannot hold the delimiter), so it is kept as printed."""
    if not delimiter or "\n" in delimiter:
        raise ValueError(f"not a field delimiter: {delimiter!r}")
    entries = []
    for columns in _delimited_records(stdout, delimiter, len(_SACCT_FIELDS)):
        try:
            entry = _accounting_entry(columns)
        except SlurmOutputError as error:
            raise SlurmOutputError(f"{error} in record {'|'.join(columns)!r}") from None
        if entry is not None:
            entries.append(entry)
    return entries


# --- scancel ------------------------------------------------------------------------------------


def scancel_argv(
    job_ids: Iterable[int], *, name: str | None = None, user: str | None = None
) -> list[str]:
    """scancel for exactly these jobs; refuses an empty list.

    ``name`` and ``user`` additionally restrict the cancel to jobs with that name and owner
    (scancel ANDs job ids with filters), so a job id reused after a controller reset, or read
    from a forged squeue row, cannot cancel somebody else's job.
    """
    ids = _check_job_ids(job_ids)
    if not ids:
        raise ValueError("scancel without job ids")
    argv = ["scancel"]
    if name is not None:
        argv.append("--name=" + _check_text("job name", name, forbid=","))
    if user is not None:
        argv.append("--user=" + _check_user(user))
    return [*argv, *ids]


# --- sinfo --------------------------------------------------------------------------------------

_SINFO_FIELDS = ("%P", "%a", "%F", "%C")


@dataclasses.dataclass(frozen=True)
class PartitionAvailability:
    """How much of a partition is free right now (for "Geneva (8 nodes available)")."""

    name: str
    is_default: bool
    available: bool
    nodes_idle: int
    nodes_total: int
    cpus_idle: int
    cpus_total: int


def sinfo_argv() -> list[str]:
    """sinfo summarised per partition: name (``*`` marks the default), up/down, nodes, cpus."""
    return ["sinfo", "--noheader", "--format=" + "|".join(_SINFO_FIELDS)]


def _counts(text: str) -> tuple[int, int]:
    """(idle, total) from sinfo's "allocated/idle/other/total"."""
    parts = text.strip().split("/")
    if len(parts) != 4 or not all(part.isascii() and part.isdigit() for part in parts):
        raise SlurmOutputError(f"expected allocated/idle/other/total, got {text!r}")
    return int(parts[1]), int(parts[3])


def parse_sinfo(stdout: str) -> list[PartitionAvailability]:
    """One entry per partition, in sinfo's order, summing lines sinfo printed separately."""
    merged: dict[str, PartitionAvailability] = {}
    for columns in _split_rows(stdout, len(_SINFO_FIELDS)):
        raw_name, avail, nodes, cpus = (column.strip() for column in columns)
        if not raw_name:
            raise SlurmOutputError(f"unexpected sinfo row {'|'.join(columns)!r}")
        name = raw_name.rstrip("*")
        nodes_idle, nodes_total = _counts(nodes)
        cpus_idle, cpus_total = _counts(cpus)
        entry = PartitionAvailability(
            name=name,
            is_default=raw_name.endswith("*"),
            available=avail.lower() == "up",
            nodes_idle=nodes_idle,
            nodes_total=nodes_total,
            cpus_idle=cpus_idle,
            cpus_total=cpus_total,
        )
        previous = merged.get(name)
        if previous is not None:
            entry = dataclasses.replace(
                previous,
                is_default=previous.is_default or entry.is_default,
                available=previous.available or entry.available,
                nodes_idle=previous.nodes_idle + entry.nodes_idle,
                nodes_total=previous.nodes_total + entry.nodes_total,
                cpus_idle=previous.cpus_idle + entry.cpus_idle,
                cpus_total=previous.cpus_total + entry.cpus_total,
            )
        merged[name] = entry
    return list(merged.values())


# --- version, accounts, scontrol ----------------------------------------------------------------


def version_argv() -> list[str]:
    return ["sinfo", "--version"]


_VERSION = re.compile(r"^slurm(?:-wlm)?\s+(\d+\.\d+\.\d+\S*)$")


def parse_version(stdout: str) -> str:
    """The version, e.g. "22.05.8" from "slurm 22.05.8"."""
    match = _VERSION.match(stdout.strip())
    if match is None:
        raise SlurmOutputError(f"not a Slurm version: {stdout.strip()!r}")
    return match[1]


def accounts_argv(user: str) -> list[str]:
    """The accounts (Slurm "projects") a user may charge, from the association table."""
    return [
        "sacctmgr",
        "--noheader",
        "--parsable2",
        "show",
        "associations",
        "where",
        f"user={_check_user(user)}",
        "format=Account",
    ]


def associations_argv() -> list[str]:
    """Every (user, account) association of the cluster: one query for all users' accounts."""
    return [
        "sacctmgr",
        "--noheader",
        "--parsable2",
        "show",
        "associations",
        "format=User,Account",
    ]


def parse_associations(stdout: str) -> dict[str, list[str]]:
    """User -> accounts; rows without a user (account-level associations) are skipped."""
    result: dict[str, list[str]] = {}
    for line in stdout.splitlines():
        if not line.strip():
            continue
        user, sep, account = line.strip().partition("|")
        if not sep or not _IDENTIFIER.match(account) or (user and not _USER.match(user)):
            raise SlurmOutputError(f"not a user|account association: {line!r}")
        if user and account not in result.setdefault(user, []):
            result[user].append(account)
    return result


def parse_accounts(stdout: str) -> list[str]:
    """Distinct account names in the order sacctmgr printed them."""
    accounts = [line.strip() for line in stdout.splitlines() if line.strip()]
    for account in accounts:
        if not _IDENTIFIER.match(account):
            raise SlurmOutputError(f"not a Slurm account: {account!r}")
    return list(dict.fromkeys(accounts))


def scontrol_show_job_argv(job_id: int) -> list[str]:
    (checked,) = _check_job_ids([job_id])
    return ["scontrol", "--oneliner", "show", "job", checked]


# A key is a word followed by "=" at the start of the line or after a space. Values may contain
# spaces (JobName, WorkDir, Reason), so a value runs until the next " Key=".
_SCONTROL_KEY = re.compile(r"(?:^|(?<= ))([A-Za-z][A-Za-z0-9_:/]*)=")


def parse_scontrol_show_job(stdout: str) -> dict[str, str]:
    """Key/value pairs of one ``scontrol show job`` record (``--oneliner`` or the indented form)."""
    lines = [line.strip() for line in stdout.splitlines() if line.strip()]
    if not lines:
        raise SlurmOutputError("scontrol printed no job record")
    if sum(1 for line in lines if line.startswith("JobId=")) != 1:
        raise SlurmOutputError(f"expected one scontrol job record: {lines[0][:80]!r}")
    line = " ".join(lines)
    keys = list(_SCONTROL_KEY.finditer(line))
    if not keys or keys[0].start() != 0:
        raise SlurmOutputError(f"not an scontrol record: {line[:80]!r}")
    fields: dict[str, str] = {}
    for match, following in zip(keys, [*keys[1:], None], strict=True):
        end = following.start() if following is not None else len(line)
        fields.setdefault(match[1], line[match.end() : end].rstrip(" "))
    return fields


def scontrol_update_time_limit_argv(job_id: int, minutes: int) -> list[str]:
    """Set a job's time limit; raising it needs AdminLevel>=Operator (users may only lower)."""
    (checked,) = _check_job_ids([job_id])
    if isinstance(minutes, bool) or not isinstance(minutes, int) or minutes <= 0:
        raise ValueError(f"a time limit must be a positive number of minutes, not {minutes!r}")
    return ["scontrol", "update", f"JobId={checked}", f"TimeLimit={minutes}"]


def partition_max_time_argv(partition: str) -> list[str]:
    """The partition's MaxTime, as sinfo prints it (``%l``)."""
    return ["sinfo", "--noheader", f"--partition={_check_identifier('partition', partition)}",
            "--format=%l"]  # fmt: skip


def parse_partition_max_time(stdout: str) -> int | None:
    """MaxTime in minutes (rounded down), None for infinite; one value, repeated per row."""
    values = {line.strip() for line in stdout.splitlines() if line.strip()}
    if len(values) != 1:
        raise SlurmOutputError(f"expected one partition time limit, got {sorted(values)!r}")
    seconds = parse_duration(values.pop())
    return None if seconds is None else seconds // 60


def output_tail_argv(path: str, max_bytes: int) -> list[str]:
    """The last ``max_bytes`` of a job's output file (read as its owner; never a shell line)."""
    if max_bytes <= 0:
        raise ValueError("max_bytes must be positive")
    return ["tail", "-c", str(max_bytes), "--", _check_text("output path", path)]
