"""SlurmClient over a throwaway sshd whose "Slurm" answers with canned 22.05-shaped output."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import asyncssh
import pytest

from bbp_notebooks.slurm.commands import JobSpec, SacctSource, sbatch_argv
from bbp_notebooks.slurm.values import JobState
from bbp_notebooks.ssh import (
    CertificateAuthority,
    CommandFailed,
    Identity,
    SiteUnavailable,
    SlurmClient,
    SlurmControllerUnavailable,
    SshPool,
)
from fixtures.sshserver import Call, Reply, ThrowawaySshd

SPEC = JobSpec("bbpnb-abc", "prod", None, cpus_per_task=2, memory_mb=1024, time_limit_minutes=60)
CONTROLLER_DOWN = "squeue: error: Unable to contact slurm controller (connect failure)\n"


SQUEUE_ROW = (
    "1000007|alice|RUNNING|None|node01|2026-11-25T10:00:00|2026-11-25T09:59:00|1:00:00|59:00|prod"
    "||bbpnb-abc"
)


def squeue_records(call: Call, *records: str) -> str:
    """Records as squeue prints them for the client's format: its sentinel, the record, "\\n"."""
    (fmt,) = [a.removeprefix("--format=") for a in call.argv if a.startswith("--format=")]
    sentinel = fmt[: fmt.index("%")]
    return "".join(f"{sentinel}{record}\n" for record in records)


SACCT_ROW = "1000007|alice|TIMEOUT|0:0|2026-11-25T10:00:00|2026-11-25T11:00:00|node01|bbpnb-abc"


def sacct_records(call: Call, *records: str) -> str:
    """Records as sacct prints them with the client's --delimiter."""
    (delimiter,) = [a.removeprefix("--delimiter=") for a in call.argv if a.startswith("--delim")]
    return "".join(record.replace("|", delimiter) + "\n" for record in records)


class FakeSlurm:
    """Answers per command name; tests replace entries to inject output or faults."""

    def __init__(self) -> None:
        self.replies: dict[str, Callable[[Call], Reply]] = {
            "sbatch": lambda call: (0, "1000007\n", ""),
            "squeue": lambda call: (0, squeue_records(call, SQUEUE_ROW), ""),
            "sacct": lambda call: (0, sacct_records(call, SACCT_ROW), ""),
            "scancel": lambda call: (0, "", ""),
            "sinfo": lambda call: (
                (0, "slurm 22.05.8\n", "")
                if call.argv[1:] == ["--version"]
                else (0, "prod*|up|1/3/0/4|8/24/0/32\n", "")
            ),
            "sacctmgr": lambda call: (0, "proj42\nproj7\n", ""),
            "scontrol": lambda call: (0, "JobId=1000007 JobName=bbpnb-abc JobState=RUNNING\n", ""),
            "cat": lambda call: (0, '{"host": "node01", "port": 8888, "jobId": 1000007}', ""),
        }

    def __call__(self, call: Call) -> Reply:
        return self.replies[call.argv[0]](call)


@pytest.fixture(scope="module")
def user_ca() -> CertificateAuthority:
    return CertificateAuthority(asyncssh.generate_private_key("ssh-ed25519"))


@pytest.fixture
def alice(user_ca: CertificateAuthority) -> Identity:
    return user_ca.mint("alice")


@pytest.fixture
def slurm() -> FakeSlurm:
    return FakeSlurm()


@pytest.fixture
async def sshd(user_ca: CertificateAuthority, slurm: FakeSlurm) -> AsyncIterator[ThrowawaySshd]:
    async with ThrowawaySshd(user_ca=user_ca, responder=slurm) as server:
        yield server


@pytest.fixture
async def client(sshd: ThrowawaySshd) -> AsyncIterator[SlurmClient]:
    pool = SshPool()
    yield SlurmClient(pool, sshd.endpoint("geneva"), timeout=10)
    await pool.close()


