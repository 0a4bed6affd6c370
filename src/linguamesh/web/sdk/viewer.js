// Following a session as a viewer: Server-Sent Events from
// /api/v1/sessions/{id}/events/stream with the session's view token. A dropped stream is
// opened again after the last event seen (no repeats); a stream quiet for twice the
// server's heartbeat interval is taken for dead (a frozen server, a dead proxy) and opened
// again. Events:
//   state   {state}: "connected" | "reconnecting" | "lost" | "failed" (the link is wrong or
//           the session is gone) | "ended"
//   result  translation_result (with `seq`)      draft   asr_partial (with `seq`)
//   ended   session_closed
//   listener {lang, status: "ok" | "unservable" | "over_quota" | "not_granted", message}: with `lang`, where
//           the viewer's language stands (docs/protocol.md, "Listener languages")

export class ViewerStream extends EventTarget {
  /**
   * @param {object} o
   * @param {string} [o.base=""]  the scheduler's http(s) address ("" in its own pages)
   * @param {string} o.sessionId  @param {string} o.token  the session's view token
   * @param {string[]} [o.types]  event types [translation_result, asr_partial, session_closed]
   * @param {boolean} [o.audio=false]  results with their speech (tts_audio)
   * @param {string} [o.lang]  only this language's events; the session translates into it too
   * @param {typeof EventSource} [o.EventSource]
   */
  constructor(o) {
    super();
    this.base = o.base || "";
    this.sessionId = o.sessionId;
    this.token = o.token;
    this.types = o.types || ["translation_result", "asr_partial", "session_closed"];
    this.audio = Boolean(o.audio);
    this.lang = o.lang || "";
    this.ES = o.EventSource || globalThis.EventSource;
    this.lastSeq = 0;
    this.silentAfterMs = 10000;
    this.state = "reconnecting";
    this.es = null;
    this._heard = Date.now();
    this._watch = null;
  }

  url() {
    const q = new URLSearchParams({ token: this.token, types: this.types.join(","), last_event_id: String(this.lastSeq) });
    if (this.audio) q.set("audio", "1");
    if (this.lang) q.set("lang", this.lang);
    return `${this.base}/api/v1/sessions/${encodeURIComponent(this.sessionId)}/events/stream?${q}`;
  }

  open() {
    this.close();
    const es = new this.ES(this.url());
    this.es = es;
    es.onopen = () => { this._hear(); this._setState("connected"); };
    es.onerror = () => {
      if (es !== this.es) return;
      // EventSource retries by itself unless the server refused the stream outright
      this._setState(es.readyState === 2 ? "failed" : "reconnecting");
    };
    es.addEventListener("heartbeat", (m) => {
      const every = Number(JSON.parse(m.data).every_s);
      if (every > 0) this.silentAfterMs = 2000 * every;
      this._hear();
    });
    es.addEventListener("listener", (m) => {
      this._hear();
      this.dispatchEvent(new CustomEvent("listener", { detail: JSON.parse(m.data) }));
    });
    es.addEventListener("translation_result", (m) => this._event("result", m));
    es.addEventListener("asr_partial", (m) => this._event("draft", m));
    es.addEventListener("session_closed", (m) => {
      this._event("ended", m);
      this._setState("ended");
      this.close();
    });
    this._watch = setInterval(() => this._check(), 1000);
  }

  close() {
    clearInterval(this._watch);
    this._watch = null;
    if (this.es) this.es.close();
    this.es = null;
  }

  _setState(state) {
    if (this.state === state) return;
    this.state = state;
    this.dispatchEvent(new CustomEvent("state", { detail: { state } }));
  }

  _hear() {
    this._heard = Date.now();
    if (this.state === "lost") this._setState("connected");
  }

  _event(type, m) {
    this._hear();
    const seq = Number(m.lastEventId) || 0;
    this.lastSeq = Math.max(this.lastSeq, seq);
    this.dispatchEvent(new CustomEvent(type, { detail: { ...JSON.parse(m.data), seq } }));
  }

  // twice the heartbeat interval without a word: the connection is gone, whatever the
  // socket says; a new stream goes on after the last event seen
  _check() {
    if (!this.es || this.es.readyState !== 1 || Date.now() - this._heard < this.silentAfterMs) return;
    this._setState("lost");
    this.open();
    this.state = "lost"; // still lost until the new stream opens
  }
}
