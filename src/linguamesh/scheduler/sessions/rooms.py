"""Rooms: a viewer link that outlives a session.

A speaker page names a *room* (a random id in its share link) and proves it is the
room's speaker with a *room key* only it knows (``session_init.room`` / ``room_key``,
our additions). Each new session of that speaker — after a server restart or an
expired session — points the room at itself; viewers follow the room
(``GET /api/v1/rooms/{room}`` → the current session and its view token), so a share
link is never stranded on a dead session.

Rooms live in the state store (shared by every instance, like the transcripts): any
instance answers a room's viewers, and a session claims its room again whenever it
resumes or is taken over, so the room follows the speaker even after the store lost it.
"""

from __future__ import annotations

import base64
import hashlib
import re

from ...protocol import ErrorCode, ProtocolError
from ...state.base import RoomRecord, StateStore

ROOM_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")


def key_hash(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def room_of(key: str) -> str:
    """The room a key commits to: the first 22 characters of the unpadded base64url
    SHA-256 of the key (UTF-8). Only the key's holder can name a room that is its own, so
    no one can claim it first — after a restart, on another instance, or after the room
    was forgotten."""
    return base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()).decode()[:22]


class Rooms:
    def __init__(self, store: StateStore) -> None:
        self.store = store

    @staticmethod
    def check(room: str, key: str | None) -> None:
        if not ROOM_ID.fullmatch(room):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, "field `room`: 16-64 characters of A-Z, a-z, 0-9, _ and -"
            )
        if key is None or not 16 <= len(key) <= 128:
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE, "field `room_key`: 16-128 characters are needed with `room`"
            )
        if room != room_of(key):
            raise ProtocolError(
                ErrorCode.BAD_MESSAGE,
                "field `room`: must be the first 22 characters of base64url(SHA-256(room_key)), unpadded",
            )

    async def claim(self, room: str, digest: str, session_id: str, view_token: str) -> bool:
        """Point ``room`` at the session; only the key that created the room may move it
        (``digest``: :func:`key_hash` of that key). False when another key holds the room."""
        return await self.store.claim_room(room, RoomRecord(bytes.fromhex(digest), session_id, view_token))

    async def get(self, room: str) -> RoomRecord | None:
        return await self.store.room(room)
