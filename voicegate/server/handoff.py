"""Handing an accepted client connection from the ``--workers`` supervisor to a worker (``SCM_RIGHTS``).

The supervisor reads a ``GET /ws`` or ``GET /twilio`` upgrade request's head, picks a worker, and sends the worker
the connection's file descriptor together with the head over the worker's Unix domain socket. The worker adopts the
connection into its own aiohttp server as if it had accepted it and replays the head, so its handler, guards and
close codes apply unchanged, ``request.remote`` is the real client, and the call's bytes never pass through the
supervisor. The supervisor then drops its copy of the descriptor without writing to the connection or shutting it
down (the connection lives on while the worker holds its copy).

Wire format, one Unix connection per hand-off: the supervisor sends a 4-byte big-endian length and the head, the
descriptor attached to the first bytes; the worker answers one byte, :data:`ACCEPTED` once its server owns the
connection or :data:`DECLINED` when it closed its copy unread (the supervisor may then serve the call itself).
Needs ``socket.send_fds`` (``SCM_RIGHTS`` on Unix domain sockets: Linux, the BSDs, macOS).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import struct
from collections.abc import Awaitable, Callable
from pathlib import Path

from aiohttp import web

from voicegate.tasks import TaskOwner

log = logging.getLogger(__name__)

HEAD_MAX_BYTES = 64 * 1024
"""Largest request head handed off (aiohttp's own limits allow 128 header lines of 8 KB; real ones are < 2 KB)."""
ACK_TIMEOUT_SECS = 5.0
RECEIVE_TIMEOUT_SECS = 5.0
ACCEPTED = b"\x01"
DECLINED = b"\x00"
_LENGTH = struct.Struct("!I")

ProtocolFactory = Callable[[], web.RequestHandler]


class HandoffError(Exception):
    """The worker did not take the connection.

    Attributes:
        delivered: whether the worker may hold the connection anyway (its answer never came), in which case the
            supervisor must neither serve it nor close it loudly.
    """

    def __init__(self, message: str, delivered: bool) -> None:
        super().__init__(message)
        self.delivered = delivered


def supported() -> bool:
    """Whether this platform can pass descriptors over Unix domain sockets."""
    return hasattr(socket, "AF_UNIX") and hasattr(socket, "send_fds")


def unsent_reason(request: web.Request) -> str | None:
    """Why ``request``'s connection cannot be handed off as it stands, or None when it can.

    It can when it is a WebSocket upgrade whose head is all aiohttp has read: the client waits for the 101 before it
    sends a frame, so anything buffered past the head (or a body) is served by the supervisor instead.
    """
    protocol = request.protocol
    transport = request.transport
    if not supported():
        return "no SCM_RIGHTS on this platform"
    if transport is None or transport.get_extra_info("socket") is None:
        return "the connection is closing"
    if transport.get_extra_info("sslcontext") is not None:
        return "TLS connection"
    # Private aiohttp state (3.x): the bytes read past an upgrade request's head, and pipelined requests.
    if getattr(protocol, "_upgraded", None) is not True:
        return "not an upgrade request"
    if getattr(protocol, "_message_tail", None) != b"" or getattr(protocol, "_messages", None):
        return "bytes already read past the request head"
    if request.body_exists:
        return "the request has a body"
    return None


def request_head(request: web.Request) -> bytes:
    """The request line and headers as the client sent them (the request target unchanged, raw header bytes)."""
    target = request.raw_path.encode("utf-8", "surrogateescape")
    lines = [b"%s %s HTTP/%d.%d" % (request.method.encode("ascii"), target, *request.version)]
    lines += [name + b": " + value for name, value in request.raw_headers]
    return b"\r\n".join(lines) + b"\r\n\r\n"


async def send_connection(path: Path, request: web.Request, timeout_secs: float = ACK_TIMEOUT_SECS) -> None:
    """Hand ``request``'s connection to the worker listening on ``path``; reading on it must be paused.

    Raises:
        HandoffError: the worker did not take it (``delivered`` says whether it may hold it anyway).
    """
    transport = request.transport
    raw = transport.get_extra_info("socket") if transport is not None else None
    if raw is None:
        raise HandoffError("the connection is gone", delivered=False)
    head = request_head(request)
    if len(head) > HEAD_MAX_BYTES:
        raise HandoffError(f"request head of {len(head)} bytes", delivered=False)
    frame = _LENGTH.pack(len(head)) + head
    loop = asyncio.get_running_loop()
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as link:
        link.setblocking(False)
        try:
            await asyncio.wait_for(loop.sock_connect(link, str(path)), timeout_secs)
            sent = socket.send_fds(link, [frame], [raw.fileno()])
        except (OSError, TimeoutError) as exc:
            raise HandoffError(f"worker socket {path}: {exc}", delivered=False) from exc
        try:
            if sent < len(frame):  # an empty send fails once the worker has answered and closed the link
                await loop.sock_sendall(link, frame[sent:])
            answer = await asyncio.wait_for(loop.sock_recv(link, 1), timeout_secs)
        except (OSError, TimeoutError) as exc:
            raise HandoffError(f"no answer from the worker: {exc!r}", delivered=True) from exc
    if answer == DECLINED:
        raise HandoffError("the worker declined the connection", delivered=False)
    if answer != ACCEPTED:
        raise HandoffError("the worker closed the hand-off unanswered", delivered=True)


class _HandedOff(web.StreamResponse):
    """The response aiohttp gets for a connection that now belongs to a worker: nothing is written."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


def let_go(request: web.Request) -> web.StreamResponse:
    """Drop the supervisor's copy of a handed-off connection silently and return the handler's response.

    The transport is closed (its descriptor closed, never ``shutdown()``: no FIN while the worker holds its copy)
    and aiohttp writes nothing for the returned response.
    """
    request.protocol.force_close()
    return _HandedOff(status=101)


async def _readable(sock: socket.socket) -> None:
    loop = asyncio.get_running_loop()
    ready: asyncio.Future[None] = loop.create_future()

    def wake() -> None:
        if not ready.done():
            ready.set_result(None)

    loop.add_reader(sock.fileno(), wake)
    try:
        await ready
    finally:
        loop.remove_reader(sock.fileno())


def _missing(data: bytes) -> int:
    """Bytes of a hand-off still to come: the length prefix, then the head it announces."""
    if len(data) < _LENGTH.size:
        return _LENGTH.size - len(data)
    length = _LENGTH.unpack_from(data)[0]
    if length > HEAD_MAX_BYTES:
        raise ValueError(f"a request head of {length} bytes (at most {HEAD_MAX_BYTES})")
    return _LENGTH.size + length - len(data)


async def _receive(link: socket.socket) -> tuple[bytes, int]:
    """One hand-off's head and descriptor from ``link``."""
    loop = asyncio.get_running_loop()
    await _readable(link)
    data, fds, flags, _ = socket.recv_fds(link, HEAD_MAX_BYTES + _LENGTH.size, 1)
    if len(fds) != 1 or flags & getattr(socket, "MSG_CTRUNC", 0):
        for fd in fds:
            os.close(fd)
        raise ValueError(f"expected one descriptor, got {len(fds)} (flags {flags:#x})")
    try:
        while (missing := _missing(data)) > 0:
            more = await loop.sock_recv(link, missing)
            if not more:
                raise ValueError("the supervisor closed the hand-off half-way")
            data += more
    except BaseException:
        os.close(fds[0])
        raise
    return data[_LENGTH.size:_LENGTH.size + _LENGTH.unpack_from(data)[0]], fds[0]


class HandoffListener:
    """Worker side: accepts hand-offs on a Unix socket and adopts each connection into ``server``.

    Args:
        path: the Unix socket to listen on (replaced if it exists).
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self._server: ProtocolFactory | None = None
        self._tasks = TaskOwner("handoff")
        self._listener: socket.socket | None = None
        self.adopted: set[web.RequestHandler] = set()
        """Connections that came through a hand-off and have not answered their request yet."""

    async def start(self, server: ProtocolFactory) -> None:
        """Listen (mode 0600) and adopt each connection handed off into ``server`` (``AppRunner.server``)."""
        self._server = server
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.setblocking(False)
        listener.bind(str(self.path))
        os.chmod(self.path, 0o600)
        listener.listen(128)
        self._listener = listener
        self._tasks.spawn(self._accept(listener), "accept")
        log.debug("accepting connections handed off on %s", self.path)

    async def close(self) -> None:
        """Stop accepting hand-offs and remove the socket (adopted connections stay with the server)."""
        await self._tasks.aclose()
        if self._listener is not None:
            self._listener.close()
            self._listener = None
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            link, _ = await loop.sock_accept(listener)
            self._tasks.spawn(self._adopt(link), "adopt")

    async def _adopt(self, link: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        with link:
            try:
                head, fd = await asyncio.wait_for(_receive(link), RECEIVE_TIMEOUT_SECS)
            except (OSError, ValueError, TimeoutError) as exc:
                log.warning("a hand-off failed before the connection arrived: %s", exc)
                return
            client = socket.socket(fileno=fd)
            try:
                client.setblocking(False)
                assert self._server is not None
                protocol = self._server()
                await loop.connect_accepted_socket(lambda: protocol, client)
            except (OSError, RuntimeError) as exc:
                client.close()  # unread and unwritten: the supervisor can still serve it
                log.warning("could not adopt a handed-off connection: %s", exc)
                await loop.sock_sendall(link, DECLINED)
                return
            # The transport registered its reader before the task resumed, but the selector only runs after this
            # step: the head is parsed before any byte read from the socket.
            self.adopted = {p for p in self.adopted if p.transport is not None}  # those that never answered
            self.adopted.add(protocol)
            protocol.data_received(head)
            try:
                await loop.sock_sendall(link, ACCEPTED)
            except OSError as exc:
                log.debug("the supervisor left before the hand-off was acknowledged: %s", exc)


def one_request_per_hand_off(
        listener: HandoffListener) -> Callable[[web.Request, web.StreamResponse], Awaitable[None]]:
    """An ``on_response_prepare`` hook: a handed-off connection that is refused (anything but its 101) is closed
    after the answer, so no later request on it bypasses the supervisor."""

    async def hook(request: web.Request, response: web.StreamResponse) -> None:
        if request.protocol in listener.adopted:
            listener.adopted.discard(request.protocol)
            if response.status != 101:
                response.force_close()

    return hook
