"""A viewer's language (``lang`` on the viewer stream): which events it gets, and the
listener language it adds to the session.

A viewer that asks for a language the speaker did not pick makes it a *listener
language* of the session: it is kept in the state store with the time it lapses
(``LISTENER_GRACE_SECONDS`` after the viewer's last refresh; every instance can serve the
viewer, the session's holder reads it), and the session's utterances from the next one on
are translated into it too (``Intake.targets``), within the session's ``max_targets``
and while a node serves the pair. The viewer learns where it stands from a ``listener``
event (``ok``, ``unservable``, ``over_quota``, ``not_granted``) when its stream opens and
whenever that changes.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field

from ...core.ids import SessionId
from ...core.languages import is_known, session_targets
from ...core.nodes import servable_targets
from ...protocol import event_lang
from ...state.base import DependencyDown, StateStore

#: A listener language lapses this long after its last viewer stopped refreshing it.
LISTENER_GRACE_SECONDS = 60.0
#: Viewers refresh their language this often (well inside the grace).
REFRESH_SECONDS = 15.0


def lang_problem(lang: str) -> str | None:
    return None if is_known(lang) else f"lang {lang!r} is not a language code (ISO 639-1, e.g. fr or pt-BR)"


@dataclass(slots=True)
class Listening:
    """One viewer's language in one session."""

    session_id: SessionId
    lang: str
    src_lang: str
    tgt_langs: list[str]
    #: target languages per utterance this session may have
    most: int
    ended: bool = False
    #: the languages the speaker's access token grants (None: any)
    granted: frozenset[str] | None = None
    status: str = ""
    refreshed_at: float = float("-inf")
    #: the session's listener languages as the last refresh read them
    seen: dict[str, tuple[float, float]] = field(default_factory=dict)

    @property
    def adds(self) -> bool:
        """The viewer's language is not one the session translates into anyway."""
        return self.lang != self.src_lang and self.lang not in self.tgt_langs and not self.ended

    @property
    def shown(self) -> str:
        """The target language whose events the viewer gets (the source language's
        transcript comes with the speaker's first target's results)."""
        return self.tgt_langs[0] if self.lang == self.src_lang and self.tgt_langs else self.lang

    def wants(self, data: bytes) -> bool:
        lang = event_lang(data)
        return lang is None or lang == self.shown

    def due(self) -> bool:
        return self.adds and time.monotonic() - self.refreshed_at >= REFRESH_SECONDS

    async def refresh(self, store: StateStore) -> bytes | None:
        """Keep the listener language alive; the ``listener`` SSE frame when the viewer's
        standing changed (None otherwise)."""
        self.refreshed_at = time.monotonic()
        status, message = "ok", f"{self.lang}: translated from the next utterance on"
        try:
            now = time.time()
            if self.granted is not None and self.lang not in self.granted:  # nothing to keep alive
                status = "not_granted"
                message = f"the speaker's access token does not grant {self.lang}"
            else:
                await store.touch_listener(self.session_id, self.lang, now, now + LISTENER_GRACE_SECONDS)
                served = servable_targets(store.nodes().all_nodes(), self.src_lang)
                self.seen = await store.listeners(self.session_id)
                targets, _ = session_targets(
                    self.tgt_langs, self.src_lang, self.seen, now, self.most, served, self.granted
                )
                if self.lang not in served:
                    status = "unservable"
                    message = f"no node serves {self.src_lang}->{self.lang} now; asked again every {REFRESH_SECONDS:g} s"
                elif self.lang not in targets:  # the languages asked for earlier fill the session's targets
                    status = "over_quota"
                    message = f"this session translates into at most {self.most} languages ({', '.join(targets)} now)"
        except DependencyDown:
            return None  # tried again at the next refresh
        if status == self.status:
            return None
        self.status = status
        body = json.dumps({"type": "listener", "lang": self.lang, "status": status, "message": message})
        return b"event: listener\ndata: %s\n\n" % body.encode()
