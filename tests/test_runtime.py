"""The actor runtime against a real nats-server: ask/tell, crashes, restarts, bad input, drain."""

from __future__ import annotations

import asyncio
import dataclasses
import errno
import sqlite3
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import nats
import pytest
from nacl.signing import SigningKey

import protocol
from entityd.actor import Actor
from entityd.bus import barrier
from entityd.config import RuntimeSection
from entityd.errors import RemoteError, RestartBudgetExceeded, Unsendable, disk_full
from entityd.runtime import Runtime, RuntimeState
from entityd.supervisor import ActorState
from entityd.transport import Transport
from protocol import Envelope, Keyring, ReplayGuard
from tests.helpers import NatsServer, poll, running_actors

ENTITY = "entity-a"


@protocol.kind("test_echo")
@dataclasses.dataclass(frozen=True)
class Echo:
    text: str


@protocol.kind("test_crash")
@dataclasses.dataclass(frozen=True)
class Crash:
    pass


@protocol.kind("test_block")
@dataclasses.dataclass(frozen=True)
class Block:
    pass


@protocol.kind("test_ping")
@dataclasses.dataclass(frozen=True)
class Ping:
    pass


class Seen(list[str]):
    """What the echo actor received, with a way to wait for it."""

    def __init__(self) -> None:
        super().__init__()
        self.changed = asyncio.Condition()

    async def add(self, text: str) -> None:
        async with self.changed:
            self.append(text)
            self.changed.notify_all()

    async def wait_for(self, predicate: object, timeout: float = 5.0) -> None:
        async with asyncio.timeout(timeout), self.changed:
            await self.changed.wait_for(predicate)  # type: ignore[arg-type]


class EchoActor(Actor):
    name = "echo"
    instances = 0

    entered = asyncio.Event()  # replaced per test by the rig

    def __init__(self, seen: Seen, release: asyncio.Event | None = None) -> None:
        EchoActor.instances += 1
        self.seen = seen
        self.release = release

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case Echo(text) if text.startswith("grow:"):
                return Echo("x" * int(text.removeprefix("grow:")))
            case Echo("full"):  # a store's write refused, wrapped as a library would
                try:
                    raise sqlite3.OperationalError("database or disk is full")
                except sqlite3.Error as exc:
                    raise RuntimeError("the store failed") from exc
            case Echo("unsendable"):
                await self.ctx.emit("said", text="\ud800")  # not sent, logged
                return Echo("\udfff")
            case Echo(text):
                await self.seen.add(text)
                return Echo(text.upper())
            case Crash():
                raise RuntimeError("asked to crash")
            case Block():
                assert self.release is not None
                EchoActor.entered.set()
                await self.release.wait()
                return None
        return None


class RelayActor(Actor):
    """Asks echo on behalf of its caller: actor-to-actor ask through the bus."""

    name = "relay"

    async def handle(self, envelope: Envelope) -> object | None:
        if isinstance(envelope.message, Ping):
            return Echo("pong")  # answered without echo: shows the relay itself is serving
        reply = await self.ctx.ask(f"{ENTITY}/echo", envelope.message)
        await self.ctx.tell(f"{ENTITY}/echo", Echo("told:" + envelope.message.text))
        return reply


@dataclasses.dataclass
class Rig:
    runtime: Runtime
    client: Transport
    key: SigningKey
    nc: nats.NATS
    seen: Seen
    release: asyncio.Event

    async def ask(self, actor: str, message: object, timeout: float = 5.0) -> object:
        env = await self.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/{actor}", message, timeout)
        return env.message


async def _connect(url: str) -> nats.NATS:
    return await nats.connect(url, inbox_prefix=f"_i.{ENTITY}", max_reconnect_attempts=-1)


@pytest.fixture(autouse=True)
def fresh_entered() -> None:
    EchoActor.entered = asyncio.Event()


@pytest.fixture
async def rig(nats_server: NatsServer, request: pytest.FixtureRequest) -> AsyncIterator[Rig]:
    settings: RuntimeSection = getattr(request, "param", RuntimeSection(backoff_initial=0.01))
    seen = Seen()
    release = asyncio.Event()
    actors = {"echo": lambda: EchoActor(seen, release), "relay": RelayActor}
    async with running_actors(nats_server.url, ENTITY, actors, settings=settings) as running:
        try:
            yield Rig(running.runtime, running.client, running.key, running.client_nc, seen,
                      release)
        finally:
            release.set()  # before the runtime drains: a blocked handler must finish


