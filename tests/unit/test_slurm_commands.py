"""Golden argv for every Slurm command builder, and parsers on Slurm 22.05-shaped output."""

from __future__ import annotations

import datetime as dt
import shlex

import pytest

from bbp_notebooks.slurm.commands import (
    AccountingEntry,
    JobSpec,
    PartitionAvailability,
    QueueEntry,
    QueueListing,
    SacctSource,
    accounts_argv,
    parse_accounts,
    parse_sacct,
    parse_sbatch,
    parse_scontrol_show_job,
    parse_sinfo,
    parse_squeue,
    parse_version,
    sacct_argv,
    sbatch_argv,
    scancel_argv,
    scontrol_show_job_argv,
    sinfo_argv,
    squeue_all_argv,
    squeue_argv,
    version_argv,
)
from bbp_notebooks.slurm.values import JobState, SlurmOutputError

SPEC = JobSpec(
    name="bbpnb-0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b",
    partition="prod",
    account="proj42",
    cpus_per_task=4,
    memory_mb=8192,
    time_limit_minutes=480,
    workdir="/home/alice",
    output="/home/alice/.bbp-notebooks/0b3c5d1e/slurm-%j.out",
)
SENTINEL = "bbpnb0123456789abcdef"
SQUEUE_FORMAT = f"--format={SENTINEL}%A|%u|%T|%r|%N|%S|%V|%l|%L|%P|%a|%j"
SACCT_FORMAT = "--format=JobIDRaw,User,State,ExitCode,Start,End,NodeList,JobName"


# --- builders: golden argv ----------------------------------------------------------------------


def test_sbatch_puts_every_option_on_the_command_line() -> None:
    assert sbatch_argv(SPEC) == [
        "sbatch",
        "--parsable",
        "--job-name=bbpnb-0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=4",
        "--mem=8192M",
        "--time=480",
        "--partition=prod",
        "--account=proj42",
        "--chdir=/home/alice",
        "--output=/home/alice/.bbp-notebooks/0b3c5d1e/slurm-%j.out",
    ]


def test_sbatch_leaves_out_options_that_are_not_set() -> None:
    spec = JobSpec("bbpnb-x", None, None, cpus_per_task=1, memory_mb=512, time_limit_minutes=30)
    assert sbatch_argv(spec) == [
        "sbatch",
        "--parsable",
        "--job-name=bbpnb-x",
        "--nodes=1",
        "--ntasks=1",
        "--cpus-per-task=1",
        "--mem=512M",
        "--time=30",
    ]


def test_a_workdir_with_shell_syntax_stays_one_quoted_word() -> None:
    spec = JobSpec("bbpnb-x", None, None, 1, 512, 30, workdir="/home/a b/$(touch x)/`id`")
    assert shlex.split(shlex.join(sbatch_argv(spec)))[-1] == "--chdir=/home/a b/$(touch x)/`id`"


@pytest.mark.parametrize(
    "change",
    [
        {"name": ""},
        {"name": "a\nb"},
        {"name": "a,b"},
        {"name": "x" * 2000},
        {"partition": "prod,debug"},
        {"partition": "prod --account=other"},
        {"account": "-rf"},
        {"cpus_per_task": 0},
        {"memory_mb": -1},
        {"time_limit_minutes": True},
        {"workdir": "/home/a\n#SBATCH --uid=0"},
        {"output": "/tmp/\x00"},
    ],
)
def test_a_job_spec_with_unsafe_values_is_rejected(change: dict[str, object]) -> None:
    fields: dict[str, object] = {
        "name": "bbpnb-x",
        "partition": None,
        "account": None,
        "cpus_per_task": 1,
        "memory_mb": 1,
        "time_limit_minutes": 1,
        **change,
    }
    with pytest.raises(ValueError):
        JobSpec(**fields)  # type: ignore[arg-type]


def test_squeue_by_job_ids() -> None:
    assert squeue_argv(job_ids=[1000001, 1000002, 1000001], sentinel=SENTINEL) == [
        "squeue",
        "--noheader",
        "--states=all",
        SQUEUE_FORMAT,
        "--jobs=1000001,1000002",
    ]


def test_squeue_by_names_and_users() -> None:
    assert squeue_argv(names=["bbpnb-a", "bbpnb-b"], users=["alice"], sentinel=SENTINEL) == [
        "squeue",
        "--noheader",
        "--states=all",
        SQUEUE_FORMAT,
        "--name=bbpnb-a,bbpnb-b",
        "--user=alice",
    ]


