from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linguamesh.core.history import EventHistory, ReplayGap
from linguamesh.core.ordering import NotExpected, OrderedStream
from linguamesh.core.reservation import NodeSlots


def test_reserve_respects_capacity_and_is_idempotent() -> None:
    slots = NodeSlots(2)
    assert slots.reserve(("a", 1), 0, 10)
    assert slots.reserve(("a", 1), 0, 10)  # same key: no second slot
    assert slots.reserve(("b", 1), 0, 10)
    assert not slots.reserve(("c", 1), 0, 10)
    assert slots.release(("a", 1)) and not slots.release(("a", 1))
    assert slots.reserve(("c", 1), 0, 10)


def test_reservations_expire() -> None:
    slots = NodeSlots(1)
    assert slots.reserve(("a", 1), 0, 5)
    assert not slots.reserve(("b", 1), 4.9, 5)
    assert slots.reserve(("b", 1), 5.0, 5)
    assert slots.used == 1


@given(st.permutations(list(range(12))), st.sets(st.integers(0, 11), max_size=6))
def test_ordered_stream_delivers_each_once_in_order(order: list[int], gaps: set[int]) -> None:
    present = [i for i in range(12) if i not in gaps]
    stream: OrderedStream[int] = OrderedStream()
    for i in present:
        stream.expect(i)
    delivered: list[int] = []
    for i in order:
        if i in gaps:
            continue
        delivered += stream.complete(i, i)
    assert delivered == present
    assert stream.pending == 0


def test_ordered_stream_rejects_double_completion() -> None:
    stream: OrderedStream[str] = OrderedStream()
    stream.expect(0)
    stream.expect(1)
    assert stream.complete(1, "b") == []
    with pytest.raises(NotExpected):
        stream.complete(1, "b")
    assert stream.complete(0, "a") == ["a", "b"]


def test_history_replay_and_trim() -> None:
    h: EventHistory[str] = EventHistory(max_events=3)
    for i in range(1, 6):
        h.append(i, f"e{i}")
    assert h.since(2) == [(3, "e3"), (4, "e4"), (5, "e5")]
    with pytest.raises(ReplayGap):
        h.since(1)
    with pytest.raises(ReplayGap):
        h.since(9)
    h.ack(4)
    assert h.since(4) == [(5, "e5")]
    with pytest.raises(ValueError):
        h.append(5, "again")


def test_ordered_stream_refuses_an_index_expected_or_delivered_before() -> None:
    from linguamesh.core import ordering

    stream: OrderedStream[str] = OrderedStream()
    stream.expect(0)
    with pytest.raises(ordering.DuplicateIndex):
        stream.expect(0)  # still expected
    assert stream.complete(0, "a") == ["a"]
    with pytest.raises(ordering.DuplicateIndex):
        stream.expect(0)  # delivered: a second job for it would deliver it twice
    stream.expect(2)
    stream.expect(1)  # a lower index arriving late is fine
    assert stream.complete(2, "c") == []
    assert stream.complete(1, "b") == ["b", "c"]
    for i in (1, 2):
        with pytest.raises(ordering.DuplicateIndex):
            stream.expect(i)


def test_ordered_stream_forgets_old_indices_behind_a_floor(monkeypatch: pytest.MonkeyPatch) -> None:
    from linguamesh.core import ordering

    monkeypatch.setattr(ordering, "REMEMBERED", 3)
    stream: OrderedStream[int] = OrderedStream()
    for i in range(0, 10, 2):
        stream.expect(i)
        assert stream.complete(i, i) == [i]
    assert len(stream._delivered) == 3
    # 0 and 2 were forgotten (floor 2); 1 was never seen but lies below the floor
    for i in (0, 1, 2, 4, 8):
        with pytest.raises(ordering.DuplicateIndex):
            stream.expect(i)
    stream.expect(3)  # above the floor and never delivered: a late lower index, accepted
    stream.expect(9)
    assert stream.complete(9, 9) == []
    assert stream.complete(3, 3) == [3, 9]


def test_a_released_result_completed_again_is_already_delivered_not_unknown() -> None:
    from linguamesh.core import ordering

    stream: OrderedStream[str] = OrderedStream()
    stream.expect(0)
    stream.expect(1)
    assert stream.complete(0, "a") == ["a"]
    with pytest.raises(ordering.AlreadyDelivered):
        stream.complete(0, "a again")  # a copy: dropped by the caller
    with pytest.raises(NotExpected) as unknown:
        stream.complete(5, "never expected")  # an index the stream never knew
    assert not isinstance(unknown.value, ordering.AlreadyDelivered)
    assert stream.complete(1, "b") == ["b"]


@given(st.lists(st.integers(min_value=0, max_value=50), min_size=1, max_size=40), st.integers(1, 120))
def test_history_keeps_at_most_max_bytes_and_always_the_newest(sizes: list[int], limit: int) -> None:
    h: EventHistory[bytes] = EventHistory(max_events=1000, max_bytes=limit, size=len)
    for seq, n in enumerate(sizes, start=1):
        h.append(seq, b"x" * n)
        kept = h.since(h.last_seq - len(h))
        assert h.bytes == sum(len(e) for _, e in kept)
        assert kept[-1][0] == seq  # the newest is always kept, however big
        assert h.bytes <= limit or len(h) == 1
    h.ack(h.last_seq)
    assert len(h) == 0 and h.bytes == 0
