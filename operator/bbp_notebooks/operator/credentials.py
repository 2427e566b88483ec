"""kopf wiring for Kerberos tickets: every few seconds each live session at a GSSAPI site has its
ticket checked, renewed when due (the job's copy refreshed) and CredentialsValid written."""

from __future__ import annotations

import datetime as dt
import logging
from typing import Any

import kopf

from bbp_notebooks.api.constants import GROUP, SESSION_PLURAL, VERSION
from bbp_notebooks.api.models import NotebookSessionSpec, NotebookSessionStatus, dump
from bbp_notebooks.operator import kerberos
from bbp_notebooks.operator.planning import SiteView
from bbp_notebooks.operator.runtime import CredentialsUnavailable, Runtime
from bbp_notebooks.ssh import SshError

log = logging.getLogger(__name__)

CHECK_INTERVAL_S = 5.0


@kopf.timer(GROUP, VERSION, SESSION_PLURAL, interval=CHECK_INTERVAL_S, idle=0)  # type: ignore[arg-type]  # index kwargs
async def check_credentials(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    site_index: kopf.Index[str, SiteView],
    **_: Any,
) -> None:
    if body["metadata"].get("deletionTimestamp"):
        return  # the delete handler owns it now (and cancels without a ticket if need be)
    rt: Runtime = memo["runtime"]
    spec = NotebookSessionSpec.model_validate(dict(body["spec"]))
    status = NotebookSessionStatus.model_validate(dict(body.get("status", {})))
    if status.phase is not None and status.phase.is_terminal:
        return
    site_name = status.site or (spec.site if spec.site != "auto" else None)
    store = site_index.get(site_name or "")
    if not store:
        return
    site: SiteView = next(iter(store))
    meta = body["metadata"]
    try:
        outcome = await kerberos.check_session(
            rt,
            site,
            meta["namespace"],
            spec.user,
            meta["uid"],
            status,
            now=dt.datetime.now(dt.UTC),
            generation=meta.get("generation"),
        )
    except (SshError, CredentialsUnavailable) as error:
        log.warning("ticket of %s/%s not refreshed yet: %s", meta["namespace"], meta["name"], error)
        return
    if outcome is None:
        return
    new = dump(outcome.status)
    if new.get("conditions") != dump(status).get("conditions") or new.get(
        "credentialsExpiry"
    ) != dump(status).get("credentialsExpiry"):
        patch.status["conditions"] = new["conditions"]
        patch.status["credentialsExpiry"] = new.get("credentialsExpiry")
    if outcome.warning is not None:
        reason, message = outcome.warning
        await rt.kube.event(
            {
                "api_version": body["apiVersion"],
                "kind": body["kind"],
                "name": meta["name"],
                "namespace": meta["namespace"],
                "uid": meta["uid"],
            },
            reason=reason,
            message=message,
            type_="Warning",
        )
