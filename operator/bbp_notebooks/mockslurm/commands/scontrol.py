"""scontrol: show job (key=value records), update job TimeLimit, version."""

from __future__ import annotations

import time

from bbp_notebooks.mockslurm.cluster import SLURM_VERSION, Cluster, Job, JobState
from bbp_notebooks.mockslurm.commands.base import CONNECT_FAILURE, Context
from bbp_notebooks.mockslurm.formats import (
    TimeFormatError,
    compress_hostlist,
    memory_mb,
    parse_time_limit,
    slurm_duration,
    slurm_limit,
    slurm_time,
)
from bbp_notebooks.mockslurm.getopt import GetoptError, Option, parse

OPTIONS = [
    Option("all", "a", ("all",)),
    Option("details", "d", ("details",)),
    Option("oneliner", "o", ("oneliner",)),
    Option("quiet", "Q", ("quiet",)),
    Option("verbose", "v", ("verbose",)),
    Option("version", "V", ("version",)),
    Option("help", "h", ("help",)),
]


def show_job(cluster: Cluster, job: Job, now: float, oneliner: bool) -> str:
    estimates = cluster.estimated_starts() if job.state is JobState.PENDING else {}
    start = job.start_time if job.state is not JobState.PENDING else estimates.get(job.job_id)
    if job.state.finished:
        end: float | None = job.end_time
    elif start is not None and job.time_limit is not None:
        end = start + job.time_limit * 60
    else:
        end = None
    nodes = compress_hostlist(job.nodes) if job.nodes else "(null)"
    mem = memory_mb(job.memory_mb) if job.memory_mb else "0"
    tres = f"cpu={job.num_cpus},mem={mem},node={job.num_nodes},billing={job.num_cpus}"
    user = job.user
    lines = [
        f"JobId={job.job_id} JobName={job.name}",
        f"UserId={user.name}({user.uid}) GroupId={user.group}({user.gid}) MCS_label=N/A",
        f"Priority={job.priority} Nice=0 Account={job.account} QOS=normal",
        f"JobState={job.state_name()} Reason={job.reason} Dependency=(null)",
        f"Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode={job.exit_code()}",
        f"RunTime={slurm_duration(job.elapsed(now) if job.start_time else 0)} "
        f"TimeLimit={slurm_limit(job.time_limit)} TimeMin=N/A",
        f"SubmitTime={slurm_time(job.submit_time)} EligibleTime={slurm_time(job.submit_time)}",
        f"AccrueTime={slurm_time(job.submit_time)}",
        f"StartTime={slurm_time(start, 'Unknown')} EndTime={slurm_time(end, 'Unknown')} "
        "Deadline=N/A",
        f"SuspendTime=None SecsPreSuspend=0 LastSchedEval={slurm_time(now)} Scheduler=Main",
        f"Partition={job.partition} AllocNode:Sid={cluster.config.name}-login:0",
        "ReqNodeList=(null) ExcNodeList=(null)",
        f"NodeList={nodes}",
        *([f"BatchHost={job.nodes[0]}"] if job.nodes else []),
        f"NumNodes={job.num_nodes} NumCPUs={job.num_cpus} NumTasks={job.ntasks or job.num_nodes} "
        f"CPUs/Task={job.cpus_per_task} ReqB:S:C:T=0:0:*:*",
        f"TRES={tres}",
        "Socks/Node=* NtasksPerN:B:S:C=0:0:*:* CoreSpec=*",
        f"MinCPUsNode={job.cpus_per_node} MinMemoryNode={mem} MinTmpDiskNode=0",
        "Features=(null) DelayBoot=00:00:00",
        "OverSubscribe=OK Contiguous=0 Licenses=(null) Network=(null)",
        f"Command={job.command or '(null)'}",
        f"WorkDir={job.workdir}",
        *([f"Comment={job.comment}"] if job.comment is not None else []),
        f"StdErr={job.stderr_path}",
        "StdIn=/dev/null",
        f"StdOut={job.stdout_path}",
        "Power=",
    ]
    if oneliner:
        return " ".join(lines) + "\n"
    return lines[0] + "\n" + "".join(f"   {line}\n" for line in lines[1:]) + "\n"


async def main(ctx: Context, argv: list[str]) -> int:
    try:
        options, positional = parse("scontrol", argv, OPTIONS)
    except GetoptError as error:
        ctx.err(f'{error}\nTry "scontrol --help" for more information\n')
        return 1
    keys = {key for key, _ in options}
    if "version" in keys or (positional and positional[0].lower() == "version"):
        ctx.out(f"slurm {SLURM_VERSION}\n")
        return 0
    if not positional:
        ctx.err("scontrol: error: no command given (interactive mode is not available)\n")
        return 1
    verb = positional[0].lower()
    if verb == "show" and len(positional) >= 2 and positional[1].lower() in ("job", "jobs"):
        return await _show(ctx, positional[2:], "oneliner" in keys)
    if verb == "update":
        return await _update(ctx, positional[1:])
    ctx.err(f"invalid keyword: {positional[0]}\n")
    return 1


