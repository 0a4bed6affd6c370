"""A scheduler warns about Redis settings that put the shared state at risk (a real
redis-server and scheduler process)."""

from __future__ import annotations

from pathlib import Path

import httpx
import redis.asyncio as aioredis

from ..fleet import Fleet


async def test_eviction_and_no_persistence_are_named_at_start_and_in_readyz(tmp_path: Path) -> None:
    async with Fleet(tmp_path) as fleet:
        assert fleet.redis is not None
        r = aioredis.Redis(port=fleet.redis.port)
        try:
            await r.config_set("maxmemory", "512mb")
            await r.config_set("maxmemory-policy", "allkeys-lru")
            s = await fleet.scheduler("A")
            async with httpx.AsyncClient() as http:
                ready = (await http.get(f"{s.http}/readyz")).json()
            assert ready["ready"] is True  # a warning, not a refusal
            assert any("allkeys-lru" in w and "noeviction" in w for w in ready["warnings"]), ready
            assert any("persistence is off" in w for w in ready["warnings"]), ready
            log = (tmp_path / "A.1.log").read_text()
            assert log.count('"redis.settings_risky"') == 2
            # the recommended settings: nothing to say
            await r.config_set("maxmemory-policy", "noeviction")
            await r.config_set("appendonly", "yes")
            b = await fleet.scheduler("B")
            async with httpx.AsyncClient() as http:
                assert (await http.get(f"{b.http}/readyz")).json()["warnings"] == []
        finally:
            await r.config_set("appendonly", "no")
            await r.aclose()
