"""Rooms: a viewer link that outlives a session.

A speaker page names a *room* (a random id in its share link) and proves it is the
room's speaker with a *room key* only it knows (``session_init.room`` / ``room_key``,
our additions). Each new session of that speaker — after a server restart or an
expired session — points the room at itself; viewers follow the room
(``GET /api/v1/rooms/{room}`` → the current session and its view token), so a share
link is never stranded on a dead session.

Rooms live in the memory of the instance that holds the session, as the viewer API
does (``/api/v1/sessions/...`` answers on the session's instance). A restarted server
starts with no rooms; the speaker's next session claims its room again.
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections import OrderedDict
from dataclasses import dataclass

from ...protocol import ErrorCode, ProtocolError

ROOM_ID = re.compile(r"[A-Za-z0-9_-]{16,64}")
MAX_ROOMS = 100_000


@dataclass(slots=True)
class Room:
    key_hash: bytes
    session_id: str
    view_token: str


class Rooms:
    def __init__(self) -> None:
        self._rooms: OrderedDict[str, Room] = OrderedDict()

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

    def claim(self, room: str, key: str, session_id: str, view_token: str) -> None:
        """Point ``room`` at the session; only the key that created the room may move it."""
        digest = hashlib.sha256(key.encode()).digest()
        held = self._rooms.get(room)
        if held is not None and not hmac.compare_digest(held.key_hash, digest):
            raise ProtocolError(ErrorCode.BAD_MESSAGE, "field `room`: this room belongs to another speaker")
        self._rooms[room] = Room(digest, session_id, view_token)
        self._rooms.move_to_end(room)
        while len(self._rooms) > MAX_ROOMS:
            self._rooms.popitem(last=False)

    def get(self, room: str) -> Room | None:
        return self._rooms.get(room)
