"""Serving the dashboard: its routes on an aiohttp application, and a server of its own.

The operations endpoint (`taskflow.http`) adds the routes at ``/`` when ``http_port`` is set;
``taskflow dashboard MODULE:APP`` serves them alone (`serve`), joining no consumer group.

- ``GET /``: the page, rendered on the server.
- ``GET /dashboard/panels``: the panels alone, as HTML; the page's script fetches it every
  `REFRESH` seconds and swaps it in.
- ``GET /dashboard/data.json``: the same values as JSON.
- ``GET /dashboard/static/<file>``: the stylesheet and the script; nothing comes from elsewhere.

With ``TASKFLOW_DASHBOARD_TOKEN`` set, each of them asks for that token: an
``Authorization: Bearer <token>`` header, or a cookie the page sets when it is opened once as
``/?token=<token>`` (it then redirects to ``/``, so the token leaves the address bar). Tokens are
compared in constant time. Everything is escaped by the templates (Jinja2, autoescape on).
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import logging
import os
import signal
from collections.abc import Awaitable, Callable
from importlib import resources
from typing import TYPE_CHECKING, Any

from aiohttp import web

from taskflow.dashboard.view import UNKNOWN_APP_REF, DeadLetterReader, Sources, gather

if TYPE_CHECKING:
    import jinja2

    from taskflow.app import App
    from taskflow.fleet import Snapshots
    from taskflow.runner import Runtime

__all__ = ["REFRESH", "TOKEN_VARIABLE", "Dashboard", "RuntimeSources", "serve"]

logger = logging.getLogger(__name__)

REFRESH = 5  # seconds between two refreshes of the panels
TOKEN_VARIABLE = "TASKFLOW_DASHBOARD_TOKEN"
COOKIE = "taskflow_dashboard"
STATIC = {"dashboard.css": "text/css", "dashboard.js": "text/javascript"}
HEADERS = {
    "Cache-Control": "no-store",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Content-Security-Policy": (
        "default-src 'none'; style-src 'self'; script-src 'self'; connect-src 'self'; "
        "img-src 'self'; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    ),
}

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Dashboard:
    """The dashboard of one app, reading where `sources` says.

    Args:
        sources: Called on each request: where to read (the runtime may come later).
        token: The token asked for; by default ``TASKFLOW_DASHBOARD_TOKEN``, none when unset.
    """

    def __init__(self, sources: Callable[[], Sources], *, token: str | None = None) -> None:
        self.sources = sources
        self.token = token if token is not None else os.environ.get(TOKEN_VARIABLE) or None
        self._templates = _templates()

    def add_routes(self, routes: web.Application) -> None:
        """Serve the dashboard at ``/`` of `routes`."""
        router = routes.router
        router.add_get("/", self._guarded(self._page))
        router.add_get("/dashboard/panels", self._guarded(self._panels))
        router.add_get("/dashboard/data.json", self._guarded(self._data))
        router.add_get("/dashboard/static/{name}", self._guarded(self._static))

    # -- the token -------------------------------------------------------------------------

    def _guarded(self, handler: Handler) -> Handler:
        async def guarded(request: web.Request) -> web.StreamResponse:
            if self.token is None:
                return await handler(request)
            given = request.query.get("token")
            if given is not None and request.path == "/":
                return self._sign_in(given)
            if not self._allowed(request):
                return web.Response(
                    status=401,
                    text=f"This dashboard asks for a token: open /?token=... once, or send "
                    f"'Authorization: Bearer ...' (the value of {TOKEN_VARIABLE}).\n",
                    headers={"WWW-Authenticate": "Bearer", **HEADERS},
                )
            return await handler(request)

        return guarded

    def _allowed(self, request: web.Request) -> bool:
        assert self.token is not None
        header = request.headers.get("Authorization", "")
        # The scheme is case-insensitive (RFC 9110): "bearer" is as good as "Bearer".
        if header[:7].lower() == "bearer " and _same(header[7:].strip(), self.token):
            return True
        cookie = request.cookies.get(COOKIE)
        return cookie is not None and _same(cookie, _cookie_value(self.token))

    def _sign_in(self, given: str) -> web.Response:
        assert self.token is not None
        if not _same(given, self.token):
            return web.Response(status=401, text="wrong token\n", headers=HEADERS)
        answer = web.Response(status=303, headers={"Location": "/", **HEADERS})
        answer.set_cookie(COOKIE, _cookie_value(self.token), httponly=True, samesite="Strict")
        return answer

    # -- the pages -------------------------------------------------------------------------

    async def _page(self, request: web.Request) -> web.Response:
        view = await gather(self.sources())
        text = self._templates.get_template("page.html").render(
            view=view, base="/", query="", every=REFRESH
        )
        return web.Response(text=text, content_type="text/html", headers=HEADERS)

    async def _panels(self, request: web.Request) -> web.Response:
        view = await gather(self.sources())
        text = self._templates.get_template("panels.html").render(view=view)
        return web.Response(text=text, content_type="text/html", headers=HEADERS)

    async def _data(self, request: web.Request) -> web.Response:
        return web.json_response(await gather(self.sources()), headers=HEADERS)

    async def _static(self, request: web.Request) -> web.Response:
        name = request.match_info["name"]
        kind = STATIC.get(name)
        if kind is None:
            raise web.HTTPNotFound()
        body = resources.files("taskflow.dashboard").joinpath("static", name).read_bytes()
        return web.Response(body=body, content_type=kind, headers=HEADERS)


def _templates() -> jinja2.Environment:
    import jinja2

    return jinja2.Environment(
        loader=jinja2.PackageLoader("taskflow.dashboard", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )


def _same(given: str, expected: str) -> bool:
    # A header's bytes that are not UTF-8 arrive as surrogates: compared as the bytes they were.
    return hmac.compare_digest(
        given.encode(errors="surrogateescape"), expected.encode(errors="surrogateescape")
    )


def _cookie_value(token: str) -> str:
    """What the cookie holds: a digest of the token, not the token."""
    return hashlib.sha256(
        b"taskflow-dashboard:" + token.encode(errors="surrogateescape")
    ).hexdigest()


def dead_letter_reader(app: App) -> DeadLetterReader | None:
    """A reader of the app's dead-letter topics; None for the memory broker (nothing to read)."""
    return None if app.broker_url.startswith("memory:") else DeadLetterReader(app)