async def _show(ctx: Context, args: list[str], oneliner: bool) -> int:
    # Like squeue -j: one job is asked for with an RPC that gives up after two tries.
    if not await ctx.contact_controller(attempts=2 if args else 1):
        ctx.err(f"slurm_load_jobs error: {CONNECT_FAILURE}\n")
        return 1
    cluster = ctx.cluster
    now = time.time()
    if args:
        token = args[0].split(".")[0].split("_")[0]
        if not token.isdigit():
            ctx.err("Invalid job id specified\n")
            return 1
        job = cluster.jobs.get(int(token))
        if job is None:
            ctx.err("slurm_load_jobs error: Invalid job id specified\n")
            return 1
        ctx.out(show_job(cluster, job, now, oneliner))
        return 0
    if not cluster.jobs:
        ctx.out("No jobs in the system\n")
        return 0
    ctx.out("".join(show_job(cluster, job, now, oneliner) for job in cluster.jobs.values()))
    return 0


async def _update(ctx: Context, args: list[str]) -> int:
    fields: dict[str, str] = {}
    for arg in args:
        key, has_value, value = arg.partition("=")
        if not has_value:
            ctx.err(f"Invalid input: {arg}\nRequest aborted\n")
            return 1
        fields[key.lower()] = value
    job_text = fields.pop("jobid", fields.pop("job", None))
    if job_text is None or not job_text.isdigit():
        ctx.err("No job ID specified\nRequest aborted\n") if job_text is None else ctx.err(
            f"Invalid JobId value: {job_text}\nRequest aborted\n"
        )
        return 1
    limit_text = fields.pop("timelimit", None)
    if fields:
        ctx.err(
            f"Update of this parameter is not supported: {next(iter(fields))}=...\n"
            "Request aborted\n"
        )
        return 1
    if limit_text is None:
        return 0
    if not await ctx.contact_controller():
        ctx.err(f"slurm_update error: {CONNECT_FAILURE}\n")
        return 1
    cluster = ctx.cluster
    job = cluster.jobs.get(int(job_text))
    if job is None:
        ctx.err("slurm_update error: Invalid job id specified\n")
        return 1
    # Slurm 22.05: root, SlurmUser and accounts with AdminLevel>=Operator may change anybody's
    # job and raise limits; a user may only lower the limit of their own job.
    configured = cluster.config.user(ctx.user.name)
    operator = ctx.user.uid == 0 or (
        configured is not None and configured.admin_level in ("Operator", "Administrator")
    )
    if job.user.uid != ctx.user.uid and not operator:
        ctx.err("slurm_update error: Access/permission denied\n")
        return 1
    if job.state.finished:
        ctx.err("slurm_update error: Job/step already completing or completed\n")
        return 1
    increment = limit_text[:1] if limit_text[:1] in "+-" else ""
    try:
        minutes = parse_time_limit(limit_text[1:] if increment else limit_text)
    except TimeFormatError:
        ctx.err(f"Invalid TimeLimit value: {limit_text}\nRequest aborted\n")
        return 1
    current = job.time_limit
    if increment:
        if minutes is None or current is None:
            ctx.err(f"Invalid TimeLimit value: {limit_text}\nRequest aborted\n")
            return 1
        minutes = current + minutes if increment == "+" else max(0, current - minutes)
    raising = current is not None and (minutes is None or minutes > current)
    # ...except that a pending job's owner may raise it up to the partition's MaxTime.
    max_time = cluster.partitions[job.partition].max_time
    within = minutes is not None and (max_time is None or minutes <= max_time)
    if raising and not operator and not (job.state is JobState.PENDING and within):
        ctx.err(f"Access/permission denied for job {job.job_id}\n")
        return 1
    # An operator is not held to the partition's MaxTime (real Slurm 22.05 accepts it: the
    # contract suite checks); bounding an extension is the caller's job.
    partition = cluster.partitions[job.partition]
    if (
        not operator
        and partition.max_time is not None
        and (minutes is None or minutes > partition.max_time)
    ):
        ctx.err(
            "slurm_update error: Requested time limit is invalid (missing or exceeds some limit)\n"
        )
        return 1
    cluster.set_time_limit(job, minutes)
    return 0
