"""Two real daemons on a real hub: discovery, and each peer tool from entityctl and from
the orchestrator (driven by a scripted model)."""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import pytest

from actors.llm.scripted import ScriptedLLMServer
from bench.rig import ALL, Federation, Member, build, edit, running
from entityd import identity
from tests.helpers import poll
from tests.peer_model import route

pytestmark = pytest.mark.timeout(180)


async def restarts(member: Member, actor: str) -> int:
    status = await member.ctl_json("status")
    assert isinstance(status, dict)
    return int(next(a["restarts"] for a in status["actors"] if a["name"] == actor))


async def memories(member: Member, text: str) -> list[dict[str, Any]]:
    hits = await member.ctl_json("memory", "search", text)
    assert isinstance(hits, dict)
    return [h for h in hits["hits"] if text in h["text"]]


async def ask(member: Member, goal: str) -> str:
    code, out, err = await member.ctl("ask", goal, "--quiet", timeout=90)
    assert code == 0, f"ask exited {code}: {out}{err}\n{member.daemon.log()[-3000:]}"
    return out


async def _equals(value: Any, expected: Any) -> bool:
    return bool(await value == expected)


@pytest.fixture
async def pair(tmp_path: Path) -> Any:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, ["entity-a", "entity-b"], llm_url=llm.base_url)
        fed.llm = llm
        async with running(fed):
            yield fed


async def test_the_two_entities_find_each_other_and_pin_each_others_key(
    pair: Federation,
) -> None:
    started = time.monotonic()
    await pair.discovered(timeout=10.0)
    # The daemons are ready; a few heartbeat intervals (0.5 s here) later they know
    # each other (typically under 1 s; the bound leaves room for a loaded machine).
    assert time.monotonic() - started < 10 * 0.5
    a, b = pair["entity-a"], pair["entity-b"]
    peers = await a.ctl_json("peers")
    assert isinstance(peers, list)
    (entry,) = peers
    assert entry["name"] == "entity-b"
    assert entry["public_key"] == identity.read_public(b.data).hex()
    assert entry["pinned_by"] == "first-sight"
    assert entry["present"] is True
    assert entry["trust"] == list(ALL)
    assert entry["capabilities"] == ["chat", "code"]
    code, out, _ = await a.ctl("peers")
    assert code == 0 and "entity-b" in out and "present" in out


async def test_every_peer_tool_from_entityctl(pair: Federation) -> None:
    await pair.discovered()
    a, b = pair["entity-a"], pair["entity-b"]

    check = await a.ctl_json("check", "entity-b")
    assert isinstance(check, dict)
    assert check["state"] == "alive" and check["latency_ms"] > 0
    assert (await a.ctl("check", "entity-z"))[0] == 2  # unknown peer

    code, out, err = await a.ctl("talk", "entity-b", "hello over there")
    assert code == 0, out + err
    assert "echo: hello over there" in out

    sent = await a.ctl_json("report", "entity-b", "the build on main is green")
    assert isinstance(sent, dict) and sent["code"] == "delivered", sent
    found = await poll(lambda: memories(b, "the build on main is green"))
    assert len(found) == 1
    assert "entity-a reported" in found[0]["text"]

    woken = await a.ctl_json("wake", "entity-b")
    assert isinstance(woken, dict)
    assert woken["ok"] and woken["code"] == "noop" and "todo list is empty" in woken["text"]
    assert (await b.ctl("todo", "--add", "tidy the README"))[0] == 0
    woken = await a.ctl_json("wake", "entity-b")
    assert isinstance(woken, dict) and woken["code"] == "done", woken
    assert (await b.ctl("task", "SLOW work"))[0] == 0
    woken = await a.ctl_json("wake", "entity-b")
    assert woken["code"] == "noop" and "busy" in woken["text"], woken

    assert await restarts(b, "memory") == 0
    restarted = await a.ctl_json("restart", "entity-b", "memory")
    assert isinstance(restarted, dict) and restarted["code"] == "done", restarted
    await poll(lambda: _equals(restarts(b, "memory"), 1))
    assert (await b.ctl("memory", "search", "build"))[0] == 0  # the new memory actor serves
    code, out, _ = await a.ctl("restart", "entity-b", "nonesuch", "--json")
    assert code == 3 and json.loads(out)["code"] == "unknown_actor"


async def test_every_peer_tool_from_the_orchestrator(pair: Federation) -> None:
    await pair.discovered()
    a, b = pair["entity-a"], pair["entity-b"]

    out = await ask(a, 'CALL check_peer_alive {"peer": "entity-b"}')
    assert "entity-b: alive" in out
    out = await ask(a, 'CALL talk_to_peer {"peer": "entity-b", "text": "how are you"}')
    assert "[answered" in out and "echo: how are you" in out
    out = await ask(a, 'CALL report_to_peer {"peer": "entity-b", "text": "deploy finished"}')
    assert "[delivered" in out
    await poll(lambda: memories(b, "deploy finished"))
    out = await ask(a, 'CALL wake_up_peer {"peer": "entity-b"}')
    assert "[noop" in out
    out = await ask(a, 'CALL restart_peer {"peer": "entity-b", "actor": "tool"}')
    assert "[done" in out
    await poll(lambda: _equals(restarts(b, "tool"), 1))
    out = await ask(a, 'CALL list_peers {}')
    assert "entity-b: present" in out
    # A peer tool's failure is an observation for the model, not a crash.
    out = await ask(a, 'CALL check_peer_alive {"peer": "entity-q"}')
    assert "entity-q: unknown" in out and "not in the directory" in out

    # The report reached entity-b's orchestrator too: its next turn is told who reported,
    # not what (a peer's words reach an operator's turn only when it recalls them).
    await ask(b, "what is new?")
    prompts = [json.dumps(r.body) for r in pair.llm.requests if r.body]
    told = [p for p in prompts if "Peers sent reports" in p and "entity-a (memory #" in p]
    assert told and not any("deploy finished" in p for p in told)


async def test_a_peer_over_its_rate_limit_is_refused_and_its_commands_wait(
    tmp_path: Path,
) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, ["entity-a", "entity-b"], llm_url=llm.base_url)
        b = fed["entity-b"]
        edit(b.config, "rate_per_minute = 120", "rate_per_minute = 20")
        edit(b.config, "rate_burst = 30", "rate_burst = 2")
        try:
            await asyncio.to_thread(fed.start)
            await fed.discovered()
            a = fed["entity-a"]
            states = [await _check_state(a) for _ in range(4)]
            assert states[:2] == ["alive", "alive"], states
            assert "rate_limited" in states[2:], states

            # A durable command over the limit is not refused: it waits in the INBOX.
            sent = [await a.ctl_json("report", "entity-b", f"burst report {i}")
                    for i in range(4)]
            assert all(s["code"] == "delivered" for s in sent), sent
            for i in range(4):
                await poll(lambda i=i: memories(b, f"burst report {i}"), timeout=30)
        finally:
            assert await asyncio.to_thread(fed.stop) == [0, 0]


async def _check_state(member: Member) -> str:
    _, out, _ = await member.ctl("check", "entity-b", "--json")
    result = json.loads(out)
    if result["state"] == "alive":
        return "alive"
    return "rate_limited" if "rate_limited" in result["detail"] else result["detail"]
