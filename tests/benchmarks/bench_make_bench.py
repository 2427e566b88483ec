"""`make bench` at tiny sizes: it runs end to end, prints its table, writes its JSON, and holds
the invariants that do not depend on the machine's speed (no duplicate job; Slurm commands per
poll and site do not grow with the sessions; a restart does not write every session).

The figures themselves (and the targets met or missed) come from `make bench` (README,
"Performance"); this run is only small enough for `make test`.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.kube, pytest.mark.benchmark, pytest.mark.timeout(1500)]

TINY = [
    "--sessions", "60", "--burst", "30", "--ready", "3", "--poll-interval", "2",
    "--steady-seconds", "8", "--busy-other-jobs", "100", "--busy-ours", "10",
    "--busy-repeats", "2", "--deadline-seconds", "300",
]  # fmt: skip


def test_make_bench_runs_at_tiny_sizes_and_holds_its_invariants(tmp_path: Path) -> None:
    output = tmp_path / "bench.json"
    result = subprocess.run(
        [sys.executable, "-m", "bbp_notebooks.devtools.bench", *TINY, "--json", str(output)],
        capture_output=True, text=True, timeout=1400, check=False,
    )  # fmt: skip
    print(result.stdout)
    assert result.returncode == 0, result.stderr[-4000:]
    assert "reference (same run)" in result.stdout and f"JSON: {output}" in result.stdout
    report = json.loads(output.read_text())
    assert {"commit", "date", "sizes", "results", "rows"} <= set(report)
    results = report["results"]
    # Hard invariants, whatever the machine's load.
    assert results["burst"]["duplicates"] == 0
    assert results["duplicates_final"] == 0
    small, full = results["steady_small"], results["steady_full"]
    assert full["sessions"] > 10 * small["sessions"], (small["sessions"], full["sessions"])
    for site in ("geneva", "lugano"):
        assert small["polls"][site] > 0 and full["polls"][site] > 0, (small, full)
        assert full["commands_per_poll"][site] <= small["commands_per_poll"][site] + 1, (
            small["commands_per_poll"], full["commands_per_poll"])  # fmt: skip
    assert results["restart"]["session_writes"] < results["restart"]["sessions"]
    # Every figure with a target says met or missed; the busy-queue row is there.
    verdicts = {row["figure"]: row["verdict"] for row in report["rows"]}
    assert all(v in ("met", "MISSED", "-") for v in verdicts.values())
    assert any(figure.startswith("busy queue") for figure in verdicts), verdicts
    assert results["busy"]["chosen"] in {f["form"] for f in results["busy"]["forms"]}
