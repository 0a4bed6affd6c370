// Viewer page: live subtitles of a session, on the SDK's ViewerStream (Server-Sent Events
// that resume after the last event seen, and a heartbeat that tells a dead connection from
// a quiet one). Earlier subtitles come from the replay when the page opens mid-session. A
// room link (/view/room/{room}) follows the speaker from session to session.
import { ViewerStream, PlaybackQueue, clipFromResult, currentSession, skippedNote } from "./sdk/index.js";
import { langName } from "./lang.js";
import { $, setConn } from "./ui.js";

const parts = location.pathname.split("/");
const room = parts[2] === "room" ? decodeURIComponent(parts[3] || "") : null;
const params = new URLSearchParams(location.search);
const view = {
  sessionId: room ? "" : decodeURIComponent(parts.pop()),
  token: params.get("token") || "",
  lang: params.get("lang") || "",
  gen: 0,                 // sessions followed: subtitles of an earlier one stay, before the newer ones
  sessions: [],
  results: new Map(),     // `${gen}:${lang}:${index}` -> result
  drafts: new Map(),      // the same keys -> the translation draft of an utterance being spoken
  langs: new Set(),
  offered: new Set(),     // the targets some node serves (/api/v1/languages)
  stream: null,
};
window.lmView = view; // for tests: the stream (an SDK ViewerStream) and the sessions followed

// the translated voice, for a listener who asks (the stream then carries it: audio=1); a
// clip that waited more than 5 s when its turn comes is skipped, and that is said
const playback = new PlaybackQueue({ maxLagMs: 5000 });
view.playback = playback;
function showPlayer() {
  const item = playback.current;
  const note = skippedNote(playback.skipped); // said until the next clip plays
  $("player").hidden = !item && !note;
  $("player").textContent = [item ? "playing the translation" : "", note].filter(Boolean).join(" · ");
}
playback.addEventListener("change", showPlayer);
playback.addEventListener("skipped", showPlayer);
playback.addEventListener("play", showPlayer);

function render() {
  const box = $("subtitles");
  const items = [...view.results.values()]
    .filter((r) => r.tgt_lang === view.lang)
    .sort((a, b) => a.gen - b.gen || a.utterance_index - b.utterance_index);
  const showOriginal = $("original").checked;
  // live: the translation drafts of utterances still being spoken (streaming), after the finals
  const live = [...view.drafts.entries()]
    .filter(([key]) => key.startsWith(`${view.gen}:${view.lang}:`) && !view.results.has(key))
    .sort((a, b) => Number(a[0].split(":")[2]) - Number(b[0].split(":")[2]))
    .map(([key, text]) => {
      const p = document.createElement("p");
      p.className = "live";
      p.dataset.index = key.split(":")[2];
      p.lang = view.lang;
      p.textContent = text;
      return p;
    });
  box.replaceChildren(
    ...items.map((r, i) => {
      const p = document.createElement("p");
      p.dataset.index = r.utterance_index;
      p.lang = r.tgt_lang;
      p.className = i < items.length - 3 ? "old" : "";
      if (r.status !== "ok") { // a gap, said: not silence that looks like nothing was spoken
        p.classList.add("gap");
        p.lang = "en";
        p.textContent = "[a sentence could not be translated]";
        return p;
      }
      p.textContent = r.text_translated;
      if (showOriginal && r.text_asr) {
        const small = document.createElement("small");
        small.textContent = ` — ${r.text_asr}`;
        p.append(small);
      }
      return p;
    }),
    ...live,
  );
  box.lastElementChild?.scrollIntoView({ block: "end" });
}

// the languages a node can translate into (a listener may pick any of them: the session
// then translates into it too, from the next sentence on)
async function loadLanguages() {
  try {
    const pairs = (await (await fetch("/api/v1/languages")).json()).pairs || [];
    for (const p of pairs) view.offered.add(p.tgt);
  } catch (e) { /* the server is away: the languages seen so far */ }
  fillLangs();
}

function fillLangs() {
  const sel = $("lang");
  if (!view.lang && view.langs.size) view.lang = [...view.langs][0];
  const all = [...new Set([...view.langs, ...view.offered, view.lang].filter(Boolean))].sort();
  sel.replaceChildren(...all.map((l) => new Option(langName(l), l)));
  sel.value = view.lang;
  links();
}

function links() {
  for (const fmt of ["srt", "vtt", "txt"]) {
    const q = new URLSearchParams({ format: fmt, lang: view.lang, token: view.token });
    $(`dl-${fmt}`).href = `/api/v1/sessions/${encodeURIComponent(view.sessionId)}/transcript?${q}`;
  }
}

function seen(lang) {
  if (!view.langs.has(lang)) { view.langs.add(lang); fillLangs(); }
}

const STATES = {
  connected: ["connected", "live"],
  reconnecting: ["lost", "connection lost: reconnecting…"],
  lost: ["lost", "connection lost: reconnecting…"],
  ended: ["offline", "the session has ended"],
};

function onState(state) {
  if (state === "connected") $("notice").hidden = true;
  if (state !== "connected") { clearTimeout(quietTimer); $("activity").textContent = ""; }
  else if (!$("activity").textContent) $("activity").textContent = "paused";
  if (room && (state === "failed" || state === "reconnecting")) { // the room decides what to follow next
    roomWaits();
  } else if (state === "failed") {
    setConn("offline", "closed");
    const el = $("notice");
    el.hidden = false;
    el.classList.add("error");
    el.textContent = "This session cannot be followed: the link is wrong or the session has ended.";
  } else if (STATES[state]) {
    setConn(...STATES[state]);
  }
}

