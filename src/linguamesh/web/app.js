// LinguaMesh speaker page: pick languages, talk (push-to-talk or hands-free) or send a file,
// see each utterance's status, draft and final transcript, translation and speech.
// Speaks protocol v1 over /ws/session; reconnects with `resume` and drops repeated events by seq.
import { RATE, Resampler, EnergyVad, resampleAll, toPcm16, b64, unb64 } from "./audio.js";
import { langName } from "./lang.js";

const $ = (id) => document.getElementById(id);
const CHUNK_SAMPLES = 320; // 20 ms per audio_chunk: the server hears speech as it is spoken
const PREROLL_BLOCKS = 3;
const TAP_MS = 250; // a press shorter than this is a tap, not speech: nothing is sent
const STORE = "linguamesh.session"; // sessionStorage: the session survives a reload

const state = {
  ws: null,
  ack: null,            // session_init_ack
  src: null, tgt: null,
  lastSeq: 0,
  chunkSeq: 0,
  closes: 0,            // utterances this page ended (is_final sent)
  closeTimes: new Map(), // utterance index (the server's) -> when the speaker stopped
  open: new Set(),      // indices the server reported that have no result and no stop time yet
  pendingStop: null,    // the speaker stopped before the server named the utterance
  captions: 0,          // live captions shown (asr_partial), for tests
  rows: new Map(),
  outbox: [],           // messages waiting for a connection
  userClosed: false,
  retryMs: 500,
  connState: "offline",
  results: [],          // every translation_result shown, for tests and debugging
  gen: 0,               // sessions this page has had (rows of an ended one stay, marked)
  played: [],           // clips played by the queue: {index, start, end}, for tests
};
window.lm = state;

// ------------------------------------------------------------------ languages

let pairs = [];
async function loadLanguages() {
  try {
    const res = await fetch("/api/v1/languages");
    pairs = (await res.json()).pairs;
  } catch (e) {
    pairs = [];
  }
  const srcSel = $("src");
  const keep = srcSel.value;
  const srcs = [...new Set(pairs.map((p) => p.src))].sort();
  srcSel.replaceChildren(...srcs.map((s) => new Option(langName(s), s)));
  if (srcs.includes(keep)) srcSel.value = keep;
  else if (srcs.includes("en")) srcSel.value = "en";
  fillTargets();
  if (!pairs.length) {
    notice("No language pair can be served right now: no translation node is connected. This page checks again every few seconds.");
    $("start").disabled = true;
    setTimeout(loadLanguages, 3000);
  } else {
    notice(null);
    $("start").disabled = false;
  }
}

function fillTargets() {
  const src = $("src").value;
  const tgtSel = $("tgt");
  const keep = tgtSel.value;
  const tgts = pairs.filter((p) => p.src === src && p.tgt !== src).map((p) => p.tgt).sort();
  const all = tgts.length ? tgts : pairs.filter((p) => p.src === src).map((p) => p.tgt);
  tgtSel.replaceChildren(...all.map((t) => new Option(langName(t), t)));
  if (all.includes(keep)) tgtSel.value = keep;
}


// ------------------------------------------------------------------ connection

// one notice at a time; an error notice stays until dismissed or until things work again
function notice(text, error = false, sticky = false) {
  const el = $("notice");
  el.hidden = !text;
  el.classList.toggle("error", error);
  state.errorShown = Boolean(text) && error;
  state.noticeSticky = Boolean(text) && sticky; // stays until dismissed
  if (!text) { el.replaceChildren(); return; }
  const msg = document.createElement("span");
  msg.textContent = text;
  const close = document.createElement("button");
  close.type = "button";
  close.className = "dismiss";
  close.setAttribute("aria-label", "Dismiss this message");
  close.textContent = "×";
  close.addEventListener("click", () => notice(null));
  el.replaceChildren(msg, close);
}

