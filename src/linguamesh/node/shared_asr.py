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
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable

#: How long a finished transcript waits for a late sibling, and how many are kept.
KEEP_SECONDS = 60.0
MOST = 256


def utterance_key(session_id: str, utterance_index: int, src_lang: str, audio: bytes) -> str:
    """Siblings share the session, the utterance, the source language and the audio (its
    digest: a retried utterance with other audio is another utterance)."""
    digest = hashlib.blake2b(audio, digest_size=16).hexdigest()
    return f"{session_id}:{utterance_index}:{src_lang}:{digest}"


class SharedTranscripts:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self._runs: OrderedDict[str, tuple[asyncio.Future[str], float]] = OrderedDict()
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

    def _forget_old(self) -> None:
        now = self.clock()
        for key in [k for k, (_, done_at) in self._runs.items() if now - done_at > KEEP_SECONDS]:
            del self._runs[key]
        while len(self._runs) > MOST:
            self._runs.popitem(last=False)
