"""Attack review of the kill switch: inputs an outsider controls that make an actor raise.

An exception escaping an actor is a crash; past `runtime.restart_budget` (5) crashes of one
actor within `runtime.restart_window` (60 s) the daemon exits non-zero. So each input below
that crashes an actor, given six times within a minute, stops the entity (and after
systemd restarts it, again). The attacker here is the entity's own model (a hostile or
prompt-injected one: a peer's talk, a web page it read) and, for the reply's shape, the
provider serving it. Found:

- The model's tool-call arguments are JSON text it writes. Toolbox.call catches only
  JSONDecodeError from json_loads (actors/untrusted.py), but json.loads raises ValueError
  for an integer literal of more than 4300 digits (Python's int_max_str_digits), and
  TypeError when the arguments are not a string at all: the orchestrator crashes.
- What JSON reads but msgpack cannot write: an integer of 2^64 or more, or a lone
  surrogate ("\\ud800", six ASCII characters of JSON). A tool's argument carrying one goes
  into a record that `protocol.seal` cannot pack: OverflowError / UnicodeEncodeError in
  the actor *sending* the ask (Transport.ask -> protocol.seal), which is no EntitydError,
  so the toolbox does not make it an observation. Every tool of the tool actor forwards
  its arguments whole (ToolCall.args), so an extra key `"x": 18446744073709551616` on
  read_file is enough; pay_peer, rate_peer, accept_delivery, delegate_to_peer's price and
  todo_add's priority pass integer() straight on. A tool *name* with a lone surrogate
  crashes the same way in the step's event.
- An integer within 64 bits but past SQLite's 2^63 - 1 (todo_add's priority, todo_update's
  id) crashes the memory actor (OverflowError in aiosqlite).
- A non-string tool name (a list) raises TypeError (unhashable) in Toolbox.call.
- The provider's answer is trusted in shape: actors/llm/client.py `_completion` reads
  `.choices`, `.message`, `.tool_calls` of whatever JSON came back with a 200 (a text body,
  `choices` a string, `message` null), and budget.spend refuses a negative usage with a
  ValueError; a `content` that is no string crashes the answer's summary; a usage past
  2^64 crashes the `llm_call` event. Each raises out of the turn: the orchestrator crashes.

Fixed where each lives: `protocol.seal` refuses what msgpack cannot carry as BadPayload
and the runtime makes it an error of the sender's (Unsendable, an EntitydError: a tool's
observation; an answer becomes a `bad_payload` error; an event is logged, not sent);
`untrusted.json_loads` refuses an integer past 64 bits and a lone surrogate as decoding
errors (the model reads why); `toolbox.integer` takes 64 bits at most (a string or
float of 2^63 went through to SQLite: a case found while fixing, below with the ones that
held); the LLM client checks the answer's shape and usage (ProviderError). Every case now passes.

Real daemons on a real hub and leaves (bench.rig), the real LLM client over the scripted
server (not a model), entityctl for every request, as the rest of the suite.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio

from actors.llm.scripted import ErrorReply, Reply, ScriptedLLMServer, ScriptedToolCall
from bench.rig import Federation, Member, edit
from entityd import config as config_mod
from entityd.client import EntityClient
from protocol import StatusGet
from tests.helpers import DaemonProc, scripted_federation
from tests.peer_model import route
from tests.test_agent_e2e import entityctl, make_entity_config

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

A, B = "entity-a", "entity-b"
USAGE = {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}
U64 = 2**64  # one past what msgpack writes
I63 = 2**63  # one past what SQLite keeps
DIGITS = "1" * 5000  # past Python's 4300-digit limit for int("...")
INTERRUPTED = "cut short by a restart"


def calls(name: str, arguments: Any) -> Reply:
    """The model calls one tool (a str is sent as the arguments' JSON text, as it is)."""
    return Reply(tool_calls=[ScriptedToolCall(name, arguments)], usage=USAGE)


def provider_says(message: Any, **body: Any) -> ErrorReply:
    """A 200 from the provider whose body is a chat completion around `message`, with
    `body`'s keys instead of the usual ones (ErrorReply: the scripted server's way to send
    a body of our choosing; its status here is 200)."""
    return ErrorReply(200, {"id": "c", "object": "chat.completion", "created": 0,
                            "model": "m", "usage": USAGE, **body,
                            "choices": body.get("choices", [{
                                "index": 0, "message": message, "finish_reason": "stop"}])})


def answer(message: dict[str, Any]) -> dict[str, Any]:
    return {"role": "assistant", **message}


def tool_call(name: Any, arguments: Any) -> dict[str, Any]:
    return answer({"content": None, "tool_calls": [
        {"id": "c1", "type": "function", "function": {"name": name, "arguments": arguments}}]})


# What the model (or its provider) answers to the goal `PROBE <key>`.
CRASHES: dict[str, tuple[Any, str]] = {
    # ---- the model's tool-call arguments -----------------------------------------------
    "digits": (calls("todo_list", '{"n": ' + DIGITS + "}"),
               "ValueError (int_max_str_digits) from json.loads in Toolbox.call"),
    "u64_extra_key": (calls("read_file", f'{{"path": "a.txt", "n": {U64}}}'),
                      "OverflowError packing ToolCall.args in protocol.seal"),
    "surrogate_text": (calls("todo_add", '{"text": "\\ud800"}'),
                       "UnicodeEncodeError packing TodoAdd in protocol.seal"),
    "surrogate_file": (calls("write_file", '{"path": "a.txt", "content": "\\udfff"}'),
                       "UnicodeEncodeError packing ToolCall.args in protocol.seal"),
    "priority_u64": (calls("todo_add", {"text": "t", "priority": U64}),
                     "OverflowError packing TodoAdd in protocol.seal"),
    "pay_u64": (calls("pay_peer", {"peer": B, "amount": U64, "memo": "m"}),
                "OverflowError packing Pay in protocol.seal"),
    "rate_u64": (calls("rate_peer", {"peer": B, "task": "t", "score": U64}),
                 "OverflowError packing RatePeer in protocol.seal"),
    "accept_u64": (calls("accept_delivery", {"task": "t", "amount": U64}),
                   "OverflowError packing TaskSettle in protocol.seal"),
    "price_u64": (calls("delegate_to_peer", {"peer": B, "title": "t", "description": "d",
                                             "price": U64}),
                  "OverflowError packing PeerDelegate in protocol.seal"),
    "priority_i63": (calls("todo_add", {"text": "t", "priority": I63}),
                     "memory: OverflowError in SQLite (todos.add_todo)"),
    "todo_id_i63": (calls("todo_update", {"id": I63, "status": "done"}),
                    "memory: OverflowError in SQLite (todos._get_todo)"),
    # ---- the tool's name -----------------------------------------------------------------
    "name_surrogate": (calls("todo_list\ud800", {}),
                       "UnicodeEncodeError packing the step event's tool names"),
    "name_list": (provider_says(tool_call(["todo_list"], "{}")),
                  "TypeError (unhashable list) in Toolbox.call"),
    # ---- the provider's answer's shape ---------------------------------------------------
    "arguments_object": (provider_says(tool_call("todo_list", {"a": 1})),
                         "TypeError from json.loads of a dict in Toolbox.call"),
    "body_text": (ErrorReply(200, "a text, not a completion"),
                  "AttributeError in llm/client.py _completion (response.choices)"),
    "choices_text": (provider_says(None, choices="abc"),
                     "AttributeError in llm/client.py _completion (choice.message)"),
    "message_null": (provider_says(None),
                     "AttributeError in llm/client.py _completion (message.tool_calls)"),
    "content_number": (provider_says(answer({"content": 5})),
                       "TypeError summarising the final answer (loop.py _summary)"),
    "usage_negative": (provider_says(answer({"content": "x"}), usage={
        "prompt_tokens": -5, "completion_tokens": -5, "total_tokens": -10}),
                       "ValueError from TokenBudget.spend"),
}

HELD: dict[str, Any] = {
    "name_null": provider_says(tool_call(None, "{}")),
    "call_id_null": provider_says(answer({"content": None, "tool_calls": [
        {"id": None, "type": "function",
         "function": {"name": "todo_list", "arguments": "{}"}}]})),
    "arguments_not_json": calls("todo_list", "{not json"),
    "arguments_a_list": calls("todo_list", "[1, 2]"),
    "nan_importance": calls("remember", '{"text": "t", "importance": NaN}'),
    "infinite_importance": calls("remember", '{"text": "t", "importance": 1e999}'),
    "negative_price": calls("delegate_to_peer", {"peer": B, "title": "t", "description": "d",
                                                 "price": -5}),
    "three_hundred_calls": Reply(tool_calls=[ScriptedToolCall("todo_list", "{}")
                                             for _ in range(300)], usage=USAGE),
    "unknown_tool": calls("mcp.none.such", {}),
    "peer_is_self": calls("restart_peer", {"peer": A, "actor": "orchestrator"}),
    "peer_path": calls("talk_to_peer", {"peer": "../../x", "text": "hi"}),
    "peer_name_long": calls("check_peer_alive", {"peer": "x" * 100_000}),
    "goal_a_list": calls("delegate_to_coder", {"goal": [[["x"]]] * 10}),
    "no_choices": provider_says(None, choices=[]),
    # An integer as a string, within 64 bits unsigned but past SQLite's: integer() took it.
    "priority_string_i63": calls("todo_add", {"text": "t", "priority": str(I63)}),
    "priority_float_i63": calls("todo_add", {"text": "t", "priority": float(I63)}),
}


def model(request: dict[str, Any]) -> Reply | ErrorReply:
    """A scripted model (not a model): a goal `PROBE <key>` is answered with that probe; a
    tool's result with a short final answer; the rest as tests/peer_model.py answers."""
    messages = request.get("messages") or []
    last = messages[-1] if messages else {}
    if request.get("tools") and last.get("role") == "user":
        probe = re.match(r"PROBE (\w+)", str(last.get("content")))
        if probe:
            key = probe.group(1)
            return CRASHES[key][0] if key in CRASHES else HELD[key]
    if request.get("tools") and last.get("role") == "tool":
        return Reply(content="done: " + str(last.get("content"))[:300], usage=USAGE)
    return route(request)


def room_to_probe(fed: Federation) -> None:
    """Budgets wide enough that one daemon takes every probe: the crashes are counted per
    probe, and the budget's kill is shown once, on a daemon of its own."""
    for member in fed.members.values():
        edit(member.config, "max_tokens_per_hour = 400000", "max_tokens_per_hour = 400000000")
        edit(member.config, "restart_budget = 5 ", "restart_budget = 1000 ")
        edit(member.config, "backoff_max = 10.0 ", "backoff_max = 0.2 ")


@dataclass
class Rig:
    fed: Federation
    client: EntityClient  # entity-a's, as entityctl's

    @property
    def a(self) -> Member:
        return self.fed[A]

    async def restarts(self) -> dict[str, int]:
        """What `entityctl status` shows of each actor's restarts."""
        status = await self.client.ask("health", StatusGet(), 10.0)
        return {actor.name: actor.restarts for actor in status.actors}


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with scripted_federation(tmp_path_factory.mktemp("crashes"), [A, B], model,
                                   prepare=room_to_probe) as fed:
        await fed.discovered()
        async with EntityClient(config_mod.load(fed[A].config)) as client:
            yield Rig(fed, client)


def crashes_in_log(member: Member, since: int) -> list[str]:
    lines = member.daemon.log().splitlines()[since:]
    return [json.loads(line)["error"][:200] for line in lines
            if '"actor_crashed"' in line and '"exception"' in line]


async def probed(rig: Rig, key: str) -> None:
    """The goal `PROBE <key>` asked of entity-a: its turn answered (done, or stopped with
    the reason), and no actor restarted."""
    before, lines = await rig.restarts(), len(rig.a.daemon.log().splitlines())
    _, out, err = await rig.a.ctl("ask", f"PROBE {key}", timeout=60)
    after = await rig.restarts()
    grown = {name: n - before.get(name, 0) for name, n in after.items()
             if n != before.get(name, 0)}
    assert not grown and INTERRUPTED not in out, (
        f"restarts {grown}; crashed: {crashes_in_log(rig.a, lines)}; answer: {out[-300:]}")
    assert out.startswith(("done: ", "stopped: ")), out[-500:] + err[-500:]


@pytest.mark.parametrize("key", [
    pytest.param(key, id=key) for key in CRASHES])
async def test_the_models_output_crashes_no_actor(rig: Rig, key: str) -> None:
    await probed(rig, key)


@pytest.mark.parametrize("key", list(HELD))
async def test_the_models_output_that_held(rig: Rig, key: str) -> None:
    await probed(rig, key)


async def test_six_such_turns_do_not_stop_the_daemon(tmp_path: Path) -> None:
    """The budget's kill, on a daemon of its own with the shipped restart budget: the
    model answers every goal with the `digits` tool call."""
    def every_goal(request: dict[str, Any]) -> Reply:
        messages = request.get("messages") or []
        if request.get("tools") and messages and messages[-1].get("role") == "user":
            return CRASHES["digits"][0]
        return Reply(content="[]", usage=USAGE)

    async with ScriptedLLMServer(every_goal) as llm:
        config = make_entity_config(tmp_path, A, llm.base_url)
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"', 60)
            for n in range(6):
                await entityctl(config, "ask", f"goal {n}", timeout=60)
                if daemon.proc is not None and daemon.proc.poll() is not None:
                    break
            await asyncio.sleep(3)  # what the supervisor does after the last crash
            assert daemon.proc is not None and daemon.proc.poll() is None, (
                "the daemon exited: " + "\n".join(
                    line[:300] for line in daemon.log().splitlines()
                    if "restart_budget" in line or "actor_crashed" in line)[-1500:])
        finally:
            if daemon.proc is not None and daemon.proc.poll() is None:
                daemon.signal_stop()
                await asyncio.to_thread(daemon.wait_stopped, 20)

