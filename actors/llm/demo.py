"""The demo model: a stateless script for the scripted server that lets an entity run a
whole turn offline, and says in every answer that it is not a model.

It decides from the request alone (so a restarted server answers the same way):

- a step of an entity left alone with a mission (planning, working its todo list, a
  delegated task, the coder writing a module): see demo_work.py;
- after a tool result: a final answer quoting the result;
- the orchestrator, asked about a peer named entity-...: call `check_peer_alive` on it;
- the coder: a plain answer that it writes no code;
- the lessons call: an empty JSON array; anything else: an echo of the user's message.

    python -m actors.llm.scripted --demo --port 8099
"""

from __future__ import annotations

import re
from typing import Any

from .demo_work import PREFIX, demo_work
from .scripted import Reply, ScriptedToolCall

PEER_RE = re.compile(r"\bentity-[a-z0-9-]+")
# The orchestrator's prompt opens "You are entity-a, ..."; the coder's "You are the coder
# of entity-a, ...". Names are 1-32 of [a-z0-9-] (protocol.subjects).
SELF_RE = re.compile(r"\bYou are (?:the [a-z]+ of )?([a-z0-9][a-z0-9-]{0,31})")
TOOL_RESULT_CHARS = 300
ECHO_CHARS = 200


def demo_reply(request: dict[str, Any]) -> Reply:
    """The demo model's answer to one chat-completions request (OpenAI format)."""
    messages = [m for m in _list(request.get("messages")) if isinstance(m, dict)]
    tools = _tool_names(_list(request.get("tools")))
    last = messages[-1] if messages else {}
    system = "\n".join(_text(m) for m in messages if m.get("role") == "system")
    user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    work = demo_work(messages, tools, system, user)
    if work is not None:  # a step of an entity left alone (demo_work.py)
        return work
    if last.get("role") == "tool":
        return Reply(content=PREFIX + _text(last)[:TOOL_RESULT_CHARS])
    if "check_peer_alive" in tools:
        peer = _peer_named(user, _own_name(system))
        if peer is not None:
            call = ScriptedToolCall("check_peer_alive", {"peer": peer})
            return Reply(content=PREFIX + f"Checking whether {peer} is alive.", tool_calls=[call])
    # The orchestrator has the file tools too; only the coder lacks delegate_to_coder.
    if "write_file" in tools and "delegate_to_coder" not in tools:
        return Reply(content=PREFIX + "I would write code here, but I am a demo model.")
    # Only the lessons call comes without tools; an orchestrator's prompt may quote lessons.
    if not tools and ("lessons" in system.lower() or "json array" in system.lower()):
        return Reply(content=PREFIX + "[]")
    return Reply(content=PREFIX + "I received: " + user[:ECHO_CHARS])


def _list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def _tool_names(tools: list[Any]) -> set[str]:
    names: set[str] = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if isinstance(function, dict) and isinstance(function.get("name"), str):
            names.add(function["name"])
    return names


def _text(message: dict[str, Any]) -> str:
    """A message's text, whether its content is a string or a list of content parts."""
    content = message.get("content")
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "") for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _own_name(system: str) -> str | None:
    match = SELF_RE.search(system)
    return match.group(1) if match else None


def _peer_named(text: str, own_name: str | None) -> str | None:
    for match in PEER_RE.finditer(text):
        name = match.group(0).rstrip("-")
        if name != own_name and len(name) <= 32:
            return name
    return None
