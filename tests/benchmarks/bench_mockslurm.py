"""Mock Slurm at scale: squeue over 10,000 jobs (handler and over ssh) and the sbatch rate.

Run directly (`python tests/benchmarks/bench_mockslurm.py`) or with pytest (`-m benchmark`);
it prints the numbers and asserts only generous sanity bounds.
"""

from __future__ import annotations

import asyncio
import shlex
import statistics
import sys
import tempfile
import time
from pathlib import Path

import asyncssh
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "operator"))

from bbp_notebooks.mockslurm.commands import Context, execute  # noqa: E402
from bbp_notebooks.mockslurm.config import (  # noqa: E402
    NodeConfig,
    PartitionConfig,
    SiteConfig,
    UserConfig,
)
from bbp_notebooks.mockslurm.site import MockSite  # noqa: E402

JOBS = 10_000
RUNNING = 64
SUBMISSIONS = 300
SQUEUE = ["squeue", "-h", "-o", "%i|%j|%u|%T|%r|%S|%l|%M|%L|%P|%a|%N"]
SCRIPT = "#!/bin/bash\nsleep 600\n"


def _config(state_dir: Path, ca_public_key: str) -> SiteConfig:
    return SiteConfig(
        name="bench",
        address="127.0.0.29",
        port=0,
        state_dir=state_dir,
        user_ca_keys=[ca_public_key],
        users=[UserConfig(name=f"user{i}", accounts=["proj"]) for i in range(20)],
        nodes=[NodeConfig(names=f"cn[001-{RUNNING:03d}]", cpus=1, memory_mb=4096)],
        partitions=[PartitionConfig(name="batch", default=True, max_time="1-00:00:00")],
        first_job_id=1000000,
        sched_interval=0.2,
        kill_wait=1,
        run_as_users=False,
    )


async def _median_ms(runs: int, action: object) -> float:
    timings = []
    for _ in range(runs):
        started = time.perf_counter()
        await action()  # type: ignore[operator]
        timings.append((time.perf_counter() - started) * 1000)
    return statistics.median(timings)


async def measure() -> dict[str, float]:
    ca = asyncssh.generate_private_key("ssh-ed25519")
    results: dict[str, float] = {}
    with tempfile.TemporaryDirectory(prefix="bench-mockslurm-") as tmp:
        site = MockSite(_config(Path(tmp), ca.export_public_key().decode()))
        await site.start()
        try:
            cluster = site.cluster
            fill_started = time.perf_counter()
            for index in range(JOBS):
                user = cluster.identity(f"user{index % 20}")
                cluster.submit(
                    user=user, name=f"bbpnb-{index:08d}", script=SCRIPT, command=None,
                    partition=None, account=None, time_limit=60, cpus_per_task=1,
                    memory_mb=1024, num_nodes=1, workdir=tmp, stdout_pattern="/dev/null",
                    stderr_pattern=None, comment=None, environment={},
                )  # fmt: skip
            results["fill_10k_jobs_ms"] = (time.perf_counter() - fill_started) * 1000
            for _ in range(600):  # up to a minute for the first jobs to start
                if len(cluster.running) >= RUNNING:
                    break
                await asyncio.sleep(0.1)
            context = Context(cluster, cluster.identity("user0"), {}, _no_stdin)

            async def handler() -> None:
                context.stdout.clear()
                context.stderr.clear()
                result = await execute(context, shlex.join(SQUEUE))
                assert result.stdout.count("\n") == JOBS

            results["squeue_10k_handler_ms"] = await _median_ms(5, handler)
            key = asyncssh.generate_private_key("ssh-ed25519")
            cert = ca.generate_user_certificate(key, "bench", principals=["user0"])
            async with asyncssh.connect(
                site.address,
                site.port,
                username="user0",
                client_keys=[(key, cert)],
                known_hosts=asyncssh.import_known_hosts(site.known_hosts()),
                agent_path=None,
                config=[],
            ) as conn:

                async def over_ssh() -> None:
                    result = await conn.run(shlex.join(SQUEUE), check=True)
                    assert str(result.stdout).count("\n") == JOBS

                results["squeue_10k_ssh_ms"] = await _median_ms(5, over_ssh)
                ids = ",".join(str(1000000 + i) for i in range(0, JOBS, JOBS // 50))

                async def batched() -> None:
                    await conn.run(
                        shlex.join(["squeue", "-h", "-j", ids, "-o", "%i %T"]), check=True
                    )

                results["squeue_50_ids_ssh_ms"] = await _median_ms(5, batched)
                site.set_faults(stuck_pending=True)  # measure submission, not process spawning
                started = time.perf_counter()
                for _ in range(SUBMISSIONS):
                    await conn.run("sbatch --parsable -o /dev/null", input=SCRIPT, check=True)
                results["sbatch_sequential_per_s"] = SUBMISSIONS / (time.perf_counter() - started)

                async def submit_many(count: int) -> None:
                    for _ in range(count):
                        await conn.run("sbatch --parsable -o /dev/null", input=SCRIPT, check=True)

                started = time.perf_counter()
                await asyncio.gather(*(submit_many(SUBMISSIONS // 8) for _ in range(8)))
                elapsed = time.perf_counter() - started
                results["sbatch_8_channels_per_s"] = (SUBMISSIONS // 8 * 8) / elapsed
        finally:
            await site.stop()
    return results


async def _no_stdin() -> str:
    return ""


def report(results: dict[str, float]) -> None:
    print()
    print(f"mock Slurm, {JOBS} jobs in the table ({RUNNING} running)")
    print(f"  fill table via the Python API     {results['fill_10k_jobs_ms']:9.1f} ms")
    print(f"  squeue -h -o ... (handler)        {results['squeue_10k_handler_ms']:9.1f} ms")
    print(f"  squeue -h -o ... (over ssh)       {results['squeue_10k_ssh_ms']:9.1f} ms")
    print(f"  squeue -j <50 ids> (over ssh)     {results['squeue_50_ids_ssh_ms']:9.1f} ms")
    print(f"  sbatch, one channel at a time     {results['sbatch_sequential_per_s']:9.1f} jobs/s")
    print(f"  sbatch, 8 concurrent channels     {results['sbatch_8_channels_per_s']:9.1f} jobs/s")


@pytest.mark.benchmark
async def test_mock_slurm_answers_squeue_over_ten_thousand_jobs_quickly() -> None:
    results = await measure()
    report(results)
    assert results["squeue_10k_handler_ms"] < 2000
    assert results["squeue_10k_ssh_ms"] < 5000
    assert results["sbatch_sequential_per_s"] > 5


if __name__ == "__main__":
    report(asyncio.run(measure()))
