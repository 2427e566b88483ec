"""The contract between the mock Slurm and real Slurm 22.05: the same SlurmClient calls, against
both, must give answers that agree.

Every test runs twice (``[real]`` then ``[mock]``, see conftest.py). Each asserts what Slurm's
answer means; where the answer can be compared across the two runs, it is also normalised (ids,
times and tags taken out) and recorded with :func:`agree`, which fails the mock run when its
answer differs from the real one. Timings legitimately differ, so they are checked as ranges.
"""

from __future__ import annotations

import asyncio
import dataclasses
import pwd
import time
from collections.abc import Hashable
from pathlib import Path
from typing import Any

import pytest

from bbp_notebooks.devtools import realslurm
from bbp_notebooks.devtools.waiting import wait_until_async
from bbp_notebooks.slurm.commands import (
    AccountingEntry,
    JobSpec,
    QueueEntry,
    sacct_argv,
)
from bbp_notebooks.slurm.values import JobState
from bbp_notebooks.ssh import CommandFailed, SlurmControllerUnavailable, SshError
from slurm.contract import CONTROLLER_DOWN_DELAY_S, Contract, ContractSite

pytestmark = [pytest.mark.asyncio(loop_scope="module"), pytest.mark.timeout(240)]

SLEEP = "#!/bin/bash\nexec sleep 600\n"
EXIT_0 = "#!/bin/bash\nexit 0\n"
EXIT_3 = "#!/bin/bash\nexit 3\n"
KILLED = "#!/bin/bash\nkill -9 $$\n"
WHO = "#!/bin/bash\nid -un\necho $SLURM_JOB_ID $SLURM_CLUSTER_NAME $SLURMD_NODENAME\npwd\n"
REAL_UNNAMED_JOB = "allocation"
UNKNOWN_OFFSET = 1  # first_job_id - 1 is never handed out by either site

# Answers of the real run, by key, for the mock run to be compared with.
_ANSWERS: dict[str, dict[str, Any]] = {}


def agree(site: Contract | ContractSite, key: str, answer: Hashable) -> None:
    """Record a normalised answer; on the second kind, it must equal the first kind's."""
    seen = _ANSWERS.setdefault(key, {})
    seen[site.kind] = answer
    if len(seen) == 2:
        assert seen["mock"] == seen["real"], f"{key}: mock and real Slurm disagree"


def queue_shape(entry: QueueEntry, site: ContractSite) -> tuple[object, ...]:
    """What must agree in an squeue entry once ids, times and the run's tag are taken out."""
    return (
        entry.name.removeprefix(site.job_name("")),
        entry.user,
        entry.state,
        entry.nodes,
        entry.time_limit_s,
        entry.partition,
        entry.account,
    )


def accounting_shape(entry: AccountingEntry, site: ContractSite) -> tuple[object, ...]:
    return (
        entry.name.removeprefix(site.job_name("")),
        entry.user,
        entry.state,
        entry.exit_code,
        entry.signal,
        entry.nodes,
        entry.start is not None,
        entry.end is not None,
    )


async def queued(site: ContractSite, job_id: int, user: str = "alice") -> QueueEntry | None:
    entries = await site.client.queue(site.identity(user), job_ids=[job_id])
    assert [e.job_id for e in entries] in ([], [job_id])
    return entries[0] if entries else None


async def wait_queue_state(
    site: ContractSite, job_id: int, states: set[JobState], within: float = 30.0
) -> QueueEntry:
    last: list[QueueEntry | None] = [None]

    async def reached() -> bool:
        last[0] = await queued(site, job_id)
        return last[0] is not None and last[0].state in states

    await wait_until_async(
        reached, within, f"job {job_id} in {sorted(s.value for s in states)}", 0.2
    )
    assert last[0] is not None
    return last[0]


