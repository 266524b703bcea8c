"""report_to_peer is durable on the receiver's side: a report sent while the receiver is
stopped, and one sent while the hub is down, each arrive exactly once after recovery."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from actors.llm.scripted import ScriptedLLMServer
from bench.rig import Member, build
from tests.peer_model import route

pytestmark = pytest.mark.timeout(180)


async def hits(member: Member, text: str) -> list[dict[str, Any]]:
    found = await member.ctl_json("memory", "search", text)
    return [h for h in found["hits"] if text in h["text"]]


async def arrives_once(member: Member, text: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not await hits(member, text):
        assert time.monotonic() < deadline, f"{text!r} never reached {member.name}"
        await asyncio.sleep(0.3)
    await asyncio.sleep(2.0)  # room for a duplicate to show up, were there one
    assert len(await hits(member, text)) == 1


async def test_reports_sent_while_the_receiver_or_the_hub_is_down_arrive_exactly_once(
    tmp_path: Path,
) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, ["entity-a", "entity-b"], llm_url=llm.base_url)
        await asyncio.to_thread(fed.start)
        try:
            await fed.discovered()
            a, b = fed["entity-a"], fed["entity-b"]

            # The receiver is stopped: the report waits in entity-a's outbox.
            assert await asyncio.to_thread(b.daemon.terminate) == 0
            sent = await a.ctl_json("report", "entity-b", "written while b was stopped")
            assert sent["ok"] and sent["code"] == "queued", sent
            assert "kept" in sent["text"]
            # A command that needs an answer says plainly that none came.
            code, out, _ = await a.ctl("restart", "entity-b", "memory", "--json")
            assert code == 4, out
            assert json.loads(out)["code"] == "no_answer"
            assert "did not answer the restart" in json.loads(out)["text"]
            b.start()
            await b.ready()
            await arrives_once(b, "written while b was stopped")

            # The hub is down: same, and the leaves keep their local traffic meanwhile.
            fed.hub.kill()
            sent = await a.ctl_json("report", "entity-b", "written while the hub was down")
            assert sent["code"] == "queued", sent
            assert (await a.ctl("status"))[0] == 0
            await asyncio.sleep(1.0)
            assert not await hits(b, "written while the hub was down")
            fed.hub.start()
            await arrives_once(b, "written while the hub was down")

            # Both restarts later, nothing is delivered a second time.
            assert await asyncio.to_thread(b.daemon.terminate) == 0
            b.start()
            await b.ready()
            await asyncio.sleep(2.0)
            assert len(await hits(b, "written while b was stopped")) == 1
            assert len(await hits(b, "written while the hub was down")) == 1
        finally:
            assert await asyncio.to_thread(fed.stop) == [0, 0]
