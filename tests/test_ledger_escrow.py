"""Paid delegation end to end, between two real daemons on a hub (scripted models): the
delegator's hold appears before the delegate starts, accepting the delivery pays it,
rejecting it or missing the deadline gives it back, and only a settled task is rated.
Then a hostile delegator's offers whose escrow does not cover them are refused."""

from __future__ import annotations

import asyncio
import json
import re
import time
from pathlib import Path
from typing import Any

import nats
import pytest

import protocol
from actors.ledger.messages import HoldPlace, LedgerResult
from actors.llm.scripted import Reply, ScriptedLLMServer
from actors.peer.delegation import goal_of
from actors.peer.messages import TaskOffer
from bench.rig import Federation, Member, build, running
from entityd import config as config_mod
from entityd import identity
from entityd.client import EntityClient
from protocol import Sealer
from tests.helpers import funded, money, poll, wait_state
from tests.peer_model import route
from tests.test_goal_cancel import Watch

pytestmark = pytest.mark.timeout(240)
A, B = "entity-a", "entity-b"


async def settles(member: Member, direction: str, task_id: str, state: str) -> None:
    """Until the member's task shows its escrow `state`."""
    async def shown() -> bool:
        tasks = await member.ctl_json("tasks")
        return any(t["task_id"] == task_id and t["direction"] == direction
                   and t["money"] == state for t in tasks)

    await poll(shown, timeout=60, what=f"{member.name}'s task {task_id} {state}")


async def a_funded(fed: Federation, amount: int) -> None:
    await funded(fed, **{A: amount})
    await fed.discovered()


def call(tool: str, **args: Any) -> str:
    """A goal the scripted orchestrator answers by calling `tool` (tests/peer_model.py)."""
    return f"CALL {tool} {json.dumps(args)}"


async def test_a_priced_task_is_paid_on_acceptance_and_both_sides_rate(tmp_path: Path) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            await a_funded(fed, 500)
            a, b = fed[A], fed[B]
            code, out, err = await a.ctl("ask", call(
                "delegate_to_peer", peer=B, title="Write calc.add with a test",
                description="calc.py and test_calc.py, the test passing", price=100),
                timeout=120)
            assert code == 0 and "[offered]" in out, out + err
            task_id = re.search(r"offered task (\w+) to entity-b for 100", out)
            assert task_id, out
            task = task_id.group(1)
            assert await money(a) == (400, 100)  # held before b was even asked
            told = [json.dumps(r.body) for r in llm.requests if r.body]
            assert any("ledger: 500 available, 0 held in escrow" in p for p in told)

            theirs = await wait_state(b, "in", ("working", "completed"), task_id=task)
            assert (theirs["price"], theirs["money"]) == (100, "held"), theirs
            mine = await wait_state(a, "out", ("delivered",), timeout=120, task_id=task)
            assert (mine["price"], mine["money"]) == (100, "held")

            code, out, err = await a.ctl("ask", call("accept_delivery", task=task))
            assert code == 0 and f"task {task}: 100 of 100 paid" in out, out + err
            assert await money(a) == (400, 0)
            await settles(b, "in", task, "posted")
            assert await money(b) == (100, 0)

            code, out, err = await a.ctl("ask", call("rate_peer", peer=B, task=task, score=5,
                                                     note="clean work"))
            assert code == 0 and "[done]" in out, out + err
            code, out, err = await b.ctl("rate", A, task, "4", "--note", "paid on time")
            assert code == 0, out + err
            code, out, err = await b.ctl("rate", A, task, "1")  # once per task
            assert code == 3 and out.startswith("duplicate_rating:"), out + err
            assert await a.ctl_json("reputation", B) == {
                "account": B, "score": 5.0, "tasks": 1, "weight": 100}
            assert await b.ctl_json("reputation", A) == {
                "account": A, "score": 4.0, "tasks": 1, "weight": 100}
            code, out, err = await a.ctl("ask", call("list_peers"))
            assert code == 0 and "rated 5.0/5 over 1 paid task(s)" in out, out + err
            code, out, err = await a.ctl("tasks", "accept", task)  # settled already
            assert code == 3 and "hold_resolved" in out, out + err
            for member in (a, b):
                code, out, err = await member.ctl("ledger", "verify")
                assert code == 0, out + err


async def test_a_rejected_delivery_and_a_missed_deadline_give_the_escrow_back(
        tmp_path: Path) -> None:
    slow = {"coder": 0.0}

    def script(request: dict[str, Any]) -> Reply:
        return route(request, coder_delay=slow["coder"])

    async with ScriptedLLMServer(script) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            await a_funded(fed, 200)
            a, b = fed[A], fed[B]
            code, out, err = await a.ctl("delegate", B, "Write calc.add with a test",
                                         "--price", "50", "--wait", timeout=150)
            assert code == 0, out + err
            task = (await a.ctl_json("tasks"))[0]["task_id"]
            assert await money(a) == (150, 50)
            code, out, err = await a.ctl("tasks", "reject", task, "--reason",
                                         "the test does not cover negatives")
            assert code == 0, out + err
            assert await money(a) == (200, 0)
            await settles(b, "in", task, "voided")
            assert await money(b) == (0, 0)
            code, out, err = await a.ctl("rate", B, task, "1")  # nothing was settled
            assert code == 3 and out.startswith("not_settled:"), out + err

            slow["coder"] = 3.0  # b's coder now takes ~9 s: past the deadline
            code, out, err = await a.ctl("delegate", B, "Write calc.add with a test",
                                         "--price", "30", "--deadline", "4s")
            assert code == 0, out + err
            late = out.split("offered task ")[1].split()[0]
            assert await money(a) == (170, 30)
            failed = await wait_state(a, "out", ("failed",), timeout=60, task_id=late)
            assert "deadline" in failed["note"], failed
            await settles(a, "out", late, "voided")
            assert await money(a) == (200, 0)
            await settles(b, "in", late, "voided")
            assert await money(b) == (0, 0)
            code, out, err = await a.ctl("tasks", "accept", late)  # too late to pay
            assert code == 3, out + err
            for member in (a, b):
                code, out, err = await member.ctl("ledger", "verify")
                assert code == 0, out + err


