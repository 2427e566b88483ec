"""The operator's HTTP server: endpoint callbacks from jobs, /metrics, /healthz."""

from __future__ import annotations

import json
import logging
from collections.abc import Awaitable, Callable

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, Field, ValidationError

from bbp_notebooks.operator.metrics import REGISTRY
from bbp_notebooks.operator.tokens import verify

log = logging.getLogger(__name__)


class EndpointReport(BaseModel):
    """What a job posts once its notebook server listens."""

    host: str = Field(
        min_length=1, max_length=253, pattern=r"^[A-Za-z0-9]([A-Za-z0-9.-]*[A-Za-z0-9])?$"
    )
    port: int = Field(ge=1, le=65535)
    job_id: int = Field(alias="jobId", ge=1)


EndpointSink = Callable[[str, EndpointReport], Awaitable[bool]]


def build_app(token_key: bytes, on_endpoint: EndpointSink) -> web.Application:
    """``on_endpoint(uid, report)`` returns False when no such session exists."""

    async def report_endpoint(request: web.Request) -> web.Response:
        uid = request.match_info["uid"]
        presented = request.headers.get("Authorization", "").removeprefix("Bearer ").strip()
        if not presented or not verify(token_key, uid, presented):
            return web.json_response({"error": "invalid token"}, status=403)
        try:
            report = EndpointReport.model_validate(await request.json())
        except (ValidationError, json.JSONDecodeError, UnicodeDecodeError) as error:
            return web.json_response({"error": f"invalid report: {error}"}, status=400)
        if not await on_endpoint(uid, report):
            return web.json_response({"error": "no such session"}, status=404)
        log.info(
            "session %s reported endpoint %s:%d (job %d)",
            uid,
            report.host,
            report.port,
            report.job_id,
        )
        return web.json_response({"ok": True})

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=generate_latest(REGISTRY), headers={"Content-Type": CONTENT_TYPE_LATEST}
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text="ok")

    app = web.Application(client_max_size=16 * 1024)
    app.router.add_post("/v1/sessions/{uid}/endpoint", report_endpoint)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/healthz", healthz)
    return app


async def serve(app: web.Application, host: str, port: int) -> web.AppRunner:
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, host, port).start()
    return runner
