"""One transcript per utterance on a node (``node/shared_asr.py``)."""

from __future__ import annotations

import asyncio

import pytest

from linguamesh.node.shared_asr import KEEP_SECONDS, SharedTranscripts, utterance_key


def hearing(text: str, heard: list[str], wait: asyncio.Event | None = None, fail: bool = False):  # type: ignore[no-untyped-def]
    async def hear() -> str:
        heard.append(text)
        if wait is not None:
            await wait.wait()
        if fail:
            raise RuntimeError("engine broke")
        return text

    return hear


async def test_siblings_wait_for_the_first_ones_transcript() -> None:
    shared, heard, go = SharedTranscripts(), [], asyncio.Event()
    key = utterance_key("s-1", 0, "en", b"audio")
    first = asyncio.create_task(shared.transcribe(key, hearing("hello", heard, go)))
    await asyncio.sleep(0)
    others = [asyncio.create_task(shared.transcribe(key, hearing("again", heard))) for _ in range(3)]
    await asyncio.sleep(0)
    go.set()
    assert await first == ("hello", False)
    assert [await t for t in others] == [("hello", True)] * 3
    assert heard == ["hello"] and (shared.runs, shared.shared) == (1, 3)
    # a late sibling still finds it; another utterance (or other audio) is heard again
    assert await shared.transcribe(key, hearing("late", heard)) == ("hello", True)
    assert (await shared.transcribe(utterance_key("s-1", 0, "en", b"other"), hearing("x", heard)))[1] is False


async def test_a_sibling_hears_it_itself_when_the_first_run_fails_or_is_cancelled() -> None:
    for how in ("fail", "cancel"):
        shared, heard, go = SharedTranscripts(), [], asyncio.Event()
        key = utterance_key("s-1", 1, "en", b"audio")
        first = asyncio.create_task(shared.transcribe(key, hearing("one", heard, go, fail=how == "fail")))
        await asyncio.sleep(0)
        second = asyncio.create_task(shared.transcribe(key, hearing("two", heard)))
        await asyncio.sleep(0)
        if how == "fail":
            go.set()
            with pytest.raises(RuntimeError):
                await first
        else:
            first.cancel()
            with pytest.raises(asyncio.CancelledError):
                await first
        assert await second == ("two", False), how  # never fails for another job's sake
        assert heard == ["one", "two"]


async def test_a_waiting_sibling_cancelled_is_cancelled_and_old_transcripts_go() -> None:
    now = [0.0]
    shared, heard, go = SharedTranscripts(clock=lambda: now[0]), [], asyncio.Event()
    key = utterance_key("s-1", 2, "en", b"audio")
    first = asyncio.create_task(shared.transcribe(key, hearing("one", heard, go)))
    await asyncio.sleep(0)
    waiting = asyncio.create_task(shared.transcribe(key, hearing("two", heard)))
    await asyncio.sleep(0)
    waiting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiting
    go.set()
    assert await first == ("one", False) and heard == ["one"]
    now[0] = KEEP_SECONDS + 1  # kept for a while after it finished, then forgotten
    assert await shared.transcribe(key, hearing("three", heard)) == ("three", False)
