"""The hub's own REST API for bbp-notebooks servers, and the home page's templates.

    GET  /hub/api/bbp/sessions           the current user's servers: site, node, time left, notice,
                                         who each is shared with (the home page shows it)
    GET  /hub/api/bbp/sessions/<user>    the same for a named user (an admin, a service)
    POST /hub/api/bbp/extend/<server>    more time for one of the current user's running servers;
                                         body {"minutes": 60} (default) or {"timeLimitMinutes": N}

    c.JupyterHub.extra_handlers = bbp_notebooks.hub.handlers.extra_handlers()
    c.JupyterHub.template_paths = [bbp_notebooks.hub.handlers.TEMPLATES]

Each server is listed only to credentials that may read it (``read:servers!server=user/name``):
a notebook server's own token (``JUPYTERHUB_API_TOKEN``, see the spawner's server_token_scopes)
sees its own card, with the operator's warning, and is refused everything else.

Only a server's owner may extend it (a user it is shared with may not): the hub's ServiceAccount
raises the session's ``spec.resources.timeLimitMinutes`` within the profile's maximum, and the
operator carries it out and reports the new end in status.
"""

from __future__ import annotations

import datetime as dt
import json
from pathlib import Path
from typing import Any

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.scopes import has_scope
from jupyterhub.user import User
from tornado import web

from bbp_notebooks.hub import cards
from bbp_notebooks.hub.kube import ApiException, is_conflict
from bbp_notebooks.hub.spawner import NotebookSessionSpawner

TEMPLATES = str(Path(__file__).with_name("templates"))


class _BBPHandler(APIHandler):  # type: ignore[misc]
    def _user(self) -> User:
        """The current user, if a user (not a service)."""
        user = self.current_user
        if not isinstance(user, User):
            raise web.HTTPError(403, "only a hub user has notebook servers")
        return user

    def _may(self, scope: str) -> bool:
        return bool(has_scope(scope, self.parsed_scopes, db=self.db))

    def _require(self, scope: str) -> None:
        if not self._may(scope):
            raise web.HTTPError(403, f"these credentials lack the scope {scope.split('!')[0]}")

    @staticmethod
    def _ours(user: User, server_name: str) -> NotebookSessionSpawner | None:
        if server_name not in user.orm_spawners:
            return None
        spawner = user.spawners[server_name]
        return spawner if isinstance(spawner, NotebookSessionSpawner) else None

    @staticmethod
    def _shared_with(spawner: NotebookSessionSpawner) -> tuple[str, ...]:
        shares = getattr(spawner.orm_spawner, "shares", None) or []
        names = [s.user.name if s.user is not None else f"group {s.group.name}" for s in shares]
        return tuple(sorted(names))


class SessionsHandler(_BBPHandler):
    async def get(self, user_name: str | None = None) -> None:
        user = self._user() if user_name is None else self.find_user(user_name)
        readable = [
            name
            for name in sorted(user.orm_spawners if user is not None else ())
            if self._may(f"read:servers!server={user.name}/{name}")
        ]
        if user is None or (not readable and not self._may(f"read:servers!user={user.name}")):
            # The same answer for a user who does not exist: nobody learns who has an account.
            raise web.HTTPError(403, f"these credentials may not read {user_name}'s servers")
        now = dt.datetime.now(dt.UTC)
        found: list[cards.Card] = []
        profiles: dict[str, Any] | None = None
        for name in readable:
            spawner = self._ours(user, name)
            if spawner is None:
                continue
            session = None
            if spawner.session is not None and spawner.active:
                kube = await spawner.kube()
                profiles = profiles if profiles is not None else await kube.profiles()
                raw = await kube.read_session(spawner.session.namespace, spawner.session.name)
                if raw is not None and raw["metadata"]["uid"] == spawner.session.uid:
                    session = raw
            profile_name = str(((session or {}).get("spec") or {}).get("profile"))
            profile = (profiles or {}).get(profile_name)
            found.append(
                cards.card(
                    name,
                    session,
                    now=now,
                    max_time_limit_minutes=profile.max_time_limit_minutes if profile else None,
                    shared_with=self._shared_with(spawner),
                )
            )
        self.finish(json.dumps({"servers": cards.as_json(found)}))


class ExtendHandler(_BBPHandler):
    async def post(self, server_name: str) -> None:
        user = self._user()
        self._require(f"servers!server={user.name}/{server_name}")
        spawner = self._ours(user, server_name)
        if spawner is None or spawner.session is None or not spawner.active:
            raise web.HTTPError(404, f"no running notebook server named {server_name!r}")
        minutes, target = self._asked()
        ref = spawner.session
        kube = await spawner.kube()
        session = await kube.read_session(ref.namespace, ref.name)
        if session is None or session["metadata"]["uid"] != ref.uid:
            raise web.HTTPError(404, "the server's notebook session is gone")
        profile = (await kube.profiles()).get(session["spec"].get("profile"))
        if profile is None:
            raise web.HTTPError(400, "the server's profile no longer exists: it cannot be extended")
        try:
            limit = cards.extended_limit(
                session,
                default_time_limit_minutes=profile.default_time_limit_minutes,
                max_time_limit_minutes=profile.max_time_limit_minutes,
                minutes=minutes,
                target=target,
            )
        except cards.ExtensionRefused as refused:
            raise web.HTTPError(400, str(refused)) from None
        try:
            patched = await kube.request_time_limit(session, limit)
        except ApiException as error:
            if is_conflict(error):
                raise web.HTTPError(409, "the session changed meanwhile: try again") from None
            self.log.warning(
                "extending %s/%s: %s %s", ref.namespace, ref.name, error.status, error.body
            )
            raise web.HTTPError(
                502, f"the cluster refused the extension: {_reason(error)}"
            ) from None
        self.log.info("%s: asked for a time limit of %d min", ref.name, limit)
        card = cards.card(
            server_name, patched, now=dt.datetime.now(dt.UTC),
            max_time_limit_minutes=profile.max_time_limit_minutes,
            shared_with=self._shared_with(spawner),
        )  # fmt: skip
        self.finish(json.dumps({"requested_time_limit_minutes": limit, "server": card.as_json()}))

    def _asked(self) -> tuple[int, int | None]:
        body = self.get_json_body() if self.request.body else None
        body = body or {}
        if not isinstance(body, dict) or set(body) - {"minutes", "timeLimitMinutes"}:
            raise web.HTTPError(400, 'send {"minutes": N} or {"timeLimitMinutes": N}')
        values = [
            body.get("minutes", cards.DEFAULT_EXTENSION_MINUTES),
            body.get("timeLimitMinutes"),
        ]
        for value in values:
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                raise web.HTTPError(400, "minutes must be whole numbers")
        return int(values[0]), values[1]


def _reason(error: ApiException) -> str:
    try:
        return str(json.loads(error.body or "").get("message") or error.reason)
    except (TypeError, ValueError, AttributeError):
        return str(error.reason)


def extra_handlers() -> list[tuple[str, type[APIHandler]]]:
    """For ``c.JupyterHub.extra_handlers`` (the hub prefixes them with /hub)."""
    return [
        (r"/api/bbp/sessions", SessionsHandler),
        (r"/api/bbp/sessions/([^/]+)", SessionsHandler),
        (r"/api/bbp/extend/([^/]*)", ExtendHandler),
    ]
