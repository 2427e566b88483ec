"""kopf wiring. Handlers stay thin: they translate kopf's world into calls to plain logic.

Run with ``kopf run -m bbp_notebooks.operator.handlers`` or the ``bbp-notebooks-operator`` script.
"""

from __future__ import annotations

import asyncio
import datetime as dt
import logging
import time
from collections.abc import Mapping
from typing import Any, NoReturn

import kopf
from kubernetes_asyncio import config as k8s_config
from kubernetes_asyncio.client.exceptions import ApiException

from bbp_notebooks.api.constants import (
    GROUP,
    GROUPS_ANNOTATION,
    PROFILE_PLURAL,
    SESSION_PLURAL,
    SITE_PLURAL,
    VERSION,
)
from bbp_notebooks.api.models import (
    Endpoint,
    NotebookProfileSpec,
    NotebookSessionSpec,
    NotebookSessionStatus,
    SessionPhase,
    SlurmSiteSpec,
    SlurmSiteStatus,
    dump,
)
from bbp_notebooks.api.settings import OperatorSettings
from bbp_notebooks.api.vocabulary import ConditionType, Reason
from bbp_notebooks.operator import (
    callbacks,
    failpoints,
    logs,
    metrics,
    observe,
    sessions,
    sites,
    tokens,
)
from bbp_notebooks.operator import credentials as _credentials  # noqa: F401  (Kerberos timer)
from bbp_notebooks.operator.compact import share_fields_sets
from bbp_notebooks.operator.conditions import get
from bbp_notebooks.operator.http import build_app, serve
from bbp_notebooks.operator.kube import Kube, new_api_client
from bbp_notebooks.operator.memory import Release
from bbp_notebooks.operator.metrics import (
    POLL_SECONDS,
    RECONCILE_ERRORS,
    SSH_CHANNELS,
    SSH_CONNECTIONS,
)
from bbp_notebooks.operator.planning import NoSiteAvailable, SiteView
from bbp_notebooks.operator.runtime import CredentialsUnavailable, Runtime
from bbp_notebooks.operator.shards import Shard, session_served, site_served
from bbp_notebooks.ssh import AuthenticationFailed, HostKeyMismatch, SshError

log = logging.getLogger(__name__)
WAITING = logs.WAITING
# One for the process, whichever site polled last (glibc's heap is the process's).
RELEASE = Release()


# Indexes: other objects are read from memory, never fetched per event -----------------------


@kopf.index(GROUP, VERSION, PROFILE_PLURAL)
def profile_index(name: str, spec: kopf.Spec, **_: Any) -> dict[str, NotebookProfileSpec] | None:
    try:
        return {name: NotebookProfileSpec.model_validate(dict(spec))}
    except ValueError as error:
        log.error("NotebookProfile %s is not valid and is ignored: %s", name, error)
        return None


@kopf.index(GROUP, VERSION, SITE_PLURAL)
def site_index(
    name: str, spec: kopf.Spec, status: kopf.Status, **_: Any
) -> dict[str, SiteView] | None:
    try:
        return {
            name: SiteView(
                name=name,
                spec=SlurmSiteSpec.model_validate(dict(spec)),
                status=SlurmSiteStatus.model_validate(dict(status)),
            )
        }
    except ValueError as error:
        log.error("SlurmSite %s is not valid and is ignored: %s", name, error)
        return None


def session_ref(body: Mapping[str, Any]) -> sessions.SessionRef:
    meta = body["metadata"]
    groups = meta.get("annotations", {}).get(GROUPS_ANNOTATION)
    spec = NotebookSessionSpec.model_validate(dict(body["spec"]))
    status = NotebookSessionStatus.model_validate(dict(body.get("status", {})))
    share_fields_sets(spec)  # 4 kB less per indexed session (compact.py)
    share_fields_sets(status)
    return sessions.SessionRef(
        uid=meta["uid"],
        namespace=meta["namespace"],
        name=meta["name"],
        generation=meta.get("generation"),
        created=dt.datetime.fromisoformat(meta["creationTimestamp"].replace("Z", "+00:00")),
        spec=spec,
        status=status,
        groups=tuple(g for g in groups.split(",") if g) if groups is not None else None,
    )


