"""squeue: job filters, the -o field codes of src/squeue/print.c, sorting, --start."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bbp_notebooks.mockslurm.cluster import SLURM_VERSION, Cluster, Job, JobState
from bbp_notebooks.mockslurm.commands.base import CONNECT_FAILURE, Context
from bbp_notebooks.mockslurm.formats import (
    compress_hostlist,
    fit,
    memory_mb,
    slurm_time,
    squeue_duration,
    squeue_time_limit,
)
from bbp_notebooks.mockslurm.getopt import Arg, GetoptError, Option, parse

R = Arg.REQUIRED
OPTIONS = [
    Option("accounts", "A", ("accounts", "account"), R),
    Option("all", "a", ("all",)),
    Option("array", "r", ("array",)),
    Option("format_long", "O", ("Format",), R),
    Option("format", "o", ("format",), R),
    Option("help", None, ("help",)),
    Option("hide", None, ("hide",)),
    Option("iterate", "i", ("iterate",), R),
    Option("jobs", "j", ("jobs", "job"), Arg.OPTIONAL),
    Option("local", None, ("local",)),
    Option("long", "l", ("long",)),
    Option("licenses", "L", ("licenses",), R),
    Option("clusters", "M", ("clusters", "cluster"), R),
    Option("me", None, ("me",)),
    Option("name", "n", ("name",), R),
    Option("noconvert", None, ("noconvert",)),
    Option("nodelist", "w", ("nodelist", "nodes", "node"), R),
    Option("noheader", "h", ("noheader",)),
    Option("partitions", "p", ("partitions", "partition"), R),
    Option("priority", "P", ("priority",)),
    Option("qos", "q", ("qos",), R),
    Option("reservation", "R", ("reservation",), R),
    Option("sort", "S", ("sort",), R),
    Option("start", None, ("start",)),
    Option("steps", "s", ("steps",), Arg.OPTIONAL),
    Option("states", "t", ("states", "state"), R),
    Option("usage", None, ("usage",)),
    Option("users", "u", ("users", "user"), R),
    Option("verbose", "v", ("verbose",)),
    Option("version", "V", ("version",)),
]

DEFAULT_FORMAT = "%.18i %.9P %.8j %.8u %.2t %.10M %.6D %R"
LONG_FORMAT = "%.18i %.9P %.8j %.8u %.8T %.10M %.9l %.6D %R"
START_FORMAT = "%.18i %.9P %.8j %.8u %.2t %.19S %.6D %20Y %R"

# job_state_num(): names and compact names, case-insensitive. Flags match a flag, others a base.
STATE_NAMES: dict[str, str] = {
    "PENDING": "PENDING", "PD": "PENDING",
    "RUNNING": "RUNNING", "R": "RUNNING",
    "SUSPENDED": "SUSPENDED", "S": "SUSPENDED",
    "COMPLETED": "COMPLETED", "CD": "COMPLETED",
    "CANCELLED": "CANCELLED", "CA": "CANCELLED",
    "FAILED": "FAILED", "F": "FAILED",
    "TIMEOUT": "TIMEOUT", "TO": "TIMEOUT",
    "NODE_FAIL": "NODE_FAIL", "NF": "NODE_FAIL",
    "PREEMPTED": "PREEMPTED", "PR": "PREEMPTED",
    "BOOT_FAIL": "BOOT_FAIL", "BF": "BOOT_FAIL",
    "DEADLINE": "DEADLINE", "DL": "DEADLINE",
    "OUT_OF_MEMORY": "OUT_OF_MEMORY", "OOM": "OUT_OF_MEMORY",
    "COMPLETING": "COMPLETING", "CG": "COMPLETING",
    "CONFIGURING": "CONFIGURING", "CF": "CONFIGURING",
    "RESIZING": "RESIZING", "RS": "RESIZING",
    "REQUEUED": "REQUEUED", "RQ": "REQUEUED",
    "REQUEUE_FED": "REQUEUE_FED", "RF": "REQUEUE_FED",
    "REQUEUE_HOLD": "REQUEUE_HOLD", "RH": "REQUEUE_HOLD",
    "RESV_DEL_HOLD": "RESV_DEL_HOLD", "RD": "RESV_DEL_HOLD",
    "REVOKED": "REVOKED", "RV": "REVOKED",
    "SIGNALING": "SIGNALING", "SI": "SIGNALING",
    "SPECIAL_EXIT": "SPECIAL_EXIT", "SE": "SPECIAL_EXIT",
    "STAGE_OUT": "STAGE_OUT", "SO": "STAGE_OUT",
    "STOPPED": "STOPPED", "ST": "STOPPED",
}  # fmt: skip
VALID_STATES = (
    "PENDING,RUNNING,SUSPENDED,COMPLETED,CANCELLED,FAILED,TIMEOUT,NODE_FAIL,PREEMPTED,"
    "BOOT_FAIL,DEADLINE,OUT_OF_MEMORY,COMPLETING,CONFIGURING,RESIZING,RESV_DEL_HOLD,REQUEUED,"
    "REQUEUE_FED,REQUEUE_HOLD,REVOKED,SPECIAL_EXIT,STAGE_OUT,STOPPED,SIGNALING"
)


@dataclass
class View:
    """What a field function needs beyond the job."""

    cluster: Cluster
    now: float
    estimates: dict[int, float | None]


FieldFn = Callable[[Job, View], str]


def _start_time(job: Job, view: View) -> float | None:
    if job.state is JobState.PENDING:
        return view.estimates.get(job.job_id)
    return job.start_time


def _end_time(job: Job, view: View) -> str:
    if job.state.finished:
        return slurm_time(job.end_time)
    start = _start_time(job, view)
    if job.time_limit is None:
        return "NONE" if job.state is JobState.RUNNING else "N/A"
    if start is None:
        return "N/A"
    return slurm_time(start + job.time_limit * 60)


def _time_used(job: Job, view: View) -> int:
    if job.state is JobState.PENDING or job.start_time is None:
        return 0
    return job.elapsed(view.now)


def _time_left(job: Job, view: View) -> str:
    if job.time_limit is None:
        return "UNLIMITED"
    return squeue_duration(job.time_limit * 60 - _time_used(job, view))


def _reason_list(job: Job, view: View) -> tuple[str, bool]:
    """%R: "(reason)" while pending or after a failure or timeout, else the node list."""
    if not job.completing and (job.state in (JobState.PENDING, JobState.TIMEOUT, JobState.FAILED)):
        return f"({job.reason})", True
    return compress_hostlist(job.nodes), False


# letter -> (header, value function, cut to width)
FIELDS: dict[str, tuple[str, FieldFn, bool]] = {
    "a": ("ACCOUNT", lambda j, v: j.account, True),
    "A": ("JOBID", lambda j, v: str(j.job_id), True),
    "B": ("EXEC_HOST", lambda j, v: j.nodes[0] if j.nodes else "n/a", True),
    "c": ("MIN_CPUS", lambda j, v: str(j.cpus_per_node), True),
    "C": ("CPUS", lambda j, v: str(j.num_cpus), True),
    "d": ("MIN_TMP_DISK", lambda j, v: "0", True),
    "D": ("NODES", lambda j, v: str(j.num_nodes), True),
    "e": ("END_TIME", _end_time, True),
    "E": ("DEPENDENCY", lambda j, v: "(null)", True),
    "f": ("FEATURES", lambda j, v: "(null)", True),
    "F": ("ARRAY_JOB_ID", lambda j, v: str(j.job_id), True),
    "g": ("GROUP", lambda j, v: j.user.group, True),
    "G": ("GROUP", lambda j, v: str(j.user.gid), True),
    "h": ("OVER_SUBSCRIBE", lambda j, v: "OK", True),
    "i": ("JOBID", lambda j, v: str(j.job_id), True),
    "j": ("NAME", lambda j, v: j.name, True),
    "k": ("COMMENT", lambda j, v: j.comment if j.comment is not None else "(null)", True),
    "K": ("ARRAY_TASK_ID", lambda j, v: "N/A", True),
    "l": ("TIME_LIMIT", lambda j, v: squeue_time_limit(j.time_limit), False),
    "L": ("TIME_LEFT", _time_left, False),
    "m": ("MIN_MEMORY", lambda j, v: memory_mb(j.memory_mb), True),
    "M": ("TIME", lambda j, v: squeue_duration(_time_used(j, v)), False),
    "n": ("REQ_NODES", lambda j, v: "", True),
    "N": ("NODELIST", lambda j, v: compress_hostlist(j.nodes), False),
    "o": ("COMMAND", lambda j, v: j.command or "(null)", True),
    "p": ("PRIORITY", lambda j, v: f"{j.priority / 0xFFFFFFFF:16.14f}", True),
    "P": ("PARTITION", lambda j, v: j.partition, True),
    "q": ("QOS", lambda j, v: "normal", True),
    "Q": ("PRIORITY", lambda j, v: str(j.priority), True),
    "r": ("REASON", lambda j, v: j.reason, True),
    "R": ("NODELIST(REASON)", lambda j, v: _reason_list(j, v)[0], False),
    "S": ("START_TIME", lambda j, v: slurm_time(_start_time(j, v)), True),
    "t": ("ST", lambda j, v: j.state_compact(), True),
    "T": ("STATE", lambda j, v: j.state_name(), True),
    "u": ("USER", lambda j, v: j.user.name, True),
    "U": ("UID", lambda j, v: str(j.user.uid), True),
    "V": ("SUBMIT_TIME", lambda j, v: slurm_time(j.submit_time), True),
    "x": ("EXC_NODES", lambda j, v: "", True),
    "y": ("NICE", lambda j, v: "0", True),
    "Y": ("SCHEDNODES", lambda j, v: "(null)", False),
    "Z": ("WORK_DIR", lambda j, v: j.workdir, True),
}


@dataclass
class Column:
    letter: str
    width: int
    right: bool
    suffix: str


def parse_format(fmt: str) -> tuple[str, list[Column], list[str]]:
    """parse_format(): a prefix, then %[.][width]<letter><suffix> tokens (strtok on '%')."""
    errors: list[str] = []
    prefix = ""
    body = fmt
    position = fmt.find("%")
    if position == -1:
        return fmt, [], errors
    prefix, body = fmt[:position], fmt[position:]
    columns: list[Column] = []
    for token in body.split("%"):
        if not token:
            continue
        index = 0
        right = token[0] == "."
        if right:
            index = 1
        digits = ""
        while index < len(token) and token[index].isdigit():
            digits += token[index]
            index += 1
        letter = token[index] if index < len(token) else ""
        suffix = token[index + 1 :]
        width = int(digits) if digits else 0
        if letter in FIELDS:
            columns.append(Column(letter, width, right, suffix))
        else:
            errors.append(f"squeue: error: Invalid job format specification: {letter}\n")
            columns.append(Column("", width, right, "%" + token))
    return prefix, columns, errors


def render(columns: list[Column], prefix: str, job: Job | None, view: View) -> str:
    parts = [prefix]
    for column in columns:
        if not column.letter:
            parts.append(column.suffix)
            continue
        header, function, cut = FIELDS[column.letter]
        if job is None:
            value = header
            cut_value = column.letter not in ("N", "R", "Y")
        elif column.letter == "R":
            value, cut_value = _reason_list(job, view)
        else:
            value = function(job, view)
            cut_value = cut
        parts.append(fit(value, column.width, column.right, cut_value))
        parts.append(column.suffix)
    return "".join(parts)


SORT_KEYS: dict[str, Callable[[Job, View], object]] = {
    "i": lambda j, v: j.job_id,
    "A": lambda j, v: j.job_id,
    "j": lambda j, v: j.name,
    "u": lambda j, v: j.user.name,
    "a": lambda j, v: j.account,
    "P": lambda j, v: j.partition,
    "p": lambda j, v: j.priority,
    "Q": lambda j, v: j.priority,
    "t": lambda j, v: j.state_compact(),  # sort.c compares the state strings
    "T": lambda j, v: j.state_name(),
    "S": lambda j, v: _start_time(j, v) or 0,
    "V": lambda j, v: j.submit_time,
    "M": lambda j, v: _time_used(j, v),
    "l": lambda j, v: j.time_limit if j.time_limit is not None else 1 << 40,
    "D": lambda j, v: j.num_nodes,
    "C": lambda j, v: j.num_cpus,
    "N": lambda j, v: ",".join(j.nodes),
}


def sort_jobs(jobs: list[Job], spec: str, view: View) -> list[Job]:
    ordered = list(jobs)
    for item in reversed([s for s in spec.split(",") if s]):
        descending = item.startswith("-")
        letter = item.lstrip("+-")[:1]
        key = SORT_KEYS.get(letter)
        if key is not None:
            ordered.sort(key=lambda j, k=key: k(j, view), reverse=descending)  # type: ignore[misc]
    return ordered


async def main(ctx: Context, argv: list[str]) -> int:
    try:
        options, positional = parse("squeue", argv, OPTIONS)
    except GetoptError as error:
        ctx.err(f'{error}\nTry "squeue --help" for more information\n')
        return 1
    fmt: str | None = None
    job_flag = False
    jobs_arg: str | None = None
    users_arg: str | None = None
    names: list[str] | None = None
    partitions: list[str] | None = None
    accounts: list[str] | None = None
    states_arg: str | None = None
    sort: str | None = None
    no_header = long_list = start_flag = False
    for key, value in options:
        if key == "version":
            ctx.out(f"slurm {SLURM_VERSION}\n")
            return 0
        if key in ("help", "usage"):
            ctx.out("Usage: squeue [OPTIONS]\n")
            return 0
        if key == "format":
            fmt = value
        elif key == "format_long":
            ctx.err("squeue: error: -O (--Format) is not supported by this site\n")
            return 1
        elif key == "jobs":
            job_flag = True
            if value is not None:
                jobs_arg = value
        elif key == "users":
            users_arg = value
        elif key == "me":
            users_arg = str(ctx.user.uid)
        elif key == "name":
            names = [n for n in (value or "").split(",") if n]
        elif key == "partitions":
            partitions = [p for p in (value or "").split(",") if p]
        elif key == "accounts":
            accounts = [a for a in (value or "").split(",") if a]
        elif key == "states":
            states_arg = value
        elif key == "sort":
            sort = value
        elif key == "noheader":
            no_header = True
        elif key == "long":
            long_list = True
        elif key == "start":
            start_flag = True
        elif key == "iterate":
            ctx.err("squeue: error: --iterate is not available over this connection\n")
            return 1
    if positional:
        if job_flag and jobs_arg is None:
            jobs_arg = positional.pop(0)
        if positional:
            ctx.err(f"squeue: error: Unrecognized option: {positional[0]}\n")
            ctx.out("Usage: squeue [-A account] [--clusters names] [-i seconds] [--job jobid]\n")
            return 1
    if long_list and fmt is not None:
        ctx.err(
            "squeue: fatal: Options -o(--format) and -l(--long) are mutually exclusive. "
            "Please remove one and retry.\n"
        )
        return 1
    job_ids: list[int] | None = None
    if jobs_arg is not None:
        job_ids = []
        for token in jobs_arg.split(","):
            if not token:
                continue
            number = _leading_int(token)
            if number <= 0:
                ctx.err(f"squeue: error: Invalid job id: {token}\n")
                return 1
            job_ids.append(number)
    states: set[str] | None = None
    all_states = False
    if start_flag and states_arg is None:
        states_arg = "PD"
    if states_arg is not None:
        if states_arg.lower() == "all":
            all_states = True
        else:
            states = set()
            for token in [t for t in states_arg.split(",") if t]:
                name = STATE_NAMES.get(token.upper())
                if name is None:
                    ctx.err(
                        f"squeue: error: Invalid job state specified: {token}\n"
                        f"squeue: error: Valid job states include: {VALID_STATES}\n\n"
                    )
                    return 1
                states.add(name)
    uids: set[int] | None = None
    if users_arg is not None:
        uids = set()
        for token in [t for t in users_arg.split(",") if t]:
            if token.isdigit():
                uids.add(int(token))
                continue
            uid = ctx.cluster.uid_of(token)
            if uid is None:
                ctx.err(f"squeue: error: Invalid user: {token}\n\n")
            else:
                uids.add(uid)
    if fmt is None:
        fmt = START_FORMAT if start_flag else (LONG_FORMAT if long_list else DEFAULT_FORMAT)
    if sort is None:
        sort = "S" if start_flag else "P,t,-p"
    # One job id or one user: squeue asks with a narrower RPC, which gives up after two tries.
    single = len(job_ids) == 1 if job_ids is not None else uids is not None and len(uids) == 1
    if not await ctx.contact_controller(attempts=2 if single else 1):
        ctx.err(f"slurm_load_jobs error: {CONNECT_FAILURE}\n")
        return 1
    cluster = ctx.cluster
    if job_ids is not None and len(job_ids) == 1 and job_ids[0] not in cluster.jobs:
        ctx.err("slurm_load_jobs error: Invalid job id specified\n")
        return 1
    prefix, columns, format_errors = parse_format(fmt)
    for line in format_errors:
        ctx.err(line)
    now = time.time()
    needs_estimates = any(c.letter in ("S", "e") for c in columns) or "S" in sort
    view = View(cluster, now, cluster.estimated_starts() if needs_estimates else {})
    id_set = set(job_ids) if job_ids is not None else None
    name_set = {n.lower() for n in names} if names is not None else None
    account_set = {a.lower() for a in accounts} if accounts is not None else None
    partition_set = set(partitions) if partitions is not None else None
    source = (
        [cluster.jobs[i] for i in sorted(id_set) if i in cluster.jobs]
        if id_set is not None
        else list(cluster.jobs.values())
    )
    selected: list[Job] = []
    for job in source:
        if cluster.faults.hides(job, ctx.user.name):
            continue
        if account_set is not None and job.account.lower() not in account_set:
            continue
        if not all_states:
            if states is not None:
                if not _state_matches(job, states):
                    continue
            elif job.state.finished and not job.completing:
                continue
        if uids is not None and job.user.uid not in uids:
            continue
        if name_set is not None and job.name.lower() not in name_set:
            continue
        if partition_set is not None and job.partition not in partition_set:
            continue
        selected.append(job)
    selected = sort_jobs(selected, sort, view)
    lines = [] if no_header else [render(columns, prefix, None, view)]
    lines.extend(render(columns, prefix, job, view) for job in selected)
    if lines:
        ctx.out("\n".join(lines) + "\n")
    return 0


def _state_matches(job: Job, states: set[str]) -> bool:
    if job.completing:
        return "COMPLETING" in states
    return job.state.value in states


def _leading_int(token: str) -> int:
    digits = ""
    for char in token:
        if not char.isdigit():
            break
        digits += char
    return int(digits) if digits else 0
