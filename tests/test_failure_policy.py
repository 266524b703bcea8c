"""One failure policy where actors meet (issue 16, part 2): an agent tool's ask that
fails (busy, restarting, crashed, dead, no reply in time) is an observation for the
model, never a crash of the actor running the turn; a failed on_start says what failed;
accepted goals outlive a stop or a crash."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

import protocol
from actors.agent.toolbox import Tool, Toolbox, schema
from actors.llm import LLM, Reply, ScriptedLLMServer, ScriptedToolCall, TokenBudget, build_llm
from actors.memory import MemoryActor
from actors.messages import (
    Goal,
    GoalAccepted,
    History,
    HistoryGet,
    ToolCall,
    ToolResult,
    ToolSpecs,
    ToolSpecsGet,
)
from actors.orchestrator import OrchestratorActor
from entityd import config as config_mod
from entityd.actor import Actor
from entityd.bus import barrier
from entityd.client import EntityClient
from entityd.config import LlmSection, RuntimeSection
from entityd.errors import (
    ActorDeadError,
    AskTimeout,
    EntitydError,
    RemoteError,
    RestartBudgetExceeded,
)
from entityd.runtime import Runtime
from entityd.supervisor import ActorState
from entityd.transport import Transport
from protocol import Envelope, Event, Keyring, ReplayGuard
from tests.helpers import (
    BIN,
    DaemonProc,
    NatsServer,
    RunningActors,
    child_env,
    nats_connect,
    running_actors,
)
from tests.test_agent_e2e import make_entity_config

pytestmark = pytest.mark.timeout(60)

ENTITY = "entity-a"
SHELL = {"type": "function", "function": {
    "name": "shell", "description": "Run a command.",
    "parameters": schema({"command": "the command"})}}


class StuckTool(Actor):
    """A tool actor whose first instance never finishes a call: the test restarts it."""

    name = "tool"
    accepts = (ToolSpecsGet, ToolCall)

    def __init__(self, calls: list[ToolCall], arrived: asyncio.Event, instance: int) -> None:
        self.calls = calls
        self.arrived = arrived
        self.instance = instance

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case ToolSpecsGet():
                return ToolSpecs([SHELL])
            case ToolCall() as call:
                self.calls.append(call)
                if self.instance == 1:
                    self.arrived.set()
                    await asyncio.Event().wait()  # until the restart cuts it short
                return ToolResult(True, f"ran {call.args.get('command')}")
        raise TypeError(envelope.typ)


class ScriptedSource:
    """The daemon's LLMSource over one scripted-server client, without budgets."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self._budget = TokenBudget(10**9)

    def __call__(self, payer: str = "") -> LLM:
        return self.llm

    def budget(self, payer: str = "") -> TokenBudget:
        return self._budget


async def next_event(running: RunningActors, guard: ReplayGuard, typ: str,
                     timeout: float = 20.0) -> Event:
    subscription = running.events
    assert subscription is not None
    async with asyncio.timeout(timeout):
        while True:
            msg = await subscription.next_msg(timeout=timeout)
            env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                keyring=running.keyring, replay=guard)
            if env.message.type == typ:
                return env.message


