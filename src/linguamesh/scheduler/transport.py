"""A socket as the scheduler's parts see it (a Starlette WebSocket, or a test's fake)."""

from __future__ import annotations

from typing import Protocol


class Transport(Protocol):
    async def send_text(self, data: str) -> None: ...

    async def close(self, code: int = 1000, reason: str | None = None) -> None: ...


async def close_quietly(conn: Transport, code: int, reason: str) -> None:
    """Close a socket that may already be gone."""
    try:
        await conn.close(code, reason)
    except Exception:  # noqa: BLE001 - closing a dead socket may raise anything; it is closed either way
        pass
