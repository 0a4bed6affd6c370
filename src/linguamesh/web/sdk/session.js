// A speaker's session over /ws/session (docs/protocol.md): session_init, streaming audio
// in 20 ms chunks or whole utterances, live captions, results, resume with replay after a
// drop or a reload, session_close. Typed events (an EventTarget), no global state.
//
//   const s = new Session({ url: "wss://host", src: "en", tgt: "es" });
//   s.addEventListener("caption", (e) => show(e.detail.text));
//   s.addEventListener("result", (e) => show(e.detail.text_translated));
//   await s.start();
//   s.sendAudio(samples16k); ... s.endUtterance();
//
// Events (CustomEvent, the message or the value in `detail`):
//   connection  {state}: "connecting" | "connected" | "reconnecting" | "offline"
//   open        {ack, resumed}: the server acknowledged session_init (again after a resume)
//   status      job_status            caption   asr_partial          result   translation_result
//   error       error (from the server: a refused message, with `code` and `ref`)
//   lost        {message}: a resume was refused (the server forgot the session): a new session
//               started; what was waiting to be sent goes to it
//   closed      session_closed (after close(): every result is in)
//   restarting  reconnect (the server is going away; the session resumes after `delay_ms`)
//   utterance-end {seq}: endUtterance() sent the utterance's last chunk
import { RATE, b64 } from "./audio.js";
import { Chunker } from "./chunker.js";

export const PROTOCOL_VERSION = 1;

function httpBase(url) {
  return url.replace(/^ws(s?):/, "http$1:").replace(/\/ws\/session$/, "").replace(/\/$/, "");
}

export class Session extends EventTarget {
  /**
   * @param {object} o
   * @param {string} o.url  the scheduler: "wss://host" (or "ws://…"; "/ws/session" is added)
   * @param {string} o.src  @param {string} o.tgt  languages of the speech and the translation
   * @param {boolean} [o.tts=true]  @param {boolean} [o.partials=true]
   * @param {"server"|"client"} [o.endOfSpeech="server"]  who ends an utterance at a pause
   * @param {string} [o.room]  @param {string} [o.roomKey]  the speaker's room (rooms.js)
   * @param {string} [o.token]  an access token from your backend
   * @param {string} [o.title]  @param {string} [o.presenter]  the event's name and who speaks
   *   (shown to viewers and in transcripts; at most 120 characters each)
   * @param {import("./storage.js").SessionStore} [o.store]  resume state survives a reload
   * @param {typeof WebSocket} [o.WebSocket]  a WebSocket class (node: the "ws" package)
   */
  constructor(o) {
    super();
    this.url = o.url.replace(/\/$/, "").replace(/\/ws\/session$/, "") + "/ws/session";
    this.base = httpBase(this.url);
    this.src = o.src;
    this.tgt = o.tgt;
    this.options = { tts: o.tts ?? true, partials: o.partials ?? true, endOfSpeech: o.endOfSpeech ?? "server" };
    this.room = o.room ?? null;
    this.roomKey = o.roomKey ?? null;
    this.token = o.token ?? null;
    this.title = o.title || null;
    this.presenter = o.presenter || null;
    this.store = o.store ?? null;
    this.WS = o.WebSocket ?? globalThis.WebSocket;
    this.retry = { initialMs: 500, maxMs: 5000, ...(o.retry || {}) };
    this.state = "offline";
    this.ack = null;          // the last session_init_ack (session_id, resume_token, view_token…)
    this.lastSeq = 0;         // the newest event seen: a resume replays what came after it
    this.chunkSeq = 0;        // audio_chunk seq, counted over the whole session
    this.outbox = [];         // messages waiting for the session to be (back) up
    this.chunker = new Chunker();
    this.ws = null;
    this._wanted = false;     // reconnect when the socket drops
    this._retryMs = this.retry.initialMs;
    this._timer = null;
    this._started = null;
  }

  get sessionId() { return this.ack ? this.ack.session_id : null; }
  get viewToken() { return this.ack ? this.ack.view_token : null; }
  get connected() { return this.state === "connected"; }

  // open the session; resolves with the first session_init_ack, rejects on a refusal
  start() {
    this._wanted = true;
    this._started = new Promise((resolve, reject) => { this._onFirstAck = { resolve, reject }; });
    this._connect();
    return this._started;
  }

