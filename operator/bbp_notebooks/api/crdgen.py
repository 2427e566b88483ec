"""Generate the CustomResourceDefinitions from the pydantic models (one source of truth).

``bbp-notebooks-crds`` writes ``crds/`` and the chart's ``crds/``; ``--check`` fails when the
committed files differ from what the models generate.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel

from bbp_notebooks.api import models
from bbp_notebooks.api.constants import (
    GROUP,
    PROFILE_KIND,
    PROFILE_PLURAL,
    SESSION_KIND,
    SESSION_PLURAL,
    SITE_KIND,
    SITE_PLURAL,
    VERSION,
)

# Keywords that carry no meaning for a Kubernetes structural schema.
_DROPPED_KEYWORDS = {"title", "additionalProperties"}


@dataclass(frozen=True)
class CrdDescription:
    kind: str
    plural: str
    scope: str
    short_names: tuple[str, ...]
    description: str
    spec: type[BaseModel]
    status: type[BaseModel] | None
    printer_columns: tuple[dict[str, Any], ...]
    categories: tuple[str, ...] = ("bbp-notebooks",)

    @property
    def singular(self) -> str:
        return self.kind.lower()

    @property
    def name(self) -> str:
        return f"{self.plural}.{GROUP}"


def _column(name: str, type_: str, path: str, description: str, **extra: Any) -> dict[str, Any]:
    return {"name": name, "type": type_, "jsonPath": path, "description": description, **extra}


_AGE = _column("Age", "date", ".metadata.creationTimestamp", "Time since creation.")

CRDS: tuple[CrdDescription, ...] = (
    CrdDescription(
        kind=SESSION_KIND,
        plural=SESSION_PLURAL,
        scope="Namespaced",
        short_names=("nbs",),
        description="A scientist's Jupyter notebook server, run as a Slurm job at an HPC site.",
        spec=models.NotebookSessionSpec,
        status=models.NotebookSessionStatus,
        printer_columns=(
            _column("User", "string", ".spec.user", "POSIX user at the site."),
            _column("Profile", "string", ".spec.profile", "NotebookProfile."),
            _column("Site", "string", ".status.site", "Site the job runs at."),
            _column("Phase", "string", ".status.phase", "Summary of the session's state."),
            _column("JobID", "integer", ".status.jobId", "Slurm job id."),
            _column("Node", "string", ".status.node", "Compute node."),
            _column("URL", "string", ".status.endpoint.url", "Notebook server URL."),
            _column(
                "Ends", "date", ".status.expectedEndTime", "When Slurm's time limit ends the job."
            ),
            _column(
                "Credentials",
                "date",
                ".status.credentialsExpiry",
                "When the user's Kerberos ticket ends (GSSAPI sites).",
                priority=1,
            ),
            _AGE,
        ),
    ),
    CrdDescription(
        kind=PROFILE_KIND,
        plural=PROFILE_PLURAL,
        scope="Cluster",
        short_names=("nbp",),
        description="A kind of notebook: resources, software environment and who may use it.",
        spec=models.NotebookProfileSpec,
        status=None,
        printer_columns=(
            _column("Cores", "integer", ".spec.cores", "Default cores."),
            _column("Memory", "integer", ".spec.memoryMiB", "Default memory in MiB."),
            _column("Time", "integer", ".spec.defaultTimeLimitMinutes", "Default minutes."),
            _column("Sites", "string", ".spec.allowedSites", "Allowed sites (empty: all)."),
            _AGE,
        ),
    ),
    CrdDescription(
        kind=SITE_KIND,
        plural=SITE_PLURAL,
        scope="Cluster",
        short_names=("slurm",),
        description="A Slurm cluster the operator submits notebooks to over ssh.",
        spec=models.SlurmSiteSpec,
        status=models.SlurmSiteStatus,
        printer_columns=(
            _column(
                "Reachable",
                "string",
                '.status.conditions[?(@.type=="Reachable")].status',
                "Whether the frontend and controller answered the last poll.",
            ),
            _column("Idle Nodes", "integer", ".status.idleNodes", "Idle nodes at the site."),
            _column("Pending", "integer", ".status.pendingJobs", "Pending jobs at the site."),
            _AGE,
        ),
    ),
)

# Lists of named objects are maps keyed by name (server-side apply merges them per item).
_LIST_MAP_KEYS = {"conditions": "type", "partitions": "name", "userAccounts": "user"}


def _inline(schema: Any, defs: dict[str, Any]) -> Any:
    """Resolve $ref/allOf/anyOf-with-null into the plain structural form Kubernetes wants."""
    if isinstance(schema, list):
        return [_inline(item, defs) for item in schema]
    if not isinstance(schema, dict):
        return schema
    schema = dict(schema)
    if "$ref" in schema:
        target = defs[schema.pop("$ref").rsplit("/", 1)[-1]]
        schema = {**target, **schema}
    if "allOf" in schema and len(schema["allOf"]) == 1:
        schema = {**schema.pop("allOf")[0], **schema}
        return _inline(schema, defs)
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o != {"type": "null"}]
        if len(options) != 1:
            raise ValueError(f"unions are not structural: {schema}")
        rest = {k: v for k, v in schema.items() if k != "anyOf"}
        schema = {**options[0], **rest}
        if "$ref" in schema:
            return _inline(schema, defs)
    out: dict[str, Any] = {}
    for key, value in schema.items():
        if key in _DROPPED_KEYWORDS or (key == "default" and value is None):
            continue
        if key == "properties":
            out[key] = {name: _inline(prop, defs) for name, prop in value.items()}
            for name, list_key in _LIST_MAP_KEYS.items():
                prop = out[key].get(name)
                if prop is not None and prop.get("type") == "array":
                    prop["x-kubernetes-list-type"] = "map"
                    prop["x-kubernetes-list-map-keys"] = [list_key]
        elif key in ("items",):
            out[key] = _inline(value, defs)
        else:
            out[key] = value
    if "properties" in out:
        out.setdefault("type", "object")
    return out


def structural_schema(model: type[BaseModel]) -> dict[str, Any]:
    raw = model.model_json_schema(by_alias=True, mode="validation")
    defs = raw.pop("$defs", {})
    schema = _inline(raw, defs)
    if model.__doc__ and "description" not in schema:
        schema["description"] = " ".join(model.__doc__.split())
    return schema  # type: ignore[no-any-return]


def crd_manifest(crd: CrdDescription) -> dict[str, Any]:
    properties: dict[str, Any] = {
        "apiVersion": {"type": "string", "description": "The versioned schema of this object."},
        "kind": {"type": "string", "description": "The REST resource this object represents."},
        "metadata": {"type": "object"},
        "spec": structural_schema(crd.spec),
    }
    if crd.status is not None:
        properties["status"] = structural_schema(crd.status)
    version: dict[str, Any] = {
        "name": VERSION,
        "served": True,
        "storage": True,
        "schema": {
            "openAPIV3Schema": {
                "type": "object",
                "description": crd.description,
                "required": ["spec"],
                "properties": properties,
            }
        },
        "additionalPrinterColumns": list(crd.printer_columns),
    }
    if crd.status is not None:
        version["subresources"] = {"status": {}}
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {
            "name": crd.name,
            "labels": {"app.kubernetes.io/part-of": "bbp-notebooks"},
        },
        "spec": {
            "group": GROUP,
            "scope": crd.scope,
            "names": {
                "kind": crd.kind,
                "listKind": f"{crd.kind}List",
                "plural": crd.plural,
                "singular": crd.singular,
                "shortNames": list(crd.short_names),
                "categories": list(crd.categories),
            },
            "versions": [version],
        },
    }


def render_all() -> dict[str, str]:
    """File name -> YAML text for every CRD."""
    header = "# Generated by `bbp-notebooks-crds` from bbp_notebooks.api.models. Do not edit.\n"
    return {
        f"{crd.name}.yaml": header + yaml.safe_dump(crd_manifest(crd), sort_keys=False, width=100)
        for crd in CRDS
    }


def default_targets(repo_root: Path) -> list[Path]:
    return [repo_root / "crds", repo_root / "charts" / "bbp-notebooks" / "crds"]


def write(targets: list[Path]) -> None:
    rendered = render_all()
    for target in targets:
        target.mkdir(parents=True, exist_ok=True)
        for name, text in rendered.items():
            (target / name).write_text(text)


def differences(targets: list[Path]) -> list[str]:
    """Paths whose content differs from what the models generate (missing or stale)."""
    rendered = render_all()
    stale = []
    for target in targets:
        for name, text in rendered.items():
            path = target / name
            if not path.exists() or path.read_text() != text:
                stale.append(str(path))
        extra = {p.name for p in target.glob("*.yaml")} - set(rendered)
        stale.extend(str(target / name) for name in sorted(extra))
    return stale


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--root", type=Path, default=Path.cwd(), help="repository root")
    parser.add_argument("--check", action="store_true", help="fail if files are stale")
    args = parser.parse_args(argv)
    targets = default_targets(args.root)
    if args.check:
        stale = differences(targets)
        for path in stale:
            print(f"stale CRD: {path} (run bbp-notebooks-crds)", file=sys.stderr)
        return 1 if stale else 0
    write(targets)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
