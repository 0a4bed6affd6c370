"""Which target languages a session's next utterance gets (``core.languages.session_targets``)."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from linguamesh.core.languages import session_targets

LANGS = ["de", "en", "es", "fr", "it", "pt"]


def test_listeners_come_after_the_speakers_languages_first_asked_first_served() -> None:
    listeners = {"pt": (5.0, 100.0), "de": (9.0, 100.0), "fr": (1.0, 100.0), "it": (2.0, 50.0)}
    targets, over = session_targets(["es"], "en", listeners, 60.0, 3, {"es", "fr", "de", "pt", "it"})
    assert targets == ["es", "fr", "pt"]  # it lapsed at 50; fr then pt came first; de is one too many
    assert over == ["de"]
    targets, over = session_targets(["es"], "en", listeners, 60.0, 4, {"es", "de"})  # fr, pt: no node
    assert (targets, over) == (["es", "de"], [])
    # the speaker's access token grants es and pt only: the others are not added
    targets, over = session_targets(["es"], "en", listeners, 60.0, 4, {"es", "fr", "de", "pt"}, {"es", "pt"})
    assert (targets, over) == (["es", "pt"], [])


@given(
    speaker=st.lists(st.sampled_from(LANGS), min_size=1, max_size=3, unique=True),
    listeners=st.dictionaries(
        st.sampled_from(LANGS), st.tuples(st.floats(0, 100), st.floats(0, 100)), max_size=6
    ),
    most=st.integers(1, 6),
    servable=st.sets(st.sampled_from(LANGS)),
    granted=st.none() | st.sets(st.sampled_from(LANGS)),
)
def test_the_targets_are_the_speakers_then_live_servable_listeners_within_the_bound(
    speaker: list[str],
    listeners: dict[str, tuple[float, float]],
    most: int,
    servable: set[str],
    granted: set[str] | None,
) -> None:
    targets, over = session_targets(speaker, "en", listeners, 50.0, most, servable, granted)
    assert targets[: len(speaker)] == speaker  # the speaker's own always, first
    added = targets[len(speaker) :]
    assert len(targets) <= max(len(speaker), most) and len(set(targets)) == len(targets)
    for lang in added + over:
        assert lang != "en" and lang in servable and listeners[lang][1] > 50.0 and lang not in speaker
        assert granted is None or lang in granted  # the speaker's access token grants it
    assert not (set(added) & set(over))
    if over:
        assert len(targets) >= most
    since = [listeners[lang][0] for lang in added + over]
    assert since == sorted(since)  # first asked, first served
