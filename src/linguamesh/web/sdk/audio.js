// Audio helpers: resample to 16 kHz, float -> pcm16 -> base64, a small energy VAD.
// (No DOM: they run in browsers and in node.)

export const RATE = 16000;

export class Resampler {
  // streaming linear-interpolation resampler (fromRate -> 16 kHz)
  constructor(fromRate) { this.ratio = fromRate / RATE; this.pos = 0; this.last = 0; }
  push(input) {
    const out = [];
    let pos = this.pos;
    while (pos < input.length) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = i - 1 < 0 ? this.last : input[i - 1];
      const b = input[i];
      out.push(a + (b - a) * frac);
      pos += this.ratio;
    }
    this.pos = pos - input.length;
    this.last = input[input.length - 1];
    return Float32Array.from(out);
  }
}

export function resampleAll(samples, fromRate) {
  return new Resampler(fromRate).push(samples);
}

export function toPcm16(floats) {
  const out = new Int16Array(floats.length);
  for (let i = 0; i < floats.length; i++) {
    const s = Math.max(-1, Math.min(1, floats[i]));
    out[i] = s < 0 ? s * 0x8000 : s * 0x7fff;
  }
  return new Uint8Array(out.buffer);
}

export function b64(bytes) {
  let s = "";
  for (let i = 0; i < bytes.length; i += 0x8000) {
    s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
  }
  return btoa(s);
}

export function unb64(text) {
  const s = atob(text);
  const out = new Uint8Array(s.length);
  for (let i = 0; i < s.length; i++) out[i] = s.charCodeAt(i);
  return out;
}

// Energy VAD with hangover: speech starts above `on`, ends after `hangMs` below `off`.
export class EnergyVad {
  constructor({ on = 0.015, off = 0.008, hangMs = 700 } = {}) {
    this.on = on; this.off = off; this.hang = hangMs; this.speaking = false; this.quietMs = 0;
  }
  // returns "start", "end" or null for a block of 16 kHz samples
  push(block) {
    let sum = 0;
    for (const x of block) sum += x * x;
    const rms = Math.sqrt(sum / Math.max(1, block.length));
    const ms = (block.length / RATE) * 1000;
    if (!this.speaking && rms > this.on) { this.speaking = true; this.quietMs = 0; return "start"; }
    if (this.speaking) {
      this.quietMs = rms < this.off ? this.quietMs + ms : 0;
      if (this.quietMs >= this.hang) { this.speaking = false; return "end"; }
    }
    return null;
  }
}
