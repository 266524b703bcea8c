"""The entity as an A2A agent, driven by a2a-sdk's own client against a running daemon
(its page on loopback, a scripted model): the signed card verifies with the key in it and
with a2a-sdk's verifier, a message runs to completion streamed and not streamed, a task is
got and cancelled, a SIGKILL mid-task loses nothing (the task completes after the
restart), and a call without the right API key is refused."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import threading
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.client import ClientConfig, create_client
from a2a.types import (
    AgentCard,
    CancelTaskRequest,
    GetTaskRequest,
    Message,
    Part,
    Role,
    SendMessageConfiguration,
    SendMessageRequest,
    Task,
    TaskState,
)
from a2a.utils.signing import create_signature_verifier
from jwt import PyJWK

from actors.a2a import card
from actors.llm.scripted import ScriptedLLMServer
from bench.harness import DaemonProc, child_env
from bench.ports import free_port
from bench.rig import READY, edit, enable_web, make_entity
from entityd import identity
from tests.peer_model import route
from tests.test_web_security import page_url

pytestmark = pytest.mark.timeout(180)

KEY = "a2a-test-key-" + uuid.uuid4().hex
CLIENT = "ci-bot"


@contextmanager
def scripted_model(script: Callable[[dict[str, Any]], Any] = route) -> Iterator[str]:
    """The scripted model on a loop of its own: it outlives each daemon (and its kill)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scripted-model", daemon=True)
    thread.start()
    server = ScriptedLLMServer(script)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield server.base_url
    finally:
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


@dataclass
class Entity:
    daemon: DaemonProc
    data: Path
    url: str = ""

    def start(self) -> None:
        readies = self.daemon.log().count(READY) if self.daemon.log_path.exists() else 0
        self.daemon.start()
        self.daemon.wait_log(READY, 60, readies + 1)
        self.daemon.wait_log('"web_serving"', 20, readies + 1)
        serving = [line for line in self.daemon.log().splitlines() if '"web_serving"' in line]
        self.url = page_url(serving[-1])  # this run's


def a2a_config(keys: dict[str, str]) -> str:
    table = ", ".join(f'{name} = "{hashlib.sha256(key.encode()).hexdigest()}"'
                      for name, key in keys.items())
    return f"\n[a2a]\napi_keys = {{ {table} }}\n"


def make(root: Path, name: str, base_url: str, extra: str) -> Entity:
    config = make_entity(root, name, port=free_port(), extra=extra)
    enable_web(config)
    edit(config, 'provider = "moonshot"', 'provider = "scripted"')
    edit(config, 'base_url = ""', f'base_url = "{base_url}"')
    return Entity(DaemonProc(config, root / f"{name}.log", env=child_env()), config.parent)


@pytest.fixture(scope="module")
def model() -> Iterator[str]:
    with scripted_model() as base_url:
        yield base_url


@contextlib.contextmanager
def started(found: Entity) -> Iterator[Entity]:
    """The entity's daemon, running until the block ends."""
    found.start()
    try:
        yield found
    finally:
        if found.daemon.proc is not None and found.daemon.proc.poll() is None:
            found.daemon.signal_stop()
            found.daemon.wait_stopped(20)


@pytest.fixture
def entity(model: str, tmp_path: Path) -> Iterator[Entity]:
    with started(make(tmp_path, "entity-a", model, a2a_config({CLIENT: KEY}))) as found:
        yield found


def message(text: str) -> SendMessageRequest:
    return SendMessageRequest(message=Message(message_id=uuid.uuid4().hex, role=Role.ROLE_USER,
                                              parts=[Part(text=text)]))


@asynccontextmanager
async def a2a_client(url: str, key: str = KEY, streaming: bool = True) -> AsyncIterator:
    async with httpx.AsyncClient(headers={"Authorization": f"Bearer {key}"},
                                 timeout=60) as http:
        client = await create_client(url, ClientConfig(streaming=streaming, httpx_client=http))
        try:
            yield client
        finally:
            await client.close()


async def until(client: Any, task_id: str, states: tuple[int, ...], timeout: float) -> Task:
    """The task once it is in one of `states` (a2a-sdk has no wait: it is polled)."""
    async with asyncio.timeout(timeout):
        while True:
            task: Task = await client.get_task(GetTaskRequest(id=task_id))
            if task.status.state in states:
                return task
            await asyncio.sleep(0.05)


async def fetch_card(url: str) -> AgentCard:
    async with httpx.AsyncClient() as http:
        reply = await http.get(url + card.CARD_PATH.lstrip("/"))
    assert reply.status_code == 200, reply.text
    return card.from_json(reply.text)


async def test_the_card_is_signed_with_the_entitys_key(entity: Entity) -> None:
    found = await fetch_card(entity.url)
    public = identity.read_public(entity.data)
    assert card.public_key_of(found) == public
    assert card.verify(found, public) == public
    assert found.name == "entity-a"
    assert found.supported_interfaces[0].url == entity.url + "a2a"
    assert found.security_schemes["apiKey"].http_auth_security_scheme.scheme == "Bearer"
    assert found.capabilities.streaming and found.capabilities.push_notifications

    # a2a-sdk's own verifier, with the JWK of the protected header.
    def key_of(kid: str | None, jku: str | None) -> PyJWK:
        protected = json.loads(card.unb64url(found.signatures[0].protected))
        return PyJWK(protected["jwk"])
    create_signature_verifier(key_of, ["EdDSA"])(found)

    tampered = AgentCard()
    tampered.CopyFrom(found)
    tampered.description = "something else"
    with pytest.raises(ValueError):
        card.verify(tampered)


