"""The chart's alerts under promtool: the rules check, every alert has unit tests that pass, and
a runbook line; the PrometheusRule renders only where its CRD is served."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from bbp_notebooks.devtools.prometheus import PROMETHEUS_RULE_API, binary, chart_rules, write_rules
from chart.helmchart import CHART, KUBE_VERSION, documents, find, run, tool_env, write_values

HERE = Path(__file__).resolve().parent
UNIT_TESTS = HERE / "promtool" / "alerts.test.yaml"


def promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [binary("promtool"), *args], cwd=cwd, capture_output=True, text=True, timeout=120,
        check=False,
    )  # fmt: skip


@pytest.fixture(scope="module")
def rules_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The chart's rules (default thresholds) next to a copy of the unit tests."""
    directory = tmp_path_factory.mktemp("rules")
    write_rules(directory / "rules.yaml")
    shutil.copy(UNIT_TESTS, directory / UNIT_TESTS.name)
    return directory


def alert_names(rules: dict[str, Any]) -> set[str]:
    return {r["alert"] for g in rules["groups"] for r in g["rules"] if "alert" in r}


def test_the_chart_rules_pass_promtool_check_rules(rules_dir: Path) -> None:
    result = promtool("check", "rules", "rules.yaml", cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS: 7 rules found" in result.stdout


def test_every_alert_has_promtool_unit_tests_that_fire_it_and_they_pass(rules_dir: Path) -> None:
    tests = yaml.safe_load(UNIT_TESTS.read_text())["tests"]
    fired = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if case.get("exp_alerts")
    }
    quiet = {
        case["alertname"]
        for test in tests
        for case in test.get("alert_rule_test", [])
        if not case.get("exp_alerts")
    }
    shipped = alert_names(yaml.safe_load((rules_dir / "rules.yaml").read_text()))
    assert fired == shipped, "each alert needs a test where it fires"
    assert quiet == shipped, "each alert needs a test where it stays quiet"
    result = promtool("test", "rules", UNIT_TESTS.name, cwd=rules_dir)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_runbook_line_in_the_chart_readme() -> None:
    readme = (CHART / "README.md").read_text()
    for name in alert_names(chart_rules()):
        assert re.search(rf"^\| `{name}` \|.+\|.+\|$", readme, re.MULTILINE), name


def _render(env: dict[str, str], tmp: Path, values: dict[str, Any], *extra: str) -> list[Any]:
    path = write_values(tmp, "rule", values)
    argv = ["helm", "template", "bbp", str(CHART), "--kube-version", KUBE_VERSION]
    result = run([*argv, "--values", str(path), *extra], env)
    assert result.returncode == 0, result.stderr
    return documents(result.stdout)


def test_the_rule_renders_only_where_the_crd_is_served(tmp_path: Path) -> None:
    env = tool_env(home=tmp_path / "helm")
    served = ("--api-versions", PROMETHEUS_RULE_API)
    assert not find(_render(env, tmp_path, {}), "PrometheusRule")
    (rule,) = find(_render(env, tmp_path, {}, *served), "PrometheusRule")
    assert rule["metadata"]["labels"]["app.kubernetes.io/component"] == "operator"
    disabled = {"operator": {"prometheusRule": {"enabled": False}}}
    assert not find(_render(env, tmp_path, disabled, *served), "PrometheusRule")


def test_thresholds_labels_and_the_runbook_url_come_from_values(tmp_path: Path) -> None:
    env = tool_env(home=tmp_path / "helm")
    values = {
        "operator": {
            "prometheusRule": {
                "labels": {"release": "prom"},
                "additionalAlertLabels": {"team": "hpc"},
                "runbookBaseUrl": "https://docs.example.org/bbp-notebooks",
                "alerts": {"siteUnreachable": {"for": "2m", "severity": "warning"}},
            }
        }
    }
    (rule,) = find(_render(env, tmp_path, values, "--api-versions", PROMETHEUS_RULE_API),
                   "PrometheusRule")  # fmt: skip
    assert rule["metadata"]["labels"]["release"] == "prom"
    alerts = {r["alert"]: r for r in rule["spec"]["groups"][0]["rules"]}
    site = alerts["BbpNotebooksSiteUnreachable"]
    assert site["for"] == "2m" and site["labels"] == {"severity": "warning", "team": "hpc"}
    assert site["annotations"]["runbook_url"] == (
        "https://docs.example.org/bbp-notebooks#bbpnotebookssiteunreachable"
    )
    assert all(a["labels"]["team"] == "hpc" for a in alerts.values())
