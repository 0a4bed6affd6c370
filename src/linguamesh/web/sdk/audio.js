// Audio helpers: resample to 16 kHz, float -> pcm16 -> base64, a small energy VAD.
// (No DOM: they run in browsers and in node.)

export const RATE = 16000;

export class Resampler {
  // streaming resampler (fromRate -> 16 kHz): a low-pass FIR first when downsampling (a
  // windowed sinc at 0.9 x 8 kHz: without it, what a 48 kHz microphone hears above 8 kHz
  // folds back into the speech band and the recogniser hears noise), then linear
  // interpolation. Block by block, with the filter's history carried over.
  constructor(fromRate, taps = 31) {
    this.ratio = fromRate / RATE;
    this.pos = 0;
    this.last = 0;
    this.kernel = this.ratio > 1 ? lowpass((0.9 * RATE) / 2 / fromRate, taps) : null;
    this.history = new Float32Array(this.kernel ? this.kernel.length - 1 : 0);
  }

  push(input) {
    const x = this.kernel ? this._filter(input) : input;
    const out = [];
    let pos = this.pos;
    while (pos < x.length) {
      const i = Math.floor(pos);
      const frac = pos - i;
      const a = i - 1 < 0 ? this.last : x[i - 1];
      const b = x[i];
      out.push(a + (b - a) * frac);
      pos += this.ratio;
    }
    this.pos = pos - x.length;
    if (x.length) this.last = x[x.length - 1];
    return Float32Array.from(out);
  }

  _filter(input) {
    const k = this.kernel;
    const n = k.length;
    const buf = new Float32Array(this.history.length + input.length);
    buf.set(this.history);
    buf.set(input, this.history.length);
    const out = new Float32Array(input.length);
    for (let i = 0; i < input.length; i++) {
      let acc = 0;
      for (let j = 0; j < n; j++) acc += k[j] * buf[i + j];
      out[i] = acc;
    }
    this.history = buf.slice(buf.length - (n - 1));
    return out;
  }
}

// a windowed-sinc low-pass (Blackman), cutoff as a fraction of the sample rate, unit gain
function lowpass(cutoff, taps) {
  const k = new Float32Array(taps);
  const mid = (taps - 1) / 2;
  let sum = 0;
  for (let i = 0; i < taps; i++) {
    const t = i - mid;
    const sinc = t === 0 ? 2 * cutoff : Math.sin(2 * Math.PI * cutoff * t) / (Math.PI * t);
    const w = 0.42 - 0.5 * Math.cos((2 * Math.PI * i) / (taps - 1)) + 0.08 * Math.cos((4 * Math.PI * i) / (taps - 1));
    k[i] = sinc * w;
    sum += k[i];
  }
  for (let i = 0; i < taps; i++) k[i] /= sum;
  return k;
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
