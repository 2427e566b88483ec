"""Shared pytest configuration: fixture plugins live in tests/fixtures/; tests get their lanes here.

Every test is in one or more component lanes (the markers declared in pyproject.toml), given by
the fixtures it uses and the directory it is in, or else in the `unit` lane: nothing but Python,
the pip dependencies and bash. `pytest -m unit` (`make unit`) runs that lane on a machine where
nothing else is installed; while a unit test runs, starting any other program fails it, so a test
that needs more is told to name its lane.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest_plugins: list[str] = [
    "fixtures.controlplane",
    "fixtures.mockslurm",
    "fixtures.operator",
    "fixtures.realslurm",
]

TESTS = Path(__file__).resolve().parent
UNIT = "unit"
# The component lanes, each a marker declared in pyproject.toml.
LANES = (
    "kube",
    "helm",
    "mockslurm",
    "openssh",
    "kerberos",
    "realslurm",
    "browser",
    "images",
    "node",
    "benchmark",
)
# Lanes a fixture brings (fixtures it depends on bring theirs too: pytest lists them all).
FIXTURE_LANES: dict[str, tuple[str, ...]] = {
    "control_plane": ("kube",),
    "stack": ("kube", "mockslurm"),
    "real_slurm": ("realslurm", "openssh"),
    "mockslurm_site_factory": ("mockslurm",),
    "mockslurm_workdir": ("mockslurm",),
    "openssh": ("openssh",),  # tests/unit/test_ssh_openssh.py's real sshd
    "kdc": ("kerberos",),
    "gssapi_sshd": ("kerberos", "openssh"),
    "built_images": ("images",),  # tests/chart/test_built_images.py
}
# Lanes of whole directories (tests there start what the lane needs without a shared fixture).
DIRECTORY_LANES: dict[str, tuple[str, ...]] = {
    "benchmarks": ("benchmark", "mockslurm"),
    "chart": ("helm",),
    "e2e": ("browser", "kube"),
    "kerberos": ("kerberos", "openssh"),
    "kube": ("kube",),
    "mockslurm": ("mockslurm",),
    "node": ("node", "kube"),
    "operator": ("kube", "mockslurm"),
    "realslurm": ("realslurm", "openssh"),
    "slurm": ("mockslurm",),
}
# What a unit test may start: the shell and this Python (ruff, mypy and lint-imports run as
# `python -m`).
UNIT_PROGRAMS = {"bash", "sh", Path(sys.executable).name}


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    declared = {line.split(":")[0].strip() for line in config.getini("markers")}
    if missing := set(LANES) - declared:
        raise pytest.UsageError(f"lanes not declared as markers in pyproject.toml: {missing}")
    for item in items:
        explicit_unit = item.get_closest_marker(UNIT) is not None
        wanted = [lane for name in item.fixturenames for lane in FIXTURE_LANES.get(name, ())]
        if explicit_unit and wanted:
            raise pytest.UsageError(f"{item.nodeid} is marked unit but uses {sorted(wanted)}")
        parts = Path(str(item.path)).resolve().relative_to(TESTS).parts
        if not explicit_unit and len(parts) > 1:
            wanted += DIRECTORY_LANES.get(parts[0], ())
        for lane in dict.fromkeys(wanted):
            item.add_marker(lane)
        if not any(item.get_closest_marker(lane) for lane in LANES):
            item.add_marker(UNIT)


# -- the unit lane starts nothing but bash and Python ---------------------------------------------

_unit_running: list[str] = []  # the node id of the unit test now running, if any


def _guard(event: str, args: tuple[Any, ...]) -> None:
    if not _unit_running or event not in ("subprocess.Popen", "os.system", "os.posix_spawn"):
        return
    if event == "os.system":
        program = str(args[0]).split()[0] if str(args[0]).split() else ""
    elif event == "os.posix_spawn":
        program = os.fsdecode(args[0])
    else:
        executable, argv = args[0], args[1]
        first = argv if isinstance(argv, (str, bytes)) else next(iter(argv), "")
        program = os.fsdecode(executable if executable is not None else first)
    if Path(program).name not in UNIT_PROGRAMS:
        raise RuntimeError(
            f"{_unit_running[0]} is in the unit lane but starts {program!r}: mark it with the "
            f"lane it needs (pyproject.toml's markers) or use a fixture that brings one"
        )


sys.addaudithook(_guard)


def _guarded(item: pytest.Item) -> Iterator[None]:
    unit = item.get_closest_marker(UNIT) is not None
    if unit:
        _unit_running.append(item.nodeid)
    try:
        return (yield)
    finally:
        if unit:
            _unit_running.clear()


# Setup and call only: the teardown after a session's last test also finalizes session-scoped
# fixtures of other lanes (the real Slurm clusters stop there), which are not the unit test's.
@pytest.hookimpl(wrapper=True)
def pytest_runtest_setup(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Iterator[None]:
    return (yield from _guarded(item))
