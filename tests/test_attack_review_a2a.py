"""Review attacks on the A2A face, by a client that holds an API key.

- Disk and memory: a stored task keeps its messages whole, and nothing bounded how many
  a client keeps, so one key could write a megabyte a call to the data dir for as long as
  it liked (60 calls wrote 54 MB in 5 s, and a ListTasks page held 45 MB). A call is now
  at most MAX_BODY bytes (413 `too_large`, nothing stored, checked against the running
  daemon), a task keeps its last MAX_HISTORY messages (a client can go on sending to its
  running task: 40 sends kept 31 messages), and the store keeps a client's newest
  MAX_TASKS tasks, dropping the older ones with their push configs (checked on a2a-sdk's
  SQLite store with a small bound, another client's tasks untouched).
- Malformed JSON-RPC (nested 60,000 deep, not JSON, a batch) gets a JSON-RPC error, and
  the entity then still answers a task.
- Push URLs: an IPv6 address that carries a private or loopback IPv4 address (6to4,
  local-use NAT64, SIIT, IPv4-compatible) or a site-local one was judged public; a
  translator or tunnel on the way would deliver it into the entity's network.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import httpx
import pytest
from a2a.types import (
    ListTasksRequest,
    Message,
    Part,
    Role,
    Task,
    TaskPushNotificationConfig,
    TaskState,
    TaskStatus,
)
from sqlalchemy.ext.asyncio import create_async_engine

from actors.a2a.push import PushConfigStore, PushPolicy, PushRefused
from actors.a2a.server import MAX_BODY, MAX_HISTORY, TaskStore, call_context
from entityd import config as config_mod
from entityd.client import EntityClient
from protocol import StatusGet
from tests import test_a2a_server
from tests.test_a2a_server import KEY, Entity

pytestmark = pytest.mark.timeout(180)

HEADERS = {"Authorization": f"Bearer {KEY}", "A2A-Version": "1.0"}


# The A2A server tests' fixtures: a scripted model per module, an entity serving A2A.
model = test_a2a_server.model
entity = test_a2a_server.entity


def send(text: str) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": 1, "method": "SendMessage",
            "params": {"message": {"messageId": uuid.uuid4().hex, "role": "ROLE_USER",
                                   "parts": [{"text": text}]},
                       "configuration": {"returnImmediately": False}}}


async def listed(http: httpx.AsyncClient, url: str) -> list[dict[str, Any]]:
    reply = await http.post(url, json={"jsonrpc": "2.0", "id": 2, "method": "ListTasks",
                                       "params": {}}, headers=HEADERS)
    assert reply.status_code == 200, reply.text
    tasks: list[dict[str, Any]] = reply.json()["result"].get("tasks", [])
    return tasks


async def test_a_big_call_is_refused_and_malformed_ones_answered(entity: Entity) -> None:
    url = entity.url + "a2a"
    async with httpx.AsyncClient(timeout=60) as http:
        for size in (MAX_BODY + 1, 900_000):
            reply = await http.post(url, json=send("x" * size), headers=HEADERS)
            assert reply.status_code == 413, reply.text[:300]
            assert reply.json()["error"] == "too_large"
        assert await listed(http, url) == []  # nothing of them was stored

        deep = b"[" * 60_000
        garbage = b"\xff\xfe not json"
        batch = b"[" + b",".join([b'{"jsonrpc":"2.0","id":1,"method":"GetTask",'
                                  b'"params":{"id":"x"}}'] * 100) + b"]"
        for body in (deep, garbage, batch):
            reply = await http.post(url, content=body,
                                    headers={**HEADERS, "content-type": "application/json"})
            assert reply.status_code == 200 and "error" in reply.json(), reply.text[:300]

        reply = await http.post(url, json=send("hello after all that"), headers=HEADERS)
        assert reply.status_code == 200, reply.text[:300]
        task = reply.json()["result"]["task"]
        assert task["status"]["state"] == "TASK_STATE_COMPLETED", task
        assert [t["id"] for t in await listed(http, url)] == [task["id"]]
    assert entity.daemon.proc is not None and entity.daemon.proc.poll() is None


def rpc(method: str, params: Any, ident: Any = 1) -> dict[str, Any]:
    return {"jsonrpc": "2.0", "id": ident, "method": method, "params": params}


def nested(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": value}
    return value


# Calls of every method with params of the wrong shape or edge values: each must get an
# answer (a JSON-RPC error, or a result), never a 500 or a crashed actor.
SHAPES: dict[str, dict[str, Any]] = {
    "no_message": rpc("SendMessage", {}),
    "message_a_list": rpc("SendMessage", {"message": [1, 2]}),
    "parts_a_string": rpc("SendMessage", {"message": {"messageId": "m1", "role": "ROLE_USER",
                                                      "parts": "hello"}}),
    "text_an_int": rpc("SendMessage", {"message": {"messageId": "m2", "role": "ROLE_USER",
                                                   "parts": [{"text": 2**64}]}}),
    "role_unknown": rpc("SendMessage", {"message": {"messageId": "m3", "role": "ROLE_GOD",
                                                    "parts": [{"text": "hi"}]}}),
    "surrogate_text": rpc("SendMessage", {"message": {"messageId": "m4", "role": "ROLE_USER",
                                                      "parts": [{"text": "\ud800"}]}}),
    "unknown_task": rpc("SendMessage", {"message": {"messageId": "m5", "role": "ROLE_USER",
                                                    "taskId": "no-such",
                                                    "parts": [{"text": "x"}]}}),
    "deep_metadata": rpc("SendMessage", {"message": {"messageId": "m6", "role": "ROLE_USER",
                                                     "parts": [{"text": "x"}],
                                                     "metadata": nested(60)}}),
    "history_u64": rpc("SendMessage", {"message": {"messageId": "m7", "role": "ROLE_USER",
                                                   "parts": [{"text": "x"}]},
                                       "configuration": {"historyLength": 2**64}}),
    "get_id_int": rpc("GetTask", {"id": 5}),
    "get_id_list": rpc("GetTask", {"id": ["a"]}),
    "get_history_negative": rpc("GetTask", {"id": "x", "historyLength": -1}),
    "cancel_unknown": rpc("CancelTask", {"id": "no-such"}),
    "list_page_u64": rpc("ListTasks", {"pageSize": 2**64}),
    "list_page_negative": rpc("ListTasks", {"pageSize": -1, "pageToken": "\u0000junk"}),
    "push_junk": rpc("CreateTaskPushNotificationConfig", {"taskId": "x", "config": 5}),
    "unknown_method": rpc("Explode", {}),
    "params_a_list": rpc("GetTask", [1, 2, 3]),
    "id_an_object": rpc("GetTask", {"id": "x"}, ident={"a": 1}),
    "stream_junk": rpc("SendStreamingMessage", {"message": "x"}),
}


async def test_calls_of_the_wrong_shape_are_answered_and_crash_no_actor(
        entity: Entity) -> None:
    """A client with a key sends every method with params of the wrong shape or edge
    values (ints past 64 bits, a lone surrogate, 60 nested maps, unknown ids): each gets
    an answer under 500, no actor of the entity restarts, and a task still runs."""
    url = entity.url + "a2a"
    config = config_mod.load(entity.data / "entityd.toml")
    async with EntityClient(config) as client, httpx.AsyncClient(timeout=60) as http:
        before = {a.name: a.restarts for a in (await client.ask(
            "health", StatusGet(), 10.0)).actors}
        for name, body in SHAPES.items():
            raw = json.dumps(body).encode()  # a lone surrogate goes as \\ud800 (escaped)
            reply = await http.post(url, content=raw,
                                    headers={**HEADERS, "content-type": "application/json"})
            assert reply.status_code < 500, f"{name}: {reply.status_code} {reply.text[:300]}"
        after = {a.name: a.restarts for a in (await client.ask(
            "health", StatusGet(), 10.0)).actors}
        assert after == before, f"restarts before {before}, after {after}"
        reply = await http.post(url, json=send("hello after all that"), headers=HEADERS)
        assert reply.status_code == 200, reply.text[:300]
        assert reply.json()["result"]["task"]["status"]["state"] == "TASK_STATE_COMPLETED"
    crashed = [line for line in entity.daemon.log().splitlines() if '"actor_crashed"' in line]
    assert not crashed, crashed[:3]


async def test_the_store_keeps_a_clients_newest_tasks(tmp_path: Path) -> None:
    engine = create_async_engine(f"sqlite+aiosqlite:///{tmp_path / 'a2a-tasks.sqlite3'}")
    try:
        configs = PushConfigStore(engine)
        store = TaskStore(engine, configs, max_tasks=3)
        await store.initialize()
        await configs.initialize()
        flood, other = call_context("flood-bot"), call_context("other-bot")

        async def task(context: Any) -> str:
            made = Task(id=str(uuid.uuid4()), context_id=str(uuid.uuid4()),
                        status=TaskStatus(state=TaskState.TASK_STATE_SUBMITTED))
            await store.save(made, context)
            return made.id

        others = [await task(other) for _ in range(2)]
        first = await task(flood)
        await configs.set_info(first, TaskPushNotificationConfig(
            task_id=first, id="hook", url="https://hooks.example/x"), flood)
        rest = [await task(flood) for _ in range(5)]
        # Saved again (an update, as each status is): still one task, not a new one; of
        # the messages a client kept sending to it, the last MAX_HISTORY are kept.
        again = await store.get(rest[-1], flood)
        assert again is not None
        again.status.state = TaskState.TASK_STATE_WORKING
        again.history.extend(Message(message_id=f"m{n}", role=Role.ROLE_USER,
                                     parts=[Part(text=f"more {n}")]) for n in range(40))
        await store.save(again, flood)
        stored = await store.get(rest[-1], flood)
        assert stored is not None
        assert [m.message_id for m in stored.history] == [
            f"m{n}" for n in range(40 - MAX_HISTORY, 40)]

        kept = await store.list(ListTasksRequest(), flood)
        assert sorted(t.id for t in kept.tasks) == sorted(rest[-3:])
        assert await store.get(first, flood) is None
        assert await configs.get_info_for_dispatch(first) == []  # its push config too
        assert sorted(t.id for t in (await store.list(ListTasksRequest(), other)).tasks) \
            == sorted(others)  # another client's tasks are its own share
    finally:
        await engine.dispose()


@pytest.mark.parametrize("host", [
    "[::7f00:1]",  # IPv4-compatible 127.0.0.1
    "[::ffff:0:7f00:1]",  # SIIT's IPv4-translated 127.0.0.1
    "[2002:7f00:1::]",  # 6to4 of 127.0.0.1
    "[2002:a00:1::1]",  # 6to4 of 10.0.0.1
    "[64:ff9b:1::a9fe:a9fe]",  # local-use NAT64 of 169.254.169.254 (metadata)
    "[64:ff9b:1::a00:1]",  # local-use NAT64 of 10.0.0.1
    "[fec0::1]",  # site-local
])
async def test_push_urls_hiding_a_private_ipv4_in_ipv6_are_refused(host: str) -> None:
    policy = PushPolicy(lambda scheme, host, port: False)
    with pytest.raises(PushRefused, match="not a public address"):
        await policy.address(f"https://{host}/hook")


async def test_push_urls_of_public_addresses_still_pass() -> None:
    policy = PushPolicy(lambda scheme, host, port: False)
    for host, address in (("[2002:808:808::1]", "2002:808:808::1"), ("[2606:4700::1111]",
                          "2606:4700::1111"), ("[64:ff9b::808:808]", "64:ff9b::808:808")):
        assert await policy.address(f"https://{host}/hook") == address
