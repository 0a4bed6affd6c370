"""How much a state store keeps per session, the same in both stores."""

from __future__ import annotations

from dataclasses import dataclass

#: Rooms remembered (the oldest go first); in Redis a room lives ``ROOM_TTL`` after its last claim.
MAX_ROOMS = 100_000
ROOM_TTL = 7 * 24 * 3600
#: Sessions a room remembers (its event's transcript: the newest ones).
MAX_ROOM_SESSIONS = 200


@dataclass(frozen=True, slots=True)
class StoreLimits:
    """``history_events`` / ``history_bytes``: the replay window of a session (its newest
    events, for a client that reconnects; results carry their speech, ~4.4 MB a minute of
    talk, so the bytes bound is the one that counts). ``transcript_retention``: seconds a
    session's transcript stays after the session ended. ``transcript_entries``: results
    kept in one transcript (hundreds of hours of talk)."""

    history_events: int = 1000
    history_bytes: int = 8 * 1024 * 1024
    transcript_retention: float = 24 * 3600.0
    transcript_entries: int = 200_000

    def lua(self) -> str:
        """The limits as the Redis scripts read them (``limits()`` in ``redis_scripts``)."""
        keep = max(1, int(self.transcript_retention))
        return f"{self.history_events} {self.history_bytes} {keep} {self.transcript_entries}"
