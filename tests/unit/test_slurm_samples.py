"""Parsers and error mapping on output captured from real Slurm 22.05 (golden inputs)."""

from __future__ import annotations

import datetime as dt
import pathlib

import pytest

from bbp_notebooks.slurm.commands import (
    parse_accounts,
    parse_sacct,
    parse_sbatch,
    parse_scontrol_show_job,
    parse_sinfo,
    parse_squeue,
    parse_version,
)
from bbp_notebooks.slurm.values import JobState
from bbp_notebooks.ssh.errors import CommandFailed, SlurmControllerUnavailable, error_for_exit

OURS = pathlib.Path(__file__).parent / "slurm_samples"
THEIRS = pathlib.Path(__file__).parents[1] / "realslurm" / "samples"


# The sentinel squeue_all_states.stdout.txt was captured with (squeue_all_argv(sentinel=...)).
SQUEUE_SENTINEL = "bbpnb0123456789abcdef"


def ours(name: str) -> str:
    return (OURS / name).read_text()


def theirs(name: str) -> str:
    return (THEIRS / name).read_text()


def test_squeue_with_all_states_keeps_a_just_completed_job_and_drops_a_forged_record() -> None:
    listing = parse_squeue(ours("squeue_all_states.stdout.txt"), SQUEUE_SENTINEL)
    entries = {e.job_id: e for e in listing.entries}
    # bob's job 1000004 is named "x\n1000002|alice|RUNNING|...|bbpnb-default-<uid>": its record
    # is dropped whole, and the job it pretends to be is the real one, alice's.
    assert (sorted(entries), listing.dropped) == ([1000000, 1000001, 1000002, 1000003], 1)
    done = entries[1000001]
    assert (done.state, done.name, done.nodes) == (
        JobState.COMPLETED,
        "bbpnb-sample-plain",
        "gva-n1",
    )
    assert done.state.is_terminal
    pending = entries[1000000]
    assert (pending.state, pending.reason, pending.nodes, pending.start_time) == (
        JobState.PENDING,
        "PartitionTimeLimit",
        None,
        None,
    )
    assert (pending.time_limit_s, pending.account) == (7200, "bbp")
    assert pending.submit_time == dt.datetime(2026, 12, 1, 13, 9, 25)
    running = entries[1000002]
    assert (running.user, running.name) == ("alice", "bbpnb-sample-run")
    assert running.start_time == dt.datetime(2026, 12, 1, 13, 9, 27)
    assert (running.time_limit_s, running.time_left_s) == (1800, 29 * 60 + 56)


def test_sacct_reports_how_every_job_ended() -> None:
    # Captured with sacct's default delimiter, '|' (the names in it hold none).
    entries = {e.job_id: e for e in parse_sacct(ours("sacct_allocations.stdout.txt"), "|")}
    assert len(entries) == 14
    assert entries[1000000].state is JobState.CANCELLED  # "CANCELLED by 0"
    assert entries[1000002].state is JobState.CANCELLED  # "CANCELLED by 1001"
    never_ran = entries[1000005]
    assert (never_ran.state, never_ran.start, never_ran.nodes) == (JobState.CANCELLED, None, None)
    assert never_ran.end == dt.datetime(2026, 11, 26, 0, 19, 37)
    assert (entries[1000011].state, entries[1000011].exit_code) == (JobState.FAILED, 3)
    assert (entries[1000012].exit_code, entries[1000012].signal) == (0, 9)
    assert (entries[1000013].state, entries[1000013].end) == (JobState.RUNNING, None)
    assert entries[1000008].start is None


def test_sinfo_on_both_sites() -> None:
    (prod, debug) = parse_sinfo(ours("sinfo_geneva_busy.stdout.txt"))
    assert (prod.name, prod.is_default, prod.nodes_idle, prod.cpus_idle, prod.cpus_total) == (
        "prod",
        True,
        0,
        5,
        8,
    )
    assert (debug.name, debug.is_default) == ("debug", False)
    (lugano,) = parse_sinfo(ours("sinfo_lugano_idle.stdout.txt"))
    assert (lugano.nodes_idle, lugano.nodes_total) == (1, 1)
    for name in ("sinfo_geneva_idle.stdout.txt", "sinfo_geneva_busy.stdout.txt"):
        assert [p.name for p in parse_sinfo(theirs(name))] == ["prod", "debug"]


def test_version_and_accounts() -> None:
    assert parse_version(ours("version.stdout.txt")) == "22.05.8"
    assert parse_version(theirs("sinfo_version.stdout.txt")) == "22.05.8"
    assert parse_accounts(ours("accounts_alice_lugano.stdout.txt")) == ["proj16", "proj42"]


@pytest.mark.parametrize(
    ("name", "first_job_id"),
    [
        ("sbatch_parsable_ok.stdout.txt", 1000000),
        ("sbatch_parsable_with_cluster_option.stdout.txt", 2000000),
        ("sbatch_lugano_with_account.stdout.txt", 2000000),
    ],
)
def test_sbatch_parsable_output(name: str, first_job_id: int) -> None:
    # Job ids depend on the capture run; the site's id range does not.
    assert first_job_id <= parse_sbatch(theirs(name)) < first_job_id + 1000000


def test_scontrol_records_in_both_layouts() -> None:
    running = parse_scontrol_show_job(ours("scontrol_oneliner_running.stdout.txt"))
    assert (running["JobState"], running["NodeList"], running["Power"]) == ("RUNNING", "gva-n1", "")
    assert running["AllocNode:Sid"] == "localhost:2654"
    assert running["TRES"] == "cpu=1,node=1,billing=1"
    pending = parse_scontrol_show_job(ours("scontrol_oneliner_pending.stdout.txt"))
    assert (pending["JobState"], pending["NodeList"], pending["StartTime"]) == (
        "PENDING",
        "",
        "Unknown",
    )
    indented = parse_scontrol_show_job(theirs("scontrol_show_job_running.stdout.txt"))
    assert indented["JobId"].isdigit() and indented["JobName"].startswith("bbpnb-")
    assert (indented["JobState"], indented["BatchHost"]) == ("RUNNING", "gva-n1")


@pytest.mark.parametrize(
    ("argv0", "name"),
    [
        ("squeue", "controller_down_squeue.stderr.txt"),
        ("sbatch", "controller_down_sbatch.stderr.txt"),
        ("scancel", "controller_down_scancel.stderr.txt"),
        ("sinfo", "controller_down_sinfo.stderr.txt"),
    ],
)
def test_real_controller_down_messages_map_to_controller_unavailable(argv0: str, name: str) -> None:
    assert isinstance(
        error_for_exit("geneva", [argv0], 1, theirs(name)), SlurmControllerUnavailable
    )


@pytest.mark.parametrize(
    ("argv0", "text"),
    [
        ("scancel", theirs("scancel_other_users_job.stderr.txt")),
        ("sbatch", theirs("sbatch_invalid_partition.stderr.txt")),
        ("sbatch", theirs("sbatch_invalid_account.stderr.txt")),
        ("sbatch", theirs("sbatch_script_without_shebang.stderr.txt")),
        ("squeue", ours("squeue_unknown_job_id.stderr.txt")),
        ("scontrol", ours("scontrol_unknown_job_id.stderr.txt")),
    ],
)
def test_real_refusals_are_command_failures_not_outages(argv0: str, text: str) -> None:
    error = error_for_exit("geneva", [argv0], 1, text)
    assert type(error) is CommandFailed
    assert error.stderr == text
