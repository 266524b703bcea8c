"""A scripted OpenAI-compatible HTTP server on loopback for tests and offline demos.

It is not a model: it answers each chat-completions request with the next step of a
script written in advance, and its model is named "scripted" in every answer.
It speaks real HTTP/1.1 (keep-alive, JSON and `stream: true` server-sent events with
tool-call deltas) so the real openai client talks to it exactly as to a provider:

    async with ScriptedLLMServer([Reply(content="hello")]) as server:
        settings = LlmSection(provider="scripted", base_url=server.base_url)
        ...
        server.bodies[0]["messages"]    # what the client sent

A step is a Reply (content and/or tool_calls, optional reasoning_content, usage,
finish_reason, delay), an ErrorReply (status, body, optional Retry-After, delay), the
same as a JSON object (an error step is one with a "status" key), or a callable taking
the request's JSON and returning a step. The script is a list of steps, used in order,
or one callable answering every request. Once a list is used up every further request
gets a 500 whose message says "script exhausted".

Offline demo, from a JSON file holding a list of steps:

    python -m actors.llm.scripted --port 8099 --script demo-script.json

    [{"content": "I will write it.", "tool_calls": [{"name": "write_file",
      "arguments": {"path": "hello.py", "content": "print('hi')\\n"}}]},
     {"content": "Done."}]

then point an entity at it with `[llm] provider = "scripted"` and
`base_url = "http://127.0.0.1:8099/v1"`. It listens on 127.0.0.1 only.
`--demo` instead of `--script` serves the demo model (actors/llm/demo.py), which answers
every request from the request itself and says in each answer that it is not a model.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import signal
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeAlias

from entityd import logs
from entityd.logs import get

log = get("actors.llm.scripted")

MODEL = "scripted"
HOST = "127.0.0.1"
SERVER_HEADER = "entityd-scripted-llm (not a model)"
MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 64 * 1024 * 1024
STREAM_PIECE = 16  # characters per streamed delta


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


class ScriptedLLMServer:
    """The scripted chat-completions server; see the module docstring."""

    def __init__(self, script: Script, *, port: int = 0) -> None:
        if not callable(script):
            script = [_checked(step) for step in script]
        self._script = script
        self._port = port
        self._next = 0
        self._server: asyncio.Server | None = None
        self._connections: set[asyncio.Task[None]] = set()
        self.requests: list[RecordedRequest] = []

    # lifecycle

    async def start(self) -> ScriptedLLMServer:
        if self._server is not None:
            raise RuntimeError("the scripted LLM server is already started")
        self._server = await asyncio.start_server(
            self._serve, HOST, self._port, limit=MAX_HEAD_BYTES
        )
        self._port = self._server.sockets[0].getsockname()[1]
        log.info(
            "scripted LLM server (not a model)",
            base_url=self.base_url,
            steps="dynamic" if callable(self._script) else len(self._script),
        )
        return self

    async def stop(self) -> None:
        server, self._server = self._server, None
        if server is None:
            return
        server.close()
        for task in list(self._connections):
            task.cancel()
        if self._connections:
            await asyncio.wait(self._connections, timeout=5)
        await server.wait_closed()

    async def __aenter__(self) -> ScriptedLLMServer:
        return await self.start()

    async def __aexit__(self, *exc_info: object) -> None:
        await self.stop()

    @property
    def port(self) -> int:
        return self._port

    @property
    def base_url(self) -> str:
        return f"http://{HOST}:{self._port}/v1"

    @property
    def bodies(self) -> list[Any]:
        """The JSON bodies of the chat-completions requests received, in order."""
        return [r.body for r in self.requests if r.path.endswith("/chat/completions")]

    @property
    def steps_used(self) -> int:
        return self._next

    def __repr__(self) -> str:
        return f"ScriptedLLMServer(base_url={self.base_url!r}, steps_used={self._next})"

    # HTTP

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        self._connections.add(task)
        try:
            while True:
                request = await _read_request(reader)
                if request is None:
                    break
                if isinstance(request, _BadRequest):
                    await _send_json(writer, request.status, _error(request.message, "bad_request"))
                    break
                keep_alive = await self._answer(request, writer)
                if not keep_alive:
                    break
        except (ConnectionError, asyncio.IncompleteReadError):
            pass  # the client went away, e.g. after its own timeout
        finally:
            self._connections.discard(task)
            writer.close()
            with contextlib.suppress(ConnectionError):
                await writer.wait_closed()

    async def _answer(self, request: _Request, writer: asyncio.StreamWriter) -> bool:
        path = request.path.split("?", 1)[0].rstrip("/")
        body: Any = None
        if request.body:
            try:
                body = json.loads(request.body)
            except ValueError:
                body = None
        self.requests.append(RecordedRequest(request.method, path, request.headers, body))
        if path in ("/v1/models", "/models"):
            if request.method != "GET":
                await _send_json(writer, 405, _error("use GET", "method_not_allowed"))
            else:
                models = {"object": "list", "data": [_model_entry()]}
                await _send_json(writer, 200, models)
        elif path in ("/v1/chat/completions", "/chat/completions"):
            if request.method != "POST":
                await _send_json(writer, 405, _error("use POST", "method_not_allowed"))
            elif not isinstance(body, dict):
                await _send_json(writer, 400, _error("the body is not a JSON object", "bad_json"))
            else:
                await self._complete(body, writer)
        else:
            message = f"scripted LLM server: no route {request.method} {path}"
            await _send_json(writer, 404, _error(message, "not_found"))
        return request.keep_alive

    async def _complete(self, body: dict[str, Any], writer: asyncio.StreamWriter) -> None:
        number = self._next
        try:
            step = self._take(body)
        except _Exhausted:
            message = (
                f"scripted LLM server: script exhausted after {number} step(s); "
                "the client asked for more than the script holds"
            )
            log.warning("scripted_script_exhausted", steps=number)
            await _send_json(writer, 500, _error(message, "script_exhausted"))
            return
        except (TypeError, ValueError) as exc:
            message = f"scripted LLM server: bad step {number}: {exc}"
            await _send_json(writer, 500, _error(message, "bad_step"))
            return
        if step.delay > 0:
            await asyncio.sleep(step.delay)
        if isinstance(step, ErrorReply):
            headers = {}
            if step.retry_after is not None:
                headers["Retry-After"] = str(step.retry_after)
            error_body = (
                step.body
                if step.body is not None
                else _error(f"scripted error {step.status}", "scripted_error")
            )
            if isinstance(error_body, str):
                await _send(writer, step.status, error_body.encode(), "text/plain", headers)
            else:
                await _send_json(writer, step.status, error_body, headers)
            return
        answer = _Answer.build(step, number, body)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            await _send_stream(writer, answer.chunks(bool(options.get("include_usage"))))
        else:
            await _send_json(writer, 200, answer.completion())

    def _take(self, body: dict[str, Any]) -> Reply | ErrorReply:
        if callable(self._script):
            step: Step = self._script
        else:
            if self._next >= len(self._script):
                raise _Exhausted
            step = self._script[self._next]
        self._next += 1
        for _ in range(8):  # a callable may return another callable, within reason
            if not callable(step):
                return _checked(step)
            step = step(body)
        raise ValueError("callables returned callables 8 times")


class _Exhausted(Exception):
    pass


def _checked(step: Step) -> Any:
    """A Reply or ErrorReply for a static step, or the callable itself."""
    if isinstance(step, Reply | ErrorReply) or callable(step):
        return step
    if isinstance(step, Mapping):
        return step_from_json(step)
    raise TypeError(f"a scripted step must be a Reply, ErrorReply, dict or callable: {step!r}")


@dataclass
class _Answer:
    """One scripted reply rendered as a chat completion or as stream chunks."""

    id: str
    created: int
    content: str | None
    reasoning: str | None
    calls: list[dict[str, Any]]
    finish_reason: str
    usage: dict[str, int] = field(default_factory=dict)

    @classmethod
    def build(cls, reply: Reply, number: int, request: dict[str, Any]) -> _Answer:
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


def _model_entry() -> dict[str, Any]:
    return {"id": MODEL, "object": "model", "created": 0, "owned_by": "scripted (not a model)"}


def _error(message: str, kind: str) -> dict[str, Any]:
    return {"error": {"message": message, "type": kind, "code": kind}}


# HTTP/1.1 plumbing


@dataclass(frozen=True)
class _Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    keep_alive: bool


@dataclass(frozen=True)
class _BadRequest:
    status: int
    message: str


async def _read_request(reader: asyncio.StreamReader) -> _Request | _BadRequest | None:
    """The next request on the connection; None when the client closed it cleanly."""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.IncompleteReadError as exc:
        if not exc.partial.strip():
            return None
        raise
    except asyncio.LimitOverrunError:
        return _BadRequest(431, "request head too large")
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ")
    if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
        return _BadRequest(400, f"bad request line {lines[0][:100]!r}")
    method, path, version = parts
    headers: dict[str, str] = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep:
            return _BadRequest(400, f"bad header line {line[:100]!r}")
        headers[name.strip().lower()] = value.strip()
    if "chunked" in headers.get("transfer-encoding", "").lower():
        body = await _read_chunked(reader)
    else:
        try:
            length = int(headers.get("content-length", "0"))
        except ValueError:
            return _BadRequest(400, "bad Content-Length")
        if not 0 <= length <= MAX_BODY_BYTES:
            return _BadRequest(413, "body too large")
        body = await reader.readexactly(length)
    connection = headers.get("connection", "").lower()
    keep_alive = connection != "close" if version == "HTTP/1.1" else connection == "keep-alive"
    return _Request(method, path, headers, body, keep_alive)


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    body = bytearray()
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
        if size == 0:
            while (await reader.readuntil(b"\r\n")) != b"\r\n":
                pass  # trailers
            return bytes(body)
        if len(body) + size > MAX_BODY_BYTES:
            raise ConnectionError("chunked body too large")
        body += await reader.readexactly(size)
        await reader.readexactly(2)


_REASONS = {
    200: "OK",
    400: "Bad Request",
    401: "Unauthorized",
    403: "Forbidden",
    404: "Not Found",
    405: "Method Not Allowed",
    408: "Request Timeout",
    413: "Content Too Large",
    429: "Too Many Requests",
    431: "Request Header Fields Too Large",
    500: "Internal Server Error",
    502: "Bad Gateway",
    503: "Service Unavailable",
    504: "Gateway Timeout",
}


def _head(status: int, headers: Mapping[str, str]) -> bytes:
    lines = [f"HTTP/1.1 {status} {_REASONS.get(status, 'Status')}", f"Server: {SERVER_HEADER}"]
    lines += [f"{name}: {value}" for name, value in headers.items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


async def _send(
    writer: asyncio.StreamWriter,
    status: int,
    payload: bytes,
    content_type: str,
    extra: Mapping[str, str] | None = None,
) -> None:
    headers = {"Content-Type": content_type, "Content-Length": str(len(payload)), **(extra or {})}
    writer.write(_head(status, headers) + payload)
    await writer.drain()


async def _send_json(
    writer: asyncio.StreamWriter,
    status: int,
    data: Any,
    extra: Mapping[str, str] | None = None,
) -> None:
    await _send(writer, status, json.dumps(data).encode(), "application/json", extra)


async def _send_stream(writer: asyncio.StreamWriter, chunks: list[dict[str, Any]]) -> None:
    """Server-sent events, one chunked-encoding chunk per event, ending in [DONE]."""
    headers = {
        "Content-Type": "text/event-stream",
        "Cache-Control": "no-cache",
        "Transfer-Encoding": "chunked",
    }
    writer.write(_head(200, headers))
    events = [f"data: {json.dumps(chunk)}\n\n".encode() for chunk in chunks]
    events.append(b"data: [DONE]\n\n")
    for event in events:
        writer.write(f"{len(event):x}\r\n".encode() + event + b"\r\n")
        await writer.drain()
    writer.write(b"0\r\n\r\n")
    await writer.drain()


# offline demo


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m actors.llm.scripted",
        description="Serve a scripted OpenAI-compatible chat API on 127.0.0.1 (not a model).",
    )
    parser.add_argument("--port", type=int, default=0, help="TCP port; 0 picks a free one")
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument("--script", type=Path, help="JSON file: a list of steps")
    source.add_argument(
        "--demo", action="store_true",
        help="serve the demo model: stateless answers marked '(demo model)', for any request",
    )
    args = parser.parse_args(argv)
    logs.configure("info")  # to stderr; stdout carries only the line naming the URL
    if args.demo:
        from .demo import demo_reply

        asyncio.run(_run(demo_reply, args.port))
        return 0
    try:
        raw = json.loads(args.script.read_text())
        if not isinstance(raw, list):
            raise ValueError("the script must be a JSON list of steps")
        steps = [step_from_json(item) for item in raw]
    except (OSError, ValueError, TypeError) as exc:
        print(f"scripted LLM server: cannot use {args.script}: {exc}", file=sys.stderr)
        return 2
    asyncio.run(_run(steps, args.port))
    return 0


async def _run(script: Script, port: int) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    async with ScriptedLLMServer(script, port=port) as server:
        print(f"scripted LLM server (not a model) on {server.base_url}", flush=True)
        await stop.wait()


if __name__ == "__main__":
    # Run main() of the importable module, not of this __main__ copy: the demo model builds
    # actors.llm.scripted.Reply objects, and only that module's server accepts them as steps.
    from actors.llm import scripted

    sys.exit(scripted.main())
