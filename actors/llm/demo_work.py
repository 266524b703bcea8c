"""The demo model's part in an entity left alone (autonomy with a mission), so that the
offline pair shows one whole cycle: a plan, code committed, a report to the peer, a task
delegated with a price, delivered, accepted (its tests pass) and paid, then rated.

Like the rest of the demo model it decides from the request alone, here from the steps
the turn has taken so far (the tool calls in its messages):

- a planning turn ("PLAN the next steps"): add an item to write a module, look at the
  peers, add an item asking the first peer for another module; then answer;
- a todo turn: rate what was paid; then take the first open item: one asking a peer is
  delegated to it with a price, another goes to the coder and is reported to the peers;
  the item is marked done; then answer;
- a task a peer delegated: hand it to the coder;
- the coder, given "Write NAME.py with FN(...)": write the module and its test, run the
  test, answer;
- the lessons call after an autonomous turn: one lesson.
"""

from __future__ import annotations

import json
import re
from typing import Any

from .scripted import Reply, ScriptedToolCall

PREFIX = "(demo model) "  # every answer of the demo model says it is one
PRICE = 10
OPEN_ITEM = re.compile(r"(?m)^#(\d+) \[(?:open|doing)\] \(p-?\d+\) (.+)$")
ASK_ITEM = re.compile(r"^Ask ([a-z0-9][a-z0-9-]{0,31}) to (.+)$")
MODULE = re.compile(r"\b[Ww]rite ([a-z_][a-z0-9_]*)\.py with ([a-z_][a-z0-9_]*)\(")
PEER_LINE = re.compile(r"(?m)^([a-z0-9][a-z0-9-]{0,31}): (?:present|absent),")
TO_RATE = re.compile(r"to rate \(rate_peer, once each\): (.+)")
RATED = re.compile(r"([0-9a-f]{6,64}) \(([a-z0-9][a-z0-9-]{0,31})\)")
LESSON = "Small modules, each with its unittest, are quick to write, deliver and check."
OWN_ITEM = "Write greet.py with greet(name) and its unittest"
PEER_ITEM = "Ask {peer} to write shout.py with shout(text) and its unittest"


def demo_work(messages: list[dict[str, Any]], tools: set[str], system: str,
              user: str) -> Reply | None:
    """The demo's next step in an autonomous cycle, or None when this request is not
    part of one."""
    user = user.split("<memory>", 1)[0]  # the goal, not what was recalled for it
    done = _calls(messages)
    autonomous = "PLAN the next steps" in user or "Your mission:" in user
    if not tools and autonomous and "json array" in system.lower():  # the lessons call
        return Reply(content=PREFIX + json.dumps([LESSON]))
    if "PLAN the next steps" in user and "todo_add" in tools:
        return _plan(done, _tool_outputs(messages))
    if "Your mission:" in user and "todo_update" in tools:
        return _work(user, done, _tool_outputs(messages))
    if "delegated a task to you" in user and "delegate_to_coder" in tools:
        if not done:
            title = user.split("delegated a task to you: ", 1)[-1].split("\n", 1)[0]
            return _call("Handing the task to my coder.", "delegate_to_coder",
                         goal=title)
        return Reply(content=PREFIX + "Done: the coder wrote it.")
    if "write_file" in tools and "delegate_to_coder" not in tools:
        module = MODULE.search(user)
        if module is not None:
            return _code(module.group(1), module.group(2), len(done))
    return None


def _plan(done: list[str], outputs: list[str]) -> Reply:
    if not done:
        return _call("Planning: first a module of my own.", "todo_add", text=OWN_ITEM,
                     priority=2)
    if len(done) == 1:
        return _call("Who could help?", "list_peers")
    if len(done) == 2:
        peers = PEER_LINE.findall(outputs[-1]) if outputs else []
        if peers:
            return _call(f"Asking {peers[0]} for a piece.", "todo_add",
                         text=PEER_ITEM.format(peer=peers[0]), priority=1)
    return Reply(content=PREFIX + "Planned: a module of my own, and one from a peer.")


def _work(user: str, done: list[str], outputs: list[str]) -> Reply:
    to_rate = TO_RATE.search(user)
    rated = done.count("rate_peer")
    pending = RATED.findall(to_rate.group(1)) if to_rate else []
    if rated < len(pending):
        task, peer = pending[rated]
        return _call(f"Rating {peer} for {task}.", "rate_peer", peer=peer, task=task,
                     score=5, note="delivered, tests pass")
    item = OPEN_ITEM.search(user)
    if item is None:
        return Reply(content=PREFIX + "Nothing open on my todo list.")
    item_id, text = int(item.group(1)), item.group(2)
    steps = [s for s in done if s != "rate_peer"]
    ask = ASK_ITEM.match(text)
    if ask is not None:
        plan = ["delegate_to_peer", "todo_update"]
        args: list[dict[str, Any]] = [
            {"peer": ask.group(1), "title": text, "description": ask.group(2)
             + "; `python3 -m unittest` must pass", "price": PRICE},
            {"id": item_id, "status": "done"}]
    else:
        peers = next((PEER_LINE.findall(o) for o in outputs if PEER_LINE.search(o)), [])
        plan = ["list_peers", "delegate_to_coder", "report_to_peer", "todo_update"]
        args = [{}, {"goal": text},
                {"peer": peers[0] if peers else "", "text": f"Finished: {text}."},
                {"id": item_id, "status": "done"}]
        if len(steps) >= 2 and not peers:  # nobody to report to: skip the report
            plan.remove("report_to_peer")
            args.pop(2)
    if len(steps) < len(plan):
        return _call(f"Working on #{item_id}.", plan[len(steps)], **args[len(steps)])
    return Reply(content=PREFIX + f"Worked on #{item_id}: {text}.")


def _code(module: str, function: str, step: int) -> Reply:
    if step == 0:
        return _call("Writing the module.", "write_file", path=f"{module}.py",
                     content=f"def {function}(value):\n    return f\"{function}: {{value}}\"\n")
    if step == 1:
        test = (f"import unittest\n\nfrom {module} import {function}\n\n\n"
                f"class Test{function.title()}(unittest.TestCase):\n"
                f"    def test_{function}(self):\n"
                f"        self.assertEqual({function}('x'), '{function}: x')\n")
        return _call("Writing its test.", "write_file", path=f"test_{module}.py",
                     content=test)
    if step == 2:
        return _call("Running the test.", "shell", command="python3 -m unittest -v")
    return Reply(content=PREFIX + f"Wrote {module}.py with {function}() and its test.")


def _call(say: str, tool: str, **args: Any) -> Reply:
    return Reply(content=PREFIX + say, tool_calls=[ScriptedToolCall(tool, args)])


def _calls(messages: list[dict[str, Any]]) -> list[str]:
    """The tools this turn has called so far, in order."""
    names = []
    for message in messages:
        for call in message.get("tool_calls") or []:
            function = call.get("function") if isinstance(call, dict) else None
            if isinstance(function, dict) and isinstance(function.get("name"), str):
                names.append(function["name"])
    return names


def _tool_outputs(messages: list[dict[str, Any]]) -> list[str]:
    outputs = []
    for message in messages:
        if message.get("role") == "tool":
            content = message.get("content")
            outputs.append(content if isinstance(content, str) else json.dumps(content))
    return outputs
