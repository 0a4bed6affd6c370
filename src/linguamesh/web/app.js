// LinguaMesh speaker page: pick languages, talk (push-to-talk or hands-free) or send a file,
// see each utterance's status, draft and final transcript, translation and speech.
// Built on the client SDK (/static/sdk/, docs/js-client.md): the session (socket, resume,
// replay), its storage, the microphone, the chunker and the playback queue are the SDK's;
// this file wires them to the page (rows.js draws the utterances, ui.js the rest).
import {
  Session, SessionStore, Microphone, PlaybackQueue, EnergyVad, clipFromResult, decodeFile, roomIds, skippedNote,
} from "./sdk/index.js";
import { langName } from "./lang.js";
import { Rows } from "./rows.js";
import { $, notice, notices, setConn, spaced } from "./ui.js";

const PREROLL_BLOCKS = 30; // blocks kept before hands-free speech starts (its first syllable)
const TAP_MS = 250; // a press shorter than this is a tap, not speech: nothing is sent

const store = new SessionStore(sessionStorage); // this tab's session survives a reload
const params = new URLSearchParams(location.search);
const rows = new Rows(undefined, { debug: params.has("debug") });
const playback = new PlaybackQueue({ maxLagMs: 5000 }); // the voice never falls far behind
const mic = new Microphone();
// what tests and automation see: the SDK's objects (and a "session" event for each new one)
const lm = Object.assign(new EventTarget(), { session: null, playback, mic, rows });
window.lm = lm;

// ------------------------------------------------------------------ languages

