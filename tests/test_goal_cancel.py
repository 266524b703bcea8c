"""Cancelling a goal (`goal_cancel`, `entityctl cancel`) against a running daemon driven
by the scripted model (a scripted OpenAI-compatible server on loopback, not a model),
with the real sandbox: a running turn stops mid-way (its shell command killed, no model
call after the cancel, its answer `stopped` "cancelled"), a queued goal cancelled never
starts, a cancelled goal is not run again after a SIGKILL and a restart, and whoever may
not cancel a goal (another local actor, an actor its goal does not notify, a key the
entity does not know, a forged or finished task id, a second cancel) is refused with the
reason."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from actors.llm import Reply, ScriptedLLMServer, ScriptedToolCall
from actors.messages import Goal, GoalAccepted, GoalCancel, GoalCancelled
from entityd import config as config_mod
from entityd.client import EntityClient
from entityd.errors import RemoteError
from entityd.transport import Transport
from protocol import Envelope, Keyring
from tests.helpers import DaemonProc, poll
from tests.test_agent_e2e import entityctl, make_entity_config

pytestmark = pytest.mark.timeout(180)

SLEEP_S = 300  # the LONG goal's shell command: far longer than any test


def first_user(request: dict[str, Any]) -> str:
    users = [m for m in request.get("messages") or [] if m.get("role") == "user"]
    return str(users[0].get("content")) if users else ""


def model(request: dict[str, Any]) -> Reply:
    """LONG-<mark>: two recalls, then a shell command that sleeps (marked, to find its
    process); anything else is answered at once."""
    goal = first_user(request)
    if not request.get("tools"):
        return Reply(content="[]")  # the lessons
    if "LONG-" in goal:
        mark = goal.split("LONG-", 1)[1].split()[0]
        done = sum(1 for m in request["messages"] if m.get("role") == "tool")
        if done < 2:
            return Reply(tool_calls=[ScriptedToolCall("recall", {"query": f"step {done}"})])
        return Reply(tool_calls=[ScriptedToolCall(
            "shell", {"command": f"sleep {SLEEP_S} && echo {mark}"})])
    return Reply(content="ok: " + goal[:100])


def sleeping(mark: str) -> bool:
    """Whether the LONG goal's command (its shell, with the mark) runs on this host."""
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        try:
            cmdline = (proc / "cmdline").read_bytes()
        except OSError:
            continue
        if mark.encode() in cmdline and b"sleep" in cmdline:
            return True
    return False


@dataclass
class Watch:
    """The entity's events as they come, for the test to wait on."""

    seen: list[Envelope] = field(default_factory=list)
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)

    async def follow(self, events: AsyncIterator[Envelope]) -> None:
        async for event in events:
            async with self.changed:
                self.seen.append(event)
                self.changed.notify_all()

    async def wait(self, check: Callable[[Envelope], bool], timeout: float = 60.0,
                   what: str = "an event") -> Envelope:
        async with asyncio.timeout(timeout):
            async with self.changed:
                while True:
                    found = next((e for e in self.seen if check(e)), None)
                    if found is not None:
                        return found
                    await self.changed.wait()
        raise AssertionError(what)  # unreachable: the timeout raises

    async def answer(self, task_id: str, timeout: float = 60.0) -> dict[str, Any]:
        event = await self.wait(lambda e: e.message.type == "answer"
                                and e.message.data.get("task_id") == task_id, timeout)
        data: dict[str, Any] = event.message.data
        return data

    def of(self, task_id: str, typ: str) -> list[dict[str, Any]]:
        return [e.message.data for e in self.seen
                if e.message.type == typ and e.message.data.get("task_id") == task_id]


@dataclass
class Running:
    config: Path
    daemon: DaemonProc
    client: EntityClient
    watch: Watch
    llm: ScriptedLLMServer

    @property
    def name(self) -> str:
        return self.client.config.name

    async def give(self, text: str, task_id: str, notify: str = "") -> GoalAccepted:
        accepted: GoalAccepted = await self.client.ask(
            "orchestrator", Goal(text, task_id, notify=notify), 10.0)
        return accepted

    async def cancel_as(self, actor: str, task_id: str) -> Any:
        """goal_cancel signed with the entity's own key, as `<entity>/<actor>` (what any
        actor of the daemon could send)."""
        transport = self.client._transport
        assert transport is not None
        reply = await transport.ask(f"{self.name}/{actor}", f"{self.name}/orchestrator",
                                    GoalCancel(task_id, "a test"), 10.0)
        return reply.message

    def requests_with(self, text: str, since: int = 0) -> list[Any]:
        return [b for b in self.llm.bodies[since:] if text in json.dumps(b)]


