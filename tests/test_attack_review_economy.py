"""Attack review of the economy: a hostile member of the federation (its own valid key
and hub login, any bytes on any subject the hub lets it publish) against the ledger, the
escrow of paid delegation and the delivery of delegated work.

Each test asserts the safe behaviour, so it fails while the hole it names is open.
"""

from __future__ import annotations

import asyncio
import json
import time
from pathlib import Path
from typing import Any

import msgpack
import nats
import nats.aio.msg
import nats.js.errors
import pytest

import protocol
from actors.ledger.messages import HoldPlace, HoldResolve, LedgerResult
from actors.llm.scripted import Reply
from actors.peer.acceptance import Acceptance
from actors.peer.deliverable import MAX_BYTES
from actors.peer.escrow import entry_id
from actors.peer.messages import DeliverableChunk, TaskOffer, TaskUpdate
from actors.workspace import Workspace
from bench.rig import Member, leaf_server
from entityd import config as config_mod
from entityd import federation, identity
from entityd.client import EntityClient
from protocol import Sealer
from tests.helpers import (
    checkpoint_lines,
    command_into_inbox,
    funded,
    hostile_client,
    money,
    poll,
    scripted_federation,
    stopped,
    task_by_id,
    wait_state,
)
from tests.peer_model import TEST_CALC, route
from tests.test_tool_actor import SANDBOX

pytestmark = pytest.mark.timeout(120)
A, B = "entity-a", "entity-b"
# How b reads LEDGER (asking the hub's books reader, which direct-gets BOOKS' stream).
DIRECT_GET = protocol.subjects.ledger_read(B)


# ---- the ledger: another member's chain ----------------------------------------------


@pytest.mark.parametrize("vector", ["direct_get", "pub_ack"])
async def test_a_reply_into_anothers_chain_does_not_freeze_it(
        tmp_path: Path, vector: str) -> None:
    """entity-b may publish a direct get of the LEDGER stream, and NATS lets the request
    name any reply subject: the hub's JetStream then publishes the stored message on
    `ledger.entity-a`, and the LEDGER stream (subjects ledger.>) stores it as the next
    entry of a's chain, past the hub's rule that only a writes there. b first stores junk
    on its own chain (no compare-and-set header: the copy must carry none), then has it
    answered into a's chain. Every reader then stops a's chain at the junk: a's money is
    frozen (a can append nothing more) and `ledger verify` fails for everyone.
    `pub_ack`: the same with no direct get at all: b appends to its own chain with the
    reply subject `ledger.entity-a`, and the stream's PubAck (JSON) is stored there."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        async with hostile_client(fed[B]) as nc:
            if vector == "direct_get":
                js = nc.jetstream(domain=federation.HUB_DOMAIN, timeout=5)
                junk = await js.publish(protocol.subjects.ledger(B), b"not an entry")
                await nc.publish(DIRECT_GET, json.dumps({"seq": junk.seq}).encode(),
                                 reply=protocol.subjects.ledger(A))
            else:
                await nc.publish(protocol.subjects.ledger(B), b"not an entry",
                                 reply=protocol.subjects.ledger(A))
            await nc.flush()
            await asyncio.sleep(1.0)  # the hub answers at once; give it time to store
        code, out, err = await fed[A].ctl("pay", B, "5")
        assert code == 0, out + err  # a can still spend its own money
        assert await money(fed[A]) == (45, 0)
        code, out, err = await fed[A].ctl("ledger", "verify")
        assert code == 0, out + err


async def test_the_ledger_stream_refuses_an_entry_no_reader_would_take(
        tmp_path: Path) -> None:
    """The LEDGER stream is kept for ever (no delete, no purge) and has no limit of its
    own: a member may store on its chain messages up to the hub's max_payload (2 MB),
    as many as it likes, which fill the hub's disk and which every reader downloads in
    batches of 256 direct gets with no max_bytes (up to ~4 batches, 2 GB, in memory at
    once in a replay). No entry is larger than protocol.MAX_WIRE_BYTES; a bigger one
    should never be stored."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed)
        async with hostile_client(fed[B]) as nc:
            js = nc.jetstream(domain=federation.HUB_DOMAIN, timeout=5)
            big = b"\x00" * (protocol.MAX_WIRE_BYTES + 512 * 1024)
            with pytest.raises(nats.js.errors.APIError):
                await js.publish(protocol.subjects.ledger(B), big)


# ---- the escrow of paid delegation ---------------------------------------------------


