"""The streamed utterance: where one session's ``audio_chunk``s open, grow and close
utterances. Pure: chunks, the idle gap and the node's end of speech come in as calls,
decisions come out as lists the shell carries out in order; the audio analysis it needs
(where speech starts, where a pause is) is passed in as functions.

An utterance is streamed (**live**) when a streaming node can take it as it is spoken:
its jobs start at its first chunk and every later chunk is forwarded at once. Otherwise
it is **buffered** and becomes one whole utterance when it closes. Either way it
closes on the first of:

* ``is_final`` on a chunk (the client ends it);
* the idle gap (no chunk for a while: the shell's timer calls :meth:`Segmenter.idle`);
* the node's end of speech (server-side end of speech, live only: :meth:`Segmenter.speech_end`);
* the length limit: it is cut at a pause (``split``) and what follows the cut starts
  the next utterance.

With server-side end of speech, audio between utterances waits in a short pre-roll
until speech starts (silence alone makes no utterance); the next utterance starts with
that speech and a little of the audio before it. When the client ends utterances and
the node cut one (after a sentence), the audio after the cut waits too, all of it,
until speech starts (then all of it opens the next utterance) or the client's
``is_final`` (then it was silence and is let go): a speaker who holds the button a
little after the last sentence gets no empty result.

Decisions are data: each carries what the shell needs (the audio, as bytes), and the
shell keeps its own view of an utterance by applying them in order (a list may open,
grow and close an utterance, and open the next). If the shell could not open a live
utterance (refused: rate limit, store outage), it calls :meth:`Segmenter.refused` and
skips the decisions about that utterance that follow in the same list; the next chunk
tries again.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

#: Where speech starts in pcm (a byte offset, some audio ahead of the first loud frames), or None.
Onset = Callable[[bytes | bytearray], "int | None"]
#: Where to cut pcm longer than the limit: a byte offset in a pause (never 0).
Cut = Callable[[bytes], int]
#: The node's proposals (``speech_end``'s ``why``).
NODE_CUTS = frozenset({"end_of_speech", "sentence", "length"})


@dataclass(eq=False, slots=True)
class Segment:
    """The open utterance, as the segmenter keeps it."""

    number: int
    live: bool
    audio: bytearray
    #: chunks taken into it (``job_audio.seq`` of the next one)
    pieces: int = 1


# ------------------------------------------------------------------ decisions


@dataclass(frozen=True, slots=True)
class Open:
    """Live utterance ``number`` starts with ``audio``: start its jobs, streaming."""

    number: int
    audio: bytes


@dataclass(frozen=True, slots=True)
class Append:
    """``audio`` was added to live utterance ``number`` as piece ``seq``: forward it."""

    number: int
    audio: bytes
    seq: int


@dataclass(frozen=True, slots=True)
class Close:
    """Utterance ``number`` is complete: ``audio`` is all of it (a live one: its first
    ``len(audio)`` bytes; ``pieces`` chunks went into it). ``why`` is ``final``,
    ``idle_gap``, ``end_of_speech``, ``sentence``, ``length`` (the node's proposals) or
    ``split``. A buffered one becomes a whole
    utterance now."""

    number: int
    why: str
    live: bool
    audio: bytes
    pieces: int


@dataclass(frozen=True, slots=True)
class ArmIdle:
    """(Re)start the idle timer. Always the last decision of its list; the shell skips it
    when nothing is open by then (:attr:`Segmenter.open` is false: it refused the open)."""


@dataclass(frozen=True, slots=True)
class DisarmIdle:
    """Stop the idle timer."""


Decision = Open | Append | Close | ArmIdle | DisarmIdle


@dataclass
class Segmenter:
    """One session's stream. ``max_bytes``: the length limit of an utterance; ``onset``:
    where speech starts in some audio. With ``server_ends``, the server ends utterances
    (speech starts are looked for in a pre-roll of at most ``preroll_bytes``); without, a
    client-ended stream that a node cut (a sentence) waits for speech after the cut."""

    max_bytes: int
    cut: Cut
    onset: Onset | None = None
    server_ends: bool = False
    preroll_bytes: int = 0
    #: that audio, while it waits for speech (None: not waiting)
    awaiting: bytearray | None = None
    #: the last chunk ``seq`` taken
    seq: int = -1
    current: Segment | None = None
    preroll: bytearray = field(default_factory=bytearray)
    #: segments made so far
    made: int = 0

    def __post_init__(self) -> None:
        if self.max_bytes < 2:
            raise ValueError("max_bytes must be at least 2")
        if self.server_ends and self.onset is None:
            raise ValueError("server_ends needs onset")

    @property
    def open(self) -> bool:
        """An utterance is open."""
        return self.current is not None

    # ------------------------------------------------------------------ events

    def repeated(self, seq: int) -> bool:
        """Chunk ``seq`` is a repeat or older than one taken (it is dropped)."""
        return seq <= self.seq

    def chunk(self, seq: int, audio: bytes, is_final: bool, can_stream: Callable[[], bool]) -> list[Decision]:
        """Chunk ``seq`` (not :meth:`repeated`) with its audio. ``can_stream()``: a
        streaming node could take a new utterance now (asked only when it matters)."""
        self.seq = seq
        out: list[Decision] = [DisarmIdle()]
        cur = self.current
        if (
            (cur is not None and cur.live)
            or self.preroll
            or self.awaiting is not None
            or (cur is None and audio and can_stream())
        ):
            self._live(audio, is_final, out)
        else:
            self._buffered(audio, is_final, out)
        return self._settled(out)

    def idle(self) -> list[Decision]:
        """No chunk came for the idle gap: the open utterance closes."""
        return self._settled(self._close("idle_gap", None))

    def speech_end(self, number: int, size: int, why: str = "end_of_speech") -> list[Decision]:
        """The node proposes that live utterance ``number`` ends ``size`` bytes into it: it
        heard the speech end (``end_of_speech``), or a sentence (``sentence``, ``length``;
        nothing when that utterance is no longer open)."""
        cur = self.current
        if cur is None or cur.number != number or not cur.live:
            return []
        return self._settled(self._close(why, max(0, min(size, len(cur.audio)))))

    def refused(self, number: int) -> None:
        """The shell could not open utterance ``number``: forget it."""
        if self.current is not None and self.current.number == number:
            self.current = None

    # ------------------------------------------------------------------ live

    def _live(self, audio: bytes, is_final: bool, out: list[Decision]) -> None:
        cur = self.current
        if cur is None:
            if self.server_ends:  # wait for speech
                speech = self._wait_for_speech(audio)
                if speech is None:
                    return
                audio = speech
            elif self.awaiting is not None:  # after a node's cut: wait for speech, keep it all
                speech = self._await_speech(audio, is_final)
                if speech is None:
                    return
                audio = speech
            cur = self._new(live=True, audio=audio)
            out.append(Open(cur.number, audio))
        elif audio:
            seq = cur.pieces
            cur.audio += audio
            cur.pieces += 1
            out.append(Append(cur.number, audio, seq))
        self._split(out)
        if is_final:  # (what is left after the cuts: never longer than the limit)
            out.extend(self._close("final", None))

    def _wait_for_speech(self, audio: bytes) -> bytes | None:
        """Audio between two utterances waits (the last ``preroll_bytes`` of it) until
        speech starts; then the speech, with a little before it, starts the next one."""
        assert self.onset is not None, "server_ends needs onset"
        buf = self.preroll
        buf += audio
        start = self.onset(buf)
        if start is None:
            if len(buf) > self.preroll_bytes:
                del buf[: len(buf) - self.preroll_bytes]
            return None
        speech = bytes(buf[start:])
        buf.clear()
        return speech

    def _await_speech(self, audio: bytes, is_final: bool) -> bytes | None:
        """All the audio after a node's cut, once speech starts in it (or it is as long as
        an utterance may be); None while it waits, and at the client's end with no speech
        in it (silence: let go)."""
        assert self.awaiting is not None and self.onset is not None
        buf = self.awaiting
        buf += audio
        if self.onset(buf) is None and len(buf) < self.max_bytes:
            if is_final:
                self.awaiting = None
            return None
        self.awaiting = None
        return bytes(buf)

    # ------------------------------------------------------------------ buffered

    def _buffered(self, audio: bytes, is_final: bool, out: list[Decision]) -> None:
        cur = self.current
        if cur is None:
            if not audio:
                return
            self._new(live=False, audio=audio)
        else:
            cur.audio += audio
            cur.pieces += 1
        self._split(out)
        if is_final:
            out.extend(self._close("final", None))

    def _split(self, out: list[Decision]) -> None:
        while self.current is not None and len(self.current.audio) >= self.max_bytes:  # cut in a pause
            out.extend(self._close("split", self.cut(bytes(self.current.audio))))

    def _settled(self, out: list[Decision]) -> list[Decision]:
        """The decisions with the idle timer's last word: it runs while an utterance is
        open (one ``ArmIdle``, last), whatever opened and closed on the way."""
        out = [d for d in out if not isinstance(d, ArmIdle)]
        if self.current is not None:
            out.append(ArmIdle())
        return out

    # ------------------------------------------------------------------ closing

    def _new(self, *, live: bool, audio: bytes) -> Segment:
        seg = Segment(self.made, live, bytearray(audio))
        self.made += 1
        self.current = seg
        return seg

    def _close(self, why: str, size: int | None) -> list[Decision]:
        """Close the open utterance at ``size`` bytes (all of it without); what follows
        the cut starts the next utterance."""
        cur = self.current
        if cur is None:
            return []
        rest = b""
        if size is not None and size < len(cur.audio):
            rest = bytes(cur.audio[size:])
            del cur.audio[size:]
        self.current = None
        if why in NODE_CUTS and cur.live and not self.server_ends and self.onset is not None:
            self.awaiting = bytearray()
        out: list[Decision] = [DisarmIdle(), Close(cur.number, why, cur.live, bytes(cur.audio), cur.pieces)]
        if rest:
            if cur.live:
                self._live(rest, False, out)
            else:
                self._buffered(rest, False, out)
        return out
