"""A real Prometheus (Debian's `prometheus` package) as a child process scraping the operator, for
`make dev --prometheus` and the observability tests. On 127.0.0.1 only, its own storage dir.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import urllib.parse
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from bbp_notebooks.devtools import processes
from bbp_notebooks.devtools.controlplane import repo_root, tools_bin
from bbp_notebooks.devtools.processes import Child
from bbp_notebooks.devtools.stack import free_port
from bbp_notebooks.devtools.waiting import wait_until

HOST = "127.0.0.1"
INSTALL_HINT = "install Debian's prometheus package (scripts/install-test-deps.sh does)"


def binary(name: str = "prometheus") -> str:
    """The path of ``prometheus`` or ``promtool``; an error that says how to get it when absent
    (tests that need it fail, they never skip)."""
    found = shutil.which(name) or (
        f"/usr/bin/{name}" if Path(f"/usr/bin/{name}").exists() else None
    )
    if found is None:
        raise FileNotFoundError(f"{name} not found: {INSTALL_HINT}")
    return found


@dataclass
class Prometheus:
    """Prometheus scraping ``targets`` (job name -> host:port list) every ``scrape_interval``,
    evaluating ``rule_files`` every ``evaluation_interval``."""

    workdir: Path
    targets: Mapping[str, Sequence[str]]
    rule_files: Sequence[Path] = ()
    scrape_interval: str = "1s"
    evaluation_interval: str = "1s"
    port: int = 0
    child: Child | None = field(default=None, repr=False)

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / "prometheus.log"

    def config(self) -> dict[str, Any]:
        return {
            "global": {
                "scrape_interval": self.scrape_interval,
                "scrape_timeout": self.scrape_interval,
                "evaluation_interval": self.evaluation_interval,
            },
            "rule_files": [str(path) for path in self.rule_files],
            "scrape_configs": [
                {"job_name": job, "static_configs": [{"targets": list(addresses)}]}
                for job, addresses in self.targets.items()
            ],
        }

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = self.port or free_port(HOST)
        config = self.workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(self.config()))
        argv = [
            binary(),
            f"--config.file={config}",
            f"--storage.tsdb.path={self.workdir / 'data'}",
            f"--web.listen-address={HOST}:{self.port}",
            "--storage.tsdb.retention.time=1d",
            "--log.level=warn",
        ]
        self.child = processes.start("prometheus", argv, self.log_path)
        wait_until(
            lambda: self.child is not None and self.child.check_alive() and self._ready(),
            timeout,
            "Prometheus to be ready",
            0.2,
        )

    def _ready(self) -> bool:
        try:
            with urllib.request.urlopen(f"{self.url}/-/ready", timeout=1) as response:  # noqa: S310
                return bool(response.status == 200)
        except OSError:
            return False

    def stop(self) -> None:
        child, self.child = self.child, None
        if child is not None:
            child.stop()

    # The HTTP API ---------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        query = urllib.parse.urlencode(params)
        with urllib.request.urlopen(f"{self.url}/api/v1/{path}?{query}", timeout=10) as response:  # noqa: S310
            body = json.loads(response.read())
        if body.get("status") != "success":
            raise RuntimeError(f"Prometheus {path} {params}: {body}")
        return body["data"]

    def query(self, expr: str) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api("query", query=expr)["result"]
        return result

    def query_range(
        self, expr: str, start: float, end: float, step: float = 1.0
    ) -> list[dict[str, Any]]:
        result: list[dict[str, Any]] = self.api(
            "query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}", step=f"{step}"
        )["result"]
        return result

    def alerts(self, name: str | None = None) -> list[dict[str, Any]]:
        """Pending and firing alerts (``name``: only those)."""
        found: list[dict[str, Any]] = self.api("alerts")["alerts"]
        return [a for a in found if name is None or a["labels"].get("alertname") == name]

    def scraped(self, job: str) -> bool:
        """Whether every target of ``job`` was scraped successfully at least once."""
        active = [t for t in self.api("targets")["activeTargets"] if t["labels"]["job"] == job]
        return bool(active) and all(t["health"] == "up" for t in active)

    def wait_scraped(self, job: str, timeout: float = 30.0) -> None:
        wait_until(lambda: self.scraped(job), timeout, f"Prometheus to scrape {job}", 0.5)

    def graph_url(self, expr: str, range_input: str = "5m") -> str:
        """The (classic) graph page of ``expr``: the UI Debian's package ships."""
        params = {"g0.expr": expr, "g0.tab": "0", "g0.range_input": range_input}
        return f"{self.url}/classic/graph?{urllib.parse.urlencode(params)}"


PROMETHEUS_RULE_API = "monitoring.coreos.com/v1/PrometheusRule"
RULE_TEMPLATE = "templates/operator-prometheusrule.yaml"


def chart_rules(alerts: Mapping[str, Mapping[str, Any]] | None = None) -> dict[str, Any]:
    """The rule groups of the chart's PrometheusRule, rendered by helm as a cluster with the CRD
    would render them (``alerts`` overrides operator.prometheusRule.alerts entries), as a
    Prometheus rules file: the alerts tested and run here are the ones the chart ships."""
    values = {"operator": {"prometheusRule": {"enabled": True, "alerts": dict(alerts or {})}}}
    argv = [
        str(tools_bin() / "helm"),
        "template",
        "bbp-notebooks",
        str(repo_root() / "charts" / "bbp-notebooks"),
        "--api-versions",
        PROMETHEUS_RULE_API,
        "--kube-version",
        _kube_version(),
        "--show-only",
        RULE_TEMPLATE,
        "--values",
        "-",
    ]
    env = {**os.environ, "HELM_CACHE_HOME": "/tmp/bbp-notebooks-helm/cache",
           "HELM_CONFIG_HOME": "/tmp/bbp-notebooks-helm/config",
           "HELM_DATA_HOME": "/tmp/bbp-notebooks-helm/data"}  # fmt: skip
    result = subprocess.run(
        argv, input=json.dumps(values), capture_output=True, text=True, env=env, timeout=60,
        check=False,
    )  # fmt: skip
    if result.returncode != 0:
        raise RuntimeError(f"helm template failed: {result.stderr}")
    rule = yaml.safe_load(result.stdout)
    return {"groups": rule["spec"]["groups"]}


def _kube_version() -> str:
    for line in (repo_root() / "scripts" / "tools.env").read_text().splitlines():
        if line.startswith("KUBERNETES_VERSION="):
            return line.split("=", 1)[1].strip()
    raise RuntimeError("scripts/tools.env names no KUBERNETES_VERSION")


def write_rules(path: Path, alerts: Mapping[str, Mapping[str, Any]] | None = None) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(chart_rules(alerts), sort_keys=False))
    return path
