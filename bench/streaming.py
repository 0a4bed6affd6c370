"""Streaming benchmark: live captions and end-of-speech latency, default engines.

    python bench/streaming.py [--sentences 12] [--json]

Starts a real scheduler and a real node (default offline engines, 4 job slots) as
processes on loopback and plays English speech — sentences synthesised by Piper (joe)
and by eSpeak NG, alternately — as 20 ms ``audio_chunk``s at the pace of speech.
Prints:

  A. client marks the end (``is_final`` right after the last chunk):
     time from speech start to the first ``asr_partial``; time from the end of speech
     to the final ``translation_result`` (p50, p90, for utterances up to 6 s);
  B. the same sentences sent whole (``utterance``): latency and WER, the baseline;
     the final-transcript WER of A against it, and ASR seconds per utterance of A
     against B (the decoding cost of streaming), both from the results' timings and
     from the node's CPU time;
  C. server-side end of speech (``end_of_speech: server``, 500 ms): each sentence
     followed by silence, no end marks; time from the last spoken word (the last loud
     30 ms frame of the audio) to the final result;
  D. four sessions streaming at once on this machine's cores: per stream, the end of
     speech to result latency and how far behind real time it fell (that latency
     minus the single-stream median), the utterances queued visibly, and lost ones.

Bounded: a fixed number of sentences per part, one pass. Traffic stays on 127.0.0.1;
the processes are stopped at the end whatever happens.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from linguamesh import protocol as p
from linguamesh.audio import FRAME_MS, frame_rms, to_float32
from linguamesh.client import SessionClient
from linguamesh.engines.models import ModelManager
from linguamesh.engines.registry import build
from linguamesh.quality import corpus_wer
from tests.conftest import free_port
from tests.procs import launch, wait_ready

SENTENCES = [
    "I would like to buy two tickets to the museum for tomorrow morning.",
    "The train to the airport leaves at nine o'clock.",
    "Could you please speak a little more slowly?",
    "We are going to have a meeting after lunch.",
    "My sister lives in a small house near the river.",
    "The weather is very nice this afternoon.",
    "Please send me the report before Friday.",
    "The restaurant opens at seven in the evening.",
    "We need more chairs for the conference room.",
    "The doctor will see you in ten minutes.",
    "Our flight was delayed because of the storm.",
    "She is the best teacher in our school.",
    "Let me know if you have any questions.",
    "He forgot his umbrella at the office.",
    "The red bicycle that my grandfather gave me stood for years near the old bakery.",
    "Please bring your passport and a warm coat, because the mountains are cold in winter.",
    "After the meeting we will walk to the station and take the last train home.",
    "If you need anything during the conference, ask one of the volunteers at the front desk.",
]
CHUNK = 640  # 20 ms of 16 kHz pcm16
RATE = 16000


def pcm16(samples: np.ndarray) -> bytes:
    return (np.clip(samples, -1, 1) * 32767).astype("<i2").tobytes()


async def speech_set(n: int) -> list[tuple[str, str, bytes]]:
    """(text, voice, pcm16 16 kHz) — Piper joe and eSpeak NG alternately."""
    piper = build([{"kind": "piper", "voice": "bundled:joe"}], ModelManager(), strict=True)
    tts = piper.tts_for("en")
    assert tts is not None
    out = []
    texts = SENTENCES[-4:] + SENTENCES[:-4]  # the long ones (4-6 s) first
    for i, text in enumerate((texts * 2)[:n]):
        if i % 2 == 0:
            speech = await tts.synthesize(text, "en")
            samples = to_float32(_wav(speech.samples, speech.sample_rate), "wav", 0, RATE)
            voice = "piper"
        else:
            wav = subprocess.run(
                ["espeak-ng", "-v", "en-us", "--stdout", text], capture_output=True, check=True
            )
            samples = to_float32(wav.stdout, "wav", 0, RATE)
            voice = "espeak"
        out.append((text, voice, pcm16(samples)))
    piper.close()
    return out


def _wav(samples: np.ndarray, rate: int) -> bytes:
    from linguamesh.audio import to_wav

    return to_wav(samples, rate)


def last_word_offset(audio: bytes) -> float:
    """Seconds from the start of ``audio`` to the end of its last loud 30 ms frame."""
    rms = frame_rms(np.frombuffer(audio, "<i2").astype(np.float32) / 32768, RATE)
    loud = np.nonzero(rms > 0.01)[0]
    return float((loud[-1] + 1) * FRAME_MS / 1000) if loud.size else 0.0


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        parts = f.read().rsplit(")", 1)[1].split()
    return (int(parts[11]) + int(parts[12])) / os.sysconf("SC_CLK_TCK")


@dataclass
class Utt:
    text: str
    seconds: float
    start: float = 0.0  # first chunk sent
    end: float = 0.0  # end of speech (is_final sent, or the last spoken word)
    first_partial: float | None = None
    result_at: float | None = None
    result: p.TranslationResult | None = None
    queued: int = 0
    done: asyncio.Event = field(default_factory=asyncio.Event)


@dataclass
class Stream:
    """One session: reads its events in the background and files them by utterance."""

    client: SessionClient
    utts: dict[int, Utt] = field(default_factory=dict)
    errors: list[p.Error] = field(default_factory=list)
    task: asyncio.Task[None] | None = None

    async def __aenter__(self) -> Stream:
        await self.client.connect()
        self.task = asyncio.create_task(self._read())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.task is not None:
            self.task.cancel()
        await self.client.disconnect()

    async def _read(self) -> None:
        while True:
            e = await self.client.recv(None)
            now = time.perf_counter()
            if isinstance(e, p.AsrPartial):
                u = self.utts.get(e.utterance_index)
                if u is not None and u.first_partial is None and e.text:
                    u.first_partial = now
            elif isinstance(e, p.JobStatus) and e.status == "queued":
                u = self.utts.get(e.utterance_index)
                if u is not None:
                    u.queued += 1
            elif isinstance(e, p.TranslationResult):
                u = self.utts.get(e.utterance_index)
                if u is not None and u.result is None:
                    u.result, u.result_at = e, now
                    u.done.set()
            elif isinstance(e, p.Error):
                self.errors.append(e)

    async def play(self, audio: bytes, seq: int) -> tuple[float, int]:
        """``audio`` as 20 ms chunks at the pace of speech; (start time, next seq)."""
        start = time.perf_counter()
        for i, at in enumerate(range(0, len(audio), CHUNK)):
            await asyncio.sleep(max(0.0, start + i * 0.02 - time.perf_counter()))
            await self.client.send_chunk(seq, audio[at : at + CHUNK])
            seq += 1
        return start, seq

    async def say(self, index: int, text: str, audio: bytes, seq: int) -> int:
        """One utterance played at the pace of speech and ended with ``is_final`` (its end of
        speech is then); the next seq."""
        u = self.utts[index] = Utt(text, len(audio) / 2 / RATE)
        u.start, seq = await self.play(audio, seq)
        await self.client.send_chunk(seq, b"", is_final=True)
        u.end = time.perf_counter()
        return seq + 1

    async def wait(self, index: int, timeout: float = 60) -> Utt:
        u = self.utts[index]
        try:
            await asyncio.wait_for(u.done.wait(), timeout)
        except TimeoutError:
            pass  # counted as lost
        return u


def pct(xs: list[float], q: float) -> float:
    if not xs:
        return float("nan")
    xs = sorted(xs)
    return xs[min(len(xs) - 1, round(q * (len(xs) - 1)))]


def line(name: str, xs: list[float]) -> str:
    return f"{name}: p50 {pct(xs, 0.5):.2f} s, p90 {pct(xs, 0.9):.2f} s, max {max(xs, default=float('nan')):.2f} s (n={len(xs)})"


async def part_a(url: str, speech: list[tuple[str, str, bytes]]) -> list[Utt]:
    out = []
    async with Stream(SessionClient(url, src="en", tgt="es")) as s:
        seq = 0
        for i, (text, _voice, audio) in enumerate(speech):
            seq = await s.say(i, text, audio, seq)
            out.append(await s.wait(i))
            await asyncio.sleep(0.3)
    return out


async def part_b(url: str, speech: list[tuple[str, str, bytes]]) -> list[Utt]:
    out = []
    async with Stream(SessionClient(url, src="en", tgt="es")) as s:
        for i, (text, _voice, audio) in enumerate(speech):
            u = s.utts[i] = Utt(text, len(audio) / 2 / RATE)
            u.start = u.end = time.perf_counter()
            await s.client.send_utterance(i, audio)
            out.append(await s.wait(i))
            await asyncio.sleep(0.3)
    return out


async def part_c(url: str, speech: list[tuple[str, str, bytes]]) -> list[Utt]:
    silence = b"\0\0" * int(1.5 * RATE)
    out = []
    async with Stream(SessionClient(url, src="en", tgt="es", end_of_speech="server")) as s:
        seq = 0
        for i, (text, _voice, audio) in enumerate(speech):
            u = s.utts[i] = Utt(text, len(audio) / 2 / RATE)
            u.start, seq = await s.play(audio, seq)
            u.end = u.start + last_word_offset(audio)
            _, seq = await s.play(silence, seq)  # the server must end it on its own
            out.append(await s.wait(i, 30))
    return out


async def part_d(url: str, speech: list[tuple[str, str, bytes]], streams: int) -> list[list[Utt]]:
    async def one(k: int) -> list[Utt]:
        mine = speech[k::streams][:3] or speech[:3]
        got = []
        async with Stream(SessionClient(url, src="en", tgt="es")) as s:
            seq = 0
            await asyncio.sleep(0.25 * k)  # not in lockstep
            for i, (text, _voice, audio) in enumerate(mine):
                seq = await s.say(i, text, audio, seq)
                await asyncio.sleep(0.5)  # a breath, then the next sentence (no waiting for results)
            for i in range(len(mine)):
                got.append(await s.wait(i, 60))
        return got

    return list(await asyncio.gather(*(one(k) for k in range(streams))))


def latencies(utts: list[Utt], max_seconds: float = 1e9) -> list[float]:
    return [u.result_at - u.end for u in utts if u.result_at is not None and u.seconds <= max_seconds]


async def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sentences", type=int, default=12)
    ap.add_argument("--streams", type=int, default=4)
    ap.add_argument("--json", action="store_true", help="print one JSON line with the figures")
    args = ap.parse_args()
    print("synthesising the speech set …", file=sys.stderr)
    speech = await speech_set(args.sentences)
    tmp = Path(tempfile.mkdtemp(prefix="lm-stream-bench-"))
    port = free_port()
    url = f"ws://127.0.0.1:{port}"
    sched = launch(
        "scheduler", "--port", str(port), "--log", "warning", log=tmp / "scheduler.log", measure=False
    )
    node = launch("node", "--scheduler", url, "--node-id", "bench-node", "--max-concurrent-jobs", "4",
                  "--log", "info", log=tmp / "node.log", measure=False)  # fmt: skip
    try:
        await wait_ready(port, sched)
        print("waiting for the node (models load) …", file=sys.stderr)
        for _ in range(1200):
            if "node.connected" in (tmp / "node.log").read_text() if (tmp / "node.log").exists() else False:
                break
            await asyncio.sleep(0.1)
        await part_a(url, speech[:2])  # warm-up: first decodes are slower
        print("A: streaming, the client marks the end …", file=sys.stderr)
        cpu0 = cpu_seconds(node.proc.pid)
        a = await part_a(url, speech)
        cpu_a = (cpu_seconds(node.proc.pid) - cpu0) / len(speech)
        print("B: whole utterances …", file=sys.stderr)
        cpu0 = cpu_seconds(node.proc.pid)
        b = await part_b(url, speech)
        cpu_b = (cpu_seconds(node.proc.pid) - cpu0) / len(speech)
        print("C: server-side end of speech …", file=sys.stderr)
        c = await part_c(url, speech)
        print(f"D: {args.streams} streams at once …", file=sys.stderr)
        d = await part_d(url, speech, args.streams)
    finally:
        node.stop()
        sched.stop()

    wer_a = corpus_wer([(u.text, u.result.text_asr if u.result else "") for u in a])
    wer_b = corpus_wer([(u.text, u.result.text_asr if u.result else "") for u in b])
    wer_c = corpus_wer([(u.text, u.result.text_asr if u.result else "") for u in c])
    asr_a = statistics.mean(u.result.timings.asr_ms / 1000 for u in a if u.result)
    asr_b = statistics.mean(u.result.timings.asr_ms / 1000 for u in b if u.result)
    first = [u.first_partial - u.start for u in a if u.first_partial is not None]
    end_a = latencies(a, 6.0)
    single = pct(latencies(a), 0.5)
    figures = {
        "first_partial_p50_s": pct(first, 0.5),
        "end_to_result_p50_s": pct(end_a, 0.5),
        "whole_utterance_p50_s": pct(latencies(b), 0.5),
        "server_end_p50_s": pct(latencies(c), 0.5),
        "wer_streaming": wer_a,
        "wer_whole": wer_b,
        "wer_server_end": wer_c,
        "asr_seconds_ratio": asr_a / asr_b,
        "node_cpu_ratio": cpu_a / cpu_b,
        "lost": sum(1 for part in (a, b, c, *d) for u in part if u.result is None),
    }
    print(
        f"speech: {len(speech)} sentences, {min(u.seconds for u in a):.1f}-{max(u.seconds for u in a):.1f} s, Piper joe + eSpeak NG; {os.cpu_count()} cores"
    )
    print("A  streamed, client marks the end")
    print("   " + line("speech start -> first asr_partial", first) + "   [target p50 <= 1.2 s]")
    print("   " + line("end of speech -> final result (<= 6 s)", end_a) + "   [target p50 <= 0.8 s]")
    print(f"   WER {wer_a:.1%}; ASR {asr_a:.2f} s/utterance (timings), node CPU {cpu_a:.2f} s/utterance")
    print("B  whole utterances (v1 path), the baseline")
    print("   " + line("sent -> result", latencies(b)))
    print(f"   WER {wer_b:.1%}; ASR {asr_b:.2f} s/utterance (timings), node CPU {cpu_b:.2f} s/utterance")
    print(f"   streaming vs whole: WER {100 * (wer_a - wer_b):+.1f} points [target <= +1]; "
          f"ASR seconds x{asr_a / asr_b:.2f}, node CPU x{cpu_a / cpu_b:.2f} [target <= 2.5x]")  # fmt: skip
    for ua, ub in zip(a, b, strict=True):
        ta, tb = (u.result.text_asr if u.result else "" for u in (ua, ub))
        if ta.lower().strip(".?! ") != tb.lower().strip(".?! "):
            print(f"     differs: streamed {ta!r} / whole {tb!r}")
    print("C  server-side end of speech (500 ms)")
    print("   " + line("last spoken word -> final result", latencies(c)) + "   [target p50 <= 1.3 s]")
    print(f"   WER {wer_c:.1%}; utterances {sum(1 for u in c if u.result)}/{len(c)} ended by the server")
    print(f"D  {len(d)} streams at once")
    for k, utts in enumerate(d):
        lat = latencies(utts)
        behind = max(0.0, pct(lat, 0.5) - single)
        queued = sum(u.queued for u in utts)
        missing = sum(1 for u in utts if u.result is None)
        print(f"   stream {k}: " + line("end of speech -> result", lat)
              + f"; behind real time by {behind:.2f} s (p50); queued {queued}x; lost {missing}")  # fmt: skip
        figures[f"stream{k}_behind_s"] = behind
    print(f"lost: {figures['lost']}")
    if args.json:
        print(json.dumps(figures))
    return 1 if figures["lost"] else 0


if __name__ == "__main__":
    sys.exit(asyncio.run(main()))
