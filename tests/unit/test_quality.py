from linguamesh.quality import corpus_wer, wer


def test_wer() -> None:
    assert wer("Hello, world!", "hello world") == 0
    assert wer("the cat sat", "the cat sat down") == 1 / 3
    assert wer("a b c d", "a x c") == 0.5
    assert corpus_wer([("a b", "a b"), ("c d", "c e")]) == 0.25
