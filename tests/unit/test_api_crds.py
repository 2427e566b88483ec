"""The CRDs are generated from the pydantic models, and every field teaches `kubectl explain`."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import Field, ValidationError, create_model

from bbp_notebooks.api import crdgen, models

REPO = Path(__file__).resolve().parents[2]


def test_committed_crds_match_the_models() -> None:
    stale = crdgen.differences(crdgen.default_targets(REPO))
    assert stale == [], f"run `bbp-notebooks-crds` to regenerate: {stale}"


def test_the_sync_check_fails_when_a_model_changes_without_regenerating(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    changed = create_model(
        "NotebookSessionSpec",
        __base__=models.NotebookSessionSpec,
        gpus=(int, Field(default=0, description="A field added without regenerating.")),
    )
    session = crdgen.CRDS[0]
    monkeypatch.setattr(
        crdgen,
        "CRDS",
        (crdgen.CrdDescription(**{**session.__dict__, "spec": changed}),) + crdgen.CRDS[1:],
    )
    stale = crdgen.differences(crdgen.default_targets(REPO))
    assert any("notebooksessions" in path for path in stale)
    assert crdgen.main(["--root", str(REPO), "--check"]) == 1


def _walk(schema: dict[str, Any], path: str) -> list[str]:
    missing = []
    for name, prop in schema.get("properties", {}).items():
        here = f"{path}.{name}"
        if name not in ("apiVersion", "kind", "metadata") and not prop.get("description"):
            missing.append(here)
        missing += _walk(prop, here)
        if "items" in prop:
            missing += _walk(prop["items"], here + "[]")
    return missing


@pytest.mark.parametrize("crd", crdgen.CRDS, ids=lambda c: c.kind)
def test_every_schema_field_has_a_description(crd: crdgen.CrdDescription) -> None:
    schema = crdgen.crd_manifest(crd)["spec"]["versions"][0]["schema"]["openAPIV3Schema"]
    assert _walk(schema, crd.kind) == []


@pytest.mark.parametrize("crd", crdgen.CRDS, ids=lambda c: c.kind)
def test_schemas_are_structural(crd: crdgen.CrdDescription) -> None:
    text = crdgen.render_all()[f"{crd.name}.yaml"]
    for keyword in ("$ref", "anyOf", "allOf", "additionalProperties", "title:"):
        assert keyword not in text


def test_a_session_spec_refuses_unknown_fields_and_hostile_users() -> None:
    with pytest.raises(ValidationError):
        models.NotebookSessionSpec.model_validate({"user": "alice", "profile": "p", "gpus": 1})
    with pytest.raises(ValidationError):
        models.NotebookSessionSpec.model_validate({"user": "root; rm -rf /", "profile": "p"})
    spec = models.NotebookSessionSpec.model_validate(
        {"user": "alice", "profile": "bluepy", "serverName": "gva"}
    )
    assert spec.site == "auto"
    assert models.dump(spec) == {
        "user": "alice",
        "profile": "bluepy",
        "site": "auto",
        "serverName": "gva",
    }
