"""An A2A task's life beyond one request, driven by a2a-sdk's own client against a running
daemon (scripted model, webhooks on loopback in the test): push notifications reach the
client's webhook and go on after a SIGKILL, a client re-subscribing to a task resumed
after the restart gets its remaining updates and its end, the commits a task made come
back in its artifacts, and push URLs aimed at the entity's own network (its NATS port,
its page, loopback by any spelling, private and metadata addresses, a redirect) are
refused and never reached."""

from __future__ import annotations

import asyncio
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from a2a.server.context import ServerCallContext
from a2a.server.tasks import InMemoryPushNotificationConfigStore
from a2a.types import (
    ListTaskPushNotificationConfigsRequest,
    SendMessageConfiguration,
    StreamResponse,
    SubscribeToTaskRequest,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
    TaskStatusUpdateEvent,
)

from actors.a2a.push import MAX_CONFIGS, TIMEOUT_S, PushPolicy, PushSender, http_client
from actors.llm.scripted import Reply
from entityd.a2a_settings import A2ASettings
from tests.peer_model import route
from tests.test_a2a_server import (
    CLIENT,
    KEY,
    Entity,
    a2a_client,
    a2a_config,
    make,
    message,
    scripted_model,
    started,
    until,
)

pytestmark = pytest.mark.timeout(180)

OTHER, OTHER_KEY = "other-bot", "a2a-other-key-" + uuid.uuid4().hex
TOKEN = "push-token-" + uuid.uuid4().hex
SLUGGISH_S = 10.0  # long enough to re-subscribe after a restart, before the answer
COMPLETED = "TASK_STATE_COMPLETED"


def sluggish(request: dict[str, Any]) -> Any:
    """peer_model's route, and a goal with SLUGGISH answered after SLUGGISH_S."""
    users = [m for m in request.get("messages") or [] if m.get("role") == "user"]
    if request.get("tools") and users and "SLUGGISH" in str(users[-1].get("content")):
        return Reply(content="slowly done", delay=SLUGGISH_S)
    return route(request)


@dataclass
class Hook:
    """A webhook on loopback, in a thread: records every connection and each POST's
    headers and JSON body; answers `status` (and `location`, for a redirect)."""

    status: int = 200
    location: str = ""
    trickle: bool = False  # answer a byte at a time, never ending (until 30 s)
    posts: list[tuple[dict[str, str], Any]] = field(default_factory=list)
    connections: int = 0
    changed: threading.Condition = field(default_factory=threading.Condition)

    def __post_init__(self) -> None:
        hook = self

        class Handler(BaseHTTPRequestHandler):
            def setup(self) -> None:
                with hook.changed:
                    hook.connections += 1
                super().setup()

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                with hook.changed:  # recorded before the answer: its sender may look next
                    hook.posts.append(({k.lower(): v for k, v in self.headers.items()},
                                       json.loads(body or b"null")))
                    hook.changed.notify_all()
                if hook.trickle:
                    self.wfile.write(b"HTTP/1.1 200 OK\r\nx-slow: ")
                    try:
                        for _ in range(60):  # until the sender hangs up
                            self.wfile.write(b"x")
                            self.wfile.flush()
                            time.sleep(0.5)
                    except OSError:  # the broken pipe of a sender that gave up
                        pass
                    return
                self.send_response(hook.status)
                if hook.location:
                    self.send_header("location", hook.location)
                self.send_header("content-length", "0")
                self.end_headers()

            do_GET = do_POST

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    @property
    def port(self) -> int:
        return int(self.server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self.thread.join(10)

    async def wait_for(self, what: Callable[[list[Any]], bool], timeout: float) -> None:
        def wait() -> bool:
            with self.changed:
                return self.changed.wait_for(lambda: what([b for _, b in self.posts]),
                                             timeout)
        assert await asyncio.to_thread(wait), self.posts


def state_of(body: Any) -> str:
    """The task state a pushed StreamResponse carries, if any."""
    if not isinstance(body, dict):
        return ""
    if "task" in body:
        return str(body["task"].get("status", {}).get("state", ""))
    return str(body.get("statusUpdate", {}).get("status", {}).get("state", ""))


@pytest.fixture(scope="module")
def model() -> Iterator[str]:
    with scripted_model(sluggish) as base_url:
        yield base_url


@pytest.fixture
def hooks() -> Iterator[tuple[Hook, Hook, Hook]]:
    """The client's webhook, one that redirects to the victim, and a victim on loopback
    that the operator did not list."""
    victim = Hook()
    made = (Hook(), Hook(status=307, location=victim.url), victim)
    try:
        yield made
    finally:
        for hook in made:
            hook.close()


@pytest.fixture
def entity(model: str, tmp_path: Path, hooks: tuple[Hook, Hook, Hook]) -> Iterator[Entity]:
    receiver, redirector, _ = hooks
    extra = (a2a_config({CLIENT: KEY, OTHER: OTHER_KEY})
             + f'push_hosts = ["127.0.0.1:{receiver.port}", "127.0.0.1:{redirector.port}"]\n')
    with started(make(tmp_path, "entity-a", model, extra)) as found:
        yield found


async def start_task(url: str, text: str, push: str = "") -> str:
    """A task started (not waited for); its id."""
    async with a2a_client(url, streaming=False) as client:
        request = message(text)
        request.configuration.CopyFrom(SendMessageConfiguration(return_immediately=True))
        if push:
            request.configuration.task_push_notification_config.CopyFrom(
                TaskPushNotificationConfig(url=push, token=TOKEN))
        events = [e async for e in client.send_message(request)]
        return str(events[-1].task.id)


async def test_a_resumed_task_streams_its_end_to_a_resubscriber_and_pushes_it(
        entity: Entity, hooks: tuple[Hook, Hook, Hook]) -> None:
    receiver = hooks[0]
    task_id = await start_task(entity.url, "SLUGGISH work to finish after a crash",
                               push=receiver.url)
    async with a2a_client(entity.url, streaming=False) as client:
        await until(client, task_id, (TaskState.TASK_STATE_WORKING,), 20)
    await receiver.wait_for(lambda bodies: "TASK_STATE_WORKING" in map(state_of, bodies), 20)
    entity.daemon.kill()
    entity.start()

    seen: list[StreamResponse] = []
    async with a2a_client(entity.url) as client:
        configs = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task_id))
        assert [c.url for c in configs.configs] == [receiver.url]  # kept across the kill
        async with asyncio.timeout(60):
            async for event in client.subscribe(SubscribeToTaskRequest(id=task_id)):
                seen.append(event)
    assert seen[0].task.id == task_id
    assert seen[0].task.status.state == TaskState.TASK_STATE_WORKING, seen[0]
    assert seen[-1].status_update.status.state == TaskState.TASK_STATE_COMPLETED, seen[-1]
    answers = [part.text for e in seen if e.HasField("artifact_update")
               for part in e.artifact_update.artifact.parts]
    assert answers == ["slowly done"], seen

    await receiver.wait_for(lambda bodies: COMPLETED in map(state_of, bodies), 30)
    assert {headers.get("x-a2a-notification-token") for headers, _ in receiver.posts} == {
        TOKEN}


