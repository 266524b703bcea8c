"""Variants of the economy review's holes in paid delegation (tests/test_attack_review_economy.py
names the first of each): the escrow a priced offer must show, the delegator's word on
its escrow taken as a hint only, and a delegate's deliverable fetched within bounds."""

from __future__ import annotations

import asyncio
import hashlib
import time
from pathlib import Path
from typing import Any, cast

import nats
import pytest

import protocol
from actors.ledger.messages import HoldInfo, HoldResolve, LedgerResult
from actors.llm.scripted import Reply, ScriptedLLMServer
from actors.peer.deliverable import MAX_BYTES, Deliverables
from actors.peer.escrow import HELD, POSTED, VOIDED, Escrow, deadline_ms, entry_id
from actors.peer.link import FedLink
from actors.peer.messages import DeliverableChunk, DeliverableGet, TaskOffer, TaskUpdate
from actors.peer.store import TaskRow
from bench.rig import Member, build, running
from entityd import Context, identity
from entityd import config as config_mod
from entityd.client import EntityClient
from protocol import BadPayload, Sealer, kinds
from tests.helpers import wait_state
from tests.peer_model import route

A, B = "entity-a", "entity-b"
HOLD = b"\x07" * 16


# ---- the schema: no float that slips past a comparison ---------------------------------


@pytest.mark.parametrize("deadline", [float("nan"), float("inf"), float("-inf")])
def test_a_non_finite_float_is_a_bad_payload(deadline: float) -> None:
    payload = {"task_id": "t", "title": "x", "description": "y", "deadline": deadline,
               "price": 40, "hold": HOLD}
    with pytest.raises(BadPayload, match="finite"):
        kinds.decode("task_offer", payload)
    assert kinds.decode("task_offer", payload | {"deadline": 12}).deadline == 12.0


# ---- the escrow a priced offer must show ---------------------------------------------


class Ledger:
    """The ledger actor, as the escrow asks it: one hold on the delegator's chain."""

    def __init__(self, hold: HoldInfo) -> None:
        self.hold = hold
        self.asked = 0
        self.entity = B

    async def ask(self, to: str, message: object) -> HoldInfo:
        assert to == f"{B}/ledger"
        self.asked += 1
        return self.hold


def escrow(hold: HoldInfo) -> tuple[Escrow, Ledger]:
    ledger = Ledger(hold)
    return Escrow(cast(Context, ledger)), ledger


def held(expires_at: int, amount: int = 40, state: str = "pending", to: str = B,
         task: str = "t1") -> HoldInfo:
    return HoldInfo(True, A, to, amount, expires_at, task, state)


async def test_a_priced_offer_needs_a_future_deadline_its_hold_outlasts() -> None:
    deadline = time.time() + 600
    honest, _ = escrow(held(deadline_ms(deadline)))  # as Delegation.offer places it
    offer = TaskOffer("t1", "x", "y", "", deadline, [], 40, HOLD)
    assert await honest.check(A, offer) == ""

    short, _ = escrow(held(deadline_ms(deadline) - 1))
    assert "expires at" in await short.check(A, offer)
    for when in (0.0, time.time() - 5):  # none, or passed: no end for the hold to cover
        late, ledger = escrow(held(deadline_ms(deadline)))
        refused = await late.check(A, TaskOffer("t1", "x", "y", "", when, [], 40, HOLD))
        assert "no deadline in the future" in refused and ledger.asked == 0


async def test_the_escrow_standing_is_what_the_chain_says() -> None:
    later = deadline_ms(time.time() + 600)
    task = TaskRow("t1", "in", A, "x", "y", "", 0.0, [], "working", "", "", "", 0.0, 0.0,
                   40, HOLD, HELD)
    cases: list[tuple[HoldInfo, str, str]] = [
        (held(later), HELD, ""),
        (HoldInfo(True, A, B, 40, later, "t1", "posted", 25), POSTED, ""),
        (held(later, state="voided"), VOIDED, "the hold is voided"),
        (held(later, state="expired"), VOIDED, "the hold is expired"),
        (held(later, amount=39), VOIDED, "less than the price"),
        (held(later, task="other"), VOIDED, "not this one"),
        (HoldInfo(False), VOIDED, "no hold"),
    ]
    for hold, money, says in cases:
        standing, problem = await escrow(hold)[0].standing(task)
        assert standing == money and says in problem, (hold, standing, problem)


# ---- a delegate's deliverable, fetched within bounds -----------------------------------


