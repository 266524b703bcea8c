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
