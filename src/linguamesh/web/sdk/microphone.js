// The microphone, as 16 kHz mono blocks (browsers only): getUserMedia, an AudioWorklet
// that hands over every block, and a streaming resampler. Events:
//   audio  Float32Array of 16 kHz samples        level  {value: 0..100} (for a meter)
import { Resampler, resampleAll } from "./audio.js";

export class Microphone extends EventTarget {
  constructor({ workletUrl = new URL("./capture-worklet.js", import.meta.url).href, constraints = {} } = {}) {
    super();
    this.workletUrl = workletUrl;
    this.constraints = { channelCount: 1, echoCancellation: true, noiseSuppression: true, ...constraints };
    this.ctx = null;
    this.stream = null;
    this.level = 0;
    this._opening = null;
  }

  get open() { return this.ctx !== null; }

  // ask for the microphone (the browser's prompt) and start capturing; throws when refused.
  // Calls while the browser asks share that one question.
  async start() {
    if (!this.ctx) {
      this._opening = this._opening || this._open();
      try {
        await this._opening;
      } finally {
        this._opening = null;
      }
    }
    await this.ctx.resume();
  }

  async _open() {
    if (this.ctx) return;
    this.stream = await navigator.mediaDevices.getUserMedia({ audio: this.constraints });
    const ctx = new AudioContext();
    await ctx.audioWorklet.addModule(this.workletUrl);
    const node = new AudioWorkletNode(ctx, "lm-capture");
    const resampler = new Resampler(ctx.sampleRate);
    node.port.onmessage = (e) => this._block(resampler.push(e.data));
    ctx.createMediaStreamSource(this.stream).connect(node);
    this.ctx = ctx;
  }

  // release the microphone (the browser's recording indicator goes off)
  async stop() {
    if (!this.ctx) return;
    for (const track of this.stream.getTracks()) track.stop();
    await this.ctx.close();
    this.ctx = null;
    this.stream = null;
  }

  _block(block) {
    let sum = 0;
    for (const x of block) sum += x * x;
    const db = 20 * Math.log10(Math.sqrt(sum / Math.max(1, block.length)) + 1e-9);
    this.level = Math.max(this.level * 0.9, Math.min(100, Math.max(0, (db + 60) * (100 / 60))));
    this.dispatchEvent(new CustomEvent("level", { detail: { value: this.level } }));
    this.dispatchEvent(new CustomEvent("audio", { detail: block }));
  }
}

// a file's audio as 16 kHz mono samples (browsers only: the browser decodes it)
export async function decodeFile(file) {
  const ctx = new AudioContext();
  try {
    const buf = await ctx.decodeAudioData(await file.arrayBuffer());
    const mono = new Float32Array(buf.length);
    for (let c = 0; c < buf.numberOfChannels; c++) {
      const data = buf.getChannelData(c);
      for (let i = 0; i < data.length; i++) mono[i] += data[i] / buf.numberOfChannels;
    }
    return resampleAll(mono, buf.sampleRate);
  } finally {
    ctx.close();
  }
}