function setConn(s, label) {
  state.connState = s;
  const el = $("conn");
  el.dataset.state = s;
  el.querySelector(".label").textContent = label || {
    ready: "ready", connected: "connected", connecting: "connecting…",
    reconnecting: "connection lost — reconnecting…", offline: "not connected",
  }[s];
}

function wsUrl() {
  return `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/ws/session`;
}

function connect() {
  const resume = state.ack !== null;
  setConn(resume ? "reconnecting" : "connecting");
  const ws = new WebSocket(wsUrl());
  state.ws = ws;
  ws.onopen = () => {
    const init = {
      type: "session_init", protocol_version: 1, src_lang: state.src, tgt_lang: state.tgt,
      tts: true, partials: true, audio_format: "pcm16", sample_rate: RATE,
      // the server ends an utterance at a pause (streaming nodes); release / the page's own
      // silence detector end it too
      end_of_speech: "server",
      room: roomIds().room, room_key: roomIds().key,
    };
    // an access token from the operator's backend (?token=… in the page's address)
    const access = new URLSearchParams(location.search).get("token");
    if (access) init.token = access;
    if (resume) {
      init.resume = { session_id: state.ack.session_id, resume_token: state.ack.resume_token, last_seq: state.lastSeq };
    }
    ws.send(JSON.stringify(init));
  };
  ws.onmessage = (m) => handle(JSON.parse(m.data));
  ws.onclose = () => {
    if (state.ws !== ws) return;
    state.ws = null;
    if (state.userClosed) { setConn("offline"); return; }
    setConn("reconnecting");
    const wait = state.retryMs;
    state.retryMs = Math.min(5000, state.retryMs * 2);
    setTimeout(connect, wait);
  };
}

function send(msg) {
  if (state.ws && state.ws.readyState === WebSocket.OPEN && state.connState === "connected") {
    state.ws.send(JSON.stringify(msg));
  } else {
    state.outbox.push(msg); // sent after the session is back
  }
}

function handle(ev) {
  if (ev.seq) {
    if (ev.seq <= state.lastSeq) return; // already seen (replayed after a resume)
    state.lastSeq = ev.seq;
  }
  switch (ev.type) {
    case "session_init_ack": {
      const changed = state.shownSession !== ev.session_id;
      state.ack = { ...ev, resume_token: ev.resume_token || (state.ack && state.ack.resume_token) };
      state.retryMs = 500;
      setConn("connected");
      if (!state.errorShown && !state.noticeSticky) notice(null);
      saveSession();
      if (changed) onSessionStarted();
      const queued = state.outbox.splice(0);
      for (const msg of queued) state.ws.send(JSON.stringify(msg));
      break;
    }
    case "job_status": {
      const row = rowFor(ev.utterance_index);
      if (row.status === "ok" || row.status === "failed") break;
      let text = ev.status;
      if (ev.status === "queued" && ev.queue_position) text += ` (position ${ev.queue_position})`;
      if (ev.status === "retrying" && ev.reason) text += ` (${ev.reason})`;
      setStatus(row, ev.status, text);
      break;
    }
    case "asr_partial": {
      const row = rowFor(ev.utterance_index);
      if (row.final) break;
      if (ev.translation !== undefined && ev.translation !== null) {
        if (ev.tgt_lang && ev.tgt_lang !== state.tgt) break;
        row.mt.textContent = ev.translation;
        row.mt.classList.add("draft");
      }
      if (ev.text) showCaption(row, ev.text, ev.stable || 0);
      break;
    }
    case "translation_result":
      showResult(ev);
      break;
    case "error":
      if ((ev.code === "session_not_found" || ev.code === "unauthorized") && state.connState !== "connected") {
        newSession(`The server no longer knows the previous session (${ev.message}), so a new one started. ` +
          "Anything still waiting in it has no result; what you recorded since is sent in the new one.");
      } else {
        notice(`${ev.code}: ${ev.message}`, true);
      }
      break;
    case "session_closed": // after "End session": its last results are in
      state.userClosed = true;
      forgetSession();
      closeRows("New session");
      state.ack = null;
      state.shownSession = null;
      $("setup").hidden = false;
      $("howto").hidden = false;
      $("controls").hidden = true;
      $("share").hidden = true;
      $("transcript").hidden = true;
      $("end").disabled = false;
      setConn("offline", "session ended");
      notice("The session ended. Start a new one when you like; its rows follow below.", false, true);
      break;
    case "reconnect": // the server is shutting down: come back after its delay and resume
      state.retryMs = Math.max(100, ev.delay_ms || 1000);
      notice("The server is restarting; reconnecting…");
      break;
  }
}

