"""Stream a WAV file to a LinguaMesh scheduler as if someone were speaking it, and print
the live captions and the translations as they come.

    python examples/stream_wav.py talk.wav --url ws://127.0.0.1:5010 --src en --tgt es

The audio goes out in 100 ms ``audio_chunk``s at the pace of speech (``--speed 4``: four
times faster); the scheduler ends each utterance at a pause (server-side end of
speech). A dropped connection is resumed: the events missed meanwhile are replayed and
nothing is printed twice. Exits when every utterance has its translation.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from websockets.exceptions import ConnectionClosed

from linguamesh import protocol as p
from linguamesh.audio import to_float32, to_pcm16
from linguamesh.client import ClientError, SessionClient

CHUNK = 3200  # bytes: 100 ms of 16 kHz pcm16


async def stream(args: argparse.Namespace, pcm: bytes) -> int:
    client = SessionClient(args.url, src=args.src, tgt=args.tgt, tts=False, end_of_speech="server",
                           ca_file=args.ca_file)  # fmt: skip
    client.init.token = args.token
    try:
        ack = await client.connect()
    except ClientError as exc:
        print(f"refused: {exc}", file=sys.stderr)
        return 1
    print(f"session {ack.session_id}", flush=True)
    sent_all = asyncio.Event()

    async def speak() -> None:
        seq = 0
        for at in range(0, len(pcm), CHUNK):
            try:
                await client.send_chunk(seq, pcm[at : at + CHUNK])
            except ConnectionClosed:
                pass  # the receiver resumes; a chunk lost with the socket is sent again by seq
            seq += 1
            await asyncio.sleep(0.1 / args.speed)
        await client.send_chunk(seq, b"", is_final=True)
        sent_all.set()

    speaker = asyncio.create_task(speak())
    results = 0
    try:
        while True:
            try:
                ev = await client.recv(timeout=args.idle)
            except ConnectionClosed:
                replayed = await client.resume()
                print(f"(resumed; {replayed} events replayed)", flush=True)
                continue
            except TimeoutError:
                if sent_all.is_set():  # nothing more is coming
                    break
                continue
            if isinstance(ev, p.AsrPartial):
                print(f"  … [{ev.utterance_index}] {ev.text}", flush=True)
            elif isinstance(ev, p.TranslationResult):
                results += 1
                if ev.status == "ok":
                    print(f"[{ev.utterance_index}] {ev.text_asr}\n    → {ev.text_translated}", flush=True)
                else:
                    print(f"[{ev.utterance_index}] failed: {ev.error.code if ev.error else '?'}", flush=True)
            elif isinstance(ev, p.Error):
                print(f"error {ev.code}: {ev.message} ({ev.ref or 'session'})", file=sys.stderr, flush=True)
    finally:
        speaker.cancel()
        await client.close_session()
        await client.wait_closed()
        await client.disconnect()
    print(f"{results} translation(s)", flush=True)
    return 0 if results else 1


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("wav", help="a WAV file (any rate; mono or the first channel)")
    ap.add_argument("--url", default="ws://127.0.0.1:5010")
    ap.add_argument("--src", default="en")
    ap.add_argument("--tgt", default="es")
    ap.add_argument("--speed", type=float, default=1.0, help="1 = the pace of speech")
    ap.add_argument("--idle", type=float, default=5.0, help="seconds without an event after the end to stop")
    ap.add_argument("--token", help="an access token, when the scheduler runs with --api-keys")
    ap.add_argument("--ca-file", help="CA bundle for a wss:// scheduler with a private certificate")
    args = ap.parse_args()
    pcm = to_pcm16(to_float32(Path(args.wav).read_bytes(), "wav", 16000))  # 16 kHz mono pcm16
    sys.exit(asyncio.run(stream(args, pcm)))


if __name__ == "__main__":
    main()
