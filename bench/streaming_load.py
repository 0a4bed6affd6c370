"""Streaming load benchmark: N speakers streaming in real time through one scheduler.

    python bench/streaming_load.py [--speakers 100,200,400] [--seconds 15] [--overload]

Each speaker is a session that streams speech as 20 ms ``audio_chunk``s paced in real
time (utterances of about 2 s, a 0.3 s pause between them, each ended by the client's
``is_final``), on real WebSockets on loopback; the speakers run in ``--workers``
processes. Zero-work streaming nodes (in this process) take the jobs: they count the
audio each job got and answer its result with that count when the utterance ends.

Per number of speakers, figures for one scheduler process (memory state):

* scheduler CPU per forwarded chunk (µs; its user + system time over the phase, divided
  by the chunks its nodes received), and its share of a core;
* result latency after the utterance's end (``is_final`` sent -> result received):
  p50, p99; **held** when p99 <= 250 ms and nothing was lost;
* utterances: ended, answered, refused (``overloaded``, said to the client), **lost**
  (neither answered nor refused) and **short** (answered with less audio than sent:
  chunks lost silently); both must be 0.

The floor, in the same run: a bare relay (``websockets``, one process) that forwards the
same frames from the speakers' sockets to one node socket without reading them; its CPU
per chunk is what moving the bytes costs. With ``--overload``, a last phase runs twice
the most speakers held: what the scheduler accepts must still be delivered whole, and
the rest refused up front.

Bounded: every phase has a fixed length and a deadline for its last results; the
processes stop at the end. Traffic stays on 127.0.0.1.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import multiprocessing
import os
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from websockets.asyncio.client import connect
from websockets.asyncio.server import ServerConnection, serve

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))
sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from bench.dispatch import cpu_seconds, free_port, pct, start_scheduler, wait_port
from linguamesh import protocol as p

CHUNK_S = 0.02
CHUNK = b"\x01\x00" * 320  # 20 ms of 16 kHz pcm16 (not silence: a real voice level is not needed)
B64 = base64.b64encode(CHUNK).decode()
UTTERANCE_S = 2.0
PAUSE_S = 0.3
HELD_P99 = 0.250


# ---------------------------------------------------------------------------- speakers


@dataclass
class SpeakerStats:
    ended: int = 0
    answered: int = 0
    refused: int = 0
    short: int = 0
    chunks: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: dict[str, int] = field(default_factory=dict)


def chunk_frame(seq: int, final: bool = False) -> str:
    if final:
        return f'{{"type":"audio_chunk","seq":{seq},"audio":"","is_final":true}}'
    return f'{{"type":"audio_chunk","seq":{seq},"audio":"{B64}"}}'


async def speaker(url: str, start: float, seconds: float, number: int, st: SpeakerStats, relay: bool) -> None:
    """One speaker: utterances of about UTTERANCE_S (each a little longer than the last, so
    that a result's audio names its utterance) until ``seconds`` are over."""
    async with connect(url + "/ws/session", max_size=None, compression=None, open_timeout=60) as ws:
        init = p.SessionInit(protocol_version=1, src_lang="en", tgt_lang="es", tts=False, partials=False)
        await ws.send(p.encode_str(init))
        pending: dict[int, tuple[float, int]] = {}  # audio bytes -> (end sent, bytes)
        if not relay:
            ack = p.decode_event(await ws.recv())
            assert isinstance(ack, p.SessionInitAck), ack

        async def read() -> None:
            async for frame in ws:
                ev = p.decode_event(frame)
                if isinstance(ev, p.TranslationResult):
                    got = int(ev.text_asr or 0)
                    sent = pending.pop(got, None)
                    if sent is None:  # fewer bytes than any utterance sent: chunks lost silently
                        st.short += 1
                        continue
                    st.answered += 1
                    st.latencies.append(time.perf_counter() - sent[0])
                elif isinstance(ev, p.Error):
                    st.errors[ev.code] = st.errors.get(ev.code, 0) + 1
                    if ev.code == "overloaded":
                        st.refused += 1

        reader = asyncio.create_task(read())
        loop = asyncio.get_running_loop()
        await asyncio.sleep(max(0.0, start - time.time()) + (number % 50) * CHUNK_S / 50)
        t = loop.time()
        seq, k = 0, 0
        end = t + seconds
        while t < end:
            n = round((UTTERANCE_S + k * CHUNK_S) / CHUNK_S)
            for _ in range(n):
                t += CHUNK_S
                await asyncio.sleep(max(0.0, t - loop.time()))
                await ws.send(chunk_frame(seq))
                seq += 1
            st.chunks += n
            await ws.send(chunk_frame(seq, final=True))
            seq += 1
            pending[n * len(CHUNK)] = (time.perf_counter(), n)
            st.ended += 1
            k += 1
            t += PAUSE_S
            await asyncio.sleep(max(0.0, t - loop.time()))
        deadline = loop.time() + 40  # (past the result timeout: a late result is not a lost one)
        while pending and loop.time() < deadline and not relay:
            await asyncio.sleep(0.05)
            # a refused utterance gets an error, not a result
            if st.refused + st.answered + st.short >= st.ended:
                break
        reader.cancel()


def worker(url: str, start: float, seconds: float, first: int, count: int, relay: bool, out: Any) -> None:
    async def main() -> list[SpeakerStats]:
        stats = [SpeakerStats() for _ in range(count)]
        await asyncio.gather(
            *(speaker(url, start, seconds, first + i, stats[i], relay) for i in range(count)),
            return_exceptions=True,
        )
        return stats

    stats = asyncio.run(main())
    out.put(stats)


def run_speakers(url: str, speakers: int, seconds: float, workers: int, relay: bool = False) -> SpeakerStats:
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    start = time.time() + 2.0 + speakers / 400  # every socket open first
    share = [speakers // workers + (1 if i < speakers % workers else 0) for i in range(workers)]
    procs, first = [], 0
    for n in share:
        proc = ctx.Process(target=worker, args=(url, start, seconds, first, n, relay, out))
        proc.start()
        procs.append(proc)
        first += n
    total = SpeakerStats()
    for _ in procs:
        for st in out.get(timeout=seconds + 120):
            total.ended += st.ended
            total.answered += st.answered
            total.refused += st.refused
            total.short += st.short
            total.chunks += st.chunks
            total.latencies += st.latencies
            for code, n in st.errors.items():
                total.errors[code] = total.errors.get(code, 0) + n
    for proc in procs:
        proc.join(10)
    return total


# ---------------------------------------------------------------------------- nodes


@dataclass
class NodeCounts:
    chunks: int = 0


async def streaming_node(url: str, node_id: str, slots: int, counts: NodeCounts, stop: asyncio.Event) -> None:
    """A zero-work streaming node: acks, counts each job's audio, answers at its end."""
    async with connect(url + "/ws/node", max_size=None, compression=None) as ws:
        caps = p.Capabilities(
            asr_languages=["en"], nmt_pairs=[("en", "es")], tts_languages=["es"], streaming=True
        )
        reg = p.NodeRegister(
            protocol_version=1, node_id=node_id, version="bench", capabilities=caps, max_concurrent_jobs=slots
        )
        await ws.send(p.encode_str(reg))
        ack = p.decode_to_node(await ws.recv())
        assert isinstance(ack, p.NodeRegisterAck), ack
        audio: dict[str, int] = {}
        attempts: dict[str, int] = {}

        async def beat() -> None:
            while True:
                await asyncio.sleep(ack.heartbeat_interval_s)
                await ws.send(p.encode_str(p.NodeHeartbeat(running_jobs=len(audio))))

        async def finish(job_id: str) -> None:
            size = audio.pop(job_id, 0)
            res = p.JobResult(
                job_id=job_id,
                attempt_id=attempts.pop(job_id, 1),
                success=True,
                text_asr=str(size),
                text_translated="x",
            )
            await ws.send(p.encode_str(res))

        hb = asyncio.create_task(beat())
        try:
            async for frame in ws:
                msg = p.decode_to_node(frame)
                if isinstance(msg, p.JobAudio):
                    counts.chunks += 1
                    if msg.job_id in audio:
                        audio[msg.job_id] += len(msg.audio)
                        if msg.is_final:
                            if msg.size is not None:
                                audio[msg.job_id] = min(audio[msg.job_id], msg.size)
                            await finish(msg.job_id)
                elif isinstance(msg, p.JobAssign):
                    audio[msg.job_id] = len(msg.audio)
                    attempts[msg.job_id] = msg.attempt_id
                    await ws.send(p.encode_str(p.JobAck(job_id=msg.job_id, attempt_id=msg.attempt_id)))
                    await ws.send(p.encode_str(p.JobStarted(job_id=msg.job_id, attempt_id=msg.attempt_id)))
                    if not msg.streaming:  # the whole utterance at once
                        await finish(msg.job_id)
                elif isinstance(msg, p.JobCancel):
                    audio.pop(msg.job_id, None)
                if stop.is_set():
                    break
        finally:
            hb.cancel()


async def counting_node(url: str, counts: NodeCounts) -> None:
    """The relay's node: counts the frames that reach it."""
    async with connect(url + "/ws/node", max_size=None, compression=None) as ws:
        async for _ in ws:
            counts.chunks += 1


# ---------------------------------------------------------------------------- the floor


async def relay_server(port: int) -> None:
    """A bare relay: every frame from a /ws/session socket goes, unread, to a node socket."""
    nodes: list[ServerConnection] = []

    async def handler(ws: ServerConnection) -> None:
        if ws.request is not None and ws.request.path == "/ws/node":
            nodes.append(ws)
            await ws.wait_closed()
            return
        async for frame in ws:
            if nodes:
                await nodes[id(ws) % len(nodes)].send(frame)

    async with serve(handler, "127.0.0.1", port, compression=None, max_size=None):
        await asyncio.Future()


def start_relay(port: int) -> Any:
    import subprocess

    return subprocess.Popen([sys.executable, __file__, "--relay-server", str(port)])


# ---------------------------------------------------------------------------- phases


async def phase(
    url: str, pid: int, speakers: int, seconds: float, workers: int, counts: NodeCounts, relay: bool
) -> dict[str, Any]:
    cpu0, chunks0 = cpu_seconds(pid), counts.chunks
    t0 = time.monotonic()
    st = await asyncio.to_thread(run_speakers, url, speakers, seconds, workers, relay)
    wall = time.monotonic() - t0
    cpu = cpu_seconds(pid) - cpu0
    chunks = counts.chunks - chunks0
    lost = max(0, st.ended - st.answered - st.refused - st.short) if not relay else 0
    out: dict[str, Any] = {
        "speakers": speakers,
        "chunks_sent": st.chunks,
        "chunks_at_nodes": chunks,
        "cpu_us_per_chunk": round(cpu / max(1, chunks) * 1e6, 1),
        "cores": round(cpu / wall, 2),
    }
    if not relay:
        out.update(
            ended=st.ended,
            answered=st.answered,
            refused=st.refused,
            lost=lost,
            short=st.short,
            p50_ms=round(pct(st.latencies, 50) * 1000, 1),
            p99_ms=round(pct(st.latencies, 99) * 1000, 1),
            errors=st.errors,
        )
        out["held"] = lost == 0 and st.short == 0 and st.refused == 0 and pct(st.latencies, 99) <= HELD_P99
    return out


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument(
        "--speakers", default="100,200,400", help="comma-separated speaker counts, one phase each"
    )
    ap.add_argument("--seconds", type=float, default=15.0, help="streaming time per phase")
    ap.add_argument("--workers", type=int, default=2, help="load generator processes")
    ap.add_argument("--nodes", type=int, default=4)
    ap.add_argument("--overload", action="store_true", help="a last phase at twice the most speakers held")
    ap.add_argument("--relay-server", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.relay_server:
        await relay_server(args.relay_server)
        return
    counts = [int(x) for x in args.speakers.split(",")]
    os.environ.update(
        LINGUAMESH_MAX_CONNECTIONS_PER_IP="100000",
        LINGUAMESH_MAX_SESSIONS_PER_IP="100000",
        LINGUAMESH_MAX_CONNECTIONS="100000",
    )
    rows: list[dict[str, Any]] = []
    # the floor: a bare relay of the same frames
    port = free_port()
    relay = start_relay(port)
    try:
        await wait_port(port, relay, 10)
        floor = NodeCounts()
        node = asyncio.create_task(counting_node(f"ws://127.0.0.1:{port}", floor))
        await asyncio.sleep(0.3)
        for n in counts:
            row = await phase(f"ws://127.0.0.1:{port}", relay.pid, n, args.seconds, args.workers, floor, True)
            rows.append({"system": "bare relay", **row})
            print(rows[-1], file=sys.stderr)
        node.cancel()
    finally:
        relay.terminate()
        relay.wait(10)
    # the scheduler
    port = free_port()
    sched = start_scheduler(port, [], [])
    stop = asyncio.Event()
    try:
        await wait_port(port, sched, 30)
        url = f"ws://127.0.0.1:{port}"
        counted = NodeCounts()
        per_node = max(counts) * 2 // args.nodes + 2
        nodes = [
            asyncio.create_task(streaming_node(url, f"n{i}", per_node, counted, stop))
            for i in range(args.nodes)
        ]
        await asyncio.sleep(1.0)
        held = 0
        for n in counts:
            row = await phase(url, sched.pid, n, args.seconds, args.workers, counted, False)
            rows.append({"system": "scheduler", **row})
            print(rows[-1], file=sys.stderr)
            if row["held"]:
                held = max(held, n)
        if args.overload:
            n = 2 * (held or max(counts))
            row = await phase(url, sched.pid, n, args.seconds, args.workers, counted, False)
            rows.append({"system": "scheduler, overload", **row})
            print(rows[-1], file=sys.stderr)
        stop.set()
        for t in nodes:
            t.cancel()
    finally:
        sched.terminate()
        sched.wait(10)
    print(f"{'system':22} {'speakers':>8} {'µs/chunk':>9} {'cores':>6} {'p50 ms':>8} {'p99 ms':>8} "
          f"{'ended':>6} {'answered':>8} {'refused':>7} {'lost':>5} {'short':>5} held")  # fmt: skip
    for r in rows:
        print(
            f"{r['system']:22} {r['speakers']:>8} {r['cpu_us_per_chunk']:>9} {r['cores']:>6} "
            f"{r.get('p50_ms', ''):>8} {r.get('p99_ms', ''):>8} {r.get('ended', ''):>6} {r.get('answered', ''):>8} "
            f"{r.get('refused', ''):>7} {r.get('lost', ''):>5} {r.get('short', ''):>5} {r.get('held', '')}"
        )


if __name__ == "__main__":
    asyncio.run(main())
