// The SDK's Session against a real scheduler and a node with the test engines
// (tests/integration/test_js_sdk.py starts both and sets LINGUAMESH_URL).
import { test } from "node:test";
import assert from "node:assert/strict";
import WebSocket from "ws";
import { Session, SessionStore, memoryStorage, toPcm16 } from "../index.js";
import { HTTP, URL_, collect, needsServer, next, tone, until } from "./helpers.js";

const open = (o = {}) => new Session({ url: URL_, src: "en", tgt: "es", tts: false, WebSocket, ...o });

test("a streamed utterance gets its status, live captions and result", needsServer, async () => {
  const s = open();
  const ack = await s.start();
  assert.ok(ack.session_id && ack.resume_token && ack.view_token);
  assert.equal(s.state, "connected");
  const statuses = collect(s, "status");
  const captions = collect(s, "caption");
  const ends = collect(s, "utterance-end");
  const result = next(s, "result");
  for (let i = 0; i < 25; i++) s.sendAudio(tone(0.02)); // 0.5 s, as a microphone gives it
  s.endUtterance();
  const r = await result;
  assert.equal(r.status, "ok");
  assert.equal(r.utterance_index, 0);
  assert.match(r.text_asr, /test utterance 0\.50/i);
  assert.ok(r.text_translated.length > 0);
  assert.deepEqual(ends, [{ seq: 25 }]); // 25 chunks (seq 0-24), then the final one
  assert.ok(statuses.some((e) => e.utterance_index === 0));
  assert.ok(captions.length > 0 && captions.every((c) => c.utterance_index === 0));
  await s.close();
  assert.equal(s.state, "offline");
});

test("whole utterances, and a refused message names what it refuses", needsServer, async () => {
  const s = open();
  await s.start();
  const errors = collect(s, "error");
  s.send({ type: "audio_chunk", seq: 0, audio: "not base64!", is_final: false });
  await until(() => errors.length === 1, 5000, "the error");
  assert.ok(errors[0].code, JSON.stringify(errors[0]));
  assert.equal(s.state, "connected"); // the session goes on
  const result = next(s, "result");
  s.sendUtterance(0, toPcm16(tone(0.3)));
  const r = await result;
  assert.equal(r.status, "ok");
  assert.match(r.text_asr, /0\.30/);
  await s.close();
});

test("a dropped socket resumes the session: the replay repeats nothing", needsServer, async () => {
  const s = open();
  await s.start();
  const results = collect(s, "result");
  const opens = collect(s, "open");
  s.sendUtterance(0, toPcm16(tone(0.3)));
  await until(() => results.length === 1, 10000, "the first result");
  s.ws.terminate(); // the network drops: no close frame
  s.sendUtterance(1, toPcm16(tone(0.4))); // waits in the outbox until the session is back
  await until(() => results.length === 2, 15000, "the second result");
  assert.deepEqual(opens.map((o) => o.resumed), [true]);
  assert.deepEqual(results.map((r) => r.utterance_index), [0, 1]);
  await new Promise((r) => setTimeout(r, 300));
  assert.equal(results.length, 2); // nothing twice
  await s.close();
});

test("a reload: a new Session on the same storage resumes and gets the history again", needsServer, async () => {
  const storage = memoryStorage();
  const first = open({ store: new SessionStore(storage) });
  const ack = await first.start();
  first.sendAudio(tone(0.3));
  first.endUtterance();
  await next(first, "result");
  first.disconnect(true); // the page goes away without ending the session

  const again = open({ store: new SessionStore(storage) });
  const replayed = collect(again, "result");
  assert.equal(again.restore(), true);
  await until(() => again.connected, 10000, "the resume");
  assert.equal(again.sessionId, ack.session_id);
  await until(() => replayed.length === 1, 10000, "the replayed result");
  assert.equal(again.chunkSeq, first.chunkSeq); // audio goes on after what was sent
  again.sendAudio(tone(0.4));
  again.endUtterance();
  await until(() => replayed.length === 2, 10000, "the next result");
  assert.deepEqual(replayed.map((r) => r.utterance_index), [0, 1]);
  await again.close();
  assert.equal(new SessionStore(storage).load(), null); // an ended session is forgotten
});

test("a session the server forgot: a new one starts and gets the audio", needsServer, async () => {
  const storage = memoryStorage();
  new SessionStore(storage).save({ session_id: "s-gone", resume_token: "x".repeat(32), src: "en", tgt: "es" });
  const s = open({ store: new SessionStore(storage) });
  const lost = next(s, "lost");
  s.restore();
  s.sendAudio(tone(0.3));
  s.endUtterance(); // recorded while the resume is refused: it goes to the new session
  const result = next(s, "result");
  assert.ok((await lost).message);
  const r = await result;
  assert.equal(r.status, "ok");
  assert.notEqual(s.sessionId, "s-gone");
  await s.close();
});

test("a refused session_init rejects start() with the server's code", needsServer, async () => {
  const s = open({ src: "xx" });
  await assert.rejects(s.start(), (err) => typeof err.code === "string" && err.code.length > 0);
  await until(() => s.state === "offline", 5000, "offline");
});

test("the transcript download and the viewer link", needsServer, async () => {
  const s = open();
  await s.start();
  s.sendAudio(tone(0.5));
  s.endUtterance();
  await next(s, "result");
  const srt = await (await fetch(s.transcriptUrl("en", "srt"))).text();
  assert.match(srt, /00:00:0\d,\d{3} --> /);
  assert.match(srt, /test utterance 0\.50/i);
  assert.ok(s.viewerUrl().startsWith(`${HTTP}/view/${s.sessionId}`));
  await s.close();
});
