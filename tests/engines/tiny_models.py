"""Build tiny randomly initialised CTranslate2 translation models for tests.

No real NLLB / M2M100 / OPUS-MT model can be had here, so the tests build one
with ``ctranslate2.specs`` and a SentencePiece model trained on a few lines:
the load, cache, inference and error paths of the adapter run for real; the
translations are nonsense by construction.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

CORPUS = [
    "hello world how are you today",
    "the weather is nice and the sun is shining",
    "hola mundo como estas hoy",
    "el tiempo es bueno y el sol brilla",
    "bonjour le monde comment allez vous",
] * 20

D, FFN, HEADS = 16, 32, 2


def _spm(prefix: Path, vocab: int = 60) -> Path:
    import sentencepiece as spm

    corpus = prefix.parent / "corpus.txt"
    corpus.write_text("\n".join(CORPUS))
    spm.SentencePieceTrainer.train(
        input=str(corpus),
        model_prefix=str(prefix),
        vocab_size=vocab,
        model_type="bpe",
        character_coverage=1.0,
        minloglevel=2,
    )
    return prefix.with_suffix(".model")


def _pieces(model: Path) -> list[str]:
    import sentencepiece as spm

    sp = spm.SentencePieceProcessor(model_file=str(model))
    return [sp.id_to_piece(i) for i in range(sp.get_piece_size())]


def _child(obj: object, part: str) -> object:
    """``layer_0`` is ``obj.layer[0]`` in the spec tree; ``encoder`` is ``obj.encoder``."""
    if hasattr(obj, part):
        return getattr(obj, part)
    name, _, index = part.rpartition("_")
    return getattr(obj, name)[int(index)]


def build_tiny_model(out: Path, family: str, langs: tuple[str, ...] = ("en", "es")) -> Path:
    """Write a tiny model directory for ``family`` (nllb, m2m100, opus-mt) into ``out``."""
    from ctranslate2.specs import transformer_spec

    from linguamesh.engines.ct2mt import NLLB_CODES

    out.mkdir(parents=True, exist_ok=True)
    work = out.parent / (out.name + "-work")
    work.mkdir(exist_ok=True)
    sp_model = _spm(work / "sp")
    vocab = ["<unk>", "<s>", "</s>", *[p for p in _pieces(sp_model) if p not in ("<unk>", "<s>", "</s>")]]
    if family == "nllb":
        vocab += [NLLB_CODES[x] for x in langs]
    elif family == "m2m100":
        vocab += [f"__{x}__" for x in langs]
    spec = transformer_spec.TransformerSpec.from_config((1, 1), HEADS)
    rng = np.random.default_rng(0)
    V = len(vocab)

    def w(*shape: int) -> np.ndarray:
        # 0.3: at 0.1 the encoder barely reached the decoder, and the OPUS-MT model wrote
        # the same noise for every input (seen with ctranslate2 4.8.5, sentencepiece 0.2.3)
        return (rng.standard_normal(shape) * 0.3).astype(np.float32)

    for name, var in spec.variables(ordered=True):
        if var is not None:
            continue  # already set (flags, head counts)
        parts = name.split("/")
        obj = spec
        for part in parts[:-1]:
            obj = _child(obj, part)
        leaf = parts[-1]
        if "embeddings" in name:
            value = w(V, D)
        elif name.endswith("projection/weight"):
            value = w(V, D)
        elif leaf == "gamma":
            value = np.ones(D, dtype=np.float32)
        elif leaf == "beta":
            value = np.zeros(D, dtype=np.float32)
        elif "ffn/linear_0" in name:
            value = w(FFN, D)
        elif "ffn/linear_1" in name:
            value = w(D, FFN)
        elif "self_attention/linear_0" in name:
            value = w(3 * D, D)
        elif "attention/linear_1" in name and "self_attention" not in name:
            value = w(2 * D, D)
        else:
            value = w(D, D)
        setattr(obj, leaf, value)
    spec.register_source_vocabulary(vocab)
    spec.register_target_vocabulary(vocab)
    spec.validate()
    spec.optimize(quantization=None)
    spec.save(str(out))
    if family == "opus-mt":
        (out / "source.spm").write_bytes(sp_model.read_bytes())
        (out / "target.spm").write_bytes(sp_model.read_bytes())
    else:
        (out / "sentencepiece.bpe.model").write_bytes(sp_model.read_bytes())
    return out