async def test_ask_round_trip_through_nats(rig: Rig) -> None:
    assert await rig.ask("echo", Echo("hello")) == Echo("HELLO")
    assert rig.seen == ["hello"]


async def refused_and_serving(rig: Rig, message: Echo, code: str, says: str) -> str:
    """Asking echo `message` is refused with `code` saying `says`; echo answers the next
    ask and never restarted. What the refusal said."""
    with pytest.raises(RemoteError) as info:
        await rig.ask("echo", message)
    assert info.value.code == code, info.value
    assert says in info.value.message, info.value
    assert await rig.ask("echo", Echo("still here")) == Echo("STILL HERE")
    echo = next(a for a in rig.runtime.actors() if a.name == "echo")
    assert echo.restarts == 0
    return info.value.message


async def test_an_answer_too_large_to_open_is_an_error_and_the_actor_serves_on(
        rig: Rig) -> None:
    """An actor's answer larger than an envelope may be goes as an `error` saying so (no
    receiver would open it): the asker gets a RemoteError (an EntitydError, which callers
    handle) instead of a protocol failure of its own, and the actor keeps serving."""
    said = await refused_and_serving(rig, Echo(f"grow:{protocol.MAX_WIRE_BYTES}"), "too_large",
                                     "the answer to test_echo would be")
    assert "protocol.max_message_bytes" in said


async def test_what_the_wire_cannot_carry_is_an_error_to_its_sender_never_a_crash(
        rig: Rig) -> None:
    """An integer past 64 bits or a lone surrogate cannot be packed: asking or telling
    with one raises Unsendable (an EntitydError) and sends nothing; an actor's answer or
    event holding one becomes a `bad_payload` error, or is not sent, and the actor serves
    on."""
    for message in (Echo("\ud800"), Echo(2**64)):  # type: ignore[arg-type]
        with pytest.raises(Unsendable, match="cannot be encoded"):
            await rig.ask("echo", message)
        with pytest.raises(Unsendable):
            await rig.client.tell(f"{ENTITY}/ctl", f"{ENTITY}/echo", message)
    await refused_and_serving(rig, Echo("unsendable"), "bad_payload",
                              "a string that is not Unicode text")
    assert rig.seen == ["still here"]


async def test_a_request_that_meets_a_full_disk_is_refused_and_no_crash(rig: Rig) -> None:
    """A full disk is not a bug of the actor's: the asker is told (`unavailable`, the disk
    is full), the actor serves on and no restart is counted."""
    for _ in range(3):
        await refused_and_serving(rig, Echo("full"), "unavailable",
                                  "disk is full (database or disk is full)")


class Wrapped(Exception):
    """As sqlalchemy wraps a driver's error: the original in `orig`, not the cause."""

    def __init__(self, orig: BaseException) -> None:
        super().__init__(f"(wrapped) {orig}")
        self.orig = orig


@pytest.mark.parametrize("exc", [
    OSError(errno.ENOSPC, "No space left on device"),
    OSError(errno.EDQUOT, "Disk quota exceeded"),
    ExceptionGroup("g", [ValueError("x"), OSError(errno.ENOSPC, "No space left on device")]),
    sqlite3.OperationalError("disk I/O error"),
    Wrapped(sqlite3.OperationalError("database or disk is full")),
])
def test_what_says_the_disk_is_full(exc: BaseException) -> None:
    assert disk_full(exc)


@pytest.mark.parametrize("exc", [
    OSError(errno.EACCES, "Permission denied"), sqlite3.OperationalError("no such table: t"),
    RuntimeError("bug"),
])
def test_what_does_not(exc: BaseException) -> None:
    assert disk_full(exc) is None


async def test_actor_asks_and_tells_another_actor(rig: Rig) -> None:
    assert await rig.ask("relay", Echo("via relay")) == Echo("VIA RELAY")
    await rig.seen.wait_for(lambda: "told:via relay" in rig.seen)
    assert rig.seen[0] == "via relay"


async def test_tell_is_delivered_in_order(rig: Rig) -> None:
    for i in range(50):
        await rig.client.tell(f"{ENTITY}/ctl", f"{ENTITY}/echo", Echo(str(i)))
    await rig.seen.wait_for(lambda: len(rig.seen) >= 50)
    assert rig.seen == [str(i) for i in range(50)]


