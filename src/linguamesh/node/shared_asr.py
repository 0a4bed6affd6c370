"""One transcript per utterance on a node, whatever the number of its target languages.

A session with several target languages gets one job per (utterance, target): each
target's job keeps its own result, failover and order (protocol v1, unchanged). ASR is
most of a job's time, and every sibling job of an utterance hears the same audio: the
first sibling to reach ASR on this node transcribes it, the others wait for that
transcript instead of decoding the audio again. The scheduler places siblings on the
node of the first one when it can (``preferred_node_id``), so they meet here.

A sibling whose transcriber was cancelled (its job was) or failed transcribes the audio
itself: a job never fails for another job's sake. Entries are kept ``KEEP_SECONDS`` after
they finish (a sibling may be assigned a moment later), at most ``MOST`` of them.

A streamed utterance (its jobs get the audio while it is spoken) is heard once too: the
first sibling's run decodes it (a :class:`Hearing`: its drafts and committed sentences)
and the others follow it, each translating and speaking the sentences for its target. A
follower that joins late is told what was heard so far; when the hearing fails or is
cancelled, the follower hears its own copy of the audio from the start.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

#: How long a finished transcript waits for a late sibling, and how many are kept.
KEEP_SECONDS = 60.0
MOST = 256


def utterance_key(session_id: str, utterance_index: int, src_lang: str, audio: bytes) -> str:
    """Siblings share the session, the utterance, the source language and the audio (its
    digest: a retried utterance with other audio is another utterance)."""
    digest = hashlib.blake2b(audio, digest_size=16).hexdigest()
    return f"{session_id}:{utterance_index}:{src_lang}:{digest}"


def live_key(session_id: str, utterance_index: int, src_lang: str) -> str:
    """A streamed utterance's siblings get the same audio from the scheduler, as it comes."""
    return f"{session_id}:{utterance_index}:{src_lang}:live"


@dataclass(eq=False)
class Ear:
    """A follower of a hearing: the drafts (text, committed characters) and the committed
    sentences, in order."""

    draft: Callable[[str, int | None], None]
    sentence: Callable[[str], None]


@dataclass(eq=False)
class Hearing:
    """A streamed utterance as one run on this node hears it, for the sibling runs that
    follow it. ``ended``: True once every sentence was heard (then ``size``: the bytes of
    audio it covers), False when the run failed or was cancelled."""

    end_of_speech_ms: int | None
    draft: tuple[str, int | None] | None = None
    sentences: list[str] = field(default_factory=list)
    ears: list[Ear] = field(default_factory=list)
    size: int | None = None
    ended: asyncio.Future[bool] = field(default_factory=lambda: asyncio.get_running_loop().create_future())
    ended_at: float = float("inf")

    def drafted(self, text: str, stable: int | None) -> None:
        self.draft = (text, stable)
        for ear in list(self.ears):
            ear.draft(text, stable)

    def committed(self, sentence: str) -> None:
        self.sentences.append(sentence)
        for ear in list(self.ears):
            ear.sentence(sentence)

    def join(self, ear: Ear) -> None:
        """Follow from now on, after what was heard so far."""
        if self.draft is not None:
            ear.draft(*self.draft)
        for sentence in self.sentences:
            ear.sentence(sentence)
        self.ears.append(ear)

    def leave(self, ear: Ear) -> None:
        if ear in self.ears:
            self.ears.remove(ear)

    def end(self, heard: bool, size: int | None = None, at: float = 0.0) -> None:
        if not self.ended.done():
            self.size = size if heard else None
            self.ended.set_result(heard)
            self.ended_at = at


class SharedTranscripts:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._runs: OrderedDict[str, tuple[asyncio.Future[str], float]] = OrderedDict()
        self._hearings: OrderedDict[str, Hearing] = OrderedDict()
        #: transcripts run, and taken from a sibling (for logs, metrics and the bench)
        self.runs = 0
        self.shared = 0

    async def transcribe(self, key: str, hear: Callable[[], Awaitable[str]]) -> tuple[str, bool]:
        """The utterance's transcript, and whether a sibling's run gave it."""
        self._forget_old()
        held = self._runs.get(key)
        if held is not None:
            try:
                text = await asyncio.shield(held[0])
            except asyncio.CancelledError:
                task = asyncio.current_task()
                if task is not None and task.cancelling():
                    raise  # this job itself was cancelled
                # the sibling's job was: hear it here
            except Exception:  # noqa: BLE001 - the sibling's run failed: hear it here
                pass
            else:
                self.shared += 1
                return text, True
        future: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self._runs[key] = (future, float("inf"))
        self.runs += 1
        try:
            text = await hear()
        except BaseException as exc:
            if isinstance(exc, asyncio.CancelledError):
                future.cancel()
            else:
                future.set_exception(exc)
                future.exception()  # retrieved: a sibling may never look
            raise
        future.set_result(text)
        self._runs[key] = (future, self.clock())
        return text, False

    def hearing(self, key: str, end_of_speech_ms: int | None) -> Hearing | None:
        """The streamed utterance's hearing a run with ``end_of_speech_ms`` can follow: one
        still hearing or heard to the end, that watches for the end of speech the same way
        (or the follower does not watch for it)."""
        self._forget_old()
        h = self._hearings.get(key)
        if h is None or (h.ended.done() and not h.ended.result()):
            return None
        if end_of_speech_ms and h.end_of_speech_ms != end_of_speech_ms:
            return None
        return h

    def lead(self, key: str, end_of_speech_ms: int | None) -> Hearing:
        """This run hears the streamed utterance for its siblings."""
        h = Hearing(end_of_speech_ms)
        self._hearings[key] = h
        self._hearings.move_to_end(key)
        self.runs += 1
        return h

    def end(self, h: Hearing, heard: bool, size: int | None = None) -> None:
        h.end(heard, size, self.clock())

    def _forget_old(self) -> None:
        now = self.clock()
        for key in [k for k, (_, done_at) in self._runs.items() if now - done_at > KEEP_SECONDS]:
            del self._runs[key]
        while len(self._runs) > MOST:
            self._runs.popitem(last=False)
        for key in [k for k, h in self._hearings.items() if now - h.ended_at > KEEP_SECONDS]:
            del self._hearings[key]
        while len(self._hearings) > MOST:
            self._hearings.popitem(last=False)
