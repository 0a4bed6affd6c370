// Translated clips play one at a time, in utterance order, never over each other, and
// never far behind: a clip that waited longer than `maxLagMs` when its turn comes is
// skipped (a "skipped" event says so), so the voice keeps up with continuous speech.
// hold() keeps clips from starting (while the speaker's microphone is open), release()
// lets them go on. A clip is anything with play() (a Promise), pause() and an "ended"
// event: an HTMLAudioElement in a page (clipFromResult makes one from a result).
// Events: "play" {index}, "ended" {index, start, end} (performance.now() times),
// "skipped" {index, waitedMs}, "change". `skipped`: clips skipped since the last one played
// (what a page says until the next one plays: skippedNote).
import { unb64 } from "./audio.js";

export class PlaybackQueue extends EventTarget {
  constructor({ maxLagMs = 5000 } = {}) {
    super();
    this.maxLagMs = maxLagMs;
    this.queue = [];
    this.current = null;
    this.held = false;
    this.skipped = 0;
  }

  get waiting() { return this.queue.length; }

  add(index, clip) {
    this.queue.push({ index, clip, added: performance.now() });
    this.queue.sort((a, b) => a.index - b.index);
    if (!this.current && !this.held) this._next();
    else this._emit("change", {});
  }

  // clips wait (the one playing finishes); release() lets them go on
  hold() {
    this.held = true;
  }

  release() {
    this.held = false;
    if (!this.current) this._next();
  }

  // stop the clip that plays; the next one starts
  skip() {
    const item = this.current;
    if (!item) return;
    item.clip.pause();
    item.finish();
  }

  // nothing more: the queue is emptied and the clip that plays stops
  stop() {
    this.queue = [];
    this.skip();
  }

  _emit(type, detail) { this.dispatchEvent(new CustomEvent(type, { detail })); }

  _next() {
    let item = null;
    while (!this.held && this.queue.length) {
      const head = this.queue.shift();
      const waited = performance.now() - head.added;
      if (waited <= this.maxLagMs) { item = head; break; }
      this.skipped += 1;
      this._emit("skipped", { index: head.index, waitedMs: Math.round(waited) }); // too late to be worth hearing
    }
    this.current = item;
    this._emit("change", {});
    if (!item) return;
    const start = performance.now();
    let done = false;
    item.finish = () => {
      if (done) return;
      done = true;
      item.clip.removeEventListener("ended", item.finish);
      this._emit("ended", { index: item.index, start, end: performance.now() });
      if (this.current === item) { this.current = null; this._next(); }
    };
    item.clip.addEventListener("ended", item.finish);
    this.skipped = 0;
    this._emit("play", { index: item.index });
    Promise.resolve(item.clip.play()).catch(item.finish); // a clip that cannot play is passed
  }
}

// an <audio> element with a result's speech (browsers only)
export function clipFromResult(result) {
  const type = result.tts_format === "wav" ? "audio/wav" : "audio/*";
  const audio = document.createElement("audio");
  audio.src = URL.createObjectURL(new Blob([unb64(result.tts_audio)], { type }));
  return audio;
}

// what a page says of the clips a queue skipped since the last one played ("" for none)
export function skippedNote(n) {
  return n ? `Skipped ${n} translation${n > 1 ? "s" : ""} that came too late to be worth hearing` : "";
}
