// The SDK's parts that need no server: chunking, audio encoding, rooms, storage, playback.
import { test } from "node:test";
import assert from "node:assert/strict";
import { createHash } from "node:crypto";
import {
  Chunker, CHUNK_SAMPLES, EnergyVad, PlaybackQueue, Resampler, SessionStore, b64, memoryStorage, roomIds, roomOf,
  skippedNote, toPcm16, unb64,
} from "../index.js";
import { sha256 } from "../sdk/rooms.js";
import { tone } from "./helpers.js";

test("the chunker cuts 20 ms chunks and keeps the rest for the end of the utterance", () => {
  const c = new Chunker();
  assert.equal(c.push(new Float32Array(100)).length, 0);
  const chunks = c.push(new Float32Array(CHUNK_SAMPLES * 2 + 50));
  assert.equal(chunks.length, 2);
  assert.ok(chunks.every((x) => x.length === CHUNK_SAMPLES * 2)); // pcm16: 2 bytes a sample
  assert.equal(c.flush().length, (100 + 50) * 2);
  assert.equal(c.flush().length, 0);
});

test("pcm16 is little-endian, clipped, and survives base64", () => {
  const pcm = toPcm16(Float32Array.from([0, 1, -1, 2, -2, 0.5]));
  const view = new DataView(pcm.buffer);
  const values = [0, 1, 2, 3, 4, 5].map((i) => view.getInt16(i * 2, true));
  assert.deepEqual(values, [0, 32767, -32768, 32767, -32768, 16383]);
  assert.deepEqual(unb64(b64(pcm)), pcm);
  assert.equal(b64(pcm), Buffer.from(pcm).toString("base64"));
});

test("the resampler makes 16 kHz from 48 kHz, block by block, without losing samples", () => {
  const r = new Resampler(48000);
  let n = 0;
  for (let i = 0; i < 100; i++) n += r.push(new Float32Array(480)).length; // 1 s in 10 ms blocks
  assert.ok(Math.abs(n - 16000) <= 1, `${n} samples`);
});

test("the energy VAD finds speech and its end after the hangover", () => {
  const vad = new EnergyVad({ hangMs: 100 });
  assert.equal(vad.push(new Float32Array(320)), null);
  assert.equal(vad.push(tone(0.02)), "start");
  const edges = [];
  for (let i = 0; i < 10; i++) edges.push(vad.push(new Float32Array(320)));
  assert.deepEqual(edges.filter(Boolean), ["end"]);
});

test("a room is the SHA-256 of its key, and the store keeps it", () => {
  const digest = createHash("sha256").update("a key").digest();
  assert.deepEqual(Buffer.from(sha256(new TextEncoder().encode("a key"))), digest);
  assert.equal(roomOf("a key"), digest.toString("base64url").slice(0, 22));
  const store = new SessionStore(memoryStorage());
  const ids = roomIds(store);
  assert.equal(ids.room, roomOf(ids.key));
  assert.deepEqual(roomIds(store), ids); // the same room again (a reload)
});

test("the playback queue plays clips one at a time, in utterance order", async () => {
  class Clip extends EventTarget {
    constructor(log, name) { super(); this.log = log; this.name = name; }
    play() { this.log.push(`play ${this.name}`); setTimeout(() => this.dispatchEvent(new Event("ended")), 5); }
    pause() { this.log.push(`pause ${this.name}`); }
  }
  const log = [];
  const q = new PlaybackQueue();
  const ended = [];
  q.addEventListener("ended", (e) => ended.push(e.detail.index));
  q.add(1, new Clip(log, "one"));
  q.add(3, new Clip(log, "three"));
  q.add(2, new Clip(log, "two")); // arrives late, plays before three
  await new Promise((r) => setTimeout(r, 60));
  assert.deepEqual(ended, [1, 2, 3]);
  assert.deepEqual(log, ["play one", "play two", "play three"]);
  q.add(4, new Clip(log, "four"));
  q.add(5, new Clip(log, "five"));
  q.stop(); // nothing more plays
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(ended, [1, 2, 3, 4]);
  assert.equal(q.current, null);
});

test("clips that waited too long are skipped, and a held queue waits", async () => {
  class Clip extends EventTarget {
    play() { setTimeout(() => this.dispatchEvent(new Event("ended")), 5); }
    pause() {}
  }
  const q = new PlaybackQueue({ maxLagMs: 50 });
  const played = [];
  const skipped = [];
  q.addEventListener("play", (e) => played.push(e.detail.index));
  q.addEventListener("skipped", (e) => skipped.push([e.detail.index, q.skipped]));
  q.hold(); // the speaker talks: nothing plays
  q.add(0, new Clip());
  await new Promise((r) => setTimeout(r, 80));
  q.add(1, new Clip());
  assert.deepEqual(played, []);
  q.release(); // 0 waited 80 ms > 50: skipped, and said so; 1 is fresh: it plays
  await new Promise((r) => setTimeout(r, 30));
  assert.deepEqual(skipped, [[0, 1]]); // one skipped since the last clip played
  assert.equal(q.skipped, 0); // ... until the next one played
  assert.equal(skippedNote(2), "Skipped 2 translations that came too late to be worth hearing");
  assert.deepEqual(played, [1]);
});

test("downsampling filters out what would fold back into the speech band", () => {
  const rms = (x) => Math.sqrt(x.reduce((a, v) => a + v * v, 0) / x.length);
  const tone = (hz) => Float32Array.from({ length: 48000 }, (_, i) => 0.5 * Math.sin((2 * Math.PI * hz * i) / 48000));
  const through = (hz) => {
    const r = new Resampler(48000);
    const parts = [];
    for (let at = 0; at < 48000; at += 128) parts.push(r.push(tone(hz).subarray(at, at + 128))); // worklet blocks
    const out = Float32Array.from(parts.flatMap((p) => [...p]));
    return rms(out.subarray(1600)); // after the filter's start
  };
  assert.ok(Math.abs(through(1000) - 0.5 / Math.SQRT2) < 0.02, `1 kHz passes: ${through(1000)}`);
  assert.ok(through(13000) < 0.02, `13 kHz (it would fold to 3 kHz) is gone: ${through(13000)}`);
});