def _session_or_none(body: Mapping[str, Any]) -> sessions.SessionRef | None:
    try:
        return session_ref(body)
    except ValueError as error:
        log.error("NotebookSession %s is not valid: %s", body["metadata"].get("name"), error)
        return None


async def fill_session_index(
    kube: Kube, index: sessions.SessionIndex, namespaces: list[str] | None, shard: Shard
) -> None:
    """The startup LIST of this shard's sessions (before kopf's watch starts), a page at a
    time."""
    async for page in kube.session_pages(namespaces):
        for body in page:
            if not shard.serves_body(body):
                continue
            ref = _session_or_none(body)
            if ref is not None:
                index.put_listed(ref)


@kopf.on.event(GROUP, VERSION, SESSION_PLURAL)
async def session_event(event: kopf.RawEvent, body: kopf.Body, memo: kopf.Memo, **_: Any) -> None:
    """Keep the session index (sessions.SessionIndex) from kopf's watch. Async, though nothing
    is awaited: kopf runs a sync handler in its thread pool, a round trip through the event
    loop (and a wait for the GIL) for every watch event of every session."""
    index: sessions.SessionIndex = memo["sessions"]
    uid = body["metadata"]["uid"]
    rt: Runtime = memo["runtime"]
    # Not a kopf filter: an `auto` session leaves the placing shard's index when it is placed.
    if event["type"] == "DELETED" or not rt.shard.serves_body(body):
        index.discard(uid)
        return
    ref = _session_or_none(body)
    if ref is None:
        index.discard(uid)
    else:
        index.put(ref)


def _single(index: kopf.Index[str, Any]) -> dict[str, Any]:
    return {key: next(iter(store)) for key, store in index.items() if store}


# Lifecycle -----------------------------------------------------------------------------------


@kopf.on.startup()  # type: ignore[arg-type]  # index kwargs
async def configure(
    settings: kopf.OperatorSettings,
    memo: kopf.Memo,
    site_index: kopf.Index[str, Any],
    **_: Any,
) -> None:
    config = OperatorSettings()
    # A shard's own kopf state, never another shard's (shards.py): kopf drops its finalizer
    # from every object it does not serve.
    shard = Shard.from_settings(config.shard, config.sites, config.places_auto)
    settings.persistence.finalizer = shard.finalizer
    settings.persistence.progress_storage = kopf.AnnotationsProgressStorage(
        prefix=shard.annotation_prefix
    )
    settings.persistence.diffbase_storage = kopf.AnnotationsDiffBaseStorage(
        prefix=shard.annotation_prefix, key="last-handled-configuration"
    )
    logging.getLogger("asyncssh").setLevel(logging.WARNING)  # one INFO line per channel otherwise
    settings.posting.level = logging.WARNING  # our own Events carry the transitions
    settings.watching.server_timeout = 300
    # After its own patch kopf waits this long for the patched version to come back through the
    # watch before it handles the object again. kopf's 5 s is shorter than the watch lags in a
    # burst of 1,000 creations: it then handled the pre-patch body, ran the create handler a
    # second time and found the job by its tag (make bench: 845 such runs in a burst of 1,000
    # with 5 s, none with 60 s, and every job submitted in 159 s instead of 366 s).
    settings.persistence.consistency_timeout = 60
    settings.peering.standalone = not config.peering
    settings.peering.mandatory = config.peering
    settings.peering.clusterwide = not config.watch_namespaces
    settings.peering.priority = config.priority
    settings.peering.name = config.peering_name
    settings.peering.lifetime = config.peering_lifetime_seconds
    settings.execution.max_workers = 8

    try:
        k8s_config.load_incluster_config()  # type: ignore[no-untyped-call]
    except k8s_config.ConfigException:
        await k8s_config.load_kube_config()
    api_client = new_api_client()
    failpoints.arm(config)
    logs.install()
    rt = Runtime.create(config, Kube(api_client))
    assert rt.shard == shard  # noqa: S101 - one reading of the settings
    memo["runtime"] = rt
    memo["api_client"] = api_client
    session_index = sessions.SessionIndex()
    started = time.monotonic()
    await fill_session_index(rt.kube, session_index, config.watch_namespaces or None, shard)
    memo["sessions"] = session_index
    log.info("%d sessions listed in %.1f s", len(session_index), time.monotonic() - started)
    if shard.sharded:
        log.info(
            "shard %s: sites %s%s",
            shard.name,
            ", ".join(sorted(shard.sites)),
            "; places site: auto sessions" if shard.places_auto else "",
        )

    async def on_endpoint(
        uid: str, token: str, report: callbacks.EndpointReport, where: tuple[str, str] | None
    ) -> callbacks.Verdict:
        return await record_endpoint(rt, session_index, site_index, uid, token, report, where)

    async def on_spark(
        uid: str, token: str, report: callbacks.SparkClusterReport, where: tuple[str, str]
    ) -> callbacks.Verdict:
        return await record_spark(rt, site_index, uid, token, report, where)

    app = build_app(on_endpoint, on_spark)
    memo["http"] = await serve(app, config.http_host, config.http_port)
    log.info("operator ready: callbacks and /metrics on %s:%d", config.http_host, config.http_port)


