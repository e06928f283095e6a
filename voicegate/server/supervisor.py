"""``voicegate serve --workers N``: one HTTP port, N worker processes, every core used.

A call's media is a peer-to-peer UDP flow between the browser and the process that answered its offer, so only the
offer has to be routed. The supervisor owns the public port and the same guards as a single server (token, CORS,
rate limit, body size); it forwards each ``POST /offer`` to the worker with the most free capacity (each worker
listens on its own loopback port, and its answer carries its own ICE candidates, so the media goes straight to it).
A worker at capacity is never offered a call another worker could take; when every worker is full the supervisor
answers 503 itself.

A ``GET /ws`` or ``GET /twilio`` call carries its audio over its own TCP connection, so after the same guards and
capacity pick the supervisor hands that connection to the worker (:mod:`voicegate.server.handoff`: the socket's
descriptor and the request head over the worker's Unix socket, in a private 0700 directory). The worker answers the
upgrade and serves the call as if the client had connected to it (its token check, capacity guard, close codes;
``request.remote`` is the client), and the supervisor lets go of the connection without writing to it: no call's
audio passes through the supervisor. Where the hand-off cannot be made (the worker's socket missing or refusing,
bytes already read past the head, no ``SCM_RIGHTS``) the supervisor relays the call's messages instead, close
codes and reasons included.

- ``GET /healthz``: the sum over workers, plus ``workers`` alive and ``max_sessions`` (all workers together).
- ``GET /readyz``: 200 while a worker whose models are loaded has room for a call, 503 when every worker is full or
  still loading its models (``warming``; for load balancers).
- ``GET /metrics``: every worker's series labelled ``worker="i"``, then the supervisor's own.
- A worker that dies is restarted on a new port (its calls are gone with it: their peers see the connection end);
  ``SIGTERM`` stops every worker, each of which closes its calls cleanly, then the supervisor.
"""

from __future__ import annotations

import asyncio
import logging
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import WSMsgType, web
from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest

from voicegate.build import register_build_info
from voicegate.config import HANDOFF_SOCKET_ENV, Options
from voicegate.server import handoff
from voicegate.server.app import OPTIONS, _error, _rate_limited, guarded_app
from voicegate.server.metrics import Metrics

log = logging.getLogger(__name__)

WORKER_START_SECS = 60.0
_SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{[^}]*\})?( .*)$")
POLL_SECS = 1.0
"""How often each worker's ``/healthz`` is read (its calls, ``warming``, whether it answers;
``VOICEGATE_SUPERVISOR_POLL_SECS``). Routing does not wait on it: calls answered since a poll are counted at once, a
dead worker is seen by its exit, and when no warm worker seems to have room the workers are asked again before a
call is refused or ``/readyz`` says 503 (:meth:`Supervisor.pick_fresh`). At 0.25 s the idle tree cost 1.7–2.0 % of
a core against 0.95–1.1 % at 1 s (2 workers, no calls; README, "cost per call and capacity")."""
REFRESH_MIN_SECS = 0.1
""":meth:`Supervisor.pick_fresh` asks the workers again at most this often (a burst of calls at capacity shares one
round of ``/healthz``)."""


def poll_secs() -> float:
    """``VOICEGATE_SUPERVISOR_POLL_SECS`` (default :data:`POLL_SECS`)."""
    return float(os.environ.get("VOICEGATE_SUPERVISOR_POLL_SECS", str(POLL_SECS)))


@dataclass
class Worker:
    """One ``voicegate serve`` worker process on a loopback port."""

    index: int
    port: int = 0
    proc: asyncio.subprocess.Process | None = None
    sessions: int = 0
    """Its calls as routing counts them: the last poll's figure plus calls answered since that poll began."""
    reported: int = 0
    """Its calls as its last ``/healthz`` said."""
    pending: int = 0
    """Offers forwarded and not yet answered (counted against its capacity until ``/healthz`` shows them)."""
    ready: bool = False
    warming: bool = True
    """Its models are still loading (its last ``/healthz`` said so): it takes calls only when no warm worker has
    room, and it does not make the supervisor ready."""
    answered_at: list[float] = field(default_factory=list)
    """When offers it answered came back: a ``/healthz`` poll that started earlier may not count those calls."""
    restarts: int = 0
    started: float = field(default_factory=time.monotonic)
    handoff_socket: Path | None = None
    """The Unix socket it takes ``/ws`` and ``/twilio`` connections on (None: relay them)."""

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"


