"""The Next.js example: the built app (``next start``) and a real server, driven in headless Chromium with a WAV as
the microphone — the page places a call through ``voicegate-client``, shows the bot speaking and the verdict on a
spoken "stop", and hangs up."""

from __future__ import annotations

import asyncio
import os
import shutil
import socket
import subprocess
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from tests.test_browser import CHROMIUM, chromium_args
from voicegate.audio.pcm import load_audio
from voicegate.config import Options, ServerOptions
from voicegate.server.app import SESSIONS, create_app

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "examples" / "nextjs"

pytestmark = pytest.mark.browser


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_nextjs_page_calls_and_shows_the_verdict(tmp_path: Path, shared_data: Path) -> None:
    if not (APP / ".next" / "BUILD_ID").exists():
        pytest.skip("the Next.js example is not built: make nextjs (npm ci && npm run build in examples/nextjs)")
    if not Path(CHROMIUM).exists() or shutil.which("node") is None:
        pytest.skip("chromium and node are needed (make install adds chromium)")
    from playwright.async_api import async_playwright

    # Three different recordings of "stop", 3 s apart: the page must show an interrupt for at least one of them
    # (which one is heard first depends on the CPU's transcript of it).
    stops = sorted((shared_data / "speech/speech_commands/stop").glob("*.wav"))
    gap = np.zeros(48_000 * 3, np.int16)
    mic = np.concatenate([gap, *(np.concatenate([load_audio(stops[i], 48_000), gap]) for i in (7, 2, 5)), gap])
    wav = tmp_path / "mic.wav"
    with wave.open(str(wav), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(48_000)
        out.writeframes(mic.tobytes())
    port = _free_port()
    origin = f"http://127.0.0.1:{port}"
    server = TestServer(create_app(Options(server=ServerOptions(cors_origins=(origin,)))), host="127.0.0.1")
    await server.start_server()
    app = await asyncio.create_subprocess_exec(
        "node", str(APP / "node_modules" / "next" / "dist" / "bin" / "next"), "start", "-p", str(port),
        "-H", "127.0.0.1", cwd=APP, env={**os.environ, "NODE_ENV": "production"},
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        async with async_playwright() as pw:
            browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(wav))
            try:
                page = await browser.new_page()
                for _ in range(100):  # next start takes a moment
                    try:
                        await page.goto(f"{origin}/?server={base_url(server)}")
                        break
                    except Exception:
                        await asyncio.sleep(0.2)
                await page.click("#start")
                await page.wait_for_function("document.querySelector('#bot').textContent === 'speaking'",
                                             timeout=20_000)
                assert await page.inner_text("#connection") in ("connecting", "connected", "new")
                await page.wait_for_function(
                    "document.querySelector('#verdicts').textContent.includes('interrupt')", timeout=30_000)
                # The same reflex view as the demo page (voicegate-client/reflex-view.js): the stop, with its ms.
                await page.wait_for_function(
                    "document.querySelector('#reflex li.vg-sound[data-outcome=stopped]')", timeout=10_000)
                stop = await page.evaluate("""() => ({...document.querySelector(
                    '#reflex li.vg-sound[data-outcome=stopped]').dataset})""")
                assert stop["label"] == "interrupt" and float(stop["pauseMs"]) < 300 and stop["reason"], stop
                assert int(await page.get_attribute("#reflex [data-vg-summary]", "data-stops") or 0) >= 1
                assert server.app is not None and len(server.app[SESSIONS]) == 1
                await page.click("#hangup")
                for _ in range(100):
                    if not server.app[SESSIONS]:
                        break
                    await asyncio.sleep(0.1)
                assert not server.app[SESSIONS], "hanging up from the page closes the call"
            finally:
                await browser.close()
    finally:
        app.terminate()
        await asyncio.wait_for(app.wait(), 10)
        await server.close()
