"""A stateless scripted model for federation tests: what it answers depends only on the
request, so it serves any number of entities and survives their restarts.

- the lessons call (no tools): "[]";
- the coder: write calc.py, then test_calc.py, then run the test, then say it is done
  (for a BIG goal: write big.txt, BIG_LINES numbered lines, with the shell);
- the orchestrator after a tool result: "done: <the result>";
- a goal containing `CALL <tool> <json arguments>`: call that tool;
- a delegated task: hand it to the coder;
- a peer talking: "echo: <what it said>";
- a goal containing SLOW: an answer after 4 s (a busy entity);
- anything else: "ok: <the goal>".
"""

from __future__ import annotations

import json
import re
from typing import Any

from actors.llm.scripted import Reply, ScriptedToolCall

CALC = "def add(a, b):\n    return a + b\n"
TEST_CALC = (
    "import unittest\n\nfrom calc import add\n\n\n"
    "class AddTest(unittest.TestCase):\n"
    "    def test_add(self):\n        self.assertEqual(add(2, 3), 5)\n\n\n"
    "if __name__ == '__main__':\n    unittest.main()\n"
)
CALL_RE = re.compile(r"CALL (\w+) (\{.*?\})(?:\s|$)")
CODER_STEPS = [
    ScriptedToolCall("write_file", {"path": "calc.py", "content": CALC}),
    ScriptedToolCall("write_file", {"path": "test_calc.py", "content": TEST_CALC}),
    ScriptedToolCall("shell", {"command": "python3 -m unittest -v test_calc"}),
]

BIG_LINES = 30_000
BIG_STEPS = [ScriptedToolCall("shell", {"command": (
    "python3 -c \"open('big.txt', 'w').write(''.join("
    f"'line %d\\n' % i for i in range({BIG_LINES})))\"")})]


def _first_user(messages: list[dict[str, Any]]) -> str:
    return next((_text(m) for m in messages if m.get("role") == "user"), "")


def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def route(request: dict[str, Any], coder_delay: float = 0.0) -> Reply:
    messages = request.get("messages") or []
    tools = {t["function"]["name"] for t in request.get("tools") or []}
    last = messages[-1] if messages else {}
    if not tools:
        return Reply(content="[]")
    if "write_file" in tools and "delegate_to_coder" not in tools:
        done = sum(1 for m in messages if m.get("role") == "tool")
        steps = BIG_STEPS if "BIG" in _first_user(messages) else CODER_STEPS
        if done < len(steps):
            return Reply(tool_calls=[steps[done]], delay=coder_delay)
        return Reply(content="calc.py and its test are written and the test passes")
    if last.get("role") == "tool":
        return Reply(content="done: " + _text(last)[:3000])
    user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    user = user.split("\n\n<memory>", 1)[0]  # the goal, not what was recalled for it
    call = CALL_RE.search(user)
    if call:
        return Reply(tool_calls=[ScriptedToolCall(call.group(1), json.loads(call.group(2)))])
    if "SLOW" in user:
        return Reply(content="slowly done", delay=4.0)
    if "delegated a task to you" in user:
        goal = ("BIG: write big.txt, numbered lines" if "BIG" in user else
                "Write add(a, b) in calc.py with a unittest in test_calc.py and run it")
        return Reply(tool_calls=[ScriptedToolCall("delegate_to_coder", {"goal": goal})])
    said = re.search(r"says to you: (.*)", user, re.S)
    if said:
        return Reply(content="echo: " + said.group(1).strip())
    return Reply(content="ok: " + user[:200])
