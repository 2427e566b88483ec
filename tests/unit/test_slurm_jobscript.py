"""The batch script: golden text, hostile values that must stay inert, and a real run under bash."""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import pathlib
import signal
import stat
import subprocess
import sys
from collections.abc import AsyncIterator

import pytest
from aiohttp import web

from bbp_notebooks.devtools.waiting import wait_until_async
from bbp_notebooks.slurm.jobscript import (
    Callback,
    JobScript,
    connection_file_argv,
    parse_connection,
    render_job_script,
)
from bbp_notebooks.slurm.values import SlurmOutputError

GOLDEN = pathlib.Path(__file__).parent / "golden" / "slurm_jobscript.sh"
UID = "0b3c5d1e-7f00-4a8e-9d2b-1c2d3e4f5a6b"
TOKEN = "cb-token-that-must-stay-out-of-argv"  # noqa: S105 - a test value

BASIC = JobScript(
    session_uid=UID,
    session_name="alice/my notebook",
    bind_host="0.0.0.0",
    modules=("nix/hpc/neuron", "nix/py/jupyter"),
    kernel_setup="python3 -m venv ~/venv\n~/venv/bin/pip install ipykernel\n",
    environment={"JUPYTERHUB_API_TOKEN": "hub-token", "JUPYTERHUB_USER": "alice"},
    callback=Callback("https://operator.example/v1/sessions/x/endpoint", TOKEN),
)

# Values a user (or a compromised hub) might slip into a session. The canary path is filled in by
# the tests: if any of these is ever run as code, the file appears.
HOSTILE_TEMPLATES = [
    "$(touch {canary})",
    "`touch {canary}`",
    "'; touch {canary}; '",
    '"; touch {canary}; "',
    "${{IFS}}$(touch {canary})",
    "a\nb\n#SBATCH --uid=0\ntouch {canary}",
    "EOF\ntouch {canary}\nEOF",
    "\\'$(touch {canary})\\'",
    "ünïcødé ✓ 日本語 $(touch {canary})",
    "x" * 2048 + "$(touch {canary})",
    "%s%n{{}}",
    "",
]


def hostile(canary: pathlib.Path) -> list[str]:
    return [template.format(canary=canary) for template in HOSTILE_TEMPLATES]


def test_the_rendered_script_matches_the_golden_file() -> None:
    rendered = render_job_script(BASIC)
    if os.environ.get("BBPNB_UPDATE_GOLDEN") == "1":
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(rendered)
    assert rendered == GOLDEN.read_text()


def test_no_sbatch_directive_can_precede_the_first_command() -> None:
    lines = render_job_script(BASIC).splitlines()
    assert lines[0] == "#!/bin/bash"
    assert lines[1].startswith("# ") and not lines[1].startswith("#SBATCH")
    assert lines[2] == "set -euo pipefail"


def test_secrets_are_in_the_body_but_never_exported_to_the_notebook() -> None:
    script = render_job_script(BASIC)
    assert f"bbpnb_callback_token={TOKEN}" in script
    assert "export bbpnb_callback_token" not in script
    assert "export JUPYTERHUB_API_TOKEN=hub-token" in script


@pytest.mark.parametrize(
    "change",
    [
        {"session_uid": "../../etc"},
        {"session_uid": ""},
        {"session_name": "a\nb"},
        {"bind_host": ""},
        {"bind_host": "127.0.0.1\n#SBATCH"},
        {"modules": ("ok", "bad\nmodule")},
        {"modules": ("",)},
        {"environment": {"BASH_ENV": "/tmp/x"}},
        {"environment": {"LD_PRELOAD": "/tmp/x.so"}},
        {"environment": {"BBPNB_PORT": "1"}},
        {"environment": {"SLURM_JOB_ID": "1"}},
        {"environment": {"BAD-NAME": "1"}},
        {"environment": {"A=B": "1"}},
        {"environment": {"OK": "nul\x00byte"}},
        {"notebook_argv": ()},
        {"callback": Callback("file:///etc/passwd", "t")},
        {"callback": Callback("https://x", "tok\nen")},
        {"start_timeout_s": 0},
    ],
)
def test_unsafe_inputs_are_rejected(change: dict[str, object]) -> None:
    fields = {
        "session_uid": UID,
        "session_name": "n",
        "bind_host": "127.0.0.1",
        **change,
    }
    with pytest.raises(ValueError):
        render_job_script(JobScript(**fields))  # type: ignore[arg-type]


