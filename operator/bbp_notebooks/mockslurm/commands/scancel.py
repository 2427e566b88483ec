"""scancel: by job id or by filters (user, name, state, partition, account)."""

from __future__ import annotations

import signal as signals

from bbp_notebooks.mockslurm.cluster import Job, JobState
from bbp_notebooks.mockslurm.commands.base import CONNECT_FAILURE, Context, parse_options
from bbp_notebooks.mockslurm.getopt import Arg, Option

R = Arg.REQUIRED
OPTIONS = [
    Option("account", "A", ("account",), R),
    Option("batch", "b", ("batch",)),
    Option("full", "f", ("full",)),
    Option("interactive", "i", ("interactive",)),
    Option("clusters", "M", ("clusters", "cluster"), R),
    Option("me", None, ("me",)),
    Option("name", "n", ("name", "jobname"), R),
    Option("nodelist", "w", ("nodelist",), R),
    Option("partition", "p", ("partition",), R),
    Option("qos", "q", ("qos",), R),
    Option("quiet", "Q", ("quiet",)),
    Option("reservation", "R", ("reservation",), R),
    Option("signal", "s", ("signal",), R),
    Option("state", "t", ("state",), R),
    Option("user", "u", ("user",), R),
    Option("verbose", "v", ("verbose",)),
    Option("version", "V", ("version",)),
    Option("help", None, ("help",)),
    Option("usage", None, ("usage",)),
]

STATES = {"PENDING": JobState.PENDING, "PD": JobState.PENDING,
          "RUNNING": JobState.RUNNING, "R": JobState.RUNNING}  # fmt: skip

# scancel exits with the largest Slurm errno it met, truncated to 8 bits by exit(3), as 22.05 does
# (checked against real Slurm: tests/slurm/test_contract.py, tests/realslurm/samples).
EXIT_ACCESS_DENIED = 2002 & 0xFF  # ESLURM_ACCESS_DENIED -> 210
EXIT_TRANSITION_STATE = 2020 & 0xFF  # ESLURM_TRANSITION_STATE_NO_UPDATE -> 228
EXIT_CONTROLLER_DOWN = 1800 & 0xFF  # SLURMCTLD_COMMUNICATIONS_CONNECTION_ERROR -> 8


def _signal_number(text: str) -> int | None:
    if text.isdigit():
        return int(text)
    name = text.upper()
    if not name.startswith("SIG"):
        name = "SIG" + name
    value = getattr(signals, name, None)
    return int(value) if isinstance(value, signals.Signals) else None


async def main(ctx: Context, argv: list[str]) -> int:
    usage = "[OPTIONS] [job_id[_array_id][.step_id]]"
    parsed = parse_options(ctx, "scancel", argv, OPTIONS, usage)
    if isinstance(parsed, int):
        return parsed
    settings, positional = parsed
    signum: int = signals.SIGKILL
    if "signal" in settings:
        number = _signal_number(settings["signal"] or "")
        if number is None:
            ctx.err(f"scancel: error: Invalid job signal: {settings['signal']}\n")
            return 1
        signum = number
    job_ids: list[int] = []
    for token in positional:
        head = token.split(".")[0].split("_")[0]
        if not head.isdigit() or int(head) == 0:
            ctx.err(f"scancel: error: Invalid job id {token}\n")
            return 1
        job_ids.append(int(head))
    filters = {"user", "name", "state", "partition", "account", "me", "qos", "nodelist"}
    if not job_ids and not (filters & settings.keys()):
        ctx.err("scancel: error: No job identification provided\n")
        return 1
    users: set[int] | None = None
    if "me" in settings:
        users = {ctx.user.uid}
    if "user" in settings:
        users = set()
        for token in [t for t in (settings["user"] or "").split(",") if t]:
            uid = int(token) if token.isdigit() else ctx.cluster.uid_of(token)
            if uid is None:
                ctx.err(f"scancel: error: Invalid user name: {token}\n")
                return 1
            users.add(uid)
    state_filter: JobState | None = None
    if "state" in settings:
        state_filter = STATES.get((settings["state"] or "").upper())
        if state_filter is None:
            ctx.err(f"scancel: error: Invalid job state specified: {settings['state']}\n")
            return 1
    if not await ctx.contact_controller():
        if job_ids:
            for job_id in job_ids:
                ctx.err(f"scancel: error: Kill job error on job id {job_id}: {CONNECT_FAILURE}\n")
        else:
            ctx.err(f"scancel: error: slurm_load_jobs error: {CONNECT_FAILURE}\n")
        return EXIT_CONTROLLER_DOWN if job_ids else 1
    cluster = ctx.cluster
    names = _csv(settings.get("name"))
    partitions = _csv(settings.get("partition"))
    accounts = _csv(settings.get("account"))

    def wanted(job: Job) -> bool:
        if users is not None and job.user.uid not in users:
            return False
        if names is not None and job.name not in names:
            return False
        if partitions is not None and job.partition not in partitions:
            return False
        if accounts is not None and job.account not in accounts:
            return False
        if state_filter is not None and job.state is not state_filter:
            return False
        return True

    status = 0
    if job_ids:
        targets: list[tuple[int, Job | None]] = [(i, cluster.jobs.get(i)) for i in job_ids]
        explicit = True
    else:
        targets = [
            (job.job_id, job)
            for job in list(cluster.jobs.values())
            if not job.state.finished and wanted(job)
        ]
        explicit = False
    verbose = "verbose" in settings
    for job_id, job in targets:
        if explicit and verbose:
            ctx.err(f"scancel: Terminating job {job_id}\n")
        if job is not None and explicit and not wanted(job):
            continue
        gone = None
        if job is None:
            gone = "Invalid job id specified"
        elif job.user.uid != ctx.user.uid and ctx.user.uid != 0:
            ctx.err(
                f"scancel: error: Kill job error on job id {job_id}: Access/permission denied\n"
            )
            status = max(status, EXIT_ACCESS_DENIED)
            continue
        elif job.state.finished or job.completing:
            gone = "Job/step already completing or completed"
        if gone is not None:
            # A job that is over (or unknown) counts as cancelled: silent and exit 0 unless -v;
            # only a signal other than KILL makes it an error.
            if verbose or signum != signals.SIGKILL:
                ctx.err(f"scancel: error: Kill job error on job id {job_id}: {gone}\n")
            if signum != signals.SIGKILL:
                status = max(status, 1)
            continue
        assert job is not None
        if signum != signals.SIGKILL and job.state is JobState.PENDING:
            ctx.err(
                f"scancel: error: Kill job error on job id {job_id}: "
                "Job can not be altered now, try again later\n"
            )
            status = max(status, EXIT_TRANSITION_STATE)
            continue
        cluster.cancel(job, ctx.user.uid, signum)
    return status


def _csv(value: str | None) -> set[str] | None:
    if value is None:
        return None
    return {item for item in value.split(",") if item}
