"""Transport.ask's own reply inbox (in place of nats-py's request()) keeps every outcome
of an ask: the reply, no responders, a timeout, a closed connection, a cancelled ask, a
forged or stray reply."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import AsyncIterator

import nats
import pytest
from nacl.signing import SigningKey
from nats.aio.msg import Msg

import protocol
from entityd.actor import Actor
from entityd.errors import ActorDeadError, AskTimeout
from entityd.transport import Transport
from protocol import Envelope, Keyring
from tests.helpers import NatsServer, nats_connect, poll, running_actors

ENTITY = "entity-a"


@protocol.kind("test_perf_echo")
@dataclasses.dataclass(frozen=True)
class Echo:
    n: int


class EchoActor(Actor):
    name = "echo"

    async def handle(self, envelope: Envelope) -> object | None:
        return envelope.message


@pytest.fixture
async def client(nats_server: NatsServer) -> AsyncIterator[Transport]:
    key = SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY)
    nc = await nats_connect(nats_server.url, inbox_prefix=f"_i.{ENTITY}")
    try:
        yield Transport(nc, entity=ENTITY, key=key, keyring=keyring)
    finally:
        await nc.close()


async def test_concurrent_asks_each_get_their_own_reply(nats_server: NatsServer) -> None:
    async with running_actors(nats_server.url, ENTITY, {"echo": EchoActor}) as rig:
        replies = await asyncio.gather(*(
            rig.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/echo", Echo(i), 5.0)
            for i in range(300)))
        assert [env.message for env in replies] == [Echo(i) for i in range(300)]
        assert rig.client._replies == {}  # no waiter outlives its ask
        # One subscription for every reply, made on the first ask.
        inboxes = [s for s in rig.client_nc._subs.values()
                   if s.subject.startswith(f"_i.{ENTITY}.")]
        assert len(inboxes) == 1


async def test_ask_of_an_actor_nobody_runs_fails_at_once(client: Transport) -> None:
    start = time.monotonic()
    with pytest.raises(ActorDeadError, match="not running"):
        await client.ask(f"{ENTITY}/ctl", f"{ENTITY}/nobody", Echo(1), 5.0)
    assert time.monotonic() - start < 2.0
    assert client._replies == {}


async def test_ask_unanswered_times_out(client: Transport, nats_server: NatsServer) -> None:
    silent = await nats.connect(nats_server.url)
    try:
        await silent.subscribe(protocol.subjects.local(ENTITY, "mute", "*"))
        await silent.flush()
        start = time.monotonic()
        with pytest.raises(AskTimeout):
            await client.ask(f"{ENTITY}/ctl", f"{ENTITY}/mute", Echo(1), 0.3)
        assert 0.25 < time.monotonic() - start < 2.0
        assert client._replies == {}
    finally:
        await silent.close()


async def test_cancelled_ask_leaves_no_waiter(client: Transport, nats_server: NatsServer) -> None:
    silent = await nats.connect(nats_server.url)
    try:
        await silent.subscribe(protocol.subjects.local(ENTITY, "mute", "*"))
        await silent.flush()
        ask = asyncio.create_task(client.ask(f"{ENTITY}/ctl", f"{ENTITY}/mute", Echo(1), 30))
        await poll(lambda: len(client._replies) == 1, timeout=10, every=0.02,
                   what="the ask waiting for its answer")
        ask.cancel()
        with pytest.raises(asyncio.CancelledError):
            await ask
        assert client._replies == {}
    finally:
        await silent.close()


async def test_ask_on_a_closed_connection_is_actor_dead(client: Transport) -> None:
    await client.nc.close()
    with pytest.raises(ActorDeadError, match="closed"):
        await client.ask(f"{ENTITY}/ctl", f"{ENTITY}/echo", Echo(1), 1.0)


async def test_a_reply_to_another_ask_is_refused(nats_server: NatsServer) -> None:
    """A stray reply (right inbox, wrong corr) fails the ask; it is not taken as its answer."""

    async with running_actors(nats_server.url, ENTITY, {"echo": EchoActor}) as rig:
        spy = await nats.connect(nats_server.url)
        try:
            async def answer_with_wrong_corr(msg: Msg) -> None:
                wire, _ = protocol.seal(rig.key, src=f"{ENTITY}/spoof", dst=f"{ENTITY}/ctl",
                                        subj=msg.reply, message=Echo(7), corr=b"\0" * 16)
                await spy.publish(msg.reply, wire)

            await spy.subscribe(protocol.subjects.local(ENTITY, "spoof", "*"),
                                cb=answer_with_wrong_corr)
            await spy.flush()
            with pytest.raises(protocol.WrongSender):
                await rig.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/spoof", Echo(1), 5.0)
            assert rig.client._replies == {}
            # The transport still serves asks after it.
            reply = await rig.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/echo", Echo(2), 5.0)
            assert reply.message == Echo(2)
        finally:
            await spy.close()
