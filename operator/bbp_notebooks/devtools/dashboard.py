"""The operator's Grafana dashboard as code (Grafana's foundation SDK), written to the chart.

    python -m bbp_notebooks.devtools.dashboard [--root .] [--check]

The chart ships the JSON in a ConfigMap for Grafana's dashboard sidecar; a test regenerates it and
fails on any difference, and the Prometheus scenario test runs every panel's query against a real
Prometheus scraping the operator.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard as db
from grafana_foundation_sdk.builders import prometheus, stat, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder
from grafana_foundation_sdk.models import dashboard as model

DASHBOARD_FILE = Path("charts") / "bbp-notebooks" / "dashboards" / "bbp-notebooks.json"
UID = "bbp-notebooks"
DATASOURCE = model.DataSourceRef(type_val="prometheus", uid="${datasource}")
SITE = 'site=~"$site"'
RATE = "$__rate_interval"


@dataclass(frozen=True)
class Query:
    expr: str
    legend: str


@dataclass(frozen=True)
class PanelSpec:
    title: str
    description: str
    unit: str
    queries: tuple[Query, ...]
    kind: str = "timeseries"
    width: int = 8


def _p95(metric: str, by: str) -> str:
    return f"histogram_quantile(0.95, sum by ({by}, le) (rate({metric}_bucket{{{SITE}}}[{RATE}])))"


# Rows of panels; every query is asked of a real Prometheus in tests/observability.
ROWS: tuple[tuple[str, tuple[PanelSpec, ...]], ...] = (
    (
        "Sites",
        (
            PanelSpec(
                "Site availability",
                "1 while the site answers the operator's polls, 0 while it cannot be asked.",
                "short",
                (Query(f"max by (site) (bbp_notebooks_site_reachable{{{SITE}}})", "{{site}}"),),
                kind="stat",
                width=6,
            ),
            PanelSpec(
                "Seconds since the last successful poll",
                "How old the operator's knowledge of each site is.",
                "s",
                (
                    Query(
                        "time() - max by (site) "
                        f"(bbp_notebooks_site_last_successful_poll_timestamp_seconds{{{SITE}}})",
                        "{{site}}",
                    ),
                ),
                width=6,
            ),
            PanelSpec(
                "Idle cores per partition",
                "Unallocated cores, from each poll's sinfo.",
                "short",
                (
                    Query(
                        "sum by (site, partition) "
                        f"(bbp_notebooks_site_partition_idle_cores{{{SITE}}})",
                        "{{site}}/{{partition}}",
                    ),
                ),
                width=6,
            ),
            PanelSpec(
                "Site queue (all users)",
                "Pending and running jobs of every user at the site, from each poll's squeue.",
                "short",
                (
                    Query(
                        f"sum by (site, state) (bbp_notebooks_site_jobs{{{SITE}}})",
                        "{{site}} {{state}}",
                    ),
                ),
                width=6,
            ),
        ),
    ),
    (
        "Sessions",
        (
            PanelSpec(
                "Sessions per site and phase",
                "NotebookSessions by phase (site empty: not submitted yet).",
                "short",
                (
                    Query(
                        f"sum by (site, phase) (bbp_notebooks_sessions{{{SITE}}})",
                        "{{site}} {{phase}}",
                    ),
                ),
            ),
            PanelSpec(
                "Queue wait per site (p95)",
                "Time from submission to the Slurm job running.",
                "s",
                (Query(_p95("bbp_notebooks_queue_wait_seconds", "site"), "{{site}}"),),
            ),
            PanelSpec(
                "Time to ready per site (p95)",
                "From the session's creation to its notebook's endpoint; and from the job "
                "running to the endpoint (the notebook's own start-up).",
                "s",
                (
                    Query(_p95("bbp_notebooks_time_to_ready_seconds", "site"), "{{site}} created"),
                    Query(
                        _p95("bbp_notebooks_running_to_ready_seconds", "site"), "{{site}} running"
                    ),
                ),
            ),
            PanelSpec(
                "Conditions not True",
                "Sessions by condition and reason, for each condition that is not True.",
                "short",
                (
                    Query(
                        "sum by (site, condition, reason) "
                        f'(bbp_notebooks_session_conditions{{{SITE}, status!="True"}})',
                        "{{site}} {{condition}} {{reason}}",
                    ),
                ),
            ),
            PanelSpec(
                "Submissions and failures",
                "Jobs submitted, and submissions that failed by reason, per second.",
                "reqps",
                (
                    Query(
                        f"sum by (site) (rate(bbp_notebooks_submissions_total{{{SITE}}}[{RATE}]))",
                        "{{site}} submitted",
                    ),
                    Query(
                        "sum by (site, reason) "
                        f"(rate(bbp_notebooks_submission_failures_total{{{SITE}}}[{RATE}]))",
                        "{{site}} {{reason}}",
                    ),
                ),
            ),
            PanelSpec(
                "Endpoint reports",
                "Reports from jobs, by outcome (Accepted or the refusal's reason), per second.",
                "reqps",
                (
                    Query(
                        f"sum by (outcome) (rate(bbp_notebooks_endpoint_reports_total[{RATE}]))",
                        "{{outcome}}",
                    ),
                ),
            ),
        ),
    ),
    (
        "Slurm and ssh",
        (
            PanelSpec(
                "Slurm command latency (p95)",
                "Slurm commands over ssh, per site and command.",
                "s",
                (
                    Query(
                        _p95("bbp_notebooks_slurm_command_seconds", "site, command"),
                        "{{site}} {{command}}",
                    ),
                ),
            ),
            PanelSpec(
                "Slurm command errors",
                "Slurm commands that failed, per second, by outcome.",
                "reqps",
                (
                    Query(
                        "sum by (site, command, outcome) "
                        f"(rate(bbp_notebooks_slurm_command_errors_total{{{SITE}}}[{RATE}]))",
                        "{{site}} {{command}} {{outcome}}",
                    ),
                ),
            ),
            PanelSpec(
                "Site poll duration (p95)",
                "One poll: the Slurm commands, the decisions and the status writes.",
                "s",
                (Query(_p95("bbp_notebooks_site_poll_seconds", "site"), "{{site}}"),),
            ),
            PanelSpec(
                "ssh pool",
                "Open pooled connections and channels in use, over all replicas.",
                "short",
                (
                    Query("sum(bbp_notebooks_ssh_connections)", "connections"),
                    Query("sum(bbp_notebooks_ssh_channels_in_use)", "channels in use"),
                ),
            ),
            PanelSpec(
                "Reconcile errors",
                "Errors in the operator's handlers, per second, by handler and kind.",
                "reqps",
                (
                    Query(
                        "sum by (handler, kind) "
                        f"(rate(bbp_notebooks_reconcile_errors_total[{RATE}]))",
                        "{{handler}} {{kind}}",
                    ),
                ),
            ),
            PanelSpec(
                "Deletions waiting",
                "Deleted sessions whose finalizer still waits for the job's end.",
                "short",
                (
                    Query(
                        f"sum by (site) (bbp_notebooks_deletions_in_progress{{{SITE}}})",
                        "{{site}}",
                    ),
                ),
            ),
        ),
    ),
)


def _panel(spec: PanelSpec) -> timeseries.Panel | stat.Panel:
    panel: timeseries.Panel | stat.Panel = (
        stat.Panel() if spec.kind == "stat" else timeseries.Panel()
    )
    panel.title(spec.title).description(spec.description).unit(spec.unit)
    panel.datasource(DATASOURCE).height(8).span(spec.width)
    for index, query in enumerate(spec.queries):
        panel.with_target(
            prometheus.Dataquery()
            .expr(query.expr)
            .legend_format(query.legend)
            .ref_id(chr(ord("A") + index))
        )
    return panel


def build() -> dict[str, object]:
    """The dashboard as Grafana's JSON model."""
    board = (
        db.Dashboard("bbp-notebooks: sessions and Slurm sites")
        .uid(UID)
        .description("NotebookSessions, the Slurm sites they run at, and the operator's ssh use.")
        .tags(["bbp-notebooks", "slurm", "jupyter"])
        .refresh("30s")
        .time("now-6h", "now")
        .timezone("browser")
        .tooltip(model.DashboardCursorSync.CROSSHAIR)
        .with_variable(db.DatasourceVariable("datasource").label("Data source").type("prometheus"))
        .with_variable(
            db.QueryVariable("site")
            .label("Site")
            .datasource(DATASOURCE)
            .query("label_values(bbp_notebooks_site_reachable, site)")
            .refresh(model.VariableRefresh.ON_TIME_RANGE_CHANGED)
            .sort(model.VariableSort.ALPHABETICAL_ASC)
            .multi(True)
            .include_all(True)
            .all_value(".*")
        )
    )
    for title, panels in ROWS:
        board.with_row(db.Row(title))
        for spec in panels:
            board.with_panel(_panel(spec))
    result: dict[str, object] = json.loads(json.dumps(board.build(), cls=JSONEncoder))
    return result


def render() -> str:
    return json.dumps(build(), indent=2, sort_keys=True) + "\n"


def queries(dashboard: dict[str, object]) -> list[tuple[str, str]]:
    """(panel title, expression) of every query of every panel of a dashboard JSON."""
    found = []
    panels = dashboard.get("panels", [])
    assert isinstance(panels, list)
    for panel in panels:
        for target in panel.get("targets", []) or []:
            found.append((str(panel["title"]), str(target["expr"])))
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="the repository")
    parser.add_argument("--check", action="store_true", help="fail when the file is stale")
    args = parser.parse_args(argv)
    path = args.root / DASHBOARD_FILE
    text = render()
    if args.check:
        if not path.exists() or path.read_text() != text:
            print(
                f"{path} is stale: run python -m bbp_notebooks.devtools.dashboard", file=sys.stderr
            )
            return 1
        return 0
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
