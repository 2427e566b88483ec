"""Two shards by site (operator/shards.py), real operators against the real API server and the
emulated sites: each serves only its site's sessions (submits, polls, cancels), a `site: auto`
session is placed by the placing shard and submitted by its site's, and neither strips the
other's finalizer (kopf drops its finalizer from every object it does not serve)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from bbp_notebooks.api.constants import FINALIZER
from bbp_notebooks.devtools.stack import Operator, wait_for
from bbp_notebooks.operator.planning import job_name
from fixtures.operator import Stack, condition, session

pytestmark = [pytest.mark.kube, pytest.mark.timeout(300)]

LUGANO_ONLY = {
    "apiVersion": "notebooks.bbp.epfl.ch/v1alpha1",
    "kind": "NotebookProfile",
    "metadata": {"name": "lugano-only"},
    "spec": {"displayName": "Lugano only", "cores": 1, "memoryMiB": 512,
             "allowedSites": ["lugano"]},
}  # fmt: skip
SHARDS = {"geneva": ("geneva", "true"), "lugano": ("lugano", "false")}  # sites, places auto


@pytest.fixture(scope="module")
def shards(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Operator]]:
    """The stack's operator replaced by a geneva shard (which places `auto` sessions) and a
    lugano shard, each standalone with its own HTTP port (its jobs report to it)."""
    stack.apply(LUGANO_ONLY)
    stack.operator.stop()
    workdir = Path(tmp_path_factory.mktemp("shards"))
    started = {}
    try:
        for name, (sites, places_auto) in SHARDS.items():
            shard_settings = {"BBP_SHARD": name, "BBP_SITES": f'["{sites}"]',
                              "BBP_PLACES_AUTO": places_auto}  # fmt: skip
            started[name] = Operator(
                workdir / name, stack.cp.kubeconfig, {**stack.operator.settings, **shard_settings}
            )
            started[name].start()
        yield started
    finally:
        for operator in started.values():
            operator.stop()
        stack.kubectl("delete", "notebookprofile", "lugano-only")
        stack.operator.start()


def finalizers(stack: Stack, kind: str, name: str, namespace: str = "default") -> list[str]:
    found = stack.get(kind, name, namespace)
    assert found is not None, f"{kind} {name} is gone"
    return list(found["metadata"].get("finalizers") or [])


def submitted_by(operator: Operator, job_id: int) -> bool:
    return f"submitted job {job_id} for session default/" in operator.log_path.read_text()


def test_each_shard_serves_its_own_site_and_keeps_its_own_finalizer(
    stack: Stack, shards: dict[str, Operator]
) -> None:
    stack.apply(session("shard-gva"))
    stack.apply(session("shard-lug", site="lugano", account="proj-a"))
    gva = stack.wait_phase("shard-gva", {"Ready"})
    lug = stack.wait_phase("shard-lug", {"Ready"})
    assert submitted_by(shards["geneva"], gva["jobId"])
    assert submitted_by(shards["lugano"], lug["jobId"])
    assert not submitted_by(shards["geneva"], lug["jobId"])
    assert not submitted_by(shards["lugano"], gva["jobId"])
    time.sleep(3)  # a few polls (1 s) by both: a finalizer kopf would drop is dropped by now
    assert finalizers(stack, "notebooksession", "shard-gva") == [f"{FINALIZER}.geneva"]
    assert finalizers(stack, "notebooksession", "shard-lug") == [f"{FINALIZER}.lugano"]
    assert finalizers(stack, "slurmsite", "geneva", "") == [f"{FINALIZER}.geneva"]
    assert finalizers(stack, "slurmsite", "lugano", "") == [f"{FINALIZER}.lugano"]

    stack.kubectl("delete", "notebooksession", "shard-gva", "shard-lug", "--wait=false")
    stack.wait_gone("shard-gva")
    stack.wait_gone("shard-lug")
    for site, status in (("geneva", gva), ("lugano", lug)):
        job = next(j for j in stack.jobs(site) if j["job_id"] == status["jobId"])
        assert job["state"] == "CANCELLED", job


def test_an_auto_session_is_placed_by_one_shard_and_submitted_by_its_sites(
    stack: Stack, shards: dict[str, Operator]
) -> None:
    """The geneva shard places it at lugano (the profile allows only lugano); the lugano shard
    submits. The placing shard's finalizer, added when it first saw the session, goes."""
    stack.apply(session("shard-auto", site="auto", profile="lugano-only", account="proj-a"))
    ready = stack.wait_phase("shard-auto", {"Ready"})
    found = stack.get("notebooksession", "shard-auto")
    assert found is not None
    uid = found["metadata"]["uid"]
    assert ready["site"] == "lugano"
    assert submitted_by(shards["lugano"], ready["jobId"])
    assert not submitted_by(shards["geneva"], ready["jobId"])
    assert not any(j["name"] == job_name("default", uid) for j in stack.jobs("geneva"))
    wait_for(
        lambda: finalizers(stack, "notebooksession", "shard-auto") == [f"{FINALIZER}.lugano"],
        20, "only the lugano shard's finalizer", 0.5,
    )  # fmt: skip
    submitted = condition(ready, "Submitted")
    assert submitted["reason"] == "JobSubmitted", submitted
    events = stack.kubectl(
        "get", "events", "--field-selector", "involvedObject.name=shard-auto,reason=Placed",
        "-o", "jsonpath={.items[*].message}",
    )  # fmt: skip
    assert "placed at lugano by shard geneva" in events.stdout, events

    stack.kubectl("delete", "notebooksession", "shard-auto", "--wait=false")
    stack.wait_gone("shard-auto")
    job = next(j for j in stack.jobs("lugano") if j["job_id"] == ready["jobId"])
    assert job["state"] == "CANCELLED", job