async def test_a_message_streams_to_completion_and_the_task_is_kept(entity: Entity) -> None:
    async with a2a_client(entity.url) as client:
        states, lines, task_id = [], [], ""
        async for event in client.send_message(message("hello there")):
            if event.HasField("task"):
                task_id = event.task.id
                states.append(event.task.status.state)
            if event.HasField("status_update"):
                task_id = event.status_update.task_id
                states.append(event.status_update.status.state)
                said = event.status_update.status.message.parts
                lines.extend(part.text for part in said)
        assert states[-1] == TaskState.TASK_STATE_COMPLETED, states
        assert TaskState.TASK_STATE_WORKING in states
        assert any(line.startswith("step: ") for line in lines), lines  # the turn's steps
        task = await client.get_task(GetTaskRequest(id=task_id))
        assert task.status.state == TaskState.TASK_STATE_COMPLETED
        answer = task.artifacts[0].parts[0].text
        assert answer.startswith("ok: ") and "hello there" in answer, answer

    async with a2a_client(entity.url, streaming=False) as client:
        events = [e async for e in client.send_message(message("and again"))]
        final = events[-1].task
        assert final.status.state == TaskState.TASK_STATE_COMPLETED, final


async def test_a_task_is_cancelled(entity: Entity) -> None:
    async with a2a_client(entity.url, streaming=False) as client:
        request = message("SLOW work")
        request.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
        events = [e async for e in client.send_message(request)]
        task: Task = events[-1].task
        cancelled = await client.cancel_task(CancelTaskRequest(id=task.id))
        assert cancelled.status.state == TaskState.TASK_STATE_CANCELED
        got = await client.get_task(GetTaskRequest(id=task.id))
        assert got.status.state == TaskState.TASK_STATE_CANCELED


async def test_unauthenticated_calls_are_refused(entity: Entity) -> None:
    body = {"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
            "params": {"message": {"messageId": "m1", "role": "ROLE_USER",
                                   "parts": [{"text": "hi"}]}}}
    async with httpx.AsyncClient() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"X-API-Key": "wrong"}):
            reply = await http.post(entity.url + "a2a", json=body, headers=headers)
            assert reply.status_code == 401, (headers, reply.text)
        # ... and the page's API still wants its session.
        assert (await http.get(entity.url + "api/status")).status_code == 401
    with pytest.raises(Exception):  # noqa: B017 - the SDK's error for a 401
        async with a2a_client(entity.url, key="wrong") as client:
            async for _ in client.send_message(message("hi")):
                pass


async def test_no_keys_no_a2a(model: str, tmp_path: Path) -> None:
    plain = make(tmp_path, "entity-b", model, "")
    plain.start()
    try:
        async with httpx.AsyncClient() as http:
            assert (await http.get(plain.url + card.CARD_PATH.lstrip("/"))).status_code in (
                401, 404)
            reply = await http.post(plain.url + "a2a", json={},
                                    headers={"Authorization": f"Bearer {KEY}"})
            assert reply.status_code in (401, 404)
    finally:
        plain.daemon.signal_stop()
        plain.daemon.wait_stopped(20)


async def test_a_task_survives_a_sigkill(entity: Entity) -> None:
    async with a2a_client(entity.url, streaming=False) as client:
        request = message("SLOW work to finish after a crash")
        request.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
        events = [e async for e in client.send_message(request)]
        task_id = events[-1].task.id
        # Handed to the orchestrator (on disk there), its model answering in 4 s.
        await until(client, task_id, (TaskState.TASK_STATE_WORKING,), 20)
    entity.daemon.kill()
    entity.start()
    async with a2a_client(entity.url, streaming=False) as client:
        task = await until(client, task_id, (TaskState.TASK_STATE_COMPLETED,
                                             TaskState.TASK_STATE_FAILED), 60)
    assert task.status.state == TaskState.TASK_STATE_COMPLETED, task
    assert task.artifacts[-1].parts[0].text == "slowly done"


async def test_entityctl_a2a_card_send_and_key(entity: Entity, capsys: pytest.CaptureFixture[str],
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """entityctl a2a's commands (entityd/app/ctl_a2a.py), run as entityctl runs them."""
    from argparse import Namespace

    from entityd.app import ctl_a2a

    none: Any = None
    assert await ctl_a2a._card(none, Namespace(url=entity.url, json=False, timeout=30.0)) == 0
    public = identity.read_public(entity.data).hex()
    assert f"signature: verified (Ed25519 {public})" in capsys.readouterr().out
    monkeypatch.setenv(ctl_a2a.KEY_ENV, KEY)
    assert await ctl_a2a._send(none, Namespace(url=entity.url, text="from entityctl",
                                               json=True, timeout=60.0)) == 0
    sent = json.loads(capsys.readouterr().out)
    assert sent["ok"] and sent["state"] == "completed" and "from entityctl" in sent["text"]
    monkeypatch.setenv(ctl_a2a.KEY_ENV, "wrong")
    assert await ctl_a2a._send(none, Namespace(url=entity.url, text="x", json=True,
                                               timeout=30.0)) == 3
    assert "did not answer as one" in capsys.readouterr().err
    assert await ctl_a2a._key(none, Namespace(name="new-bot")) == 0
    printed = capsys.readouterr().out
    new_key = printed.split("\n")[1].strip()
    digest = hashlib.sha256(new_key.encode()).hexdigest()
    assert f'api_keys = {{ new-bot = "{digest}" }}' in printed