// the resume was refused (the server restarted, or the session expired): the rows of the old
// session stay, marked as ended, and a new session starts at once; audio recorded meanwhile
// (still in the outbox) goes to the new session, whose rows follow the server's numbering
function newSession(message) {
  closeRows("New session");
  state.ack = null;
  forgetSession();
  notice(message, false, true);
  connect();
}

// the rows so far belong to a session that ended: marked so, and the next rows start anew
function closeRows(label) {
  for (const row of state.rows.values()) {
    if (!row.final) setStatus(row, "ended", "ended without a result");
    row.li.classList.add("ended");
  }
  const divider = document.createElement("li");
  divider.className = "divider";
  divider.setAttribute("role", "note");
  divider.textContent = label;
  $("utterances").append(divider);
  state.rows = new Map();
  state.open.clear();
  state.closeTimes.clear();
  state.pendingStop = null;
  state.gen += 1;
  state.lastSeq = 0;
}

function endSession() {
  if (mic.recording) { mic.mode === "ptt" ? talkStop() : toggleListen(); }
  send({ type: "session_close" });
  $("end").disabled = true;
  notice("Ending the session once its last results are in…");
}

// transcript downloads (the server's transcript API, with the view token) and a copy button
function showDownloads() {
  const base = `/api/v1/sessions/${encodeURIComponent(state.ack.session_id)}/transcript`;
  const items = [];
  for (const [lang, what] of [[state.src, "original"], [state.tgt, "translation"]]) {
    for (const [fmt, label] of [["srt", "SRT"], ["vtt", "WebVTT"], ["txt", "text"]]) {
      const a = document.createElement("a");
      a.href = `${base}?${new URLSearchParams({ format: fmt, lang, token: state.ack.view_token || "" })}`;
      a.textContent = `${label}`;
      a.dataset.format = fmt;
      a.dataset.lang = lang;
      a.setAttribute("aria-label", `Download the ${what} (${langName(lang)}) as ${label}`);
      a.download = "";
      items.push(a);
    }
  }
  const src = document.createElement("span");
  src.textContent = `${langName(state.src)}: `;
  const tgt = document.createElement("span");
  tgt.textContent = ` · ${langName(state.tgt)}: `;
  $("downloads").replaceChildren(src, ...spaced(items.slice(0, 3)), tgt, ...spaced(items.slice(3)));
  $("transcript").hidden = false;
}

function spaced(nodes) {
  return nodes.flatMap((n, i) => (i ? [document.createTextNode(" "), n] : [n]));
}

async function copyTranslation() {
  const text = [...state.rows.values()].filter((r) => r.final && r.mt.textContent).map((r) => r.mt.textContent).join("\n");
  try {
    await navigator.clipboard.writeText(text);
    notice("The translation is on the clipboard.");
  } catch (e) {
    notice(`Copying failed: ${e.message || e}. Use a download instead.`, true);
  }
}

// this tab's room: a random key that proves the room is ours, and the room it commits to
// (the first 22 characters of base64url(SHA-256(key)): nobody else can name it first)
function roomIds() {
  let ids = null;
  try { ids = JSON.parse(sessionStorage.getItem(`${STORE}.room`) || "null"); } catch (e) { ids = null; }
  if (!ids || !ids.key || ids.room !== roomOf(ids.key)) {
    const key = randomId(32);
    ids = { room: roomOf(key), key };
    sessionStorage.setItem(`${STORE}.room`, JSON.stringify(ids));
  }
  return ids;
}

