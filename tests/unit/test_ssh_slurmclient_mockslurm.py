"""End to end through the client: SshPool, SlurmClient and the rendered job script on the mock.

The mock runs batch scripts as the POSIX user (alice), so this proves that what the operator submits
starts a notebook that calls back with its address, and that cancel/queue/sacct see it end.
Needs root and the test users (scripts/install-test-deps.sh), like the mock itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import pathlib
import shutil
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

import pytest
from aiohttp import web

from bbp_notebooks.slurm.commands import JobSpec
from bbp_notebooks.slurm.jobscript import Callback, JobScript, render_job_script
from bbp_notebooks.slurm.values import JobState
from bbp_notebooks.ssh import Identity, SiteEndpoint, SlurmClient, SshPool

UID = "c11e47e2-0000-4000-8000-000000000001"
TOKEN = "per-session-callback-token"  # noqa: S105 - a test value


@pytest.fixture
async def callback() -> AsyncIterator[tuple[str, asyncio.Future[tuple[str, Any]]]]:
    received: asyncio.Future[tuple[str, Any]] = asyncio.get_running_loop().create_future()

    async def endpoint(request: web.Request) -> web.Response:
        if not received.done():
            received.set_result((request.headers.get("Authorization", ""), await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/sessions/{uid}/endpoint", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", 0).start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1/sessions/{UID}/endpoint", received
    await runner.cleanup()


@pytest.fixture
def alice_home_cleanup() -> Iterator[None]:
    yield
    ours = pathlib.Path("~alice").expanduser() / ".bbp-notebooks"
    shutil.rmtree(ours / UID, ignore_errors=True)
    with contextlib.suppress(OSError):
        ours.rmdir()  # only when no other session left anything there


async def test_a_submitted_session_job_calls_back_and_is_cancelled(
    mockslurm_site: Any,
    mockslurm_ca: Any,
    mockslurm_workdir: Callable[[str], pathlib.Path],
    callback: tuple[str, asyncio.Future[tuple[str, Any]]],
    alice_home_cleanup: None,
) -> None:
    url, received = callback
    key, certificate = mockslurm_ca.mint("alice")
    alice = Identity("alice", key, certificate)
    endpoint = SiteEndpoint(
        "geneva", mockslurm_site.address, mockslurm_site.port, mockslurm_site.known_hosts()
    )
    pool = SshPool()
    client = SlurmClient(pool, endpoint, timeout=15)
    spec = JobSpec(
        name=f"bbpnb-{UID}",
        partition=None,
        account=None,
        cpus_per_task=1,
        memory_mb=256,
        time_limit_minutes=5,
        workdir=str(mockslurm_workdir("alice")),
    )
    script = render_job_script(
        JobScript(
            session_uid=UID,
            session_name="alice/it's $(a) `notebook`",
            bind_host="127.0.0.1",
            kernel_setup="echo kernel setup ran\n",
            environment={"JUPYTERHUB_API_TOKEN": "hub'$(touch /tmp/bbpnb-mock-canary)"},
            notebook_argv=("python3", "-m", "http.server", "--bind", "{host}", "{port}"),
            callback=Callback(url, TOKEN),
            start_timeout_s=30,
        )
    )
    try:
        job_id = await client.submit(alice, spec, script)
        authorization, body = await asyncio.wait_for(received, 30)
        assert authorization == f"Bearer {TOKEN}"
        assert body["jobId"] == job_id and body["host"] == "127.0.0.1"

        (entry,) = await client.queue(alice, names=[spec.name], users=["alice"])
        assert (entry.job_id, entry.state) == (job_id, JobState.RUNNING)

        await client.cancel(alice, [job_id], name=spec.name)
        async with asyncio.timeout(20):
            while True:
                (entry,) = await client.queue(alice, job_ids=[job_id])
                if entry.state.is_terminal:
                    break
                await asyncio.sleep(0.1)
        assert entry.state is JobState.CANCELLED
        (ended,) = await client.accounting(alice, [job_id])
        assert ended.state is JobState.CANCELLED
    finally:
        await pool.close()
    assert not await asyncio.to_thread(pathlib.Path("/tmp/bbpnb-mock-canary").exists)
