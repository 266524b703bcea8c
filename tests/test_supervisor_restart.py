"""Restarts asked for (Runtime.restart) and replies given later (entityd.actor.Later),
with real actors on a real nats-server."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from nats.aio.subscription import Subscription

import protocol
from actors.health import HealthActor
from entityd.actor import Actor, Later
from entityd.config import RuntimeSection
from entityd.errors import RemoteError
from entityd.runtime import Runtime, RuntimeState
from entityd.supervisor import ActorState
from protocol import ActorStatus, Envelope, Event, ReplayGuard, Status, StatusGet
from tests.helpers import NatsServer, RunningActors, poll, running_actors

ENTITY = "entity-a"


@protocol.kind("test_sr_who")
@dataclasses.dataclass(frozen=True)
class Who:
    """Asks which instance of the actor answers."""


@protocol.kind("test_sr_serial")
@dataclasses.dataclass(frozen=True)
class Serial:
    number: int


@protocol.kind("test_sr_wait")
@dataclasses.dataclass(frozen=True)
class WaitForGate:
    """Answered later: once the gate opens, with `text` upper-cased."""

    text: str


@protocol.kind("test_sr_open")
@dataclasses.dataclass(frozen=True)
class OpenGate:
    pass


@protocol.kind("test_sr_done")
@dataclasses.dataclass(frozen=True)
class Done:
    text: str


@protocol.kind("test_sr_later_none")
@dataclasses.dataclass(frozen=True)
class LaterNothing:
    pass


@protocol.kind("test_sr_later_fail")
@dataclasses.dataclass(frozen=True)
class LaterFail:
    pass


@protocol.kind("test_sr_crash")
@dataclasses.dataclass(frozen=True)
class CrashNow:
    pass


class Book:
    """What happened to the instances of one supervised actor."""

    def __init__(self) -> None:
        self.made = 0
        self.stopped: list[int] = []
        self.failed: list[int] = []
        self.gate = asyncio.Event()
        self.waiting = asyncio.Event()  # a Later's work has started and waits at the gate


class Worker(Actor):
    name = "worker"

    def __init__(self, book: Book) -> None:
        book.made += 1
        self.serial = book.made
        self.book = book

    async def on_stop(self) -> None:
        self.book.stopped.append(self.serial)

    async def on_failure(self, exc: BaseException) -> None:
        self.book.failed.append(self.serial)

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case Who():
                return Serial(self.serial)
            case WaitForGate(text):
                return Later(self._at_gate(text))
            case OpenGate():
                self.book.gate.set()
                return Done("opened")
            case LaterNothing():
                return Later(self._nothing())
            case LaterFail():
                return Later(self._fail())
            case CrashNow():
                raise RuntimeError("asked to crash")
        return None

    async def _at_gate(self, text: str) -> object:
        self.book.waiting.set()
        await self.book.gate.wait()
        return Done(text.upper())

    async def _nothing(self) -> None:
        await asyncio.sleep(0)

    async def _fail(self) -> object:
        await asyncio.sleep(0)
        raise RuntimeError("the later work went wrong")


@dataclasses.dataclass
class Rig:
    running: RunningActors
    books: dict[str, Book]
    guard: ReplayGuard = dataclasses.field(default_factory=ReplayGuard)
    events: list[Event] = dataclasses.field(default_factory=list)

    @property
    def runtime(self) -> Runtime:
        return self.running.runtime

    async def ask(self, actor: str, message: object, timeout: float = 5.0) -> Any:
        env = await self.running.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/{actor}", message,
                                            timeout)
        return env.message

    async def event(self, typ: str, actor: str, timeout: float = 5.0) -> Event:
        """The next runtime event `typ` about `actor` (each is returned once)."""
        subscription = self.running.events
        assert isinstance(subscription, Subscription)
        async with asyncio.timeout(timeout):
            while True:
                for index, event in enumerate(self.events):
                    if event.type == typ and event.data.get("actor") == actor:
                        return self.events.pop(index)
                msg = await subscription.next_msg(timeout=timeout)
                env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                    keyring=self.running.keyring, replay=self.guard)
                self.events.append(env.message)

    def status(self, name: str) -> ActorStatus:
        (found,) = [s for s in self.runtime.actors() if s.name == name]
        return found


@asynccontextmanager
async def started(
    server: NatsServer, names: tuple[str, ...] = ("x", "y"),
    settings: RuntimeSection | None = None,
) -> AsyncIterator[Rig]:
    books = {name: Book() for name in names}
    holder: list[Runtime] = []

    def status() -> Status:
        return Status(ENTITY, "", 0.0, "", holder[0].actors())

    factories: dict[str, Any] = {name: (lambda b=book: Worker(b)) for name, book in books.items()}
    factories["health"] = lambda: HealthActor(status)
    async with running_actors(
        server.url, ENTITY, factories, events=f"fed.evt.{ENTITY}.runtime.>",
        settings=settings or RuntimeSection(backoff_initial=0.01),
    ) as running:
        holder.append(running.runtime)
        rig = Rig(running, books)
        try:
            yield rig
        finally:
            for book in books.values():
                book.gate.set()  # before the runtime drains: no work may wait forever


# -- restarts asked for ---------------------------------------------------------------------------


async def test_restart_replaces_the_actor_with_a_fresh_instance(nats_server: NatsServer) -> None:
    async with started(nats_server) as rig:
        assert await rig.ask("x", Who()) == Serial(1)
        assert rig.runtime.restart(["x"], "operator asked") == ["x"]
        # Sent at once: whatever waits in the mailbox is served by the new instance.
        assert await rig.ask("x", Who()) == Serial(2)
        event = await rig.event("actor_restarted", "x")
        assert event.actor == "runtime"
        assert event.data == {"actor": "x", "restarts": 1, "reason": "operator asked"}
        book = rig.books["x"]
        assert book.stopped == [1]  # the old instance's on_stop ran
        assert book.failed == []
        assert book.made == 2
        # The status a user sees says so, for x only.
        status = await rig.ask("health", StatusGet())
        assert ActorStatus("x", "running", 1) in status.actors
        assert ActorStatus("y", "running", 0) in status.actors
        assert rig.books["y"].made == 1 and rig.books["y"].stopped == []
        assert await rig.ask("y", Who()) == Serial(1)


async def test_asked_restarts_do_not_count_toward_the_crash_budget(
    nats_server: NatsServer,
) -> None:
    settings = RuntimeSection(restart_budget=1, backoff_initial=0.01)
    async with started(nats_server, settings=settings) as rig:
        for round_ in range(1, 4):
            rig.runtime.restart(["x"], f"round {round_}")
            event = await rig.event("actor_restarted", "x")
            assert event.data["reason"] == f"round {round_}"
            assert await rig.ask("x", Who()) == Serial(round_ + 1)
        child = rig.runtime.supervisor.actors["x"]
        assert len(child.crashes) == 0
        # One real crash is within a budget of one only if the three above did not count.
        with pytest.raises(RemoteError) as crashed:
            await rig.ask("x", CrashNow())
        assert crashed.value.code == "actor_crashed"
        event = await rig.event("actor_restarted", "x")
        assert event.data["reason"] == "crash"
        assert await rig.ask("x", Who()) == Serial(5)
        assert rig.status("x") == ActorStatus("x", "running", 4)
        assert len(child.crashes) == 1
        assert rig.books["x"].stopped == [1, 2, 3]  # asked for: on_stop
        assert rig.books["x"].failed == [4]  # crashed: on_failure


async def test_restart_of_no_names_restarts_every_actor(nats_server: NatsServer) -> None:
    async with started(nats_server) as rig:
        restarted = rig.runtime.restart([], "everything")
        assert sorted(restarted) == ["health", "x", "y"]
        for name in ("x", "y", "health"):
            event = await rig.event("actor_restarted", name)
            assert event.data["reason"] == "everything"
            assert rig.status(name) == ActorStatus(name, "running", 1)
        assert await rig.ask("x", Who()) == Serial(2)
        assert await rig.ask("y", Who()) == Serial(2)
        assert rig.books["x"].stopped == [1] and rig.books["y"].stopped == [1]


async def test_restart_of_an_unknown_name_restarts_nothing(nats_server: NatsServer) -> None:
    async with started(nats_server) as rig:
        with pytest.raises(KeyError) as unknown:
            rig.runtime.restart(["x", "nope", "y"], "typo")
        assert unknown.value.args == ("nope",)
        assert await rig.ask("x", Who()) == Serial(1)
        assert await rig.ask("y", Who()) == Serial(1)
        for name in ("x", "y"):
            child = rig.runtime.supervisor.actors[name]
            assert not child.restart_requested.is_set()
            assert child.restarts == 0 and child.restart_reason == ""
            assert rig.books[name].stopped == []


# -- replies given later ----------------------------------------------------------------------


async def test_later_lets_the_actor_take_the_next_message(nats_server: NatsServer) -> None:
    async with started(nats_server) as rig:
        book = rig.books["x"]
        first = asyncio.ensure_future(rig.ask("x", WaitForGate("first"), timeout=10))
        async with asyncio.timeout(5):
            await book.waiting.wait()
        assert not first.done()
        # Only an actor free to take the next message can open the gate the first waits at.
        assert await rig.ask("x", OpenGate()) == Done("opened")
        assert await first == Done("FIRST")
        assert book.made == 1  # nothing crashed or restarted on the way


async def test_later_work_returning_none_answers_with_an_ack(nats_server: NatsServer) -> None:
    async with started(nats_server) as rig:
        assert await rig.ask("x", LaterNothing()) == protocol.Ack()
        assert await rig.ask("x", Who()) == Serial(1)


async def test_later_work_that_raises_answers_actor_crashed_and_restarts(
    nats_server: NatsServer,
) -> None:
    async with started(nats_server) as rig:
        with pytest.raises(RemoteError) as crashed:
            await rig.ask("x", LaterFail())
        assert crashed.value.code == "actor_crashed"
        assert crashed.value.src == f"{ENTITY}/x"
        failure = await rig.event("actor_crashed", "x")
        assert "the later work went wrong" in failure.data["error"]
        event = await rig.event("actor_restarted", "x")
        assert event.data["reason"] == "crash"
        assert await rig.ask("x", Who()) == Serial(2)
        assert rig.books["x"].failed == [1]
        assert rig.status("x") == ActorStatus("x", "running", 1)
        assert len(rig.runtime.supervisor.actors["x"].crashes) == 1
        assert rig.books["y"].made == 1  # one-for-one: y is untouched


async def test_stop_waits_for_later_work_and_its_reply_goes_out(nats_server: NatsServer) -> None:
    async with started(nats_server) as rig:
        book = rig.books["x"]
        first = asyncio.ensure_future(rig.ask("x", WaitForGate("drained"), timeout=10))
        async with asyncio.timeout(5):
            await book.waiting.wait()
        stopping = asyncio.ensure_future(rig.runtime.stop())
        await poll(lambda: rig.runtime.state is RuntimeState.STOPPING, timeout=5,
                   every=0.005, what="the runtime stopping")
        assert not stopping.done()
        book.gate.set()
        await stopping
        assert await first == Done("DRAINED")
        assert rig.runtime.supervisor.actors["x"].state is ActorState.STOPPED
        assert book.stopped == [1]


# -- once bugs, now fixed ------------------------------------------------------------------------


async def test_a_later_crash_answers_the_other_work_in_flight(nats_server: NatsServer) -> None:
    async with started(nats_server) as rig:
        book = rig.books["x"]
        first = asyncio.ensure_future(rig.ask("x", WaitForGate("first"), timeout=2))
        async with asyncio.timeout(5):
            await book.waiting.wait()
        with pytest.raises(RemoteError):
            await rig.ask("x", LaterFail())
        # No caller hangs: the abandoned request is told, not left to time out.
        with pytest.raises(RemoteError):
            await first


async def test_restart_asked_during_crash_backoff_is_one_restart(
    nats_server: NatsServer,
) -> None:
    async with started(nats_server, settings=RuntimeSection(backoff_initial=0.5)) as rig:
        with pytest.raises(RemoteError):
            await rig.ask("x", CrashNow())
        child = rig.runtime.supervisor.actors["x"]
        await poll(lambda: child.state is ActorState.RESTARTING, timeout=0.4,  # in the backoff
                   every=0.005, what="x in its restart backoff")
        rig.runtime.restart(["x"], "operator asked")
        event = await rig.event("actor_restarted", "x")
        assert event.data["reason"] == "crash"
        assert await rig.ask("x", Who()) == Serial(2)
        assert child.restarts == 1