// fromStart: the same session again, from its first event (another language's events)
function follow(id, viewToken, fromStart = false) {
  const same = view.stream && id === view.sessionId;
  const lastSeq = same && !fromStart ? view.stream.lastSeq : 0;
  if (view.stream) view.stream.close();
  if (!view.sessions.includes(id)) { // another session: a new generation
    view.gen += 1;
    view.sessions.push(id);
  }
  view.sessionId = id;
  view.token = viewToken;
  links();
  // only the chosen language's events (the session translates into it if it did not yet)
  const stream = new ViewerStream({ sessionId: id, token: viewToken, lang: view.lang, audio: $("listen").checked });
  stream.lastSeq = lastSeq; // the same session again: go on after the last event seen
  stream.addEventListener("state", (e) => onState(e.detail.state));
  stream.addEventListener("listener", (e) => onListener(e.detail));
  stream.addEventListener("result", (e) => {
    const r = { ...e.detail, gen: view.gen };
    const key = `${view.gen}:${r.tgt_lang}:${r.utterance_index}`;
    const live = !view.results.has(key) && !stale(r);
    view.results.set(key, r);
    if (live && $("listen").checked && r.tgt_lang === view.lang && r.status === "ok" && r.tts_audio) {
      playback.add(r.utterance_index, clipFromResult(r));
    }
    view.drafts.delete(key);
    seen(r.tgt_lang);
    render();
  });
  stream.addEventListener("draft", (e) => {
    const d = e.detail;
    speaking();
    if (!d.translation || !d.tgt_lang) return;
    const key = `${view.gen}:${d.tgt_lang}:${d.utterance_index}`;
    if (view.results.has(key)) return;
    view.drafts.set(key, d.translation);
    seen(d.tgt_lang);
    render();
  });
  view.stream = stream;
  stream.open();
}

// the event's name and who speaks, as the speaker gave them
function showTitle(title, presenter) {
  const named = [title, presenter].filter(Boolean).join(" — ");
  $("title").textContent = named || "Live subtitles";
  document.title = named ? `${named} — live subtitles` : "LinguaMesh — live subtitles";
}

// a room: which session shows now (polled: the speaker may start a new one at any time)
async function findRoom() {
  try {
    // with access tokens on, the room answers a viewer whose token grants it (?access_token=…)
    const cur = await currentSession("", room, params.get("access_token"));
    if (cur) showTitle(cur.title, cur.presenter);
    if (cur && (cur.session_id !== view.sessionId || !view.stream || view.stream.state === "failed")) {
      follow(cur.session_id, cur.view_token);
      return;
    }
    serverAway = false;
    if (cur) return;
  } catch (e) { serverAway = true; } // the server is away: try again
  roomWaits();
}

// a room's viewer without a live stream: the server answers and no session shows (the
// speaker is between sessions), or the server does not answer at all
let serverAway = false;
function roomWaits() {
  if (view.stream && view.stream.state === "connected") return;
  if (serverAway) setConn("lost", "connection lost: reconnecting…");
  else setConn("reconnecting", "waiting for the speaker…");
}

// what was said long ago (the replay when the page opens) is read, not heard
function stale(r) {
  const end = (r.spoken_at || 0) + (r.audio_seconds || 0);
  return end > 0 && Date.now() / 1000 - end > 20;
}

// "speaking…" while drafts of an utterance come in, "paused" once none came for a while
// (silence and a broken stream look the same otherwise; the latter says "connection lost")
let quietTimer = null;
function speaking() {
  $("activity").textContent = "speaking…";
  clearTimeout(quietTimer);
  quietTimer = setTimeout(() => { $("activity").textContent = "paused"; }, 3000);
}

function onListener({ lang, status, message }) {
  const el = $("notice");
  el.hidden = false;
  el.classList.toggle("error", status !== "ok");
  el.textContent = status === "ok"
    ? `Translating into ${langName(lang)} from the next sentence on.`
    : `${langName(lang)} is not available: ${message}.`;
}

// another language: a stream of that language's events from the start of the session
$("lang").addEventListener("change", () => {
  view.lang = $("lang").value;
  const url = new URL(location.href);
  url.searchParams.set("lang", view.lang);
  history.replaceState(null, "", url); // a reload keeps the choice
  links();
  render();
  if (view.stream) follow(view.sessionId, view.token, true);
});
$("original").addEventListener("change", render);
$("listen").addEventListener("change", () => {
  if (!$("listen").checked) playback.stop();
  if (view.stream) follow(view.sessionId, view.token); // the same stream, with or without the voice
});
$("size").addEventListener("change", () => {
  $("subtitles").style.setProperty("--scale", $("size").value);
});
// projector: the page full screen, the last lines large
$("projector").addEventListener("click", async () => {
  document.body.classList.toggle("projector");
  const on = document.body.classList.contains("projector");
  $("projector").textContent = on ? "Leave full screen" : "Full screen";
  try {
    if (on && document.fullscreenEnabled && !document.fullscreenElement) await document.documentElement.requestFullscreen();
    if (!on && document.fullscreenElement) await document.exitFullscreen();
  } catch (e) { /* full screen refused (an iframe, a browser setting): the large layout stays */ }
});
document.addEventListener("fullscreenchange", () => {
  if (!document.fullscreenElement && document.body.classList.contains("projector")) $("projector").click();
});
loadLanguages();
if (room) {
  findRoom();
  setInterval(findRoom, 2000);
} else {
  follow(view.sessionId, view.token);
  showSessionTitle();
}

// a session's own link: its event's name from the session's card
async function showSessionTitle() {
  try {
    const q = new URLSearchParams({ token: view.token });
    const res = await fetch(`/api/v1/sessions/${encodeURIComponent(view.sessionId)}?${q}`);
    if (res.ok) {
      const card = await res.json();
      showTitle(card.title, card.presenter);
    }
  } catch (e) { /* the stream says what is wrong with the server */ }
}