let pairs = [];
async function loadLanguages() {
  try {
    pairs = (await (await fetch("/api/v1/languages")).json()).pairs;
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
    if (!lm.session) setConn("offline", "no translation node");
    setTimeout(loadLanguages, 3000);
  } else {
    if (!notices.error && !notices.sticky) notice(null);
    $("start").disabled = false;
    if (!lm.session) setConn("ready");
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

// ------------------------------------------------------------------ the session

function newSession(src, tgt) {
  const { room, key } = roomIds(store);
  const session = new Session({
    url: `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}`,
    src, tgt, store, room, roomKey: key,
    // an access token from the operator's backend (?token=… in the page's address)
    token: params.get("token"),
    // shown to viewers and in the transcripts; kept for the next session of the tab
    title: $("title").value.trim(), presenter: $("presenter").value.trim(),
  });
  rows.src = src;
  session.addEventListener("connection", (e) => setConn(e.detail.state));
  session.addEventListener("open", (e) => {
    // a target no node serves now: said before anyone speaks (not when the first utterance
    // fails); a sticky notice (the server forgot the session) stays: it says more
    const warnings = e.detail.ack.warnings || [];
    if (warnings.length && !notices.sticky) notice(warnings.map((w) => w.message).join(" "), true);
    else if (!notices.error && !notices.sticky) notice(null);
    if (shownSession !== e.detail.ack.session_id) onSessionStarted(session);
  });
  session.addEventListener("status", (e) => rows.status(e.detail));
  session.addEventListener("caption", (e) => {
    rows.caption(e.detail, session.tgt);
    rows.reveal(e.detail.utterance_index);
  });
  session.addEventListener("result", (e) => onResult(e.detail));
  session.addEventListener("error", (e) => notice(`${e.detail.code}: ${e.detail.message}`, true));
  session.addEventListener("lost", (e) => {
    rows.close("New session");
    notice(`The server no longer knows the previous session (${e.detail.message}), so a new one started. ` +
      "Anything still waiting in it has no result; what you recorded since is sent in the new one.", false, true);
  });
  session.addEventListener("restarting", () => notice("The server is restarting; reconnecting…"));
  session.addEventListener("closed", onSessionClosed);
  lm.session = session;
  lm.dispatchEvent(new CustomEvent("session", { detail: session }));
  return session;
}

let shownSession = null;
function onSessionStarted(session) {
  shownSession = session.sessionId;
  $("setup").hidden = true;
  $("howto").hidden = true;
  $("controls").hidden = false;
  $("end-row").hidden = false;
  // the room link survives this session: viewers follow the speaker's next session too
  const link = session.viewerUrl();
  $("share-link").href = link;
  $("share-link").textContent = link;
  $("share-qr").src = `/api/v1/qr.svg?link=${encodeURIComponent(link)}`;
  $("share").hidden = false;
  showDownloads(session);
}

// after "End session": its last results are in. The transcript links and the viewer link
// stay (they go on working: the organiser wants them now); the microphone is released.
function onSessionClosed() {
  rows.close("New session");
  shownSession = null;
  $("setup").hidden = false;
  $("howto").hidden = false;
  $("controls").hidden = true;
  $("end-row").hidden = true;
  $("end").disabled = false;
  setConn("offline", "session ended");
  notice("The session ended: its transcript stays available above. Start a new one when you like.", false, true);
  $("start").focus();
}

function onResult(ev) {
  if (ev.status === "ok" && notices.error) notice(null); // it works again: an old error is no longer news
  const clip = ev.status === "ok" && ev.tts_audio ? clipFromResult(ev) : null;
  rows.result(ev, clip);
  rows.reveal(ev.utterance_index);
  if (ev.status === "ok" && ev.text_translated) $("announce").textContent = ev.text_translated;
  if (clip && $("autoplay").checked) playback.add(ev.utterance_index, clip);
}

function endSession() {
  if (!confirm("End the session? Viewers stop receiving captions; the transcript stays available.")) return;
  if (recording) { mode === "ptt" ? talkStop() : toggleListen(); }
  mic.stop(); // the browser's recording indicator goes off
  lm.session.close();
  $("end").disabled = true;
  notice("Ending the session once its last results are in…");
}

// transcript downloads (the server's transcript API, with the view token) and a copy button
function showDownloads(session) {
  const items = [];
  for (const [lang, what] of [[session.src, "original"], [session.tgt, "translation"]]) {
    for (const [fmt, label] of [["srt", "SRT"], ["vtt", "WebVTT"], ["txt", "text"]]) {
      const a = document.createElement("a");
      a.href = session.transcriptUrl(lang, fmt);
      a.textContent = label;
      a.dataset.format = fmt;
      a.dataset.lang = lang;
      a.setAttribute("aria-label", `Download the ${what} (${langName(lang)}) as ${label}`);
      a.download = "";
      items.push(a);
    }
  }
  const src = document.createElement("span");
  src.textContent = `${langName(session.src)}: `;
  const tgt = document.createElement("span");
  tgt.textContent = ` · ${langName(session.tgt)}: `;
  const parts = [src, ...spaced(items.slice(0, 3)), tgt, ...spaced(items.slice(3))];
  if (session.room) { // the whole event: every session of this room (after a restart, a new session)
    const event = document.createElement("span");
    event.textContent = " · whole event: ";
    const links = [["srt", "SRT"], ["txt", "text"]].map(([fmt, label]) => {
      const a = document.createElement("a");
      a.href = session.roomTranscriptUrl(session.tgt, fmt);
      a.textContent = label;
      a.dataset.format = fmt;
      a.dataset.room = "1";
      a.setAttribute("aria-label", `Download the whole event's translation (every session of this room) as ${label}`);
      a.download = "";
      return a;
    });
    parts.push(event, ...spaced(links));
  }
  $("downloads").replaceChildren(...parts);
  $("transcript").hidden = false;
}

async function copyLink() {
  try {
    await navigator.clipboard.writeText($("share-link").href);
    notice("The viewer link is on the clipboard.");
  } catch (e) {
    notice(`Copying failed: ${e.message || e}. Select the link and copy it instead.`, true);
  }
}

async function copyTranslation() {
  try {
    await navigator.clipboard.writeText(rows.translations());
    notice("The translation is on the clipboard.");
  } catch (e) {
    notice(`Copying failed: ${e.message || e}. Use a download instead.`, true);
  }
}

// ------------------------------------------------------------------ playback

function showPlayer() {
  const item = playback.current;
  const note = skippedNote(playback.skipped); // said until the next clip plays
  $("player").hidden = !item && !note;
  $("now-playing").textContent = [
    item ? `Playing #${item.index}${playback.waiting ? ` · ${playback.waiting} waiting` : ""}` : "", note,
  ].filter(Boolean).join(" · ");
  $("skip").hidden = !item;
  $("stop-playback").hidden = !item;
}
playback.addEventListener("change", showPlayer);
playback.addEventListener("skipped", showPlayer);
playback.addEventListener("play", showPlayer);

// ------------------------------------------------------------------ microphone

let mode = "ptt";
let recording = false;
let heldAt = 0;
let tap = [];
let vad = null;
let preroll = [];

// the speaker stopped (or the page's silence detector heard a pause): the utterance ends
function finishUtterance() {
  lm.session.endUtterance();
  rows.stopped();
}

let levelDrawn = false;
mic.addEventListener("level", () => {
  if (levelDrawn) return;
  levelDrawn = true;
  requestAnimationFrame(() => {
    levelDrawn = false;
    const meter = $("level");
    meter.hidden = false;
    meter.setAttribute("aria-valuenow", String(Math.round(mic.level)));
    meter.firstElementChild.style.width = `${mic.level}%`;
    meter.dataset.active = recording ? "true" : "false";
    if (micTest) { // the pre-flight test before going live
      const test = $("test-level");
      test.setAttribute("aria-valuenow", String(Math.round(mic.level)));
      test.firstElementChild.style.width = `${mic.level}%`;
      micTest.loudest = Math.max(micTest.loudest, mic.level);
    }
  });
});

mic.addEventListener("audio", (e) => {
  const block = e.detail;
  if (!recording) return;
  const session = lm.session;
  if (mode === "ptt") {
    if (performance.now() - heldAt < TAP_MS) { tap.push(block); return; } // maybe a tap
    for (const b of tap) session.sendAudio(b);
    tap = [];
    session.sendAudio(block);
    return;
  }
  const edge = vad.push(block);
  if (edge === "start") {
    for (const b of preroll) session.sendAudio(b);
    preroll = [];
    session.sendAudio(block);
  } else if (vad.speaking) {
    session.sendAudio(block);
  } else if (edge === "end") {
    session.sendAudio(block);
    finishUtterance();
  } else {
    preroll.push(block);
    if (preroll.length > PREROLL_BLOCKS) preroll.shift();
  }
});

// open the microphone (once) and resume capture; false (with a notice) when it is not available
async function micReady() {
  try {
    await mic.start();
    return true;
  } catch (e) {
    notice(`The microphone is not available (${e.message}). Allow it for this site — the microphone ` +
      "icon in the address bar, or the site settings — then press the button again; or send a file.", true);
    return false;
  }
}

// the pre-flight microphone test: the level for a few seconds, then whether speech was heard
// (nothing is sent: no session yet)
let micTest = null;
async function testMicrophone() {
  if (micTest) return finishMicTest();
  if (!(await micReady())) return;
  micTest = { loudest: 0, timer: setTimeout(() => finishMicTest(), 8000) };
  $("test-level").hidden = false;
  $("mic-test").textContent = "Stop the test";
  $("mic-test-note").textContent = "Say a few words: the bar should move.";
}
// keepOpen: the session starts now and records with it
function finishMicTest(keepOpen = false) {
  if (!micTest) return;
  clearTimeout(micTest.timer);
  const heard = micTest.loudest >= 5;
  micTest = null;
  $("test-level").hidden = true;
  $("mic-test").textContent = "Test the microphone";
  $("mic-test-note").textContent = heard
    ? "Your microphone works."
    : "The microphone hears nothing: check that it is the right one, not muted, and close to you.";
  if (!keepOpen && !lm.session) mic.stop(); // released until the session starts
}

// the microphone is open for the speaker: translated speech waits (it would talk over them
// and be heard again by the microphone); clips that waited too long are skipped
function recordingChanged() {
  if (recording) playback.hold();
  else playback.release();
  showRecording();
}

let pressed = false; // the talk button (or Space) is held now
async function talkStart() {
  if (recording || pressed) return;
  pressed = true;
  if (!(await micReady()) || !pressed) { // released while the browser asked: nothing starts
    pressed = false;
    return;
  }
  heldAt = performance.now();
  tap = [];
  recording = true;
  recordingChanged();
  $("talk").setAttribute("aria-pressed", "true");
  $("talk").textContent = "Release to send";
}

function talkStop() {
  pressed = false;
  if (!recording) return;
  recording = false;
  recordingChanged();
  $("talk").setAttribute("aria-pressed", "false");
  $("talk").textContent = "Hold to talk";
  if (performance.now() - heldAt < TAP_MS) { // a tap: nothing was sent, nothing is
    tap = [];
    notice("Hold the button (or Space) while you speak, then let go.");
    return;
  }
  finishUtterance();
}

function showRecording() {
  $("rec").hidden = !recording;
}

async function toggleListen() {
  if (recording) {
    recording = false;
    recordingChanged();
    if (vad && vad.speaking) finishUtterance();
    $("listen").setAttribute("aria-pressed", "false");
    $("listen").textContent = "Start listening";
    store.set("mic", { mode, listening: false });
    return;
  }
  if (!(await micReady())) return;
  vad = new EnergyVad();
  preroll = [];
  recording = true;
  recordingChanged();
  $("listen").setAttribute("aria-pressed", "true");
  $("listen").textContent = "Stop listening";
  store.set("mic", { mode, listening: true });
}

function setMode(value) {
  mode = value;
  $("mode").value = value;
  $("talk").hidden = mode !== "ptt";
  $("listen").hidden = mode !== "free";
  store.set("mic", { mode, listening: recording && mode === "free" });
}

// a file: decoded by the browser, sent at three times real time (the server's intake takes
// about four seconds of audio a second), with its progress, and what was refused said
async function sendFile(file) {
  let samples;
  try {
    samples = await decodeFile(file);
  } catch (e) {
    notice(`That file could not be read as audio: ${e.message || e}`, true);
    return;
  }
  const session = lm.session;
  const refused = [];
  const onError = (e) => refused.push(e.detail);
  session.addEventListener("error", onError);
  const long = samples.length > 16000 * 10;
  try {
    await session.streamAudio(samples, {
      onProgress: (f) => { if (long) notice(`Sending ${file.name}: ${Math.round(f * 100)} %`); },
    });
    rows.stopped();
  } finally {
    session.removeEventListener("error", onError);
  }
  if (refused.length) {
    const first = refused[0];
    notice(`${refused.length} part${refused.length > 1 ? "s" : ""} of ${file.name} ${refused.length > 1 ? "were" : "was"} refused ` +
      `(${first.code}: ${first.message}). Send the rest again later, or a shorter file.`, true, true);
  } else if (long) {
    notice(`${file.name} is sent; its translations follow.`);
  }
}

// ------------------------------------------------------------------ wiring

$("src").addEventListener("change", fillTargets);
$("setup").addEventListener("submit", async (e) => {
  e.preventDefault();
  if (notices.sticky) notice(null); // an old "the session ended" is no longer news
  // the microphone is asked for now, not at the first press: answering the browser's
  // question must not leave a recording running with nobody holding the button
  finishMicTest(true);
  await micReady();
  store.set("event", { title: $("title").value.trim(), presenter: $("presenter").value.trim() });
  newSession($("src").value, $("tgt").value).start().catch((err) => notice(err.message, true));
});
$("mode").addEventListener("change", () => setMode($("mode").value));
$("mic-test").addEventListener("click", testMicrophone);
const talk = $("talk");
talk.addEventListener("pointerdown", (e) => { e.preventDefault(); talkStart(); });
talk.addEventListener("pointerup", talkStop);
talk.addEventListener("pointerleave", talkStop);
talk.addEventListener("keydown", (e) => { if (e.key === "Enter" && !e.repeat) { e.preventDefault(); talkStart(); } });
talk.addEventListener("keyup", (e) => { if (e.key === "Enter") talkStop(); });
// Space is push-to-talk anywhere on the page, except on a control that Space works
// (a button, a checkbox, a field: WCAG 2.1.1) — the talk button itself excepted
function spaceIsForTalk(e) {
  if (e.code !== "Space" || mode !== "ptt" || $("controls").hidden) return false;
  const t = e.target;
  if (!(t instanceof HTMLElement) || t === $("talk")) return true;
  return !(t.isContentEditable || t.closest("button, input, select, textarea, a[href], summary, [role=button]"));
}
document.addEventListener("keydown", (e) => {
  if (!spaceIsForTalk(e)) return;
  e.preventDefault();
  if (!e.repeat) talkStart();
});
document.addEventListener("keyup", (e) => { if (spaceIsForTalk(e)) { e.preventDefault(); talkStop(); } });
$("skip").addEventListener("click", () => playback.skip());
$("copy").addEventListener("click", copyTranslation);
$("copy-link").addEventListener("click", copyLink);
$("end").addEventListener("click", endSession);
$("stop-playback").addEventListener("click", () => playback.stop());
$("listen").addEventListener("click", toggleListen);
$("file").addEventListener("change", (e) => {
  if (e.target.files && e.target.files[0]) sendFile(e.target.files[0]);
  e.target.value = "";
});
Object.assign(lm, { talkStart, talkStop, toggleListen }); // for tests and automation

// the event's title and presenter, as typed last in this tab (a new session after a
// restart carries them too)
const named = store.get("event");
if (named) { $("title").value = named.title || ""; $("presenter").value = named.presenter || ""; }
// a reload resumes the session of this tab (its rows come back from the server's replay),
// in the microphone mode it had; hands-free listening goes on if the browser lets it
const saved = store.load();
if (saved) {
  newSession(saved.src, saved.tgt).restore();
  const micState = store.get("mic");
  if (micState && micState.mode) setMode(micState.mode);
  if (micState && micState.mode === "free" && micState.listening) resumeListening();
} else {
  setConn("ready");
}
loadLanguages();

async function resumeListening() {
  const started = await Promise.race([
    toggleListen().then(() => recording),
    new Promise((resolve) => setTimeout(() => resolve(false), 2000)), // the browser waits for a click
  ]);
  notice(started
    ? "Hands-free listening goes on after the reload; the sentence you were saying when it reloaded was cut."
    : "Hands-free listening stopped with the reload: press Start listening to go on.", false, true);
}
