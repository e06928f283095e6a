"""Running one ``voicegate serve`` process: what ``aiohttp.web.run_app`` does, plus the hand-off listener.

The ``--workers`` supervisor hands ``/ws`` and ``/twilio`` client connections to its workers
(:mod:`voicegate.server.handoff`); a worker adopts them into its own aiohttp server, so it needs that server
(``AppRunner.server``), which ``run_app`` keeps to itself. Shutdown is ``run_app``'s: on ``SIGTERM`` or ``SIGINT`` the
listening socket closes, the application's ``on_shutdown`` closes every call cleanly, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from pathlib import Path

from aiohttp import web

from voicegate.server.handoff import HandoffListener, one_request_per_hand_off

KEEPALIVE_SECS = 75.0
"""``run_app``'s keep-alive timeout."""


def run(app: web.Application, host: str, port: int, *, access_log: logging.Logger | None,
        handoff_socket: Path | None = None) -> None:
    """Serve ``app`` on ``host:port`` until ``SIGTERM``/``SIGINT`` (and take hand-offs on ``handoff_socket``)."""
    asyncio.run(_serve(app, host, port, access_log, handoff_socket))


async def _serve(app: web.Application, host: str, port: int, access_log: logging.Logger | None,
                 handoff_socket: Path | None) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    listener = HandoffListener(handoff_socket) if handoff_socket is not None else None
    if listener is not None:
        app.on_response_prepare.append(one_request_per_hand_off(listener))
    runner = web.AppRunner(app, access_log=access_log, keepalive_timeout=KEEPALIVE_SECS)
    await runner.setup()
    try:
        assert runner.server is not None
        if listener is not None:
            await listener.start(runner.server)
        await web.TCPSite(runner, host, port).start()
        await stop.wait()
    finally:
        if listener is not None:
            await listener.close()
        await runner.cleanup()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)