async def test_push_urls_into_the_entitys_network_are_refused(
        entity: Entity, hooks: tuple[Hook, Hook, Hook]) -> None:
    receiver, redirector, victim = hooks
    config = (entity.data / "entityd.toml").read_text()
    nats_port = int(re.search(r"(?m)^port = (\d+)", config).group(1))  # type: ignore[union-attr]
    web_port = urlsplit(entity.url).port
    task_id = await start_task(entity.url, "hello")
    hostile = [
        f"http://127.0.0.1:{nats_port}/",            # the entity's NATS server
        f"http://127.0.0.1:{web_port}/a2a",          # its own page
        entity.url,
        f"http://localhost:{web_port}/",
        f"https://127.0.0.1:{victim.port}/",          # https does not make loopback fine
        f"http://127.0.0.1:{victim.port}/",
        f"http://127.0.0.1:{receiver.port + 1 if receiver.port + 1 != redirector.port else 1}/",
        f"https://localhost:{receiver.port}/",        # a listed port, by another name
        f"https://127.1:{receiver.port}/",
        f"https://2130706433:{victim.port}/",         # 127.0.0.1 as a number
        f"https://[::1]:{victim.port}/",
        f"https://[::ffff:127.0.0.1]:{victim.port}/",
        f"https://0.0.0.0:{victim.port}/",
        "https://169.254.169.254/latest/meta-data/",   # a cloud's metadata service
        "https://10.0.0.1/", "https://192.168.1.1/", "https://100.64.0.1/",
        f"http://user:pw@127.0.0.1:{receiver.port}/",  # a listed host, with credentials
        "file:///etc/passwd", f"gopher://127.0.0.1:{nats_port}/", "not a url",
        "https://" + "a" * 3000 + ".example/",
    ]
    async with a2a_client(entity.url, streaming=False) as client:
        for url in hostile:
            with pytest.raises(Exception) as refused:
                await client.create_task_push_notification_config(
                    TaskPushNotificationConfig(task_id=task_id, url=url))
            assert "push notification URL refused" in str(refused.value), (url, refused.value)
        # ... and as a message's own push config: no task starts.
        request = message("hello")
        request.configuration.task_push_notification_config.CopyFrom(
            TaskPushNotificationConfig(url=f"http://127.0.0.1:{nats_port}/"))
        with pytest.raises(Exception, match="push notification URL refused"):
            [e async for e in client.send_message(request)]
        listed = await client.list_task_push_notification_configs(
            ListTaskPushNotificationConfigsRequest(task_id=task_id))
        assert not listed.configs

        # One task, a few webhooks at most.
        for n in range(MAX_CONFIGS):
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id=f"c{n}", url=receiver.url))
        with pytest.raises(Exception, match=f"at most {MAX_CONFIGS}"):
            await client.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, id="one-more", url=receiver.url))
    # Another client cannot aim pushes of this client's task.
    async with a2a_client(entity.url, key=OTHER_KEY, streaming=False) as other:
        with pytest.raises(Exception):  # noqa: B017 - the SDK's task-not-found
            await other.create_task_push_notification_config(
                TaskPushNotificationConfig(task_id=task_id, url=receiver.url))

    # A listed webhook that redirects into the network is not followed.
    await start_task(entity.url, "over to the redirector", push=redirector.url)
    await redirector.wait_for(lambda bodies: COMPLETED in map(state_of, bodies), 30)
    assert victim.connections == 0 and not victim.posts


