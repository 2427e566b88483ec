"""Real Slurm 22.05 behind OpenSSH, reached the way the operator reaches a site: ssh as the user
with a CA-signed certificate, the frontend's host certificate checked against the host CA."""

from __future__ import annotations

import shlex
import time
from pathlib import Path

import asyncssh
import pytest

from bbp_notebooks.devtools import realslurm
from bbp_notebooks.devtools.waiting import wait_until_async
from fixtures.realslurm import RealSlurm, connect_as, mint_user_identity

pytestmark = [pytest.mark.realslurm, pytest.mark.timeout(180)]
ROOT = Path("/srv/rs")

SQUEUE_FORMAT = "%i|%j|%u|%T|%r|%N|%S|%l|%L|%P|%a"
SITES = ["geneva", "lugano"]
JOB_SCRIPT = """#!/bin/bash
echo "user=$(id -un) cluster=$SLURM_CLUSTER_NAME node=$SLURMD_NODENAME"
sleep 120
"""


async def run(
    conn: asyncssh.SSHClientConnection, argv: list[str], stdin: str | None = None
) -> asyncssh.SSHCompletedProcess:
    return await conn.run(shlex.join(argv), input=stdin, check=False, timeout=30)


def out(result: asyncssh.SSHCompletedProcess) -> str:
    assert isinstance(result.stdout, str)
    return result.stdout


def err(result: asyncssh.SSHCompletedProcess) -> str:
    assert isinstance(result.stderr, str)
    return result.stderr


async def job_state(conn: asyncssh.SSHClientConnection, job_id: int) -> str:
    result = await run(conn, ["squeue", "-h", "-t", "all", "-j", str(job_id), "-o", "%T"])
    return out(result).strip()


async def submit(
    conn: asyncssh.SSHClientConnection, *options: str, script: str = JOB_SCRIPT
) -> int:
    result = await run(
        conn, ["sbatch", "--parsable", "-J", "bbpnb-realslurm-test", "-t", "10", *options], script
    )
    assert result.exit_status == 0, err(result)
    return int(out(result).strip().split(";")[0])


@pytest.mark.parametrize("site_name", SITES)
async def test_a_job_submitted_over_ssh_runs_as_the_submitting_user_on_that_sites_node(
    real_slurm: RealSlurm, site_name: str
) -> None:
    site = real_slurm.sites[site_name]
    async with connect_as(site, mint_user_identity(site, "alice")) as conn:
        job_id = await submit(conn, "-o", "realslurm-%j.out")
        assert site.first_job_id <= job_id < site.first_job_id + 1_000_000

        async def running() -> bool:
            return await job_state(conn, job_id) == "RUNNING"

        began = time.monotonic()
        await wait_until_async(running, 10, f"job {job_id} RUNNING")
        latency = time.monotonic() - began
        print(f"{site_name}: submit->RUNNING seen after {latency:.3f}s")

        output = f"realslurm-{job_id}.out"

        async def wrote_output() -> bool:
            return "user=" in out(await run(conn, ["cat", output]))

        await wait_until_async(wrote_output, 10, f"{output} written")
        line = out(await run(conn, ["cat", output])).strip()
        assert line == f"user=alice cluster={site_name} node={site.node_name}"

        queue = out(await run(conn, ["squeue", "-h", "-j", str(job_id), "-o", SQUEUE_FORMAT]))
        fields = queue.strip().split("|")
        assert fields[:4] == [str(job_id), "bbpnb-realslurm-test", "alice", "RUNNING"]
        assert fields[5] == site.node_name
        assert fields[9] == site.default_partition
        assert fields[10] == site.accounts["alice"][0]

        cancel = await run(conn, ["scancel", str(job_id)])
        assert cancel.exit_status == 0, err(cancel)

        async def left_running() -> bool:
            return await job_state(conn, job_id) != "RUNNING"

        await wait_until_async(left_running, 15, f"job {job_id} cancelled")
        await run(conn, ["rm", "-f", output])


