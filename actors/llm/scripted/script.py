"""The script the scripted server answers from: its steps (a Reply, an ErrorReply, the
same as a JSON object, or a callable returning a step) and the record of each request."""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, TypeAlias


@dataclass(frozen=True)
class ScriptedToolCall:
    name: str
    arguments: Mapping[str, Any] | str = "{}"  # a str is sent as is, even if not JSON
    id: str | None = None


@dataclass(frozen=True)
class Reply:
    content: str | None = None
    tool_calls: Sequence[ScriptedToolCall | Mapping[str, Any]] = ()
    reasoning_content: str | None = None
    usage: Mapping[str, int] | None = None  # default: a rough count, 4 characters a token
    finish_reason: str | None = None  # default: "tool_calls" when there are some, else "stop"
    delay: float = 0.0  # seconds to wait before answering


@dataclass(frozen=True)
class ErrorReply:
    status: int
    body: Any = None  # a dict or list is sent as JSON, a str as text; None: an error object
    retry_after: float | str | None = None
    delay: float = 0.0


# A step: Reply | ErrorReply | a JSON-style mapping | a callable(request JSON) -> step.
# Typed loosely because mixed lists infer as list[object]; steps are checked at runtime.
Step: TypeAlias = Any
Script: TypeAlias = Sequence[Step] | Callable[[dict[str, Any]], Step]


@dataclass(frozen=True)
class RecordedRequest:
    method: str
    path: str
    headers: Mapping[str, str]  # names in lower case
    body: Any  # the decoded JSON, or None


def step_from_json(data: Mapping[str, Any]) -> Reply | ErrorReply:
    """A step written as a JSON object; unknown keys are refused so typos show."""
    cls: type[Reply] | type[ErrorReply] = ErrorReply if "status" in data else Reply
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(
            f"scripted step: unknown key {unknown[0]!r} for {cls.__name__}; "
            f"known: {', '.join(sorted(known))}"
        )
    return cls(**data)


def checked_step(step: Step) -> Any:
    """A Reply or ErrorReply for a static step, or the callable itself."""
    if isinstance(step, Reply | ErrorReply) or callable(step):
        return step
    if isinstance(step, Mapping):
        return step_from_json(step)
    raise TypeError(f"a scripted step must be a Reply, ErrorReply, dict or callable: {step!r}")