@kopf.on.cleanup()
async def close(memo: kopf.Memo, **_: Any) -> None:
    if "http" in memo:
        await memo["http"].cleanup()
    if "runtime" in memo:
        rt: Runtime = memo["runtime"]
        try:  # the sites' daemons have stopped: the sites may go (kube.release_sites)
            released = await rt.kube.release_sites(rt.shard.finalizer)
        except Exception as error:  # noqa: BLE001 - the operator stops either way
            log.warning("could not release the SlurmSites: %s", error)
        else:
            if released:
                log.info("released the SlurmSites %s", ", ".join(released))
        await rt.close()
    if "api_client" in memo:
        await memo["api_client"].close()


async def record_endpoint(
    rt: Runtime,
    sessions_: sessions.SessionIndex,
    sites_: Mapping[str, Any],
    uid: str,
    token: str,
    report: callbacks.EndpointReport,
    where: tuple[str, str] | None = None,
) -> callbacks.Verdict:
    """Check a job's report against the session as the API server has it now, and record it
    with a compare-and-set: the first accepted report wins, whichever replica receives it. The
    session is found by ``where`` (namespace, name: from the URL) or this replica's index, and
    its site from the index or the API server, so a standby records reports as well."""
    located = _locate(sessions_, uid, where)
    if located is None:  # an unknown session looks like a bad token: nothing to learn by probing
        return callbacks.Verdict(callbacks.Refusal.INVALID_TOKEN, "invalid token")
    for _ in range(3):
        read = await _read_reported(rt, sites_, uid, located)
        if isinstance(read, callbacks.Verdict):
            return read
        body, ref, site = read
        verdict, new = await _judge_report(rt, ref, site, token, report)
        if new is None:
            return verdict
        written = await _compare_and_set(rt, ref, body, new)
        if isinstance(written, callbacks.Verdict):
            return written
        if not written:
            continue  # changed under us (a poll, another report): judge it again
        assert new.endpoint is not None
        rt.endpoints[uid] = (report.job_id, new.endpoint)
        metrics.observe_session(ref, new)
        if new.phase != ref.status.phase:
            await rt.kube.event(
                ref.involved, reason=SessionPhase.READY.value, message=new.endpoint.url
            )
        return verdict
    return callbacks.Verdict(
        callbacks.Refusal.JOB_NOT_RECORDED, "the session keeps changing; retry"
    )


async def _read_reported(
    rt: Runtime, sites_: Mapping[str, Any], uid: str, where: tuple[str, str]
) -> tuple[dict[str, Any], sessions.SessionRef, SiteView] | callbacks.Verdict:
    """The session a job reports for, as the API server has it now, and its site; or the
    verdict that the report cannot be taken (a session that is not this uid looks like a bad
    token: nothing to learn by probing)."""
    try:
        body = await rt.kube.get_session(*where)
        if body is None or body["metadata"]["uid"] != uid:
            return callbacks.Verdict(callbacks.Refusal.INVALID_TOKEN, "invalid token")
        ref = session_ref(body)
        site = await _site_of(rt, sites_, ref.status.site)
    except ApiException as error:
        return callbacks.Verdict(callbacks.Refusal.JOB_NOT_RECORDED, f"API: {error.reason}")
    except ValueError:
        return callbacks.Verdict(callbacks.Refusal.INVALID_TOKEN, "invalid token")
    if site is None:
        return callbacks.Verdict(callbacks.Refusal.JOB_NOT_RECORDED, "site not known yet")
    return body, ref, site


