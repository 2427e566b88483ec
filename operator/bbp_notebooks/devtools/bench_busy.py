"""What one poll costs a real slurmctld whose queue is busy with other users' jobs.

Starts the real Slurm deployment (devtools.realslurm, the test fixture's clusters), fills
geneva's queue with held jobs of a user who has no sessions (bob) and ``ours`` held jobs tagged
as sessions of alice, then reads slurmctld's own accounting (``sdiag``: total time by RPC type)
around each query form the operator could poll with, and around per-session polling
(``squeue -j`` per session per interval, as batchspawner does). Needs root; run under
``flock /tmp/realslurm.lock`` (the deployment uses fixed loopback ports).
"""

from __future__ import annotations

import dataclasses
import re
import secrets
import shlex
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Sequence
from pathlib import Path

from bbp_notebooks.devtools import realslurm
from bbp_notebooks.operator.planning import job_name
from bbp_notebooks.slurm import commands

# sdiag's lines in "Remote Procedure Call statistics by message type", e.g.
#   REQUEST_JOB_INFO                        ( 2003) count:10     ave_time:5800   total_time:58000
_RPC_LINE = re.compile(
    r"^\s*(REQUEST_\w+)\s+\(\s*\d+\)\s+count:(\d+)\s+ave_time:\d+\s+total_time:(\d+)"
)
# sdiag's own requests are not part of what is measured.
_NOT_MEASURED = frozenset({"REQUEST_STATS_INFO", "REQUEST_RESET_STATS"})
INSTALLATION = "benchbusy"
OWNER = "alice"  # the user with sessions
OTHER = "bob"  # a user with jobs but no sessions ("the rest of the centre")
SITE = "geneva"


@dataclasses.dataclass(frozen=True)
class FormCost:
    """slurmctld's cost of one poll interval with one query form."""

    form: str
    commands_per_interval: int
    rpcs_per_interval: float
    controller_us_per_interval: float
    rpc_types: tuple[str, ...]
    output_bytes: int
    sees_known: bool  # every session's job whose id status records
    sees_lost_ids: bool  # a session's tagged job whose id was lost (adoption)
    sees_orphans: bool  # a tagged job whose session is gone, any user (the orphan sweep)

    @property
    def complete(self) -> bool:
        return self.sees_known and self.sees_lost_ids and self.sees_orphans


@dataclasses.dataclass(frozen=True)
class BusyResult:
    other_jobs: int
    our_jobs: int
    repeats: int
    poll_interval_s: int
    forms: tuple[FormCost, ...]
    chosen: str

    def form(self, name: str) -> FormCost:
        return next(f for f in self.forms if f.form == name)


class _Site:
    """Commands against one real cluster, as a given user (runuser) or root (sdiag)."""

    def __init__(self, slurm_conf: str) -> None:
        self.env = {"PATH": realslurm.DAEMON_PATH, "LANG": "C.UTF-8", "SLURM_CONF": slurm_conf}

    def run(self, user: str | None, argv: Sequence[str], timeout: float = 120) -> str:
        full = list(argv) if user is None else ["runuser", "-u", user, "--", *argv]
        result = subprocess.run(
            full, env=self.env, capture_output=True, text=True, timeout=timeout, check=False
        )
        if result.returncode != 0:
            raise RuntimeError(f"{shlex.join(full)} exited {result.returncode}: {result.stderr}")
        return result.stdout

    def script(self, user: str, text: str, timeout: float = 1200) -> str:
        """A shell loop as ``user`` (one process for thousands of sbatch calls)."""
        return self.run(user, ["bash", "-c", text], timeout=timeout)

    def rpc_totals(self) -> dict[str, tuple[int, int]]:
        """(count, total µs) by RPC type since the last reset."""
        totals: dict[str, tuple[int, int]] = {}
        for line in self.run(None, ["sdiag"]).splitlines():
            match = _RPC_LINE.match(line)
            if match and match.group(1) not in _NOT_MEASURED:
                totals[match.group(1)] = (int(match.group(2)), int(match.group(3)))
        return totals

    def reset(self) -> None:
        self.run(None, ["sdiag", "--reset"])


