"""Engine benchmark for the default offline set: quality and speed figures.

    python bench/engines.py [--sentences 20]

Prints:
  * ASR word error rate on English sentences synthesised by the default English
    TTS (Piper joe) and by eSpeak NG, and on Spanish sentences by eSpeak NG;
  * MT quality (chrF, sacrebleu) on a small reference set per pair;
  * per-stage real-time factor and end-to-end latency for a ~3 s utterance;
  * node memory (RSS) with all default engines loaded.
Bounded: fixed sentence lists, one pass each.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "src"))

from linguamesh import protocol as p
from linguamesh.audio import to_float32, to_wav
from linguamesh.engines.base import Speech
from linguamesh.engines.registry import build
from linguamesh.node.defaults import default_engines
from linguamesh.node.pipeline import run_pipeline
from linguamesh.quality import corpus_wer

EN = [
    "Good morning, how are you today?",
    "I would like to buy two tickets to the museum.",
    "The train to the airport leaves at nine o'clock.",
    "Could you please speak a little more slowly?",
    "We are going to have a meeting after lunch.",
    "My sister lives in a small house near the river.",
    "The weather is very nice this afternoon.",
    "Where is the nearest pharmacy?",
    "I have been learning Spanish for three years.",
    "Please send me the report before Friday.",
    "The children are playing in the park.",
    "Thank you very much for your help.",
    "Can I pay with a credit card?",
    "The restaurant opens at seven in the evening.",
    "He forgot his umbrella at the office.",
    "We need more chairs for the conference room.",
    "This book is much better than the film.",
    "Let me know if you have any questions.",
    "The doctor will see you in ten minutes.",
    "I think we should take a taxi.",
    "Our flight was delayed because of the storm.",
    "She is the best teacher in our school.",
]

EN_ES = [
    ("Good morning, how are you?", "Buenos días, ¿cómo estás?"),
    ("I would like a cup of coffee.", "Me gustaría una taza de café."),
    ("Where is the train station?", "¿Dónde está la estación de tren?"),
    ("The weather is very nice today.", "El tiempo es muy bueno hoy."),
    ("Thank you very much for your help.", "Muchas gracias por tu ayuda."),
    ("My brother lives in a small house.", "Mi hermano vive en una casa pequeña."),
    ("We are going to the beach tomorrow.", "Mañana vamos a la playa."),
    ("The children are playing in the park.", "Los niños están jugando en el parque."),
    ("Can I pay with a credit card?", "¿Puedo pagar con tarjeta de crédito?"),
    ("The restaurant opens at seven.", "El restaurante abre a las siete."),
    ("I have two cats and a dog.", "Tengo dos gatos y un perro."),
    ("Please close the door.", "Por favor, cierra la puerta."),
]

ES = [es for _, es in EN_ES]


def espeak(text: str, voice: str) -> bytes:
    return subprocess.run(
        ["espeak-ng", "-v", voice, "-s", "175", "--stdout", text], capture_output=True, check=True
    ).stdout


def rss_mb() -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


async def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--sentences", type=int, default=len(EN))
    args = ap.parse_args()
    import sacrebleu

    base_rss = rss_mb()
    t = time.perf_counter()
    es = build(default_engines(), strict=True)
    load_s = time.perf_counter() - t
    loaded_rss = rss_mb()
    asr_en, asr_es = es.asr_for("en"), es.asr_for("es")
    tts_en, tts_es = es.tts_for("en"), es.tts_for("es")
    assert asr_en and asr_es and tts_en and tts_es
    print("LinguaMesh engine benchmark (default offline set, CPU)")
    print(
        f"  engines loaded in {load_s:.2f} s; node RSS {loaded_rss:.0f} MB ({loaded_rss - base_rss:.0f} MB for engines)"
    )

    # ASR WER
    sentences = EN[: args.sentences]
    for label, synth in (
        ("Piper joe (default EN TTS)", lambda s: to_wav(tts_en._synthesize(s, "en", _NO).samples, 22050)),
        ("eSpeak NG en-us", lambda s: espeak(s, "en-us")),
    ):
        pairs, times, durs = [], [], []
        for s in sentences:
            wav = synth(s)
            speech = Speech(to_float32(wav, "wav", 16000), 16000)
            t = time.perf_counter()
            hyp = await asr_en.transcribe(speech, "en")
            times.append(time.perf_counter() - t)
            durs.append(speech.samples.size / 16000)
            pairs.append((s, hyp))
        print(
            f"  ASR WER en, {len(pairs)} sentences by {label}: {corpus_wer(pairs) * 100:.1f} %"
            f"  (mean {statistics.mean(times):.2f} s per utterance, RTF {sum(times) / sum(durs):.3f})"
        )
    pairs = []
    for s in ES:
        speech = Speech(to_float32(espeak(s, "es"), "wav", 16000), 16000)
        pairs.append((s, await asr_es.transcribe(speech, "es")))
    print(f"  ASR WER es, {len(pairs)} sentences by eSpeak NG es: {corpus_wer(pairs) * 100:.1f} %")

    # MT chrF
    for src, tgt, data in (("en", "es", EN_ES), ("es", "en", [(b, a) for a, b in EN_ES])):
        mt = es.mt_for(src, tgt)
        assert mt is not None
        hyps = [await mt.translate(a, src, tgt) for a, _ in data]
        chrf = sacrebleu.corpus_chrf(hyps, [[b for _, b in data]]).score
        bleu = sacrebleu.corpus_bleu(hyps, [[b for _, b in data]]).score
        print(f"  MT {src}->{tgt} ({mt.name}), {len(data)} sentences: chrF {chrf:.1f}  BLEU {bleu:.1f}")

    # per-stage RTF and end-to-end latency for a ~3 s utterance
    text = "I would like to buy two tickets to the museum, please."
    wav = to_wav(tts_en._synthesize(text, "en", _NO).samples, 22050)
    seconds = to_float32(wav, "wav", 16000).size / 16000
    job = p.JobAssign(
        job_id="b", attempt_id=1, trace_id="t", session_id="s", utterance_index=0, src_lang="en",
        tgt_lang="es", audio=wav, audio_format="wav", sample_rate=22050,
        stages=["asr", "repair", "nmt", "tts"], deadline_ms=60000,
    )  # fmt: skip
    runs = []
    for _ in range(5):
        t = time.perf_counter()
        out = await run_pipeline(es, job, None, {})
        runs.append((time.perf_counter() - t, out.timings))
    e2e = statistics.median(r[0] for r in runs)
    print(
        f"  {seconds:.2f} s utterance en->es, median of 5: end to end {e2e * 1000:.0f} ms (RTF {e2e / seconds:.2f})"
    )
    for stage in ("asr", "repair", "nmt", "tts"):
        ms = statistics.median(getattr(r[1], f"{stage}_ms") for r in runs)
        print(f"    {stage:6} {ms:8.1f} ms  RTF {ms / 1000 / seconds:.3f}")
    print(f"  output: {out.text_asr!r} -> {out.text_translated!r}")
    print(f"  node RSS after the runs: {rss_mb():.0f} MB")
    es.close()


_NO = threading.Event()  # never set: nothing is cancelled here

if __name__ == "__main__":
    asyncio.run(main())