async def wait_accounting(
    site: ContractSite, job_ids: list[int], within: float = 30.0, *, named: bool = False
) -> dict[int, AccountingEntry]:
    """sacct entries once every job has ended (slurmdbd hears about ends asynchronously).

    With ``named``, also until every entry carries its job name: real slurmdbd records a job that
    ended before its start was recorded under the name "allocation" for a few seconds (seen:
    ~4 s), so sacct is no place to find jobs by name.
    """
    found: dict[int, AccountingEntry] = {}

    async def ended() -> bool:
        entries = await site.client.accounting(site.identity("alice"), job_ids)
        found.clear()
        found.update({e.job_id: e for e in entries})
        if named and any(e.name == REAL_UNNAMED_JOB for e in found.values()):
            return False
        return set(found) == set(job_ids) and all(e.state.is_terminal for e in found.values())

    await wait_until_async(ended, within, f"jobs {job_ids} to end in sacct", 0.2)
    return found


async def raw_sacct_states(site: ContractSite, job_ids: list[int]) -> dict[int, str]:
    """sacct's State column as printed ("CANCELLED by 1001"), which the parser folds."""
    sentinel = "bbpnb0123456789abcdef"
    result = await site.run("alice", sacct_argv(job_ids, sentinel=sentinel))
    assert result.exit_status == 0, result.stderr
    states = {}
    for line in result.stdout.splitlines():
        job_id, _user, state, *_ = line.split(sentinel)
        states[int(job_id)] = state
    return states


# --- submit ---------------------------------------------------------------------------------


async def test_submit_returns_increasing_job_ids_from_the_sites_own_range(site: Contract) -> None:
    ids: dict[str, list[int]] = {}
    for name, account in (("geneva", None), ("lugano", "proj42")):
        s = site[name]
        spec = s.spec("submit", account=account)
        ids[name] = [await s.submit("alice", spec, EXIT_0) for _ in range(2)]
        first, second = ids[name]
        assert s.first_job_id <= first < second < s.first_job_id + 1_000_000
    assert site.geneva.first_job_id <= site.timeout_job < ids["geneva"][0]
    await wait_accounting(site.geneva, ids["geneva"])


# --- list -----------------------------------------------------------------------------------


async def test_queue_finds_a_job_by_id_name_and_user_while_it_pends_then_runs(
    site: Contract,
) -> None:
    s = site.lugano
    alice = s.identity("alice")
    # bob takes the whole node, so alice's job has to wait for it.
    filler = await s.submit("bob", s.spec("filler", cpus=s.cpus_per_node), SLEEP)
    await wait_queue_state(s, filler, {JobState.RUNNING})
    spec = s.spec("pending-then-running")
    job_id = await s.submit("alice", spec, SLEEP)

    pending = await wait_queue_state(s, job_id, {JobState.PENDING})
    assert pending.nodes is None
    assert pending.start_time is None or pending.start_time.year >= 2024
    assert pending.time_left_s == pending.time_limit_s == 5 * 60
    assert pending.account == s.accounts["alice"][0]
    assert pending.partition == s.default_partition
    agree(site, "queue:pending", queue_shape(pending, s))

    async def has_a_reason() -> bool:
        entry = await queued(s, job_id)
        return entry is not None and entry.reason in ("Resources", "Priority")

    await wait_until_async(has_a_reason, 10.0, "a pending reason", 0.2)

    by_id = await s.client.queue(alice, job_ids=[job_id, filler])
    by_name = await s.client.queue(alice, names=[spec.name])
    by_user = await s.client.queue(alice, users=["alice"])
    by_bob = await s.client.queue(alice, users=["bob"])
    assert {e.job_id for e in by_id} == {job_id, filler}
    assert [e.job_id for e in by_name] == [job_id]
    assert job_id in {e.job_id for e in by_user}
    assert all(e.user == "alice" for e in by_user)
    assert filler in {e.job_id for e in by_bob} and job_id not in {e.job_id for e in by_bob}
    both = await s.client.queue(alice, job_ids=[job_id], names=[spec.name], users=["bob"])
    assert both == []  # filters are ANDed
    # The operator's one-squeue-per-poll: everyone's jobs (no PrivateData on either site).
    everything = {e.job_id: e for e in (await s.client.queue_all(alice)).entries}
    assert everything[job_id] == next(e for e in by_id if e.job_id == job_id)
    assert everything[filler].user == "bob"
    shown = await s.client.show_job(alice, job_id)
    assert shown is not None
    assert shown["JobState"] == "PENDING" and shown["Reason"] in ("Resources", "Priority")
    pending_keys = frozenset(shown)

    await s.client.cancel(s.identity("bob"), [filler])
    running = await wait_queue_state(s, job_id, {JobState.RUNNING})
    assert running.nodes == s.node_name
    assert running.reason is None
    assert running.start_time is not None
    assert running.time_limit_s == 5 * 60
    assert running.time_left_s is not None and 0 < running.time_left_s <= 5 * 60
    agree(site, "queue:running", queue_shape(running, s))
    shown = await s.client.show_job(alice, job_id)
    assert shown is not None
    assert shown["JobId"] == str(job_id) and shown["JobName"] == spec.name
    assert shown["UserId"].startswith("alice(") and shown["Account"] == s.accounts["alice"][0]
    assert (shown["JobState"], shown["Partition"]) == ("RUNNING", s.default_partition)
    assert (shown["NodeList"], shown["TimeLimit"]) == (s.node_name, "00:05:00")
    # Real scontrol adds keys by circumstance (Scheduler=Main|Backfill, LastSchedEval, ...), so
    # the contract is on the keys clients read: both print every one of them, in both states.
    assert SHOW_JOB_CORE_KEYS <= pending_keys and SHOW_JOB_CORE_KEYS <= frozenset(shown)
    agree(
        site,
        "show_job:keys",
        (pending_keys & SHOW_JOB_CORE_KEYS, frozenset(shown) & SHOW_JOB_CORE_KEYS),
    )
    await s.client.cancel(alice, [job_id])


