// voicegate reflex view: what the barge-in layer does during a call, live. One ES module, no dependencies.
//   import { connect } from "/static/voicegate.js";
//   import { reflexView } from "/static/reflex-view.js";
//   const call = await connect("");
//   const view = reflexView(document.getElementById("reflex"), call);   // view.close() when done
//
// It draws the caller's microphone level and the bot's voice level scrolling side by side, the bot's state as a
// band (speaking / paused / stopped / done), and for every contested sound (one that began while the bot spoke)
// its marks: onset → pause → verdict → resume or stop, with milliseconds, the verdict's label and reason and what
// was heard; plus a running summary. Everything shown is also exposed as data attributes (tests read them):
//   li.vg-sound[data-segment-id][data-pause-ms][data-verdict-ms][data-label][data-reason][data-outcome]
//     [data-outcome-ms][data-silence-ms][data-heard]
//   [data-vg-summary][data-pauses][data-stops][data-resumes][data-median-pause-ms][data-median-silence-ms]
//   [data-vg-state] (the bot's current state)
// All milliseconds are counted from the sound's onset in the caller's audio (the server's media clock).

const WINDOW_MS = 15000;
const STATE_COLORS = { speaking: "#1e7a46", paused: "#d98e04", stopped: "#b3261e", done: "#8a94a8", quiet: "#e3e7f1" };
const MARK_COLORS = { onset: "#2857c5", pause: "#d98e04", verdict: "#111827", resumed: "#1e7a46", stopped: "#b3261e" };

const STYLE = `
.vg-reflex { font: 14px/1.4 system-ui, sans-serif; color: #1d2433; }
.vg-reflex canvas { width: 100%; height: 190px; background: #fff; border: 1px solid #d7dced; border-radius: 8px; }
.vg-reflex .vg-legend { display: flex; gap: 1rem; flex-wrap: wrap; font-size: 12px; color: #55607a; margin: .3rem 0; }
.vg-reflex .vg-legend i { display: inline-block; width: 10px; height: 10px; border-radius: 2px; margin-right: 4px; }
.vg-reflex .vg-summary { display: flex; gap: .6rem; flex-wrap: wrap; margin: .6rem 0; }
.vg-reflex .vg-summary span { background: #eef1f8; border-radius: 6px; padding: .25rem .6rem; }
.vg-reflex .vg-summary b { font-variant-numeric: tabular-nums; }
.vg-reflex ol { list-style: none; padding: 0; margin: 0; }
.vg-reflex li.vg-sound { background: #fff; border: 1px solid #d7dced; border-left: 5px solid #8a94a8;
  border-radius: 6px; padding: .45rem .7rem; margin: .35rem 0; }
.vg-reflex li.vg-sound[data-outcome="resumed"] { border-left-color: #1e7a46; }
.vg-reflex li.vg-sound[data-outcome="stopped"] { border-left-color: #b3261e; }
.vg-reflex .vg-steps { font-variant-numeric: tabular-nums; }
.vg-reflex .vg-steps b { font-weight: 600; }
.vg-reflex .vg-heard { color: #55607a; font-style: italic; }
.vg-reflex .vg-label { font-weight: 700; }
`;

function median(values) {
  if (!values.length) return null;
  const s = [...values].sort((a, b) => a - b);
  const m = Math.floor(s.length / 2);
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

function el(tag, attrs = {}, text) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) node.setAttribute(k, v);
  if (text !== undefined) node.textContent = text;
  return node;
}

/** A level meter on a MediaStream: RMS in dBFS (-90..0) on demand. */
function meter(ctx, stream) {
  if (!ctx || !stream || !stream.getAudioTracks().length) return null;
  const analyser = ctx.createAnalyser();
  analyser.fftSize = 1024;
  const source = ctx.createMediaStreamSource(stream);
  source.connect(analyser);
  const buf = new Float32Array(analyser.fftSize);
  return {
    db() {
      analyser.getFloatTimeDomainData(buf);
      let sum = 0;
      for (let i = 0; i < buf.length; i++) sum += buf[i] * buf[i];
      return Math.max(-90, 10 * Math.log10(sum / buf.length + 1e-12));
    },
    close() { source.disconnect(); },
  };
}

/**
 * Show the reflex of a call in ``root``.
 * @param {HTMLElement} root an empty element the view fills
 * @param {{events: EventTarget, stream?: MediaStream, remote?: MediaStream}} call what ``connect`` returned
 * @returns {{close: () => void, sounds: object[], onEvent: (e: object) => void}}
 */
