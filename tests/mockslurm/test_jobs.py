"""Jobs submitted over ssh run as real processes and move through Slurm's states."""

from __future__ import annotations

import os
import pwd
from collections.abc import Callable
from pathlib import Path

from bbp_notebooks.devtools.waiting import wait_until_async
from bbp_notebooks.mockslurm.site import MockSite
from fixtures.mockslurm import SiteConfigFactory, SiteFactory, SshFactory, slurm

SLEEPER = "#!/bin/bash\nsleep 60\n"


async def test_a_submitted_job_is_listed_and_cancelled(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    submitted = await slurm(conn, "sbatch", "--parsable", "-J", "nb-1", "-t", "10", input=SLEEPER)
    assert submitted.exit_status == 0, submitted.stderr
    job_id = int(str(submitted.stdout).strip())
    assert job_id == 1000000
    await mockslurm_site.wait_for_state(job_id, {"RUNNING"})
    listed = await slurm(conn, "squeue", "-h", "-j", str(job_id), "-o", "%i|%j|%u|%T|%P|%a|%l")
    assert listed.stdout == f"{job_id}|nb-1|alice|RUNNING|debug|proj-a|10:00\n"
    cancelled = await slurm(conn, "scancel", str(job_id))
    assert (cancelled.exit_status, cancelled.stdout, cancelled.stderr) == (0, "", "")
    await mockslurm_site.wait_for_state(job_id, {"CANCELLED"})
    accounted = await slurm(conn, "sacct", "-X", "-P", "-n", "-j", str(job_id), "-o", "State")
    assert accounted.stdout == f"CANCELLED by {mockslurm_site.job(job_id).user.uid}\n"


async def test_default_sbatch_output_names_the_job(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "bob")
    result = await slurm(conn, "sbatch", "-t", "1", input="#!/bin/sh\ntrue\n")
    assert result.stdout == "Submitted batch job 1000000\n"
    assert mockslurm_site.job(1000000).name == "sbatch"
    assert mockslurm_site.job(1000000).account == "proj-b"
    on_cluster = await slurm(conn, "sbatch", "--parsable", "-M", "geneva", input="#!/bin/sh\n")
    assert on_cluster.stdout == "1000001;geneva\n"
    quiet = await slurm(conn, "sbatch", "-Q", input="#!/bin/sh\ntrue\n")
    assert (quiet.exit_status, quiet.stdout) == (0, "")


async def test_a_job_runs_as_its_submitting_posix_user_with_slurm_environment(
    mockslurm_site: MockSite,
    mockslurm_ssh: SshFactory,
    mockslurm_workdir: Callable[[str], Path],
) -> None:
    assert os.geteuid() == 0, "the mock runs jobs as their users only when it runs as root"
    workdir = mockslurm_workdir("alice")
    script = (
        "#!/bin/bash\n"
        "#SBATCH --comment=from-script\n"
        "#SBATCH -c 2\n"
        'echo "id=$(id -un) uid=$(id -u) pwd=$(pwd)"\n'
        'echo "job=$SLURM_JOB_ID name=$SLURM_JOB_NAME nodes=$SLURM_JOB_NODELIST"\n'
        'echo "node=$SLURMD_NODENAME cpus=$SLURM_CPUS_PER_TASK account=$SLURM_JOB_ACCOUNT"\n'
        'echo "partition=$SLURM_JOB_PARTITION submit=$SLURM_SUBMIT_DIR home=$HOME user=$USER"\n'
        "echo to-stderr >&2\n"
    )
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    result = await slurm(
        conn, "sbatch", "--parsable", "-J", "envcheck", "-A", "proj-b", "-D", str(workdir),
        "-o", "out-%j-%u-%x.txt", "-e", "err-%j.txt", "--mem=1G", input=script,
    )  # fmt: skip
    job_id = int(result.stdout)
    job = await mockslurm_site.wait_for_state(job_id, {"COMPLETED"})
    assert job.comment == "from-script"
    out = (workdir / f"out-{job_id}-alice-envcheck.txt").read_text().splitlines()
    alice = pwd.getpwnam("alice")
    assert out == [
        f"id=alice uid={alice.pw_uid} pwd={workdir}",
        f"job={job_id} name=envcheck nodes=gva-cn01",
        "node=gva-cn01 cpus=2 account=proj-b",
        f"partition=debug submit={alice.pw_dir} home={alice.pw_dir} user=alice",
    ]
    assert (workdir / f"err-{job_id}.txt").read_text() == "to-stderr\n"
    assert (workdir / f"out-{job_id}-alice-envcheck.txt").stat().st_uid == alice.pw_uid


async def test_export_none_keeps_the_submission_environment_out(
    mockslurm_site: MockSite,
    mockslurm_ssh: SshFactory,
    mockslurm_workdir: Callable[[str], Path],
) -> None:
    workdir = mockslurm_workdir("alice")
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    script = '#!/bin/bash\necho "lang=${LANG-unset} job=$SLURM_JOB_ID"\n'
    result = await slurm(
        conn, "sbatch", "--parsable", "--export=NONE", "-D", str(workdir), input=script
    )
    job_id = int(result.stdout)
    await mockslurm_site.wait_for_state(job_id, {"COMPLETED"})
    assert (workdir / f"slurm-{job_id}.out").read_text() == f"lang=unset job={job_id}\n"


async def test_a_failing_script_ends_failed_with_its_exit_code(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    result = await slurm(
        conn, "sbatch", "--parsable", "-o", "/dev/null", input="#!/bin/sh\nexit 3\n"
    )
    job_id = int(result.stdout)
    await mockslurm_site.wait_for_state(job_id, {"FAILED"})
    accounted = await slurm(
        conn, "sacct", "-P", "-n", "-j", str(job_id), "-o", "JobID,State,ExitCode"
    )
    assert accounted.stdout == f"{job_id}|FAILED|3:0\n{job_id}.batch|FAILED|3:0\n"
    listed = await slurm(conn, "squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%t %R")
    assert listed.stdout == "F (NonZeroExitCode)\n"


async def test_walltime_is_enforced_with_sigterm_then_sigkill(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
) -> None:
    # One minute of time limit lasts one second here, so the test takes seconds, not minutes.
    site = await mockslurm_site_factory(
        mockslurm_site_config(kill_wait=0.5, seconds_per_minute=1.0)
    )
    conn = await mockslurm_ssh(site, "alice")
    # Ignores SIGTERM, so only SIGKILL after KillWait ends it.
    script = "#!/bin/bash\ntrap '' TERM\nsleep 120\n"
    result = await slurm(conn, "sbatch", "--parsable", "-t", "1", "-o", "/dev/null", input=script)
    job_id = int(result.stdout)
    job = await site.wait_for_state(job_id, {"TIMEOUT"}, within=15)
    assert 1 <= job.elapsed(job.end_time or 0) <= 5
    accounted = await slurm(
        conn, "sacct", "-P", "-n", "-j", str(job_id), "-o", "JobID,State,ExitCode"
    )
    assert accounted.stdout == f"{job_id}|TIMEOUT|0:0\n{job_id}.batch|CANCELLED|0:9\n"


async def test_finished_jobs_leave_squeue_after_min_job_age_but_stay_in_sacct(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    result = await slurm(conn, "sbatch", "--parsable", "-o", "/dev/null", input="#!/bin/sh\ntrue\n")
    job_id = int(result.stdout)
    await mockslurm_site.wait_for_state(job_id, {"COMPLETED"})
    shown = await slurm(conn, "squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T")
    assert shown.stdout == "COMPLETED\n"
    default = await slurm(conn, "squeue", "-h", "-j", str(job_id), "-o", "%T")
    assert (default.exit_status, default.stdout) == (0, "")
    await wait_until_async(lambda: job_id not in mockslurm_site.cluster.jobs, 5, "purge", 0.05)
    gone = await slurm(conn, "squeue", "-h", "-j", str(job_id), "-o", "%T")
    assert gone.exit_status == 1
    assert gone.stderr == "slurm_load_jobs error: Invalid job id specified\n"
    both = await slurm(conn, "squeue", "-h", "-j", f"{job_id},{job_id + 99}")
    assert (both.exit_status, both.stdout) == (0, "")
    accounted = await slurm(conn, "sacct", "-X", "-P", "-n", "-j", str(job_id), "-o", "State")
    assert accounted.stdout == "COMPLETED\n"


async def test_jobs_queue_behind_a_full_cluster_with_slurm_reasons(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    ids = []
    for _ in range(6):  # 4 nodes x 4 cores; each job takes a whole node
        result = await slurm(
            conn, "sbatch", "--parsable", "-c", "4", "-o", "/dev/null", input=SLEEPER
        )
        ids.append(int(result.stdout))
    await mockslurm_site.wait_for_state(ids[3], {"RUNNING"})
    await wait_until_async(
        lambda: mockslurm_site.job(ids[5]).reason == "Priority", 10, "reason Priority", 0.05
    )
    listed = await slurm(conn, "squeue", "-h", "-u", "alice", "-o", "%i %t %r")
    states = dict(line.split(" ", 1) for line in listed.stdout.splitlines())
    assert [states[str(i)] for i in ids[:4]] == ["R None"] * 4
    assert states[str(ids[4])] == "PD Resources"
    assert states[str(ids[5])] == "PD Priority"
    starts = await slurm(conn, "squeue", "--start", "-h", "-o", "%i %S")
    assert [line.split()[0] for line in starts.stdout.splitlines()] == [str(ids[4]), str(ids[5])]
    assert all(line.split()[1] != "N/A" for line in starts.stdout.splitlines())
    info = await slurm(conn, "sinfo", "-h", "-p", "debug", "-o", "%P %F %C")
    assert info.stdout == "debug* 4/0/0/4 16/0/0/16\n"
    await slurm(conn, "scancel", str(ids[0]))
    await mockslurm_site.wait_for_state(ids[4], {"RUNNING"})


async def test_over_limit_and_unknown_requests_are_rejected_like_slurmctld(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "bob")
    cases = {
        ("-p", "nosuch"): "Invalid partition name specified",
        ("-A", "proj-a"): "Invalid account or account/partition combination specified",
        ("-t", "2:00:00"): "Requested time limit is invalid (missing or exceeds some limit)",
        ("-N", "9"): "Node count specification invalid",
        ("-c", "64"): "Requested node configuration is not available",
    }
    for args, message in cases.items():
        result = await slurm(conn, "sbatch", *args, input=SLEEPER)
        assert result.exit_status == 1
        # Real sbatch names the bad partition on a line of its own first.
        bad = args[1] == "nosuch"
        first = "sbatch: error: invalid partition specified: nosuch\n" if bad else ""
        assert result.stderr == f"{first}sbatch: error: Batch job submission failed: {message}\n"
    too_big = await slurm(conn, "sbatch", "--mem=64G", input=SLEEPER)
    assert too_big.stderr == (
        "sbatch: error: Memory specification can not be satisfied\n"
        "sbatch: error: Batch job submission failed: "
        "Requested node configuration is not available\n"
    )
    bad_time = await slurm(conn, "sbatch", "-t", "soon", input=SLEEPER)
    assert bad_time.stderr == "sbatch: error: Invalid --time specification\n"
    not_a_script = await slurm(conn, "sbatch", input="echo hi\n")
    assert not_a_script.stderr.startswith("sbatch: error: This does not look like a batch script")
    assert mockslurm_site.cluster.accounting == {}


async def test_an_account_is_required_where_the_site_demands_one(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
) -> None:
    site = await mockslurm_site_factory(mockslurm_site_config(name="lugano", require_account=True))
    conn = await mockslurm_ssh(site, "alice")
    missing = await slurm(conn, "sbatch", input=SLEEPER)
    assert missing.stderr == (
        "sbatch: error: Batch job submission failed: "
        "Invalid account or account/partition combination specified\n"
    )
    given = await slurm(
        conn, "sbatch", "--parsable", "-A", "proj-b", "-o", "/dev/null", input=SLEEPER
    )
    assert given.exit_status == 0
    accounts = await slurm(conn, "sacctmgr", "-n", "-P", "show", "assoc", "where", "user=alice",
                           "format=Account,User,Partition")  # fmt: skip
    assert accounts.stdout == "proj-a|alice|\nproj-b|alice|\n"


async def test_scancel_refuses_other_users_jobs_and_unknown_ids(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    alice = await mockslurm_ssh(mockslurm_site, "alice")
    bob = await mockslurm_ssh(mockslurm_site, "bob")
    job_id = int((await slurm(alice, "sbatch", "--parsable", input=SLEEPER)).stdout)
    denied = await slurm(bob, "scancel", str(job_id))
    assert (denied.exit_status, denied.stderr) == (
        210,
        f"scancel: error: Kill job error on job id {job_id}: Access/permission denied\n",
    )
    unknown = await slurm(bob, "scancel", "4242")
    # Real 22.05 is silent and exits 0 for an unknown id (the error shows only with -v).
    assert (unknown.exit_status, unknown.stderr) == (0, "")
    by_name = await slurm(alice, "scancel", "-n", mockslurm_site.job(job_id).name)
    assert by_name.exit_status == 0
    await mockslurm_site.wait_for_state(job_id, {"CANCELLED"})


async def test_time_limits_can_be_lowered_by_the_owner_only(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    alice = await mockslurm_ssh(mockslurm_site, "alice")
    job_id = int(
        str((await slurm(alice, "sbatch", "--parsable", "-t", "30", input=SLEEPER)).stdout)
    )
    lowered = await slurm(alice, "scontrol", "update", f"JobId={job_id}", "TimeLimit=10")
    assert lowered.exit_status == 0
    raised = await slurm(alice, "scontrol", "update", f"JobId={job_id}", "TimeLimit=50")
    # Real Slurm 22.05's words for a running job (the contract suite compares them).
    assert raised.stderr == f"Access/permission denied for job {job_id}\n"
    shown = await slurm(alice, "scontrol", "show", "job", str(job_id))
    assert f"JobId={job_id} JobName=sbatch\n" in shown.stdout
    assert "TimeLimit=00:10:00" in shown.stdout
    assert "   UserId=alice(" in shown.stdout


async def test_sinfo_reports_partitions_and_version(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    default = await slurm(conn, "sinfo")
    assert default.stdout == (
        "PARTITION AVAIL  TIMELIMIT  NODES  STATE NODELIST\n"
        "debug*       up    1:00:00      4   idle gva-cn[01-04]\n"
        "long         up 1-00:00:00      2   idle gva-cn[03-04]\n"
    )
    version = await slurm(conn, "sinfo", "-V")
    assert version.stdout == "slurm 22.05.8\n"
    custom = await slurm(conn, "sinfo", "-h", "-o", "%P|%a|%l|%D|%t|%N|%F|%C|%c|%m")
    assert custom.stdout.splitlines()[0] == (
        "debug*|up|1:00:00|4|idle|gva-cn[01-04]|0/4/0/4|0/16/0/16|4|8192"
    )


async def test_squeue_default_format_matches_slurm(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    job_id = int(str((await slurm(conn, "sbatch", "--parsable", "-J", "a-long-job-name",
                                  "-o", "/dev/null", input=SLEEPER)).stdout))  # fmt: skip
    await mockslurm_site.wait_for_state(job_id, {"RUNNING"})
    listed = await slurm(conn, "squeue")
    header, row = listed.stdout.splitlines()
    assert (
        header
        == "             JOBID PARTITION     NAME     USER ST       TIME  NODES NODELIST(REASON)"
    )
    assert row.startswith(f"           {job_id}     debug a-long-j    alice  R       0:0")
    assert row.endswith("      1 gva-cn01")


async def test_a_job_whose_output_file_cannot_be_written_fails(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    result = await slurm(
        conn, "sbatch", "--parsable", "-o", "/nonexistent/dir/out.txt", input="#!/bin/sh\ntrue\n"
    )
    job = await mockslurm_site.wait_for_state(int(result.stdout), {"FAILED"})
    assert job.exit_code() == "1:0"


async def test_tasks_multiply_the_cpus_a_job_takes(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    result = await slurm(
        conn, "sbatch", "--parsable", "-n", "2", "-c", "2", "-o", "/dev/null", input=SLEEPER
    )
    job_id = int(result.stdout)
    await mockslurm_site.wait_for_state(job_id, {"RUNNING"})
    listed = await slurm(conn, "squeue", "-h", "-j", str(job_id), "-o", "%C %D %c")
    assert listed.stdout == "4 1 4\n"
    info = await slurm(conn, "sinfo", "-h", "-p", "debug", "-o", "%C")
    assert info.stdout == "4/12/0/16\n"


def _bobs_private_file(directory: Path) -> Path:
    """bob's 0600 file of 100 lines, and a symlink to it (link.out) beside it."""
    bob = pwd.getpwnam("bob")
    directory.chmod(0o755)
    private = directory / "bob.out"
    private.write_text("".join(f"line {i}\n" for i in range(100)))
    os.chown(private, bob.pw_uid, bob.pw_gid)
    private.chmod(0o600)
    (directory / "link.out").symlink_to(private)
    return private


async def test_tail_reads_only_what_the_user_may_read(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory, tmp_path: Path
) -> None:
    """`tail -c N -- FILE`, the operator's log read: bounded, as the user's permissions allow,
    never through a symlink; nothing else of coreutils is there."""
    private = _bobs_private_file(tmp_path)
    alice_conn, bob_conn = (
        await mockslurm_ssh(mockslurm_site, "alice"),
        await mockslurm_ssh(mockslurm_site, "bob"),
    )
    mine = await slurm(bob_conn, "tail", "-c", "8", "--", str(private))
    assert (mine.exit_status, mine.stdout) == (0, "line 99\n")
    theirs = await slurm(alice_conn, "tail", "-c", "8", "--", str(private))
    assert theirs.exit_status == 1 and "Permission denied" in str(theirs.stderr)
    linked = await slurm(bob_conn, "tail", "-c", "8", "--", str(tmp_path / "link.out"))
    assert linked.exit_status == 1 and linked.stdout == ""
    other = await slurm(bob_conn, "tail", "-n", "5", str(private))
    assert other.exit_status == 1
