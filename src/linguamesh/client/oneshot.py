"""One file in, one translation out: what ``linguamesh translate`` does."""

from __future__ import annotations

from pathlib import Path

from websockets.exceptions import ConnectionClosed, InvalidHandshake

from .. import protocol as p
from ..audio import BadAudio, duration_seconds
from .session import ClientError, SessionClient


class TranslateError(Exception):
    pass


async def translate_file(
    url: str, path: Path, src: str, tgt: str, *, want_tts: bool = True, timeout: float = 120.0
) -> p.TranslationResult:
    try:
        audio = path.read_bytes()  # noqa: ASYNC240 - one small file before any I/O starts
    except OSError as exc:
        raise TranslateError(f"cannot read {path}: {exc.strerror}") from None
    try:
        duration_seconds(audio, "wav", 16000)
    except BadAudio as exc:
        raise TranslateError(f"{path}: {exc}") from None
    client = SessionClient(url, src=src, tgt=tgt, tts=want_tts, partials=False, audio_format="wav")
    try:
        async with client:
            await client.send_utterance(0, audio)
            result = await client.next_result(timeout)
            await client.close_session()
            await client.wait_closed(5.0)
    except ClientError as exc:
        raise TranslateError(str(exc)) from None
    except (OSError, InvalidHandshake) as exc:
        raise TranslateError(f"cannot reach the scheduler at {url}: {exc}") from None
    except ConnectionClosed as exc:
        raise TranslateError(f"the scheduler closed the connection: {exc}") from None
    except TimeoutError:
        raise TranslateError(f"no result within {timeout:g}s") from None
    if result.status != "ok":
        err = result.error
        raise TranslateError(f"translation failed: {err.code}: {err.message}" if err else "failed")
    return result


__all__ = ["TranslateError", "translate_file"]
