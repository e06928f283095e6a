"use client";

// A call to voicegate from a Next.js App Router page: start, watch the call state and the barge-in verdicts,
// hang up. The reflex view (levels, the bot's state, each contested sound's pause → verdict → resume/stop) is the
// same dependency-free module the demo page uses, from voicegate-client. The server's address: ?server=<url> on the page, else NEXT_PUBLIC_VOICEGATE_URL at build time, else
// http://127.0.0.1:8080. The server must allow this page's origin: VOICEGATE_CORS_ORIGINS=http://localhost:3000.
import { useEffect, useRef, useState } from "react";
import { connect } from "voicegate-client";
import { reflexView } from "voicegate-client/reflex-view.js";

function serverUrl() {
  const fromPage = new URLSearchParams(window.location.search).get("server");
  return fromPage || process.env.NEXT_PUBLIC_VOICEGATE_URL || "http://127.0.0.1:8080";
}

export default function Page() {
  const call = useRef(null);
  const audio = useRef(null);
  const reflex = useRef(null);
  const view = useRef(null);
  const [connection, setConnection] = useState("idle");
  const [bot, setBot] = useState("quiet");
  const [verdicts, setVerdicts] = useState([]);
  const [error, setError] = useState("");

  useEffect(() => () => {
    view.current?.close();
    call.current?.close();
  }, []);

  async function start() {
    setError("");
    setVerdicts([]);
    setConnection("connecting");
    try {
      const c = await connect(serverUrl(), { audio: audio.current });
      call.current = c;
      view.current?.close();
      view.current = reflexView(reflex.current, c);
      c.events.addEventListener("connectionstate", (e) => setConnection(e.detail));
      c.events.addEventListener("bot.speaking", () => setBot("speaking"));
      c.events.addEventListener("bot.paused", () => setBot("paused"));
      c.events.addEventListener("bot.resumed", () => setBot("speaking"));
      c.events.addEventListener("bot.stopped", () => setBot("stopped"));
      c.events.addEventListener("bot.done", () => setBot("quiet"));
      c.events.addEventListener("gate.verdict", (e) =>
        setVerdicts((v) => [...v, `${e.detail.label} (${Math.round(e.detail.ms_since_onset)} ms)`]));
      c.events.addEventListener("session.ended", () => setConnection("ended"));
    } catch (err) {
      setConnection("failed");
      setError(String(err));
    }
  }

  function hangUp() {
    call.current?.close();
    call.current = null;
    view.current?.close();
    view.current = null;
    setConnection("closed");
    setBot("quiet");
  }

  return (
    <main>
      <h1>voicegate from Next.js</h1>
      <p>
        <button id="start" onClick={start} disabled={connection === "connecting" || connection === "connected"}>
          Start call
        </button>{" "}
        <button id="hangup" onClick={hangUp} disabled={!call.current}>
          Hang up
        </button>
      </p>
      <p>
        connection: <b id="connection">{connection}</b> · bot: <b id="bot">{bot}</b>
      </p>
      {error && <p id="error" style={{ color: "crimson" }}>{error}</p>}
      <ol id="verdicts">
        {verdicts.map((v, i) => (
          <li key={i}>{v}</li>
        ))}
      </ol>
      <section ref={reflex} id="reflex" />
      <audio ref={audio} autoPlay />
    </main>
  );
}
