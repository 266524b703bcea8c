"""Tools an agent may call: a name, a description, a JSON schema and an async function.

Mistakes the model makes (unknown tool, arguments that are not JSON or miss a field)
come back as observations for it to correct; a tool's own failure is reported the
same way, and so is every way an ask to another actor can fail (busy, overloaded,
restarting, crashed, dead, no reply in time: `unreachable`), so one actor's trouble
never crashes the actor running the turn. Bugs in our code raise.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from typing import Any

from entityd import ActorDeadError, AskTimeout, EntitydError, RemoteError
from protocol import reasons

from ..untrusted import INT_MAX, INT_MIN, json_loads


class ToolFailed(Exception):
    """A tool could not do what was asked; the message is shown to the model."""


# What the model should make of each refusal code an asked actor can answer with.
_REMOTE_ADVICE = {
    reasons.BUSY: "it is busy; try again later or do without it",
    reasons.OVERLOADED: "it has more work queued than it takes; try again later",
    reasons.ACTOR_RESTARTED: ("it was restarting and cut the call short, so the call may or may "
                        "not have taken effect; check before repeating it"),
    reasons.ACTOR_CRASHED: ("it failed on this call (a bug on our side, now restarted); the "
                      "call may or may not have taken effect; check before repeating it"),
}


def unreachable(tool: str, exc: EntitydError) -> str:
    """The observation for a tool whose ask to another actor failed: what happened, and
    what the model can do about it."""
    match exc:
        case RemoteError(code=code) if code in _REMOTE_ADVICE:
            return f"error: {tool} did not run to the end: {_REMOTE_ADVICE[code]} ({exc})"
        case RemoteError():
            return f"error: {tool} was refused: {exc}"
        case AskTimeout():
            return (f"error: {tool} got no answer in time ({exc}); it may still be running; "
                    "check before repeating it")
        case ActorDeadError():
            return f"error: {tool} is not available now: {exc}"
    return f"error: {tool} failed: {exc}"


@dataclass(frozen=True)
class Tool:
    name: str
    description: str
    parameters: dict[str, Any]
    run: Callable[[dict[str, Any]], Awaitable[str]]

    def spec(self) -> dict[str, Any]:
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }


@dataclass(frozen=True)
class Outcome:
    ok: bool
    output: str


class Toolbox:
    def __init__(self, tools: Iterable[Tool] = ()) -> None:
        self._tools: dict[str, Tool] = {}
        for tool in tools:
            self.add(tool)

    def add(self, tool: Tool) -> None:
        if tool.name in self._tools:
            raise ValueError(f"tool {tool.name!r} is defined twice")
        self._tools[tool.name] = tool

    def names(self) -> list[str]:
        return list(self._tools)

    def specs(self) -> list[dict[str, Any]]:
        return [tool.spec() for tool in self._tools.values()]

    async def call(self, name: str, raw_arguments: str) -> Outcome:
        tool = self._tools.get(name)
        if tool is None:
            known = ", ".join(self._tools) or "none"
            return Outcome(False, f"error: there is no tool {name!r}; the tools are: {known}")
        try:
            arguments = json_loads(raw_arguments or "{}")
        except json.JSONDecodeError as exc:
            return Outcome(False, f"error: the arguments of {name} are not valid JSON: {exc}")
        if not isinstance(arguments, dict):
            return Outcome(False, f"error: the arguments of {name} must be a JSON object")
        missing = [
            key for key in tool.parameters.get("required", []) if key not in arguments
        ]
        if missing:
            return Outcome(False, f"error: {name} needs {', '.join(missing)}")
        try:
            return Outcome(True, await tool.run(arguments))
        except ToolFailed as exc:
            return Outcome(False, f"error: {exc}")
        except EntitydError as exc:
            return Outcome(False, unreachable(name, exc))


def schema(required: dict[str, str], optional: dict[str, str] | None = None,
           types: dict[str, str] | None = None) -> dict[str, Any]:
    """A JSON schema for an object of described properties (strings unless typed)."""
    types = types or {}
    properties = {
        key: {"type": types.get(key, "string"), "description": text}
        for key, text in {**required, **(optional or {})}.items()
    }
    return {"type": "object", "properties": properties, "required": list(required)}


def integer(value: Any, name: str) -> int:
    """A tool argument that must be a whole number (a model may send 3, "3" or 3.0) of
    64 bits at most (what msgpack and SQLite carry)."""
    number: int | None = None
    if isinstance(value, float) and value.is_integer():
        number = int(value)
    elif isinstance(value, int) and not isinstance(value, bool):
        number = value
    elif isinstance(value, str) and len(value) <= 40:
        try:
            number = int(value.strip())
        except ValueError:
            pass
    if number is None:
        raise ToolFailed(f"{name} must be a whole number, got {str(value)[:80]!r}")
    if not INT_MIN <= number <= INT_MAX:
        raise ToolFailed(f"{name} must be a whole number of 64 bits at most "
                         f"({INT_MIN} to {INT_MAX})")
    return number