SHOW_JOB_CORE_KEYS = frozenset(
    {
        "JobId", "JobName", "UserId", "GroupId", "Account", "JobState", "Reason", "Partition",
        "NodeList", "TimeLimit", "SubmitTime", "StartTime", "EndTime", "ExitCode", "NumCPUs",
        "WorkDir", "StdOut", "StdErr", "Command", "BatchFlag",
    }
)  # fmt: skip


async def test_literal_text_in_the_squeue_format_is_printed_as_is(site: Contract) -> None:
    """The record sentinel relies on it: a --format prefix and suffixes are printed verbatim for
    every job, '%%' is not an escape (strtok skips empty tokens), a format without '%' is all
    prefix."""
    s = site.geneva
    job_id = await s.submit("alice", s.spec("literal-format"), SLEEP)
    rendered = []
    for fmt in ("bbpnb0123456789abcdef%A|%u|%j", "PRE%A-mid-%u|SUF", "%%A%A", "lit"):
        result = await s.run(
            "alice", ["squeue", "--noheader", f"--jobs={job_id}", f"--format={fmt}"]
        )
        assert result.exit_status == 0, result.stderr
        rendered.append(result.stdout.replace(str(job_id), "ID").replace(s.tag, "TAG"))
    assert rendered == [
        "bbpnb0123456789abcdefID|alice|bbpnb-contract-TAG-literal-format\n",
        "PREID-mid-alice|SUF\n",
        "IDID\n",
        "lit\n",
    ]
    agree(site, "squeue:literal-format", tuple(rendered))
    await s.client.cancel(s.identity("alice"), [job_id])