async def test_submit_sends_the_script_on_stdin_and_returns_the_job_id(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    script = "#!/bin/bash\nset -euo pipefail\necho 'it works' \"$(hostname)\"\n"
    assert await client.submit(alice, SPEC, script) == 1000007
    call = sshd.counters.calls[0]
    assert call.argv == sbatch_argv(SPEC)
    assert call.stdin == script


async def test_submit_with_unreadable_output_fails_instead_of_guessing(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity
) -> None:
    slurm.replies["sbatch"] = lambda call: (0, "Submitted batch job 12\n", "")
    with pytest.raises(CommandFailed, match="unreadable output"):
        await client.submit(alice, SPEC, "#!/bin/bash\n")


async def test_queue_parses_entries(client: SlurmClient, alice: Identity) -> None:
    (entry,) = await client.queue(alice, names=["bbpnb-abc"], users=["alice"])
    assert (entry.job_id, entry.state, entry.time_left_s) == (1000007, JobState.RUNNING, 3540)


async def test_a_purged_job_id_is_an_empty_answer(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity
) -> None:
    slurm.replies["squeue"] = lambda call: (
        1,
        "",
        "slurm_load_jobs error: Invalid job id specified\n",
    )
    assert await client.queue(alice, job_ids=[1000007]) == []


async def test_a_controller_that_cannot_be_reached_is_never_read_as_no_jobs(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity
) -> None:
    slurm.replies["squeue"] = lambda call: (1, "", CONTROLLER_DOWN)
    with pytest.raises(SlurmControllerUnavailable):
        await client.queue(alice, job_ids=[1000007])
    with pytest.raises(SiteUnavailable):
        await client.queue_all(alice)


async def test_queue_refuses_an_empty_filter_before_connecting(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    with pytest.raises(ValueError):
        await client.queue(alice)
    assert sshd.counters.connections == 0


async def test_queue_all_lists_every_visible_job_in_one_command(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    listing = await client.queue_all(alice)
    assert ([e.name for e in listing.entries], listing.dropped) == (["bbpnb-abc"], 0)
    assert [call.argv[0] for call in sshd.counters.calls] == ["squeue"]
    assert not any(
        a.startswith(("--jobs", "--name", "--user")) for a in sshd.counters.calls[0].argv
    )


async def test_every_squeue_call_draws_a_fresh_sentinel(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    await client.queue_all(alice)
    await client.queue_all(alice)
    await client.queue(alice, users=["alice"])
    formats = [a for call in sshd.counters.calls for a in call.argv if a.startswith("--format=")]
    sentinels = {f.removeprefix("--format=").split("%", 1)[0] for f in formats}
    assert len(formats) == len(sentinels) == 3
    assert all(len(s) >= 16 for s in sentinels)


async def test_a_forged_queue_record_is_dropped_and_counted_not_a_failed_poll(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity
) -> None:
    forged = SQUEUE_ROW.replace("bbpnb-abc", "x\n1000001|bob|RUNNING|None|n|N/A|N/A|5:00|4:00|p||y")
    slurm.replies["squeue"] = lambda call: (0, squeue_records(call, SQUEUE_ROW, forged), "")
    listing = await client.queue_all(alice)
    assert ([e.job_id for e in listing.entries], listing.dropped) == ([1000007], 1)
    assert [e.job_id for e in await client.queue(alice, users=["alice"])] == [1000007]


async def test_a_large_queue_is_parsed_off_the_event_loop(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity, monkeypatch: pytest.MonkeyPatch
) -> None:
    import threading

    from bbp_notebooks.slurm import commands

    parsed_on: list[str] = []
    real_parse = commands.parse_squeue

    def parse(text: str, sentinel: str) -> object:
        parsed_on.append(threading.current_thread().name)
        return real_parse(text, sentinel)

    monkeypatch.setattr(commands, "parse_squeue", parse)
    small = await client.queue_all(alice)
    rows = [SQUEUE_ROW.replace("1000007", str(2000000 + i)) for i in range(1000)]
    slurm.replies["squeue"] = lambda call: (0, squeue_records(call, *rows), "")
    large = await client.queue_all(alice)
    assert (len(small.entries), len(large.entries)) == (1, 1000)
    main = threading.main_thread().name
    assert parsed_on[0] == main and parsed_on[1] != main


async def test_accounting_reads_sacct_and_skips_the_call_for_no_jobs(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    assert await client.accounting(alice, []) == []
    assert sshd.counters.calls == []
    (entry,) = await client.accounting(alice, [1000007])
    assert entry.state is JobState.TIMEOUT


async def test_accounting_from_the_completion_log(sshd: ThrowawaySshd, alice: Identity) -> None:
    pool = SshPool()
    try:
        client = SlurmClient(pool, sshd.endpoint(), sacct_source=SacctSource.JOBCOMP)
        await client.accounting(alice, [1000007])
    finally:
        await pool.close()
    assert "--completion" in sshd.counters.calls[0].argv


@pytest.mark.parametrize(
    "stderr",
    [
        "scancel: error: Kill job error on job id 1000007: Invalid job id specified\n",
        "scancel: error: Kill job error on job id 1000007: "
        "Job/step already completing or completed\n",
    ],
)
async def test_cancelling_a_job_that_already_ended_succeeds(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity, stderr: str
) -> None:
    slurm.replies["scancel"] = lambda call: (1, "", stderr)
    await client.cancel(alice, [1000007])


async def test_cancel_failures_other_than_already_ended_are_raised(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity
) -> None:
    slurm.replies["scancel"] = lambda call: (
        1,
        "",
        "scancel: error: Kill job error on job id 1000007: Access/permission denied\n",
    )
    with pytest.raises(CommandFailed, match="permission denied"):
        await client.cancel(alice, [1000007])
    slurm.replies["scancel"] = lambda call: (1, "", CONTROLLER_DOWN)
    with pytest.raises(SlurmControllerUnavailable):
        await client.cancel(alice, [1000007])


async def test_cancel_refuses_an_empty_job_list(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    with pytest.raises(ValueError):
        await client.cancel(alice, [])
    assert sshd.counters.calls == []


async def test_cancel_can_require_the_session_tag(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    await client.cancel(alice, [1000007], name="bbpnb-abc")
    assert sshd.counters.calls[0].argv == ["scancel", "--name=bbpnb-abc", "1000007"]


async def test_cancel_can_require_the_session_tag_and_its_owner(
    client: SlurmClient, sshd: ThrowawaySshd, alice: Identity
) -> None:
    await client.cancel(alice, [1000007], name="bbpnb-abc", user="alice")
    assert sshd.counters.calls[0].argv == [
        "scancel",
        "--name=bbpnb-abc",
        "--user=alice",
        "1000007",
    ]


async def test_site_facts(client: SlurmClient, alice: Identity) -> None:
    (partition,) = await client.partitions(alice)
    assert (partition.name, partition.is_default, partition.nodes_idle) == ("prod", True, 3)
    assert await client.version(alice) == "22.05.8"
    assert await client.accounts(alice, "alice") == ["proj42", "proj7"]
    job = await client.show_job(alice, 1000007)
    assert job is not None and job["JobState"] == "RUNNING"


async def test_show_job_of_a_purged_job_is_none(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity
) -> None:
    slurm.replies["scontrol"] = lambda call: (
        1,
        "",
        "slurm_load_jobs error: Invalid job id specified\n",
    )
    assert await client.show_job(alice, 1000007) is None


async def test_reading_the_connection_file(
    client: SlurmClient, slurm: FakeSlurm, alice: Identity
) -> None:
    connection = await client.read_connection(alice, "abc")
    assert connection is not None and (connection.host, connection.port) == ("node01", 8888)
    slurm.replies["cat"] = lambda call: (1, "", "cat: x: No such file or directory\n")
    assert await client.read_connection(alice, "abc") is None
    slurm.replies["cat"] = lambda call: (1, "", "This frontend only runs Slurm commands\n")
    with pytest.raises(CommandFailed):
        await client.read_connection(alice, "abc")