# -- standalone ------------------------------------------------------------------------------


async def serve(
    app: App,
    *,
    host: str,
    port: int,
    app_ref: str = UNKNOWN_APP_REF,
    ready: Callable[[int], Any] | None = None,
) -> None:
    """Serve the dashboard of `app` on `host`:`port` until SIGINT or SIGTERM.

    It reads the fleet from the app's Redis and the dead letters from its broker; it joins no
    consumer group and runs no worker.

    Raises:
        ConfigurationError: when the port cannot be listened on, or for a bad Redis URL.
        StoreError: when Redis cannot be reached.
    """
    from taskflow.exceptions import ConfigurationError
    from taskflow.stores.connect import open_stores
    from taskflow.stores.redis_fleet import RedisFleetStore

    settings = app.settings
    async with open_stores(
        app.name,
        settings.redis_url,
        username=settings.redis_username,
        password=settings.redis_password,
    ) as stores:
        sources = Sources(
            app,
            fleet=RedisFleetStore(stores.client, app.name) if stores.client is not None else None,
            schedules=stores.schedules,
            dead_letters=dead_letter_reader(app),
            app_ref=app_ref,
        )
        routes = web.Application()
        Dashboard(lambda: sources).add_routes(routes)
        runner = web.AppRunner(routes, access_log=None)
        await runner.setup()
        try:
            site = web.TCPSite(runner, host, port)
            try:
                await site.start()
            except OSError as exc:
                raise ConfigurationError(
                    f"cannot serve the dashboard on {host}:{port}: {exc.strerror or exc}"
                ) from None
            bound = int(runner.addresses[0][1])
            logger.info("dashboard of app %s on http://%s:%d/", app.name, host, bound)
            if stores.client is None:
                logger.warning("no Redis configured: the fleet's snapshots cannot be read")
            if ready is not None:
                ready(bound)
            await _until_signal()
        finally:
            await runner.cleanup()


async def _until_signal() -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


# -- inside a running app ------------------------------------------------------------------


class RuntimeSources:
    """The sources of the dashboard served by a replica's own operations endpoint."""

    def __init__(self, app: App, runtime: Callable[[], Runtime | None]) -> None:
        self.app = app
        self.runtime = runtime
        self._snapshots: Snapshots | None = None
        self._dead_letters = dead_letter_reader(app)

    def __call__(self) -> Sources:
        from taskflow.fleet import Snapshots, redis_fleet

        runtime = self.runtime()
        if runtime is None:
            return Sources(self.app, dead_letters=self._dead_letters)
        if self._snapshots is None or self._snapshots.runtime is not runtime:
            self._snapshots = Snapshots(runtime)
        stores = runtime.stores
        return Sources(
            self.app,
            fleet=redis_fleet(runtime),
            local=self._snapshots,
            schedules=stores.schedules if stores is not None else None,
            dead_letters=self._dead_letters,
            app_ref=runtime.app_ref or UNKNOWN_APP_REF,
        )
