"""A scripted Reply rendered as the OpenAI chat-completions API answers: a whole
completion, or the chunks of a streamed one, always from the model named "scripted"."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, field
from typing import Any

from .script import Reply, ScriptedToolCall

MODEL = "scripted"
STREAM_PIECE = 16  # characters per streamed delta


@dataclass
class Answer:
    """One scripted reply rendered as a chat completion or as stream chunks."""

    id: str
    created: int
    content: str | None
    reasoning: str | None
    calls: list[dict[str, Any]]
    finish_reason: str
    usage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, reply: Reply, number: int, request: dict[str, Any]) -> Answer:
        calls: list[dict[str, Any]] = []
        for index, raw in enumerate(reply.tool_calls):
            call = raw if isinstance(raw, ScriptedToolCall) else ScriptedToolCall(**raw)
            arguments = call.arguments
            if not isinstance(arguments, str):
                arguments = json.dumps(arguments)
            calls.append(
                {
                    "id": call.id or f"call_scripted_{number}_{index}",
                    "type": "function",
                    "function": {"name": call.name, "arguments": arguments},
                }
            )
        content = reply.content if reply.content is not None or calls else ""
        text = (content or "") + (reply.reasoning_content or "")
        text += "".join(c["function"]["arguments"] + c["function"]["name"] for c in calls)
        usage = dict(reply.usage or {})
        usage.setdefault("prompt_tokens", max(1, len(json.dumps(request.get("messages"))) // 4))
        usage.setdefault("completion_tokens", max(1, len(text) // 4))
        usage.setdefault("total_tokens", usage["prompt_tokens"] + usage["completion_tokens"])
        return cls(
            id=f"chatcmpl-scripted-{number}",
            created=int(time.time()),
            content=content,
            reasoning=reply.reasoning_content,
            calls=calls,
            finish_reason=reply.finish_reason or ("tool_calls" if calls else "stop"),
            usage=usage,
        )

    def completion(self) -> dict[str, Any]:
        message: dict[str, Any] = {"role": "assistant", "content": self.content}
        if self.reasoning is not None:
            message["reasoning_content"] = self.reasoning
        if self.calls:
            message["tool_calls"] = self.calls
        return {
            "id": self.id,
            "object": "chat.completion",
            "created": self.created,
            "model": MODEL,
            "system_fingerprint": MODEL,
            "choices": [
                {
                    "index": 0,
                    "message": message,
                    "finish_reason": self.finish_reason,
                    "logprobs": None,
                }
            ],
            "usage": self.usage,
        }

    def chunks(self, include_usage: bool) -> list[dict[str, Any]]:
        deltas: list[dict[str, Any]] = [{"role": "assistant", "content": ""}]
        deltas += [{"reasoning_content": piece} for piece in _pieces(self.reasoning)]
        deltas += [{"content": piece} for piece in _pieces(self.content)]
        for index, call in enumerate(self.calls):
            function = call["function"]
            head = {"name": function["name"], "arguments": ""}
            opening = {"index": index, "id": call["id"], "type": "function", "function": head}
            deltas.append({"tool_calls": [opening]})
            deltas += [
                {"tool_calls": [{"index": index, "function": {"arguments": piece}}]}
                for piece in _pieces(function["arguments"])
            ]
        chunks = [self._chunk(delta, None) for delta in deltas]
        chunks.append(self._chunk({}, self.finish_reason))
        if include_usage:
            chunks.append({**self._chunk({}, None), "choices": [], "usage": self.usage})
        return chunks

    def _chunk(self, delta: dict[str, Any], finish_reason: str | None) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "chat.completion.chunk",
            "created": self.created,
            "model": MODEL,
            "system_fingerprint": MODEL,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish_reason}],
        }


def _pieces(text: str | None) -> list[str]:
    if not text:
        return []
    return [text[i : i + STREAM_PIECE] for i in range(0, len(text), STREAM_PIECE)]


def model_entry() -> dict[str, Any]:
    """The one model the /models route lists."""
    return {"id": MODEL, "object": "model", "created": 0, "owned_by": "scripted (not a model)"}


def error_object(message: str, kind: str) -> dict[str, Any]:
    """An error body in the OpenAI shape."""
    return {"error": {"message": message, "type": kind, "code": kind}}