class Delegate:
    """The delegate's side of `fetch`, serving `data` in pieces of its choosing."""

    def __init__(self, data: bytes, longer: int = 0) -> None:
        self.data = data
        self.longer = longer  # bytes beyond what is asked for, at each piece
        self.asks: list[DeliverableGet] = []

    async def ask(self, peer: str, op: str, get: DeliverableGet, timeout: float
                  ) -> DeliverableChunk:
        self.asks.append(get)
        return DeliverableChunk(self.data[get.offset:get.offset + get.length + self.longer])


def fetcher(delegate: Delegate) -> Deliverables:
    limits = config_mod.from_mapping({"entity": {"name": A}}).peers
    return Deliverables(cast(FedLink, delegate), 1024 * 1024, limits)


async def test_a_deliverable_is_fetched_in_the_pieces_asked_for() -> None:
    data = bytes(range(256)) * 4000  # 1,024,000 bytes: three full pieces and a part
    delegate = Delegate(data)
    got = await fetcher(delegate).fetch(B, "t1", len(data), hashlib.sha256(data).hexdigest())
    assert got == data
    piece = 256 * 1024
    assert [(g.offset, g.length) for g in delegate.asks] == [
        (0, piece), (piece, piece), (2 * piece, piece),
        (3 * piece, len(data) - 3 * piece)]  # the last: what is left, never past size

    with pytest.raises(ValueError, match="does not match"):
        await fetcher(Delegate(data)).fetch(B, "t1", len(data), "00" * 32)


@pytest.mark.parametrize("size", [MAX_BYTES + 1, 0, -5])
async def test_a_deliverable_of_an_impossible_size_is_not_fetched(size: int) -> None:
    delegate = Delegate(b"x")
    with pytest.raises(ValueError, match="a deliverable is 1 to"):
        await fetcher(delegate).fetch(B, "t1", size, "00" * 32)
    assert delegate.asks == []


async def test_a_piece_longer_than_asked_is_refused() -> None:
    data = b"y" * 1000
    delegate = Delegate(data + b"z", longer=1)  # within size until the last byte
    with pytest.raises(ValueError, match="asked for 1000"):
        await fetcher(delegate).fetch(B, "t1", len(data), hashlib.sha256(data).hexdigest())


# ---- the delegator's word on its escrow, against the chain -----------------------------


async def say(a: Member, b: Member, update: TaskUpdate) -> None:
    """A task update from entity-a straight into b's INBOX, sealed with a's key."""
    sealer = Sealer(identity.load(A, a.data).signing_key)
    subject = protocol.subjects.command(B, A, "task")
    wire, msg_id = sealer.seal(identity.read_public(b.data), src=f"{A}/peer",
                               dst=f"{B}/peer", subj=subject, message=update)
    nc = await nats.connect(a.url, inbox_prefix=f"_i.{A}")
    try:
        await nc.jetstream().publish(subject, wire, headers={"Nats-Msg-Id": msg_id.hex()})
    finally:
        await nc.close()


async def test_a_paid_word_is_checked_on_the_chain(tmp_path: Path) -> None:
    """`paid` for a hold still pending changes nothing; `paid` for a hold voided behind
    the delegate's back withdraws the task, and nothing of it is delivered."""

    def slow(request: dict[str, Any]) -> Reply:
        return route(request, coder_delay=2.0)  # b's coder takes ~8 s

    async with ScriptedLLMServer(slow) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            assert (await asyncio.to_thread(fed.economy, "init")).returncode == 0
            assert (await asyncio.to_thread(fed.economy, "mint", A, "100")).returncode == 0
            await fed.discovered()
            a, b = fed[A], fed[B]
            code, out, err = await a.ctl("delegate", B, "Write calc.add with a test",
                                         "--price", "40")
            assert code == 0, out + err
            task_id = out.split("offered task ")[1].split()[0]
            await wait_state(b, "in", ("working",), task_id=task_id, timeout=30)

            await say(a, b, TaskUpdate(task_id, "paid", "40 of 40 paid"))
            await asyncio.to_thread(b.daemon.wait_log, '"escrow_word_unfounded"', 30)
            theirs = await wait_state(b, "in", ("working",), task_id=task_id)
            assert theirs["money"] == "held", theirs

            async with EntityClient(config_mod.load(a.config)) as client:
                voided: LedgerResult = await client.ask("ledger", HoldResolve(
                    entry_id("hold", A, B, task_id), 0, "changed my mind"), 30)
            assert voided.ok, voided
            await say(a, b, TaskUpdate(task_id, "paid", "40 of 40 paid, again"))
            theirs = await wait_state(b, "in", ("failed",), task_id=task_id, timeout=30)
            assert "withdrawn" in theirs["note"] and "voided" in theirs["note"], theirs
            assert theirs["money"] == "voided", theirs
            mine = await wait_state(a, "out", ("failed",), task_id=task_id, timeout=30)
            assert mine["branch"] == "", mine
