"""A call that timed out is reported as not done, and must stay not done. When the
network delays the request (a partition that heals), Redis gets it late, after the
caller gave up, and runs it — unless the script's deadline (the fence) says it is too
late. A TCP proxy on loopback plays the slow network: it holds the bytes the client
sends while "stalled", then delivers them in order (and only then the client's close),
as a network that recovers does."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from linguamesh.core.ids import JobId, NodeId
from linguamesh.core.nodes import NodeCapabilities, NodeView
from linguamesh.state.base import DependencyDown
from linguamesh.state.redis import RedisStateStore

from ..conftest import free_port
from ..redis_server import RedisServer

CAPS = NodeCapabilities(asr=frozenset({"en"}), nmt=frozenset({("en", "es")}), tts=frozenset({"es"}))


class SlowNetwork:
    """Forwards TCP to ``port``; while ``stalled``, client bytes are held, not dropped."""

    def __init__(self, port: int) -> None:
        self.upstream = port
        self.port = free_port()
        self.stalled = asyncio.Event()
        self.healed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> SlowNetwork:
        self.server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.server.close()
        for t in self._tasks:
            t.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)
        for w in self._writers:
            w.close()
            try:
                await w.wait_closed()
            except OSError:
                pass
        await self.server.wait_closed()

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        ur, uw = await asyncio.open_connection("127.0.0.1", self.upstream)
        self._writers += [cw, uw]

        async def up() -> None:  # client -> Redis, held while stalled, in order
            while data := await cr.read(65536):
                if self.stalled.is_set():
                    await self.healed.wait()
                uw.write(data)
                await uw.drain()
            await asyncio.sleep(0.2)  # the close arrives after the data, as on a network
            uw.close()

        async def down() -> None:
            while data := await ur.read(65536):
                if not self.stalled.is_set():
                    cw.write(data)
                    await cw.drain()
            cw.close()

        for coro in (up(), down()):
            task = asyncio.create_task(coro)
            self._tasks.add(task)


async def test_a_reservation_that_timed_out_is_not_made_when_the_network_delivers_it_late(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path / "r").start()
    async with SlowNetwork(server.port) as net:
        store = RedisStateStore(f"redis://127.0.0.1:{net.port}/0")
        direct = RedisStateStore(server.url)
        try:
            n1 = NodeId("n1")
            await store.register_node(NodeView(n1, CAPS, 2), "A")
            await store.reserve(n1, JobId("warm"), 1, 30)  # the wire is connected
            await store.release(n1, JobId("warm"), 1)
            net.stalled.set()
            with pytest.raises(DependencyDown):  # no answer within the timeout: not done
                await store.reserve(n1, JobId("j1"), 1, 30)
            net.stalled.clear()
            net.healed.set()  # the held request reaches Redis now, seconds late
            await asyncio.sleep(0.5)
            await direct.sync_nodes({"A"})
            view = direct.nodes().get(n1)
            assert view is not None and view.reserved == 0, "a call reported as failed was carried out"
            assert await store.reserve(n1, JobId("j2"), 1, 30)  # and the store works again
        finally:
            await store.close()
            await direct.close()
    server.stop()
