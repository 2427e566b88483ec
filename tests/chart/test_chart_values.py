"""The chart's operator settings come from OperatorSettings, and every value is documented."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from pydantic import Field
from pydantic_settings import BaseSettings

from bbp_notebooks.api import chartschema
from bbp_notebooks.api.settings import OperatorSettings

REPO = Path(__file__).resolve().parents[2]
CHART = chartschema.default_chart(REPO)


def test_committed_values_schema_and_values_match_operator_settings() -> None:
    stale = chartschema.differences(CHART)
    assert stale == [], f"run `python -m bbp_notebooks.api.chartschema --root .`: {stale}"
    assert chartschema.main(["--root", str(REPO), "--check"]) == 0


def test_the_sync_check_fails_when_a_setting_is_added_without_regenerating(
    tmp_path: Path,
) -> None:
    class Changed(OperatorSettings):
        idle_cull_minutes: int = Field(default=0, ge=0, description="A setting added later.")

    stale = chartschema.differences(CHART, Changed)
    assert sorted(Path(p).name for p in stale) == ["values.schema.json", "values.yaml"]
    # Regenerating fixes it, and the new setting appears in both files, camelCase.
    copy = tmp_path / "chart"
    copy.mkdir()
    for name in (chartschema.SCHEMA_FILE, chartschema.VALUES_FILE):
        (copy / name).write_text((CHART / name).read_text())
    chartschema.write(copy, Changed)
    assert chartschema.differences(copy, Changed) == []
    schema = json.loads((copy / chartschema.SCHEMA_FILE).read_text())
    settings = schema["properties"]["operator"]["properties"]["settings"]["properties"]
    assert settings["idleCullMinutes"]["minimum"] == 0
    assert "idleCullMinutes: 0" in (copy / chartschema.VALUES_FILE).read_text()


def test_every_operator_setting_is_either_a_value_or_set_by_the_chart() -> None:
    fields = set(OperatorSettings.model_fields)
    exposed = set(chartschema.chart_settings())
    assert exposed.isdisjoint(chartschema.CHART_MANAGED)
    assert exposed | set(chartschema.CHART_MANAGED) == fields


def test_values_yaml_defaults_are_the_model_defaults() -> None:
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    expected = {chartschema.camel(k): v for k, v in chartschema.chart_settings().items()}
    assert values["operator"]["settings"] == expected


def test_settings_that_are_not_plain_json_cannot_become_values() -> None:
    class Unsupported(BaseSettings):
        maybe: int | None = Field(default=None, description="Optional int.")

    with pytest.raises(ValueError, match="plain JSON types"):
        chartschema.settings_schema(Unsupported)


_KEY = re.compile(r"^(?P<indent> *)(?P<key>[A-Za-z][\w-]*):")


def undocumented_values(text: str) -> list[str]:
    """A value (a key with its value on the line) is documented by a comment right above it or
    above an enclosing key; list items (sample sites, profiles, users) by the comment on their
    list. Section headers such as `operator:` need none of their own."""
    lines = text.splitlines()
    undocumented = []
    stack: list[tuple[int, bool]] = []  # (indent, documented) of enclosing keys
    in_list_below: int | None = None
    for number, line in enumerate(lines):
        stripped = line.strip()
        if not stripped or stripped.startswith("#"):
            continue
        indent = len(line) - len(line.lstrip())
        if in_list_below is not None and indent > in_list_below:
            continue
        in_list_below = None
        if stripped.startswith("- "):
            in_list_below = indent - 1
            continue
        match = _KEY.match(line)
        if not match:
            continue
        while stack and stack[-1][0] >= indent:
            stack.pop()
        previous = next(
            (lines[i].strip() for i in range(number - 1, -1, -1) if lines[i].strip()), ""
        )
        documented = previous.startswith("#") or any(doc for _, doc in stack)
        header = line.rstrip().endswith(":")
        if not documented and not header:
            undocumented.append(f"line {number + 1}: {stripped}")
        stack.append((indent, documented))
        if header and number + 1 < len(lines):
            following = lines[number + 1].strip()
            if following.startswith("- "):
                in_list_below = indent
    return undocumented


def test_every_value_has_a_comment() -> None:
    assert undocumented_values((CHART / "values.yaml").read_text()) == []


def test_the_comment_check_finds_an_undocumented_value() -> None:
    text = "hub:\n  # -- documented\n  enabled: true\n  replicas: 2\nlist:\n  - {a: 1}\n"
    assert undocumented_values(text) == ["line 4: replicas: 2"]
