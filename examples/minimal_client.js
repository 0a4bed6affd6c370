// A LinguaMesh client written from docs/protocol.md alone, in plain JavaScript (node 20+ or
// a browser; no SDK). It streams speech as 20 ms audio_chunks (pcm16, 16 kHz), ends the
// utterance, prints what the scheduler says, acknowledges the events and closes the session.
//
//   node examples/minimal_client.js ws://127.0.0.1:5010 [talk.wav]   (no file: a 1 s tone)
import { readFileSync } from "node:fs";

const WS = globalThis.WebSocket ?? (await import("ws")).default; // node 22 has WebSocket
const [url = "ws://127.0.0.1:5010", file] = process.argv.slice(2);

// 16-bit mono samples at 16 kHz: a WAV file's data after its 44-byte header, or a tone
function speech() {
  if (file) return new Int16Array(readFileSync(file).buffer.slice(44));
  return Int16Array.from({ length: 16000 }, (_, i) => 3000 * Math.sin((2 * Math.PI * 220 * i) / 16000));
}

const ws = new WS(`${url}/ws/session`);
const send = (msg) => ws.send(JSON.stringify(msg));
let closing = false;
ws.onopen = () => send({ type: "session_init", protocol_version: 1, src_lang: "en", tgt_lang: "es", tts: false });
ws.onmessage = (frame) => {
  const ev = JSON.parse(frame.data);
  if (ev.seq) send({ type: "ack", seq: ev.seq }); // numbered events can be acknowledged
  switch (ev.type) {
    case "session_init_ack": {
      console.log(`session ${ev.session_id}`);
      const samples = speech();
      let seq = 0; // counts over the whole session
      for (let at = 0; at < samples.length; at += 320) { // 320 samples: 20 ms
        const bytes = Buffer.from(samples.slice(at, at + 320).buffer);
        const last = at + 320 >= samples.length;
        send({ type: "audio_chunk", seq: seq++, audio: bytes.toString("base64"), is_final: last });
      }
      break;
    }
    case "asr_partial": console.log(`  … ${ev.text}`); break;
    case "translation_result":
      if (ev.status === "ok") console.log(`result ${ev.utterance_index} ok: ${ev.text_asr} -> ${ev.text_translated}`);
      else console.log(`result ${ev.utterance_index} failed: ${ev.error.code}`);
      if (!closing) { closing = true; send({ type: "session_close" }); } // one utterance: done
      break;
    case "error": console.log(`error ${ev.code}: ${ev.message}`); break;
    case "session_closed": console.log(`closed: ${ev.reason}`); ws.close(); break;
  }
};
ws.onclose = () => process.exit(closing ? 0 : 1);
