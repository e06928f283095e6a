// voicegate browser client: one ES module, no dependencies.
//   import { connect } from "/static/voicegate.js";
//   const call = await connect("http://127.0.0.1:8080");
//   call.events.addEventListener("bot.paused", (e) => console.log(e.detail));
//   call.close();
// reflex-view.js (same folder, also dependency-free) draws what the barge-in layer does during the call.
// Works from a plain page or a Next.js client component ("use client").

const MIC_CONSTRAINTS = { echoCancellation: true, noiseSuppression: true, autoGainControl: true };

function waitForIceGathering(pc, timeoutMs = 5000) {
  if (pc.iceGatheringState === "complete") return Promise.resolve();
  return new Promise((resolve) => {
    const done = () => {
      if (pc.iceGatheringState === "complete") {
        pc.removeEventListener("icegatheringstatechange", done);
        resolve();
      }
    };
    pc.addEventListener("icegatheringstatechange", done);
    setTimeout(resolve, timeoutMs);
  });
}

/**
 * Call a voicegate server.
 * @param {string} url base URL of the server ("" for the page's own origin)
 * @param {{stream?: MediaStream, audio?: HTMLAudioElement, token?: string, iceServers?: RTCIceServer[]}} [opts]
 * @returns {Promise<{pc: RTCPeerConnection, events: EventTarget, channel: RTCDataChannel,
 *                    stream: MediaStream, remote: MediaStream | null, callId: string, close: () => void}>}
 *   ``remote``: the bot's voice (set once its track arrives; a "track" event says when).
 */
export async function connect(url = "", opts = {}) {
  const pc = new RTCPeerConnection({ iceServers: opts.iceServers || [] });
  const events = new EventTarget();
  let remote = null;
  const stream = opts.stream || (await navigator.mediaDevices.getUserMedia({ audio: MIC_CONSTRAINTS }));
  for (const track of stream.getAudioTracks()) pc.addTrack(track, stream);

  pc.addEventListener("track", (ev) => {
    remote = ev.streams[0] || new MediaStream([ev.track]);
    if (opts.audio) {
      opts.audio.srcObject = remote;
      opts.audio.play().catch(() => {});
    }
    events.dispatchEvent(new CustomEvent("track", { detail: remote }));
  });
  pc.addEventListener("connectionstatechange", () =>
    events.dispatchEvent(new CustomEvent("connectionstate", { detail: pc.connectionState })));

  const channel = pc.createDataChannel("events");
  channel.addEventListener("message", (msg) => {
    let event;
    try { event = JSON.parse(msg.data); } catch { return; }
    events.dispatchEvent(new CustomEvent("event", { detail: event }));
    events.dispatchEvent(new CustomEvent(event.type, { detail: event }));
  });

  await pc.setLocalDescription(await pc.createOffer());
  await waitForIceGathering(pc);
  const headers = { "Content-Type": "application/json" };
  if (opts.token) headers.Authorization = `Bearer ${opts.token}`;
  const res = await fetch(`${url.replace(/\/$/, "")}/offer`, {
    method: "POST",
    headers,
    body: JSON.stringify({ sdp: pc.localDescription.sdp, type: pc.localDescription.type }),
  });
  const body = await res.json();
  if (!res.ok) {
    pc.close();
    if (!opts.stream) stream.getTracks().forEach((t) => t.stop());
    throw new Error(`offer refused (${res.status}): ${body.error}`);
  }
  await pc.setRemoteDescription({ sdp: body.sdp, type: body.type });

  const close = () => {
    channel.close();
    pc.close();
    if (!opts.stream) stream.getTracks().forEach((t) => t.stop());
  };
  return { pc, events, channel, stream, get remote() { return remote; }, callId: body.call_id, close };
}