async def offer(a: Member, b: Member, task_id: str, price: int, hold: bytes,
                deadline: float) -> None:
    """A TaskOffer from entity-a straight into b's INBOX, sealed with a's key: a hostile
    delegator choosing every field."""
    record = TaskOffer(task_id, "Write calc.add", "with a test", "", deadline, [], price, hold)
    await command_into_inbox(a, b, "delegate", record)


async def test_a_priced_offer_without_a_deadline_is_checked_against_its_holds_expiry(
        tmp_path: Path) -> None:
    """Escrow.check compares the hold's expires_at with the offer's deadline only when
    the offer has one: a priced offer with deadline 0 ("none") backed by a hold that
    expires in a few seconds is taken, and the delegate works for money that is gone
    (released to the delegator by the deadline) before it can deliver."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=100)
        await fed.discovered()
        a, b = fed[A], fed[B]
        async with EntityClient(config_mod.load(a.config)) as client:
            held: LedgerResult = await client.ask("ledger", HoldPlace(
                B, 40, int((time.time() + 4) * 1000), "nodeadline"), 30)
        assert held.ok, held
        await offer(a, b, "nodeadline", 40, bytes.fromhex(held.id), deadline=0.0)
        task = await poll(lambda: task_by_id(b, "in", "nodeadline"), timeout=30,
                          what="b recording the offer")
        assert task["state"] == "rejected", task


# ---- delivered work ------------------------------------------------------------------


async def test_a_delegate_cannot_make_the_delegator_fetch_an_unbounded_deliverable(
        tmp_path: Path) -> None:
    """A delegate's `completed` update may say its deliverable is `size` bytes, kept for
    fetching; Deliverables.fetch then asks for pieces until it has `size` bytes, keeping
    every piece in memory, with no bound on `size` (the delegate side packs at most
    MAX_BYTES = 64 MB) nor on a piece (asked for 256 KB, any length is taken). entity-b,
    given an unpaid task, answers `size` = 2^40 and ~900 KB pieces: entity-a's daemon
    buffers whatever b sends until it runs out of memory."""

    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await fed.discovered()  # a pins b's key
        a, b = fed[A], fed[B]
        # b's operator swaps its daemon for a raw client on the same hub login.
        assert await stopped(b) == 0
        leaf = leaf_server(B, b.data, f"nats-leaf://127.0.0.1:{fed.leaf_port}",
                           federation.seed_path(b.data))
        await asyncio.to_thread(leaf.start)
        b_key = identity.load(B, b.data).signing_key
        a_pub = identity.read_public(a.data)
        sealer = Sealer(b_key)
        served = 0
        piece = b"x" * (900 * 1024)
        nc = await nats.connect(leaf.url, inbox_prefix=f"_i.{B}")
        try:
            async def fetch(msg: nats.aio.msg.Msg) -> None:
                nonlocal served
                if served > MAX_BYTES + 8 * len(piece):
                    return  # enough shown: let a's ask time out
                _, _, body, _ = msgpack.unpackb(msg.data, raw=False)
                request_id = msgpack.unpackb(body, raw=False)["id"]
                wire, _ = sealer.seal(a_pub, src=f"{B}/peer", dst=f"{A}/peer",
                                      subj=msg.reply, message=DeliverableChunk(piece),
                                      corr=request_id)
                served += len(piece)
                await nc.publish(msg.reply, wire)

            await nc.subscribe(protocol.subjects.request(B, A, "fetch"), cb=fetch)
            await nc.flush()
            await asyncio.sleep(0.5)  # the subscription's interest reaches the hub
            code, out, err = await a.ctl("delegate", B, "Write calc.add with a test")
            assert code == 0, out + err
            task_id = out.split("offered task ")[1].split()[0]
            subject = protocol.subjects.command(A, B, "task")
            wire, msg_id = sealer.seal(a_pub, src=f"{B}/peer", dst=f"{A}/peer",
                                       subj=subject, message=TaskUpdate(
                                           task_id, "completed", "done", b"", 1,
                                           2**40, "00" * 32))
            await nc.publish(subject, wire, headers={"Nats-Msg-Id": msg_id.hex()})

            async def over() -> dict[str, Any] | None:
                if served > MAX_BYTES + 4 * len(piece):
                    return {"state": "still fetching", "served": served}
                tasks = await a.ctl_json("tasks")
                mine = next(t for t in tasks if t["task_id"] == task_id)
                return mine if mine["state"] in ("failed", "delivered") else None

            outcome = await poll(over, timeout=60, what="a fetching or failing")
            assert served <= MAX_BYTES, f"a took {served} bytes of a deliverable"
            assert outcome["state"] == "failed", outcome
        finally:
            await nc.close()
            await asyncio.to_thread(leaf.stop)


async def test_a_delegate_delivers_nothing_for_an_escrow_voided_behind_its_back(
        tmp_path: Path) -> None:
    """The delegate checks the escrow once, when it takes the offer, and afterwards
    trusts the delegator to say `unpaid` when it voids it. entity-a offers a priced task
    as its daemon does, then voids the hold straight through its ledger actor and says
    nothing: b works on, delivers, and a keeps the code, having paid nothing. b can read
    a's chain: it should see the void before it hands over the work."""

    def slow(request: dict[str, Any]) -> Reply:
        return route(request, coder_delay=1.5)  # b's coder takes ~6 s

    async with scripted_federation(tmp_path, [A, B], slow) as fed:
        await funded(fed, entity_a=100)
        await fed.discovered()
        a, b = fed[A], fed[B]
        code, out, err = await a.ctl("delegate", B, "Write calc.add with a test",
                                     "--price", "40")
        assert code == 0, out + err
        task_id = out.split("offered task ")[1].split()[0]
        await wait_state(b, "in", ("working",), task_id=task_id, timeout=30)
        async with EntityClient(config_mod.load(a.config)) as client:
            voided: LedgerResult = await client.ask("ledger", HoldResolve(
                entry_id("hold", A, B, task_id), 0, "changed my mind"), 30)
        assert voided.ok, voided
        assert await money(a) == (100, 0)
        theirs = await wait_state(b, "in", ("completed", "failed"), task_id=task_id,
                                  timeout=40)
        mine = await wait_state(a, "out", ("delivered", "failed", "working"),
                                task_id=task_id, timeout=20)
        assert (theirs["state"], mine["branch"]) == ("failed", ""), (theirs, mine)


