"""The memory actor through a real nats-server: memories, todos, history, events, bad
requests that get a clear refusal without crashing it, and a restart on the same file."""

from __future__ import annotations

import dataclasses
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nacl.signing import SigningKey

import protocol
from actors.memory import MemoryActor
from actors.messages import (
    History,
    HistoryGet,
    LogAppend,
    MemoryAdd,
    MemoryHits,
    MemoryRef,
    MemorySearch,
    TodoAdd,
    TodoItems,
    TodoList,
    TodoUpdate,
)
from entityd.errors import RemoteError
from entityd.runtime import Runtime
from entityd.transport import Transport
from protocol import Keyring, ReplayGuard
from tests.helpers import NatsServer, running_actors

ENTITY = "entity-a"


@dataclasses.dataclass
class Rig:
    runtime: Runtime
    client: Transport
    keyring: Keyring
    nc: nats.NATS
    events: Any  # the subscription to this entity's memory events

    async def ask(self, message: object, timeout: float = 5.0) -> Any:
        env = await self.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/memory", message, timeout)
        return env.message

    async def refused(self, message: object) -> RemoteError:
        with pytest.raises(RemoteError) as refused:
            await self.ask(message)
        return refused.value

    async def next_event(self, guard: ReplayGuard) -> protocol.Event:
        msg = await self.events.next_msg(timeout=5)
        env = protocol.open(msg.data, subject=msg.subject, local="observer",
                            keyring=self.keyring, replay=guard)
        assert isinstance(env.message, protocol.Event)
        return env.message


@dataclasses.dataclass
class Bus:
    url: str
    key: SigningKey
    keyring: Keyring


@pytest.fixture
def bus(nats_server: NatsServer) -> Bus:
    key = SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY)
    return Bus(nats_server.url, key, keyring)


async def _rig(bus: Bus, path: Path) -> AsyncIterator[Rig]:
    async with running_actors(
        bus.url, ENTITY, {MemoryActor.name: lambda: MemoryActor(path)},
        events=f"fed.evt.{ENTITY}.memory.>", key=bus.key,
    ) as actors:
        yield Rig(actors.runtime, actors.client, actors.keyring, actors.client_nc,
                  actors.events)


@pytest.fixture
async def rig(bus: Bus, tmp_path: Path) -> AsyncIterator[Rig]:
    async for r in _rig(bus, tmp_path / "memory.sqlite3"):
        yield r


async def test_add_and_search_memories(rig: Rig) -> None:
    guard = ReplayGuard()
    fact = await rig.ask(MemoryAdd("fact", "The staging server is called gull", 0.7, "user"))
    assert isinstance(fact, MemoryRef) and not fact.merged
    event = await rig.next_event(guard)
    assert (event.type, event.actor) == ("added", "memory")
    assert event.data == {"kind": "fact", "id": fact.id, "merged": False}

    lesson = await rig.ask(MemoryAdd("lesson", "Check the staging server before a release"))
    again = await rig.ask(MemoryAdd("lesson", "check the staging server before the release!"))
    assert again == MemoryRef(lesson.id, merged=True)
    assert [(await rig.next_event(guard)).data["merged"] for _ in range(2)] == [False, True]

    hits = await rig.ask(MemorySearch("what is the staging server called", 10))
    assert isinstance(hits, MemoryHits)
    assert [h.id for h in hits.hits] == [fact.id, lesson.id]
    top = hits.hits[0]
    assert (top.kind, top.text, top.importance, top.uses) == (
        "fact", "The staging server is called gull", 0.7, 1,
    )
    assert top.score > hits.hits[1].score > 0
    only = await rig.ask(MemorySearch("staging server", 10, ["lesson"]))
    assert [h.id for h in only.hits] == [lesson.id]
    assert (await rig.ask(MemorySearch('a"b OR (', 5))) == MemoryHits([])


