"""A real browser: headless Chromium loads the demo page and calls the server with a WAV as its microphone."""

from __future__ import annotations

import asyncio
import shutil
import time
from pathlib import Path

import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from voicegate.server.app import SESSIONS

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"

pytestmark = pytest.mark.browser


def chromium_args(wav: Path) -> list[str]:
    return [
        "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--use-fake-ui-for-media-stream",
        "--use-fake-device-for-media-stream", f"--use-file-for-fake-audio-capture={wav}",
        "--autoplay-policy=no-user-gesture-required",
    ]


INBOUND_AUDIO_STATS = """async () => {
  const stats = await window.voicegateCall.pc.getStats();
  let out = null;
  stats.forEach((s) => { if (s.type === "inbound-rtp" && s.kind === "audio") out = s; });
  return out && { packets: out.packetsReceived, energy: out.totalAudioEnergy || 0 };
}"""


async def test_demo_page_makes_a_real_call(server: TestServer, shared_data: Path) -> None:
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make install adds it)")
    from playwright.async_api import async_playwright

    wav = shared_data / "speech/asr_test_wavs/silero-vad_files_en_num.wav"
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(wav))
        try:
            page = await browser.new_page()
            await page.goto(f"{base_url(server)}/")
            await page.click("#start")
            await page.wait_for_function("window.voicegateEvents.some(e => e.type === 'bot.speaking')",
                                         timeout=15_000)
            sessions = server.app[SESSIONS]
            assert len(sessions) == 1
            session = next(iter(sessions.values()))
            deadline = time.monotonic() + 10
            while (session.inbound is None or session.inbound.received_samples < 32_000) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.2)
            assert session.inbound is not None and session.inbound.received_samples > 16_000
            assert session.inbound_rms > 100, "the server hears the page's (fake) microphone"
            await asyncio.sleep(1.5)
            stats = await page.evaluate(INBOUND_AUDIO_STATS)
            assert stats["packets"] > 50
            assert stats["energy"] > 0, "the page receives the bot's voice"
            types = await page.evaluate("window.voicegateEvents.map(e => e.type)")
            assert "session.started" in types and "bot.speaking" in types
            log_text = await page.inner_text("#log")
            assert "bot.speaking" in log_text
            await page.click("#stop")
            deadline = time.monotonic() + 10
            while sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not sessions, "hanging up closes the session"
        finally:
            await browser.close()