class Supervisor:
    """Starts, watches, routes to and stops the workers."""

    def __init__(self, options: Options, workers: int) -> None:
        self.options = options
        self.workers = [Worker(i) for i in range(workers)]
        self.http: aiohttp.ClientSession | None = None
        self.closing = False
        self._handoff_dir: Path | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self.poll_secs = poll_secs()
        self._refreshing: asyncio.Future[None] | None = None
        self._refreshed_at = -REFRESH_MIN_SECS
        self.registry = CollectorRegistry()
        self.routed = Counter("voicegate_supervisor_offers", "Offers by outcome at the supervisor", ["outcome"],
                              registry=self.registry)
        self.alive = Gauge("voicegate_supervisor_workers_alive", "Workers answering /healthz", registry=self.registry)
        register_build_info(self.registry)
        self.restarts = Counter("voicegate_supervisor_worker_restarts", "Workers restarted after dying",
                                registry=self.registry)

    @property
    def capacity(self) -> int:
        """Calls all live workers can hold together."""
        return self.options.server.max_sessions * sum(w.ready for w in self.workers)

    @property
    def sessions(self) -> int:
        """Live calls over all workers, as they last reported them."""
        return sum(w.reported for w in self.workers if w.ready)

    async def start(self) -> None:
        """Start every worker and wait until each answers ``/healthz``."""
        self.http = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=30))
        if handoff.supported():
            self._handoff_dir = Path(tempfile.mkdtemp(prefix="voicegate-handoff-"))  # mode 0700
        await asyncio.gather(*(self._spawn(w) for w in self.workers))
        self._tasks = [asyncio.ensure_future(self._poll())] + [
            asyncio.ensure_future(self._watch(w)) for w in self.workers]

    async def _spawn(self, worker: Worker) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            worker.port = s.getsockname()[1]
        worker.ready, worker.warming, worker.sessions, worker.reported, worker.pending = False, True, 0, 0, 0
        worker.answered_at = []
        worker.started = time.monotonic()
        env = {**os.environ, "VOICEGATE_OFFERS_PER_MINUTE": "0", "VOICEGATE_WORKER_INDEX": str(worker.index)}
        if self._handoff_dir is not None:
            worker.handoff_socket = self._handoff_dir / f"worker-{worker.index}.sock"
            env[HANDOFF_SOCKET_ENV] = str(worker.handoff_socket)
        worker.proc = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "voicegate", "serve", "--workers", "1", "--host", "127.0.0.1",
            "--port", str(worker.port), "--max-sessions", str(self.options.server.max_sessions),
            *(a for url in self.options.server.ice_servers for a in ("--ice-server", url)),
            env=env, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + WORKER_START_SECS
        while time.monotonic() < deadline and worker.proc.returncode is None:
            if await self._check(worker):
                log.info("worker %d ready on port %d (pid %d)", worker.index, worker.port, worker.proc.pid)
                return
            await asyncio.sleep(0.1)
        log.error("worker %d did not come up on port %d", worker.index, worker.port)

    async def _check(self, worker: Worker) -> bool:
        assert self.http is not None
        started = time.monotonic()
        try:
            async with self.http.get(f"{worker.url}/healthz", timeout=aiohttp.ClientTimeout(total=2)) as res:
                body = await res.json()
        except (TimeoutError, aiohttp.ClientError, ValueError):
            worker.ready = False
            return False
        # Calls answered after this poll began may be missing from its count: keep counting them until a later
        # poll (which certainly includes them) — never under-count a worker's load.
        worker.answered_at = [t for t in worker.answered_at if t > started]
        worker.reported = int(body.get("sessions", 0))
        worker.sessions = worker.reported + len(worker.answered_at)
        worker.warming = bool(body.get("warming", False))
        worker.ready = True
        return True

    async def _check_all(self) -> None:
        await asyncio.gather(*(self._check(w) for w in self.workers if w.proc and w.proc.returncode is None))
        self.alive.set(sum(w.ready for w in self.workers))

    async def _poll(self) -> None:
        while not self.closing:
            await self._check_all()
            await asyncio.sleep(self.poll_secs)

    async def refresh(self) -> None:
        """Ask every worker for its ``/healthz`` now (joining a round already under way; at most one round per
        :data:`REFRESH_MIN_SECS`)."""
        task = self._refreshing
        if task is None or task.done():
            if time.monotonic() - self._refreshed_at < REFRESH_MIN_SECS:
                return
            self._refreshed_at = time.monotonic()
            task = self._refreshing = asyncio.ensure_future(self._check_all())
        await asyncio.shield(task)

    async def _watch(self, worker: Worker) -> None:
        """Restart ``worker`` whenever it dies, until the supervisor is closing."""
        while not self.closing:
            assert worker.proc is not None
            code = await worker.proc.wait()
            worker.ready = False
            if self.closing:
                return
            log.error("worker %d (pid %d) exited with %s: restarting it; its calls have ended", worker.index,
                      worker.proc.pid, code)
            worker.restarts += 1
            self.restarts.inc()
            await self._spawn(worker)

    def pick(self) -> list[Worker]:
        """Live workers with room for one more call: those whose models are loaded first, most free first."""
        limit = self.options.server.max_sessions
        free = [w for w in self.workers if w.ready and w.sessions + w.pending < limit]
        return sorted(free, key=lambda w: (w.warming, w.sessions + w.pending, w.index))

    async def pick_fresh(self) -> list[Worker]:
        """:meth:`pick`; when it finds no warm worker with room, the workers are asked again first — a call may
        have ended, or a worker's models finished loading, since the last poll (:data:`POLL_SECS`)."""
        free = self.pick()
        if not any(not w.warming for w in free):
            await self.refresh()
            free = self.pick()
        return free

    async def forward_offer(self, body: bytes, headers: dict[str, str]) -> web.Response:
        """Send the offer to the freest worker; on a race (its 503) try the next one."""
        assert self.http is not None
        for worker in await self.pick_fresh():
            worker.pending += 1
            try:
                async with self.http.post(f"{worker.url}/offer", data=body, headers=headers) as res:
                    payload = await res.read()
                    status = res.status
                    content_type = res.headers.get("Content-Type", "application/json")
            except (TimeoutError, aiohttp.ClientError) as exc:
                log.warning("worker %d did not answer an offer: %s", worker.index, exc)
                continue
            finally:
                worker.pending -= 1
            if status == 503:
                continue
            if status == 200:
                worker.answered_at.append(time.monotonic())
                worker.sessions += 1
            self.routed.labels("answered" if status == 200 else f"http_{status}").inc()
            return web.Response(body=payload, status=status, headers={"Content-Type": content_type})
        return self.full()

    def full(self) -> web.Response:
        """The 503 for a call no worker has room for (counted)."""
        self.routed.labels("over_capacity").inc()
        return _error(503, f"at capacity: {self.capacity} calls on {sum(w.ready for w in self.workers)} workers "
                           f"(VOICEGATE_MAX_SESSIONS per worker, --workers)", **{"Retry-After": "5"})

    async def metrics_text(self) -> str:
        """Every worker's exposition with a ``worker`` label, then the supervisor's own series."""
        assert self.http is not None
        seen: set[str] = set()
        lines: list[str] = []
        headers = {"Authorization": f"Bearer {self.options.server.token}"} if self.options.server.token else {}
        for worker in self.workers:
            if not worker.ready:
                continue
            try:
                async with self.http.get(f"{worker.url}/metrics", headers=headers) as res:
                    text = await res.text()
            except (TimeoutError, aiohttp.ClientError):
                continue
            for line in text.splitlines():
                if line.startswith("#"):
                    if line not in seen:
                        seen.add(line)
                        lines.append(line)
                    continue
                match = _SAMPLE.match(line)
                if not match:
                    continue
                name, labels, rest = match.groups()
                inner = labels[1:-1] if labels else ""
                label = f'worker="{worker.index}"' + (f",{inner}" if inner else "")
                lines.append(f"{name}{{{label}}}{rest}")
        return "\n".join(lines) + "\n" + generate_latest(self.registry).decode()

    async def stop(self) -> None:
        """``SIGTERM`` every worker (each closes its calls), wait for them, then stop polling."""
        self.closing = True
        procs = [w.proc for w in self.workers if w.proc is not None and w.proc.returncode is None]
        for proc in procs:
            proc.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*(asyncio.wait_for(p.wait(), 20) for p in procs), return_exceptions=True)
        for proc, result in zip(procs, results, strict=True):
            if isinstance(result, BaseException):
                proc.kill()
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        if self.http is not None:
            await self.http.close()
        if self._handoff_dir is not None:
            shutil.rmtree(self._handoff_dir, ignore_errors=True)


