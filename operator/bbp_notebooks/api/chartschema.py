"""Generate the Helm chart's operator settings (values.schema.json and values.yaml) from the model.

``OperatorSettings`` describes every setting once. The chart exposes the ones a deployer chooses
under ``operator.settings`` (camelCase, each becomes ``BBP_<FIELD>`` in the pod) and derives the
rest itself (``CHART_MANAGED``). ``python -m bbp_notebooks.api.chartschema --root .`` rewrites the
generated parts in place; ``--check`` fails when the committed chart differs from the model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from pydantic_settings import BaseSettings

from bbp_notebooks.api.settings import OperatorSettings

# Settings the chart sets from its own structure, so they are not free values, and why.
CHART_MANAGED: dict[str, str] = {
    "namespace": "the release namespace",
    "peering": "on exactly when operator.replicas > 1",
    "priority": "the StatefulSet pod index, so every replica has its own",
    "http_host": "the pod IP",
    "http_port": "operator.httpPort, which is also the container and Service port",
    "callback_url": "operator.callbackUrl, by default the operator Service",
    "settings_file": "unused: the chart passes settings as environment variables",
    "failpoints": "never set: fault injection is for tests, not deployments",
    "shard": "operator.shards[].name, one StatefulSet per shard",
    "sites": "operator.shards[].sites",
    "places_auto": "operator.shards[].placesAuto",
}

BEGIN_MARKER = "  # BEGIN generated: operator settings (python -m bbp_notebooks.api.chartschema)"
END_MARKER = "  # END generated: operator settings"
SCHEMA_FILE = "values.schema.json"
VALUES_FILE = "values.yaml"
_DROPPED_KEYWORDS = {"title"}


def camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.capitalize() for part in rest)


def chart_settings(model: type[BaseSettings] = OperatorSettings) -> dict[str, Any]:
    """snake_case field name -> default, for every setting the chart exposes."""
    return {
        name: field.get_default(call_default_factory=True)
        for name, field in model.model_fields.items()
        if name not in CHART_MANAGED
    }


def settings_schema(model: type[BaseSettings] = OperatorSettings) -> dict[str, Any]:
    """The JSON schema of ``operator.settings``."""
    raw = model.model_json_schema(mode="validation")
    properties: dict[str, Any] = {}
    for name, default in chart_settings(model).items():
        prop = {k: v for k, v in raw["properties"][name].items() if k not in _DROPPED_KEYWORDS}
        if "anyOf" in prop or "$ref" in prop:
            raise ValueError(f"setting {name}: only plain JSON types can be chart values")
        prop["default"] = default
        properties[camel(name)] = prop
    return {
        "type": "object",
        "description": "Operator settings (generated from OperatorSettings; each becomes "
        "BBP_<SETTING> in the operator's environment).",
        "additionalProperties": False,
        "properties": properties,
    }


def values_block(model: type[BaseSettings] = OperatorSettings) -> str:
    """The ``operator.settings`` section of values.yaml, with each description as its comment."""
    lines = [
        BEGIN_MARKER,
        "  # Operator settings; each becomes BBP_<SETTING> in the pod.",
        "  settings:",
    ]
    for name, default in chart_settings(model).items():
        description = model.model_fields[name].description or ""
        lines.append(f"    # {' '.join(description.split())}")
        lines.append(f"    {camel(name)}: {json.dumps(default)}")
    lines.append(END_MARKER)
    return "\n".join(lines) + "\n"


def render_schema(text: str, model: type[BaseSettings] = OperatorSettings) -> str:
    """values.schema.json with its operator.settings subtree replaced by the generated one."""
    schema = json.loads(text)
    operator = schema.setdefault("properties", {}).setdefault("operator", {"type": "object"})
    operator.setdefault("properties", {})["settings"] = settings_schema(model)
    return json.dumps(schema, indent=2) + "\n"


def render_values(text: str, model: type[BaseSettings] = OperatorSettings) -> str:
    """values.yaml with the block between the markers replaced by the generated one."""
    try:
        start = text.index(BEGIN_MARKER)
        end = text.index(END_MARKER, start) + len(END_MARKER)
    except ValueError as error:
        raise ValueError(f"{VALUES_FILE} lacks the generated-settings markers") from error
    if text[end : end + 1] == "\n":
        end += 1
    return text[:start] + values_block(model) + text[end:]


def _rendered(chart: Path, model: type[BaseSettings]) -> dict[Path, str]:
    schema, values = chart / SCHEMA_FILE, chart / VALUES_FILE
    return {
        schema: render_schema(schema.read_text(), model),
        values: render_values(values.read_text(), model),
    }


def differences(chart: Path, model: type[BaseSettings] = OperatorSettings) -> list[str]:
    """Files of the chart whose generated parts differ from what the model generates."""
    return [str(path) for path, text in _rendered(chart, model).items() if path.read_text() != text]


def write(chart: Path, model: type[BaseSettings] = OperatorSettings) -> None:
    for path, text in _rendered(chart, model).items():
        path.write_text(text)


def default_chart(repo_root: Path) -> Path:
    return repo_root / "charts" / "bbp-notebooks"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="fail if the chart is stale")
    args = parser.parse_args(argv)
    chart = default_chart(args.root)
    if args.check:
        stale = differences(chart)
        for path in stale:
            print(f"stale: {path} (run python -m bbp_notebooks.api.chartschema)", file=sys.stderr)
        return 1 if stale else 0
    write(chart)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
