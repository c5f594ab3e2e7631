"""The status page's HTTP(S) server: microdot on the agent's own asyncio loop, read-only, 127.0.0.1 by default.

microdot (pure Python, asyncio) was chosen for its memory: +0.5 MB RSS over asyncio and ssl, against +16 MB for
aiohttp; it is imported only when `[web] enabled` is true. Handlers are coroutines on the agent's loop (microdot would
run plain functions in a thread pool, where reading the fleet mid-cycle is not safe) and each is cheap: /api/status
reuses one snapshot per refresh (agent/web/snapshot.py) and charts are cached by what they depend on.

Every route is GET (HEAD): the page changes nothing. With `username` set, every request needs HTTP Basic credentials
(compared in constant time); with `cert_file`/`key_file`, the server speaks only TLS (1.2 or later). A connection
gets REQUEST_TIMEOUT_S for its request and answer, so a client that connects and says nothing costs a socket for that
long, never a task forever. A port that cannot be bound, a certificate that does not load or a password that cannot
be read costs the page, never the agent: `web.unavailable` is logged at error and nothing is served (never a page
without the login or TLS it was configured with).
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import contextlib
import hmac
import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import structlog
from microdot import Microdot, Request, Response

from agent.config import ConfigError, WebSettings
from agent.web import page
from agent.web.snapshot import PAGE_SIZE, Snapshot

if TYPE_CHECKING:
    from agent.app import AgentApp

log = structlog.get_logger("agent.web")

REQUEST_TIMEOUT_S = 10.0  # reading the request and writing the answer, per connection
LOGIN_LOG_EVERY_S = 60.0  # failed logins are counted; one line per this many seconds says how many
REALM = "vpp-agent"
SECURITY_HEADERS = {
    # the page's own script and style only: an event id or device error shown on it can never run as code
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; connect-src 'self'; "
        "base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-store",
}
SVG = "image/svg+xml; charset=UTF-8"


class BadQuery(ValueError):
    """A query parameter the page would never send; answered 400 with this one line."""


class _Server(Microdot):
    """microdot with a deadline per connection, quiet about malformed requests (a port scan must not fill the log
    with tracebacks), and its connection tasks tracked so closing the server ends them."""

    def __init__(self) -> None:
        super().__init__()
        self.connections: set[asyncio.Task[Any]] = set()

    async def handle_request(self, reader: Any, writer: Any) -> None:
        task = asyncio.current_task()
        if task is not None:
            self.connections.add(task)
        try:
            await asyncio.wait_for(self._answer(reader, writer), REQUEST_TIMEOUT_S)
        except (TimeoutError, OSError, asyncio.IncompleteReadError):
            pass  # a client that stalled or went away: nothing to answer
        finally:
            if task is not None:
                self.connections.discard(task)
            with contextlib.suppress(Exception):
                writer.close()

    async def _answer(self, reader: Any, writer: Any) -> None:
        try:
            request = await Request.create(
                self, reader, writer, writer.get_extra_info("peername"), scheme="https" if self.ssl else "http"
            )
        except (ValueError, UnicodeDecodeError, IndexError):  # a request line or header that is not HTTP
            request = None
        if request is None and reader.at_eof():
            return  # connected and closed without a request (a health probe of the port)
        response = await self.dispatch_request(request)
        await response.write(writer)
        await writer.aclose()


class WebServer:
    """What `start_web` returns; `close()` stops serving and ends open connections (idempotent, within a second)."""

    def __init__(self, server: Any = None, app: _Server | None = None, snapshot: Snapshot | None = None) -> None:
        self._server = server
        self._app = app
        self.snapshot = snapshot

    @property
    def serving(self) -> bool:
        return self._server is not None

    @property
    def address(self) -> tuple[str, int] | None:
        """(host, port) actually bound, None when not serving."""
        if self._server is None or not self._server.sockets:
            return None
        host, port = self._server.sockets[0].getsockname()[:2]
        return str(host), int(port)

    async def close(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        if self._app is not None:
            for task in list(self._app.connections):
                task.cancel()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(server.wait_closed(), 1.0)


async def start_web(app: AgentApp, settings: WebSettings) -> WebServer:
    """Serve the status page of `app` on `settings.host:port` until `close()`; a server that serves nothing when
    disabled or when it cannot start (logged as `web.unavailable`: the agent goes on without its page)."""
    if not settings.enabled:
        return WebServer()
    try:
        password = settings.password()
        tls = settings.tls_context()
    except ConfigError as exc:
        log.error("web.unavailable", host=settings.host, port=settings.port, reason=str(exc))
        return WebServer()
    except OSError as exc:  # ssl.SSLError too: a certificate or key that cannot be read or does not match
        reason = f"web.cert_file = {settings.cert_file!r}, web.key_file = {settings.key_file!r}: cannot load ({exc})"
        log.error("web.unavailable", host=settings.host, port=settings.port, reason=reason)
        return WebServer()
    snapshot = Snapshot(app, settings.refresh_s)
    server_app = build_app(snapshot, settings.username, password)
    try:
        server = await server_app.start_server(settings.host, settings.port, ssl=tls, start_serving=False)
        await server.start_serving()
    except OSError as exc:  # taken port, an address not on this host, a name that does not resolve
        log.error("web.unavailable", host=settings.host, port=settings.port, reason=str(exc))
        return WebServer()
    web = WebServer(server, server_app, snapshot)
    host, port = web.address or (settings.host, settings.port)
    log.info("web.listening", url=f"{'https' if tls else 'http'}://{host}:{port}/", login=settings.username is not None)
    return web


def build_app(snapshot: Snapshot, username: str | None, password: str | None) -> _Server:
    """The routes; with a username, every one of them behind the login."""
    server = _Server()
    guard = _Login(username, password) if username is not None and password is not None else None

    @server.before_request
    async def login(request: Request) -> Any:
        if guard is not None and not guard.allows(request):
            return "login required\n", 401, {"WWW-Authenticate": f'Basic realm="{REALM}", charset="UTF-8"'}
        return None

    @server.after_request
    async def headers(request: Request, response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @server.after_error_request
    async def error_headers(request: Request, response: Response) -> Response:
        response.headers.update(SECURITY_HEADERS)
        return response

    @server.get("/")
    @_guarded
    async def index(request: Request) -> Any:
        return page.HTML, 200, {"Content-Type": "text/html; charset=UTF-8"}

    @server.get("/app.js")
    @_guarded
    async def script(request: Request) -> Any:
        return page.SCRIPT, 200, {"Content-Type": "text/javascript; charset=UTF-8"}

    @server.get("/app.css")
    @_guarded
    async def style(request: Request) -> Any:
        return page.STYLE, 200, {"Content-Type": "text/css; charset=UTF-8"}

    @server.get("/api/status")
    @_guarded
    async def status(request: Request) -> Any:
        args = request.args
        body = snapshot.status_json(
            page=_int(args, "page", 0), per=_int(args, "per", PAGE_SIZE), query=str(args.get("q", ""))[:100],
            problems_only=args.get("problems") == "1",
        )  # fmt: skip
        return body, 200, {"Content-Type": "application/json; charset=UTF-8"}

    @server.get("/chart/plan")
    @_guarded
    async def plan_chart(request: Request) -> Any:
        return snapshot.plan_svg(), 200, {"Content-Type": SVG}

    @server.get("/chart/asset/<asset_id>")
    @_guarded
    async def asset_chart(request: Request, asset_id: str) -> Any:
        chart = snapshot.plan_svg(unquote(asset_id))
        return (chart, 200, {"Content-Type": SVG}) if chart is not None else ("no such asset in the plan\n", 404)

    @server.get("/chart/event/<event_id>")
    @_guarded
    async def event_chart(request: Request, event_id: str) -> Any:
        chart = await snapshot.event_svg(unquote(event_id))
        return (chart, 200, {"Content-Type": SVG}) if chart is not None else ("no such event in memory\n", 404)

    return server


def _guarded(handler: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """A bad query is a 400 with its reason; any other failure of a handler is logged once as an event (microdot
    would print a traceback to stderr) and answered 500, and the agent goes on."""

    async def wrapper(request: Request, *args: Any, **kwargs: Any) -> Any:
        try:
            return await handler(request, *args, **kwargs)
        except BadQuery as exc:
            return f"{exc}\n", 400
        except Exception as exc:
            log.error("web.request_failed", path=request.path, error=f"{type(exc).__name__}: {exc}", exc_info=True)
            return "internal error: see the agent's log (web.request_failed)\n", 500

    return wrapper


def _int(args: Any, name: str, default: int) -> int:
    raw = args.get(name)
    if raw is None or raw == "":
        return default
    try:
        return int(raw)
    except ValueError:
        raise BadQuery(f"query parameter {name}={str(raw)[:20]!r} is not a whole number") from None


class _Login:
    """HTTP Basic credentials checked in constant time; failures counted and logged at most once a minute."""

    def __init__(self, username: str, password: str) -> None:
        self._expected = (username.encode(), password.encode())
        self.failures = 0
        self._reported = 0
        self._next_log = 0.0

    def allows(self, request: Request) -> bool:
        given = _basic(request.headers.get("Authorization"))
        # both compared every time, so the time taken does not say which of the two was wrong
        name_ok = hmac.compare_digest(given[0], self._expected[0]) if given else False
        word_ok = hmac.compare_digest(given[1], self._expected[1]) if given else False
        if name_ok and word_ok:
            return True
        if given is not None:
            self.failures += 1
            now = time.monotonic()
            if now >= self._next_log:
                self._next_log = now + LOGIN_LOG_EVERY_S
                client = request.client_addr[0] if request.client_addr else None
                log.warning("web.login_failed", client=client, failures=self.failures - self._reported)
                self._reported = self.failures
        return False


def _basic(header: str | None) -> tuple[bytes, bytes] | None:
    """(user, password) of a Basic Authorization header, None when absent or malformed."""
    if not header or not header.startswith("Basic "):
        return None
    try:
        decoded = base64.b64decode(header[6:].strip(), validate=True)
    except (binascii.Error, ValueError):
        return None
    user, sep, password = decoded.partition(b":")
    return (user, password) if sep else None