async def test_a_job_name_cannot_forge_a_queue_record(site: Contract) -> None:
    """Slurm prints job names raw, newlines and '|' included; with the per-call sentinel such a
    record is dropped and counted, and the record it tries to forge never appears."""
    s = site.geneva
    alice = s.identity("alice")
    victim = await s.submit("alice", s.spec("forge-victim"), SLEEP)
    pretended = s.job_name("forge-pretended")
    forged_name = (
        f"x\n{victim}|bob|RUNNING|None|{s.node_name}|N/A|N/A|5:00|4:00|{s.default_partition}"
        f"||{pretended}"
    )
    forgers = {}
    for what, name in (("newline", forged_name), ("pipe", "a|b c")):
        argv = ["sbatch", "--parsable", f"--job-name={name}", "--time=5", "--output=/dev/null"]
        result = await s.run("bob", argv, stdin=SLEEP)
        assert result.exit_status == 0, result.stderr
        forgers[what] = int(result.stdout.strip().split(";")[0])
        s.submitted.append(("bob", forgers[what]))
    raw = await s.run(
        "alice", ["squeue", "--noheader", f"--jobs={forgers['newline']}", "--format=%j"]
    )
    assert raw.stdout == forged_name + "\n", "Slurm prints the name raw: the threat is real"

    listing = await s.client.queue_all(alice)
    by_id = {e.job_id: e for e in listing.entries}
    assert forgers["newline"] not in by_id and forgers["pipe"] not in by_id
    assert by_id[victim].user == "alice" and by_id[victim].name == s.job_name("forge-victim")
    assert pretended not in {e.name for e in listing.entries}
    assert [e.job_id for e in listing.entries].count(victim) == 1
    assert listing.dropped >= 2
    mine = await s.client.queue(alice, names=[s.job_name("forge-victim")])
    assert [e.user for e in mine] == ["alice"]
    agree(site, "squeue:forged", (sorted(forgers), listing.dropped >= 2, by_id[victim].user))

    # sacct's fields are delimited by the sentinel: the forged name stays one field.
    ids = [victim, forgers["newline"], forgers["pipe"]]
    accounted: dict[int, AccountingEntry] = {}

    async def all_accounted() -> bool:
        accounted.clear()
        accounted.update({e.job_id: e for e in await s.client.accounting(alice, ids)})
        return set(accounted) == set(ids) and REAL_UNNAMED_JOB not in {
            e.name for e in accounted.values()
        }

    await wait_until_async(all_accounted, 30.0, "the jobs in sacct", 0.2)
    assert [e.job_id for e in await s.client.accounting(alice, ids)].count(victim) == 1
    assert (accounted[victim].user, accounted[victim].name) == ("alice", s.job_name("forge-victim"))
    assert (accounted[forgers["newline"]].user, accounted[forgers["newline"]].name) == (
        "bob",
        forged_name,
    )
    assert accounted[forgers["pipe"]].name == "a|b c"
    agree(site, "sacct:forged", tuple(accounted[i].user for i in ids))
    await s.client.cancel(alice, [victim])
    await s.client.cancel(s.identity("bob"), list(forgers.values()))


# --- query ----------------------------------------------------------------------------------


async def test_accounting_tells_how_each_job_ended(site: Contract) -> None:
    s = site.geneva
    alice = s.identity("alice")
    uid = pwd.getpwnam("alice").pw_uid
    ok = await s.submit("alice", s.spec("ok"), EXIT_0)
    failed = await s.submit("alice", s.spec("exit3"), EXIT_3)
    killed = await s.submit("alice", s.spec("kill9"), KILLED)
    cancelled = await s.submit("alice", s.spec("cancelled"), SLEEP)
    # Over the debug partition's MaxTime: accepted, but it can never start (PartitionTimeLimit).
    never = await s.submit("alice", s.spec("never", partition="debug", minutes=120), SLEEP)
    stuck = await wait_queue_state(s, never, {JobState.PENDING})
    assert stuck.partition == "debug"

    async def held_by_the_partition_limit() -> bool:
        entry = await queued(s, never)
        return entry is not None and entry.reason == "PartitionTimeLimit"

    await wait_until_async(held_by_the_partition_limit, 10.0, "reason PartitionTimeLimit", 0.2)
    await wait_queue_state(s, cancelled, {JobState.RUNNING})
    await s.client.cancel(alice, [cancelled, never])

    ended = await wait_accounting(s, [ok, failed, killed, cancelled, never], named=True)
    expected = {
        ok: (JobState.COMPLETED, 0, 0),
        failed: (JobState.FAILED, 3, 0),
        killed: (JobState.FAILED, 0, 9),
        cancelled: (JobState.CANCELLED, 0, 0),
        never: (JobState.CANCELLED, 0, 0),
    }
    for job_id, (state, exit_code, signal) in expected.items():
        entry = ended[job_id]
        assert (entry.state, entry.exit_code, entry.signal) == (state, exit_code, signal), entry
        assert entry.user == "alice"
        assert entry.start is not None and entry.end is not None and entry.start <= entry.end
        assert entry.nodes == (None if job_id == never else s.node_name)
    raw = await raw_sacct_states(s, [cancelled, never])
    assert raw == {cancelled: f"CANCELLED by {uid}", never: f"CANCELLED by {uid}"}
    agree(
        site,
        "accounting:ends",
        tuple(accounting_shape(ended[job_id], s) for job_id in expected),
    )


