"""Sharding by site (operator/shards.py): who owns which session and site, and each shard's own
kopf state, as a table."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from bbp_notebooks.api.constants import ANNOTATION_PREFIX, FINALIZER
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.operator.shards import Shard, placement

EVERYTHING = Shard()
GENEVA = Shard.from_settings("geneva", ["geneva"], places_auto=True)
LUGANO = Shard.from_settings("lugano", ["lugano", "lugano-gpu"], places_auto=False)


@pytest.mark.parametrize(
    ("spec_site", "status_site", "owners"),
    [
        ("geneva", None, {"everything", "geneva"}),
        ("geneva", "geneva", {"everything", "geneva"}),
        ("lugano-gpu", None, {"everything", "lugano"}),
        # spec wins: an explicit site's session never moves, whatever status says
        ("geneva", "lugano", {"everything", "geneva"}),
        # auto, not placed yet: the placing shard
        ("auto", None, {"everything", "geneva"}),
        ("auto", "", {"everything", "geneva"}),
        # auto, placed: that site's shard, and no longer the placing one
        ("auto", "lugano", {"everything", "lugano"}),
        ("auto", "geneva", {"everything", "geneva"}),
        # a site no shard serves: only an unsharded operator
        ("zurich", None, {"everything"}),
        ("auto", "zurich", {"everything"}),
    ],
)
def test_every_session_has_one_shard(
    spec_site: str, status_site: str | None, owners: set[str]
) -> None:
    shards = {"everything": EVERYTHING, "geneva": GENEVA, "lugano": LUGANO}
    found = {name for name, shard in shards.items() if shard.serves(spec_site, status_site)}
    assert found == owners
    body = {"spec": {"site": spec_site}, "status": {"site": status_site}}
    assert {n for n, s in shards.items() if s.serves_body(body)} == owners


def test_a_body_without_site_or_status_is_an_unplaced_auto_session() -> None:
    assert placement("auto", None) is None
    assert GENEVA.serves_body({"spec": {}}) and not LUGANO.serves_body({"spec": {}})
    assert GENEVA.serves_body({"spec": {"site": "auto"}, "status": None})


def test_sites_are_served_by_their_shard_only() -> None:
    assert EVERYTHING.serves_site("anything")
    assert GENEVA.serves_site("geneva") and not GENEVA.serves_site("lugano")
    assert LUGANO.serves_site("lugano-gpu") and not LUGANO.serves_site("geneva")


def test_each_shard_has_its_own_kopf_state_and_unsharded_keeps_the_old_names() -> None:
    """kopf drops its finalizer from every object none of its handlers serve: shards sharing a
    finalizer would strip each other's. Unsharded keeps the names existing sessions carry."""
    assert (EVERYTHING.finalizer, EVERYTHING.annotation_prefix) == (FINALIZER, ANNOTATION_PREFIX)
    names = {s.finalizer for s in (EVERYTHING, GENEVA, LUGANO)}
    prefixes = {s.annotation_prefix for s in (EVERYTHING, GENEVA, LUGANO)}
    assert len(names) == 3 and len(prefixes) == 3
    assert GENEVA.finalizer == f"{FINALIZER}.geneva"


def test_shard_settings_are_checked() -> None:
    settings = OperatorSettings(shard="lugano", sites=["lugano"], places_auto=False)
    shard = Shard.from_settings(settings.shard, settings.sites, settings.places_auto)
    assert shard == Shard(name="lugano", sites=frozenset({"lugano"}), places_auto=False)
    with pytest.raises(ValidationError, match="serves no site"):
        OperatorSettings(shard="lugano")
    with pytest.raises(ValidationError, match="needs `shard`"):
        OperatorSettings(sites=["lugano"])
    with pytest.raises(ValidationError):
        OperatorSettings(shard="Lugano!", sites=["lugano"])
    assert Shard.from_settings("", ["ignored"], places_auto=False) == EVERYTHING