async def _compare_and_set(
    rt: Runtime, ref: sessions.SessionRef, body: Mapping[str, Any], new: NotebookSessionStatus
) -> bool | callbacks.Verdict:
    """Write ``new`` over exactly the version that was judged: True when written, False when
    the session changed meanwhile (judge it again), a verdict when the API server refused."""
    try:
        await rt.kube.patch_session_status(
            ref.namespace,
            ref.name,
            dump(new),
            resource_version=body["metadata"]["resourceVersion"],
        )
    except ApiException as error:
        if error.status == 409:
            return False
        return callbacks.Verdict(callbacks.Refusal.JOB_NOT_RECORDED, f"API: {error.reason}")
    return True


def _locate(
    sessions_: sessions.SessionIndex, uid: str, where: tuple[str, str] | None
) -> tuple[str, str] | None:
    if where is not None:
        return where
    ref = sessions_.get(uid)
    if ref is None:
        return None
    return ref.namespace, ref.name


async def _site_of(rt: Runtime, sites_: Mapping[str, Any], name: str | None) -> SiteView | None:
    if not name:
        return None
    store = sites_.get(name)
    if store:
        found: SiteView = next(iter(store))
        return found
    body = await rt.kube.get_site(name)
    if body is None:
        return None
    return SiteView(
        name=name,
        spec=SlurmSiteSpec.model_validate(dict(body["spec"])),
        status=SlurmSiteStatus.model_validate(dict(body.get("status") or {})),
    )


async def _judge_report(
    rt: Runtime,
    ref: sessions.SessionRef,
    site: SiteView,
    token: str,
    report: callbacks.EndpointReport,
) -> tuple[callbacks.Verdict, NotebookSessionStatus | None]:
    """The verdict on a report, and the status to write when it is accepted."""
    status = ref.status
    token_ok = tokens.matches(token, status.callback_token_sha256)
    node = status.node
    if token_ok and node is None and report.job_id == status.job_id:
        node = await _allocated_node(rt, site, report.job_id)
    verdict = callbacks.judge(
        report, token_matches=token_ok, status=status, site=site.spec, node=node
    )
    if not verdict.accepted:
        return verdict, None
    endpoint = Endpoint(
        host=report.host, port=report.port, url=f"http://{report.host}:{report.port}"
    )
    running = observe.JobObservation(job_id=report.job_id, state="RUNNING", node=node)
    now = dt.datetime.now(dt.UTC)
    new = observe.observed(
        status, running, endpoint=endpoint, vanished=False, now=now, generation=ref.generation
    )
    new = observe.with_spark(
        new, None, rt.spark_reports.get(ref.uid), now=now, generation=ref.generation, before=status
    )
    return verdict, new


async def record_spark(
    rt: Runtime,
    sites_: Mapping[str, Any],
    uid: str,
    token: str,
    report: callbacks.SparkClusterReport,
    where: tuple[str, str],
) -> callbacks.Verdict:
    """A Spark cluster job's report: checked like a notebook's (callbacks.judge_spark), then
    recorded with a compare-and-set; the session turns Ready if its notebook already is."""
    for _ in range(3):
        read = await _read_reported(rt, sites_, uid, where)
        if isinstance(read, callbacks.Verdict):
            return read
        body, ref, site = read
        spark = ref.status.spark
        token_ok = spark is not None and tokens.matches(token, spark.callback_token_sha256)
        node = spark.node if spark is not None else None
        if token_ok and node is None and spark is not None and report.job_id == spark.job_id:
            node = await _allocated_node(rt, site, report.job_id)
        verdict = callbacks.judge_spark(
            report, token_matches=token_ok, status=ref.status, site=site.spec, node=node
        )
        if not verdict.accepted:
            return verdict
        accepted = observe.SparkReport(
            job_id=report.job_id,
            master_url=f"spark://{report.host}:{report.port}",
            ui_url=f"http://{report.host}:{report.ui_port}",
            workers=report.workers,
        )
        now = dt.datetime.now(dt.UTC)
        running = observe.JobObservation(job_id=report.job_id, state="RUNNING", node=node)
        new = observe.with_spark(ref.status, running, accepted, now=now, generation=ref.generation)
        written = await _compare_and_set(rt, ref, body, new)
        if isinstance(written, callbacks.Verdict):
            return written
        if not written:
            continue
        rt.spark_reports[uid] = accepted
        if new.phase != ref.status.phase:
            await rt.kube.event(
                ref.involved, reason=SessionPhase.READY.value, message=new.message or ""
            )
        return verdict
    return callbacks.Verdict(
        callbacks.Refusal.JOB_NOT_RECORDED, "the session keeps changing; retry"
    )