SUPERVISOR = web.AppKey("supervisor", Supervisor)


async def _relay(source: Any, sink: Any) -> tuple[int | None, str]:
    """Copy messages from ``source`` to ``sink`` until ``source`` closes; returns its close code and reason."""
    while True:
        message = await source.receive()
        if message.type == WSMsgType.TEXT:
            await sink.send_str(message.data)
        elif message.type == WSMsgType.BINARY:
            await sink.send_bytes(message.data)
        elif message.type == WSMsgType.CLOSE:
            return message.data, str(message.extra or "")
        elif message.type in (WSMsgType.CLOSING, WSMsgType.CLOSED, WSMsgType.ERROR):
            return source.close_code, ""


def _over_rate(request: web.Request) -> web.Response | None:
    """The 429 for a client over the per-address call rate (counted), or None."""
    if not _rate_limited(request):
        return None
    request.app[SUPERVISOR].routed.labels("rate_limited").inc()
    limit = request.app[OPTIONS].server.offers_per_minute
    return _error(429, f"more than {limit} calls a minute from {request.remote}", **{"Retry-After": "10"})


async def _websocket(request: web.Request) -> web.StreamResponse:
    """``/ws`` and ``/twilio``: after the same guards and capacity check as an offer, the client's connection itself
    is handed to a worker (:mod:`voicegate.server.handoff`), which answers the upgrade and serves the call; when
    that cannot be done the supervisor relays the call's messages instead."""
    sup = request.app[SUPERVISOR]
    if (refused := _over_rate(request)) is not None:
        return refused
    workers = await sup.pick_fresh()
    if not workers:
        return sup.full()
    worker = workers[0]
    if not _is_upgrade(request):
        return _error(426, f"GET {request.path} expects a WebSocket upgrade (Connection: Upgrade, Upgrade: websocket)")
    handed_off = await _hand_off(sup, worker, request)
    if handed_off is not None:
        return handed_off
    return await _relay_call(sup, worker, request)


