// The speaker page's utterance rows: one per utterance, in the server's utterance order,
// with its status, live caption (stable part and draft), translation, speech and latency.
// Rows of an ended session stay, marked, before a divider; the next session's rows follow.
import { $ } from "./ui.js";

//: the speaker's stop time goes to an utterance the server names this soon after it
const STOP_MATCH_MS = 1500;

export class Rows {
  // `debug`: show each row's trace and job ids (operator data) in the page, not only in a tooltip
  constructor(list = $("utterances"), { debug = false } = {}) {
    this.list = list;
    this.debug = debug;
    this.src = "";
    this.rows = new Map();
    this.gen = 0;               // sessions this page has shown
    this.open = new Set();      // indices with no result and no stop time yet
    this.stopTimes = new Map(); // utterance index -> when the speaker stopped
    this.pendingStop = null;    // the speaker stopped before the server named the utterance
  }

  get(index, lang) {
    let row = this.rows.get(index);
    if (row) return row;
    const li = document.createElement("li");
    li.className = "utt";
    li.dataset.index = index;
    li.dataset.gen = this.gen;
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
    if (this.src) asr.lang = this.src;
    const mt = document.createElement("p");
    mt.className = "mt";
    mt.lang = lang;
    li.append(meta, asr, mt);
    const asrStable = document.createElement("span");
    asrStable.className = "stable";
    const asrDraft = document.createElement("span");
    asrDraft.className = "tentative";
    row = { li, badge, asr, asrStable, asrDraft, mt, latency, ids, status: "", final: false };
    this.rows.set(index, row);
    this.open.add(index);
    if (this.pendingStop !== null) { // the speaker stopped just before the server named it
      if (performance.now() - this.pendingStop < STOP_MATCH_MS) {
        this.stopTimes.set(index, this.pendingStop);
        this.open.delete(index);
      }
      this.pendingStop = null;
    }
    const after = [...this.list.children].find(
      (c) => c.dataset.gen === String(this.gen) && Number(c.dataset.index) > index,
    );
    this.list.insertBefore(li, after || null);
    return row;
  }

  // the row was updated: keep it in view (the live caption is what the speaker reads)
  reveal(index) {
    const row = this.rows.get(index);
    if (row) row.li.scrollIntoView({ block: "nearest" });
  }

  // the speaker stopped: the open utterances (or the next one the server names) end now
  stopped() {
    const now = performance.now();
    if (this.open.size) {
      for (const index of this.open) this.stopTimes.set(index, now);
      this.open.clear();
    } else {
      this.pendingStop = now;
    }
  }

  status(ev) {
    const row = this.get(ev.utterance_index, ev.tgt_lang);
    if (row.final) return;
    let text = ev.status;
    if (ev.status === "queued" && ev.queue_position) text += ` (position ${ev.queue_position})`;
    if (ev.status === "retrying" && ev.reason) text += ` (${ev.reason})`;
    setStatus(row, ev.status, text);
  }

  // the transcript so far: the stable part (will not change) and the draft after it
  caption(ev, tgt) {
    const row = this.get(ev.utterance_index, tgt);
    if (row.final) return;
    if (ev.translation !== undefined && ev.translation !== null && (!ev.tgt_lang || ev.tgt_lang === tgt)) {
      row.mt.textContent = ev.translation;
      row.mt.classList.add("draft");
    }
    if (!ev.text) return;
    const cut = Math.max(0, Math.min(ev.stable || 0, ev.text.length));
    row.asrStable.textContent = ev.text.slice(0, cut);
    row.asrDraft.textContent = ev.text.slice(cut);
    row.asr.replaceChildren(row.asrStable, row.asrDraft);
    row.asr.classList.add("draft");
  }

  // a result; with speech, `clip` (an <audio>) is shown in its row
  result(ev, clip) {
    const row = this.get(ev.utterance_index, ev.tgt_lang);
    row.final = true;
    this.open.delete(ev.utterance_index);
    row.mt.classList.remove("draft");
    if (ev.status === "ok") {
      setStatus(row, "ok", "done");
      row.asr.textContent = ev.text_asr || "(no speech)";
      row.asr.classList.remove("draft");
      row.mt.textContent = ev.text_translated;
      if (clip) {
        clip.controls = true;
        clip.setAttribute("aria-label", `Translated speech for utterance ${ev.utterance_index}`);
        row.li.append(clip);
      }
    } else {
      const err = ev.error || {};
      setStatus(row, "failed", `failed: ${err.code || "error"}`);
      row.mt.textContent = err.message || "";
    }
    const t0 = this.stopTimes.get(ev.utterance_index);
    const parts = [];
    if (t0 !== undefined) parts.push(`${Math.round(performance.now() - t0)} ms after you stopped`);
    if (ev.timings && ev.timings.total_ms) parts.push(`server ${Math.round(ev.timings.total_ms)} ms`);
    row.latency.textContent = parts.join(" · ");
    // operator data: in a tooltip of the row (and shown with ?debug=1)
    row.li.title = `trace ${ev.trace_id || "?"} · job ${ev.job_id} — linguamesh trace --job ${ev.job_id} <log files>`;
    if (this.debug) row.ids.textContent = `trace ${ev.trace_id || "?"} · job ${ev.job_id}`;
  }

  // the translations shown so far, one a line
  translations() {
    return [...this.rows.values()].filter((r) => r.final && r.mt.textContent).map((r) => r.mt.textContent).join("\n");
  }

  // the session ended: its rows are marked, and the next rows start anew
  close(label) {
    for (const row of this.rows.values()) {
      if (!row.final) setStatus(row, "ended", "ended without a result");
      row.li.classList.add("ended");
    }
    const divider = document.createElement("li");
    divider.className = "divider";
    divider.setAttribute("role", "note");
    divider.textContent = label;
    this.list.append(divider);
    this.rows = new Map();
    this.open.clear();
    this.stopTimes.clear();
    this.pendingStop = null;
    this.gen += 1;
  }
}

function setStatus(row, status, text) {
  row.status = status;
  row.li.dataset.status = status;
  row.badge.textContent = text || status;
}