async def test_todos_through_the_actor(rig: Rig) -> None:
    guard = ReplayGuard()
    added = await rig.ask(TodoAdd("Write the memory bench", 2))
    assert isinstance(added, TodoItems) and len(added.items) == 1
    todo = added.items[0]
    assert (todo.text, todo.status, todo.priority) == ("Write the memory bench", "open", 2)
    event = await rig.next_event(guard)
    assert (event.type, event.data) == (
        "todo_changed", {"id": todo.id, "status": "open", "priority": 2, "change": "added"},
    )
    other = (await rig.ask(TodoAdd("Read the design"))).items[0]
    await rig.next_event(guard)

    updated = (await rig.ask(TodoUpdate(todo.id, status="done"))).items[0]
    assert updated.status == "done" and updated.updated_at >= todo.updated_at
    assert (await rig.next_event(guard)).data["change"] == "updated"
    assert [t.id for t in (await rig.ask(TodoList())).items] == [other.id]
    assert [t.id for t in (await rig.ask(TodoList(include_done=True))).items] == [
        other.id, todo.id,
    ]
    renamed = (await rig.ask(TodoUpdate(other.id, text="Read DESIGN.md"))).items[0]
    assert (renamed.text, renamed.status) == ("Read DESIGN.md", "open")


async def test_log_and_history(rig: Rig) -> None:
    for i, role in enumerate(["user", "assistant", "tool"]):
        assert await rig.ask(LogAppend("conv-1", role, f"step {i}", {"n": i})) == protocol.Ack()
    await rig.ask(LogAppend("conv-2", "user", "elsewhere"))
    history = await rig.ask(HistoryGet("conv-1", 2))
    assert isinstance(history, History)
    assert [(e.role, e.content) for e in history.entries] == [
        ("assistant", "step 1"), ("tool", "step 2"),
    ]
    everything = await rig.ask(HistoryGet())
    assert [e.conversation for e in everything.entries] == ["conv-1"] * 3 + ["conv-2"]


async def test_bad_requests_are_refused_and_the_actor_keeps_serving(rig: Rig) -> None:
    cases = [
        (MemoryAdd("secret", "x"), "unknown memory kind 'secret'"),
        (MemoryAdd("fact", "   "), "memory text is empty"),
        (MemoryAdd("fact", "x", 3.0), "importance must be within 0..1"),
        (MemorySearch("x", 0), "limit must be at least 1"),
        (MemorySearch("x", 5, ["fact", "nope"]), "unknown memory kind 'nope'"),
        (TodoAdd(""), "todo text is empty"),
        (TodoUpdate(12345, status="done"), "no todo 12345"),
        (TodoUpdate(1), "changes nothing"),
        (LogAppend("", "user", "x"), "conversation is empty"),
        (HistoryGet("", 0), "limit must be at least 1"),
    ]
    todo = (await rig.ask(TodoAdd("real"))).items[0]
    cases.append((TodoUpdate(todo.id, status="finished"), "unknown todo status 'finished'"))
    for message, reason in cases:
        refused = await rig.refused(message)
        assert refused.code == "bad_request", (message, refused)
        assert reason in refused.message, (message, refused.message)
    # A kind the memory does not take never reaches it: the runtime refuses it.
    refused = await rig.refused(protocol.Ping())
    assert refused.code == "unexpected_kind" and "not 'ping'" in refused.message, refused
    assert (await rig.ask(MemoryAdd("fact", "still serving"))).id >= 1
    assert rig.runtime.supervisor.actors["memory"].restarts == 0


async def test_memories_survive_a_runtime_restart(bus: Bus, tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    async for rig in _rig(bus, path):
        ref = await rig.ask(MemoryAdd("fact", "The backup host is called heron"))
        todo = (await rig.ask(TodoAdd("Verify the backups"))).items[0]
    async for rig in _rig(bus, path):
        hits = await rig.ask(MemorySearch("backup host", 5))
        assert [h.id for h in hits.hits] == [ref.id]
        assert [t.id for t in (await rig.ask(TodoList())).items] == [todo.id]