def test_placeholders_become_quoted_variables_and_everything_else_literal() -> None:
    script = render_job_script(
        JobScript(
            session_uid=UID,
            session_name="n",
            bind_host="127.0.0.1",
            notebook_argv=("my notebook", "--ip={host}", "{port}", "{other} $(x)"),
        )
    )
    assert "'my notebook' --ip=\"${BBPNB_BIND_HOST}\" \"${BBPNB_PORT}\" '{other} $(x)' &" in script


def test_a_hostile_script_is_still_valid_bash(tmp_path: pathlib.Path) -> None:
    values = hostile(tmp_path / "canary")
    script = render_job_script(hostile_job(values, tmp_path, callback_url=None))
    checked = subprocess.run(
        ["bash", "-n"], input=script, text=True, capture_output=True, timeout=30, check=False
    )
    assert checked.returncode == 0, checked.stderr
    directives = script.splitlines()[:2]
    assert not any(line.startswith("#SBATCH") for line in directives)


# --- the script actually run under bash, as slurmd would run it --------------------------------

# The stand-in notebook: records what it was given, then serves HTTP until SIGTERM.
NOTEBOOK = """\
import http.server, json, os, signal, sys
saw = {"argv": sys.argv[1:], "env": dict(os.environ)}
with open(os.path.join(os.environ["HOME"], "notebook-saw.json"), "w") as out:
    json.dump(saw, out)
signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), http.server.BaseHTTPRequestHandler)
server.serve_forever()
"""

FAKE_MODULE = """#!/bin/bash
printf '%s\\0' "$@" >> "$HOME/module-calls"
"""


def hostile_job(
    values: list[str], home: pathlib.Path, *, callback_url: str | None, token: str = TOKEN
) -> JobScript:
    canary = home / "canary"
    return JobScript(
        session_uid=UID,
        session_name=" ".join(v for v in values if "\n" not in v),
        bind_host="127.0.0.1",
        modules=tuple(v for v in values if v and "\n" not in v),
        # Comments expand only if the outer shell reads the heredoc unquoted; lines that would end
        # a naive heredoc are followed by a line that touches the canary outside the child bash.
        kernel_setup=(
            f"# $(touch {canary})\n"
            f"# `touch {canary}`\n"
            "EOF() { :; }; BBPNB_KERNEL_SETUP() { :; }\n"
            "EOF\n"
            "BBPNB_KERNEL_SETUP\n"
            f'[ "$0" = /dev/fd/3 ] || touch {canary}\n'
            'printf \'%s\' "kernel ran with $# args" > "$HOME/kernel-ran"\n'
        ),
        environment={f"HOSTILE_{i}": value for i, value in enumerate(values)},
        notebook_argv=(sys.executable, "-c", NOTEBOOK, "{host}", "{port}", *values),
        callback=Callback(callback_url, token) if callback_url else None,
        start_timeout_s=30,
    )


@pytest.fixture
async def callback_server() -> AsyncIterator[tuple[str, list[tuple[dict[str, str], object]]]]:
    received: list[tuple[dict[str, str], object]] = []

    async def endpoint(request: web.Request) -> web.Response:
        received.append((dict(request.headers), await request.json()))
        return web.json_response({})

    app = web.Application()
    app.router.add_post("/v1/sessions/{uid}/endpoint", endpoint)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    yield f"http://127.0.0.1:{port}/v1/sessions/{UID}/endpoint", received
    await runner.cleanup()


