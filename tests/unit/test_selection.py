from __future__ import annotations

import random

from linguamesh.core.ids import NodeId
from linguamesh.core.nodes import NodeCapabilities, NodeView, pool_name
from linguamesh.core.selection import Fallback, Reason, Request, select_flat, select_pooled
from linguamesh.core.stages import requirements
from linguamesh.state.memory import MemoryNodeIndex


def caps(langs: list[str], tts: bool = True) -> NodeCapabilities:
    return NodeCapabilities(
        asr=frozenset(langs),
        nmt=frozenset((a, b) for a in langs for b in langs if a != b),
        tts=frozenset(langs) if tts else frozenset(),
    )


def index(*nodes: NodeView) -> MemoryNodeIndex:
    ix = MemoryNodeIndex()
    for n in nodes:
        ix.put(n)
    return ix


def req(src: str = "en", tgt: str = "es", **kw: object) -> Request:
    return Request(src, tgt, requirements(("asr", "nmt", "tts"), src, tgt), **kw)  # type: ignore[arg-type]


def node(nid: str, langs: list[str], slots: int = 2, reserved: int = 0, **kw: object) -> NodeView:
    return NodeView(NodeId(nid), caps(langs, **kw), slots, reserved=reserved)  # type: ignore[arg-type]


def test_pool_names_are_sorted_language_sets() -> None:
    assert pool_name(caps(["zh", "en", "de"])) == "de-en-zh"


def test_pooled_picks_a_qualifying_node_and_prefers_small_pools() -> None:
    ix = index(node("general", ["de", "en", "es", "zh"]), node("special", ["en", "es"]))
    out = select_pooled(ix, req(), random.Random(1))
    assert out.ok and out.candidates == ["special"]
    assert out.eligible_pools == ["en-es", "de-en-es-zh"] and out.selected_pool == "en-es"


def test_full_nodes_are_skipped_and_least_loaded_wins() -> None:
    ix = index(
        node("full", ["en", "es"], 1, 1), node("busy", ["en", "es"], 4, 3), node("idle", ["en", "es"], 4, 0)
    )
    out = select_pooled(ix, req(), random.Random(0), sample_size=4)
    assert out.candidates[0] == "idle" and "full" not in out.candidates


def test_failure_reasons() -> None:
    assert select_pooled(index(), req(), random.Random()).reason is Reason.NO_AVAILABLE_POOL
    assert (
        select_pooled(index(node("a", ["en", "es"], 1, 1)), req(), random.Random()).reason
        is Reason.NO_CAPACITY
    )
    no_tts = index(node("a", ["en", "es"], tts=False))
    assert select_pooled(no_tts, req(), random.Random()).reason is Reason.MISSING_MODELS
    out = select_pooled(
        index(node("a", ["en", "es"])), req(excluded=frozenset({NodeId("a")})), random.Random()
    )
    assert out.reason is Reason.EXCLUDED


def test_preferred_node_used_when_it_qualifies() -> None:
    ix = index(node("a", ["en", "es"]), node("b", ["en", "es"]))
    out = select_pooled(ix, req(preferred_node_id=NodeId("b")), random.Random())
    assert out.candidates == ["b"] and out.preferred_used and out.fallback is None


def test_preferred_node_fallback_reasons() -> None:
    ix = index(node("ok", ["en", "es"]), node("zh", ["en", "zh"]), node("mute", ["en", "es"], tts=False))
    cases = {
        "gone": Fallback.NODE_UNAVAILABLE,
        "zh": Fallback.NODE_NOT_IN_POOL,
        "mute": Fallback.NODE_MISSING_MODELS,
    }
    for pref, why in cases.items():
        for select in (select_pooled, select_flat):
            out = select(ix, req(preferred_node_id=NodeId(pref)), random.Random())
            assert out.fallback is why and out.candidates[0] == "ok", (pref, select)


def test_flat_and_pooled_agree_on_feasibility() -> None:
    rng = random.Random(7)
    for trial in range(200):
        nodes = []
        for i in range(rng.randint(0, 6)):
            langs = rng.sample(["en", "es", "fr", "zh"], rng.randint(1, 3))
            slots = rng.randint(1, 3)
            nodes.append(node(f"n{i}", langs, slots, rng.randint(0, slots), tts=rng.random() > 0.2))
        ix = index(*nodes)
        r = req(*rng.sample(["en", "es", "fr", "zh"], 2))
        assert select_pooled(ix, r, rng).ok == select_flat(ix, r, rng).ok, trial


class CountingIndex(MemoryNodeIndex):
    touched = 0

    def sample_free(self, pool, k, rng):  # type: ignore[no-untyped-def]
        got = super().sample_free(pool, k, rng)
        self.touched += len(got)
        return got


