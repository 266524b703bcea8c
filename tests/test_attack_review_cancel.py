"""Review attack on goal cancel across peers, on a real hub with three real daemons.

The delegate runs each peer's task as the goal `dlg-<peer>-<task id>`, and since the
peer actor is the actor every peer goal notifies, its `goal_cancel` (a priced task
withdrawn when its delegator voids the escrow) stops whatever goal has that id. Peer
names may hold '-', so two peers could name one goal: "entity" with task "a-T" and
"entity-a" with task "T". The attacker "entity" watches the delegate's public events
for entity-a's task id, offers a priced task named "a-<that id>" (its own hold, its own
key), then says its escrow is voided: the delegate withdrew the attacker's task by
cancelling the goal they shared, so entity-a's running task was stopped and failed.
Each peer's goal id is now its own (a separator no peer name holds), so the attacker
withdraws only its own task and entity-a's is delivered.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import Any

import nats
import pytest

import protocol
from actors.ledger.messages import HoldPlace, LedgerResult
from actors.llm.scripted import Reply, ScriptedLLMServer
from actors.peer.delegation import UNPAID
from actors.peer.messages import TaskOffer, TaskUpdate
from bench.rig import Federation, Member, build, running
from entityd import config as config_mod
from entityd import identity
from entityd.client import EntityClient
from protocol import Sealer
from tests.helpers import wait_state
from tests.peer_model import route

pytestmark = pytest.mark.timeout(240)

VICTIM, DELEGATE, ATTACKER = "entity-a", "entity-b", "entity"


async def command(fed: Federation, op: str, record: object) -> None:
    """`record` from the attacker to the delegate's INBOX, sealed with the attacker's key
    as its daemon would (it is a member: its own key, its own hub user)."""
    attacker, delegate = fed[ATTACKER], fed[DELEGATE]
    sealer = Sealer(identity.load(ATTACKER, attacker.data).signing_key)
    subject = protocol.subjects.command(DELEGATE, ATTACKER, op)
    wire, msg_id = sealer.seal(identity.read_public(delegate.data), src=f"{ATTACKER}/peer",
                               dst=f"{DELEGATE}/peer", subj=subject, message=record)
    nc = await nats.connect(attacker.url, inbox_prefix=f"_i.{ATTACKER}")
    try:
        await nc.jetstream().publish(subject, wire, headers={"Nats-Msg-Id": msg_id.hex()})
    finally:
        await nc.close()


async def task_of(member: Member, direction: str, task_id: str) -> dict[str, Any]:
    tasks = await member.ctl_json("tasks")
    return next(t for t in tasks if t["task_id"] == task_id and t["direction"] == direction)


async def test_a_peer_cannot_withdraw_another_peers_task(tmp_path: Path) -> None:
    def script(request: dict[str, Any]) -> Reply:
        return route(request, coder_delay=4.0)  # the delegate's coder takes ~12 s

    async with ScriptedLLMServer(script) as llm:
        fed = build(tmp_path, [VICTIM, DELEGATE, ATTACKER], llm_url=llm.base_url)
        async with running(fed):
            assert (await asyncio.to_thread(fed.economy, "init")).returncode == 0
            minted = await asyncio.to_thread(fed.economy, "mint", ATTACKER, "100")
            assert minted.returncode == 0, minted.stdout + minted.stderr
            await fed.discovered()
            victim, delegate = fed[VICTIM], fed[DELEGATE]

            code, out, err = await victim.ctl("delegate", DELEGATE, "Write calc.add with a test")
            assert code == 0, out + err
            task = out.split("offered task ")[1].split()[0]
            await wait_state(delegate, "in", ("working",), task_id=task)

            # The attacker's task id makes dlg-entity-a-<task>, the victim's goal id.
            twin = f"a-{task}"
            async with EntityClient(config_mod.load(fed[ATTACKER].config)) as client:
                hold: LedgerResult = await client.ask("ledger", HoldPlace(
                    DELEGATE, 40, int((time.time() + 900) * 1000), twin), 30)
            assert hold.ok, hold
            await command(fed, "delegate", TaskOffer(
                twin, "Write calc.add", "the same", "", time.time() + 600, [], 40,
                bytes.fromhex(hold.id)))
            await wait_state(delegate, "in", ("working",), task_id=twin)
            await command(fed, "task", TaskUpdate(twin, UNPAID, "changed my mind"))
            withdrawn = await wait_state(delegate, "in", ("failed",), task_id=twin)
            assert "withdrawn" in withdrawn["note"], withdrawn

            # The victim's task is untouched: delivered, not stopped.
            done = await wait_state(delegate, "in", ("completed", "failed"), task_id=task)
            assert done["state"] == "completed", (done["state"], done["note"])
            mine = await wait_state(victim, "out", ("delivered", "failed"), task_id=task)
            assert mine["state"] == "delivered", mine
            assert (await task_of(delegate, "in", twin))["state"] == "failed"