@asynccontextmanager
async def running(tmp_path: Path, llm: ScriptedLLMServer) -> AsyncIterator[Running]:
    config = make_entity_config(tmp_path, "entity-a", llm.base_url)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        await asyncio.to_thread(daemon.wait_log, '"entityd_ready"', 60)
        async with EntityClient(config_mod.load(config)) as client:
            async with client.events() as events, asyncio.TaskGroup() as tg:
                watch = Watch()
                follower = tg.create_task(watch.follow(events))
                try:
                    yield Running(config, daemon, client, watch, llm)
                finally:
                    follower.cancel()
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.signal_stop()
            daemon.wait_stopped(20)


async def test_a_running_turn_and_a_queued_goal_are_cancelled(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex[:12]
    long_id, web_id, peer_id = "long-" + mark, "web-" + mark, "peer-" + mark
    async with ScriptedLLMServer(model) as llm, running(tmp_path, llm) as entity:
        name = entity.name
        await entity.give(f"LONG-{mark} work for a while", long_id)
        await entity.give(f"QUEUED for web {mark}", web_id, notify=f"{name}/web")
        await entity.give(f"QUEUED for peer {mark}", peer_id, notify=f"{name}/peer")
        await poll(lambda: sleeping(mark), timeout=60, what="the LONG goal's shell command")
        before = len(llm.bodies)
        assert len(entity.requests_with(f"LONG-{mark}")) == 3  # two recalls, then the shell

        # Refused: an actor that is neither entityctl nor the one the goal notifies, a
        # goal of someone else, an unknown id, a key the entity does not know.
        for actor, task_id in (("peer", web_id), ("web", peer_id), ("coder", long_id),
                               ("web", long_id), ("tool", web_id)):
            with pytest.raises(RemoteError) as no:
                await entity.cancel_as(actor, task_id)
            assert no.value.code == "not_allowed", (actor, task_id, no.value)
        with pytest.raises(RemoteError) as no:
            await entity.cancel_as("web", "forged-" + mark)
        assert no.value.code == "not_found"
        stranger = SigningKey.generate()
        transport = entity.client._transport
        assert transport is not None
        keyring = Keyring()
        keyring.add(entity.client.entity_public, name)
        outsider = Transport(transport.nc, entity=name, key=stranger, keyring=keyring)
        with pytest.raises(RemoteError) as no:
            await outsider.ask(f"{name}/ctl", f"{name}/orchestrator", GoalCancel(long_id), 10.0)
        assert no.value.code == "unknown_key"
        assert sleeping(mark) and len(llm.bodies) == before  # none of that stopped anything

        # The goal's own notified actor cancels it while it is queued: it never starts.
        cancelled = await entity.cancel_as("web", web_id)
        assert cancelled == GoalCancelled(web_id, "queued")
        answer = await entity.watch.answer(web_id)
        assert (answer["ok"], answer["stopped"]) == (False, "cancelled")
        with pytest.raises(RemoteError) as no:  # twice
            await entity.cancel_as("web", web_id)
        assert no.value.code == "not_found" and "cancelled" in no.value.message

        # entityctl stops the running turn: its shell command is killed, no model call
        # follows, its answer says so.
        code, out, err = await entityctl(entity.config, "cancel", long_id, "--reason",
                                         "not needed")
        assert code == 0, err
        assert f"task {long_id} cancelled: its turn was stopped" in out
        answer = await entity.watch.answer(long_id, 30)
        assert (answer["ok"], answer["stopped"]) == (False, "cancelled"), answer
        assert "not needed" in answer["text"] and answer["steps"] > 0, answer
        await poll(lambda: not sleeping(mark), timeout=10, what="the shell command killed")
        killed = await entity.watch.wait(lambda e: e.message.type == "call"
                                         and e.message.data.get("cancelled") is True)
        assert killed.message.data["tool"] == "shell"

        code, _, err = await entityctl(entity.config, "cancel", long_id)
        assert code == 3 and "already cancelled" in err, err
        code, _, err = await entityctl(entity.config, "cancel", "nosuch-" + mark)
        assert code == 3 and "not_found" in err and "no goal" in err, err
        with pytest.raises(RemoteError) as no:  # the same goal given again: the cancel stands
            await entity.give(f"LONG-{mark} again", long_id)
        assert no.value.code == "not_allowed"

        # The goal queued behind them runs, and is answered; then it cannot be cancelled.
        answer = await entity.watch.answer(peer_id)
        assert answer["ok"], answer
        code, _, err = await entityctl(entity.config, "cancel", peer_id)
        assert code == 3 and "already answered" in err, err

        assert not entity.watch.of(web_id, "turn_started")
        assert not entity.requests_with(f"QUEUED for web {mark}")
        assert not entity.requests_with(f"LONG-{mark}", since=before), "a call after the cancel"
        assert entity.requests_with(f"QUEUED for peer {mark}", since=before)


async def test_a_cancelled_goal_is_not_run_again_after_a_restart(tmp_path: Path) -> None:
    mark = uuid.uuid4().hex[:12]
    # A delegated task (dlg-) is run again after a restart even if its turn was cut
    # short: a cancelled one must not be.
    long_id, queued_id = "dlg-long-" + mark, "dlg-queued-" + mark
    goals = tmp_path / "entity-a" / "goals.sqlite3"

    def stored() -> list[str]:
        with sqlite3.connect(goals) as db:
            return [row[0] for row in db.execute("SELECT task_id FROM goals")]

    async with ScriptedLLMServer(model) as llm:
        async with running(tmp_path, llm) as entity:
            await entity.give(f"LONG-{mark} work", long_id)
            await entity.give(f"QUEUED {mark}", queued_id)
            await poll(lambda: sleeping(mark), timeout=60, what="the shell command")
            assert sorted(stored()) == sorted([long_id, queued_id])
            for task_id, said in ((queued_id, "before it started"),
                                  (long_id, "its turn was stopped")):
                code, out, err = await entityctl(entity.config, "cancel", task_id)
                assert code == 0 and f"task {task_id} cancelled" in out and said in out, err
                answer = await entity.watch.answer(task_id, 30)
                assert answer["stopped"] == "cancelled", answer
            await poll(lambda: not stored(), timeout=10, what="the goals answered on disk")
            entity.daemon.kill()
            entity.daemon.wait_stopped(10)
        calls = len(llm.bodies)
        readies = entity.daemon.log().count('"entityd_ready"')
        entity.daemon.start()
        await asyncio.to_thread(entity.daemon.wait_log, '"entityd_ready"', 60, readies + 1)
        async with EntityClient(config_mod.load(entity.config)) as client:
            async with client.events() as events:
                accepted = await client.ask("orchestrator", Goal(f"after {mark}", "after"), 10.0)
                async with asyncio.timeout(60):
                    async for event in events:
                        if (event.message.type == "answer"
                                and event.message.data.get("task_id") == accepted.task_id):
                            break
        later = llm.bodies[calls:]
        assert later and not [b for b in later if mark in json.dumps(b)
                              and f"after {mark}" not in json.dumps(b)], later
        entity.daemon.signal_stop()
        entity.daemon.wait_stopped(20)


async def test_an_a2a_cancel_stops_the_tasks_turn(tmp_path: Path) -> None:
    """a2a-sdk's own client cancels a task whose turn runs a shell command: the turn stops
    (the command killed, no model call after it, its answer `stopped` "cancelled"), the
    task is CANCELED, and the next task runs."""
    from a2a.types import CancelTaskRequest, GetTaskRequest, SendMessageConfiguration, TaskState

    from tests.test_a2a_server import CLIENT, KEY, a2a_client, a2a_config, make, message
    from tests.test_a2a_server import scripted_model as model_thread

    mark = uuid.uuid4().hex[:12]
    calls: list[dict[str, Any]] = []

    def counted(request: dict[str, Any]) -> Reply:
        calls.append(request)
        return model(request)

    with model_thread(counted) as base_url:
        entity = make(tmp_path, "entity-a", base_url, a2a_config({CLIENT: KEY}))
        entity.start()
        try:
            config = config_mod.load(entity.data / config_mod.CONFIG_NAME)
            async with EntityClient(config) as ctl, ctl.events() as events, \
                    asyncio.TaskGroup() as tg:
                watch = Watch()
                follower = tg.create_task(watch.follow(events))
                async with a2a_client(entity.url, streaming=False) as client:
                    request = message(f"LONG-{mark} work for a while")
                    request.configuration.CopyFrom(
                        SendMessageConfiguration(return_immediately=True))
                    task = [e async for e in client.send_message(request)][-1].task
                    await poll(lambda: sleeping(mark), timeout=60, what="the shell command")
                    before = len(calls)
                    cancelled = await client.cancel_task(CancelTaskRequest(id=task.id))
                    assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
                    goal = f"dlg-a2a-{CLIENT}.{task.id}"
                    answer = await watch.answer(goal, 30)
                    assert (answer["ok"], answer["stopped"]) == (False, "cancelled"), answer
                    await poll(lambda: not sleeping(mark), timeout=10,
                               what="the shell command killed")
                    # The next task runs to its end; the cancelled one called no model since.
                    final = [e async for e in client.send_message(message("and then"))][-1]
                    assert final.task.status.state == TaskState.TASK_STATE_COMPLETED, final
                    got = await client.get_task(GetTaskRequest(id=task.id))
                    assert got.status.state == TaskState.TASK_STATE_CANCELED
                later = [c for c in calls[before:] if f"LONG-{mark}" in json.dumps(c)]
                assert not later and len(calls) > before, later
                follower.cancel()
        finally:
            if entity.daemon.proc is not None and entity.daemon.proc.poll() is None:
                entity.daemon.signal_stop()
                entity.daemon.wait_stopped(20)


async def test_an_a2a_cancel_right_after_the_send_leaves_no_turn_running(
    tmp_path: Path,
) -> None:
    """A cancel that comes while the task's goal is still on its way to the orchestrator
    (the client cancels at once) must not let the goal run on: each task ends CANCELED
    and none of their goals calls the model after its cancel returned."""
    from a2a.types import CancelTaskRequest, SendMessageConfiguration, TaskState

    from tests.test_a2a_server import CLIENT, KEY, a2a_client, a2a_config, make, message
    from tests.test_a2a_server import scripted_model as model_thread

    calls: list[dict[str, Any]] = []

    def counted(request: dict[str, Any]) -> Reply:
        calls.append(request)
        return model(request)

    marks = [uuid.uuid4().hex[:12] for _ in range(6)]
    with model_thread(counted) as base_url:
        entity = make(tmp_path, "entity-a", base_url, a2a_config({CLIENT: KEY}))
        entity.start()
        try:
            cancelled_at: dict[str, int] = {}
            async with a2a_client(entity.url, streaming=False) as client:
                for mark in marks:
                    request = message(f"LONG-{mark} work for a while")
                    request.configuration.CopyFrom(
                        SendMessageConfiguration(return_immediately=True))
                    task = [e async for e in client.send_message(request)][-1].task
                    done = await client.cancel_task(CancelTaskRequest(id=task.id))
                    assert done.status.state == TaskState.TASK_STATE_CANCELED
                    cancelled_at[mark] = len(calls)
                # Time for a goal that slipped past its cancel to reach the model.
                final = [e async for e in client.send_message(message("and then"))][-1]
                assert final.task.status.state == TaskState.TASK_STATE_COMPLETED, final
                await asyncio.sleep(2.0)
            for mark, at in cancelled_at.items():
                later = [c for c in calls[at:] if f"LONG-{mark}" in json.dumps(c)]
                assert not later, f"LONG-{mark} called the model after its cancel"
                assert not sleeping(mark)
        finally:
            if entity.daemon.proc is not None and entity.daemon.proc.poll() is None:
                entity.daemon.signal_stop()
                entity.daemon.wait_stopped(20)
