"""The streamed-utterance segmenter (``core/segmenter.py``): examples, and a hypothesis state
machine that feeds it any order of chunks, idle gaps, ends of speech and refusals, plays the
shell's part, and checks that no audio is lost or doubled and every utterance is well formed."""

from __future__ import annotations

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from linguamesh.core.segmenter import (
    Append,
    ArmIdle,
    Close,
    Decision,
    DisarmIdle,
    Open,
    Segmenter,
)

MAX = 40


def halfway(pcm: bytes) -> int:
    """A stand-in for "the middle of the last pause": a zero byte in the later half of the
    limit, else the limit."""
    for i in range(min(len(pcm), MAX) - 1, MAX // 2 - 1, -1):
        if pcm[i] == 0:
            return i
    return MAX


def first_loud(pcm: bytes) -> int | None:
    """A stand-in for speech onset: two bytes ahead of the first non-zero byte."""
    for i, b in enumerate(pcm):
        if b:
            return max(0, i - 2)
    return None


def kinds(out: list[Decision]) -> list[str]:
    return [type(d).__name__ for d in out]


def always() -> bool:
    return True


def never() -> bool:
    return False


def test_a_final_chunk_that_passes_the_limit_is_cut_first_and_the_timer_is_left_off() -> None:
    """(Found by the state machine below.) The last chunk takes a live utterance past the
    limit: it is cut in a pause, the rest closes as the final utterance, no ArmIdle."""
    seg = Segmenter(MAX, halfway)
    seg.chunk(0, b"\0" * 26, False, always)
    out = seg.chunk(1, b"\0" * 15, True, never)
    closes = [d for d in out if isinstance(d, Close)]
    assert [(c.why, len(c.audio)) for c in closes] == [("split", 39), ("final", 2)]
    assert not any(isinstance(d, ArmIdle) for d in out) and seg.current is None


def test_a_live_utterance_opens_grows_and_closes_on_is_final() -> None:
    seg = Segmenter(MAX, halfway)
    out = seg.chunk(0, b"\1" * 4, False, always)
    assert out == [DisarmIdle(), Open(0, b"\1" * 4), ArmIdle()]
    out = seg.chunk(1, b"\2" * 4, False, never)  # an open live utterance stays live
    assert out == [DisarmIdle(), Append(0, b"\2" * 4, 1), ArmIdle()]
    out = seg.chunk(2, b"", True, never)
    assert out == [DisarmIdle(), DisarmIdle(), Close(0, "final", True, b"\1" * 4 + b"\2" * 4, 2)]
    assert seg.current is None


def test_without_a_streaming_node_chunks_are_buffered_into_one_utterance() -> None:
    seg = Segmenter(MAX, halfway)
    assert kinds(seg.chunk(0, b"\1" * 4, False, never)) == ["DisarmIdle", "ArmIdle"]
    assert kinds(seg.chunk(1, b"\1" * 4, False, always)) == ["DisarmIdle", "ArmIdle"]  # stays buffered
    assert seg.idle() == [DisarmIdle(), Close(0, "idle_gap", False, b"\1" * 8, 2)]
    assert seg.idle() == []  # nothing open: a late timer does nothing
    assert seg.chunk(2, b"", True, never) == [DisarmIdle()]  # an empty final chunk makes nothing


def test_a_long_utterance_is_split_at_a_pause_and_the_rest_goes_on() -> None:
    seg = Segmenter(MAX, halfway)
    audio = b"\1" * 30 + b"\0" + b"\1" * 19  # 50 bytes: a pause at 30
    out = seg.chunk(0, audio, False, always)
    assert out == [
        DisarmIdle(),
        Open(0, audio),  # the jobs start with all of it; the close says where it ends
        DisarmIdle(),
        Close(0, "split", True, b"\1" * 30, 1),
        Open(1, b"\0" + b"\1" * 19),
        ArmIdle(),
    ]
    seg = Segmenter(MAX, halfway)  # the same when buffered
    out = seg.chunk(0, audio, True, never)
    assert [d for d in out if isinstance(d, Close)] == [
        Close(0, "split", False, b"\1" * 30, 1),
        Close(1, "final", False, b"\0" + b"\1" * 19, 1),
    ]


def test_server_end_of_speech_waits_for_speech_and_ends_where_the_node_says() -> None:
    seg = Segmenter(MAX, halfway, onset=first_loud, server_ends=True, preroll_bytes=6)
    assert seg.chunk(0, b"\0" * 20, False, always) == [DisarmIdle()]  # silence: nothing
    assert len(seg.preroll) == 6  # only the last of it is kept
    out = seg.chunk(1, b"\0\0\1\1", False, always)
    assert out[1] == Open(0, b"\0\0\1\1")  # two bytes before the speech
    seg.chunk(2, b"\1\1\0\0\0\0\1\1", False, never)
    out = seg.speech_end(0, 8)
    assert out == [
        DisarmIdle(),
        Close(0, "end_of_speech", True, b"\0\0\1\1\1\1\0\0", 2),
        Open(1, b"\0\0\1\1"),  # the audio after the cut starts the next utterance (it has speech)
        ArmIdle(),
    ]
    assert seg.speech_end(0, 3) == []  # a second end of the same utterance: stale


def test_a_refused_open_drops_the_utterance_and_the_next_chunk_tries_again() -> None:
    seg = Segmenter(MAX, halfway)
    out = seg.chunk(0, b"\1" * 4, True, always)
    assert kinds(out) == ["DisarmIdle", "Open", "DisarmIdle", "Close"]
    seg.chunk(1, b"\1" * 4, False, always)
    seg.refused(1)
    assert seg.current is None
    out = seg.chunk(2, b"\1" * 4, False, always)
    assert out[1] == Open(2, b"\1" * 4)


def test_after_a_sentence_cut_a_client_ended_stream_waits_for_speech_and_keeps_it_all() -> None:
    seg = Segmenter(MAX, halfway, onset=first_loud)
    seg.chunk(0, b"\1\1\1\1\0\0", False, always)  # a sentence, then a gap
    out = seg.speech_end(0, 4, "sentence")
    assert [(c.why, c.audio) for c in out if isinstance(c, Close)] == [("sentence", b"\1\1\1\1")]
    assert not any(isinstance(d, Open) for d in out)  # the gap waits: no utterance of silence
    out = seg.chunk(1, b"\0\0\2", False, always)  # the next sentence starts
    (opened,) = [d for d in out if isinstance(d, Open)]
    assert opened.audio == b"\0\0\0\0\2"  # all of it, the gap included: nothing is lost
    seg.speech_end(1, 5, "sentence")
    out = seg.chunk(2, b"\0\0", True, always)  # the button is released after a silence
    assert not any(isinstance(d, Open | Close) for d in out) and seg.awaiting is None


def test_repeated_chunks() -> None:
    seg = Segmenter(MAX, halfway)
    assert not seg.repeated(0)
    seg.chunk(3, b"\1", False, never)
    assert seg.repeated(3) and seg.repeated(2) and not seg.repeated(4)


class SegmenterMachine(RuleBasedStateMachine):
    """The shell: applies decisions in order to its own view of each utterance, skips those
    of a refused one, keeps what was closed; the audio fed must come out whole, once, in order."""

    def __init__(self) -> None:
        super().__init__()
        self.seg: Segmenter | None = None
        self.fed = bytearray()
        self.live: dict[int, bytearray] = {}  # the shell's view of each live utterance
        self.pieces: dict[int, int] = {}
        self.closed: dict[int, bytes] = {}
        self.dropped: dict[int, bytes] = {}
        self.idle_armed = False
        self.seq = -1
        self.refuse_next = False
        self.node_cut = False  # a node cut a client-ended stream: silence after it may go

    @rule(server=st.booleans())
    def start(self, server: bool) -> None:
        if self.seg is None:
            self.seg = Segmenter(MAX, halfway, onset=first_loud, server_ends=server, preroll_bytes=6)

    def _do(self, out: list[Decision]) -> None:
        assert self.seg is not None
        for d in out:
            if isinstance(d, ArmIdle):
                assert d is out[-1], "ArmIdle is the last decision"
                self.idle_armed = self.seg.open
            elif isinstance(d, DisarmIdle):
                self.idle_armed = False
            elif d.number in self.dropped:
                continue  # the shell skips what follows a refusal
            elif isinstance(d, Open):
                assert d.number not in self.live and d.number not in self.closed
                if self.refuse_next:
                    self.refuse_next = False
                    self.seg.refused(d.number)
                    self.dropped[d.number] = d.audio
                    continue
                self.live[d.number] = bytearray(d.audio)
                self.pieces[d.number] = 1
            elif isinstance(d, Append):
                assert d.number in self.live and d.number not in self.closed, "append to a closed one"
                assert d.seq == self.pieces[d.number], "pieces out of order"
                self.live[d.number] += d.audio
                self.pieces[d.number] += 1
            elif isinstance(d, Close):
                assert d.number not in self.closed, "closed twice"
                assert len(d.audio) <= MAX, "longer than the limit"
                if d.live:
                    view = self.live.pop(d.number)
                    assert view.startswith(d.audio), "a live close is a cut of what was streamed"
                    assert d.pieces == self.pieces[d.number]
                else:
                    assert d.audio, "an empty whole utterance"
                self.closed[d.number] = d.audio

    @rule(
        data=st.lists(st.sampled_from([0, 1]), max_size=30),
        is_final=st.booleans(),
        can=st.booleans(),
        refuse=st.booleans(),
        step=st.integers(-1, 2),
    )
    def chunk(self, data: list[int], is_final: bool, can: bool, refuse: bool, step: int) -> None:
        if self.seg is None:
            return
        seq = self.seq + step
        if self.seg.repeated(seq):
            return
        self.seq = seq
        self.refuse_next = refuse
        audio = bytes(data)
        self.fed += audio
        self._do(self.seg.chunk(seq, audio, is_final, lambda: can))
        self.refuse_next = False

    @rule()
    def idle(self) -> None:
        if self.seg is not None and self.idle_armed:
            self._do(self.seg.idle())

    @rule(size=st.integers(0, 60), back=st.integers(0, 2), why=st.sampled_from(["end_of_speech", "sentence"]))
    def speech_end(self, size: int, back: int, why: str) -> None:
        if self.seg is None or self.seg.made == 0:
            return
        self._do(self.seg.speech_end(max(0, self.seg.made - 1 - back), size, why))
        self.node_cut = self.node_cut or self.seg.awaiting is not None

    @invariant()
    def no_audio_lost_or_doubled(self) -> None:
        """Every utterance closed or refused, then the open one, then the pre-roll, in
        order: exactly what was fed (the pre-roll lets go of silence only)."""
        seg = self.seg
        if seg is None:
            return
        ended = {**self.closed, **self.dropped}
        kept = b"".join(ended[n] for n in sorted(ended))
        cur = seg.current
        if cur is not None:
            assert cur.number > max(ended, default=-1)
            kept += bytes(cur.audio)
        kept += bytes(seg.preroll) + bytes(seg.awaiting or b"")
        # only silence (zero bytes) may be let go: from before a start of speech, or after
        # a node's cut up to the client's end
        assert kept.replace(b"\0", b"") == bytes(self.fed).replace(b"\0", b"")
        if not seg.server_ends and not self.node_cut:
            assert kept == bytes(self.fed)

    @invariant()
    def one_open_utterance_and_the_idle_timer_follows_it(self) -> None:
        seg = self.seg
        if seg is None:
            return
        if seg.current is not None:
            assert len(seg.current.audio) < MAX
            assert self.idle_armed
            if seg.current.live:
                assert bytes(self.live[seg.current.number]).startswith(bytes(seg.current.audio))
        else:
            assert not self.idle_armed
        assert len(self.live) <= 1, "two live utterances open"


TestSegmenterMachine = SegmenterMachine.TestCase
TestSegmenterMachine.settings = settings(max_examples=300, stateful_step_count=30, deadline=None)