  // the session this store kept (a reload): resume it; false when there is none
  restore() {
    const saved = this.store && this.store.load();
    if (!saved) return false;
    this.src = saved.src;
    this.tgt = saved.tgt;
    this.ack = { session_id: saved.session_id, resume_token: saved.resume_token, view_token: saved.view_token };
    this.lastSeq = 0; // everything again: the page rebuilds what it shows from the replay
    this.chunkSeq = Number(saved.chunkSeq || 0); // the server drops a seq it has seen
    this._wanted = true;
    this._started = new Promise((resolve, reject) => { this._onFirstAck = { resolve, reject }; });
    this._connect();
    return true;
  }

  // ------------------------------------------------------------------ audio out

  // 16 kHz mono float samples, sent as 20 ms chunks as they complete
  sendAudio(samples) {
    for (const chunk of this.chunker.push(samples)) this._chunk(chunk, false);
  }

  // the speaker stopped: the rest, marked is_final (the server ends the utterance here
  // unless it ended it at a pause already)
  endUtterance() {
    this._chunk(this.chunker.flush(), true);
    this._emit("utterance-end", { seq: this.chunkSeq - 1 });
  }

  // recorded audio (a file's): sent at `speed` times real time — the server's intake allows
  // a session about 4 seconds of audio a second after a burst, so a long file sent at once
  // would be refused in part — then the utterance ends. `onProgress(fraction)`; an
  // AbortSignal stops it. Resolves when all is sent.
  async streamAudio(samples, { speed = 3, onProgress = null, signal = null } = {}) {
    const step = Math.round(RATE * 0.5); // half a second at a time
    const started = Date.now();
    for (let at = 0; at < samples.length; at += step) {
      if (signal && signal.aborted) break;
      this.sendAudio(samples.subarray(at, at + step));
      if (onProgress) onProgress(Math.min(1, (at + step) / samples.length));
      const due = started + ((at + step) / RATE / speed) * 1000;
      const wait = due - Date.now();
      if (wait > 0 && at + step < samples.length) await new Promise((r) => setTimeout(r, wait));
    }
    this.endUtterance();
  }

  // a whole utterance at once (pcm16 at 16 kHz, or a WAV file's bytes with format "wav")
  sendUtterance(index, bytes, format = null) {
    const msg = { type: "utterance", utterance_index: index, audio: b64(bytes) };
    if (format) msg.audio_format = format;
    this.send(msg);
  }

  _chunk(pcm, final) {
    this.send({ type: "audio_chunk", seq: this.chunkSeq++, audio: b64(pcm), is_final: final });
    if (this.store) this.store.save({ chunkSeq: this.chunkSeq }); // a reload goes on from here
  }

  // any client message; kept until the session is (back) up
  send(msg) {
    if (this.ws && this.ws.readyState === 1 && this.state === "connected") this.ws.send(JSON.stringify(msg));
    else this.outbox.push(msg);
  }

  // tell the server the events up to `seq` are handled: it may drop them from the replay
  // window (a late viewer then gets them from the transcript, without speech)
  acknowledge(seq = this.lastSeq) {
    this.send({ type: "ack", seq });
  }

  // end the session: resolves once session_closed arrived (every result is in)
  close() {
    return new Promise((resolve) => {
      this.addEventListener("closed", () => resolve(), { once: true });
      this.send({ type: "session_close" });
    });
  }

  // drop the socket without ending the session (it resumes unless `stay` is true)
  disconnect(stay = false) {
    if (stay) this._wanted = false;
    const ws = this.ws;
    if (ws) ws.close();
  }

  // a transcript download: format "srt" | "vtt" | "txt", lang the source or a target
  transcriptUrl(lang, format = "srt") {
    const q = new URLSearchParams({ format, lang, token: this.viewToken || "" });
    return `${this.base}/api/v1/sessions/${encodeURIComponent(this.sessionId)}/transcript?${q}`;
  }

  // the whole event's transcript: every session of this speaker's room, one after the other
  roomTranscriptUrl(lang, format = "srt") {
    const q = new URLSearchParams({ format, lang });
    return `${this.base}/api/v1/rooms/${encodeURIComponent(this.room)}/transcript?${q}`;
  }

  // the viewer page of this session (or of the room, which follows the speaker's sessions)
  viewerUrl(lang = this.tgt) {
    const path = this.room ? `/view/room/${encodeURIComponent(this.room)}` : `/view/${encodeURIComponent(this.sessionId)}`;
    return `${this.base}${path}?lang=${encodeURIComponent(lang)}`;
  }

  // ------------------------------------------------------------------ the socket

  _emit(type, detail) {
    this.dispatchEvent(new CustomEvent(type, { detail }));
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this._emit("connection", { state });
  }

