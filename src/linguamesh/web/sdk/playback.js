// Translated clips play one at a time, in utterance order, never over each other.
// A clip is anything with play() (a Promise), pause() and an "ended" event: an
// HTMLAudioElement in a page (clipFromResult makes one from a translation_result).
// Events: "play" {index}, "ended" {index, start, end} (performance.now() times), "change".
import { unb64 } from "./audio.js";

export class PlaybackQueue extends EventTarget {
  constructor() {
    super();
    this.queue = [];
    this.current = null;
  }

  get waiting() { return this.queue.length; }

  add(index, clip) {
    this.queue.push({ index, clip });
    this.queue.sort((a, b) => a.index - b.index);
    if (!this.current) this._next();
    else this._emit("change", {});
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
    const item = this.queue.shift() || null;
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
      if (this.current === item) this._next();
    };
    item.clip.addEventListener("ended", item.finish);
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