def test_squeue_refuses_a_query_that_would_match_every_job() -> None:
    with pytest.raises(ValueError, match="every job"):
        squeue_argv(sentinel=SENTINEL)
    with pytest.raises(ValueError, match="every job"):
        squeue_argv(job_ids=[], names=(), users=iter([]), sentinel=SENTINEL)


def test_listing_every_job_needs_its_own_builder() -> None:
    assert squeue_all_argv(sentinel=SENTINEL) == [
        "squeue",
        "--noheader",
        "--all",
        "--states=all",
        SQUEUE_FORMAT,
    ]


@pytest.mark.parametrize(
    "sentinel", ["", "short", "has%percent0123456", "has|pipe0123456789", "a" * 65]
)
def test_a_sentinel_squeue_would_misprint_or_guess_easily_is_refused(sentinel: str) -> None:
    with pytest.raises(ValueError, match="sentinel"):
        squeue_all_argv(sentinel=sentinel)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"job_ids": [0]},
        {"job_ids": [-5]},
        {"job_ids": ["123"]},
        {"job_ids": [True]},
        {"names": ["a,b"]},
        {"names": [""]},
        {"users": ["alice,bob"]},
        {"users": ["Alice"]},
        {"users": ["-u"]},
    ],
)
def test_squeue_rejects_filters_slurm_would_misread(kwargs: dict[str, list[object]]) -> None:
    with pytest.raises(ValueError):
        squeue_argv(**kwargs, sentinel=SENTINEL)  # type: ignore[arg-type]


def test_sacct_reads_the_accounting_database_by_default() -> None:
    assert sacct_argv([1000001, 1000002], sentinel=SENTINEL) == [
        "sacct",
        "--noheader",
        "--parsable2",
        f"--delimiter={SENTINEL}",
        "--allocations",
        "--jobs=1000001,1000002",
        SACCT_FORMAT,
    ]


def test_sacct_reads_the_completion_log_on_sites_without_slurmdbd() -> None:
    assert sacct_argv([7], sentinel=SENTINEL, source=SacctSource.JOBCOMP) == [
        "sacct",
        "--noheader",
        "--parsable2",
        f"--delimiter={SENTINEL}",
        "--completion",
        "--jobs=7",
        SACCT_FORMAT,
    ]


def test_sacct_refuses_an_empty_job_list() -> None:
    with pytest.raises(ValueError):
        sacct_argv([], sentinel=SENTINEL)
    with pytest.raises(ValueError, match="sentinel"):
        sacct_argv([7], sentinel="|")


def test_scancel_names_exactly_the_jobs() -> None:
    assert scancel_argv([1000001, 1000002]) == ["scancel", "1000001", "1000002"]


def test_scancel_can_also_require_the_job_name() -> None:
    assert scancel_argv([1000001], name="bbpnb-x") == ["scancel", "--name=bbpnb-x", "1000001"]


def test_scancel_can_require_the_job_name_and_its_owner() -> None:
    assert scancel_argv([1000001], name="bbpnb-x", user="bob") == [
        "scancel",
        "--name=bbpnb-x",
        "--user=bob",
        "1000001",
    ]


@pytest.mark.parametrize("user", ["", "Bob", "bob,alice", "-u", "bob\nalice"])
def test_scancel_refuses_an_owner_slurm_would_misread(user: str) -> None:
    with pytest.raises(ValueError):
        scancel_argv([1000001], name="bbpnb-x", user=user)


@pytest.mark.parametrize("job_ids", [[], (), iter([])])
def test_scancel_refuses_an_empty_job_list(job_ids: list[int]) -> None:
    with pytest.raises(ValueError):
        scancel_argv(job_ids)


def test_other_builders() -> None:
    assert sinfo_argv() == ["sinfo", "--noheader", "--format=%P|%a|%F|%C"]
    assert version_argv() == ["sinfo", "--version"]
    assert accounts_argv("alice") == [
        "sacctmgr",
        "--noheader",
        "--parsable2",
        "show",
        "associations",
        "where",
        "user=alice",
        "format=Account",
    ]
    assert scontrol_show_job_argv(1000001) == ["scontrol", "--oneliner", "show", "job", "1000001"]
    with pytest.raises(ValueError):
        accounts_argv("alice format=User")
    with pytest.raises(ValueError):
        scontrol_show_job_argv(0)


# --- parsers ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("stdout", "job_id"),
    [("1000001\n", 1000001), ("2000003;lugano\n", 2000003), ("\n42\n\n", 42)],
)
def test_sbatch_output_gives_the_job_id(stdout: str, job_id: int) -> None:
    assert parse_sbatch(stdout) == job_id


