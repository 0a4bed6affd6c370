from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from linguamesh import protocol as p


@given(
    index=st.integers(min_value=0, max_value=2**31),
    audio=st.binary(max_size=256),
    req=st.none() | st.text(max_size=20),
)
def test_utterance_round_trip(index: int, audio: bytes, req: str | None) -> None:
    msg = p.Utterance(utterance_index=index, audio=audio, request_id=req)
    assert p.decode_client(p.encode(msg)) == msg


@given(
    text=st.text(max_size=50),
    success=st.booleans(),
    tts=st.none() | st.binary(max_size=64),
)
def test_job_result_round_trip(text: str, success: bool, tts: bytes | None) -> None:
    msg = p.JobResult(job_id="job-1", attempt_id=2, success=success, text_asr=text, tts_audio=tts)
    assert p.decode_node(p.encode(msg)) == msg


def test_every_message_type_is_tagged_with_its_wire_name() -> None:
    ev = p.TranslationResult(utterance_index=1, tgt_lang="es", job_id="j", status="ok", seq=4)
    raw = msgspec.json.decode(p.encode(ev))
    assert raw["type"] == "translation_result" and raw["seq"] == 4
    assert p.decode_event(p.encode(ev)) == ev


def test_unknown_fields_are_ignored() -> None:
    msg = p.decode_client(b'{"type":"ack","seq":3,"future_field":{"x":1}}')
    assert msg == p.Ack(seq=3)


@pytest.mark.parametrize(
    ("frame", "code", "needle"),
    [
        (b"nope", "bad_message", "JSON"),
        (b'"str"', "bad_message", "object"),
        (b"{}", "bad_message", "`type`"),
        (b'{"type":"zzz"}', "bad_message", "'zzz'"),
        (b'{"type":"utterance","audio":""}', "bad_message", "utterance_index"),
        (b'{"type":"utterance","utterance_index":true,"audio":""}', "bad_message", "$.utterance_index"),
        (b'{"type":"utterance","utterance_index":1,"audio":"***"}', "bad_audio", "audio"),
        (
            b'{"type":"session_init","protocol_version":1,"src_lang":"en","tgt_lang":"es","audio_format":"mp3"}',
            "bad_message",
            "audio_format",
        ),
    ],
)
def test_decode_errors_have_stable_codes_and_name_the_field(frame: bytes, code: str, needle: str) -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.decode_client(frame)
    assert exc.value.code == code
    assert needle in exc.value.message
    assert not exc.value.fatal


def test_size_limit_is_checked_before_parsing() -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.decode_client(b"x" * 101, max_bytes=100)
    assert exc.value.code == "audio_too_large"


def test_version_check_is_fatal() -> None:
    with pytest.raises(p.ProtocolError) as exc:
        p.check_version(2)
    assert exc.value.code == "unsupported_version" and exc.value.fatal


_KNOWN = st.sampled_from(
    [
        "session_init",
        "utterance",
        "audio_chunk",
        "ack",
        "session_close",
        "node_register",
        "node_heartbeat",
        "job_ack",
        "job_reject",
        "job_started",
        "job_partial",
        "job_result",
    ]
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=10),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
    max_leaves=8,
)
FRAMES = st.one_of(
    st.binary(max_size=200),
    st.text(max_size=200),
    st.builds(lambda t, d: msgspec.json.encode({**d, "type": t}), _KNOWN, st.dictionaries(st.text(max_size=12), _JSON)),
)  # fmt: skip


@pytest.mark.parametrize("decode", [p.decode_client, p.decode_node, p.decode_event, p.decode_to_node])
@given(frame=FRAMES)
def test_each_decoder_raises_nothing_but_protocol_error(decode: Any, frame: bytes | str) -> None:
    """Every decoder on its own (each one is tried on every frame, whatever the others did)."""
    try:
        decode(frame)
    except p.ProtocolError as exc:
        assert exc.code in p.ErrorCode and exc.message


def test_deep_frames_are_bad_message_on_both_decoders() -> None:
    """A frame nested past msgspec's depth guard is a coded bad_message, also when the
    first decode fails validation and the type is looked up again (the node decoder)."""
    for depth in (1_100, 2_050, 200_000):
        frame = '{"type":"ack","seq":1,"x":' + "[" * depth + "]" * depth + "}"
        for decode in (p.decode_client, p.decode_node):
            with pytest.raises(p.ProtocolError) as err:
                decode(frame)
            assert err.value.code is p.ErrorCode.BAD_MESSAGE


@given(
    text=st.text(max_size=40),
    speech=st.one_of(st.none(), st.binary(max_size=60)),
    result=st.booleans(),
)
def test_a_transcript_keeps_a_result_without_its_speech_and_nothing_else(
    text: str, speech: bytes | None, result: bool
) -> None:
    """Whatever the texts hold (quotes, the field's own name), only the speech goes."""
    tricky = f'{text},"tts_audio":"{text}'
    if result:
        msg: msgspec.Struct = p.TranslationResult(
            utterance_index=3, tgt_lang="es", job_id="j", status="ok", text_asr=tricky,
            text_translated=text, tts_audio=speech, tts_format="wav",
        )  # fmt: skip
    else:
        msg = p.AsrPartial(utterance_index=3, text=tricky)
    data = p.with_seq(p.encode(msg), 7)
    kept = p.transcript_form(data)
    if not result:
        assert kept is None
        return
    assert kept is not None
    back = p.decode_event(kept)
    assert isinstance(back, p.TranslationResult)
    assert back.tts_audio is None and back.seq == 7
    assert back.text_asr == tricky and back.text_translated == text and back.tts_format == "wav"


def test_a_relayed_speech_end_keeps_its_reason_and_an_older_instance_s_means_a_pause() -> None:
    from linguamesh.protocol import inbox as ib

    entry = ib.encode_entry([ib.SpeechEnd(session_id="s-1", job_id="j-1", size=3200, reason="sentence")])
    (back,) = ib.decode_entry(entry)
    assert isinstance(back, ib.SpeechEnd) and (back.size, back.reason) == (3200, "sentence")
    older = msgspec.msgpack.encode([{"k": "speech_end", "s": "s-1", "j": "j-1", "z": 3200}])
    (old,) = ib.decode_entry(older)
    assert isinstance(old, ib.SpeechEnd) and old.reason == "pause"
