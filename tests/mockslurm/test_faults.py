"""Injected faults behave like the real failures, and hostile input is never executed."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import asyncssh
import pytest

from bbp_notebooks.mockslurm.site import MockSite
from fixtures.mockslurm import SshFactory, slurm

SLEEPER = "#!/bin/bash\nsleep 60\n"
CONNECT = "Unable to contact slurm controller (connect failure)"


async def _submit(conn: asyncssh.SSHClientConnection, *args: str, script: str = SLEEPER) -> int:
    result = await slurm(conn, "sbatch", "--parsable", "-o", "/dev/null", *args, input=script)
    assert result.exit_status == 0, result.stderr
    return int(result.stdout)


async def test_a_down_controller_fails_commands_after_a_delay_with_slurm_messages(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    job_id = await _submit(conn)
    mockslurm_site.set_faults(controller_down=True, controller_down_delay=0.3)
    expected = {
        ("sbatch",): f"sbatch: error: Batch job submission failed: {CONNECT}\n",
        ("squeue", "-h"): f"slurm_load_jobs error: {CONNECT}\n",
        ("scancel", str(job_id)): f"scancel: error: Kill job error on job id {job_id}: {CONNECT}\n",
        ("sinfo",): f"slurm_load_partitions: {CONNECT}\n",
        ("scontrol", "show", "job", str(job_id)): f"slurm_load_jobs error: {CONNECT}\n",
    }
    for argv, message in expected.items():
        started = time.monotonic()
        result = await slurm(conn, *argv, input=SLEEPER)
        assert time.monotonic() - started >= 0.3
        # Real scancel exits 8 here (measured against slurm-wlm 22.05 by the contract suite).
        status = 8 if argv[0] == "scancel" else 1
        assert (result.exit_status, result.stdout, result.stderr) == (status, "", message)
    accounting = await slurm(conn, "sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "JobID")
    assert accounting.stdout == f"{job_id}\n"  # slurmdbd is still up
    mockslurm_site.set_faults(controller_down=False)
    assert (await slurm(conn, "squeue", "-h", "-o", "%i")).stdout == f"{job_id}\n"


async def test_a_slow_controller_delays_every_rpc(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.set_faults(controller_latency=0.4)
    started = time.monotonic()
    result = await slurm(conn, "squeue", "-h")
    assert result.exit_status == 0
    assert time.monotonic() - started >= 0.4


async def test_a_stuck_queue_starts_nothing_until_released(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    mockslurm_site.set_faults(stuck_pending=True)
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    first, second = await _submit(conn), await _submit(conn)
    for _ in range(100):  # wait (bounded) for a scheduler pass to set the reasons
        if mockslurm_site.job(second).reason == "Priority":
            break
        await asyncio.sleep(0.05)
    listed = await slurm(conn, "squeue", "-h", "-o", "%i %T %R")
    assert listed.stdout == f"{first} PENDING (Resources)\n{second} PENDING (Priority)\n"
    mockslurm_site.set_faults(stuck_pending=False)
    await mockslurm_site.wait_for_state(second, {"RUNNING"})


async def test_jobs_submitted_while_hold_new_is_set_stay_held_and_the_rest_still_runs(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    """As `scontrol hold`: PENDING with reason JobHeldAdmin, passed over by the scheduler."""
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.set_faults(hold_new=True)
    held = await _submit(conn)
    mockslurm_site.set_faults(hold_new=False)
    later = await _submit(conn)
    await mockslurm_site.wait_for_state(later, {"RUNNING"})
    listed = await slurm(conn, "squeue", "-h", "-j", str(held), "-o", "%i %T %R")
    assert listed.stdout == f"{held} PENDING (JobHeldAdmin)\n"


async def test_a_failing_node_ends_its_jobs_with_node_fail(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    job_id = await _submit(conn)
    job = await mockslurm_site.wait_for_state(job_id, {"RUNNING"})
    node = job.nodes[0]
    mockslurm_site.fail_node(node)
    await mockslurm_site.wait_for_state(job_id, {"NODE_FAIL"})
    accounted = await slurm(
        conn, "sacct", "-X", "-P", "-n", "-j", str(job_id), "-o", "State,ExitCode"
    )
    assert accounted.stdout == "NODE_FAIL|0:0\n"
    info = await slurm(conn, "sinfo", "-h", "-p", "debug", "-o", "%t %N")
    assert f"down* {node}" in info.stdout.splitlines()
    next_job = await _submit(conn)
    started = await mockslurm_site.wait_for_state(next_job, {"RUNNING"})
    assert node not in started.nodes
    mockslurm_site.resume_node(node)


@pytest.mark.parametrize(
    ("kill_as", "state"), [("FAILED", "FAILED|0:9"), ("CANCELLED", "CANCELLED by 0|0:0")]
)
async def test_a_job_killed_from_outside_ends_failed_or_cancelled(
    kill_as: str, state: str, mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    job_id = await _submit(conn)
    await mockslurm_site.wait_for_state(job_id, {"RUNNING"})
    mockslurm_site.kill_job(job_id, kill_as)
    await mockslurm_site.wait_for_state(job_id, {kill_as})
    accounted = await slurm(
        conn, "sacct", "-X", "-P", "-n", "-j", str(job_id), "-o", "State,ExitCode"
    )
    assert accounted.stdout == f"{state}\n"


async def test_commands_are_counted_per_name(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.reset_command_counts()
    for _ in range(3):
        await slurm(conn, "squeue", "-h")
    await slurm(conn, "sacct", "-n")
    await slurm(conn, "nonsense")
    assert mockslurm_site.command_counts == {"squeue": 3, "sacct": 1, "<not found>": 1}


HOSTILE = [
    'it\'s "quoted"',
    "$(touch {canary})",
    "`touch {canary}`",
    "x; touch {canary}",
    "line1\ntouch {canary}",
    "#SBATCH --wrap=touch {canary}",
    "${{IFS}}touch${{IFS}}{canary}",
]


@pytest.mark.parametrize("template", HOSTILE)
async def test_hostile_job_fields_are_stored_verbatim_and_never_executed(
    template: str, mockslurm_site: MockSite, mockslurm_ssh: SshFactory, tmp_path: Path
) -> None:
    canary = tmp_path / "canary"
    value = template.format(canary=canary)
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    script = '#!/bin/bash\necho "$SLURM_JOB_NAME" >/dev/null\n'
    job_id = await _submit(conn, "-J", value, "--comment", value, script=script)
    job = await mockslurm_site.wait_for_state(job_id, {"COMPLETED"})
    assert (job.name, job.comment) == (value, value)
    shown = await slurm(conn, "squeue", "-h", "-t", "all", "-n", value, "-o", "%i|%j|%k")
    assert shown.stdout == f"{job_id}|{value}|{value}\n"
    cancel = await slurm(conn, "scancel", "-n", value)
    assert cancel.exit_status == 0
    await conn.run(value, check=False)  # the unquoted text as a whole command line
    await asyncio.sleep(0.1)
    assert not canary.exists()


async def test_a_lost_sbatch_response_still_leaves_the_job_queued(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.set_faults(sbatch_response_lost=True)
    try:
        lost = await slurm(conn, "sbatch", "--parsable", "-J", "lost", input=SLEEPER)
    except asyncssh.ConnectionLost:
        pass  # depending on timing the client sees the drop as an error...
    else:
        assert (lost.exit_status, lost.stdout) == (-1, "")  # ...or as no exit status at all
    mockslurm_site.set_faults(sbatch_response_lost=False)
    again = await mockslurm_ssh(mockslurm_site, "alice")
    listed = await slurm(again, "squeue", "-h", "-n", "lost", "-o", "%i %j")
    assert listed.stdout == "1000000 lost\n"


async def test_a_slow_sbatch_registers_its_job_after_a_client_that_gave_up(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.set_faults(sbatch_latency=1.0)
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(
            slurm(conn, "sbatch", "--parsable", "-J", "late", input=SLEEPER), timeout=0.3
        )
    mockslurm_site.set_faults(sbatch_latency=0.0)
    again = await mockslurm_ssh(mockslurm_site, "alice")
    assert (await slurm(again, "squeue", "-h", "-n", "late", "-o", "%j")).stdout == ""
    await asyncio.sleep(1.2)
    listed = await slurm(again, "squeue", "-h", "-n", "late", "-o", "%j")
    assert listed.stdout == "late\n"


async def test_unknown_users_cannot_log_in(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    with pytest.raises(asyncssh.PermissionDenied):
        await mockslurm_ssh(mockslurm_site, "mallory")


async def test_a_down_database_fails_sacct_and_sacctmgr_but_not_squeue(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    mockslurm_site.set_faults(database_down=True, controller_down_delay=0.1)
    for argv in (("sacct", "-X", "-n", "-P"), ("sacctmgr", "-n", "-P", "show", "assoc")):
        result = await slurm(conn, *argv)
        assert result.exit_status == 1
        assert result.stderr.endswith(
            f"{argv[0]}: error: Problem talking to the database: Connection refused\n"
        )
    assert (await slurm(conn, "squeue", "-h")).exit_status == 0
