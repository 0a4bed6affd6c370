"""The event loop's lag gauge (``core/overload.py``): sustained lag refuses new work, a
single stall does not, and the refusal ends with hysteresis."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from linguamesh.core.overload import LagGauge


def test_sustained_lag_refuses_and_catching_up_ends_it() -> None:
    g = LagGauge(high=0.2, low=0.05, window=5)
    assert [g.sample(0.3) for _ in range(5)] == [False] * 4 + [True]  # a full window first
    assert g.overloaded and g.reason() is not None and "300 ms" in (g.reason() or "")
    # between low and high: still refusing (no flapping at the edge)
    assert [g.sample(0.1) for _ in range(5)] == [False] * 5 and g.overloaded
    # on time again: ends once the median is under low
    changes = [g.sample(0.0) for _ in range(5)]
    assert changes.count(True) == 1 and not g.overloaded and g.reason() is None


def test_a_single_stall_refuses_nothing() -> None:
    g = LagGauge(high=0.2, low=0.05, window=5)
    for lag in [0.0, 0.001, 5.0, 0.0, 0.002, 0.0, 0.0]:  # the process stopped 5 s, once
        g.sample(lag)
        assert not g.overloaded


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError):
        LagGauge(high=0.1, low=0.2)
    with pytest.raises(ValueError):
        LagGauge(window=0)


@given(st.lists(st.floats(0, 10), max_size=60), st.integers(1, 9))
def test_the_decision_follows_the_median_of_the_window(lags: list[float], window: int) -> None:
    g = LagGauge(high=0.2, low=0.05, window=window)
    for i, lag in enumerate(lags):
        before = g.overloaded
        changed = g.sample(lag)
        recent = sorted(lags[max(0, i + 1 - window) : i + 1])
        assert changed == (g.overloaded != before)
        if len(recent) == window and g.lag >= 0.2:
            assert g.overloaded  # a full window late: refused
        if g.lag < 0.05:
            assert not g.overloaded  # caught up: taken again
        if g.overloaded and not before:
            # only a majority of late ticks starts a refusal, never one stall
            assert sum(x >= 0.2 for x in recent) * 2 > len(recent) or len(recent) % 2 == 0