async def test_crashing_handler_is_restarted_and_serves_next(rig: Rig) -> None:
    events = await rig.nc.subscribe(f"fed.evt.{ENTITY}.runtime.>")
    await barrier(rig.nc)
    before = EchoActor.instances
    with pytest.raises(RemoteError) as crashed:
        await rig.ask("echo", Crash())
    assert crashed.value.code == "actor_crashed"
    assert await rig.ask("echo", Echo("after")) == Echo("AFTER")
    assert EchoActor.instances == before + 1
    child = rig.runtime.supervisor.actors["echo"]
    assert child.restarts == 1 and child.state is ActorState.RUNNING

    keyring = Keyring()
    keyring.add(bytes(rig.key.verify_key), ENTITY)
    guard = ReplayGuard()
    types = []
    async with asyncio.timeout(5):
        while "actor_restarted" not in types:
            msg = await events.next_msg(timeout=5)
            env = protocol.open(msg.data, subject=msg.subject, local="observer", keyring=keyring,
                                replay=guard)
            # start() returns once actors serve; their actor_started may still be in flight
            if env.message.data["actor"] == "echo":
                types.append(env.message.type)
    assert types[-2:] == ["actor_crashed", "actor_restarted"]
    assert "actor_crashed" not in types[:-2]


async def test_crash_loop_past_budget_fails_the_runtime(nats_server: NatsServer) -> None:
    key = SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY)
    nc = await _connect(nats_server.url)
    transport = Transport(nc, entity=ENTITY, key=key, keyring=keyring)
    runtime = Runtime(transport, RuntimeSection(restart_budget=2, backoff_initial=0.01))
    seen = Seen()
    runtime.add("echo", lambda: EchoActor(seen))
    with pytest.raises(ExceptionGroup) as failed:
        async with asyncio.TaskGroup() as tg:
            await runtime.start(tg)
            for _ in range(5):
                await transport.tell(f"{ENTITY}/ctl", f"{ENTITY}/echo", Crash())
            await asyncio.sleep(30)  # the failure cancels this
    assert failed.group_contains(RestartBudgetExceeded)
    assert runtime.supervisor.actors["echo"].state is ActorState.FAILED
    await nc.close()


async def test_malformed_message_is_dropped_and_actor_keeps_serving(rig: Rig) -> None:
    subject = f"loc.{ENTITY}.echo.test_echo"
    garbage = [b"", b"\x00", b"not msgpack at all", msgpack.packb([1, b"x", b"y", b"z"]),
               b"\xff" * 2000]
    for data in garbage:
        await rig.nc.publish(subject, data)
    # A request with a bad signature gets a clear refusal, not silence.
    wire, _ = protocol.seal(rig.key, src=f"{ENTITY}/ctl", dst=f"{ENTITY}/echo", subj=subject,
                            message=Echo("x"))
    tampered = wire[:-1] + bytes([wire[-1] ^ 1])
    reply = await rig.nc.request(subject, tampered, timeout=5)
    keyring = Keyring()
    keyring.add(bytes(rig.key.verify_key), ENTITY)
    refusal = protocol.open(reply.data, subject=reply.subject, local=f"{ENTITY}/ctl",
                            keyring=keyring, replay=ReplayGuard())
    assert refusal.message == protocol.Error("bad_signature", refusal.message.message)
    assert await rig.ask("echo", Echo("still here")) == Echo("STILL HERE")
    assert rig.seen == ["still here"]
    assert rig.runtime.rejected["malformed"] >= 4
    assert rig.runtime.rejected["bad_signature"] == 1
    assert rig.runtime.supervisor.actors["echo"].restarts == 0


async def test_replayed_request_is_refused(rig: Rig) -> None:
    subject = f"loc.{ENTITY}.echo.test_echo"
    wire, _ = protocol.seal(rig.key, src=f"{ENTITY}/ctl", dst=f"{ENTITY}/echo", subj=subject,
                            message=Echo("once"))
    await rig.nc.publish(subject, wire)
    await rig.nc.publish(subject, wire)
    assert await rig.ask("echo", Echo("sync")) == Echo("SYNC")
    assert rig.seen == ["once", "sync"]
    assert rig.runtime.rejected["replayed"] == 1