@pytest.mark.parametrize(
    ("advertise", "node", "reported"),
    [
        (None, None, "127.0.0.1"),  # the bind host
        ("{node}.hpc.example.org", "gva-cn07", "gva-cn07.hpc.example.org"),  # the site's rule
    ],
)
async def test_running_a_hostile_script_keeps_every_value_inert_and_reports_the_address(
    tmp_path: pathlib.Path,
    callback_server: tuple[str, list[tuple[dict[str, str], object]]],
    advertise: str | None,
    node: str | None,
    reported: str,
) -> None:
    url, received = callback_server
    home = tmp_path / "home"
    home.mkdir()
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    (bin_dir / "module").write_text(FAKE_MODULE)
    (bin_dir / "module").chmod(0o755)
    values = hostile(home / "canary")
    job = dataclasses.replace(hostile_job(values, home, callback_url=url), advertise_host=advertise)
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(job))

    env = {"HOME": str(home), "PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "4242"}
    if node is not None:
        env["SLURMD_NODENAME"] = node
    process = await asyncio.create_subprocess_exec(
        "bash",
        str(script),
        cwd=home,
        env=env,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        done = lambda: received or process.returncode is not None  # noqa: E731
        await wait_until_async(done, 60, "the callback or the job's end", 0.05)
        assert process.returncode is None, await process.stderr.read()  # type: ignore[union-attr]
    finally:
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            stdout, stderr = await process.communicate()

    # The job ended when told to, with the notebook's status (0 on SIGTERM).
    assert process.returncode == 0, stderr.decode()
    assert not (home / "canary").exists()

    headers, body = received[0]
    assert headers["Authorization"] == f"Bearer {TOKEN}"
    assert isinstance(body, dict)
    assert body["host"] == reported and body["jobId"] == 4242
    assert isinstance(body["port"], int) and body["port"] > 0

    connection = home / ".bbp-notebooks" / UID / "connection.json"
    assert stat.S_IMODE(connection.stat().st_mode) == 0o600
    assert stat.S_IMODE(connection.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE(connection.parent.parent.stat().st_mode) == 0o700
    assert json.loads(connection.read_text()) == body
    assert parse_connection(connection.read_text()).port == body["port"]

    saw = json.loads((home / "notebook-saw.json").read_text())
    assert saw["argv"] == ["127.0.0.1", str(body["port"]), *values]
    for i, value in enumerate(values):
        assert saw["env"][f"HOSTILE_{i}"] == value
    assert saw["env"]["BBPNB_SESSION_NAME"] == job.session_name
    assert "BBPNB_CALLBACK_TOKEN" not in saw["env"]
    assert TOKEN not in json.dumps(saw["env"])

    modules = (home / "module-calls").read_text().split("\0")[:-1]
    assert modules == [word for module in job.modules for word in ("load", module)]
    assert (home / "kernel-ran").read_text() == "kernel ran with 0 args"
    assert TOKEN not in stdout.decode() + stderr.decode()


async def test_a_notebook_that_dies_before_listening_fails_the_job(
    tmp_path: pathlib.Path,
) -> None:
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    job = JobScript(
        session_uid=UID,
        session_name="n",
        bind_host="127.0.0.1",
        notebook_argv=(sys.executable, "-c", "import sys; sys.exit(3)"),
        start_timeout_s=30,
    )
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(job))
    env = {"HOME": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "1"}
    result = await asyncio.to_thread(
        subprocess.run,
        ["bash", str(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "exited before it listened" in result.stderr
    assert not (tmp_path / ".bbp-notebooks").exists()


# Shuts down slowly on SIGTERM (as Jupyter does, saving and stopping kernels), then exits 7.
SLOW_NOTEBOOK = """\
import http.server, os, signal, sys, time
def stop(*_):
    time.sleep(1.5)
    open(os.path.join(os.environ["HOME"], "notebook-ended"), "w").close()
    os._exit(7)
signal.signal(signal.SIGTERM, stop)
server = http.server.HTTPServer((sys.argv[1], int(sys.argv[2])), http.server.BaseHTTPRequestHandler)
server.serve_forever()
"""


async def test_a_cancelled_job_waits_for_the_notebook_to_end_and_keeps_its_status(
    tmp_path: pathlib.Path,
    callback_server: tuple[str, list[tuple[dict[str, str], object]]],
) -> None:
    """scancel sends TERM to the script, whose trap passes it on and interrupts its `wait`: the
    script must keep waiting while the notebook shuts down (bbpnb_wait_exited), not exit at
    once with 143 and leave the notebook to be killed mid-save."""
    url, received = callback_server
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    (bin_dir / "python3").symlink_to(sys.executable)
    job = JobScript(
        session_uid=UID,
        session_name="n",
        bind_host="127.0.0.1",
        notebook_argv=(sys.executable, "-c", SLOW_NOTEBOOK, "{host}", "{port}"),
        callback=Callback(url, TOKEN),
        start_timeout_s=30,
    )
    script = tmp_path / "job.sh"
    script.write_text(render_job_script(job))
    env = {"HOME": str(tmp_path), "PATH": f"{bin_dir}:/usr/bin:/bin", "SLURM_JOB_ID": "5"}
    process = await asyncio.create_subprocess_exec(
        "bash", str(script), env=env, stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    try:
        await wait_until_async(lambda: bool(received), 60, "the callback", 0.05)
    finally:
        process.send_signal(signal.SIGTERM)
        async with asyncio.timeout(30):
            _, stderr = await process.communicate()
    assert (tmp_path / "notebook-ended").exists(), "the script ended before its notebook"
    assert process.returncode == 7, stderr.decode()


def _wait_exited_function() -> str:
    script = render_job_script(
        JobScript(session_uid=UID, session_name="n", bind_host="127.0.0.1", start_timeout_s=30)
    )
    start = script.index("bbpnb_wait_exited() {")
    return script[start : script.index("\n}\n", start) + 3]


@pytest.mark.parametrize("own_status", [0, 7])
def test_a_child_that_ends_while_a_signal_is_trapped_keeps_its_own_status(own_status: int) -> None:
    """The race behind a job that exited 1 after its notebook ended cleanly on SIGTERM: the
    signal cuts `wait` short (143) and the child ends before the trap returns, so `kill -0`
    finds nothing to wait for. The function must still return the child's own status. The slow
    trap makes the order certain."""
    shell = (
        _wait_exited_function()
        + f"(sleep 0.3; exit {own_status}) &\n"
        + "child=$!\n"
        + "trap 'sleep 0.8' TERM\n"
        + "(sleep 0.1; kill -TERM $$) &\n"
        + 'bbpnb_wait_exited "$child"\n'
        + 'echo "status $bbpnb_status"\n'
    )
    result = subprocess.run(
        ["bash", "-c", shell], capture_output=True, text=True, timeout=30, check=False
    )
    assert result.stdout.strip() == f"status {own_status}", result.stderr


def test_the_connection_file_is_read_relative_to_home() -> None:
    assert connection_file_argv(UID) == ["cat", "--", f".bbp-notebooks/{UID}/connection.json"]
    with pytest.raises(ValueError):
        connection_file_argv("../x")


@pytest.mark.parametrize(
    "text",
    [
        "",
        "{}",
        '{"host": "", "port": 1, "jobId": 1}',
        '{"host": "h", "port": 70000, "jobId": 1}',
        '{"host": "h", "port": "80", "jobId": 1}',
        '{"host": "h\\nx", "port": 80, "jobId": 1}',
    ],
)
def test_a_bad_connection_file_is_an_error(text: str) -> None:
    with pytest.raises(SlurmOutputError):
        parse_connection(text)