function roomOf(key) {
  const digest = sha256(new TextEncoder().encode(key));
  return btoa(String.fromCharCode(...digest)).replace(/\+/g, "-").replace(/\//g, "_").slice(0, 22);
}

// SHA-256 (FIPS 180-4), synchronous: crypto.subtle is missing on plain-http pages off localhost
function sha256(bytes) {
  const K = new Uint32Array([
    0x428a2f98, 0x71374491, 0xb5c0fbcf, 0xe9b5dba5, 0x3956c25b, 0x59f111f1, 0x923f82a4, 0xab1c5ed5,
    0xd807aa98, 0x12835b01, 0x243185be, 0x550c7dc3, 0x72be5d74, 0x80deb1fe, 0x9bdc06a7, 0xc19bf174,
    0xe49b69c1, 0xefbe4786, 0x0fc19dc6, 0x240ca1cc, 0x2de92c6f, 0x4a7484aa, 0x5cb0a9dc, 0x76f988da,
    0x983e5152, 0xa831c66d, 0xb00327c8, 0xbf597fc7, 0xc6e00bf3, 0xd5a79147, 0x06ca6351, 0x14292967,
    0x27b70a85, 0x2e1b2138, 0x4d2c6dfc, 0x53380d13, 0x650a7354, 0x766a0abb, 0x81c2c92e, 0x92722c85,
    0xa2bfe8a1, 0xa81a664b, 0xc24b8b70, 0xc76c51a3, 0xd192e819, 0xd6990624, 0xf40e3585, 0x106aa070,
    0x19a4c116, 0x1e376c08, 0x2748774c, 0x34b0bcb5, 0x391c0cb3, 0x4ed8aa4a, 0x5b9cca4f, 0x682e6ff3,
    0x748f82ee, 0x78a5636f, 0x84c87814, 0x8cc70208, 0x90befffa, 0xa4506ceb, 0xbef9a3f7, 0xc67178f2,
  ]);
  const H = new Uint32Array([0x6a09e667, 0xbb67ae85, 0x3c6ef372, 0xa54ff53a, 0x510e527f, 0x9b05688c, 0x1f83d9ab, 0x5be0cd19]);
  const len = Math.ceil((bytes.length + 9) / 64) * 64;
  const msg = new Uint8Array(len);
  msg.set(bytes);
  msg[bytes.length] = 0x80;
  new DataView(msg.buffer).setUint32(len - 4, bytes.length * 8);
  const w = new Uint32Array(64);
  const rotr = (x, n) => (x >>> n) | (x << (32 - n));
  for (let off = 0; off < len; off += 64) {
    const view = new DataView(msg.buffer, off, 64);
    for (let i = 0; i < 16; i++) w[i] = view.getUint32(i * 4);
    for (let i = 16; i < 64; i++) {
      const s0 = rotr(w[i - 15], 7) ^ rotr(w[i - 15], 18) ^ (w[i - 15] >>> 3);
      const s1 = rotr(w[i - 2], 17) ^ rotr(w[i - 2], 19) ^ (w[i - 2] >>> 10);
      w[i] = (w[i - 16] + s0 + w[i - 7] + s1) >>> 0;
    }
    let [a, b, c, d, e, f, g, h] = H;
    for (let i = 0; i < 64; i++) {
      const t1 = (h + (rotr(e, 6) ^ rotr(e, 11) ^ rotr(e, 25)) + ((e & f) ^ (~e & g)) + K[i] + w[i]) >>> 0;
      const t2 = ((rotr(a, 2) ^ rotr(a, 13) ^ rotr(a, 22)) + ((a & b) ^ (a & c) ^ (b & c))) >>> 0;
      [h, g, f, e, d, c, b, a] = [g, f, e, (d + t1) >>> 0, c, b, a, (t1 + t2) >>> 0];
    }
    [a, b, c, d, e, f, g, h].forEach((v, i) => { H[i] = (H[i] + v) >>> 0; });
  }
  const out = new Uint8Array(32);
  H.forEach((v, i) => new DataView(out.buffer).setUint32(i * 4, v));
  return out;
}

function randomId(n) {
  const bytes = crypto.getRandomValues(new Uint8Array(n));
  const abc = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-_";
  return [...bytes].map((b) => abc[b & 63]).join("");
}

function saveSession() {
  if (!state.ack) return;
  const { session_id, resume_token, view_token } = state.ack;
  sessionStorage.setItem(STORE, JSON.stringify({ session_id, resume_token, view_token, src: state.src, tgt: state.tgt }));
}

function forgetSession() {
  sessionStorage.removeItem(STORE);
}

function onSessionStarted() {
  state.shownSession = state.ack.session_id;
  $("setup").hidden = true;
  $("howto").hidden = true;
  $("controls").hidden = false;
  // the room link survives this session: viewers follow the speaker's next session too
  const link = `${location.origin}/view/room/${encodeURIComponent(roomIds().room)}?lang=${encodeURIComponent(state.tgt)}`;
  $("share-link").href = link;
  showDownloads();
  $("share-link").textContent = link;
  $("share").hidden = false;
}

// ------------------------------------------------------------------ utterance rows

function rowFor(index) {
  let row = state.rows.get(index);
  if (row) return row;
  const li = document.createElement("li");
  li.className = "utt";
  li.dataset.index = index;
  li.dataset.gen = state.gen;
  const meta = document.createElement("div");
  meta.className = "meta";
  const badge = document.createElement("span");
  badge.className = "badge";
  const num = document.createElement("span");
  num.textContent = `#${index}`;
  const latency = document.createElement("span");
  latency.className = "latency";
  // the ids an operator needs to follow this utterance: `linguamesh trace --job JOB LOGS`
  const ids = document.createElement("span");
  ids.className = "ids";
  meta.append(badge, num, latency, ids);
  const asr = document.createElement("p");
  asr.className = "asr draft";
  const mt = document.createElement("p");
  mt.className = "mt";
  mt.lang = state.tgt;
  li.append(meta, asr, mt);
  const asrStable = document.createElement("span");
  asrStable.className = "stable";
  const asrDraft = document.createElement("span");
  asrDraft.className = "tentative";
  row = { li, badge, asr, asrStable, asrDraft, mt, latency, ids, status: "", final: false };
  state.rows.set(index, row);
  state.open.add(index);
  if (state.pendingStop !== null) { // the speaker stopped before the server named this utterance
    state.closeTimes.set(index, state.pendingStop);
    state.pendingStop = null;
    state.open.delete(index);
  }
  // keep rows in utterance order
  const after = [...$("utterances").children].find(
    (c) => c.dataset.gen === String(state.gen) && Number(c.dataset.index) > index,
  );
  $("utterances").insertBefore(li, after || null);
  return row;
}

// the transcript so far: the stable part (will not change) and the draft after it
function showCaption(row, text, stable) {
  const cut = Math.max(0, Math.min(stable, text.length));
  row.asrStable.textContent = text.slice(0, cut);
  row.asrDraft.textContent = text.slice(cut);
  row.asr.replaceChildren(row.asrStable, row.asrDraft);
  row.asr.classList.add("draft");
  state.captions += 1;
}

function setStatus(row, status, text) {
  row.status = status;
  row.li.dataset.status = status;
  row.badge.textContent = text || status;
}

function showResult(ev) {
  state.results.push(ev);
  const row = rowFor(ev.utterance_index);
  row.final = true;
  state.open.delete(ev.utterance_index);
  row.mt.classList.remove("draft");
  if (ev.status === "ok") {
    if (state.errorShown) notice(null); // it works again: an old error is no longer news
    setStatus(row, "ok", "done");
    row.asr.textContent = ev.text_asr || "(no speech)";
    row.asr.classList.remove("draft");
    row.mt.textContent = ev.text_translated;
    if (ev.tts_audio) {
      const blob = new Blob([unb64(ev.tts_audio)], { type: ev.tts_format === "wav" ? "audio/wav" : "audio/*" });
      const audio = document.createElement("audio");
      audio.controls = true;
      audio.src = URL.createObjectURL(blob);
      audio.setAttribute("aria-label", `Translated speech for utterance ${ev.utterance_index}`);
      row.li.append(audio);
      if ($("autoplay").checked) enqueueClip(ev.utterance_index, audio);
    }
  } else {
    const err = ev.error || {};
    setStatus(row, "failed", `failed: ${err.code || "error"}`);
    row.mt.textContent = err.message || "";
  }
  const t0 = state.closeTimes.get(ev.utterance_index);
  const parts = [];
  if (t0 !== undefined) parts.push(`${Math.round(performance.now() - t0)} ms after you stopped`);
  if (ev.timings && ev.timings.total_ms) parts.push(`server ${Math.round(ev.timings.total_ms)} ms`);
  row.latency.textContent = parts.join(" · ");
  row.ids.textContent = `trace ${ev.trace_id || "?"} · job ${ev.job_id}`;
  row.ids.title = "For an operator: linguamesh trace --job " + ev.job_id + " <log files>";
}

// ------------------------------------------------------------------ playback queue
// Translated clips play one at a time, in utterance order, never over each other.

const playback = { queue: [], current: null };

function enqueueClip(index, audio) {
  playback.queue.push({ index, audio });
  playback.queue.sort((a, b) => a.index - b.index);
  if (!playback.current) playNext();
  showPlayer();
}

function playNext() {
  const item = playback.queue.shift() || null;
  playback.current = item;
  showPlayer();
  if (!item) return;
  const start = performance.now();
  const done = () => {
    item.audio.removeEventListener("ended", done);
    state.played.push({ index: item.index, start, end: performance.now() });
    if (playback.current === item) playNext();
  };
  item.audio.addEventListener("ended", done);
  item.audio.play().catch(done);
}

function skipClip() {
  const item = playback.current;
  if (!item) return;
  item.audio.pause();
  item.audio.dispatchEvent(new Event("ended"));
}

function stopPlayback() {
  playback.queue = [];
  skipClip();
}

function showPlayer() {
  const item = playback.current;
  $("player").hidden = !item;
  $("now-playing").textContent = item
    ? `Playing #${item.index}${playback.queue.length ? ` · ${playback.queue.length} waiting` : ""}`
    : "";
}

// ------------------------------------------------------------------ audio out (chunks)

let pending = new Float32Array(0);

function queueSamples(samples) {
  const merged = new Float32Array(pending.length + samples.length);
  merged.set(pending);
  merged.set(samples, pending.length);
  pending = merged;
  while (pending.length >= CHUNK_SAMPLES) {
    sendChunk(pending.subarray(0, CHUNK_SAMPLES), false);
    pending = pending.slice(CHUNK_SAMPLES);
  }
}

// the speaker stopped: the utterance ends here (if the server did not end it already).
// Rows are numbered by the server's utterance_index, never by a count kept here.
function finishUtterance() {
  sendChunk(pending, true);
  pending = new Float32Array(0);
  const now = performance.now();
  if (state.open.size) {
    for (const index of state.open) state.closeTimes.set(index, now);
    state.open.clear();
  } else {
    state.pendingStop = now;
  }
  state.closes += 1;
}

function sendChunk(samples, final) {
  send({ type: "audio_chunk", seq: state.chunkSeq++, audio: b64(toPcm16(samples)), is_final: final });
  sessionStorage.setItem(`${STORE}.chunkSeq`, String(state.chunkSeq)); // a reload goes on from here
}

// ------------------------------------------------------------------ microphone

const mic = { ctx: null, node: null, stream: null, resampler: null, recording: false, mode: "ptt", vad: null, preroll: [] };

async function ensureMic() {
  if (mic.ctx) return;
  mic.stream = await navigator.mediaDevices.getUserMedia({
    audio: { channelCount: 1, echoCancellation: true, noiseSuppression: true },
  });
  mic.ctx = new AudioContext();
  await mic.ctx.audioWorklet.addModule("/static/capture-worklet.js");
  const source = mic.ctx.createMediaStreamSource(mic.stream);
  mic.node = new AudioWorkletNode(mic.ctx, "lm-capture");
  mic.resampler = new Resampler(mic.ctx.sampleRate);
  mic.node.port.onmessage = (e) => onMicBlock(mic.resampler.push(e.data));
  source.connect(mic.node);
}

// the microphone level meter (drawn once a frame)
let level = 0;
let levelDrawn = false;
function showLevel(block) {
  let sum = 0;
  for (const x of block) sum += x * x;
  const db = 20 * Math.log10(Math.sqrt(sum / Math.max(1, block.length)) + 1e-9);
  level = Math.max(level * 0.9, Math.min(100, Math.max(0, (db + 60) * (100 / 60))));
  if (levelDrawn) return;
  levelDrawn = true;
  requestAnimationFrame(() => {
    levelDrawn = false;
    const meter = $("level");
    meter.hidden = false;
    meter.setAttribute("aria-valuenow", String(Math.round(level)));
    meter.firstElementChild.style.width = `${level}%`;
    meter.dataset.active = mic.recording ? "true" : "false";
  });
}

function onMicBlock(block) {
  showLevel(block);
  if (mic.mode === "ptt") {
    if (!mic.recording) return;
    if (performance.now() - mic.heldAt < TAP_MS) { mic.tap.push(block); return; } // maybe a tap
    for (const b of mic.tap) queueSamples(b);
    mic.tap = [];
    queueSamples(block);
    return;
  }
  if (!mic.recording) return; // hands-free but not listening
  const edge = mic.vad.push(block);
  if (edge === "start") {
    for (const b of mic.preroll) queueSamples(b);
    mic.preroll = [];
    queueSamples(block);
  } else if (mic.vad.speaking) {
    queueSamples(block);
  } else if (edge === "end") {
    queueSamples(block);
    finishUtterance();
  } else {
    mic.preroll.push(block);
    if (mic.preroll.length > PREROLL_BLOCKS * 10) mic.preroll.shift();
  }
}

// open the microphone (once) and resume capture; false (with a notice) when it is not available
async function micReady() {
  try {
    await ensureMic();
  } catch (e) {
    notice(`The microphone is not available: ${e.message}`, true);
    return false;
  }
  await mic.ctx.resume();
  return true;
}

async function talkStart() {
  if (mic.recording || !(await micReady())) return;
  mic.heldAt = performance.now();
  mic.tap = [];
  mic.recording = true;
  showRecording();
  $("talk").setAttribute("aria-pressed", "true");
  $("talk").textContent = "Release to send";
}

function talkStop() {
  if (!mic.recording) return;
  mic.recording = false;
  showRecording();
  $("talk").setAttribute("aria-pressed", "false");
  $("talk").textContent = "Hold to talk";
  if (performance.now() - mic.heldAt < TAP_MS) { // a tap: nothing was sent, nothing is
    mic.tap = [];
    notice("Hold the button (or Space) while you speak, then let go.");
    return;
  }
  finishUtterance();
}

function showRecording() {
  $("rec").hidden = !mic.recording;
}

async function toggleListen() {
  if (mic.recording) {
    mic.recording = false;
    showRecording();
    if (mic.vad && mic.vad.speaking) finishUtterance();
    $("listen").setAttribute("aria-pressed", "false");
    $("listen").textContent = "Start listening";
    return;
  }
  if (!(await micReady())) return;
  mic.vad = new EnergyVad();
  mic.preroll = [];
  mic.recording = true;
  showRecording();
  $("listen").setAttribute("aria-pressed", "true");
  $("listen").textContent = "Stop listening";
}

// ------------------------------------------------------------------ file upload

async function sendFile(file) {
  try {
    const ctx = new AudioContext();
    const buf = await ctx.decodeAudioData(await file.arrayBuffer());
    const mono = new Float32Array(buf.length);
    for (let c = 0; c < buf.numberOfChannels; c++) {
      const data = buf.getChannelData(c);
      for (let i = 0; i < data.length; i++) mono[i] += data[i] / buf.numberOfChannels;
    }
    ctx.close();
    queueSamples(resampleAll(mono, buf.sampleRate));
    finishUtterance();
  } catch (e) {
    notice(`That file could not be read as audio: ${e.message || e}`, true);
  }
}

// ------------------------------------------------------------------ wiring

$("src").addEventListener("change", fillTargets);
$("setup").addEventListener("submit", (e) => {
  e.preventDefault();
  state.src = $("src").value;
  state.tgt = $("tgt").value;
  state.userClosed = false;
  connect();
});
$("mode").addEventListener("change", () => {
  mic.mode = $("mode").value;
  $("talk").hidden = mic.mode !== "ptt";
  $("listen").hidden = mic.mode !== "free";
});
const talk = $("talk");
talk.addEventListener("pointerdown", (e) => { e.preventDefault(); talkStart(); });
talk.addEventListener("pointerup", talkStop);
talk.addEventListener("pointerleave", talkStop);
talk.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.repeat) { e.preventDefault(); talkStart(); } });
talk.addEventListener("keyup", (e) => { if (e.key === "Enter") talkStop(); });
// Space is push-to-talk anywhere on the page, except while typing or choosing in a field
function spaceIsForTalk(e) {
  if (e.code !== "Space" || mic.mode !== "ptt" || $("controls").hidden) return false;
  const t = e.target;
  return !(t instanceof HTMLElement && (t.isContentEditable || ["TEXTAREA", "SELECT"].includes(t.tagName) ||
    (t.tagName === "INPUT" && !["checkbox", "radio", "button", "file"].includes(t.type))));
}
document.addEventListener("keydown", (e) => {
  if (!spaceIsForTalk(e)) return;
  e.preventDefault();
  if (!e.repeat) talkStart();
});
document.addEventListener("keyup", (e) => { if (spaceIsForTalk(e)) { e.preventDefault(); talkStop(); } });
$("skip").addEventListener("click", skipClip);
$("copy").addEventListener("click", copyTranslation);
$("end").addEventListener("click", endSession);
$("stop-playback").addEventListener("click", stopPlayback);
$("listen").addEventListener("click", toggleListen);
$("file").addEventListener("change", (e) => {
  if (e.target.files && e.target.files[0]) sendFile(e.target.files[0]);
  e.target.value = "";
});

// test and automation hooks
state.talkStart = talkStart;
state.talkStop = talkStop;
state.toggleListen = toggleListen;

// a reload resumes the session of this tab (its rows come back from the server's replay)
function restoreSession() {
  let saved = null;
  try { saved = JSON.parse(sessionStorage.getItem(STORE) || "null"); } catch (e) { saved = null; }
  if (!saved || !saved.session_id) return false;
  state.src = saved.src;
  state.tgt = saved.tgt;
  state.ack = { session_id: saved.session_id, resume_token: saved.resume_token, view_token: saved.view_token };
  state.lastSeq = 0; // everything again: the rows are rebuilt from the replay
  state.chunkSeq = Number(sessionStorage.getItem(`${STORE}.chunkSeq`) || 0); // the server drops repeated seqs
  onSessionStarted();
  connect();
  return true;
}

state.skipClip = skipClip;
if (!restoreSession()) setConn("ready");
loadLanguages();