async def _allocated_node(rt: Runtime, site: SiteView, job_id: int) -> str | None:
    """The node Slurm allocated to a running job, asked now (the poller may not have seen it
    run yet): one ``squeue -j`` as the site's monitor user."""
    try:
        identity = await rt.identity(site.name, site.spec, site.spec.monitor_user)
        found = await rt.client(site.name, site.spec).queue(identity, job_ids=[job_id])
    except (SshError, CredentialsUnavailable) as error:
        log.warning("node of job %d at %s unknown: %s", job_id, site.name, error)
        return None
    return next((e.nodes for e in found if e.job_id == job_id and e.nodes), None)


# NotebookSession -----------------------------------------------------------------------------


@kopf.on.resume(GROUP, VERSION, SESSION_PLURAL, when=session_served)
@kopf.on.create(GROUP, VERSION, SESSION_PLURAL, when=session_served)  # type: ignore[arg-type]  # index kwargs
async def submit(
    body: kopf.Body,
    patch: kopf.Patch,
    memo: kopf.Memo,
    profile_index: kopf.Index[str, NotebookProfileSpec],
    site_index: kopf.Index[str, SiteView],
    retry: int,
    **_: Any,
) -> None:
    rt: Runtime = memo["runtime"]
    session = session_ref(body)
    if session.status.job_id is None and not await rt.admission_policy_in_force():
        await _wait_for_admission_policy(rt, session, patch)
    try:
        new = await sessions.ensure_submitted(
            rt, session, _single(profile_index), _single(site_index)
        )
    except sessions.EnvironmentNotReady as error:
        raise kopf.TemporaryError(f"{WAITING} the environment Secret: {error}", delay=2) from error
    except sessions.SubmissionUnconfirmed as error:  # status says so; the next try looks again
        raise kopf.TemporaryError(f"{WAITING} a lost sbatch answer: {error}", delay=1) from error
    except (AuthenticationFailed, HostKeyMismatch) as error:
        await _login_refused(rt, session, patch, error, retry)
    except (SshError, NoSiteAvailable, CredentialsUnavailable) as error:
        RECONCILE_ERRORS.labels("submit", type(error).__name__).inc()
        reason = sites.reason_for(error)
        waiting = observe.site_unreachable(
            session.status,
            str(error),
            now=dt.datetime.now(dt.UTC),
            generation=session.generation,
            reason=reason,
        )
        patch.status.update(observe.status_patch(session.status, waiting))
        delay = RETRY_S[reason]
        raise kopf.TemporaryError(f"cannot submit yet: {error}", delay=delay) from error
    patch.status.update(observe.status_patch(session.status, new))
    try:  # a PySpark profile's Spark cluster: the session's second job
        new = await sessions.ensure_companion(
            rt, session, new, _single(profile_index), _single(site_index)
        )
    except sessions.SubmissionUnconfirmed as error:
        raise kopf.TemporaryError(f"{WAITING} a lost sbatch answer: {error}", delay=1) from error
    except (SshError, CredentialsUnavailable) as error:
        RECONCILE_ERRORS.labels("submit_spark", type(error).__name__).inc()
        raise kopf.TemporaryError(
            f"Spark cluster job not submitted yet: {error}", delay=15
        ) from error
    patch.status.update(observe.status_patch(session.status, new))
    if new.phase != session.status.phase:
        submitted = get(new.conditions, ConditionType.SUBMITTED)
        refused = new.phase in (SessionPhase.INVALID_SPEC, SessionPhase.FAILED)
        named = refused or (submitted is not None and submitted.reason == Reason.PLACED)
        await rt.kube.event(
            session.involved,
            reason=submitted.reason if named and submitted else "Submitted",
            message=new.message or "",
            type_="Warning" if refused else "Normal",
        )