async def test_unknown_job_ids_are_answered_as_absent_not_as_errors(site: Contract) -> None:
    s = site.geneva
    alice = s.identity("alice")
    unknown = s.first_job_id - UNKNOWN_OFFSET
    assert await s.client.queue(alice, job_ids=[unknown]) == []
    assert await s.client.accounting(alice, [unknown]) == []
    await s.client.cancel(alice, [unknown])  # nothing to cancel is not an error
    # A known id next to an unknown one: the known one is listed.
    known = [e.job_id for e in await s.client.queue(alice, job_ids=[site.timeout_job, unknown])]
    assert known in ([site.timeout_job], [])  # [] once the 1-minute job has left the queue
    raw = await s.run("alice", ["scancel", str(unknown)])
    raw_queue = await s.run("alice", ["squeue", "--noheader", f"--jobs={unknown}"])
    agree(
        site,
        "unknown:raw",
        (raw.exit_status, raw.stdout, raw_queue.exit_status, raw_queue.stderr.strip()),
    )


# --- cancel ---------------------------------------------------------------------------------


async def test_a_user_cancels_their_own_job_but_not_someone_elses(site: Contract) -> None:
    s = site.geneva
    alice, bob = s.identity("alice"), s.identity("bob")
    job_id = await s.submit("alice", s.spec("cancel-me"), SLEEP)
    await wait_queue_state(s, job_id, {JobState.RUNNING})

    with pytest.raises(CommandFailed) as refused:
        await s.client.cancel(bob, [job_id])
    assert f"Kill job error on job id {job_id}: Access/permission denied" in refused.value.stderr
    entry = await queued(s, job_id)
    assert entry is not None and entry.state is JobState.RUNNING

    await s.client.cancel(alice, [job_id])
    gone = await wait_queue_state(s, job_id, {JobState.CANCELLED, JobState.COMPLETING}, within=15.0)
    assert gone.user == "alice"
    await s.client.cancel(alice, [job_id])  # again: already over, not an error
    (ended,) = (await wait_accounting(s, [job_id])).values()
    assert ended.state is JobState.CANCELLED
    agree(
        site,
        "cancel:denied",
        (type(refused.value).__name__, refused.value.exit_status, refused.value.stderr.strip()
         .replace(str(job_id), "ID")),
    )  # fmt: skip


async def test_only_an_operator_raises_a_time_limit_and_never_past_the_partitions(
    site: Contract,
) -> None:
    """Slurm 22.05: a user may lower their job's limit but not raise it; an AdminLevel=Operator
    account (a SlurmSite's adminUser) may raise it, and sinfo tells the partition's MaxTime."""
    s = site.geneva
    alice, admin = s.identity("alice"), s.identity(realslurm.ADMIN_USER)
    job_id = await s.submit("alice", s.spec("extend", partition="debug", minutes=10), SLEEP)
    await wait_queue_state(s, job_id, {JobState.RUNNING})  # a pending job's user may raise it

    with pytest.raises(CommandFailed) as raising:
        await s.client.set_time_limit(alice, job_id, 20)
    await s.client.set_time_limit(alice, job_id, 5)  # lowering is the user's right
    await s.client.set_time_limit(admin, job_id, 30)
    entry = await queued(s, job_id)
    assert entry is not None and entry.time_limit_s == 30 * 60
    assert await s.client.partition_max_time(alice, "debug") == 60
    assert await s.client.partition_max_time(alice, "prod") == 24 * 60
    try:
        await s.client.set_time_limit(admin, job_id, 120)  # over debug's MaxTime of 1 hour
        over: tuple[str, ...] = ("accepted",)
    except CommandFailed as error:
        over = ("refused", error.stderr.strip())
    entry = await queued(s, job_id)
    assert entry is not None
    await s.client.cancel(alice, [job_id])
    assert "Access/permission denied" in raising.value.stderr
    agree(
        site,
        "update_time_limit:user_raises",
        raising.value.stderr.strip().replace(str(job_id), "ID"),
    )
    print(f"\n[{site.kind}] operator over the partition's MaxTime: {over}, {entry.time_limit_s}")
    agree(site, "update_time_limit:over_partition_max", (over, entry.time_limit_s))


