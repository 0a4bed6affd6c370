// Viewer page: live subtitles of a session over Server-Sent Events. EventSource reconnects by
// itself and sends Last-Event-ID, so the server replays what was missed; earlier subtitles come
// from the same replay when the page opens mid-session. A room link (/view/room/{room})
// follows the speaker from session to session (after a server restart, say).
import { langName } from "./lang.js";
const $ = (id) => document.getElementById(id);
const parts = location.pathname.split("/");
const room = parts[2] === "room" ? decodeURIComponent(parts[3] || "") : null;
let sessionId = room ? "" : decodeURIComponent(parts.pop());
const params = new URLSearchParams(location.search);
let token = params.get("token") || "";
let gen = 0; // sessions followed: subtitles of an earlier one stay, before the newer ones
const state = { results: new Map(), langs: new Set(), lang: params.get("lang") || "", drafts: new Map(), sessions: [] };
window.lmView = state;

function setConn(s, label) {
  const el = $("conn");
  el.dataset.state = s;
  el.querySelector(".label").textContent = label;
}

function render() {
  const box = $("subtitles");
  const items = [...state.results.values()]
    .filter((r) => r.tgt_lang === state.lang && r.status === "ok")
    .sort((a, b) => a.gen - b.gen || a.utterance_index - b.utterance_index);
  const showOriginal = $("original").checked;
  // live: the translation drafts of utterances still being spoken (streaming), after the finals
  const live = [...state.drafts.entries()]
    .filter(([key]) => key.startsWith(`${gen}:${state.lang}:`) && !state.results.has(key))
    .sort((a, b) => Number(a[0].split(":")[2]) - Number(b[0].split(":")[2]))
    .map(([key, text]) => {
      const p = document.createElement("p");
      p.className = "live";
      p.dataset.index = key.split(":")[2];
      p.lang = state.lang;
      p.textContent = text;
      return p;
    });
  box.replaceChildren(
    ...items.map((r, i) => {
      const p = document.createElement("p");
      p.dataset.index = r.utterance_index;
      p.lang = r.tgt_lang;
      p.className = i < items.length - 3 ? "old" : "";
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

function fillLangs() {
  const sel = $("lang");
  if (!state.lang && state.langs.size) state.lang = [...state.langs][0];
  const all = [...new Set([...state.langs, state.lang].filter(Boolean))].sort();
  sel.replaceChildren(...all.map((l) => new Option(langName(l), l)));
  sel.value = state.lang;
  links();
}

function links() {
  for (const fmt of ["srt", "vtt", "txt"]) {
    const q = new URLSearchParams({ format: fmt, lang: state.lang, token });
    $(`dl-${fmt}`).href = `/api/v1/sessions/${encodeURIComponent(sessionId)}/transcript?${q}`;
  }
}

$("lang").addEventListener("change", () => { state.lang = $("lang").value; links(); render(); });
$("original").addEventListener("change", render);

let es = null;
let lastSeq = 0; // the last event of the session followed (a new stream goes on after it)
function follow(id, viewToken) {
  if (es) es.close();
  if (id !== sessionId || !state.sessions.includes(id)) { // another session: a new generation
    gen += 1;
    state.sessions.push(id);
    lastSeq = 0;
  }
  sessionId = id;
  token = viewToken;
  links();
  const url = `/api/v1/sessions/${encodeURIComponent(sessionId)}/events/stream?token=${encodeURIComponent(token)}`
    + `&types=translation_result,asr_partial,session_closed&last_event_id=${lastSeq}`;
  es = new EventSource(url);
  es.onopen = () => { heard(); setConn("connected", "live"); $("notice").hidden = true; };
  // a quiet stream sends a heartbeat every `every_s` seconds: twice that without a word and
  // the connection is gone, however open the socket looks (a server that froze, a dead proxy)
  es.addEventListener("heartbeat", (m) => {
    const every = Number(JSON.parse(m.data).every_s);
    if (every > 0) silentAfterMs = 2000 * every;
    heard();
  });
  es.onerror = () => onError(es);
  es.addEventListener("translation_result", onResult);
  es.addEventListener("asr_partial", onDraft);
  es.addEventListener("session_closed", () => {
    setConn("offline", "the session has ended");
    es.close();
  });
}

// a room: which session shows now (polled: the speaker may start a new one at any time)
async function findRoom() {
  try {
    // with access tokens on, the room answers a viewer whose token grants it (?access_token=…)
    const access = params.get("access_token");
    const res = await fetch(`/api/v1/rooms/${encodeURIComponent(room)}`
      + (access ? `?access_token=${encodeURIComponent(access)}` : ""));
    if (res.ok) {
      const cur = await res.json();
      if (cur.session_id !== sessionId || !es) follow(cur.session_id, cur.view_token);
      return;
    }
  } catch (e) { /* the server is away: try again */ }
  if (!es || es.readyState === EventSource.CLOSED) setConn("reconnecting", "waiting for the speaker…");
}

function onError(source) {
  if (source !== es) return;
  if (room) { // the room decides what to follow next
    if (source.readyState === EventSource.CLOSED) setConn("reconnecting", "waiting for the speaker…");
    return;
  }
  if (source.readyState === EventSource.CLOSED) {
    setConn("offline", "closed");
    const el = $("notice");
    el.hidden = false;
    el.classList.add("error");
    el.textContent = "This session cannot be followed: the link is wrong or the session has ended.";
  } else {
    setConn("reconnecting", "reconnecting…");
  }
};
let lastHeard = Date.now();
let silentAfterMs = 10000;
function heard() {
  lastHeard = Date.now();
  if ($("conn").dataset.state === "lost") setConn("connected", "live");
}
setInterval(() => {
  if (!es || es.readyState !== EventSource.OPEN || Date.now() - lastHeard < silentAfterMs) return;
  setConn("lost", "connection lost: reconnecting…");
  const id = sessionId, t = token;
  es.close();
  es = null;
  if (room) findRoom(); else follow(id, t); // a new stream (it resumes after Last-Event-ID)
}, 1000);

function onResult(m) {
  heard();
  lastSeq = Math.max(lastSeq, Number(m.lastEventId) || 0);
  const r = { ...JSON.parse(m.data), gen };
  state.results.set(`${gen}:${r.tgt_lang}:${r.utterance_index}`, r);
  state.drafts.delete(`${gen}:${r.tgt_lang}:${r.utterance_index}`);
  if (!state.langs.has(r.tgt_lang)) { state.langs.add(r.tgt_lang); fillLangs(); }
  render();
}

function onDraft(m) {
  heard();
  lastSeq = Math.max(lastSeq, Number(m.lastEventId) || 0);
  const d = JSON.parse(m.data);
  if (!d.translation || !d.tgt_lang) return;
  const key = `${gen}:${d.tgt_lang}:${d.utterance_index}`;
  if (state.results.has(key)) return;
  state.drafts.set(key, d.translation);
  if (!state.langs.has(d.tgt_lang)) { state.langs.add(d.tgt_lang); fillLangs(); }
  render();
}

fillLangs();
if (room) {
  findRoom();
  setInterval(findRoom, 2000);
} else {
  follow(sessionId, token);
}