async def test_unknown_key_is_refused_with_reason(rig: Rig) -> None:
    stranger = Transport(rig.nc, entity=ENTITY, key=SigningKey.generate(),
                         keyring=rig.client.keyring)
    with pytest.raises(RemoteError) as refused:
        await stranger.ask(f"{ENTITY}/ctl", f"{ENTITY}/echo", Echo("let me in"), 5)
    assert refused.value.code == "unknown_key"
    assert rig.seen == []


@pytest.mark.parametrize(
    "rig", [RuntimeSection(queue_size=4, backoff_initial=0.01)], indirect=True
)
async def test_slow_handler_never_blocks_delivery_and_full_queue_refuses(rig: Rig) -> None:
    blocked = asyncio.ensure_future(rig.ask("echo", Block(), timeout=10))
    await EchoActor.entered.wait()  # the actor is now inside the blocking handler
    for i in range(4):
        await rig.client.tell(f"{ENTITY}/ctl", f"{ENTITY}/echo", Echo(f"queued {i}"))
    with pytest.raises(RemoteError) as refused:
        await rig.ask("echo", Echo("one too many"), timeout=5)
    assert refused.value.code == "overloaded"
    # The relay actor is unaffected by echo's full queue: it still answers, not restarted.
    assert await rig.ask("relay", Ping()) == Echo("pong")
    for name in ("relay", "echo"):
        child = rig.runtime.supervisor.actors[name]
        assert (child.state, child.restarts) == (ActorState.RUNNING, 0), name
    rig.release.set()
    assert await blocked == protocol.Ack()
    await rig.seen.wait_for(lambda: len(rig.seen) >= 4)
    assert rig.seen == [f"queued {i}" for i in range(4)]


async def test_stop_drains_queued_work(nats_server: NatsServer, tmp_path: Path) -> None:
    key = SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY)
    nc = await _connect(nats_server.url)
    transport = Transport(nc, entity=ENTITY, key=key, keyring=keyring)
    runtime = Runtime(transport, RuntimeSection())
    seen = Seen()
    release = asyncio.Event()
    runtime.add("echo", lambda: EchoActor(seen, release))
    async with asyncio.TaskGroup() as tg:
        await runtime.start(tg)
        await transport.tell(f"{ENTITY}/ctl", f"{ENTITY}/echo", Block())
        for i in range(20):
            await transport.tell(f"{ENTITY}/ctl", f"{ENTITY}/echo", Echo(str(i)))
        echo = runtime.supervisor.actors["echo"]
        await poll(lambda: EchoActor.entered.is_set() and echo.mailbox.pending() == 20,
                   timeout=5, every=0.005, what="echo blocked with 20 waiting")
        stopping = asyncio.ensure_future(runtime.stop())
        await poll(lambda: runtime.state is RuntimeState.STOPPING, timeout=5, every=0.005,
                   what="the runtime stopping")
        release.set()
        await stopping
    assert seen == [str(i) for i in range(20)]
    assert runtime.supervisor.actors["echo"].state is ActorState.STOPPED
    await nc.close()


@pytest.mark.parametrize(
    "rig", [RuntimeSection(queue_size=16, backoff_initial=0.01)], indirect=True
)
async def test_a_burst_past_the_mailbox_is_delivered_in_order(rig: Rig) -> None:
    """Batches verify on two threads at once, yet the actor sees arrival order; a burst
    ten times the mailbox waits for room instead of being refused; a replay inside the
    burst is caught and a forgery in it is refused, without disturbing the rest."""
    subject = f"loc.{ENTITY}.echo.test_echo"
    sent = []
    replayed = b""
    for i in range(160):
        wire, _ = protocol.seal(rig.key, src=f"{ENTITY}/ctl", dst=f"{ENTITY}/echo",
                                subj=subject, message=Echo(str(i)))
        await rig.nc.publish(subject, wire)
        sent.append(str(i))
        if i == 50:
            replayed = wire
        if i == 100:
            await rig.nc.publish(subject, replayed)
            await rig.nc.publish(subject, wire[:-1] + bytes([wire[-1] ^ 1]))
    await rig.seen.wait_for(lambda: len(rig.seen) >= len(sent))
    assert rig.seen == sent
    assert rig.runtime.rejected == {"replayed": 1, "bad_signature": 1}