async def test_jobs_start_within_seconds_of_submission(real_slurm: RealSlurm) -> None:
    """batch_sched_delay=0: sbatch schedules at once (the CONTEXT figure is ~0.5 s)."""
    site = real_slurm.sites["geneva"]
    latencies: list[float] = []
    async with connect_as(site, mint_user_identity(site, "bob")) as conn:
        for _ in range(5):
            started = time.monotonic()
            job_id = await submit(conn, "-o", "/dev/null")

            async def running(job: int = job_id) -> bool:
                return await job_state(conn, job) == "RUNNING"

            await wait_until_async(running, 10, f"job {job_id} RUNNING", 0.02)
            latencies.append(time.monotonic() - started)
            await run(conn, ["scancel", str(job_id)])
    print("submit->RUNNING over ssh (s):", " ".join(f"{x:.3f}" for x in latencies))
    assert max(latencies) < 5


@pytest.mark.parametrize("site_name", SITES)
async def test_sinfo_over_ssh_lists_the_sites_partitions_with_the_default_marked(
    real_slurm: RealSlurm, site_name: str
) -> None:
    site = real_slurm.sites[site_name]
    async with connect_as(site, mint_user_identity(site, "bob")) as conn:
        result = await run(conn, ["sinfo", "-h", "-o", "%P|%a|%F|%C"])
    assert result.exit_status == 0, err(result)
    names = [line.split("|")[0] for line in out(result).splitlines()]
    expected = [f"{p}*" if p == site.default_partition else p for p in site.partitions]
    assert names == expected
    for line in out(result).splitlines():
        _, avail, nodes, cpus = line.split("|")
        assert avail == "up"
        assert nodes.split("/")[3] == "1"
        assert cpus.split("/")[3] == "8"


async def test_the_two_clusters_are_independent(real_slurm: RealSlurm) -> None:
    geneva, lugano = real_slurm.sites["geneva"], real_slurm.sites["lugano"]
    async with (
        connect_as(geneva, mint_user_identity(geneva, "alice")) as gva,
        connect_as(lugano, mint_user_identity(lugano, "alice")) as lug,
    ):
        gva_job = await submit(gva, "-o", "/dev/null")
        lug_job = await submit(lug, "-o", "/dev/null")
        try:
            assert 1_000_000 <= gva_job < 2_000_000 <= lug_job
            # Each frontend's SLURM_CONF points at its own controller: the other's id is unknown.
            missing = await run(lug, ["squeue", "-h", "-j", str(gva_job)])
            assert missing.exit_status != 0
            assert "Invalid job id specified" in err(missing)
            env = await run(gva, ["sh", "-c", 'echo "$SLURM_CONF"'])
            assert out(env).strip() == geneva.slurm_conf
        finally:
            await run(gva, ["scancel", str(gva_job)])
            await run(lug, ["scancel", str(lug_job)])


async def test_a_user_cannot_cancel_another_users_job(real_slurm: RealSlurm) -> None:
    site = real_slurm.sites["geneva"]
    async with (
        connect_as(site, mint_user_identity(site, "alice")) as alice,
        connect_as(site, mint_user_identity(site, "bob")) as bob,
    ):
        job_id = await submit(alice, "-o", "/dev/null")
        try:
            denied = await run(bob, ["scancel", str(job_id)])
            assert denied.exit_status != 0
            assert "Access/permission denied" in err(denied)
        finally:
            await run(alice, ["scancel", str(job_id)])


async def test_sacct_reports_how_a_finished_job_ended(real_slurm: RealSlurm) -> None:
    site = real_slurm.sites["geneva"]
    async with connect_as(site, mint_user_identity(site, "alice")) as conn:
        job_id = await submit(conn, "-o", "/dev/null", script="#!/bin/bash\nexit 3\n")
        sacct = ["sacct", "-X", "-n", "-P", "-j", str(job_id), "-o", "JobID,User,State,ExitCode"]

        async def accounted() -> bool:
            return out(await run(conn, sacct)).strip().endswith("|3:0")

        await wait_until_async(accounted, 30, f"sacct to record job {job_id}")
        assert out(await run(conn, sacct)).strip() == f"{job_id}|alice|FAILED|3:0"


async def test_a_users_accounts_come_from_the_sites_own_associations(
    real_slurm: RealSlurm,
) -> None:
    lugano = real_slurm.sites["lugano"]
    argv = ["sacctmgr", "-n", "-P", "show", "assoc", "where", "user=alice", "format=Account"]
    async with connect_as(lugano, mint_user_identity(lugano, "alice")) as conn:
        result = await run(conn, argv)
    assert result.exit_status == 0, err(result)
    assert sorted(out(result).split()) == ["proj16", "proj42"]


