"""The HTTP control interface, the YAML config and the command-line entry point."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import asyncssh
import pytest
import yaml
from aiohttp import web

from bbp_notebooks.devtools import topology
from bbp_notebooks.devtools.stack import free_port
from bbp_notebooks.mockslurm.__main__ import serve
from bbp_notebooks.mockslurm.config import MockSlurmConfig, load_config
from bbp_notebooks.mockslurm.control import make_app
from bbp_notebooks.mockslurm.site import MockSite
from fixtures.mockslurm import SiteConfigFactory, SiteFactory, SshFactory, UserCA, slurm

EXAMPLE = Path(__file__).resolve().parents[2] / "examples" / "mockslurm-sites.yaml"


@contextlib.asynccontextmanager
async def _control(sites: dict[str, MockSite]) -> AsyncIterator[str]:
    runner = web.AppRunner(make_app(sites))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_faults_jobs_and_counters_are_reachable_over_http(
    mockslurm_site: MockSite, mockslurm_ssh: SshFactory
) -> None:
    conn = await mockslurm_ssh(mockslurm_site, "alice")
    script = "#!/bin/bash\nsleep 60\n"
    job_id = int(
        str((await slurm(conn, "sbatch", "--parsable", "-o", "/dev/null", input=script)).stdout)
    )
    await mockslurm_site.wait_for_state(job_id, {"RUNNING"})
    async with _control({"geneva": mockslurm_site}) as base, aiohttp.ClientSession() as http:
        async with http.get(f"{base}/sites") as response:
            sites = await response.json()
        assert sites[0]["name"] == "geneva" and sites[0]["port"] == mockslurm_site.port
        async with http.get(f"{base}/sites/geneva/jobs") as response:
            jobs = await response.json()
        assert [(j["job_id"], j["state"], j["user"]) for j in jobs] == [
            (job_id, "RUNNING", "alice")
        ]
        async with http.get(f"{base}/commands") as response:
            assert (await response.json())["commands"] == {"sbatch": 1}
        async with http.post(
            f"{base}/sites/geneva/faults",
            json={"controller_down": True, "controller_down_delay": 0.1},
        ) as response:
            assert (await response.json())["controller_down"] is True
        down = await slurm(conn, "squeue")
        assert down.stderr == (
            "slurm_load_jobs error: Unable to contact slurm controller (connect failure)\n"
        )
        async with http.post(f"{base}/faults", json={"controller_down": False}) as response:
            assert response.status == 200
        async with http.post(f"{base}/faults", json={"bogus": True}) as response:
            assert response.status == 400
        async with http.post(
            f"{base}/sites/geneva/jobs/{job_id}/kill", json={"state": "FAILED"}
        ) as response:
            assert response.status == 200
        await mockslurm_site.wait_for_state(job_id, {"FAILED"})
        async with http.post(f"{base}/sites/geneva/nodes/gva-cn02/fail") as response:
            assert (await response.json()) == {"node": "gva-cn02", "state": "down*"}
        async with http.post(f"{base}/sites/geneva/nodes/gva-cn02/resume") as response:
            assert (await response.json())["state"] == "idle"
        async with http.post(f"{base}/sites/geneva/faults", json={"ssh_down": True}) as response:
            assert (await response.json())["ssh_down"] is True
        with pytest.raises(OSError):
            await mockslurm_ssh(mockslurm_site, "alice")
        async with http.post(f"{base}/sites/geneva/faults", json={"ssh_down": False}) as response:
            assert (await response.json())["ssh_down"] is False
        async with http.post(f"{base}/commands/reset") as response:
            assert (await response.json())["total"] == 0
        async with http.get(f"{base}/sites/nowhere/jobs") as response:
            assert response.status == 404


def test_the_example_config_describes_geneva_and_lugano() -> None:
    config = load_config(EXAMPLE)
    geneva, lugano = config.sites
    assert (geneva.name, geneva.address, geneva.first_job_id) == ("geneva", "127.0.0.21", 1000000)
    assert (lugano.name, lugano.address, lugano.first_job_id) == ("lugano", "127.0.0.22", 2000000)
    assert sum(len(group.expanded()) for group in geneva.nodes) == 8
    assert sum(len(group.expanded()) for group in lugano.nodes) == 4
    assert lugano.require_account and not geneva.require_account
    assert geneva.state_dir.is_absolute()


async def test_the_entry_point_serves_every_site_of_the_config(
    tmp_path: Path, mockslurm_ca: UserCA
) -> None:
    raw = yaml.safe_load(EXAMPLE.read_text())
    raw["control"]["port"] = free_port()
    for site in raw["sites"]:
        site["port"] = 0
        site["state_dir"] = str(tmp_path / site["name"])
        site["user_ca_key_files"] = []
        site["user_ca_keys"] = [mockslurm_ca.public_key]
        site["min_job_age"] = 1
    path = tmp_path / "sites.yaml"
    path.write_text(yaml.safe_dump(raw))
    config = load_config(path)
    ready = asyncio.Event()
    task = asyncio.create_task(serve(config, ready))
    try:
        async with asyncio.timeout(10):
            await ready.wait()
        async with aiohttp.ClientSession() as http:
            url = f"http://127.0.0.1:{raw['control']['port']}/sites"
            async with http.get(url) as response:
                sites = {s["name"]: s for s in await response.json()}
        key, cert = mockslurm_ca.mint("bob")
        lugano = sites["lugano"]
        async with asyncssh.connect(
            lugano["address"],
            lugano["port"],
            username="bob",
            client_keys=[(key, cert)],
            known_hosts=asyncssh.import_known_hosts(lugano["known_hosts"]),
            agent_path=None,
            config=[],
        ) as conn:
            result = await slurm(
                conn, "sbatch", "--parsable", "-A", topology.USERS["bob"][0], "-o", "/dev/null",
                input="#!/bin/sh\ntrue\n",
            )  # fmt: skip
            assert result.stdout == "2000000\n"
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def test_a_site_config_rejects_inconsistent_clusters(
    mockslurm_site_config: SiteConfigFactory,
) -> None:
    from bbp_notebooks.mockslurm.config import PartitionConfig

    with pytest.raises(ValueError, match="unknown nodes"):
        mockslurm_site_config(partitions=[PartitionConfig(name="p", nodes="nowhere[1-2]")])
    with pytest.raises(ValueError, match="unique"):
        MockSlurmConfig.model_validate(
            {"sites": [mockslurm_site_config().model_dump(), mockslurm_site_config().model_dump()]}
        )


async def test_job_ids_never_repeat_after_a_restart(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
) -> None:
    config = mockslurm_site_config()
    first = await mockslurm_site_factory(config)
    conn = await mockslurm_ssh(first, "alice")
    await slurm(conn, "sbatch", "-o", "/dev/null", input="#!/bin/sh\ntrue\n")
    await first.stop()
    second = await mockslurm_site_factory(config)
    conn = await mockslurm_ssh(second, "alice")
    again = await slurm(conn, "sbatch", "--parsable", "-o", "/dev/null", input="#!/bin/sh\ntrue\n")
    assert int(again.stdout) > 1000000


async def test_a_restart_keeps_the_job_table_and_fails_jobs_that_were_running(
    mockslurm_site_factory: SiteFactory,
    mockslurm_site_config: SiteConfigFactory,
    mockslurm_ssh: SshFactory,
) -> None:
    config = mockslurm_site_config(min_job_age=300)
    first = await mockslurm_site_factory(config)
    conn = await mockslurm_ssh(first, "alice")
    sleeper = "#!/bin/bash\nsleep 60\n"
    done = int(
        (
            await slurm(conn, "sbatch", "--parsable", "-o", "/dev/null", input="#!/bin/sh\ntrue\n")
        ).stdout
    )
    running = int(
        (
            await slurm(conn, "sbatch", "--parsable", "-c", "4", "-o", "/dev/null", input=sleeper)
        ).stdout
    )
    await first.wait_for_state(done, {"COMPLETED"})
    await first.wait_for_state(running, {"RUNNING"})
    await first.stop()
    second = await mockslurm_site_factory(config)
    conn = await mockslurm_ssh(second, "alice")
    listed = await slurm(conn, "squeue", "-h", "-t", "all", "-o", "%i %T")
    assert listed.stdout == f"{done} COMPLETED\n{running} NODE_FAIL\n"
    accounted = await slurm(
        conn, "sacct", "-X", "-n", "-P", "-j", f"{done},{running}", "-o", "State"
    )
    assert accounted.stdout == "COMPLETED\nNODE_FAIL\n"
    assert not second.cluster.nodes["gva-cn01"].jobs
