"""The layering contracts, strict typing and lint rules hold for the whole code base."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def _run(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=600, check=False)


def test_import_layers_hold() -> None:
    result = _run(
        sys.executable,
        "-c",
        "import sys; from importlinter.cli import lint_imports_command as c; sys.exit(c())",
        "--no-cache",
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_strict_passes() -> None:
    result = _run(sys.executable, "-m", "mypy")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_passes() -> None:
    result = _run(sys.executable, "-m", "ruff", "check", "operator", "tests")
    assert result.returncode == 0, result.stdout + result.stderr
