"""kopf wiring for Kerberos tickets: one daemon per GSSAPI site checks, every few seconds, the
ticket of each of its live sessions, renews it when due (the job's copy refreshed), writes
CredentialsValid and publishes the site's earliest ticket end as a metric. Sites with other auth
methods run nothing (and log nothing)."""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
from typing import Any

import kopf

from bbp_notebooks.api.constants import GROUP, SITE_PLURAL, VERSION
from bbp_notebooks.api.models import (
    AuthMethod,
    ConditionStatus,
    SlurmSiteSpec,
    SlurmSiteStatus,
    dump,
)
from bbp_notebooks.api.vocabulary import ConditionType
from bbp_notebooks.operator import kerberos, metrics
from bbp_notebooks.operator.conditions import get
from bbp_notebooks.operator.planning import SiteView
from bbp_notebooks.operator.runtime import CredentialsUnavailable, Runtime
from bbp_notebooks.operator.sessions import SessionIndex, SessionRef
from bbp_notebooks.operator.shards import site_served
from bbp_notebooks.ssh import SshError

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0


def _is_gssapi(spec: kopf.Spec, memo: kopf.Memo, name: str, **_: Any) -> bool:
    """A GSSAPI site this shard serves."""
    gssapi = spec.get("auth", {}).get("method") == AuthMethod.GSSAPI.value
    return bool(gssapi and site_served(memo, name))


@kopf.daemon(GROUP, VERSION, SITE_PLURAL, when=_is_gssapi, cancellation_timeout=10)
async def watch_tickets(
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    **_: Any,
) -> None:
    rt: Runtime = memo["runtime"]
    try:
        await _check_site_tickets(rt, name, body, stopped, memo["sessions"])
    finally:
        metrics.observe_ticket_expiry(name, None)  # no stale series once the daemon stops


async def _check_site_tickets(
    rt: Runtime,
    name: str,
    body: kopf.Body,
    stopped: kopf.DaemonStopped,
    session_index: SessionIndex,
) -> None:
    while not stopped:
        site = SiteView(
            name=name,
            spec=SlurmSiteSpec.model_validate(dict(body["spec"])),
            status=SlurmSiteStatus.model_validate(dict(body.get("status", {}))),
        )
        here = [
            s
            for s in session_index.values()
            if (s.status.site or s.spec.site) == name
            and not (s.status.phase is not None and s.status.phase.is_terminal)
        ]
        ends: list[dt.datetime | None] = []
        for session in here:
            try:
                ends.append(await check(rt, site, session))
            except asyncio.CancelledError:
                raise
            except (SshError, CredentialsUnavailable) as error:
                log.warning(
                    "ticket of %s/%s not refreshed yet: %s", session.namespace, session.name, error
                )
            except Exception:  # one session's trouble must not stop the others' renewals
                log.exception("ticket check of %s/%s failed", session.namespace, session.name)
        metrics.observe_ticket_expiry(name, metrics.earliest_ticket_expiry(ends))
        await stopped.wait(CHECK_INTERVAL_S)


async def check(rt: Runtime, site: SiteView, session: SessionRef) -> dt.datetime | None:
    """Check one session's ticket; the end of its ticket when valid, else None."""
    outcome = await kerberos.check_session(
        rt,
        site,
        session.namespace,
        session.spec.user,
        session.uid,
        session.status,
        now=dt.datetime.now(dt.UTC),
        generation=session.generation,
    )
    if outcome is None:
        return None
    new, old = dump(outcome.status), dump(session.status)
    changed = {
        key: new.get(key)
        for key in ("conditions", "credentialsExpiry")
        if new.get(key) != old.get(key)
    }
    if changed:
        await rt.kube.patch_session_status(session.namespace, session.name, changed)
    if outcome.warning is not None:
        reason, message = outcome.warning
        await rt.kube.event(session.involved, reason=reason, message=message, type_="Warning")
    valid = get(outcome.status.conditions, ConditionType.CREDENTIALS_VALID)
    if valid is None or valid.status != ConditionStatus.TRUE:
        return None
    return outcome.status.credentials_expiry
