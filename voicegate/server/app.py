"""The aiohttp application: ``POST /offer``, ``GET /healthz``, ``GET /readyz``, ``GET /metrics``, the demo page.

Every error is JSON ``{"error": ...}`` with a precise message; nothing a client sends can crash the server or
touch another call.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from aiohttp import web

from voicegate.call.core import CallCore, shared_models
from voicegate.config import Options
from voicegate.server.metrics import Metrics
from voicegate.server.session import Session
from voicegate.server.signaling import OfferError, parse_offer

if TYPE_CHECKING:
    from voicegate.server.ws import SocketCall

log = logging.getLogger(__name__)

SESSIONS = web.AppKey("sessions", dict[str, CallCore])
"""Every live call, whatever its transport (capacity counts them all)."""
OPTIONS = web.AppKey("options", Options)
METRICS = web.AppKey("metrics", Metrics)
SESSION_HOOK = web.AppKey("session_hook", list[Callable[[CallCore], None]])
RATE = web.AppKey("rate", dict[str, deque[float]])
PRELOAD = web.AppKey("preload", list[asyncio.Future[Any]])
"""The models' load started with the server (one future, once started): ``/readyz`` says 503 (``warming``) until it
is done."""
TOKEN_IN_START = web.RequestKey("token_in_start", bool)
"""Set on a ``/twilio`` request whose token is checked in the Media Streams ``start`` message instead."""

_JSON_TYPES = ("application/json", "text/plain", "application/octet-stream")
"""``application/octet-stream`` is what aiohttp reports when a client sends no Content-Type at all."""
_PROTECTED = ("/offer", "/metrics", "/ws", "/twilio")
_QUERY_TOKEN = ("/ws", "/twilio")
"""Routes whose clients may not be able to set headers (telephony bridges, browsers' WebSocket): ``?token=``."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str, **headers: str) -> web.Response:
    return web.json_response({"error": message}, status=status, headers=headers or None)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every HTTP error (404, 405, 413, …) into a JSON ``{"error": ...}`` body."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
        request.app[METRICS].offers.labels("too_large").inc()
        return _error(413, f"body too large: at most {request.app[OPTIONS].server.max_body_bytes} bytes")
    except web.HTTPMethodNotAllowed as exc:
        response = _error(405, f"method {request.method} not allowed on {request.path}")
        response.headers["Allow"] = ",".join(sorted(exc.allowed_methods))
        return response
    except web.HTTPNotFound:
        return _error(404, f"no route {request.path}")
    except web.HTTPException as exc:
        if exc.status >= 400:
            return _error(exc.status, exc.reason)
        raise


@web.middleware
async def cors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Answer preflights and tag responses for the configured browser origins."""
    allowed = request.app[OPTIONS].server.cors_origins
    origin = request.headers.get("Origin")
    ok = origin is not None and ("*" in allowed or origin in allowed)
    if request.method == "OPTIONS" and ok and "Access-Control-Request-Method" in request.headers:
        response: web.StreamResponse = web.Response(status=204)
    else:
        response = await handler(request)
    if ok and origin is not None:
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Vary"] = "Origin"
        response.headers["Access-Control-Allow-Methods"] = "GET, POST, OPTIONS"
        response.headers["Access-Control-Allow-Headers"] = "Content-Type, Authorization"
    return response


@web.middleware
async def auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    """With ``VOICEGATE_TOKEN`` set, ``POST /offer`` and ``GET /metrics`` need ``Authorization: Bearer <token>``."""
    token = request.app[OPTIONS].server.token
    if token and request.path in _PROTECTED and request.method != "OPTIONS":
        given = request.headers.get("Authorization", "")
        if not given and request.path in _QUERY_TOKEN and "token" in request.query:
            given = f"Bearer {request.query['token']}"
        if not given and request.path == "/twilio":
            # Twilio's <Stream> URL takes no query string: the token comes in the start message's
            # customParameters (<Parameter name="token" .../>), checked by the call before anything else.
            request[TOKEN_IN_START] = True
            return await handler(request)
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            if request.path == "/offer":
                request.app[METRICS].offers.labels("unauthorized").inc()
            return _error(401, "missing or wrong bearer token (Authorization: Bearer <VOICEGATE_TOKEN>"
                               + (", or ?token=<VOICEGATE_TOKEN>" if request.path in _QUERY_TOKEN else "") + ")",
                          **{"WWW-Authenticate": 'Bearer realm="voicegate"'})
    return await handler(request)


def _rate_limited(request: web.Request) -> bool:
    limit = request.app[OPTIONS].server.offers_per_minute
    if limit <= 0:
        return False
    now = time.monotonic()
    window = request.app[RATE][request.remote or "-"]
    while window and now - window[0] > 60.0:
        window.popleft()
    if len(window) >= limit:
        return True
    window.append(now)
    return False


async def offer(request: web.Request) -> web.Response:
    """Answer a WebRTC offer: ``{"sdp", "type": "offer"}`` in, ``{"sdp", "type": "answer", "call_id"}`` out."""
    metrics = request.app[METRICS]
    options = request.app[OPTIONS]
    sessions = request.app[SESSIONS]
    if request.content_type not in _JSON_TYPES:
        metrics.offers.labels("unsupported_type").inc()
        return _error(415, f"unsupported content type {request.content_type}: send application/json")
    if _rate_limited(request):
        metrics.offers.labels("rate_limited").inc()
        return _error(429, f"more than {options.server.offers_per_minute} offers a minute from {request.remote}",
                      **{"Retry-After": "10"})
    body = await request.read()
    try:
        parsed = parse_offer(body)
    except OfferError as exc:
        metrics.offers.labels("bad_request").inc()
        return _error(exc.status, str(exc))
    if len(sessions) >= options.server.max_sessions:
        metrics.offers.labels("over_capacity").inc()
        return _error(503, f"at capacity: {options.server.max_sessions} calls (VOICEGATE_MAX_SESSIONS)",
                      **{"Retry-After": "5"})

    session = Session(options, on_closed=_forget(request.app))
    _register(request.app, session)
    try:
        answer = await session.accept(parsed.sdp)
    except Exception as exc:
        await session.close()
        metrics.offers.labels("bad_request").inc()
        log.info("rejected offer from %s: %s", request.remote, exc)
        return _error(400, f"SDP could not be applied: {exc}")
    metrics.offers.labels("answered").inc()
    log.info("call=%s answered offer from %s", session.call_id, request.remote)
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "call_id": session.call_id})


def _forget(app: web.Application) -> Callable[[CallCore], None]:
    def forget(closed: CallCore) -> None:
        app[SESSIONS].pop(closed.call_id, None)
        app[METRICS].active_sessions.set(len(app[SESSIONS]))
        app[METRICS].active_calls.labels(closed.transport).dec()

    return forget


def _register(app: web.Application, call: CallCore) -> None:
    """Count a new call (any transport) against capacity and wire it to ``/metrics``."""
    metrics = app[METRICS]
    app[SESSIONS][call.call_id] = call
    metrics.active_sessions.set(len(app[SESSIONS]))
    metrics.calls.labels(call.transport).inc()
    metrics.active_calls.labels(call.transport).inc()
    call.events.add_listener(metrics.observe)
    call.playout.late_observer = metrics.playout_late.observe
    call.cpu_observer = metrics.observe_stage
    call.lag_observer = metrics.observe_detector_lag
    for hook in app[SESSION_HOOK]:
        hook(call)


async def _socket_call(request: web.Request, make_call: Callable[[web.WebSocketResponse], SocketCall],
                       upgrade_hint: str) -> web.StreamResponse:
    """The guards of ``POST /offer`` before the upgrade (rate, capacity), then one call over the socket."""
    from voicegate.server.ws import MAX_MESSAGE_BYTES

    options = request.app[OPTIONS]
    if _rate_limited(request):
        return _error(429, f"more than {options.server.offers_per_minute} calls a minute from {request.remote}",
                      **{"Retry-After": "10"})
    if len(request.app[SESSIONS]) >= options.server.max_sessions:
        return _error(503, f"at capacity: {options.server.max_sessions} calls (VOICEGATE_MAX_SESSIONS)",
                      **{"Retry-After": "5"})
    # No permessage-deflate: audio barely compresses, and deflating every 20 ms frame (and inflating every one the
    # client sends) cost more CPU than the rest of the socket path.
    socket = web.WebSocketResponse(max_msg_size=MAX_MESSAGE_BYTES, heartbeat=20.0, compress=False)
    if not socket.can_prepare(request).ok:
        return _error(426, f"GET {request.path} expects a WebSocket upgrade ({upgrade_hint})")
    await socket.prepare(request)
    call = make_call(socket)
    _register(request.app, call)
    log.info("call=%s %s call from %s", call.call_id, call.transport, request.remote)
    await call.serve()
    request.app[METRICS].ws_closed.labels(str(call.close_code or 1000)).inc()
    return socket


async def ws_call(request: web.Request) -> web.StreamResponse:
    """``GET /ws``: a call over one WebSocket (protocol: :mod:`voicegate.server.ws`)."""
    from voicegate.server.ws import WsCall

    options = request.app[OPTIONS]
    return await _socket_call(request, lambda socket: WsCall(options, socket, on_closed=_forget(request.app)),
                              "Connection: Upgrade, Upgrade: websocket")


async def twilio_call(request: web.Request) -> web.StreamResponse:
    """``GET /twilio``: a phone call through Twilio Media Streams (protocol: :mod:`voicegate.server.twilio`)."""
    from voicegate.server.twilio import TwilioCall

    options = request.app[OPTIONS]
    token = options.server.token if request.get(TOKEN_IN_START) else None
    return await _socket_call(
        request, lambda socket: TwilioCall(options, socket, on_closed=_forget(request.app), token=token),
        'Twilio <Stream url="wss://...">')


def warming(app: web.Application) -> bool:
    """Whether the models are still loading (a call placed now waits for them; a failed load counts as done: each
    call retries it and says why it failed)."""
    return any(not load.done() for load in app.get(PRELOAD, []))


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus the number of live calls, whether another fits and whether the models are still loading
    (never needs the token)."""
    sessions, limit = len(request.app[SESSIONS]), request.app[OPTIONS].server.max_sessions
    return web.json_response({"status": "ok", "sessions": sessions, "max_sessions": limit,
                              "full": sessions >= limit, "warming": warming(request.app)})


async def readyz(request: web.Request) -> web.Response:
    """200 while another call fits and the models are loaded; 503 when full or still ``warming``: what a load
    balancer checks before sending an offer here (a server that has just started takes no call before its models
    are in memory, so no caller waits seconds for them)."""
    sessions, limit = len(request.app[SESSIONS]), request.app[OPTIONS].server.max_sessions
    loading = warming(request.app)
    ready = sessions < limit and not loading
    return web.json_response({"ready": ready, "sessions": sessions, "max_sessions": limit, "warming": loading},
                             status=200 if ready else 503)


async def metrics_endpoint(request: web.Request) -> web.Response:
    """Prometheus exposition."""
    body = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


async def index(request: web.Request) -> web.FileResponse:
    """The demo page."""
    return web.FileResponse(request.app[OPTIONS].server.web_dir / "index.html")


async def _close_sessions(app: web.Application) -> None:
    for session in list(app[SESSIONS].values()):
        await session.close()


def guarded_app(options: Options, metrics: Metrics) -> web.Application:
    """An application with the public guards (errors as JSON, CORS, token, body size, per-client rate) and the demo
    page; the caller adds the API routes. Shared by a worker and the ``--workers`` supervisor."""
    app = web.Application(middlewares=[json_errors, cors, auth], client_max_size=options.server.max_body_bytes)
    app[OPTIONS] = options
    app[METRICS] = metrics
    rate: dict[str, deque[float]] = defaultdict(deque)
    app[RATE] = rate
    app.router.add_get("/", index)
    app.router.add_static("/static/", options.server.web_dir)
    return app


def create_app(options: Options | None = None) -> web.Application:
    """Build the application; every call is closed on shutdown."""
    options = options or Options()
    app = guarded_app(options, Metrics())
    app[SESSIONS] = {}
    app[SESSION_HOOK] = []
    app.router.add_post("/offer", offer)
    app.router.add_get("/ws", ws_call)
    app.router.add_get("/twilio", twilio_call)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics_endpoint)
    app[PRELOAD] = []
    app.on_startup.append(_preload_models)
    app.on_shutdown.append(_close_sessions)
    return app


async def _preload_models(app: web.Application) -> None:
    """Load the shared models in the background as the server starts, so the first calls neither wait for them nor
    pay for them (a call that comes sooner waits for the same load)."""
    loop = asyncio.get_running_loop()
    task = loop.run_in_executor(None, shared_models, app[OPTIONS].turn)
    task.add_done_callback(_preloaded)
    app[PRELOAD].append(task)


def _preloaded(future: asyncio.Future[Any]) -> None:
    if not future.cancelled() and future.exception() is not None:
        log.error("preloading the models failed (each call will retry): %s", future.exception())