def test_pooled_cost_does_not_grow_with_node_count() -> None:
    touched = []
    for n in (10, 1000, 10000):
        ix = CountingIndex()
        for i in range(n):
            ix.put(node(f"n{i}", ["en", "es"] if i % 2 else ["en", "es", "fr"], 4, i % 5))
        for _ in range(20):
            select_pooled(ix, req(), random.Random())
        touched.append(ix.touched)
    # bounded by the sample budget (16 per pool, 2 pools), whatever the fleet size
    assert touched[1] <= 20 * 32 and touched[2] <= 20 * 32, touched
    assert touched[2] <= touched[1] * 1.2, touched


def test_outcomes_value_for_value() -> None:
    """Both selectors' outcomes in full: selector name, candidates, counts, pools, attempts."""
    rng = random.Random(1)
    busy = node("busy", ["en", "es"], slots=1, reserved=1)
    gone = node("gone", ["en", "es"])
    gone.online = False
    fr = node("fr", ["en", "fr"])
    free = node("free", ["en", "es"], slots=3, reserved=1)
    ix = index(busy, gone, fr, free)
    out = select_flat(ix, req(excluded=frozenset({NodeId("x")})), rng)
    assert (out.selector, out.candidates, out.preferred_used, out.fallback) == ("flat", ["free"], False, None)
    assert out.breakdown.considered == 4
    assert out.breakdown.counts == {Reason.NO_CAPACITY: 1, Reason.OFFLINE: 1, Reason.MISSING_MODELS: 1}
    out = select_pooled(ix, req(), rng)
    assert (out.selector, out.candidates, out.selected_pool) == ("pooled", ["free"], "en-es")
    assert out.eligible_pools == ["en-es"] and out.pool_count == 2 and out.attempts == 1
    # the pool's sample holds only members with a free slot (and online): one to consider
    assert out.breakdown.considered == 1 and out.breakdown.counts == {}
    for select, name in ((select_flat, "flat"), (select_pooled, "pooled")):
        used = select(ix, req(preferred_node_id=NodeId("free")), rng)
        assert (used.selector, used.candidates, used.preferred_used) == (name, ["free"], True)
        assert used.breakdown.considered == 0 and used.breakdown.counts == {}
        fell = select(ix, req(preferred_node_id=NodeId("busy")), rng)
        assert (fell.selector, fell.candidates, fell.preferred_used) == (name, ["free"], False)
        assert fell.fallback is Fallback.NODE_UNAVAILABLE


def test_pooled_samples_two_good_nodes_and_tries_pools_in_order() -> None:
    rng = random.Random(3)
    small = [node(f"s{i}", ["en", "es"], slots=4, reserved=i % 4) for i in range(6)]
    big = node("big", ["en", "es", "fr"])
    out = select_pooled(index(*small, big), req(), rng)
    assert out.selected_pool == "en-es" and out.attempts == 1 and len(out.candidates) == 2
    assert out.breakdown.considered == 2  # stopped at the second good node
    loads = [next(n for n in small if n.node_id == c).load for c in out.candidates]
    assert loads == sorted(loads)  # least loaded first
    for n in small:
        n.reserved = n.max_concurrent_jobs  # the small pool is full: the next pool serves
    out = select_pooled(index(*small, big), req(), rng)
    assert out.candidates == ["big"] and out.selected_pool == "en-es-fr" and out.attempts == 2
    assert out.eligible_pools == ["en-es", "en-es-fr"]
    assert out.breakdown.counts == {Reason.NO_CAPACITY: 1}  # the small pool had no free member
    out = select_pooled(index(node("one", ["en", "es"], slots=1, reserved=0)), req(), rng)
    assert out.candidates == ["one"] and out.breakdown.considered == 1


def test_a_node_with_one_free_slot_qualifies_and_a_preferred_one_too() -> None:
    rng = random.Random(5)
    last = node("last", ["en", "es"], slots=2, reserved=1)
    ix = index(last)
    assert select_flat(ix, req(), rng).candidates == ["last"]
    assert select_pooled(ix, req(), rng).candidates == ["last"]
    assert select_pooled(ix, req(preferred_node_id=NodeId("last")), rng).preferred_used
    excluded = select_flat(
        ix, req(excluded=frozenset({NodeId("last")}), preferred_node_id=NodeId("last")), rng
    )
    assert excluded.candidates == [] and excluded.fallback is Fallback.NODE_UNAVAILABLE
    assert excluded.breakdown.counts == {Reason.EXCLUDED: 1} and excluded.reason is Reason.EXCLUDED