# Login refusals back off (a frontend's fail2ban bans an address that keeps failing); a host key
# that does not match waits for a person: neither is retried like an unreachable site.
LOGIN_BACKOFF_S = (60, 120, 300, 600, 900)
HOST_KEY_RETRY_S = 900
# The other named waits at submission, in seconds (the README's decision table walks them).
RETRY_S = {
    Reason.SITE_UNAVAILABLE: 15,
    Reason.CREDENTIALS_UNAVAILABLE: 30,  # the CA Secret is read again every 30 s
    Reason.ADMISSION_POLICY_MISSING: 15,
}


async def _login_refused(
    rt: Runtime,
    session: sessions.SessionRef,
    patch: kopf.Patch,
    error: AuthenticationFailed | HostKeyMismatch,
    retry: int,
) -> NoReturn:
    host_key = isinstance(error, HostKeyMismatch)
    reason = Reason.HOST_KEY_MISMATCH if host_key else Reason.LOGIN_REFUSED
    RECONCILE_ERRORS.labels("submit", reason).inc()
    now = dt.datetime.now(dt.UTC)
    waiting = observe.cannot_log_in(
        session.status, reason, str(error), now=now, generation=session.generation
    )
    patch.status.update(observe.status_patch(session.status, waiting))
    if waiting.conditions != session.status.conditions:
        await rt.kube.event(session.involved, reason=reason, message=str(error), type_="Warning")
    delay = HOST_KEY_RETRY_S if host_key else LOGIN_BACKOFF_S[min(retry, len(LOGIN_BACKOFF_S) - 1)]
    raise kopf.TemporaryError(f"{reason}: {error}; next attempt in {delay} s", delay=delay)


async def _wait_for_admission_policy(
    rt: Runtime, session: sessions.SessionRef, patch: kopf.Patch
) -> NoReturn:
    """Without the policy nobody vouches for spec.user or the groups: submit nothing, say why."""
    name = rt.settings.admission_policy_name
    message = (
        f"ValidatingAdmissionPolicy {name} (and its binding) is not in force, so nothing vouches "
        "for spec.user: no job is submitted until it is installed (the chart installs it)"
    )
    waiting = observe.admission_policy_missing(
        session.status, message, now=dt.datetime.now(dt.UTC), generation=session.generation
    )
    patch.status.update(observe.status_patch(session.status, waiting))
    if waiting.conditions != session.status.conditions:
        log.error("session %s/%s: %s", session.namespace, session.name, message)
        await rt.kube.event(
            session.involved,
            reason=Reason.ADMISSION_POLICY_MISSING,
            message=message,
            type_="Warning",
        )
    RECONCILE_ERRORS.labels("submit", Reason.ADMISSION_POLICY_MISSING).inc()
    raise kopf.TemporaryError(message, delay=RETRY_S[Reason.ADMISSION_POLICY_MISSING])


@kopf.on.delete(GROUP, VERSION, SESSION_PLURAL, when=session_served)  # type: ignore[arg-type]  # index kwargs
async def cancel(
    body: kopf.Body,
    memo: kopf.Memo,
    site_index: kopf.Index[str, SiteView],
    retry: int,
    **_: Any,
) -> None:
    rt: Runtime = memo["runtime"]
    session = session_ref(body)
    metrics.deletion_started(session, body["metadata"].get("deletionTimestamp"))
    try:
        job_id = await sessions.cancel(rt, session, _single(site_index))
    except sessions.SiteGone as error:
        message = f"released without cancelling job {session.status.job_id}: {error}"
        log.warning("session %s/%s: %s", session.namespace, session.name, message)
        await rt.kube.event(
            session.involved, reason=Reason.SITE_GONE, message=message, type_="Warning"
        )
        job_id = None
    except (SshError, sessions.JobStillActive, CredentialsUnavailable) as error:
        _cancel_not_done(rt, session, body, error, retry)  # raises while there is time left
        message = (
            f"gave up cancelling ({error}); the orphan sweep cancels the job when the site answers"
        )
        log.warning("session %s/%s: %s", session.namespace, session.name, message)
        await rt.kube.event(
            session.involved, reason=Reason.CANCEL_ABANDONED, message=message, type_="Warning"
        )
        job_id = None
    rt.endpoints.pop(session.uid, None)
    metrics.deletion_finished(session)
    if job_id is not None:
        log.info("session %s/%s: job %d ended", session.namespace, session.name, job_id)