async def test_the_tail_of_a_failed_jobs_output_is_read_as_its_owner(site: Contract) -> None:
    """The operator's log tail: `tail -c N -- FILE` as the job's user, bytes bounded; a missing
    file is CommandFailed with tail's words."""
    s = site.geneva
    alice = s.identity("alice")
    script = '#!/bin/bash\nfor i in $(seq 1 300); do echo "line $i"; done\necho oops >&2\nexit 3\n'
    spec = s.spec("tail")
    job_id = await s.submit("alice", spec, script)
    await wait_accounting(s, [job_id])
    output = f"{spec.name}-{job_id}.out"
    tail = await s.client.output_tail(alice, output, 64)
    assert len(tail) == 64 and tail.endswith(b"line 300\noops\n")
    with pytest.raises(CommandFailed) as missing:
        await s.client.output_tail(alice, f"{output}.missing", 64)
    agree(site, "tail:output", tail)
    agree(site, "tail:missing", missing.value.stderr.strip().replace(output, "FILE"))


async def test_a_cancel_restricted_to_name_and_owner_spares_every_other_job(
    site: Contract,
) -> None:
    """scancel ANDs job ids with --name and --user: a mismatch cancels nothing, silently (exit 0),
    on real Slurm as on the mock."""
    s = site.geneva
    alice, bob = s.identity("alice"), s.identity("bob")
    spec = s.spec("restricted-cancel")
    job_id = await s.submit("alice", spec, SLEEP)
    await s.client.cancel(alice, [job_id], name=s.job_name("another-tag"), user="alice")
    await s.client.cancel(alice, [job_id], name=spec.name, user="bob")
    await s.client.cancel(bob, [job_id], name=spec.name, user="bob")
    spared = await queued(s, job_id)
    assert spared is not None and not spared.state.is_terminal
    raw = await s.run("alice", ["scancel", f"--name={spec.name}", "--user=bob", str(job_id)])
    assert (raw.exit_status, raw.stderr) == (0, "")

    await s.client.cancel(alice, [job_id], name=spec.name, user="alice")
    gone = await wait_queue_state(s, job_id, {JobState.CANCELLED, JobState.COMPLETING}, within=15.0)
    agree(site, "cancel:restricted", (spared.state.is_terminal, raw.exit_status, gone.user))


# --- sinfo, version, accounts ---------------------------------------------------------------


async def test_partitions_name_the_default_and_count_nodes_and_cpus(site: Contract) -> None:
    for name in ("geneva", "lugano"):
        s = site[name]
        partitions = await s.client.partitions(s.identity("alice"))
        assert [p.name for p in partitions] == list(s.partitions)
        assert [p.name for p in partitions if p.is_default] == [s.default_partition]
        for p in partitions:
            assert p.available
            assert (p.nodes_total, p.cpus_total) == (1, s.cpus_per_node)
            assert 0 <= p.nodes_idle <= p.nodes_total
            assert 0 <= p.cpus_idle <= p.cpus_total
            # A node is idle only when none of its CPUs is allocated.
            assert p.nodes_idle == (1 if p.cpus_idle == p.cpus_total else 0)
        agree(
            site,
            f"sinfo:{name}",
            tuple((p.name, p.is_default, p.available, p.nodes_total, p.cpus_total)
                  for p in partitions),
        )  # fmt: skip


async def test_the_version_is_slurm_22_05(site: Contract) -> None:
    for name in ("geneva", "lugano"):
        s = site[name]
        version = await s.client.version(s.identity("bob"))
        assert version.startswith("22.05.")
        agree(site, f"version:{name}", version)


async def test_accounts_are_the_users_associations_on_each_site(site: Contract) -> None:
    for name in ("geneva", "lugano"):
        s = site[name]
        for user in ("alice", "bob"):
            accounts = await s.client.accounts(s.identity(user), user)
            assert sorted(accounts) == sorted(s.accounts[user])
            agree(site, f"accounts:{name}:{user}", tuple(sorted(accounts)))
    assert sorted(await site.lugano.client.accounts(site.lugano.identity("alice"), "alice")) == [
        "proj16",
        "proj42",
    ]