def _is_upgrade(request: web.Request) -> bool:
    """Whether ``request`` asks for a WebSocket (the worker checks the rest of the handshake)."""
    connection = {token.strip().lower() for token in request.headers.get("Connection", "").split(",")}
    return "upgrade" in connection and request.headers.get("Upgrade", "").lower() == "websocket"


async def _hand_off(sup: Supervisor, worker: Worker, request: web.Request) -> web.StreamResponse | None:
    """Pass the connection to ``worker``; None when it is still the supervisor's to serve (relay it)."""
    transport = request.transport
    reason = "the worker has no hand-off socket" if worker.handoff_socket is None else handoff.unsent_reason(request)
    if reason is not None or transport is None or worker.handoff_socket is None:
        log.debug("relaying %s from %s to worker %d: %s", request.path, request.remote, worker.index, reason)
        return None
    was_reading = transport.is_reading()
    transport.pause_reading()  # from here every byte the client sends stays in the kernel for the worker
    if (reason := handoff.unsent_reason(request)) is None:
        worker.pending += 1
        try:
            await handoff.send_connection(worker.handoff_socket, request)
        except handoff.HandoffError as exc:
            if exc.delivered:  # the worker may be serving it: neither serve it here nor close it loudly
                log.warning("hand-off of %s to worker %d unconfirmed (%s): dropping it", request.path,
                            worker.index, exc)
                sup.routed.labels("handoff_unconfirmed").inc()
                return handoff.let_go(request)
            reason = str(exc)
        else:
            worker.answered_at.append(time.monotonic())
            worker.sessions += 1
            sup.routed.labels("answered").inc()
            log.debug("handed %s from %s to worker %d", request.path, request.remote, worker.index)
            return handoff.let_go(request)
        finally:
            worker.pending -= 1
    if was_reading:
        transport.resume_reading()
    log.debug("relaying %s from %s to worker %d: %s", request.path, request.remote, worker.index, reason)
    return None


