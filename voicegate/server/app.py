"""The aiohttp application: ``POST /offer``, ``GET /healthz``, the demo page, JSON errors everywhere."""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from aiohttp import web

from voicegate.config import Options
from voicegate.server.session import Session
from voicegate.server.signaling import OfferError, parse_offer

log = logging.getLogger(__name__)

SESSIONS = web.AppKey("sessions", dict[str, Session])
OPTIONS = web.AppKey("options", Options)
SESSION_HOOK = web.AppKey("session_hook", list[Callable[[Session], None]])

_NON_JSON_TYPES = ("multipart/", "application/x-www-form-urlencoded")

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


@web.middleware
async def json_errors(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Turn every HTTP error (404, 405, 413, …) into a JSON ``{"error": ...}`` body."""
    try:
        return await handler(request)
    except web.HTTPRequestEntityTooLarge:
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


async def offer(request: web.Request) -> web.Response:
    """Answer a WebRTC offer: ``{"sdp", "type": "offer"}`` in, ``{"sdp", "type": "answer"}`` out."""
    if request.content_type.startswith(_NON_JSON_TYPES):
        return _error(415, f"unsupported content type {request.content_type}: send application/json")
    body = await request.read()
    try:
        parsed = parse_offer(body)
    except OfferError as exc:
        return _error(exc.status, str(exc))
    options = request.app[OPTIONS]
    sessions = request.app[SESSIONS]
    def forget(closed: Session) -> None:
        sessions.pop(closed.call_id, None)

    session = Session(options, on_closed=forget)
    sessions[session.call_id] = session
    for hook in request.app[SESSION_HOOK]:
        hook(session)
    try:
        answer = await session.accept(parsed.sdp)
    except Exception as exc:
        await session.close()
        log.info("rejected offer: %s", exc)
        return _error(400, f"SDP could not be applied: {exc}")
    log.info("call=%s answered offer from %s", session.call_id, request.remote)
    return web.json_response({"sdp": answer.sdp, "type": answer.type, "call_id": session.call_id})


async def healthz(request: web.Request) -> web.Response:
    """Liveness plus the number of live calls."""
    return web.json_response({"status": "ok", "sessions": len(request.app[SESSIONS])})


async def index(request: web.Request) -> web.FileResponse:
    """The demo page."""
    return web.FileResponse(request.app[OPTIONS].server.web_dir / "index.html")


async def _close_sessions(app: web.Application) -> None:
    for session in list(app[SESSIONS].values()):
        await session.close()


def create_app(options: Options | None = None) -> web.Application:
    """Build the application; sessions are closed on shutdown."""
    options = options or Options()
    app = web.Application(middlewares=[json_errors], client_max_size=options.server.max_body_bytes)
    app[OPTIONS] = options
    app[SESSIONS] = {}
    app[SESSION_HOOK] = []
    app.router.add_post("/offer", offer)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/", index)
    app.router.add_static("/static/", options.server.web_dir)
    app.on_shutdown.append(_close_sessions)
    return app
