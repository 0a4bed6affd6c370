"""The default offline engine set through a real scheduler and node."""

from __future__ import annotations

import asyncio

import httpx

from linguamesh import protocol as p
from linguamesh.audio import to_wav
from linguamesh.client import SessionClient
from linguamesh.node.defaults import default_engines
from linguamesh.quality import wer

from ..conftest import SCALE, Cluster, eventually, receive_until, until_result
from .conftest import espeak_wav


async def test_english_speech_to_spanish_end_to_end(cluster: Cluster) -> None:
    s = await cluster.scheduler(result_timeout=60)
    node = await cluster.node(s.url, "default-node", engines=default_engines(), max_concurrent_jobs=1)
    ref = "Good morning. I would like to buy two tickets to the museum, please."
    async with SessionClient(s.url, src="en", tgt="es", audio_format="wav") as c:
        await c.send_utterance(0, espeak_wav(ref))
        events = await receive_until(c, until_result(), 60, "the first result")
        # silence: an empty result, not an error
        await c.send_utterance(1, to_wav(__import__("numpy").zeros(16000, "float32"), 16000))
        silent = await c.next_result(60 * SCALE)
    r = events[-1]
    assert r.status == "ok", r.error
    # WER bound 0.25: whisper base measured ~0-10 % on espeak sentences on this machine
    assert wer(ref, r.text_asr) <= 0.25, r.text_asr
    assert "museo" in r.text_translated and "entradas" in r.text_translated
    assert r.tts_audio and r.tts_audio[:4] == b"RIFF" and r.tts_format == "wav"
    assert r.timings.asr_ms > 0 and r.timings.nmt_ms > 0 and r.timings.tts_ms > 0
    partials = [e for e in events if isinstance(e, p.AsrPartial)]
    assert partials and partials[0].text.lower().startswith("good morning")
    assert silent.status == "ok" and silent.text_asr == "" and silent.text_translated == ""

    # model metrics reach the scheduler in heartbeats
    def whisper_used() -> bool:
        stats = s.sched.nodes["default-node"].model_stats
        return any(k.startswith("faster-whisper") and v["inferences"] >= 1 for k, v in stats.items())

    await eventually(whisper_used, 15, "model stats with the inference in a heartbeat")
    async with httpx.AsyncClient() as http:
        nodes = (await http.get(f"{s.http}/api/v1/nodes")).json()["nodes"]
    stats = nodes[0]["model_stats"]
    whisper = next(v for k, v in stats.items() if k.startswith("faster-whisper"))
    assert whisper["inferences"] >= 1 and whisper["loads"] == 1
    own = node.agent.engines.models_manager.snapshot()  # the node's own figures are at least as far
    key = next(k for k in own if k.startswith("faster-whisper"))
    assert own[key]["loads"] == 1 and own[key]["inferences"] >= whisper["inferences"] >= 1
    await asyncio.sleep(0)


SENTENCES = [  # long ones, as people speak in a meeting: about 5 s each
    (
        "The red bicycle that my grandfather gave me stood for years near the old bakery.",
        ("bicycle", "bakery"),
    ),
    (
        "My younger sister practises every evening after she finishes her homework in the kitchen.",
        ("sister", "kitchen"),
    ),
    (
        "On Saturday morning we bought fresh oranges, sweet apples and bread at the market.",
        ("saturday", "apples"),
    ),
    (
        "The express train to London leaves from the second platform at nine tomorrow.",
        ("second", "platform"),
    ),
    ("Please remember to close the bedroom window before you go to sleep tonight.", ("bedroom", "window")),
    ("A small brown dog was barking at the postman in the garden all afternoon.", ("postman", "garden")),
    ("The teacher wrote a long letter to every parent about the school holiday.", ("teacher", "holiday")),
    ("The city is building a new bridge over the river next to the hospital.", ("river", "hospital")),
    ("Coffee tastes much better with a little sugar and a spoon of warm milk.", ("coffee", "sugar")),
]


async def test_a_45_second_upload_of_nine_sentences_keeps_every_sentence(cluster: Cluster) -> None:
    """Longer than the 30 s limit, the stream is cut in a pause (the client
    is told), and no part loses sentences (Whisper used to stop at a pause in a long window)."""
    import numpy as np

    from linguamesh.audio import to_float32, to_pcm16

    pause = np.zeros(int(0.7 * 16000), np.float32)
    pieces = []
    for text, _ in SENTENCES:
        pieces += [to_float32(espeak_wav(text), "wav", 0, 16000), pause]
    audio = to_pcm16(np.concatenate(pieces))
    seconds = len(audio) / 2 / 16000
    assert 40 <= seconds <= 50, seconds
    s = await cluster.scheduler(result_timeout=120, chunk_idle_gap=1.0)
    await cluster.node(s.url, "default-node", engines=default_engines(), max_concurrent_jobs=1)
    async with SessionClient(s.url, src="en", tgt="es", tts=False) as c:
        step = 2 * 16000  # 1 s chunks, sent as fast as they go (an upload)
        for seq, at in enumerate(range(0, len(audio), step)):
            await c.send_chunk(seq, audio[at : at + step], is_final=at + step >= len(audio))
        events = await receive_until(c, until_result(2), 240, "the results of both parts")
    results = [e for e in events if isinstance(e, p.TranslationResult)]
    assert [r.utterance_index for r in results] == [0, 1] and all(r.status == "ok" for r in results)
    heard = " ".join(r.text_asr for r in results).lower()
    missing = [w for _, words in SENTENCES for w in words if w not in heard]
    assert not missing, f"missing {missing} in {heard!r}"
    told = [e for e in events if isinstance(e, p.JobStatus) and (e.reason or "").startswith("split")]
    assert told and told[0].utterance_index == 0
