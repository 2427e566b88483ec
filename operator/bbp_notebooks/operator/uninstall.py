"""`helm uninstall`'s pre-delete hook: let the release's SlurmSites go before the operator does.

kopf puts its finalizer on every object a daemon runs for (each site has its poll) and takes it
off only while the operator runs. Helm deletes the sites, the operator, its RBAC and its
ServiceAccount in one pass, so the stopping operator's own release of the sites is refused
(403/401, seen on the node) and the uninstall waits on them for ever. Run first, this deletes
the release's sites while the operator still runs (it stops their daemons and drops the
finalizer), gives it ``--grace`` seconds, then drops our finalizer itself from those still held
(an operator that is down or scaled to 0 never will), and returns once they are gone.

Sessions are left alone: the sessions namespace is kept on uninstall (helm.sh/resource-policy),
and so are the sessions and their running jobs, for the next install to pick up.

    bbp-notebooks-uninstall --release R --grace 20 --timeout 120
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
import time

from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config

from bbp_notebooks.api.constants import FINALIZER
from bbp_notebooks.operator.kube import Kube

log = logging.getLogger("bbp_notebooks.uninstall")


def release_selector(release: str) -> str:
    """The chart's SlurmSites carry the release in the standard instance label."""
    return f"app.kubernetes.io/instance={release}"


async def _gone_by(kube: Kube, selector: str, deadline: float, poll: float) -> list[str]:
    """Wait until no site matches (or ``deadline``); what still matches."""
    while (left := await kube.site_names(selector)) and time.monotonic() < deadline:  # noqa: ASYNC110 - gone is when a list no longer shows them
        await asyncio.sleep(poll)
    return left


async def end_sites(
    kube: Kube,
    release: str,
    *,
    grace: float,
    timeout: float,  # noqa: ASYNC109 - one deadline over both waits, what is left is returned
    poll: float = 1.0,
) -> list[str]:
    """Delete the release's sites; after ``grace`` seconds release our finalizer from those still
    there; the names still there after ``timeout`` seconds (someone else's finalizer)."""
    began = time.monotonic()
    selector = release_selector(release)
    for name in await kube.site_names(selector):
        log.info("deleting SlurmSite %s", name)
        await kube.delete_site(name)
    left = await _gone_by(kube, selector, began + min(grace, timeout), poll)
    if left:
        released = await kube.release_sites(FINALIZER, label_selector=selector, shards=True)
        log.warning(
            "the operator did not release %s within %s s; dropped its finalizer from %s",
            ", ".join(left), grace, ", ".join(released) or "none",
        )  # fmt: skip
        left = await _gone_by(kube, selector, began + timeout, poll)
    return left


async def _main(args: argparse.Namespace) -> int:
    k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    async with k8s.ApiClient() as api:
        left = await end_sites(Kube(api), args.release, grace=args.grace, timeout=args.timeout)
    if left:
        log.error("still there after %s s, held by other finalizers: %s", args.timeout, left)
        return 1
    log.info("the release's SlurmSites are gone")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--release", required=True)
    parser.add_argument("--grace", type=float, default=20.0, help="seconds the operator gets")
    parser.add_argument("--timeout", type=float, default=120.0)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s")
    return asyncio.run(_main(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
