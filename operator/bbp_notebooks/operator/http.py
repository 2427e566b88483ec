"""The operator's HTTP server: endpoint callbacks from jobs, /metrics, /healthz."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from bbp_notebooks.operator.callbacks import EndpointReport, Refusal, SparkClusterReport, Verdict
from bbp_notebooks.operator.metrics import CALLBACKS, REGISTRY
from bbp_notebooks.operator.tokens import bearer_token

log = logging.getLogger(__name__)


# ``sink(uid, token, report, where)`` decides and records; a refusal keeps the session as it
# was. ``where`` is (namespace, name) from the URL, so a replica whose caches do not hold the
# session (a standby, one just started) can still read it from the API server and record.
EndpointSink = Callable[[str, str, EndpointReport, tuple[str, str] | None], Awaitable[Verdict]]
SparkSink = Callable[[str, str, SparkClusterReport, tuple[str, str]], Awaitable[Verdict]]

ReportT = TypeVar("ReportT", EndpointReport, SparkClusterReport)

# A report is a few dozen bytes; anything much larger is refused before it is parsed.
MAX_REPORT_BYTES = 4096


async def _read_report(request: web.Request, model: type[ReportT]) -> ReportT | web.Response:
    if (request.content_length or 0) > MAX_REPORT_BYTES:
        CALLBACKS.labels("TooLarge").inc()
        return web.json_response({"error": "report too large"}, status=413)
    try:
        body = await request.content.read(MAX_REPORT_BYTES + 1)
        if len(body) > MAX_REPORT_BYTES:
            raise ValueError("report too large")
        return model.model_validate(json.loads(body))
    except (ValueError, UnicodeDecodeError) as error:  # JSON and pydantic errors included
        CALLBACKS.labels("InvalidReport").inc()
        return web.json_response({"error": f"invalid report: {error}"}, status=400)


def _answer(verdict: Verdict) -> web.Response:
    CALLBACKS.labels(verdict.refusal.value if verdict.refusal else "Accepted").inc()
    headers = {"Retry-After": "2"} if verdict.http_status == 503 else None
    return web.json_response(
        {"ok": verdict.accepted, "reason": verdict.refusal, "message": verdict.message},
        status=verdict.http_status,
        headers=headers,
    )


def build_app(on_endpoint: EndpointSink, on_spark: SparkSink | None = None) -> web.Application:
    async def report_spark(request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        token = bearer_token(request.headers.get("Authorization"))
        if token is None or on_spark is None:
            CALLBACKS.labels(Refusal.INVALID_TOKEN.value).inc()
            return web.json_response({"error": "invalid token"}, status=403)
        report = await _read_report(request, SparkClusterReport)
        if isinstance(report, web.Response):
            return report
        where = (request.match_info["namespace"], request.match_info["name"])
        verdict = await on_spark(uid, token, report, where)
        if verdict.accepted:
            log.info(
                "session %s: Spark job %d reported spark://%s:%d, %d workers",
                uid,
                report.job_id,
                report.host,
                report.port,
                report.workers,
            )
        else:
            log.warning("session %s: Spark cluster report refused: %s", uid, verdict.message)
        return _answer(verdict)

    async def report_endpoint(request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        where = (
            (request.match_info["namespace"], request.match_info["name"])
            if "name" in request.match_info
            else None
        )
        token = bearer_token(request.headers.get("Authorization"))
        if token is None:
            CALLBACKS.labels(Refusal.INVALID_TOKEN.value).inc()
            return web.json_response({"error": "invalid token"}, status=403)
        if (request.content_length or 0) > MAX_REPORT_BYTES:
            CALLBACKS.labels("TooLarge").inc()
            return web.json_response({"error": "report too large"}, status=413)
        try:
            body = await request.content.read(MAX_REPORT_BYTES + 1)
            if len(body) > MAX_REPORT_BYTES:
                raise ValueError("report too large")
            report = EndpointReport.model_validate(json.loads(body))
        except (ValueError, UnicodeDecodeError) as error:  # JSON and pydantic errors included
            CALLBACKS.labels("InvalidReport").inc()
            return web.json_response({"error": f"invalid report: {error}"}, status=400)
        verdict = await on_endpoint(uid, token, report, where)
        CALLBACKS.labels(verdict.refusal.value if verdict.refusal else "Accepted").inc()
        if verdict.accepted:
            log.info(
                "session %s: job %d reported %s:%d", uid, report.job_id, report.host, report.port
            )
        else:
            log.warning("session %s: endpoint report refused: %s", uid, verdict.message)
        headers = {"Retry-After": "2"} if verdict.http_status == 503 else None
        return web.json_response(
            {"ok": verdict.accepted, "reason": verdict.refusal, "message": verdict.message},
            status=verdict.http_status,
            headers=headers,
        )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=MAX_REPORT_BYTES)
    app.router.add_post(
        "/v1/namespaces/{namespace}/sessions/{name}/{uid}/endpoint", report_endpoint
    )
    # The URL of jobs submitted before the namespace and name were part of it (upgrades).
    app.router.add_post("/v1/sessions/{uid}/endpoint", report_endpoint)
    app.router.add_post("/v1/namespaces/{namespace}/sessions/{name}/{uid}/spark", report_spark)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