async def test_an_invalid_partition_or_account_is_refused_at_submission(site: Contract) -> None:
    cases: list[tuple[ContractSite, str, JobSpec, str]] = [
        (
            site.geneva,
            "alice",
            site.geneva.spec("bad-partition", partition="nosuch"),
            "Invalid partition name specified",
        ),
        (
            site.geneva,
            "alice",
            site.geneva.spec("bad-account", account="proj16"),
            "Invalid account or account/partition combination specified",
        ),
        (
            site.lugano,
            "bob",
            site.lugano.spec("not-bobs-account", account="proj16"),
            "Invalid account or account/partition combination specified",
        ),
    ]
    answers = []
    for s, user, spec, message in cases:
        with pytest.raises(CommandFailed) as refused:
            await s.submit(user, spec, EXIT_0)
        assert f"Batch job submission failed: {message}" in refused.value.stderr
        assert refused.value.exit_status == 1
        answers.append((type(refused.value).__name__, refused.value.stderr.strip()))
        # Nothing was queued under that name.
        assert await s.client.queue(s.identity(user), names=[spec.name]) == []
    agree(site, "submit:refused", tuple(answers))


# --- leaving the queue ----------------------------------------------------------------------


async def test_a_finished_job_leaves_the_queue_after_min_job_age_but_stays_in_accounting(
    site: Contract,
) -> None:
    s = site.geneva
    job_id = await s.submit("alice", s.spec("short"), EXIT_0)
    done = await wait_queue_state(s, job_id, {JobState.COMPLETED}, within=30.0)
    ended_at = time.monotonic()
    assert done.nodes == s.node_name

    async def forgotten() -> bool:
        return await queued(s, job_id) is None

    await wait_until_async(forgotten, s.min_job_age_s + 60.0, "the job to leave squeue", 0.5)
    in_queue_for = time.monotonic() - ended_at
    # slurmctld purges on a timer: real Slurm takes MinJobAge plus up to a purge interval.
    assert s.min_job_age_s - 2.0 <= in_queue_for <= s.min_job_age_s + 45.0
    (entry,) = (await wait_accounting(s, [job_id])).values()
    assert (entry.state, entry.exit_code) == (JobState.COMPLETED, 0)
    assert await s.client.show_job(s.identity("alice"), job_id) is None


# --- runs as the user -----------------------------------------------------------------------


async def test_a_job_submitted_over_ssh_as_alice_runs_as_alice(site: Contract) -> None:
    s = site.geneva
    alice = pwd.getpwnam("alice")
    spec = s.spec("whoami")
    job_id = await s.submit("alice", spec, WHO)
    (entry,) = (await wait_accounting(s, [job_id])).values()
    assert entry.state is JobState.COMPLETED
    output = s.output_file("alice", spec, job_id)
    assert output.parent == Path(alice.pw_dir)

    async def written() -> bool:
        return output.exists() and output.read_text().count("\n") >= 3

    await wait_until_async(written, 10.0, f"{output} to be written", 0.2)
    lines = output.read_text().splitlines()
    assert lines == ["alice", f"{job_id} {s.name} {s.node_name}", alice.pw_dir]
    stat = output.stat()
    assert (stat.st_uid, stat.st_gid) == (alice.pw_uid, alice.pw_gid)


# --- controller down ------------------------------------------------------------------------


