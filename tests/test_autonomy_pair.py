"""The pair left alone with a mission, on the offline demo model: within 90 s each entity
plans, commits code in its workspace, reports to the other, delegates a piece with a
price that comes back delivered, passes its tests and is paid, rates, and keeps a lesson;
and the per-hour budgets stop the loop. Asserted from the events and the stores."""

from __future__ import annotations

import asyncio
import subprocess
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

from actors.llm.demo import demo_reply
from actors.llm.scripted import ScriptedLLMServer
from bench.rig import Member, build, edit, running
from entityd import config as config_mod
from entityd.client import EntityClient
from tests.helpers import poll

pytestmark = pytest.mark.timeout(240)
A, B = "entity-a", "entity-b"
MISSION = ("Make the world a better place for AI: build a platform where AIs can "
           "communicate, collaborate and trade")
TURNS = 6  # autonomy's turns per hour: low, so the test sees the budget stop the loop
LEFT_ALONE_S = 90.0
INTERVAL_S = 2.0  # between wake-ups: the test's watchers subscribe before the first
CYCLE = ("coder.committed", "peer.report_received", "peer.task_paid",
         "orchestrator.lessons", "ledger.rate")


def alone(member: Member) -> None:
    """Autonomy on with the mission, and deliveries accepted (and paid) once their tests
    pass."""
    for old, new in (("enabled = false", "enabled = true"),
                     ("interval = 600.0", f"interval = {INTERVAL_S}"),
                     ('mission = ""', f'mission = "{MISSION}"'),
                     ("max_turns = 10", f"max_turns = {TURNS}"),
                     ("auto_accept = false", "auto_accept = true"),
                     ('accept_command = ""', 'accept_command = "python3 -m unittest"')):
        edit(member.config, old, new)


async def watch(member: Member, seen: Counter[str], stop: asyncio.Event) -> None:
    """Count the member's events by actor.type until `stop`."""
    async with EntityClient(config_mod.load(member.config)) as client:
        async with client.events() as events:
            async for event in events:
                seen[f"{event.src.split('/')[1]}.{event.message.type}"] += 1
                if stop.is_set():
                    return


def commits(member: Member) -> list[str]:
    log = subprocess.run(["git", "-c", f"safe.directory={member.workspace}", "log",
                          "--format=%an %s"], cwd=member.workspace, capture_output=True,
                         text=True).stdout
    return [line for line in log.splitlines() if line.startswith(member.name)]


async def test_the_pair_left_alone_works_its_mission_through_a_whole_cycle(
        tmp_path: Path) -> None:
    async with ScriptedLLMServer(demo_reply) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url, heartbeat=0.5)
        for member in fed.members.values():
            alone(member)
        async with running(fed):
            seen: dict[str, Counter[str]] = {A: Counter(), B: Counter()}
            stop = asyncio.Event()
            watchers = [asyncio.create_task(watch(fed[n], seen[n], stop)) for n in (A, B)]
            try:
                assert (await asyncio.to_thread(fed.economy, "init")).returncode == 0
                for name in (A, B):
                    assert (await asyncio.to_thread(fed.economy, "mint", name, "100")
                            ).returncode == 0
                await poll(lambda: all(seen[n][kind] for n in (A, B) for kind in CYCLE),
                           timeout=LEFT_ALONE_S, every=0.5,
                           what=lambda: f"a whole cycle on both sides; seen {seen}")
                await poll(lambda: all(seen[n]["orchestrator.autonomy_budget_spent"]
                                       for n in (A, B)), timeout=60,
                           what=lambda: f"the turn budget stopping the loop; seen {seen}")
            finally:
                stop.set()
                for task in watchers:
                    task.cancel()
            for name in (A, B):
                member = fed[name]
                assert commits(member), f"{name} committed nothing"
                tasks: list[dict[str, Any]] = await member.ctl_json("tasks")
                paid = [t for t in tasks if t["direction"] == "out" and t["money"] == "posted"]
                assert paid and paid[0]["state"] == "delivered", tasks
                lessons = await member.ctl_json("memory", "search", "small modules unittest")
                assert any(h["kind"] == "lesson" for h in lessons["hits"]), lessons
            # What moved, moved between the two (some may still be held for a task).
            balances = [await fed[name].ctl_json("balance") for name in (A, B)]
            assert sum(b["available"] + b["held"] for b in balances) == 200, balances
            for name in (A, B):
                code, out, err = await fed[name].ctl("ledger", "verify")
                assert code == 0, out + err
            print({name: dict(seen[name]) for name in (A, B)})