async def test_a_frontend_signed_by_an_unknown_host_ca_is_refused(
    real_slurm: RealSlurm,
) -> None:
    site = real_slurm.sites["geneva"]
    stranger_ca = asyncssh.generate_private_key("ssh-ed25519")
    public = stranger_ca.export_public_key().decode().strip()
    known_hosts = f"@cert-authority {site.ssh_host},[{site.ssh_host}]:{site.ssh_port} {public}\n"
    with pytest.raises(asyncssh.HostKeyNotVerifiable):
        async with connect_as(site, mint_user_identity(site, "alice"), known_hosts=known_hosts):
            pass


async def test_a_certificate_for_another_principal_is_refused(real_slurm: RealSlurm) -> None:
    site = real_slurm.sites["geneva"]
    identity = mint_user_identity(site, "alice", principal="bob")
    with pytest.raises(asyncssh.PermissionDenied):
        async with connect_as(site, identity):
            pass


# Pure config builders (no daemons needed)


def test_each_clusters_slurm_conf_names_its_own_ids_ports_and_partitions() -> None:
    shared = realslurm.SharedPaths(ROOT)
    lugano = realslurm.LUGANO
    lines = realslurm.slurm_conf(
        lugano, realslurm.ClusterPaths(ROOT / "lugano"), shared, hostname="vm", min_job_age_s=7
    ).splitlines()
    for expected in [
        "ClusterName=lugano",
        "SlurmctldHost=vm(127.0.0.1)",
        "SlurmctldPort=6827",
        "SlurmdPort=6828",
        "AccountingStoragePort=6829",
        "FirstJobId=2000000",
        "MinJobAge=7",
        "SchedulerParameters=batch_sched_delay=0",
        "CommunicationParameters=NoInAddrAny,NoCtldInAddrAny",
        "AuthInfo=socket=/srv/rs/munge/munge.socket",
        "AccountingStoragePass=socket=/srv/rs/munge/munge.socket",
        "StateSaveLocation=/srv/rs/lugano/state",
        "NodeName=lug-n1 NodeHostname=vm NodeAddr=127.0.0.1 CPUs=8 RealMemory=16000 State=UNKNOWN",
        "PartitionName=prod Nodes=lug-n1 Default=YES MaxTime=1-00:00:00 State=UP OverSubscribe=NO",
    ]:
        assert expected in lines
    assert [line for line in lines if line.startswith("PartitionName=")] == [lines[-1]]


def test_the_frontend_accepts_only_ca_signed_users_and_points_sessions_at_its_cluster() -> None:
    shared = realslurm.SharedPaths(ROOT)
    config = realslurm.sshd_config(
        realslurm.GENEVA, realslurm.ClusterPaths(ROOT / "geneva"), shared
    ).splitlines()
    for expected in [
        "ListenAddress 127.0.0.11:2222",
        "HostCertificate /srv/rs/geneva/ssh_host_ed25519_key-cert.pub",
        "TrustedUserCAKeys /srv/rs/ca/user_ca.pub",
        "AuthorizedKeysFile none",
        "PasswordAuthentication no",
        "MaxSessions 10",
        "SetEnv SLURM_CONF=/srv/rs/geneva/slurm.conf",
    ]:
        assert expected in config


def test_known_hosts_trusts_the_host_ca_for_the_frontend_address_and_port() -> None:
    line = realslurm.known_hosts_line(realslurm.GENEVA, "ssh-ed25519 AAAAkey host_ca\n")
    assert line == "@cert-authority 127.0.0.11,[127.0.0.11]:2222 ssh-ed25519 AAAAkey host_ca\n"


def test_associations_give_lugano_users_their_projects_with_the_first_as_default() -> None:
    assert realslurm.sacctmgr_setup_commands(realslurm.LUGANO) == [
        ["sacctmgr", "-i", "add", "cluster", "lugano"],
        ["sacctmgr", "-i", "add", "account", "proj16", "proj42", "cluster=lugano"],
        ["sacctmgr", "-i", "add", "user", "alice", "account=proj16,proj42",
         "defaultaccount=proj16", "cluster=lugano"],
        ["sacctmgr", "-i", "add", "user", "bob", "account=proj42", "defaultaccount=proj42",
         "cluster=lugano"],
    ]  # fmt: skip
