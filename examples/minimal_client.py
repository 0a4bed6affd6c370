"""A LinguaMesh client written from docs/protocol.md alone: the standard library and the
`websockets` package, no LinguaMesh code. It sends a WAV file as one utterance, prints
what the scheduler says, acknowledges the events and closes the session.

    python examples/minimal_client.py talk.wav ws://127.0.0.1:5010 en es
"""

import asyncio
import base64
import json
import sys

import websockets


async def main(wav: bytes, url: str, src: str, tgt: str) -> int:
    audio = base64.b64encode(wav).decode()  # a whole WAV file: its header says its rate
    async with websockets.connect(url + "/ws/session", max_size=None) as ws:
        init = {"type": "session_init", "protocol_version": 1, "src_lang": src, "tgt_lang": tgt, "tts": False}
        await ws.send(json.dumps(init))
        ack = json.loads(await ws.recv())
        if ack["type"] != "session_init_ack":  # an error: code and message say why
            print(f"refused: {ack.get('code')}: {ack.get('message')}")
            return 1
        print(f"session {ack['session_id']}")
        await ws.send(
            json.dumps({"type": "utterance", "utterance_index": 0, "audio": audio, "audio_format": "wav"})
        )
        closing = False
        async for frame in ws:
            event = json.loads(frame)
            kind = event["type"]
            if kind == "session_closed":  # the last event: the server closes the socket after it
                print(f"closed: {event['reason']}")
                return 0
            if "seq" in event:  # every numbered event can be acknowledged
                await ws.send(json.dumps({"type": "ack", "seq": event["seq"]}))
            if kind == "job_status":
                print(f"  status: {event['status']}")
            elif kind == "asr_partial":
                print(f"  … {event['text']}")
            elif kind == "translation_result":
                if event["status"] == "ok":
                    print(f"{event['text_asr']} -> {event['text_translated']}")
                else:
                    print(f"failed: {event['error']['code']}")
                if not closing:  # every job ends in exactly one result: this was the last
                    closing = True
                    await ws.send(json.dumps({"type": "session_close"}))
            elif kind == "error":
                print(f"error {event['code']}: {event['message']}")
    return 1


if __name__ == "__main__":
    path, url, src, tgt = sys.argv[1:5]
    with open(path, "rb") as f:
        sys.exit(asyncio.run(main(f.read(), url, src, tgt)))