  _init() {
    const init = {
      type: "session_init", protocol_version: PROTOCOL_VERSION, src_lang: this.src, tgt_lang: this.tgt,
      tts: this.options.tts, partials: this.options.partials, audio_format: "pcm16", sample_rate: RATE,
      end_of_speech: this.options.endOfSpeech,
    };
    if (this.room) { init.room = this.room; init.room_key = this.roomKey; }
    if (this.token) init.token = this.token;
    if (this.title) init.title = this.title;
    if (this.presenter) init.presenter = this.presenter;
    if (this.ack) {
      init.resume = { session_id: this.ack.session_id, resume_token: this.ack.resume_token, last_seq: this.lastSeq };
    }
    return init;
  }

  _connect() {
    clearTimeout(this._timer);
    this._setState(this.ack ? "reconnecting" : "connecting");
    let ws;
    try {
      ws = new this.WS(this.url);
    } catch (e) {
      this._retryLater();
      return;
    }
    this.ws = ws;
    ws.onopen = () => ws.send(JSON.stringify(this._init()));
    ws.onmessage = (m) => {
      let ev;
      try { ev = JSON.parse(typeof m.data === "string" ? m.data : String(m.data)); } catch (e) { return; }
      this._handle(ev);
    };
    ws.onerror = () => {}; // onclose follows
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      if (!this._wanted) { this._setState("offline"); return; }
      this._retryLater();
    };
  }

  _retryLater() {
    this._setState("reconnecting");
    const wait = this._retryMs;
    this._retryMs = Math.min(this.retry.maxMs, this._retryMs * 2);
    this._timer = setTimeout(() => this._connect(), wait);
  }

  _handle(ev) {
    if (ev.seq) {
      if (ev.seq <= this.lastSeq) return; // seen already (a replay after a resume)
      this.lastSeq = ev.seq;
    }
    switch (ev.type) {
      case "session_init_ack": {
        const resumed = Boolean(this.ack && this.ack.session_id === ev.session_id);
        this.ack = { ...ev, resume_token: ev.resume_token || (this.ack && this.ack.resume_token) };
        this._retryMs = this.retry.initialMs;
        this._setState("connected");
        if (this.store) {
          const { session_id, resume_token, view_token } = this.ack;
          this.store.save({ session_id, resume_token, view_token, src: this.src, tgt: this.tgt, chunkSeq: this.chunkSeq });
        }
        this._emit("open", { ack: this.ack, resumed });
        if (this._onFirstAck) { this._onFirstAck.resolve(this.ack); this._onFirstAck = null; }
        for (const msg of this.outbox.splice(0)) this.ws.send(JSON.stringify(msg));
        break;
      }
      case "job_status": this._emit("status", ev); break;
      case "asr_partial": this._emit("caption", ev); break;
      case "translation_result": this._emit("result", ev); break;
      case "error":
        if ((ev.code === "session_not_found" || ev.code === "unauthorized") && this.state !== "connected" && this.ack) {
          this._newSession(ev.message);
        } else if (this.state !== "connected" && this._onFirstAck) {
          this._wanted = false; // the first session_init was refused: nothing to resume
          this._onFirstAck.reject(Object.assign(new Error(`${ev.code}: ${ev.message}`), { code: ev.code }));
          this._onFirstAck = null;
          this._emit("error", ev);
          const ws = this.ws;
          this.ws = null;
          if (ws) ws.close();
          this._setState("offline");
        } else {
          this._emit("error", ev);
        }
        break;
      case "session_closed":
        this._wanted = false;
        if (this.store) this.store.clear();
        this.ack = null;
        this.lastSeq = 0;
        this.chunkSeq = 0;
        this._setState("offline"); // (before "closed": a listener there has the last word)
        this._emit("closed", ev);
        break;
      case "reconnect": // the server goes away: come back after its delay and resume
        this._retryMs = Math.max(100, ev.delay_ms || 1000);
        this._emit("restarting", ev);
        break;
      default:
        break; // a newer server's additions: ignored (docs/protocol.md, versioning)
    }
  }

  // the server no longer knows the session: start a new one; queued audio goes there
  _newSession(message) {
    this.ack = null;
    this.lastSeq = 0;
    this.chunkSeq = 0;
    for (const msg of this.outbox) if (msg.type === "audio_chunk") msg.seq = this.chunkSeq++;
    if (this.store) this.store.clear();
    this._emit("lost", { message });
    const ws = this.ws;
    this.ws = null;
    if (ws) ws.close();
    this._connect();
  }
}
