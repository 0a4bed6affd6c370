"""A client that floods a session with utterances (run as its own process by the
fairness test, as a flooding user would be another machine). Never run by users.

    python -m tests.security.flooder URL SECONDS  ->  prints {"sent": .., "<code>": ..} as JSON
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

from linguamesh import protocol as p
from linguamesh.client import SessionClient

from ..conftest import SCALE, pcm


async def flood(url: str, seconds: float) -> dict[str, int]:
    counts: dict[str, int] = {}
    async with SessionClient(url, src="en", tgt="es", tts=False) as c:
        assert c.ws is not None

        async def drain() -> None:
            while True:
                ev = await c.recv(None)
                key = ev.code if isinstance(ev, p.Error) else getattr(ev, "status", None)
                if key is not None:
                    counts[key] = counts.get(key, 0) + 1

        reader = asyncio.create_task(drain())
        frame = p.encode_str(p.Utterance(utterance_index=0, audio=pcm(0.2)))
        end = time.perf_counter() + seconds
        i = 0
        while time.perf_counter() < end and i < 50_000:
            await c.ws.send(frame.replace('"utterance_index":0', f'"utterance_index":{i}'))
            i += 1
            if i % 20 == 0:
                await asyncio.sleep(0)
        counts["sent"] = i
        await asyncio.sleep(1.0 * SCALE)
        reader.cancel()
    return counts


if __name__ == "__main__":
    print(json.dumps(asyncio.run(flood(sys.argv[1], float(sys.argv[2])))))
