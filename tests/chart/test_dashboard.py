"""The dashboard is code: the chart's JSON is what the code generates, it ships in a ConfigMap
for Grafana's sidecar, and its panels cover what devops look at, with metrics that exist."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import generate_latest
from prometheus_client.parser import text_string_to_metric_families

from bbp_notebooks.devtools import dashboard
from bbp_notebooks.operator import metrics
from chart.helmchart import CHART, documents, find, template_text, tool_env

REPO = Path(__file__).resolve().parents[2]


def test_the_committed_dashboard_is_what_the_code_generates() -> None:
    assert dashboard.main(["--root", str(REPO), "--check"]) == 0, (
        "run python -m bbp_notebooks.devtools.dashboard"
    )
    assert (REPO / dashboard.DASHBOARD_FILE).read_text() == dashboard.render()


def test_the_chart_ships_the_dashboard_for_grafanas_sidecar(tmp_path: Path) -> None:
    docs = documents(template_text({}, env=tool_env(home=tmp_path / "helm")))
    (configmap,) = find(docs, "ConfigMap", "bbp-bbp-notebooks-dashboard")
    assert configmap["metadata"]["labels"]["grafana_dashboard"] == "1"
    shipped = json.loads(configmap["data"]["bbp-notebooks.json"])
    assert shipped == json.loads((CHART / "dashboards" / "bbp-notebooks.json").read_text())
    off = {"operator": {"grafanaDashboard": {"enabled": False}}}
    docs = documents(template_text(off, env=tool_env(home=tmp_path / "helm")))
    assert not find(docs, "ConfigMap", "bbp-bbp-notebooks-dashboard")


def test_the_panels_cover_sessions_waits_slurm_sites_and_ssh() -> None:
    titles = [title for title, _ in dashboard.queries(dashboard.build())]
    for wanted in (
        "Sessions per site and phase",
        "Queue wait per site (p95)",
        "Time to ready per site (p95)",
        "Slurm command latency (p95)",
        "Slurm command errors",
        "Site availability",
        "ssh pool",
    ):
        assert wanted in titles


def test_every_metric_a_panel_asks_for_is_one_the_operator_exports() -> None:
    exported = {
        family.name for family in text_string_to_metric_families(
            generate_latest(metrics.REGISTRY).decode())
    }  # fmt: skip
    asked = {
        re.sub(r"_(bucket|total)$", "", name)
        for _, expr in dashboard.queries(dashboard.build())
        for name in re.findall(r"bbp_notebooks_[a-z_]+", expr)
    }
    assert asked and asked <= exported, asked - exported