def _fill(site: _Site, other_jobs: int, ours: int) -> tuple[list[int], list[str]]:
    """Held jobs: ``other_jobs`` of OTHER (untagged), ``ours`` of OWNER tagged as sessions."""
    # Four submitters at once: thousands of sbatch calls one by one take minutes.
    share = -(-other_jobs // 4)
    site.script(
        OTHER,
        "set -e; for part in 0 1 2 3; do ("
        f"  for i in $(seq $((part * {share} + 1)) $(( (part + 1) * {share} < {other_jobs}"
        f" ? (part + 1) * {share} : {other_jobs} ))); do"
        "    sbatch --hold --parsable -J other-job -o /dev/null -t 10 --wrap true >/dev/null;"
        "  done) & done; for job in $(jobs -p); do wait $job; done",
    )
    names = [job_name(INSTALLATION, str(uuid.uuid4())) for _ in range(ours)]
    submitted = site.script(
        OWNER,
        "for name in " + " ".join(shlex.quote(n) for n in names) + "; do "
        'sbatch --hold --parsable -J "$name" -o /dev/null -t 10 --wrap true || exit 1; done',
    )
    ids = [commands.parse_sbatch(line) for line in submitted.split()]
    queued = site.run(None, ["squeue", "-h", "--all", "-o", "%i"]).split()
    if len(queued) != other_jobs + ours:
        raise RuntimeError(f"{len(queued)} jobs queued, not {other_jobs} + {ours}")
    return ids, names


def _measure(
    site: _Site, run_interval: Callable[[], list[str]], repeats: int
) -> tuple[float, float, tuple[str, ...], int]:
    """(RPCs, controller µs, RPC types, output bytes) per interval, averaged over ``repeats``."""
    site.reset()
    output = 0
    for _ in range(repeats):
        output = sum(len(out) for out in run_interval())
    totals = site.rpc_totals()
    count = sum(c for c, _ in totals.values())
    micros = sum(t for _, t in totals.values())
    return count / repeats, micros / repeats, tuple(sorted(totals)), output


def measure(
    root: Path, *, other_jobs: int, ours: int, repeats: int, poll_interval_s: int = 30
) -> BusyResult:
    deployment = realslurm.up(root)
    try:
        info = deployment.site(SITE)
        site = _Site(info.slurm_conf)
        ids, names = _fill(site, other_jobs, ours)
        partitions = ",".join(info.partitions)

        def as_owner(*argv: list[str]) -> Callable[[], list[str]]:
            return lambda: [site.run(OWNER, a) for a in argv]

        def sentinel() -> str:
            return secrets.token_hex(12)

        whole = commands.squeue_all_argv(sentinel=sentinel())
        forms: list[tuple[str, Callable[[], list[str]], int, tuple[bool, bool, bool]]] = [
            ("whole queue (today)", as_owner(whole), 1, (True, True, True)),
            ("--name=<our tags>", as_owner(commands.squeue_argv(names=names, sentinel=sentinel())),
             1, (True, True, False)),
            # Every partition of the site: sees what the whole queue sees, by the same RPC.
            (f"--partition={partitions}", as_owner([*whole, f"--partition={partitions}"]), 1,
             (True, True, True)),
            (f"--user={OWNER} (users with sessions)",
             as_owner(commands.squeue_argv(users=[OWNER], sentinel=sentinel())), 1,
             (True, True, False)),
            ("--jobs=<our ids>", as_owner(commands.squeue_argv(job_ids=ids, sentinel=sentinel())),
             1, (True, False, False)),
            ("per session: squeue -j ID (batchspawner)",
             as_owner(*(["squeue", "-h", "-j", str(i), "-o", "%T %B"] for i in ids)), len(ids),
             (True, False, False)),
        ]  # fmt: skip
        costs = []
        for name, action, per_interval, (known, lost, orphans) in forms:
            action()  # warm: the first call after a burst of submissions is not typical
            rpcs, micros, types, output = _measure(site, action, repeats)
            costs.append(
                FormCost(name, per_interval, rpcs, micros, types, output, known, lost, orphans)
            )
        chosen = choose(costs)
        return BusyResult(other_jobs, ours, repeats, poll_interval_s, tuple(costs), chosen)
    finally:
        realslurm.down(root)


# Another complete form replaces today's only when it is clearly cheaper: forms answered by the
# same RPC differ by this much from one measurement to the next on a loaded machine.
CLEARLY_CHEAPER = 0.5


def choose(costs: Sequence[FormCost]) -> str:
    """The form to poll with: the cheapest that sees every job we must see (today's unless
    another is clearly cheaper for slurmctld)."""
    today = costs[0]
    complete = [c for c in costs if c.complete]
    best = min(complete, key=lambda c: c.controller_us_per_interval)
    cheaper = best.controller_us_per_interval < CLEARLY_CHEAPER * today.controller_us_per_interval
    return best.form if cheaper else today.form


def run(other_jobs: int, ours: int, repeats: int) -> BusyResult:
    import fcntl

    with open("/tmp/realslurm.lock", "a") as lock:  # noqa: S108 - the suite's shared lock file
        fcntl.flock(lock, fcntl.LOCK_EX)
        root = Path(tempfile.mkdtemp(prefix="bbp-bench-busy-"))
        return measure(root, other_jobs=other_jobs, ours=ours, repeats=repeats)


def table(result: BusyResult) -> str:
    per_session = result.form("per session: squeue -j ID (batchspawner)")
    per_minute = 60 / result.poll_interval_s
    lines = [
        f"busy queue on real Slurm ({SITE}): {result.other_jobs} held jobs of another user, "
        f"{result.our_jobs} of ours; slurmctld time from sdiag, mean of {result.repeats} "
        f"intervals; per minute at {result.poll_interval_s} s polls",
        f"{'query form':44} {'cmds':>5} {'RPCs':>6} {'ctld ms/min':>12} {'vs per-session':>15} "
        f"{'output':>9}  sees known/lost ids/orphans",
    ]
    for cost in result.forms:
        ratio = cost.controller_us_per_interval / max(per_session.controller_us_per_interval, 1)
        sees = "/".join(
            "yes" if v else "no" for v in (cost.sees_known, cost.sees_lost_ids, cost.sees_orphans)
        )
        mark = "  <- chosen" if cost.form == result.chosen else ""
        lines.append(
            f"{cost.form:44} {cost.commands_per_interval:5d} {cost.rpcs_per_interval:6.1f} "
            f"{cost.controller_us_per_interval * per_minute / 1000:12.2f} {ratio:15.3f} "
            f"{cost.output_bytes:9d}  {sees}{mark}   [{', '.join(cost.rpc_types)}]"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse

    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--other-jobs", type=int, default=2000)
    parser.add_argument("--ours", type=int, default=100)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    print(table(run(args.other_jobs, args.ours, args.repeats)))