async def test_a_tool_actor_restarted_mid_turn_is_an_observation(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    calls: list[ToolCall] = []
    arrived = asyncio.Event()
    instances = iter(range(1, 100))
    script = [
        Reply(tool_calls=[ScriptedToolCall("shell", {"command": "make test"})]),
        Reply(tool_calls=[ScriptedToolCall("shell", {"command": "git status"})]),
        Reply(content="The tool restarted once; git status ran."),
        Reply(content="[]"),  # lessons
    ]
    async with ScriptedLLMServer(script) as server:
        llm = build_llm(LlmSection(provider="scripted", base_url=server.base_url,
                                   max_retries=0), environ={}, workspace=None, budget=None)
        source = ScriptedSource(llm)
        factories: dict[str, Any] = {
            "memory": lambda: MemoryActor(tmp_path / "memory.db"),
            "tool": lambda: StuckTool(calls, arrived, next(instances)),
            "orchestrator": lambda: OrchestratorActor(source, 6),
        }
        async with running_actors(
            nats_server.url, ENTITY, factories, events=f"fed.evt.{ENTITY}.>",
            settings=RuntimeSection(backoff_initial=0.01),
        ) as running:
            guard = ReplayGuard()
            reply = await running.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/orchestrator",
                                             Goal("run the tests", task_id="t1"), 5.0)
            assert isinstance(reply.message, GoalAccepted)
            async with asyncio.timeout(10):
                await arrived.wait()
            assert running.runtime.restart(["tool"], "asked by the test") == ["tool"]
            answer = await next_event(running, guard, "answer")
            statuses = {s.name: s for s in running.runtime.actors()}
            await llm.aclose()  # type: ignore[attr-defined]
        bodies = [request.body["messages"] for request in server.requests]

    assert answer.data["task_id"] == "t1" and answer.data["ok"] is True
    assert answer.data["text"] == "The tool restarted once; git status ran."
    # The model read what happened to the first call, then the second one ran.
    observations = [m["content"] for m in bodies[1] if m["role"] == "tool"]
    assert len(observations) == 1
    assert "shell did not run to the end" in observations[0]
    assert "restarting" in observations[0] and "asked by the test" in observations[0]
    assert [m["content"] for m in bodies[2] if m["role"] == "tool"][1] == "ran git status"
    assert [c.args["command"] for c in calls] == ["make test", "git status"]
    # The orchestrator never crashed; only the tool actor was replaced.
    assert statuses["orchestrator"].restarts == 0
    assert statuses["orchestrator"].state == ActorState.RUNNING.value
    assert statuses["tool"].restarts == 1


async def _raises(exc: EntitydError) -> str:
    raise exc


@pytest.mark.parametrize(("exc", "expected"), [
    (RemoteError("entity-a/tool", "busy", "queue full"), "it is busy"),
    (RemoteError("entity-a/tool", "overloaded", "mailbox full"), "more work queued"),
    (RemoteError("entity-a/tool", "actor_restarted", "tool was restarted"), "restarting"),
    (RemoteError("entity-a/tool", "actor_crashed", "tool failed: KeyError"), "failed on this"),
    (RemoteError("entity-a/tool", "not_trusted", "no"), "shell was refused"),
    (AskTimeout("entity-a/tool", "tool_call", 900), "no answer in time"),
    (ActorDeadError("entity-a/tool is not running"), "not available now"),
])
async def test_every_failed_ask_is_an_observation(exc: EntitydError, expected: str) -> None:
    toolbox = Toolbox([Tool("shell", "", schema({}), lambda args: _raises(exc))])
    outcome = await toolbox.call("shell", json.dumps({}))
    assert not outcome.ok
    assert outcome.output.startswith("error: shell ")
    assert expected in outcome.output and str(exc) in outcome.output


class BrokenStart(Actor):
    name = "broken"
    accepts = ()

    async def on_start(self) -> None:
        raise OSError("cannot open /data/broken.db: disk full")

    async def handle(self, envelope: Envelope) -> object | None:
        raise AssertionError("never started, never handles")


async def test_a_failed_on_start_says_what_failed(nats_server: NatsServer) -> None:
    key = SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY)
    nc = await nats_connect(nats_server.url, inbox_prefix=f"_i.{ENTITY}")
    observer = await nats_connect(nats_server.url, inbox_prefix=f"_i.{ENTITY}")
    events = await observer.subscribe(f"fed.evt.{ENTITY}.runtime.>")
    await barrier(observer)
    runtime = Runtime(Transport(nc, entity=ENTITY, key=key, keyring=keyring),
                      RuntimeSection(restart_budget=2, backoff_initial=0.01))
    runtime.add("broken", BrokenStart)
    try:
        with pytest.raises(ExceptionGroup) as failed:
            async with asyncio.TaskGroup() as tg:
                await runtime.start(tg)
        crashes = []
        guard = ReplayGuard()
        while len(crashes) < 3:
            msg = await events.next_msg(timeout=5)
            env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                keyring=keyring, replay=guard)
            if env.message.type == "actor_crashed":
                crashes.append(env.message.data)
    finally:
        await observer.close()
        await nc.close()
    (budget,) = [e for e in _leaves(failed.value) if isinstance(e, RestartBudgetExceeded)]
    assert str(budget) == ("actor broken crashed 3 times within 60 s; giving up; the last "
                           "crash, in on_start: OSError: cannot open /data/broken.db: disk full")
    assert isinstance(budget.__cause__, OSError)
    assert crashes == [{"actor": "broken", "phase": "on_start",
                        "error": "OSError: cannot open /data/broken.db: disk full"}] * 3


