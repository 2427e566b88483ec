"""A session's Kerberos ticket at a GSSAPI site: into the job, kept renewed, its state in status.

How the ticket reaches the job (no auks): before sbatch the operator writes the user's checked
ticket cache over SFTP, logged in as the user with that ticket, to
``~/.bbp-notebooks/<session uid>/krb5cc`` (0600 from the first byte, folders 0700, replaced
atomically) on the site's shared home; the job script exports ``KRB5CCNAME`` to that file, so the
notebook and everything it starts use it. After each renewal the same file is rewritten. The
ticket is never in argv, a job name, a comment, a log line, an Event or status; only its path
and end time are.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as dt
import logging
from typing import Any

from kubernetes_asyncio.client.exceptions import ApiException

from bbp_notebooks.api.kerberos import (
    TICKET_EXPIRY_ANNOTATION,
    TICKET_KEY,
    Ticket,
    TicketError,
    job_ccache_path,
    ticket_secret_name,
)
from bbp_notebooks.api.models import AuthMethod, NotebookSessionStatus
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator.conditions import get, set_condition
from bbp_notebooks.operator.planning import SiteView
from bbp_notebooks.operator.runtime import Runtime, TicketUnusable, site_endpoint
from bbp_notebooks.slurm.jobscript import JobScript
from bbp_notebooks.ssh.kerberos import renew_ticket

log = logging.getLogger(__name__)


async def place_ticket(
    rt: Runtime, site: SiteView, namespace: str, user: str, uid: str, job: JobScript
) -> JobScript:
    """Write the user's ticket where the job finds it; ``job`` with KRB5CCNAME pointing there."""
    assert site.spec.auth.kerberos is not None
    ticket = await rt.ticket(namespace, user, site.spec.auth.kerberos.realm)
    await write_job_ticket(rt, site, namespace, user, uid, ticket)
    return dataclasses.replace(job, kerberos_ccache=job_ccache_path(uid))


async def write_job_ticket(
    rt: Runtime, site: SiteView, namespace: str, user: str, uid: str, ticket: Ticket
) -> None:
    identity = await rt.kerberos_identity(site.name, site.spec, user, namespace)
    await rt.pool.put_file(
        site_endpoint(site.name, site.spec), identity, job_ccache_path(uid), ticket.data
    )


@dataclasses.dataclass(frozen=True)
class Verdict:
    """What to do about one session's ticket now."""

    renew: bool
    valid: bool
    reason: str
    message: str


def renew_margin(ticket: Ticket, renew_before: dt.timedelta) -> dt.timedelta:
    """How long before its end a ticket is renewed: renewBeforeSeconds, or half the ticket's
    lifetime when that is shorter (a 30 s ticket is renewed at 15 s, not at once)."""
    return min(renew_before, (ticket.end - ticket.start) / 2)


def judge(ticket: Ticket, *, now: dt.datetime, renew_before: dt.timedelta) -> Verdict:
    """Renew, keep or give up on a ticket (pure: the table the unit tests hold it to)."""
    until = ticket.end.isoformat()
    if ticket.end <= now:
        return Verdict(
            False, False, Reason.TICKET_EXPIRED,
            f"the Kerberos ticket of {ticket.principal} ended at {until}: log in to the hub "
            "again; the notebook keeps running without a valid ticket",
        )  # fmt: skip
    if ticket.end - now > renew_margin(ticket, renew_before):
        return Verdict(False, True, Reason.TICKET_VALID, _valid_message(ticket))
    if ticket.renewable and ticket.renew_until is not None and ticket.renew_until > now:
        return Verdict(True, True, Reason.TICKET_VALID, _valid_message(ticket))
    return Verdict(
        False, False, Reason.TICKET_NOT_RENEWABLE,
        f"the Kerberos ticket of {ticket.principal} ends at {until} and cannot be renewed: "
        "log in to the hub again",
    )  # fmt: skip


def _valid_message(ticket: Ticket) -> str:
    renewable = (
        f", renewable until {ticket.renew_until.isoformat()}"
        if ticket.renewable and ticket.renew_until
        else ", not renewable"
    )
    return f"ticket of {ticket.principal} valid until {ticket.end.isoformat()}{renewable}"


@dataclasses.dataclass(frozen=True)
class Outcome:
    status: NotebookSessionStatus
    # A Warning Event to send (the condition just turned False), or None.
    warning: tuple[str, str] | None


async def check_session(
    rt: Runtime,
    site: SiteView,
    namespace: str,
    user: str,
    uid: str,
    status: NotebookSessionStatus,
    *,
    now: dt.datetime,
    generation: int | None,
) -> Outcome | None:
    """Renew when due, refresh the job's copy, and say in CredentialsValid how it stands.
    None when the site does not use GSSAPI."""
    kerberos = site.spec.auth.kerberos
    if site.spec.auth.method != AuthMethod.GSSAPI or kerberos is None:
        return None
    expiry: dt.datetime | None = None
    try:
        ticket = await rt.ticket(namespace, user, kerberos.realm)
    except TicketUnusable as error:
        valid, reason, message = False, error.reason, str(error)
    else:
        before = dt.timedelta(seconds=kerberos.renew_before_seconds)
        verdict = judge(ticket, now=now, renew_before=before)
        valid, reason, message = verdict.valid, verdict.reason, verdict.message
        expiry = ticket.end
        if verdict.renew:
            try:
                renewed = await renew_ticket(ticket)
            except TicketError as error:
                valid, reason = False, Reason.TICKET_NOT_RENEWABLE
                message = f"{error}; log in to the hub again"
            else:
                rt.tickets[(namespace, user)] = renewed
                expiry = renewed.end
                reason, message = Reason.TICKET_RENEWED, _valid_message(renewed)
                log.info("renewed the ticket of %s (until %s)", renewed.principal, renewed.end)
                await _save_back(rt, namespace, user, renewed)
                if status.job_id is not None:
                    # The job's copy; when the site cannot be reached the next check retries.
                    await write_job_ticket(rt, site, namespace, user, uid, renewed)
    previous = get(status.conditions, ConditionType.CREDENTIALS_VALID)
    conditions = set_condition(
        status.conditions,
        ConditionType.CREDENTIALS_VALID,
        valid,
        reason,
        message,
        now=now,
        generation=generation,
    )
    new = status.model_copy(update={"conditions": conditions, "credentials_expiry": expiry})
    turned_false = not valid and (previous is None or previous.status != "False")
    return Outcome(new, (reason, message) if turned_false else None)


def renewed_ticket_patch(ticket: Ticket) -> dict[str, Any]:
    """The merge patch of a user's ticket Secret after a renewal: the cache and its end time
    only. The chart's admission policy (templates/kerberos-tickets.yaml) lets the operator write
    nothing else, and only into Secrets the hub labelled as tickets."""
    return {
        "metadata": {"annotations": {TICKET_EXPIRY_ANNOTATION: ticket.end.isoformat()}},
        "data": {TICKET_KEY: base64.b64encode(ticket.data).decode()},
    }


async def _save_back(rt: Runtime, namespace: str, user: str, ticket: Ticket) -> None:
    """Keep the renewed ticket in the user's Secret too, so a restarted operator has it. The
    Secret stays the hub's (its owner and labels are untouched); refused writes only log (the
    chart grants them with kerberos.saveRenewedTickets)."""
    body = renewed_ticket_patch(ticket)
    try:
        await rt.kube.core.patch_namespaced_secret(ticket_secret_name(user), namespace, body)
    except ApiException as error:
        log.warning(
            "renewed ticket of %s kept in memory only: Secret not writable (%s)",
            ticket.principal,
            error.status,
        )
