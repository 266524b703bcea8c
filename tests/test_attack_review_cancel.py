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

import time
from pathlib import Path
from typing import Any

import pytest

from actors.ledger.messages import HoldPlace, LedgerResult
from actors.llm.scripted import Reply
from actors.peer.delegation import UNPAID
from actors.peer.messages import TaskOffer, TaskUpdate
from entityd import config as config_mod
from entityd.client import EntityClient
from tests.helpers import command_into_inbox, funded, scripted_federation, task_by_id, wait_state
from tests.peer_model import route

pytestmark = pytest.mark.timeout(240)

VICTIM, DELEGATE, ATTACKER = "entity-a", "entity-b", "entity"


async def test_a_peer_cannot_withdraw_another_peers_task(tmp_path: Path) -> None:
    def script(request: dict[str, Any]) -> Reply:
        return route(request, coder_delay=4.0)  # the delegate's coder takes ~12 s

    async with scripted_federation(tmp_path, [VICTIM, DELEGATE, ATTACKER], script) as fed:
        await funded(fed, entity=100)  # the attacker
        await fed.discovered()
        victim, delegate, attacker = fed[VICTIM], fed[DELEGATE], fed[ATTACKER]

        code, out, err = await victim.ctl("delegate", DELEGATE, "Write calc.add with a test")
        assert code == 0, out + err
        task = out.split("offered task ")[1].split()[0]
        await wait_state(delegate, "in", ("working",), task_id=task)

        # The attacker's task id makes dlg-entity-a-<task>, the victim's goal id.
        twin = f"a-{task}"
        async with EntityClient(config_mod.load(attacker.config)) as client:
            hold: LedgerResult = await client.ask("ledger", HoldPlace(
                DELEGATE, 40, int((time.time() + 900) * 1000), twin), 30)
        assert hold.ok, hold
        await command_into_inbox(attacker, delegate, "delegate", TaskOffer(
            twin, "Write calc.add", "the same", "", time.time() + 600, [], 40,
            bytes.fromhex(hold.id)))
        await wait_state(delegate, "in", ("working",), task_id=twin)
        await command_into_inbox(attacker, delegate, "task",
                                 TaskUpdate(twin, UNPAID, "changed my mind"))
        withdrawn = await wait_state(delegate, "in", ("failed",), task_id=twin)
        assert "withdrawn" in withdrawn["note"], withdrawn

        # The victim's task is untouched: delivered, not stopped.
        done = await wait_state(delegate, "in", ("completed", "failed"), task_id=task)
        assert done["state"] == "completed", (done["state"], done["note"])
        mine = await wait_state(victim, "out", ("delivered", "failed"), task_id=task)
        assert mine["state"] == "delivered", mine
        assert (await task_by_id(delegate, "in", twin))["state"] == "failed"
