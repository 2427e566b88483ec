"""HTTP control interface (JSON, 127.0.0.1 only) for faults and inspection.

  GET  /sites                               names, ssh endpoints, host keys
  GET  /sites/{site}/jobs                   the accounting view of every job
  GET  /sites/{site}/commands               commands executed, per command name
  POST /sites/{site}/commands/reset
  GET  /sites/{site}/faults                 POST the same keys to change them:
       {"controller_down": bool, "controller_latency": s, "ssh_refused": bool,
        "stuck_pending": bool, "hold_new": bool, "sbatch_response_lost": bool, "sbatch_latency": s,
        "private_jobs": bool, "private_job_ids": [id], "database_down": bool,
        "controller_down_delay": s, "ssh_down": bool}
  POST /sites/{site}/nodes/{node}/fail | /resume
  POST /sites/{site}/jobs/{id}/kill         {"state": "FAILED" | "CANCELLED"}
With a single site, /faults, /jobs and /commands address it directly.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from bbp_notebooks.mockslurm.site import MockSite

FAULT_KEYS = {
    "controller_down",
    "controller_latency",
    "controller_down_delay",
    "ssh_refused",
    "ssh_down",
    "stuck_pending",
    "hold_new",
    "sbatch_response_lost",
    "sbatch_latency",
    "private_jobs",
    "private_job_ids",
    "database_down",
}
SITES: web.AppKey[dict[str, MockSite]] = web.AppKey("sites", dict)


def make_app(sites: dict[str, MockSite]) -> web.Application:
    app = web.Application()
    app[SITES] = sites
    app.router.add_get("/sites", _list_sites)
    for prefix in ("/sites/{site}", ""):
        app.router.add_get(f"{prefix}/jobs", _jobs)
        app.router.add_get(f"{prefix}/commands", _commands)
        app.router.add_post(f"{prefix}/commands/reset", _reset_commands)
        app.router.add_get(f"{prefix}/faults", _get_faults)
        app.router.add_post(f"{prefix}/faults", _set_faults)
        app.router.add_post(f"{prefix}/nodes/{{node}}/fail", _fail_node)
        app.router.add_post(f"{prefix}/nodes/{{node}}/resume", _resume_node)
        app.router.add_post(f"{prefix}/jobs/{{job_id}}/kill", _kill_job)
    return app


def _site(request: web.Request) -> MockSite:
    sites = request.app[SITES]
    name = request.match_info.get("site")
    if name is None:
        if len(sites) != 1:
            raise web.HTTPBadRequest(text="several sites: use /sites/{site}/...")
        return next(iter(sites.values()))
    site = sites.get(name)
    if site is None:
        raise web.HTTPNotFound(text=f"no site {name}")
    return site


async def _list_sites(request: web.Request) -> web.Response:
    return web.json_response(
        [
            {
                "name": name,
                "address": site.address,
                "port": site.port,
                "known_hosts": site.known_hosts(),
                "host_public_key": site.host_public_key(),
            }
            for name, site in request.app[SITES].items()
        ]
    )


async def _jobs(request: web.Request) -> web.Response:
    return web.json_response(_site(request).jobs())


async def _commands(request: web.Request) -> web.Response:
    site = _site(request)
    counts = site.command_counts
    return web.json_response({"commands": counts, "total": sum(counts.values())})


async def _reset_commands(request: web.Request) -> web.Response:
    _site(request).reset_command_counts()
    return web.json_response({"commands": {}, "total": 0})


def _faults(site: MockSite) -> dict[str, Any]:
    data = site.cluster.faults.to_dict()
    data["controller_down_delay"] = site.config.controller_down_delay
    data["ssh_down"] = not site.ssh_running
    return data


async def _get_faults(request: web.Request) -> web.Response:
    return web.json_response(_faults(_site(request)))


async def _set_faults(request: web.Request) -> web.Response:
    site = _site(request)
    body = await _body(request)
    unknown = set(body) - FAULT_KEYS
    if unknown:
        raise web.HTTPBadRequest(text=f"unknown faults: {sorted(unknown)}")
    try:
        site.set_faults(
            controller_down=_opt_bool(body, "controller_down"),
            controller_latency=_opt_float(body, "controller_latency"),
            ssh_refused=_opt_bool(body, "ssh_refused"),
            stuck_pending=_opt_bool(body, "stuck_pending"),
            hold_new=_opt_bool(body, "hold_new"),
            sbatch_response_lost=_opt_bool(body, "sbatch_response_lost"),
            sbatch_latency=_opt_float(body, "sbatch_latency"),
            private_jobs=_opt_bool(body, "private_jobs"),
            private_job_ids=_opt_ids(body, "private_job_ids"),
            database_down=_opt_bool(body, "database_down"),
            controller_down_delay=_opt_float(body, "controller_down_delay"),
        )
    except (TypeError, ValueError) as error:
        raise web.HTTPBadRequest(text=str(error)) from error
    ssh_down = _opt_bool(body, "ssh_down")
    if ssh_down is True:
        await site.stop_ssh()
    elif ssh_down is False:
        await site.start_ssh()
    return web.json_response(_faults(site))


async def _fail_node(request: web.Request) -> web.Response:
    site = _site(request)
    node = request.match_info["node"]
    if node not in site.cluster.nodes:
        raise web.HTTPNotFound(text=f"no node {node}")
    site.fail_node(node)
    return web.json_response({"node": node, "state": site.cluster.nodes[node].state()})


async def _resume_node(request: web.Request) -> web.Response:
    site = _site(request)
    node = request.match_info["node"]
    if node not in site.cluster.nodes:
        raise web.HTTPNotFound(text=f"no node {node}")
    site.resume_node(node)
    return web.json_response({"node": node, "state": site.cluster.nodes[node].state()})


async def _kill_job(request: web.Request) -> web.Response:
    site = _site(request)
    text = request.match_info["job_id"]
    if not text.isdigit() or int(text) not in site.cluster.accounting:
        raise web.HTTPNotFound(text=f"no job {text}")
    body = await _body(request)
    state = str(body.get("state", "FAILED")).upper()
    if state not in ("FAILED", "CANCELLED"):
        raise web.HTTPBadRequest(text="state must be FAILED or CANCELLED")
    try:
        site.kill_job(int(text), state)
    except ValueError as error:
        raise web.HTTPConflict(text=str(error)) from error
    return web.json_response({"job_id": int(text), "state": state})


async def _body(request: web.Request) -> dict[str, Any]:
    if not request.can_read_body:
        return {}
    try:
        data = await request.json()
    except ValueError as error:
        raise web.HTTPBadRequest(text="body must be JSON") from error
    if not isinstance(data, dict):
        raise web.HTTPBadRequest(text="body must be a JSON object")
    return data


def _opt_bool(body: dict[str, Any], key: str) -> bool | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, bool):
        raise web.HTTPBadRequest(text=f"{key} must be a boolean")
    return value


def _opt_float(body: dict[str, Any], key: str) -> float | None:
    value = body.get(key)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float) or value < 0:
        raise web.HTTPBadRequest(text=f"{key} must be a non-negative number")
    return float(value)


def _opt_ids(body: dict[str, Any], key: str) -> list[int] | None:
    value = body.get(key)
    if value is None:
        return None
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in value
    ):
        raise web.HTTPBadRequest(text=f"{key} must be a list of job ids")
    return [int(v) for v in value]