@pytest.mark.parametrize("stdout", ["", "\n", "Submitted batch job 12\n", "12.0\n", "-3\n", "١٢\n"])
def test_sbatch_output_without_an_integer_job_id_is_an_error(stdout: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_sbatch(stdout)


SQUEUE_ROWS = (
    "1000000|alice|RUNNING|None|node01|2026-11-25T10:00:00|2026-11-25T09:59:00|8:00:00|7:59:58"
    "|prod|proj42|bbpnb-a",
    "1000001|bob|PENDING|Priority||N/A|2026-11-25T09:58:00|30:00|30:00|prod|(null)|bbpnb-b",
    "1000002|alice|COMPLETED|None|node02|2026-11-25T09:00:00|2026-11-25T08:00:00|1-00:00:00"
    "|INVALID|debug|(null)|x",
    "1000004|bob|RUNNING|None|node03|2026-11-25T10:00:00|2026-11-25T10:00:00|5:00|4:01|debug"
    "||ünï cødé ✓",
)
NORMAL = "7|alice|RUNNING|None|n1|N/A|2026-11-25T10:00:00|5:00|4:00|debug||"
OUR_TAG = "bbpnb-default-0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b"


def squeue_output(*records: str, sentinel: str = SENTINEL) -> str:
    """What squeue prints for the sentinel format: each record after the sentinel, then "\\n"."""
    return "".join(f"{sentinel}{record}\n" for record in records)


def test_squeue_output_becomes_typed_entries() -> None:
    listing = parse_squeue(squeue_output(*SQUEUE_ROWS), SENTINEL)
    assert listing.dropped == 0
    entries = listing.entries
    assert entries[0] == QueueEntry(
        job_id=1000000,
        name="bbpnb-a",
        user="alice",
        state=JobState.RUNNING,
        reason=None,
        nodes="node01",
        start_time=dt.datetime(2026, 11, 25, 10, 0, 0),
        time_limit_s=8 * 3600,
        time_left_s=7 * 3600 + 59 * 60 + 58,
        partition="prod",
        account="proj42",
        submit_time=dt.datetime(2026, 11, 25, 9, 59, 0),
    )
    pending = entries[1]
    assert (pending.state, pending.reason, pending.nodes, pending.start_time) == (
        JobState.PENDING,
        "Priority",
        None,
        None,
    )
    assert (pending.time_limit_s, pending.account) == (1800, None)
    assert (entries[2].time_limit_s, entries[2].time_left_s) == (86400, None)
    assert entries[2].state.is_terminal
    assert entries[3].name == "ünï cødé ✓"


FORGED = (
    # A job name that ends its own row and invents one for a job of ours, run by somebody else.
    "x\n1000009|carol|RUNNING|None|n1|N/A|2026-11-25T09:00:00|5:00|4:00|debug||" + OUR_TAG
)


@pytest.mark.parametrize(
    ("records", "kept", "dropped"),
    [
        pytest.param([NORMAL + OUR_TAG], [(7, OUR_TAG)], 0, id="a normal row"),
        pytest.param([NORMAL + "a|b c|d"], [], 1, id="a name with a pipe"),
        pytest.param([NORMAL + FORGED], [], 1, id="a name with a newline and a forged row"),
        pytest.param(
            [NORMAL + "first\nsecond", NORMAL.replace("7|", "8|", 1) + "z"],
            [(8, "z")],
            1,
            id="a newline does not take the next record with it",
        ),
        pytest.param(["7|alice|RUNNING"], [], 1, id="too few fields"),
        pytest.param([NORMAL + "x|"], [], 1, id="too many fields"),
        pytest.param(
            [NORMAL + "bbpnb-other-0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b"],
            [(7, "bbpnb-other-0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b")],
            0,
            id="another installation's tag is a row like any (the sweep filters it)",
        ),
        pytest.param(["abc" + NORMAL[1:] + "x"], [], 1, id="a job id that is no integer"),
        pytest.param(["123_4" + NORMAL[1:] + "x"], [], 1, id="an array element id"),
        pytest.param([NORMAL.replace("RUNNING", "WEIRD") + "x"], [], 1, id="an unknown state"),
        pytest.param([NORMAL.replace("N/A", "yesterday") + "x"], [], 1, id="a bad start time"),
        pytest.param([NORMAL.replace("5:00", "five") + "x"], [], 1, id="a bad time limit"),
    ],
)
def test_squeue_records_that_do_not_parse_are_dropped_and_counted(
    records: list[str], kept: list[tuple[int, str]], dropped: int
) -> None:
    listing = parse_squeue(squeue_output(*records), SENTINEL)
    assert [(e.job_id, e.name) for e in listing.entries] == kept
    assert listing.dropped == dropped


def test_a_forged_row_without_the_sentinel_never_becomes_a_phantom_job() -> None:
    listing = parse_squeue(squeue_output(NORMAL + FORGED, *SQUEUE_ROWS), SENTINEL)
    assert 1000009 not in {e.job_id for e in listing.entries}
    assert OUR_TAG not in {e.name for e in listing.entries}
    assert (len(listing.entries), listing.dropped) == (len(SQUEUE_ROWS), 1)


def test_a_forged_row_with_a_guessed_sentinel_is_part_of_its_own_record() -> None:
    guessed = FORGED.replace("\n", "\nbbpnbfedcba9876543210")
    listing = parse_squeue(squeue_output(NORMAL + guessed), SENTINEL)
    assert (listing.entries, listing.dropped) == ((), 1)


def test_text_before_the_first_sentinel_or_a_cut_last_record_is_dropped() -> None:
    assert parse_squeue("noise\n" + squeue_output(NORMAL + "a"), SENTINEL).dropped == 1
    cut = parse_squeue(squeue_output(NORMAL + "a") + SENTINEL + NORMAL + "b", SENTINEL)
    assert ([e.name for e in cut.entries], cut.dropped) == (["a"], 1)


def test_empty_squeue_output_is_no_jobs() -> None:
    assert parse_squeue("", SENTINEL) == QueueListing((), 0)
    assert parse_squeue("\n", SENTINEL) == QueueListing((), 0)


SACCT_OUTPUT = (
    "1000000|alice|COMPLETED|0:0|2026-11-25T10:00:00|2026-11-25T10:30:00|node01|bbpnb-a\n"
    "1000001|alice|CANCELLED by 1000|0:15|2026-11-25T10:00:00|2026-11-25T10:05:00|node01|bbpnb-b\n"
    "1000002|bob|FAILED|2:0|2026-11-25T10:00:00|2026-11-25T10:00:03|node02|x|y\n"
    "1000003|bob|PENDING|0:0|Unknown|Unknown|None assigned|bbpnb-d\n"
    "1000004|bob|OUT_OF_MEMORY|0:125|2026-11-25T10:00:00|2026-11-25T10:01:00|node02|bbpnb-e\n"
    "1000004.batch|bob|OUT_OF_MEMORY|0:125|2026-11-25T10:00:00|2026-11-25T10:01:00|node02|batch\n"
)


def sacct_output(text: str) -> str:
    """SACCT_OUTPUT-shaped text as sacct prints it with the sentinel as its delimiter: the first
    seven '|' of a line separate fields, any further one is part of the job name."""
    return "".join(SENTINEL.join(line.split("|", 7)) for line in text.splitlines(keepends=True))


def test_sacct_output_becomes_typed_entries() -> None:
    entries = parse_sacct(sacct_output(SACCT_OUTPUT), SENTINEL)
    assert entries[1] == AccountingEntry(
        job_id=1000001,
        name="bbpnb-b",
        user="alice",
        state=JobState.CANCELLED,
        exit_code=0,
        signal=15,
        start=dt.datetime(2026, 11, 25, 10, 0),
        end=dt.datetime(2026, 11, 25, 10, 5),
        nodes="node01",
    )
    assert (entries[2].state, entries[2].exit_code, entries[2].name) == (JobState.FAILED, 2, "x|y")
    assert (entries[3].start, entries[3].end, entries[3].nodes) == (None, None, None)
    assert entries[4].state is JobState.OUT_OF_MEMORY


def test_sacct_job_steps_are_not_jobs() -> None:
    assert [e.job_id for e in parse_sacct(sacct_output(SACCT_OUTPUT), SENTINEL)] == [
        1000000,
        1000001,
        1000002,
        1000003,
        1000004,
    ]


def test_a_job_name_cannot_forge_an_sacct_record() -> None:
    # Alice renamed her job to end its record and invent one saying bob's job 1000005 completed.
    forged = "x\n1000005|bob|COMPLETED|0:0|2026-11-25T10:00:00|2026-11-25T10:01:00|node01|y|z"
    stdout = (
        f"1000004{SENTINEL}alice{SENTINEL}RUNNING{SENTINEL}0:0{SENTINEL}2026-11-25T10:00:00"
        f"{SENTINEL}Unknown{SENTINEL}node01{SENTINEL}{forged}\n"
        f"1000005{SENTINEL}bob{SENTINEL}RUNNING{SENTINEL}0:0{SENTINEL}2026-11-25T10:00:00"
        f"{SENTINEL}Unknown{SENTINEL}node01{SENTINEL}bbpnb-b\n"
    )
    entries = parse_sacct(stdout, SENTINEL)
    assert [(e.job_id, e.user, e.state) for e in entries] == [
        (1000004, "alice", JobState.RUNNING),
        (1000005, "bob", JobState.RUNNING),
    ]
    assert entries[0].name == forged  # kept whole, as printed: it is only a name


@pytest.mark.parametrize(
    "stdout",
    [
        "1|alice|FAILED|two|N/A|N/A|n1|x\n",  # a bad exit code
        "1|alice|FAILED|0:0|N/A|N/A|n1\n",  # a field short
        "1|alice|FAILED|0:0|N/A|N/A|n1|x",  # cut before its newline
        "1|alice|FAILED|0:0|N/A|N/A|n1|x\n2|bob",  # ends inside a record
    ],
)
def test_unreadable_sacct_output_is_an_error_not_a_guess(stdout: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_sacct(sacct_output(stdout), SENTINEL)


def test_empty_sacct_output_is_no_jobs() -> None:
    assert parse_sacct("", SENTINEL) == parse_sacct("\n", SENTINEL) == []


def test_sinfo_output_gives_free_nodes_and_cores_per_partition() -> None:
    stdout = (
        "prod*|up|3/2/1/6|96/64/32/192\ndebug|down|0/2/0/2|0/16/0/16\nprod*|up|0/1/0/1|0/8/0/8\n"
    )
    assert parse_sinfo(stdout) == [
        PartitionAvailability("prod", True, True, 3, 7, 72, 200),
        PartitionAvailability("debug", False, False, 2, 2, 16, 16),
    ]


@pytest.mark.parametrize("stdout", ["prod|up|1/2/3|1/2/3/4\n", "prod|up|a/b/c/d|1/2/3/4\n"])
def test_unreadable_sinfo_output_is_an_error(stdout: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_sinfo(stdout)


def test_version_and_accounts() -> None:
    assert parse_version("slurm 22.05.8\n") == "22.05.8"
    assert parse_version("slurm-wlm 22.05.8\n") == "22.05.8"
    with pytest.raises(SlurmOutputError):
        parse_version("sinfo: error: something\n")
    assert parse_accounts("proj42\nproj7\nproj42\n\n") == ["proj42", "proj7"]
    with pytest.raises(SlurmOutputError):
        parse_accounts("proj 42\n")


SCONTROL_OUTPUT = (
    "JobId=1000000 JobName=my job name UserId=alice(1000) GroupId=alice(1000) MCS_label=N/A "
    "Priority=4294901759 Nice=0 Account=(null) QOS=(null) JobState=RUNNING Reason=None "
    "Dependency=(null) Requeue=1 Restarts=0 BatchFlag=1 Reboot=0 ExitCode=0:0 RunTime=00:00:05 "
    "TimeLimit=01:00:00 TimeMin=N/A SubmitTime=2026-11-25T10:00:00 NodeList=node01 "
    "BatchHost=node01 NumNodes=1 NumCPUs=4 TRES=cpu=4,mem=8G,node=1,billing=4 "
    "Command=(null) WorkDir=/home/alice/my dir StdOut=/home/alice/slurm-1000000.out Power=\n"
)


def test_scontrol_show_job_becomes_a_dict_with_spaces_kept_in_values() -> None:
    fields = parse_scontrol_show_job(SCONTROL_OUTPUT)
    assert fields["JobId"] == "1000000"
    assert fields["JobName"] == "my job name"
    assert fields["JobState"] == "RUNNING"
    assert fields["TRES"] == "cpu=4,mem=8G,node=1,billing=4"
    assert fields["WorkDir"] == "/home/alice/my dir"
    assert fields["Power"] == ""


@pytest.mark.parametrize("stdout", ["", "not a record\n", "JobId=1\nJobId=2\n", "Name=x JobId=1\n"])
def test_unreadable_scontrol_output_is_an_error(stdout: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_scontrol_show_job(stdout)


def test_associations_list_every_users_accounts_in_one_query() -> None:
    from bbp_notebooks.slurm.commands import associations_argv, parse_associations

    assert associations_argv() == [
        "sacctmgr", "--noheader", "--parsable2", "show", "associations", "format=User,Account",
    ]  # fmt: skip
    parsed = parse_associations("|root\n|bbp\nalice|bbp\nalice|proj16\nbob|proj42\nalice|bbp\n")
    assert parsed == {"alice": ["bbp", "proj16"], "bob": ["proj42"]}
    with pytest.raises(SlurmOutputError):
        parse_associations("alice;rm -rf /\n")
