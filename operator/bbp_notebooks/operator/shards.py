"""Sharding by site: which operator serves which session and which SlurmSite.

Unsharded (the default), one operator (an active/standby pair with kopf peering) serves every
session at every site. A shard (``shard`` and ``sites`` in the settings) serves the sessions of
its sites only: it keeps only their index entries, polls only its sites and submits and cancels
only their jobs, so memory and poll work divide by the number of shards. Every session of a site
stays in one shard, so that one squeue still sees all of that site's jobs and the orphan sweep
never meets a job of a session it does not know.

A session with ``site: auto`` has no site until it is placed. One shard places them
(``placesAuto``): it chooses among all sites, as an unsharded operator does, and writes the
choice to ``status.site``; the shard of that site then submits. Placement is once: a placed
session's site never changes (planning.plan honours it), so its owner never changes either.

kopf keeps its per-object state in the object (a finalizer, progress and last-handled
annotations). A shard must never see another shard's state as its own: kopf removes its finalizer
from every object none of its handlers serve, so shards sharing one finalizer name would strip
each other's. Each shard has its own finalizer and annotation prefix (:meth:`Shard.finalizer`).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from bbp_notebooks.api.constants import ANNOTATION_PREFIX, FINALIZER

AUTO = "auto"


def placement(spec_site: str, status_site: str | None) -> str | None:
    """The site a session belongs to: its spec's, or for ``auto`` where it was placed; None for
    an ``auto`` session not placed yet."""
    if spec_site != AUTO:
        return spec_site
    return status_site or None


@dataclass(frozen=True)
class Shard:
    """What one operator serves. ``name`` empty: unsharded, every site and every session."""

    name: str = ""
    sites: frozenset[str] = frozenset()
    places_auto: bool = True

    @classmethod
    def from_settings(cls, name: str, sites: Iterable[str], places_auto: bool) -> Shard:
        if not name:
            return cls()
        return cls(name=name, sites=frozenset(sites), places_auto=places_auto)

    @property
    def sharded(self) -> bool:
        return bool(self.name)

    def serves_site(self, site: str) -> bool:
        return not self.sharded or site in self.sites

    def serves(self, spec_site: str, status_site: str | None) -> bool:
        """Whether this shard owns a session (its site's shard; the placing shard until an
        ``auto`` session is placed)."""
        site = placement(spec_site, status_site)
        if site is None:
            return self.places_auto
        return self.serves_site(site)

    def serves_body(self, body: Mapping[str, Any]) -> bool:
        """:meth:`serves` for a raw object (the watch's body, before it is parsed): what kopf's
        filters and the index ask for every event, so it reads two fields and nothing else."""
        spec = body.get("spec") or {}
        status = body.get("status") or {}
        return self.serves(str(spec.get("site") or AUTO), status.get("site"))

    @property
    def finalizer(self) -> str:
        return f"{FINALIZER}.{self.name}" if self.sharded else FINALIZER

    @property
    def annotation_prefix(self) -> str:
        return f"{self.name}.shard.{ANNOTATION_PREFIX}" if self.sharded else ANNOTATION_PREFIX


# kopf filters (``when=``): kopf passes the operator's memo, whose runtime holds the shard.


def session_served(memo: Any, body: Mapping[str, Any], **_: Any) -> bool:
    """kopf filter: a session this shard owns."""
    shard: Shard = memo["runtime"].shard
    return shard.serves_body(body)


def site_served(memo: Any, name: str, **_: Any) -> bool:
    """kopf filter: a SlurmSite this shard polls."""
    shard: Shard = memo["runtime"].shard
    return shard.serves_site(name)