def _cancel_not_done(
    rt: Runtime, session: sessions.SessionRef, body: kopf.Body, error: Exception, retry: int
) -> None:
    """Retry a cancel that has not finished, until ``cancel_give_up_seconds`` after the delete;
    then return, and the delete goes through. A job Slurm is still ending after an accepted
    scancel is waited for (progress, logged at INFO); a site that cannot be asked is an error."""
    deleted = dt.datetime.fromisoformat(
        body["metadata"]["deletionTimestamp"].replace("Z", "+00:00")
    )
    waited = (dt.datetime.now(dt.UTC) - deleted).total_seconds()
    if waited >= rt.settings.cancel_give_up_seconds:
        return
    if isinstance(error, sessions.JobStillActive):
        delay = min(30.0, 2.0 * 2 ** min(retry, 4))
        raise kopf.TemporaryError(f"{WAITING} Slurm to end the job: {error}", delay=delay)
    RECONCILE_ERRORS.labels("cancel", type(error).__name__).inc()
    delay = min(60.0, 3.0 * 2 ** min(retry, 5))
    raise kopf.TemporaryError(f"job not cancelled yet: {error}", delay=delay)


GHOST_CHECK_S = 60.0


async def _forget_ghosts(rt: Runtime, index: sessions.SessionIndex) -> None:
    """While entries of the startup LIST wait for their first watch event, check them against
    the API server at most once a minute (sessions.SessionIndex: one deleted in between never
    gets an event)."""
    now = time.monotonic()
    if not index.provisional or now < index.checked_at + GHOST_CHECK_S:
        return
    index.checked_at = now
    gone = index.forget_absent(await rt.kube.session_uids())
    if gone:
        log.info("%d listed sessions went before the watch began: %s", len(gone), ", ".join(gone))


# SlurmSite -----------------------------------------------------------------------------------


@kopf.daemon(GROUP, VERSION, SITE_PLURAL, when=site_served, cancellation_timeout=10)  # type: ignore[arg-type]  # index kwargs
async def poll_site(
    name: str,
    body: kopf.Body,
    memo: kopf.Memo,
    stopped: kopf.DaemonStopped,
    profile_index: kopf.Index[str, NotebookProfileSpec],
    **_: Any,
) -> None:
    rt: Runtime = memo["runtime"]
    session_index: sessions.SessionIndex = memo["sessions"]
    state = sites.PollState()
    while not stopped:
        spec = SlurmSiteSpec.model_validate(dict(body["spec"]))
        view = SiteView(
            name=name,
            spec=spec,
            status=SlurmSiteStatus.model_validate(dict(body.get("status", {}))),
        )
        refs = session_index.values()
        here = [s for s in refs if s.status.site == name]
        try:
            with POLL_SECONDS.labels(name).time():
                new = await sites.poll_once(
                    rt,
                    view,
                    body["metadata"].get("generation"),
                    here,
                    state,
                    _single(profile_index),
                )
            if dump(new) != dump(view.status):
                await rt.kube.patch_site_status(name, dump(new))
            metrics.publish_site(name, new)
            metrics.publish_sessions(refs)
            rt.prune(dt.datetime.now(dt.UTC), {s.uid for s in refs})
            await _forget_ghosts(rt, session_index)
            RELEASE()  # what the poll (or a burst before it) freed goes back to the system
            SSH_CONNECTIONS.set(rt.pool.connections_open)
            SSH_CHANNELS.set(rt.pool.channels_in_use)
        except asyncio.CancelledError:
            raise
        except Exception:  # a poller must outlive any one bad poll
            RECONCILE_ERRORS.labels("poll_site", "unexpected").inc()
            log.exception("poll of site %s failed", name)
        await stopped.wait(spec.poll_interval_seconds)
    metrics.forget_site(name)
