"""Fault injection on real sockets: a WebSocket proxy that drops chosen frames (never run by users)."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable

from websockets.asyncio.client import connect
from websockets.asyncio.server import Server, ServerConnection, serve

from .conftest import free_port

DropRule = Callable[[str, str | bytes], bool]  # (direction "up"|"down", frame) -> drop?


def drop_types(*types: str, direction: str = "up") -> DropRule:
    def rule(d: str, frame: str | bytes) -> bool:
        if d != direction:
            return False
        try:
            return json.loads(frame).get("type") in types
        except ValueError:
            return False

    return rule


class FrameProxy:
    """Listens on a free loopback port and forwards each WebSocket to ``upstream`` (same path)."""

    def __init__(self, upstream: str, drop: DropRule) -> None:
        self.upstream = upstream.rstrip("/")
        self.drop = drop
        self.port = free_port()
        self.dropped: list[str | bytes] = []
        self._server: Server | None = None

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    async def __aenter__(self) -> FrameProxy:
        self._server = await serve(self._handle, "127.0.0.1", self.port, max_size=None)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _handle(self, client: ServerConnection) -> None:
        path = client.request.path if client.request else "/"
        async with connect(self.upstream + path, max_size=None) as upstream:

            async def pump(src, dst, direction: str) -> None:  # type: ignore[no-untyped-def]
                async for frame in src:
                    if self.drop(direction, frame):
                        self.dropped.append(frame)
                        continue
                    await dst.send(frame)

            up = asyncio.create_task(pump(client, upstream, "up"))
            down = asyncio.create_task(pump(upstream, client, "down"))
            _, pending = await asyncio.wait({up, down}, return_when=asyncio.FIRST_COMPLETED)
            for t in pending:
                t.cancel()
            await asyncio.gather(*pending, return_exceptions=True)