export function reflexView(root, call) {
  if (!document.getElementById("vg-reflex-style")) {
    const style = el("style", { id: "vg-reflex-style" });
    style.textContent = STYLE;
    document.head.appendChild(style);
  }
  root.classList.add("vg-reflex");
  root.replaceChildren();
  const canvas = el("canvas", { width: "900", height: "190", "aria-label": "caller and bot levels, bot state, reflex marks" });
  const legend = el("div", { class: "vg-legend" });
  for (const [name, color] of [["you (microphone)", "#2857c5"], ["bot voice", "#1e7a46"], ["paused", STATE_COLORS.paused],
    ["stopped", STATE_COLORS.stopped], ["verdict", MARK_COLORS.verdict]]) {
    const item = el("span");
    const swatch = el("i");
    swatch.style.background = color;
    item.append(swatch, name);
    legend.appendChild(item);
  }
  const summary = el("div", { class: "vg-summary", "data-vg-summary": "" });
  const state = el("span", { "data-vg-state": "quiet" }, "quiet");
  const list = el("ol", { class: "vg-sounds", "aria-live": "polite" });
  root.append(canvas, legend, summary, el("h3", {}, "Contested sounds"), list);

  const sounds = [];       // one per contested sound, newest last
  const bands = [];        // {state, from, to} in local ms
  const levels = [];       // {t, mic, bot} in local ms
  let offset = null;       // local ms - server ms (smallest seen: the least delayed event)
  let current = null;      // the sound awaiting its outcome
  let lastText = "";
  const local = (serverMs) => serverMs + (offset ?? 0);

  function setState(name, serverMs) {
    const t = local(serverMs);
    const open = bands[bands.length - 1];
    if (open && open.state === name) return;
    if (open) open.to = t;
    bands.push({ state: name, from: t, to: null });
    state.textContent = name;
    state.setAttribute("data-vg-state", name);
  }

  function renderSummary() {
    const pauses = sounds.filter((s) => s.pauseMs != null);
    const stops = sounds.filter((s) => s.outcome === "stopped");
    const resumes = sounds.filter((s) => s.outcome === "resumed");
    const medPause = median(pauses.map((s) => s.pauseMs));
    const medSilence = median(resumes.map((s) => s.silenceMs).filter((v) => v != null));
    summary.setAttribute("data-pauses", String(pauses.length));
    summary.setAttribute("data-stops", String(stops.length));
    summary.setAttribute("data-resumes", String(resumes.length));
    summary.setAttribute("data-median-pause-ms", medPause == null ? "" : String(Math.round(medPause)));
    summary.setAttribute("data-median-silence-ms", medSilence == null ? "" : String(Math.round(medSilence)));
    const item = (label, value) => { const s = el("span"); s.append(`${label} `, el("b", {}, value)); return s; };
    summary.replaceChildren(
      item("bot", ""), item("pauses", String(pauses.length)), item("stops", String(stops.length)),
      item("resumes", String(resumes.length)),
      item("median time to pause", medPause == null ? "–" : `${Math.round(medPause)} ms`),
      item("median silence caused", medSilence == null ? "–" : `${Math.round(medSilence)} ms`));
    summary.firstChild.querySelector("b").replaceWith(state);
  }

  function renderSound(s) {
    const ms = (v) => (v == null ? "…" : `${Math.round(v)} ms`);
    s.node.setAttribute("data-segment-id", String(s.id));
    const attrs = { "data-pause-ms": s.pauseMs, "data-verdict-ms": s.verdictMs, "data-label": s.label,
      "data-reason": s.reasons.join(" "), "data-outcome": s.outcome, "data-outcome-ms": s.outcomeMs,
      "data-silence-ms": s.silenceMs, "data-heard": s.heard };
    for (const [k, v] of Object.entries(attrs)) {
      if (v == null || v === "") s.node.removeAttribute(k); else s.node.setAttribute(k, typeof v === "number" ? String(Math.round(v)) : v);
    }
    const steps = el("div", { class: "vg-steps" });
    steps.append("onset → pause ", el("b", {}, ms(s.pauseMs)), " → verdict ", el("b", {}, ms(s.verdictMs)));
    if (s.label) steps.append(" ", el("span", { class: "vg-label" }, s.label), ` (${s.reasons.join(", ")})`);
    if (s.outcome) steps.append(` → ${s.outcome === "stopped" ? "stop" : "resume"} `, el("b", {}, ms(s.outcomeMs)));
    if (s.silenceMs != null) steps.append(` · bot silent ${Math.round(s.silenceMs)} ms`);
    const heard = el("div", { class: "vg-heard" }, s.heard ? `heard: “${s.heard}”` : "heard: (no transcript)");
    s.node.replaceChildren(steps, heard);
  }

  function onEvent(ev) {
    const t = typeof ev.t_ms === "number" ? ev.t_ms : 0;
    const seen = performance.now() - t;
    offset = offset == null ? seen : Math.min(offset, seen);
    switch (ev.type) {
      case "bot.speaking": case "bot.resumed": setState("speaking", t); break;
      case "bot.paused": setState("paused", t); break;
      case "bot.stopped": setState("stopped", t); break;
      case "bot.done": setState("done", t); break;
      case "asr.partial": case "asr.final": lastText = ev.text || ""; break;
      default: break;
    }
    if (ev.type === "user.speech_started" && ev.contested) {
      const onset = t - (ev.since_onset_ms || 0);
      current = { id: ev.segment_id, onset, pauseMs: null, verdictMs: null, label: null, reasons: [],
        outcome: null, outcomeMs: null, pausedAt: null, silenceMs: null, heard: "", node: el("li", { class: "vg-sound" }) };
      lastText = "";
      sounds.push(current);
      list.appendChild(current.node);
    } else if (current && ev.type === "bot.paused" && current.pauseMs == null) {
      current.pauseMs = ev.since_onset_ms ?? (t - current.onset);
      current.pausedAt = t;
    } else if (current && ev.type === "gate.verdict" && current.label == null) {
      current.verdictMs = t - current.onset;
      current.label = ev.label;
      current.reasons = ev.reasons || [];
      current.heard = ev.transcript || lastText;
    } else if (current && (ev.type === "asr.partial" || ev.type === "asr.final") && current.outcome == null) {
      current.heard = current.heard || lastText;
    } else if (current && (ev.type === "bot.resumed" || ev.type === "bot.stopped")) {
      current.outcome = ev.type === "bot.resumed" ? "resumed" : "stopped";
      current.outcomeMs = t - current.onset;
      if (current.outcome === "resumed" && current.pausedAt != null) current.silenceMs = t - current.pausedAt;
      renderSound(current);
      current = null;
      renderSummary();
      return;
    }
    if (current) renderSound(current);
    renderSummary();
  }

  // Levels: the caller's microphone (what the page sends) and the bot's voice (what it receives).
  let ctx = null;
  try { ctx = new AudioContext(); ctx.resume().catch(() => {}); } catch { ctx = null; }
  let mic = meter(ctx, call.stream);
  let bot = meter(ctx, call.remote);
  const onTrack = (e) => { if (!bot) bot = meter(ctx, e.detail); };
  call.events.addEventListener("track", onTrack);
  const onAny = (e) => onEvent(e.detail);
  call.events.addEventListener("event", onAny);

  function draw() {
    const g = canvas.getContext("2d");
    const W = canvas.width, H = canvas.height;
    const now = performance.now();
    const x = (t) => W - ((now - t) / WINDOW_MS) * W;
    g.clearRect(0, 0, W, H);
    g.font = "11px system-ui, sans-serif";
    const lanes = { mic: [4, 60], bot: [68, 60], band: [134, 14], marks: [152, 34] };
    g.fillStyle = "#55607a";
    g.fillText("you", 4, lanes.mic[0] + 12);
    g.fillText("bot", 4, lanes.bot[0] + 12);
    for (const [key, color] of [["mic", "#2857c5"], ["bot", "#1e7a46"]]) {
      const [top, height] = lanes[key];
      g.strokeStyle = "#eef1f8";
      g.strokeRect(0, top, W, height);
      g.fillStyle = color;
      for (const p of levels) {
        if (p.t < now - WINDOW_MS) continue;
        const h = Math.max(0, (p[key] + 70) / 70) * height;
        g.fillRect(x(p.t), top + height - h, Math.max(1, (50 / WINDOW_MS) * W), h);
      }
    }
    for (const b of bands) {
      const to = b.to ?? now;
      if (to < now - WINDOW_MS) continue;
      g.fillStyle = STATE_COLORS[b.state] || "#ccc";
      g.fillRect(x(b.from), lanes.band[0], Math.max(1, x(to) - x(b.from)), lanes.band[1]);
    }
    for (const s of sounds) {
      const marks = [["onset", s.onset], ["pause", s.pauseMs != null ? s.onset + s.pauseMs : null],
        ["verdict", s.verdictMs != null ? s.onset + s.verdictMs : null],
        [s.outcome || "", s.outcomeMs != null ? s.onset + s.outcomeMs : null]];
      for (const [kind, at] of marks) {
        if (at == null || !kind) continue;
        const px = x(local(at));
        if (px < 0) continue;
        g.fillStyle = MARK_COLORS[kind];
        g.fillRect(px, lanes.mic[0], 2, lanes.marks[0] + lanes.marks[1] - lanes.mic[0]);
      }
      const px = x(local(s.onset));
      if (px >= 0) {
        g.fillStyle = "#111827";
        g.fillText(`${s.label || "…"} ${s.pauseMs != null ? Math.round(s.pauseMs) + " ms" : ""}`, px + 4, lanes.marks[0] + 22);
      }
    }
  }

  const timer = setInterval(() => {
    const t = performance.now();
    levels.push({ t, mic: mic ? mic.db() : -90, bot: bot ? bot.db() : -90 });
    while (levels.length && levels[0].t < t - WINDOW_MS - 1000) levels.shift();
    draw();
  }, 50);
  renderSummary();

  return {
    sounds,
    onEvent,
    close() {
      clearInterval(timer);
      call.events.removeEventListener("event", onAny);
      call.events.removeEventListener("track", onTrack);
      if (mic) mic.close();
      if (bot) bot.close();
      if (ctx) ctx.close().catch(() => {});
      mic = bot = null;
    },
  };
}
