"""Typed steps of an agent turn; each renders itself to chat-completions messages."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from actors.llm import Completion


@dataclass(frozen=True)
class TaskStep:
    """What the turn is for: the user's goal, with what memory recalled for it."""

    text: str
    recalled: str = ""

    def messages(self) -> list[dict[str, Any]]:
        content = self.text
        if self.recalled:
            content += f"\n\n<memory>\n{self.recalled}\n</memory>"
        return [{"role": "user", "content": content}]


@dataclass(frozen=True)
class ActionStep:
    """One model reply: possibly some text, and the tool calls it asked for."""

    completion: Completion

    def messages(self) -> list[dict[str, Any]]:
        return [self.completion.assistant_message()]


@dataclass(frozen=True)
class ObservationStep:
    """The result of one tool call, fed back to the model."""

    call_id: str
    tool: str
    output: str
    ok: bool = True

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "tool", "tool_call_id": self.call_id, "content": self.output}]


@dataclass(frozen=True)
class FinalAnswerStep:
    text: str

    def messages(self) -> list[dict[str, Any]]:
        return [{"role": "assistant", "content": self.text}]


Step = TaskStep | ActionStep | ObservationStep | FinalAnswerStep


@dataclass
class Transcript:
    """The system prompt and the steps so far, rendered on demand."""

    system: str
    steps: list[Step] = field(default_factory=list)

    def messages(self) -> list[dict[str, Any]]:
        rendered: list[dict[str, Any]] = [{"role": "system", "content": self.system}]
        for step in self.steps:
            rendered.extend(step.messages())
        return rendered
