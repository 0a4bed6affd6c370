from __future__ import annotations

import pytest

from linguamesh.core.ids import JobId, SessionId, TraceId
from linguamesh.core.jobs import ALLOWED, IllegalTransition, Job, JobState
from linguamesh.core.stages import Requirement, expand_stages, requirements


def make_job(**kw: object) -> Job:
    base: dict[str, object] = dict(
        job_id=JobId("job-1"),
        trace_id=TraceId("t"),
        session_id=SessionId("s"),
        utterance_index=0,
        src_lang="en",
        tgt_lang="es",
        stages=("asr", "nmt", "tts"),
        audio=b"\0\0",
        audio_format="pcm16",
        sample_rate=16000,
        audio_seconds=1.0,
        created_at=0.0,
    )
    base.update(kw)
    return Job(**base)  # type: ignore[arg-type]


def test_happy_path_transitions() -> None:
    job = make_job()
    for s in ("assigned", "dispatched", "accepted", "running", "completed"):
        job.transition(JobState(s), 1.0)
    assert job.state is JobState.COMPLETED and job.finished_at == 1.0
    assert [h[1] for h in job.history] == ["assigned", "dispatched", "accepted", "running", "completed"]


@pytest.mark.parametrize("terminal", [JobState.COMPLETED, JobState.FAILED, JobState.CANCELLED])
def test_terminal_states_never_change(terminal: JobState) -> None:
    job = make_job()
    job.transition(terminal, 0)
    for dst in JobState:
        with pytest.raises(IllegalTransition, match="illegal transition"):
            job.transition(dst, 1)


def test_cannot_skip_dispatch() -> None:
    job = make_job()
    with pytest.raises(IllegalTransition):
        job.transition(JobState.ACCEPTED, 0)
    with pytest.raises(IllegalTransition):
        job.transition(JobState.RUNNING, 0)


def test_every_state_has_rules() -> None:
    assert set(ALLOWED) == set(JobState)


def test_stage_expansion() -> None:
    assert expand_stages("en", "es", tts=True, repair_available=True) == ("asr", "repair", "nmt", "tts")
    assert expand_stages("en", "es", tts=False, repair_available=False) == ("asr", "nmt")
    assert expand_stages("en", "en", tts=True, repair_available=False) == ("asr", "tts")
    assert requirements(("asr", "nmt", "tts"), "zh", "en") == (
        Requirement("asr", ("zh",)),
        Requirement("nmt", ("zh", "en")),
        Requirement("tts", ("en",)),
    )
