"""The INBOX's lanes (actors/peer/lanes.py) against a real nats-server's JetStream: each
sender's commands in order, senders side by side, a full lane put back and nothing lost,
a command held past the consumer's ack wait not offered twice, and what a stopping
consumer held handed back at once."""

from __future__ import annotations

import asyncio
import contextlib
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import nats
import nats.errors
import pytest
from nats.aio.msg import Msg
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StreamConfig

from actors.peer import lanes
from actors.peer.lanes import Lanes
from protocol import subjects
from tests.helpers import NatsServer, poll

pytestmark = pytest.mark.timeout(60)

ME = "entity-a"
STREAM = "INBOX-lanes"


@dataclass
class Rig:
    js: Any
    psub: Any
    served: list[str] = field(default_factory=list)  # "<sender>:<n>" as served
    deliveries: Counter[str] = field(default_factory=Counter)  # times each was taken
    gates: dict[str, asyncio.Event] = field(default_factory=dict)  # held until set
    _buffer: list[Msg] = field(default_factory=list)

    async def send(self, sender: str, n: int) -> None:
        await self.js.publish(subjects.command(ME, sender, "report"), f"{sender}:{n}".encode())

    async def next(self) -> Msg:
        while not self._buffer:
            with contextlib.suppress(TimeoutError):  # fetch raises nats-py's or asyncio's
                self._buffer += await self.psub.fetch(16, timeout=0.5)
        msg = self._buffer.pop(0)
        self.deliveries[msg.data.decode()] += 1
        return msg

    def left_over(self) -> list[Msg]:
        msgs, self._buffer = self._buffer, []
        return msgs

    async def serve(self, msg: Msg) -> None:
        name = msg.data.decode()
        gate = self.gates.get(name)
        if gate is not None:
            await gate.wait()
        self.served.append(name)
        await msg.ack()

    def of(self, sender: str) -> list[str]:
        return [name for name in self.served if name.startswith(f"{sender}:")]


@contextlib.asynccontextmanager
async def rig(nats_server: NatsServer, ack_wait: float = 30.0) -> AsyncIterator[Rig]:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=[f"fed.cmd.{ME}.*.*"],
                                         retention=RetentionPolicy.WORK_QUEUE))
        psub = await js.pull_subscribe(
            f"fed.cmd.{ME}.*.*", durable="peer", stream=STREAM,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ack_wait,
                                  max_ack_pending=1000))
        yield Rig(js, psub)
    finally:
        await nc.close()


@contextlib.asynccontextmanager
async def consuming(r: Rig) -> AsyncIterator[asyncio.Task[None]]:
    task = asyncio.create_task(Lanes(r.serve).run(r.next, r.left_over))
    try:
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def until(what: str, check: Callable[[], bool], timeout: float = 20.0) -> None:
    async def done() -> bool:
        return check()
    await poll(done, timeout=timeout, what=what)


async def test_a_slow_sender_holds_up_its_own_commands_only_and_each_runs_in_order(
        nats_server: NatsServer) -> None:
    async with rig(nats_server) as r, consuming(r):
        r.gates["entity-b:0"] = asyncio.Event()
        for n in range(5):
            await r.send("entity-b", n)
        for n in range(5):
            await r.send("entity-c", n)
        await until("entity-c's commands served", lambda: len(r.of("entity-c")) == 5)
        assert r.of("entity-b") == []  # behind its first, which is still held
        assert r.of("entity-c") == [f"entity-c:{n}" for n in range(5)]
        r.gates["entity-b:0"].set()
        await until("entity-b's commands served", lambda: len(r.of("entity-b")) == 5)
        assert r.of("entity-b") == [f"entity-b:{n}" for n in range(5)]


async def test_a_full_lane_and_too_many_senders_are_put_back_and_nothing_is_lost(
        nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "WAITING", 2)
    monkeypatch.setattr(lanes, "LANES", 2)
    monkeypatch.setattr(lanes, "BUSY_DELAY_S", 0.2)
    async with rig(nats_server) as r, consuming(r):
        r.gates["entity-b:0"] = asyncio.Event()
        for n in range(8):
            await r.send("entity-b", n)  # one served, two waiting, the rest put back
        for sender in ("entity-c", "entity-d", "entity-e"):
            await r.send(sender, 0)  # one lane left for three senders
        await until("the other senders served", lambda: len(r.served) == 3)
        assert r.of("entity-b") == []
        r.gates["entity-b:0"].set()
        await until("all served", lambda: len(r.served) == 11)
        assert Counter(r.served) == Counter(
            [f"entity-b:{n}" for n in range(8)] + ["entity-c:0", "entity-d:0", "entity-e:0"])
        assert max(r.deliveries.values()) > 1  # some were put back and offered again


async def test_a_command_held_past_the_ack_wait_is_not_offered_again(
        nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(lanes, "KEEPALIVE_S", 0.3)
    async with rig(nats_server, ack_wait=1.0) as r, consuming(r):
        r.gates["entity-b:0"] = asyncio.Event()
        await r.send("entity-b", 0)
        await r.send("entity-b", 1)  # waits behind it in the lane, also past the ack wait
        await until("entity-b:0 taken", lambda: r.deliveries["entity-b:0"] == 1)
        await asyncio.sleep(3.0)  # three ack waits
        r.gates["entity-b:0"].set()
        await until("both served", lambda: len(r.served) == 2)
        await asyncio.sleep(1.5)
        assert r.served == ["entity-b:0", "entity-b:1"]
        assert r.deliveries == {"entity-b:0": 1, "entity-b:1": 1}


async def test_what_a_stopping_consumer_held_is_offered_again_at_once(
        nats_server: NatsServer) -> None:
    async with rig(nats_server) as r:
        async with consuming(r):
            r.gates["entity-b:0"] = asyncio.Event()
            for n in range(3):
                await r.send("entity-b", n)
            await until("all three taken", lambda: sum(r.deliveries.values()) == 3)
        assert r.served == []  # stopped with entity-b:0 held and two behind it
        r.gates.clear()
        async with consuming(r):
            # Handed back by nak, not left to the 30 s ack wait.
            await until("served after the restart", lambda: len(r.served) == 3, timeout=5.0)
        assert r.served == [f"entity-b:{n}" for n in range(3)]
