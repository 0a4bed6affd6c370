// 16 kHz samples in, 20 ms audio_chunk payloads out: the server hears speech as it is spoken.
import { toPcm16 } from "./audio.js";

export const CHUNK_SAMPLES = 320; // 20 ms at 16 kHz

export class Chunker {
  constructor(size = CHUNK_SAMPLES) {
    this.size = size;
    this.pending = new Float32Array(0);
  }

  // the whole chunks (pcm16 bytes) the samples complete; the rest waits for more
  push(samples) {
    const merged = new Float32Array(this.pending.length + samples.length);
    merged.set(this.pending);
    merged.set(samples, this.pending.length);
    const out = [];
    let at = 0;
    while (merged.length - at >= this.size) {
      out.push(toPcm16(merged.subarray(at, at + this.size)));
      at += this.size;
    }
    this.pending = merged.slice(at);
    return out;
  }

  // what is left (maybe nothing), as the utterance's last chunk
  flush() {
    const last = toPcm16(this.pending);
    this.pending = new Float32Array(0);
    return last;
  }
}