async def test_a_push_connects_to_the_address_that_was_checked(
        hooks: tuple[Hook, Hook, Hook]) -> None:
    receiver, _, victim = hooks
    async with http_client(PushPolicy(A2ASettings().push_host_allowed)) as http:
        for url, why in ((f"https://localhost:{victim.port}/", "not a public address"),
                         (f"http://localhost:{victim.port}/", "push URLs are https")):
            with pytest.raises(httpx.ConnectError, match=why):
                await http.post(url, json={})

    class Checked(PushPolicy):
        """A lookup already checked: whatever a second one would say, this address."""

        async def address(self, url: str) -> str:
            return "127.0.0.1"

    async with http_client(Checked(A2ASettings().push_host_allowed)) as http:
        reply = await http.post(f"http://hooks.invalid:{receiver.port}/x", json={"a": 1})
    assert reply.status_code == 200
    headers, body = receiver.posts[-1]
    assert headers["host"] == f"hooks.invalid:{receiver.port}" and body == {"a": 1}
    assert victim.connections == 0


async def test_a_webhook_that_answers_a_byte_at_a_time_holds_an_update_5_s_at_most() -> None:
    tarpit = Hook(trickle=True)
    warnings: list[dict[str, Any]] = []

    class Log:
        def warning(self, event: str, **fields: Any) -> None:
            warnings.append({"event": event, **fields})

    configs = InMemoryPushNotificationConfigStore()
    await configs.set_info("t1", TaskPushNotificationConfig(url=tarpit.url), ServerCallContext())
    listed = A2ASettings(push_hosts=frozenset({("127.0.0.1", tarpit.port)})).push_host_allowed
    try:
        async with http_client(PushPolicy(listed)) as http:
            started = time.monotonic()
            await PushSender(http, configs, Log()).send_notification("t1", TaskStatusUpdateEvent(
                task_id="t1", status=TaskStatus(state=TaskState.TASK_STATE_WORKING)))
            took = time.monotonic() - started
        assert tarpit.posts  # it was reached, and answered slowly
        assert TIMEOUT_S - 0.5 < took < TIMEOUT_S + 2, took
        assert warnings == [{"event": "a2a_push_failed", "task_id": "t1", "config": "t1",
                             "error": f"no answer within {TIMEOUT_S:g} s"}]
    finally:
        tarpit.close()


async def test_the_commits_of_a_task_come_back_in_its_artifacts(entity: Entity) -> None:
    goal = json.dumps({"goal": "write add(a, b) in calc.py with its test"})
    async with a2a_client(entity.url, streaming=False) as client:
        events = [e async for e in client.send_message(message(
            f"CALL delegate_to_coder {goal}"))]
    task = events[-1].task
    assert task.status.state == TaskState.TASK_STATE_COMPLETED, task
    named = {a.name: a.parts[0].text for a in task.artifacts}
    commits = named["commits"].split("\n")
    assert len(commits) == 1 and re.fullmatch(r"[0-9a-f]{40}", commits[0]), named
    assert f"committed {commits[0][:12]}" in named["answer"], named


async def test_one_client_cannot_see_cancel_or_follow_anothers_task(entity: Entity) -> None:
    """Tasks are the client's own (a2a-sdk's store keeps each under the key's client):
    another client's get, list, cancel and subscribe find nothing of them."""
    from a2a.types import CancelTaskRequest, GetTaskRequest, ListTasksRequest

    task_id = await start_task(entity.url, "SLUGGISH work that only its client may see")
    async with a2a_client(entity.url, key=OTHER_KEY, streaming=False) as other:
        with pytest.raises(Exception, match=r"(?i)not found"):
            await other.get_task(GetTaskRequest(id=task_id))
        listed = await other.list_tasks(ListTasksRequest())
        assert task_id not in [t.id for t in listed.tasks]
        with pytest.raises(Exception, match=r"(?i)not found"):
            await other.cancel_task(CancelTaskRequest(id=task_id))
    async with a2a_client(entity.url, key=OTHER_KEY) as other:
        with pytest.raises(Exception, match=r"(?i)not found"):
            async with asyncio.timeout(20):
                async for _ in other.subscribe(SubscribeToTaskRequest(id=task_id)):
                    pass
    async with a2a_client(entity.url, streaming=False) as owner:
        mine = await owner.list_tasks(ListTasksRequest())
        assert task_id in [t.id for t in mine.tasks]
        done = await until(owner, task_id, (TaskState.TASK_STATE_COMPLETED,), 60)
        assert done.id == task_id  # the other client's cancel did not touch it
