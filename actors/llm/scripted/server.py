"""The scripted chat-completions server: listens on loopback, records every request and
answers each chat-completions request with the script's next step."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

from entityd import get_logger

from . import wire
from .answer import Answer, error_object, model_entry
from .script import ErrorReply, RecordedRequest, Reply, Script, Step, checked_step

log = get_logger("actors.llm.scripted")

HOST = "127.0.0.1"


class ScriptedLLMServer:
    """The scripted chat-completions server; see the package docstring."""

    def __init__(self, script: Script, *, port: int = 0) -> None:
        if not callable(script):
            script = [checked_step(step) for step in script]
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
            self._serve, HOST, self._port, limit=wire.MAX_HEAD_BYTES
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
                request = await wire.read_request(reader)
                if request is None:
                    break
                if isinstance(request, wire.BadRequest):
                    body = error_object(request.message, "bad_request")
                    await wire.send_json(writer, request.status, body)
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

    async def _answer(self, request: wire.Request, writer: asyncio.StreamWriter) -> bool:
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
                await wire.send_json(writer, 405, error_object("use GET", "method_not_allowed"))
            else:
                models = {"object": "list", "data": [model_entry()]}
                await wire.send_json(writer, 200, models)
        elif path in ("/v1/chat/completions", "/chat/completions"):
            if request.method != "POST":
                await wire.send_json(writer, 405, error_object("use POST", "method_not_allowed"))
            elif not isinstance(body, dict):
                not_json = error_object("the body is not a JSON object", "bad_json")
                await wire.send_json(writer, 400, not_json)
            else:
                await self._complete(body, writer)
        else:
            message = f"scripted LLM server: no route {request.method} {path}"
            await wire.send_json(writer, 404, error_object(message, "not_found"))
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
            await wire.send_json(writer, 500, error_object(message, "script_exhausted"))
            return
        except (TypeError, ValueError) as exc:
            message = f"scripted LLM server: bad step {number}: {exc}"
            await wire.send_json(writer, 500, error_object(message, "bad_step"))
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
                else error_object(f"scripted error {step.status}", "scripted_error")
            )
            if isinstance(error_body, str):
                await wire.send(writer, step.status, error_body.encode(), "text/plain", headers)
            else:
                await wire.send_json(writer, step.status, error_body, headers)
            return
        answer = Answer.build(step, number, body)
        if body.get("stream"):
            options = body.get("stream_options") or {}
            await wire.send_stream(writer, answer.chunks(bool(options.get("include_usage"))))
        else:
            await wire.send_json(writer, 200, answer.completion())

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
                return checked_step(step)
            step = step(body)
        raise ValueError("callables returned callables 8 times")


class _Exhausted(Exception):
    pass
