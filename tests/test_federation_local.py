"""Local traffic stays local, and a reply subject only ends its request with a real answer.

- With a hub observer that may subscribe to everything (`>`), an entity's actor-to-actor
  and entityctl request/reply (`loc.>`, `_l.<entity>.>`) and its JetStream deliveries never
  show on the hub; what does cross (`_i.<entity>.>`) is a federation reply, signed and, but
  for pongs and errors, encrypted.
- Junk, a forgery or a stray message on a request's reply subject is dropped and counted;
  the request ends only with the reply its check accepts (real nats-server).
"""

from __future__ import annotations

import asyncio
import secrets
from pathlib import Path
from typing import Any

import msgpack
import nats
import nats.errors
import pytest
from nats.aio.msg import Msg

from actors.llm import ScriptedLLMServer
from actors.peer.replies import Replies, StrayReply
from bench.rig import ALL, build, running
from tests.helpers import NatsServer, poll
from tests.peer_model import route
from tests.test_federation_security import OBSERVER_PASSWORD, Tap, add_observer, connect

pytestmark = pytest.mark.timeout(180)
A, B = "entity-a", "entity-b"
PLAIN_REPLIES = {"pong", "error", "ack"}


def body_of(data: bytes) -> dict[str, Any]:
    outer = msgpack.unpackb(data, raw=False)
    body: dict[str, Any] = msgpack.unpackb(outer[2], raw=False)
    return body


async def test_local_requests_and_replies_never_reach_the_hub(tmp_path: Path) -> None:
    trust = {A: {B: ALL}, B: {A: ALL}}
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url, trust=trust)
        add_observer(fed)
        async with running(fed):
            a = fed[A]
            await fed.discovered()
            observer = await connect(fed.hub.url, "_i.observer", user="observer",
                                     password=OBSERVER_PASSWORD)
            local = await connect(a.url, f"_l.{A}")
            try:
                on_hub, on_leaf = Tap(), Tap()
                await observer.subscribe(">", cb=on_hub.add)
                await observer.flush()
                await local.subscribe(f"_l.{A}.>", cb=on_leaf.add)
                await local.flush()

                # The operator's local work, and federation calls that need replies.
                assert (await a.ctl("status"))[0] == 0
                assert (await a.ctl("memory", "search", "anything"))[0] == 0
                assert (await a.ctl("todo", "--add", "water the plants"))[0] == 0
                checked = await a.ctl_json("check", B)
                assert checked["state"] == "alive", checked
                code, out, err = await a.ctl("talk", B, "hello, what is 6 times 7?")
                assert code == 0, out + err
                assert (await a.ctl("report", B, "the build is green"))[0] == 0
                await asyncio.sleep(0.5)  # what is in flight reaches the taps

                assert on_leaf.msgs, "the local replies happen on the leaf"
                crossed = [m.subject for m in on_hub.msgs
                           if m.subject.startswith(("_l.", "loc.", "$JS.ACK"))]
                assert crossed == [], crossed[:10]
                replies = [m for m in on_hub.msgs if m.subject.startswith(f"_i.{A}.")]
                assert replies, "the pong and the talk's answer cross the hub to entity-a"
                for msg in replies:
                    if msg.data.startswith(b"{"):  # a PubAck from entity-b's INBOX
                        continue
                    body = body_of(msg.data)
                    assert body["enc"] or body["typ"] in PLAIN_REPLIES, body["typ"]
            finally:
                await observer.close()
                await local.close()


@pytest.fixture
async def nc(nats_server: NatsServer) -> Any:
    client = await nats.connect(nats_server.url)
    yield client
    await client.close()


def text_reply(expected: bytes) -> Any:
    def accept(msg: Msg) -> bytes:
        if msg.data != expected:
            raise StrayReply
        return msg.data
    return accept


async def test_junk_and_forgeries_on_a_reply_subject_do_not_end_the_request(nc: Any) -> None:
    rejected: list[str] = []
    replies = Replies(nc, A, rejected.append)
    await replies.start()

    async def responder(msg: Msg) -> None:
        # What a hostile member who learnt the reply subject would send first.
        for junk in (b"", b"\x00junk", b'{"stream": "INBOX-entity-b", "seq": 1}', b"forged"):
            await nc.publish(msg.reply, junk)
        await nc.publish(msg.reply, b"the real answer")

    await nc.subscribe("svc", cb=responder)
    answer = await replies.request("svc", b"question", 5.0, text_reply(b"the real answer"))
    assert answer == b"the real answer"
    assert rejected == ["stray_reply"] * 4

    # A message for no pending request (late, or a guess at a token) is dropped too.
    await nc.publish(f"{replies.prefix}.{secrets.token_hex(16)}", b"guess")
    await nc.flush()
    await poll(lambda: len(rejected) == 5, timeout=10, every=0.02, what="the guess refused")
    assert rejected[-1] == "stray_reply"
    await replies.stop()


async def test_only_junk_is_a_timeout_and_nobody_listening_is_no_responders(nc: Any) -> None:
    replies = Replies(nc, A, lambda reason: None)
    await replies.start()

    async def junk_only(msg: Msg) -> None:
        await nc.publish(msg.reply, b"junk")

    await nc.subscribe("junk", cb=junk_only)
    with pytest.raises(nats.errors.TimeoutError):
        await replies.request("junk", b"q", 0.5, text_reply(b"real"))
    with pytest.raises(nats.errors.NoRespondersError):
        await replies.request("nobody.listens", b"q", 5.0, text_reply(b"real"))
    # Every reply subject is new: 128 random bits each, under a random session prefix.
    assert replies.prefix.startswith(f"_i.{A}.") and len(replies.prefix.split(".")) == 3
    await replies.stop()