async def _relay_call(sup: Supervisor, worker: Worker, request: web.Request) -> web.StreamResponse:
    """Serve the call by relaying its messages to and from ``worker`` (close codes and reasons included)."""
    assert sup.http is not None
    headers = {k: v for k, v in request.headers.items() if k == "Authorization"}
    worker.pending += 1
    try:
        upstream = await sup.http.ws_connect(f"{worker.url}{request.path_qs}", headers=headers, compress=0,
                                             max_msg_size=0)
    except aiohttp.WSServerHandshakeError as exc:
        return _error(exc.status, f"the worker refused the call: {exc.message}")
    except (TimeoutError, aiohttp.ClientError) as exc:
        return _error(503, f"no worker could take the call: {exc}", **{"Retry-After": "5"})
    finally:
        worker.pending -= 1
    worker.answered_at.append(time.monotonic())
    worker.sessions += 1
    sup.routed.labels("answered").inc()
    client = web.WebSocketResponse(max_msg_size=0, compress=False)  # no permessage-deflate, as in the workers
    await client.prepare(request)
    down = asyncio.ensure_future(_relay(upstream, client))
    up = asyncio.ensure_future(_relay(client, upstream))
    done, _ = await asyncio.wait({down, up}, return_when=asyncio.FIRST_COMPLETED)
    if down in done:  # the worker ended the call: pass its code and reason on
        code, reason = down.result() if not down.exception() else (1011, "the worker's socket failed")
        await client.close(code=code or 1000, message=reason.encode()[:120])
        await asyncio.gather(up, return_exceptions=True)
    else:
        await upstream.close()
        await asyncio.gather(down, return_exceptions=True)
    return client


async def _offer(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    if (refused := _over_rate(request)) is not None:
        return refused
    body = await request.read()
    headers = {k: v for k, v in request.headers.items() if k in ("Content-Type", "Authorization")}
    return await sup.forward_offer(body, headers)


async def _healthz(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    return web.json_response({"status": "ok", "sessions": sup.sessions, "max_sessions": sup.capacity,
                              "full": not sup.pick(), "workers": sum(w.ready for w in sup.workers),
                              "warming": sum(w.ready and w.warming for w in sup.workers),
                              "worker_restarts": sum(w.restarts for w in sup.workers)})


async def _readyz(request: web.Request) -> web.Response:
    sup = request.app[SUPERVISOR]
    free = await sup.pick_fresh()
    ready = any(not w.warming for w in free)
    return web.json_response({"ready": ready, "sessions": sup.sessions, "max_sessions": sup.capacity,
                              "warming": bool(free) and not ready}, status=200 if ready else 503)


async def _metrics(request: web.Request) -> web.Response:
    text = await request.app[SUPERVISOR].metrics_text()
    return web.Response(text=text, headers={"Content-Type": "text/plain; version=0.0.4; charset=utf-8"})


def create_supervisor_app(options: Options, workers: int) -> web.Application:
    """The public application of ``voicegate serve --workers N`` (N ≥ 2)."""
    sup = Supervisor(options, workers)
    # The guards (token, body size) count their refusals on the supervisor's own offers counter.
    guard_metrics = Metrics()
    guard_metrics.offers = sup.routed
    app = guarded_app(options, guard_metrics)
    app[SUPERVISOR] = sup
    app.router.add_post("/offer", _offer)
    app.router.add_get("/ws", _websocket)
    app.router.add_get("/twilio", _websocket)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    app.router.add_get("/metrics", _metrics)

    async def on_startup(_app: web.Application) -> None:
        await sup.start()

    async def on_shutdown(_app: web.Application) -> None:
        await sup.stop()

    app.on_startup.append(on_startup)
    app.on_shutdown.append(on_shutdown)
    return app