async def test_a_delivery_that_only_shadows_the_test_runner_is_not_paid_by_itself(
        tmp_path: Path) -> None:
    """With `economy.auto_accept`, the accept command (here the README's example,
    `python3 -m unittest`) runs on the delivered branch: the delegator's HEAD plus the
    delegate's commits, so the delegate chooses every file the command sees. A delivery
    of one file, `unittest.py` (`-m` puts the checkout first on sys.path), makes the
    command exit 0 whatever the delegator's own test (here: calc.add, never written)
    says, and the escrow pays the full price for nothing."""

    config = config_mod.from_mapping({
        "entity": {"name": A, "data_dir": str(tmp_path / A)},
        "economy": {"auto_accept": True, "accept_command": "python3 -m unittest",
                    "accept_timeout": 20.0}})
    mine = Workspace(config.workspace_dir, A, SANDBOX)
    await mine.ensure()
    (mine.path / "test_calc.py").write_text(TEST_CALC)  # the delegator's own test
    assert await mine.commit("the test calc.add must pass") is not None
    honest = await Acceptance(config, mine).check("HEAD")
    assert not honest.passed, honest  # no calc.py: the test fails, as it should

    theirs = Workspace(tmp_path / "b", B, SANDBOX)
    await theirs.ensure()
    (theirs.path / "unittest.py").write_text("raise SystemExit(0)\n")
    commit = await theirs.commit("calc.add, done")
    assert commit is not None
    await mine.land("delegated/t1", await theirs.format_patch([commit.sha]))
    verdict = await Acceptance(config, mine).check("delegated/t1")
    assert not verdict.passed, verdict


async def test_junk_on_a_members_own_chain_leaves_the_others_checkpoints_on(
        tmp_path: Path) -> None:
    """A reader writes its checkpoint only while every entry it read counted
    (Chains.clean): one message on entity-b's own chain that no reader takes (b may
    publish anything on ledger.entity-b, and the stream keeps it for ever) turns every
    other member's checkpoint off for good, so each of their restarts replays every
    chain from the start."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        await fed.discovered()
        a = fed[A]
        code, out, err = await a.ctl("pay", B, "5")
        assert code == 0, out + err
        async with hostile_client(fed[B]) as nc:
            js = nc.jetstream(domain=federation.HUB_DOMAIN, timeout=5)
            await js.publish(protocol.subjects.ledger(B), b"not an entry")
        assert await money(a) == (45, 0)  # a has read the junk
        assert await stopped(a) == 0
        a.start()
        await a.ready()
        lines = checkpoint_lines(a)
        assert lines[-1]["used"] is True, lines[-1]
