"""A real browser: headless Chromium loads the demo page and calls the server with a WAV as its microphone."""

from __future__ import annotations

import asyncio
import os
import shutil
import time
import wave
from pathlib import Path

import numpy as np
import pytest
from aiohttp.test_utils import TestServer

from tests.conftest import base_url
from voicegate.audio.pcm import load_audio
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
            for _ in range(25):  # Chromium counts the energy as it renders; on a loaded machine that starts late
                if stats["energy"] > 0:
                    break
                await asyncio.sleep(0.2)
                stats = await page.evaluate(INBOUND_AUDIO_STATS)
            assert stats["packets"] > 50
            assert stats["energy"] > 0, "the page receives the bot's voice"
            types = await page.evaluate("window.voicegateEvents.map(e => e.type)")
            assert "session.started" in types and "bot.speaking" in types
            log_text = await page.text_content("#log") or ""
            assert "bot.speaking" in log_text
            await page.click("#stop")
            deadline = time.monotonic() + 10
            while sessions and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
            assert not sessions, "hanging up closes the session"
        finally:
            await browser.close()


def write_wav(path: Path, pcm: np.ndarray, rate: int = 48_000) -> Path:
    with wave.open(str(path), "wb") as out:
        out.setnchannels(1)
        out.setsampwidth(2)
        out.setframerate(rate)
        out.writeframes(pcm.astype(np.int16).tobytes())
    return path


SOUNDS = """() => [...document.querySelectorAll("li.vg-sound")].map((li) => ({
  pause: li.dataset.pauseMs, verdict: li.dataset.verdictMs, label: li.dataset.label, reason: li.dataset.reason,
  outcome: li.dataset.outcome, outcomeMs: li.dataset.outcomeMs, silence: li.dataset.silenceMs,
  heard: li.dataset.heard, text: li.innerText }))"""


async def test_demo_page_shows_the_reflex_of_a_backchannel_and_a_stop(server: TestServer, shared_data: Path,
                                                                       tmp_path: Path) -> None:
    """A real call with a WAV microphone: a "yes" while the bot talks, then two spoken "stop"s. The page shows
    each contested sound's pause, verdict (label, reason, what was heard) and resume or stop, with milliseconds,
    and a summary; nothing goes to the console as an error."""
    if not Path(CHROMIUM).exists():
        pytest.skip("chromium is not installed (make install adds it)")
    from playwright.async_api import async_playwright

    commands = shared_data / "speech/speech_commands"
    yes = load_audio(sorted((commands / "yes").glob("*.wav"))[0], 48_000)
    stops = [load_audio(p, 48_000) for p in sorted((commands / "stop").glob("*.wav"))[:3:2]]
    gap = np.zeros(48_000 * 4, np.int16)
    mic = np.concatenate([gap, yes, gap, stops[0], gap, stops[1], gap, gap, gap])
    wav = write_wav(tmp_path / "mic.wav", mic)
    errors: list[str] = []
    async with async_playwright() as pw:
        browser = await pw.chromium.launch(executable_path=CHROMIUM, args=chromium_args(wav))
        try:
            page = await browser.new_page(viewport={"width": 1000, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            await page.goto(f"{base_url(server)}/")
            await page.click("#start")
            await page.wait_for_function(
                "document.querySelectorAll('li.vg-sound[data-outcome=stopped]').length >= 1", timeout=45_000)
            await asyncio.sleep(1.0)
            sounds = await page.evaluate(SOUNDS)
            summary = await page.evaluate("""() => ({...document.querySelector("[data-vg-summary]").dataset})""")
            screenshot = tmp_path / "demo-reflex.png"
            await page.screenshot(path=str(screenshot), full_page=True)
            if os.environ.get("VOICEGATE_SCREENSHOT"):
                shutil.copy(screenshot, os.environ["VOICEGATE_SCREENSHOT"])
            await page.click("#stop")
        finally:
            await browser.close()
    done = [s for s in sounds if s["outcome"]]
    assert done, sounds
    for s in done:
        assert float(s["pause"]) < 300, f"the bot paused within 300 ms of the sound: {s}"
        assert float(s["verdict"]) >= float(s["pause"]) and s["label"] and s["reason"], s
        assert float(s["outcomeMs"]) >= float(s["verdict"]) - 1, s
        assert f"{round(float(s['pause']))} ms" in s["text"] and s["label"] in s["text"], "shown, not only stored"
    resumed = [s for s in done if s["outcome"] == "resumed"]
    stopped = [s for s in done if s["outcome"] == "stopped"]
    assert resumed and resumed[0]["label"] in ("backchannel", "noise", "echo"), sounds
    assert float(resumed[0]["silence"]) > 0 and "bot silent" in resumed[0]["text"]
    assert stopped[0]["label"] == "interrupt" and any(r in stopped[0]["reason"] for r in ("stop_phrase", "relevance"))
    assert int(summary["pauses"]) >= 2 and int(summary["stops"]) >= 1 and int(summary["resumes"]) >= 1, summary
    assert summary["medianPauseMs"] and summary["medianSilenceMs"], summary
    assert not errors, errors