@pytest.mark.parametrize("price", [40, 0], ids=["priced", "unpaid"])
async def test_rejecting_a_task_before_its_delivery_stops_the_delegates_work(
        tmp_path: Path, price: int) -> None:
    """A task rejected while the delegate works on it is withdrawn: a priced one's escrow
    comes back (the delegate, told it was voided, stops), an unpaid one's delegate is told
    so; either way its turn stops (its answer says cancelled) and both sides show the task
    failed, withdrawn; nothing is delivered afterwards."""
    def script(request: dict[str, Any]) -> Reply:
        return route(request, coder_delay=3.0)  # b's coder takes ~9 s

    async with ScriptedLLMServer(script) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            await a_funded(fed, 100)
            a, b = fed[A], fed[B]
            async with EntityClient(config_mod.load(b.config)) as their_ctl, \
                    their_ctl.events() as events, asyncio.TaskGroup() as tg:
                watch = Watch()
                follower = tg.create_task(watch.follow(events))
                priced = ["--price", str(price)] if price else []
                code, out, err = await a.ctl("delegate", B, "Write calc.add with a test",
                                             *priced)
                assert code == 0, out + err
                task = out.split("offered task ")[1].split()[0]
                await wait_state(b, "in", ("working",), task_id=task)
                assert await money(a) == (100 - price, price)

                code, out, err = await a.ctl("tasks", "reject", task, "--reason",
                                             "not needed any more")
                assert code == 0, out + err
                assert await money(a) == (100, 0)
                theirs = await wait_state(b, "in", ("failed",), task_id=task)
                assert "withdrawn" in theirs["note"], theirs
                assert "not needed any more" in theirs["note"], theirs
                assert theirs["money"] == ("voided" if price else ""), theirs
                answer = await watch.answer(goal_of(A, task), 30)
                assert (answer["ok"], answer["stopped"]) == (False, "cancelled"), answer
                mine = await wait_state(a, "out", ("failed",), task_id=task)
                assert "withdrawn" in mine["note"], mine
                await asyncio.sleep(10)  # past when the coder would have finished
                mine = next(t for t in await a.ctl_json("tasks") if t["task_id"] == task)
                assert (mine["state"], mine["branch"]) == ("failed", ""), mine
                assert await money(b) == (0, 0)
                follower.cancel()
            for member in (a, b):
                code, out, err = await member.ctl("ledger", "verify")
                assert code == 0, out + err


async def offer(a: Member, b: Member, task_id: str, price: int, hold: bytes) -> None:
    """A TaskOffer from entity-a to entity-b put straight into b's INBOX, sealed with a's
    key as a's daemon would: a delegator that lies about its escrow."""
    record = TaskOffer(task_id, "Write calc.add", "for free, really", "", time.time() + 600,
                       [], price, hold)
    sealer = Sealer(identity.load(A, a.data).signing_key)
    subject = protocol.subjects.command(B, A, "delegate")
    wire, msg_id = sealer.seal(identity.read_public(b.data), src=f"{A}/peer",
                               dst=f"{B}/peer", subj=subject, message=record)
    nc = await nats.connect(a.url, inbox_prefix=f"_i.{A}")
    try:
        await nc.jetstream().publish(subject, wire, headers={"Nats-Msg-Id": msg_id.hex()})
    finally:
        await nc.close()


async def test_an_offer_its_escrow_does_not_cover_is_refused(tmp_path: Path) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            await a_funded(fed, 100)
            a, b = fed[A], fed[B]
            async with EntityClient(config_mod.load(a.config)) as client:
                small: LedgerResult = await client.ask("ledger", HoldPlace(
                    B, 10, int((time.time() + 600) * 1000), "short"), 30)
                other: LedgerResult = await client.ask("ledger", HoldPlace(
                    B, 90, int((time.time() + 600) * 1000), "another-task"), 30)
            assert small.ok and other.ok, (small, other)
            cases = {
                "nohold": (50, b"", "names no hold"),
                "madeup": (50, b"\x01" * 16, "no hold 0101"),
                "short": (50, bytes.fromhex(small.id), "less than the price"),
                "stolen": (50, bytes.fromhex(other.id), "not this one"),
            }
            for task_id, (price, hold, _) in cases.items():
                await offer(a, b, task_id, price, hold)
            for task_id, (_, _, says) in cases.items():
                refused = await wait_state(b, "in", ("rejected",), task_id=task_id)
                assert says in refused["note"] and refused["money"] == "", refused
            assert await money(b) == (0, 0)
            assert await money(a) == (0, 100)  # a's own holds, unspent: b did no work
