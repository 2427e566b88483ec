"""sacct: the accounting view (slurmdbd), which keeps jobs long after squeue forgets them."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

from bbp_notebooks.mockslurm.cluster import Job, JobState
from bbp_notebooks.mockslurm.commands.base import Context, parse_options
from bbp_notebooks.mockslurm.formats import (
    compress_hostlist,
    memory_mb,
    parse_datetime,
    slurm_duration,
    slurm_limit,
    slurm_time,
)
from bbp_notebooks.mockslurm.getopt import Arg, Option

R = Arg.REQUIRED
OPTIONS = [
    Option("allusers", "a", ("allusers",)),
    Option("accounts", "A", ("accounts", "account"), R),
    Option("brief", "b", ("brief",)),
    Option("completion", "c", ("completion",)),
    Option("duplicates", "D", ("duplicates",)),
    Option("endtime", "E", ("endtime",), R),
    Option("format", "o", ("format",), R),
    Option("help", "h", ("help",)),
    Option("jobs", "j", ("jobs",), R),
    Option("long", "l", ("long",)),
    Option("clusters", "M", ("clusters",), R),
    Option("allclusters", "L", ("allclusters",)),
    Option("noheader", "n", ("noheader",)),
    Option("name", None, ("name",), R),
    Option("noconvert", None, ("noconvert",)),
    Option("parsable", "p", ("parsable",)),
    Option("parsable2", "P", ("parsable2",)),
    Option("partition", "r", ("partition",), R),
    Option("state", "s", ("state",), R),
    Option("starttime", "S", ("starttime",), R),
    Option("truncate", "T", ("truncate",)),
    Option("user", "u", ("user", "uid"), R),
    Option("usage", None, ("usage",)),
    Option("verbose", "v", ("verbose",)),
    Option("version", "V", ("version",)),
    Option("allocations", "X", ("allocations",)),
    Option("delimiter", None, ("delimiter",), R),
]

DEFAULT_FORMAT = "JobID,JobName,Partition,Account,AllocCPUS,State,ExitCode"
BRIEF_FORMAT = "JobID,State,ExitCode"

STATE_ABBREVIATIONS = {
    "PD": "PENDING", "R": "RUNNING", "CD": "COMPLETED", "CA": "CANCELLED", "F": "FAILED",
    "TO": "TIMEOUT", "NF": "NODE_FAIL", "S": "SUSPENDED", "PR": "PREEMPTED",
    "BF": "BOOT_FAIL", "DL": "DEADLINE", "OOM": "OUT_OF_MEMORY", "RQ": "REQUEUED",
    "RS": "RESIZING", "RV": "REVOKED",
}  # fmt: skip


@dataclass
class Row:
    """One line of sacct: the job allocation or its batch step."""

    job: Job
    step: str | None  # None for the allocation, "batch" for the batch step
    now: float

    @property
    def is_step(self) -> bool:
        return self.step is not None


def _state(row: Row) -> str:
    if row.is_step:
        state = row.job.batch_state or JobState.RUNNING
        return state.value
    return row.job.accounting_state()


def _start(row: Row) -> str:
    return slurm_time(row.job.start_time, "Unknown")


def _end(row: Row) -> str:
    job = row.job
    if job.end_time is None or (row.is_step and job.completing):
        return "Unknown"
    return slurm_time(job.end_time)


def _elapsed(row: Row) -> int:
    return row.job.elapsed(row.now)


def _nodelist(row: Row) -> str:
    if row.is_step:
        return row.job.nodes[0] if row.job.nodes else ""
    return compress_hostlist(row.job.nodes) if row.job.nodes else "None assigned"


FieldFn = Callable[[Row], str]
# name (canonical capitalisation) -> (default width, value)
FIELDS: dict[str, tuple[int, FieldFn]] = {
    "Account": (10, lambda r: r.job.account),
    "AllocCPUS": (10, lambda r: str(r.job.cpus_per_node if r.is_step else r.job.num_cpus)),
    "AllocNodes": (10, lambda r: str(1 if r.is_step else len(r.job.nodes))),
    "Cluster": (10, lambda r: ""),
    "Comment": (15, lambda r: "" if r.is_step else (r.job.comment or "")),
    "DerivedExitCode": (15, lambda r: "" if r.is_step else "0:0"),
    "Elapsed": (10, lambda r: slurm_duration(_elapsed(r))),
    "ElapsedRaw": (10, lambda r: str(_elapsed(r))),
    "Eligible": (19, lambda r: slurm_time(r.job.submit_time, "Unknown")),
    "End": (19, _end),
    "ExitCode": (8, lambda r: r.job.batch_exit_code() if r.is_step else r.job.exit_code()),
    "GID": (6, lambda r: str(r.job.user.gid)),
    "Group": (9, lambda r: "" if r.is_step else r.job.user.group),
    "JobID": (12, lambda r: f"{r.job.job_id}.{r.step}" if r.is_step else str(r.job.job_id)),
    "JobIDRaw": (12, lambda r: f"{r.job.job_id}.{r.step}" if r.is_step else str(r.job.job_id)),
    "JobName": (10, lambda r: r.step if r.step else r.job.name),
    "NCPUS": (10, lambda r: str(r.job.cpus_per_node if r.is_step else r.job.num_cpus)),
    "NNodes": (8, lambda r: str(1 if r.is_step else r.job.num_nodes)),
    "NodeList": (15, _nodelist),
    "Partition": (10, lambda r: "" if r.is_step else r.job.partition),
    "Priority": (10, lambda r: "" if r.is_step else str(r.job.priority)),
    "QOS": (10, lambda r: "" if r.is_step else "normal"),
    "Reason": (22, lambda r: "" if r.is_step else r.job.reason),
    "ReqCPUS": (8, lambda r: str(r.job.cpus_per_node if r.is_step else r.job.num_cpus)),
    "ReqMem": (10, lambda r: memory_mb(r.job.memory_mb) if r.job.memory_mb else "0"),
    "ReqNodes": (8, lambda r: str(1 if r.is_step else r.job.num_nodes)),
    "Start": (19, _start),
    "State": (10, _state),
    "Submit": (19, lambda r: slurm_time(r.job.start_time if r.is_step else r.job.submit_time)),
    "Timelimit": (10, lambda r: "" if r.is_step else slurm_limit(r.job.time_limit)),
    "TimelimitRaw": (
        12,
        lambda r: (
            ""
            if r.is_step
            else ("UNLIMITED" if r.job.time_limit is None else str(r.job.time_limit))
        ),
    ),
    "UID": (6, lambda r: "" if r.is_step else str(r.job.user.uid)),
    "User": (9, lambda r: "" if r.is_step else r.job.user.name),
    "WorkDir": (15, lambda r: "" if r.is_step else r.job.workdir),
}
_BY_LOWER = {name.lower(): name for name in FIELDS}


@dataclass
class Column:
    name: str
    width: int


def _columns(fmt: str) -> tuple[list[Column], str | None]:
    columns: list[Column] = []
    for item in [i for i in fmt.split(",") if i]:
        name, _, width = item.partition("%")
        canonical = _BY_LOWER.get(name.lower())
        if canonical is None:
            return [], name
        default = FIELDS[canonical][0]
        columns.append(Column(canonical, int(width) if width.lstrip("-").isdigit() else default))
    return columns, None


def _cell(value: str, width: int) -> str:
    """print_fields_str: right-justified, a trailing '+' marks a truncated value."""
    size = abs(width)
    if len(value) > size:
        value = value[: size - 1] + "+"
    return value.ljust(size) if width < 0 else value.rjust(size)


async def main(ctx: Context, argv: list[str]) -> int:
    parsed = parse_options(ctx, "sacct", argv, OPTIONS, "[OPTIONS]")
    if isinstance(parsed, int):
        return parsed
    settings, positional = parsed
    if positional:
        ctx.err(f"sacct: error: Unknown arguments: {' '.join(positional)}\n")
        return 1
    fmt = settings.get("format") or (BRIEF_FORMAT if "brief" in settings else DEFAULT_FORMAT)
    columns, bad = _columns(fmt)
    if bad is not None:
        ctx.err(f'sacct: error: Invalid field requested: "{bad}"\n')
        return 1
    if not await ctx.contact_database("sacct"):
        return 1
    now = time.time()
    job_ids: set[int] | None = None
    if "jobs" in settings:
        job_ids = set()
        for token in [t for t in (settings["jobs"] or "").split(",") if t]:
            head = token.split(".")[0].split("_")[0]
            if not head.isdigit():
                ctx.err(f"sacct: fatal: Bad job/step specified: {token}\n")
                return 1
            job_ids.add(int(head))
    start_text = settings.get("starttime")
    if start_text is not None:
        window_start = parse_datetime(start_text, now)
        if window_start is None:
            ctx.err(f"sacct: error: invalid time format: {start_text}\n")
            return 1
    elif job_ids is not None:
        window_start = 0.0
    else:
        window_start = parse_datetime("midnight", now) or 0.0
    end_text = settings.get("endtime")
    window_end = now
    if end_text is not None:
        parsed_end = parse_datetime(end_text, now)
        if parsed_end is None:
            ctx.err(f"sacct: error: invalid time format: {end_text}\n")
            return 1
        window_end = parsed_end
    uids: set[int] | None = None
    if "user" in settings:
        uids = set()
        for token in [t for t in (settings["user"] or "").split(",") if t]:
            uid = int(token) if token.isdigit() else ctx.cluster.uid_of(token)
            if uid is None:
                ctx.err(f"sacct: fatal: Invalid user id: {token}\n")
                return 1
            uids.add(uid)
    elif "allusers" not in settings and job_ids is None and ctx.user.uid != 0:
        uids = {ctx.user.uid}
    states: set[str] | None = None
    if "state" in settings:
        states = set()
        for token in [t for t in (settings["state"] or "").split(",") if t]:
            upper = token.upper()
            states.add(STATE_ABBREVIATIONS.get(upper, upper))
    accounts = _csv(settings.get("accounts"))
    partitions = _csv(settings.get("partition"))
    names = _csv(settings.get("name"))
    rows: list[Row] = []
    source = ctx.cluster.accounting
    candidates = (
        [source[i] for i in sorted(job_ids) if i in source]
        if job_ids is not None
        else list(source.values())
    )
    for job in candidates:
        if ctx.cluster.faults.hides(job, ctx.user.name):
            continue
        if uids is not None and job.user.uid not in uids:
            continue
        if "completion" in settings and (not job.state.finished or job.completing):
            continue
        if job.submit_time > window_end:
            continue
        if job.end_time is not None and job.end_time < window_start:
            continue
        if states is not None and job.state.value not in states:
            continue
        if accounts is not None and job.account not in accounts:
            continue
        if partitions is not None and job.partition not in partitions:
            continue
        if names is not None and job.name not in names:
            continue
        rows.append(Row(job, None, now))
        # --completion reads the jobcomp log, which records allocations only.
        if "allocations" not in settings and "completion" not in settings and job.ran:
            rows.append(Row(job, "batch", now))
    parsable = "parsable" in settings or "parsable2" in settings
    delimiter = settings.get("delimiter") or "|"
    trailing = delimiter if "parsable" in settings and "parsable2" not in settings else ""
    lines: list[str] = []
    if "noheader" not in settings:
        if parsable:
            lines.append(delimiter.join(c.name for c in columns) + trailing)
        else:
            lines.append(" ".join(_cell(c.name, c.width) for c in columns) + " ")
            lines.append(" ".join("-" * abs(c.width) for c in columns) + " ")
    for row in rows:
        values = [FIELDS[c.name][1](row) for c in columns]
        if parsable:
            lines.append(delimiter.join(values) + trailing)
        else:
            lines.append(
                " ".join(_cell(v, c.width) for v, c in zip(values, columns, strict=True)) + " "
            )
    if lines:
        ctx.out("\n".join(lines) + "\n")
    return 0


def _csv(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {item for item in value.split(",") if item}