async def test_an_unreachable_controller_is_reported_as_unavailable_not_as_an_answer(
    site: Contract,
) -> None:
    s = site.lugano
    alice = s.identity("alice")
    # A finished job, so that accounting has something to show while slurmctld is away.
    job_id = await s.submit("alice", s.spec("before-outage", account="proj42"), EXIT_0)
    await wait_accounting(s, [job_id])

    async def timed(call: Any) -> tuple[BaseException | None, float]:
        started = time.monotonic()
        try:
            await call
        except SshError as error:
            return error, time.monotonic() - started
        return None, time.monotonic() - started

    async with s.controller_down():
        # (call, connect timeouts a 22.05 client sits through: one job or one user's jobs, 2)
        calls = [
            (s.client.queue(alice, users=["alice"]), 2),
            (s.client.queue(alice, job_ids=[job_id]), 2),
            (s.client.show_job(alice, job_id), 2),
            (s.client.queue(alice, names=[s.job_name("before-outage")]), 1),
            (s.client.submit(alice, s.spec("during-outage"), EXIT_0), 1),
            (s.client.cancel(alice, [job_id]), 1),
            (s.client.partitions(alice), 1),
        ]
        outcomes = await asyncio.gather(*(timed(call) for call, _ in calls))
        # slurmdbd is still up: sacct answers.
        (entry,) = await s.client.accounting(alice, [job_id])
        assert entry.state is JobState.COMPLETED
    for (error, seconds), (_, attempts) in zip(outcomes, calls, strict=True):
        assert isinstance(error, SlurmControllerUnavailable), error
        assert "Unable to contact slurm controller" in error.stderr
        # Measured on real 22.05: 9.0 s per connect timeout; the mock is configured alike.
        expected = attempts * CONTROLLER_DOWN_DELAY_S
        assert expected - 1.0 <= seconds <= expected + 4.0, (error.argv0, seconds)
    agree(
        site,
        "controller-down",
        tuple(
            (
                type(error).__name__,
                error.argv0,
                error.exit_status,
                error.stderr.strip().replace(str(job_id), "ID"),
            )
            for error, _ in outcomes
            if isinstance(error, SlurmControllerUnavailable)
        ),
    )

    async def back() -> bool:
        try:
            await s.client.partitions(alice)
        except SshError:
            return False
        return True

    await wait_until_async(back, 60.0, "the controller to answer again", 0.5)


# --- time limit (last: its job was submitted when the site came up) -------------------------


async def test_a_job_over_its_time_limit_ends_in_timeout(site: Contract) -> None:
    s = site.geneva
    limit_s = 60 * site.timeout_spec.time_limit_minutes
    # slurmctld checks limits every 30 s; the ending (SIGTERM, KillWait) takes a few more.
    (entry,) = (await wait_accounting(s, [site.timeout_job], within=limit_s + 90.0)).values()
    assert entry.state is JobState.TIMEOUT
    assert (entry.exit_code, entry.signal) == (0, 0)
    assert entry.start is not None and entry.end is not None
    ran_for = (entry.end - entry.start).total_seconds()
    assert limit_s <= ran_for <= limit_s + 45
    agree(site, "timeout", accounting_shape(entry, s))


# --- job steps (srun), as the Spark cluster job uses them ----------------------------------------

STEPS = (
    "#!/bin/bash\n"
    "srun --ntasks=2 --cpus-per-task=1 bash -c 'echo \"task $SLURM_PROCID of $SLURM_NTASKS\"' "
    "| sort\n"
    "srun bash -c 'exit $((SLURM_PROCID + 3))'\n"
    'echo "worst $?"\n'
    "srun --no-such-option true 2>/dev/null\n"
    'echo "unknown option $?"\n'
)


async def test_a_job_step_runs_one_process_per_task_and_reports_the_worst_exit(
    site: Contract,
) -> None:
    """srun inside a 2-task job: SLURM_PROCID 0 and 1, SLURM_NTASKS, the highest task exit code
    as srun's own, an unknown option refused (the emulator's srun, mockslurm/srun.py)."""
    s = site.geneva
    spec = dataclasses.replace(s.spec("steps"), ntasks=2)
    job_id = await s.submit("alice", spec, STEPS)
    (entry,) = (await wait_accounting(s, [job_id])).values()
    assert entry.state is JobState.COMPLETED
    output = s.output_file("alice", spec, job_id)

    async def written() -> bool:
        return output.exists() and "unknown option" in output.read_text()

    await wait_until_async(written, 10.0, f"{output} to be written", 0.2)
    lines = [line for line in output.read_text().splitlines() if not line.startswith("srun:")]
    assert lines == ["task 0 of 2", "task 1 of 2", "worst 4", "unknown option 255"], lines
    agree(site, "srun:steps", tuple(lines))
