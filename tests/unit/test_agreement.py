"""LocalAgreement-2: what two consecutive decodes agree on is committed, once, in order."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from linguamesh.core.agreement import LocalAgreement, Word, norm, text_of


def words(text: str, start: float = 0.0, step: float = 0.4) -> list[Word]:
    return [Word(t, start + i * step, start + (i + 1) * step) for i, t in enumerate(text.split())]


def test_words_are_committed_once_two_decodes_agree() -> None:
    la = LocalAgreement()
    assert la.update(words("the red")) == []  # one decode: nothing agreed yet
    assert text_of(la.tentative()) == "the red"
    assert text_of(la.update(words("the red bicycle"))) == "the red"
    assert text_of(la.tentative()) == "bicycle"
    assert text_of(la.update(words("the red bicycle stood"))) == "bicycle"
    assert text_of(la.update(words("the red bicycle stood near"))) == "stood"
    assert text_of(la.finish()) == "near"
    assert text_of(la.committed) == "the red bicycle stood near"


def test_a_changed_mind_is_not_committed() -> None:
    la = LocalAgreement()
    la.update(words("I scream"))
    assert text_of(la.update(words("ice cream is cold"))) == ""  # disagree at once
    # agreed, but the decode's last word may be cut off by the end of the audio: it waits
    assert text_of(la.update(words("ice cream is cold."))) == "ice cream is"
    assert text_of(la.finish()) == "cold."
    assert norm("Cold.") == "cold"


def test_a_decode_of_the_rest_that_repeats_committed_words_skips_them() -> None:
    la = LocalAgreement()
    la.update(words("one two three four"))
    la.update(words("one two three four"))
    la.finish()  # all committed, ends at 1.6 s
    # the recogniser now decodes from 1.2 s and hears "four" again
    rest = [Word("four", 1.2, 1.6), Word("five", 1.6, 2.0), Word("six", 2.0, 2.4)]
    la.update(rest)
    assert text_of(la.update(rest)) == "five"  # "six" waits for a word after it
    la.finish()
    assert text_of(la.committed) == "one two three four five six"


@given(
    st.lists(st.sampled_from(["a", "b", "c", "d", "the", "cat", "sat"]), min_size=1, max_size=30),
    st.lists(st.integers(0, 3), max_size=40),
)
def test_growing_decodes_commit_the_final_text_exactly_once(final: list[str], steps: list[int]) -> None:
    """Decodes that grow by a few words each time (the audio grows), maybe repeating the
    same one: at the end exactly the final transcript is committed, and what is committed
    never changes."""
    la = LocalAgreement()
    all_words = words(" ".join(final))
    shown = 0
    seen: list[Word] = []
    for n in steps:
        shown = min(len(all_words), shown + n)
        la.update(all_words[:shown])
        assert la.committed[: len(seen)] == seen  # committed words never change
        seen = list(la.committed)
        assert [w.text for w in la.committed] == final[: len(la.committed)]
    la.update(all_words)
    la.finish()
    assert [w.text for w in la.committed] == final


def test_a_word_at_the_very_end_of_the_audio_is_not_committed_until_heard_whole() -> None:
    la = LocalAgreement()
    half = [Word("The", 0.0, 0.3), Word("rest", 0.3, 0.9)]
    la.update(half, until=0.6)
    assert la.update(half, until=0.6) == [Word("The", 0.0, 0.3)]  # "rest" ends after 0.6: held
    done = la.update(
        [Word("The", 0.0, 0.3), Word("restaurant", 0.3, 1.0), Word("opens", 1.0, 1.4)], until=1.1
    )
    # heard whole, "restaurant" is the held "rest" (not one more word), and not committed
    assert done == [] and [w.text for w in la.tentative()] == ["restaurant", "opens"]


def test_a_committed_word_heard_whole_later_is_not_doubled() -> None:
    la = LocalAgreement()
    la.update(words("the train leave now"))
    la.update(words("the train leave now"))  # "the train leave" committed, ends at 1.2 s
    later = [Word("the", 0, 0.4), Word("train", 0.4, 0.8), Word("leaves", 0.8, 1.25), Word("at", 1.3, 1.5),
             Word("nine", 1.5, 1.9)]  # fmt: skip
    la.update(later)
    la.update(later)
    la.finish()
    assert text_of(la.committed) == "the train leave at nine"


def test_a_word_cut_off_in_the_earlier_decode_is_not_committed() -> None:
    """Whisper's real decodes of "The restaurant opens at seven …" after 0.5 and 1.0 s."""
    la = LocalAgreement()
    la.update([Word("The", 0.0, 0.12), Word("rest", 0.12, 0.3), Word("rough.", 0.3, 0.48)], until=0.0)
    done = la.update(
        [Word("The", 0.0, 0.12), Word("rest", 0.12, 0.34), Word("run", 0.34, 0.5), Word("to", 0.5, 0.7)],
        until=0.5,
    )
    assert done == []  # "rest" ended 0.2 s before the end of the first decode's audio: held
    done = la.update(
        [
            Word("The", 0.0, 0.12),
            Word("restaurant", 0.12, 0.4),
            Word("opens", 0.4, 0.86),
            Word("at", 0.86, 1.1),
        ],
        until=1.0,
    )
    assert text_of(done) == "The"


def test_the_context_s_last_word_heard_again_after_the_boundary_is_not_a_new_word() -> None:
    la = LocalAgreement()
    la.committed = [Word("our", -0.9, -0.6), Word("city.", -0.6, -0.1)]  # carried in: ends before 0
    la.boundary = 0.0
    decode = [
        Word("city.", -0.05, 0.2),
        Word("The", 0.45, 0.6),
        Word("harbour", 0.6, 1.0),
        Word("was", 1.0, 1.2),
    ]
    la.update(decode)
    la.update(decode)
    assert text_of(la.committed[2:]) == "The harbour"  # "city." was the context's, not new
    plain = LocalAgreement()  # without a boundary a word said twice is two words
    plain.committed = [Word("a", 0.0, 0.4)]
    plain.update([Word("a", 0.4, 0.8), Word("b", 0.8, 1.2)])
    plain.update([Word("a", 0.4, 0.8), Word("b", 0.8, 1.2)])
    assert text_of(plain.committed) == "a a"
