"""Where a streamed utterance ends when the speaker does not pause (core/sentences.py)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from linguamesh.core.agreement import LocalAgreement, Word
from linguamesh.core.sentences import SentencePolicy, ends_sentence, sentence_cut


def words(*spec: tuple[str, float, float]) -> list[Word]:
    return [Word(t, a, b) for t, a, b in spec]


def test_a_sentence_with_a_gap_after_it_is_cut_in_the_gap() -> None:
    committed = words(
        ("Good", 0.1, 0.4), ("morning", 0.4, 0.9), ("everyone.", 0.9, 1.7), ("Today", 1.95, 2.3)
    )
    cut = sentence_cut(committed, words(("we", 2.3, 2.5)), heard=3.0)
    assert cut is not None and cut.reason == "sentence"
    assert 1.7 < cut.seconds < 1.95  # in the gap: after the sentence, before the next word


def test_no_cut_without_a_gap_or_too_early() -> None:
    run_on = words(("It", 0.0, 0.5), ("rained", 0.5, 1.0), ("today.", 1.0, 1.6), ("Then", 1.6, 2.0))
    assert sentence_cut(run_on, [], heard=2.5) is None  # no gap: the speaker ran on
    short = words(("Hi.", 0.1, 0.5))
    assert sentence_cut(short, [], heard=1.5) is None  # shorter than min_seconds
    assert sentence_cut(words(("Mr.", 1.5, 1.9), ("Smith", 2.3, 2.8)), [], heard=3.5) is None


def test_the_cut_is_after_the_last_sentence_the_node_reported() -> None:
    committed = words(
        ("One.", 1.0, 1.6), ("Two", 1.9, 2.2), ("more.", 2.2, 2.8), ("And", 3.1, 3.3), ("then", 3.3, 3.6)
    )
    cut = sentence_cut(committed, [], heard=4.5)
    assert cut is not None and 2.8 < cut.seconds < 3.1


def test_a_long_run_without_a_sentence_is_cut_at_a_clause_or_the_longest_gap() -> None:
    policy = SentencePolicy(soft_max=10.0)
    committed = [Word(f"w{i}", i * 0.5, i * 0.5 + 0.45) for i in range(22)]  # 11 s, tiny gaps
    committed[9] = Word("w9,", 4.5, 4.95)
    cut = sentence_cut(committed, [], heard=11.5, policy=policy)
    assert cut is not None and cut.reason == "length" and 4.95 <= cut.seconds <= 5.0
    assert sentence_cut(committed, [], heard=9.0, policy=policy) is None  # not yet too long


def test_abbreviations_and_numbers_do_not_end_sentences() -> None:
    assert ends_sentence("today.") and ends_sentence("Really?") and ends_sentence('"Stop!"')
    assert not ends_sentence("Mr.") and not ends_sentence("Dr.") and not ends_sentence("3.5.")
    assert not ends_sentence("well,")


word_list = st.lists(
    st.tuples(st.sampled_from(["word", "word.", "word,", "end?"]), st.floats(0.0, 0.6), st.floats(0.05, 0.6)),
    min_size=1,
    max_size=40,
)


@given(word_list, st.floats(0.0, 2.0))
def test_a_cut_never_falls_inside_a_word_nor_before_a_reported_sentence(
    spec: list[tuple[str, float, float]], extra: float
) -> None:
    t = 0.0
    committed = []
    for text, gap, length in spec:
        committed.append(Word(text, t + gap, t + gap + length))
        t += gap + length
    cut = sentence_cut(committed, [], heard=t + extra)
    if cut is None:
        return
    assert all(not (w.start < cut.seconds < w.end) for w in committed)
    ends = [w.end for w in committed if ends_sentence(w.text)]
    if cut.reason == "sentence":
        assert cut.seconds >= max(ends)  # every reported sentence is before it
    # what a cut keeps: the words before it, exactly; the rest is the next utterance's
    a = LocalAgreement()
    a.committed = list(committed)
    a.drop_after(cut.seconds)
    assert a.committed == [w for w in committed if (w.start + w.end) / 2 <= cut.seconds]


def test_with_a_vad_the_cut_goes_in_its_silence_whatever_the_word_times_say() -> None:
    # Whisper runs "ago." on to the next word; the VAD heard a quarter second of silence
    committed = words(("years", 1.2, 1.6), ("ago.", 1.6, 2.15), ("Wooden", 2.15, 2.5), ("ships", 2.5, 2.9))
    cut = sentence_cut(committed, [], heard=4.0, pauses=[(0.0, 0.3), (1.95, 2.2)])
    assert cut is not None and cut.reason == "sentence" and abs(cut.seconds - 2.075) < 1e-9
    assert sentence_cut(committed, [], heard=4.0, pauses=[(0.0, 0.3)]) is None  # no silence there
    assert sentence_cut(committed, [], heard=4.0, pauses=[(1.95, 2.02)]) is None  # too short a silence