def _leaves(exc: BaseException) -> list[BaseException]:
    if isinstance(exc, BaseExceptionGroup):
        return [leaf for inner in exc.exceptions for leaf in _leaves(inner)]
    return [exc]


# -- accepted goals outlive a SIGKILL --------------------------------------------------------


def _goal_of(body: dict[str, Any]) -> str:
    """The goal a turn's request is for (what memory recalled for it left out)."""
    task = next(str(m.get("content")) for m in body["messages"] if m["role"] == "user")
    return task.split("\n\n<memory>")[0]


async def test_goals_queued_at_a_sigkill_are_answered_after_the_restart(tmp_path: Path) -> None:
    slow_started = asyncio.Event()

    def model(body: dict[str, Any]) -> Reply:
        if not body.get("tools"):
            return Reply(content="[]")  # lessons
        text = _goal_of(body)
        if text.startswith("goal one"):
            slow_started.set()
            return Reply(content="never sent: the daemon dies first", delay=60)
        return Reply(content=f"done: {text}")

    goals = {"g-one": "goal one, a slow one", "g-two": "goal two", "g-three": "goal three"}
    async with ScriptedLLMServer(model) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            async with EntityClient(config_mod.load(config)) as client:
                for task_id, text in goals.items():
                    accepted = await client.ask("orchestrator", Goal(text, task_id), 10.0)
                    assert isinstance(accepted, GoalAccepted)
                async with asyncio.timeout(20):
                    await slow_started.wait()
            # And one asked by entityctl, which waits for its answer.
            asker = await asyncio.create_subprocess_exec(
                str(BIN / "entityctl"), "--config", str(config), "ask", "goal four",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
                env=child_env())
            assert asker.stderr is not None
            async with asyncio.timeout(20):
                accepted_line = (await asker.stderr.readline()).decode()
            goals[accepted_line.split()[1]] = "goal four"
        finally:
            await asyncio.to_thread(daemon.kill)  # SIGKILL: no drain, no clean close
        async with asyncio.timeout(20):
            _, asker_err = await asker.communicate()
        assert asker.returncode == 4, asker_err.decode()  # EXIT_UNREACHABLE, at once
        assert "it keeps the task and answers it when it runs again" in asker_err.decode()
        asked_before = len(llm.requests)

        daemon = DaemonProc(config, tmp_path / "entityd-2.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            answers: dict[str, str] = {}
            async with EntityClient(config_mod.load(config)) as client, asyncio.timeout(40):
                while len(answers) < len(goals):
                    for task_id in goals:
                        history: History = await client.ask(
                            "memory", HistoryGet(conversation=task_id), 10.0)
                        said = [e.content for e in history.entries if e.role == "assistant"]
                        if said:
                            answers[task_id] = said[-1]
                    await asyncio.sleep(0.1)
        finally:
            code = await asyncio.to_thread(daemon.terminate)
        after = [_goal_of(r.body) for r in llm.requests[asked_before:]
                 if r.body and r.body.get("tools")]
    assert code == 0, daemon.log()[-3000:]
    # The turn cut short is answered with the reason, not run again (it may have acted);
    # the goals still queued ran, in the order they were accepted.
    assert "cut short by a restart" in answers["g-one"]
    assert "give the goal again" in answers["g-one"]
    assert answers["g-two"] == "done: goal two"
    assert answers["g-three"] == "done: goal three"
    assert answers[next(t for t, g in goals.items() if g == "goal four")] == "done: goal four"
    assert after == ["goal two", "goal three", "goal four"]
