"""Attack review of the day's changes (ledger: messages "not the account's" ignored,
appends compare-and-set on the subject's last sequence; peer: an unpaid task withdrawn;
web: log out revoked for good), by a hostile member of the federation (its own key and
hub login: any bytes on `ledger.<self>`, and any JetStream request its permissions let
it send, with any reply subject, which the hub's JetStream then publishes on).

Each test asserts the safe behaviour, so it fails while the hole it names is open.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from pathlib import Path

import msgpack
import nats
import pytest

import protocol
from actors.ledger.messages import HoldPlace, HoldResolve, LedgerResult
from actors.peer.escrow import entry_id
from bench.rig import Federation
from entityd import config as config_mod
from entityd import federation
from entityd.client import EntityClient
from tests.helpers import (
    checkpoint_lines,
    funded,
    hostile_client,
    last_on,
    money,
    scripted_federation,
    stopped,
    stored_on,
)
from tests.peer_model import route

pytestmark = pytest.mark.timeout(120)
A, B = "entity-a", "entity-b"
# How b reads LEDGER (asking the hub's books reader, which direct-gets BOOKS' stream).
DIRECT_GET = protocol.subjects.ledger_read(B)


# ---- 1. the ledger: appends on a subject anyone can have JetStream write on ----------


async def pays_under_flood(fed: Federation, nc: nats.NATS, payments: int, *,
                           burst: int, pub_acks: bool, settle: float
                           ) -> tuple[int, list[tuple[int, str, str]]]:
    """entity-b (`nc`) keeps replies aimed at a's chain flowing, `burst` direct gets of its
    own junk a millisecond (and as many appends of junk to its own chain whose PubAck is
    aimed there, with `pub_acks`), while a pays b 1 credit `payments` times: how many
    b sent, and each payment's (code, stdout, stderr)."""
    stop = asyncio.Event()
    sent = 0

    async def flood() -> None:
        nonlocal sent
        js = nc.jetstream(domain=federation.HUB_DOMAIN, timeout=5)
        junk = await js.publish(protocol.subjects.ledger(B), b"not an entry")
        request = json.dumps({"seq": junk.seq}).encode()
        while not stop.is_set():
            for _ in range(burst):
                await nc.publish(DIRECT_GET, request, reply=protocol.subjects.ledger(A))
                sent += 1
                if pub_acks:
                    await nc.publish(protocol.subjects.ledger(B), b"junk",
                                     reply=protocol.subjects.ledger(A))
                    sent += 1
            await nc.flush()
            await asyncio.sleep(0.001)

    flooding = asyncio.create_task(flood())
    paid = []
    try:
        await asyncio.sleep(settle)
        for _ in range(payments):
            paid.append(await fed[A].ctl("pay", B, "1", timeout=60))
    finally:
        stop.set()
        await flooding
    return sent, paid


async def test_a_flood_of_replies_into_a_chain_does_not_starve_its_appends(
        tmp_path: Path) -> None:
    """The append's compare-and-set names the last stream sequence on `ledger.<self>`,
    ignored messages included (e9b4295). Any member can have the hub's JetStream store a
    message there (a direct get answered to the reply subject `ledger.entity-a`), as
    often as it likes: each one moves the subject's last sequence, so a's append fails
    its compare-and-set (ChainMoved), and after APPEND_ATTEMPTS (3) in a row a's payment
    is refused `unreachable`. entity-b keeps ~1,000 such replies a second flowing (two
    every millisecond, at most) while
    a pays 1 credit five times: most of them (often all) are refused, as long as b keeps
    it up (~500 replies a second is enough). The junk changes nothing on the chain; it
    should not decide whether a may append. (A flood faster than a reader reads, some
    thousands a second, makes a's catch-up itself never end: `pay` hangs.)"""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        assert await money(fed[A]) == (50, 0)  # a has read its chain once
        async with hostile_client(fed[B]) as nc:
            sent, paid = await pays_under_flood(fed, nc, 5, burst=2, pub_acks=False,
                                                settle=0.5)
        assert sent > 200, sent
        refused = [out + err for code, out, err in paid if code != 0]
        assert not refused, refused  # a can still spend its own money
        assert await money(fed[A]) == (45, 0)


async def test_replies_aimed_at_a_chain_never_land_on_it(tmp_path: Path) -> None:
    """The flood above, as fast as b can send it (the one the appender's patience could
    not outlast: thousands a second), by both vectors: b's appends to its own chain with
    the reply subject `ledger.entity-a` (the PubAck), and direct gets answered there. With
    LEDGER in the hub's BOOKS account, reached through FED's imports, JetStream's answers
    go back to the asker: nothing is stored on a's chain, and a pays as usual."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        assert await money(fed[A]) == (50, 0)
        async with hostile_client(fed[B]) as nc:
            before = await last_on(nc, A)
            sent, paid = await pays_under_flood(fed, nc, 3, burst=5, pub_acks=True, settle=1.0)
            landed = [data for _, data in await stored_on(nc, protocol.subjects.ledger(A),
                                                          before)]
        assert sent > 2000, sent
        refused = [out + err for code, out, err in paid if code != 0]
        assert not refused, refused
        assert await money(fed[A]) == (47, 0)
        # a's three payments, and nothing else, came after: no PubAck, no copy.
        assert len(landed) == 3, [wire[:60] for wire in landed]
        assert not [w for w in landed if w in (b"junk", b"not an entry") or w[:1] == b"{"]
        code, out, err = await fed[A].ctl("ledger", "verify")
        assert code == 0, out + err


async def test_an_id_another_member_can_foresee_is_not_taken_from_the_chain(
        tmp_path: Path) -> None:
    """An append carries Nats-Msg-Id = its entry id, and the LEDGER stream refuses a
    second message with one id for 120 s (duplicate_window) on ANY subject: the stream
    answers `duplicate` and LedgerStream.append takes that for 'our own earlier try was
    stored' (ChainMoved); the chain holds no such entry, so the next try is refused the
    same way, and after three a's entry is refused `unreachable`. The escrow's entry ids
    are foreseeable (escrow.entry_id: sha256 of step, delegator, delegate, task id), so
    the delegate entity-b, told the task id by the offer, stores one message on its own
    chain with the id of a's `void` (again every 2 minutes): a cannot void its hold, so
    it cannot withdraw the task and take its money back (nor post it, with the `post`
    id). The same holds for any entry whose id another member can know before it is
    appended (an id given with `pay --id`, say)."""
    task_id = "squatted"
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=100)
        async with EntityClient(config_mod.load(fed[A].config)) as client:
            held: LedgerResult = await client.ask("ledger", HoldPlace(
                B, 40, int((time.time() + 600) * 1000), task_id,
                entry_id("hold", A, B, task_id)), 30)
            assert held.ok, held
            async with hostile_client(fed[B]) as nc:
                js = nc.jetstream(domain=federation.HUB_DOMAIN, timeout=5)
                await js.publish(protocol.subjects.ledger(B), b"not an entry",
                                 headers={"Nats-Msg-Id": entry_id(
                                     "void", A, B, task_id).hex()})
            voided: LedgerResult = await client.ask("ledger", HoldResolve(
                entry_id("hold", A, B, task_id), 0, "withdrawn",
                entry_id("void", A, B, task_id)), 30)
        assert voided.ok, voided
        assert await money(fed[A]) == (100, 0)


async def test_a_message_of_an_unknown_key_on_a_chain_of_no_member_changes_nothing(
        tmp_path: Path) -> None:
    """An `unknown_key` on the chain of an account whose key the reader does not know
    stops that chain "until the reader learns the key" (16.3), and Chains counts it as a
    violation and sets unknown_signer. For an account that is no member (`ledger.nobody`)
    the key is never learnt: entity-b stores a message of a made-up key on its own
    chain (ignored there: b's key is known) and has a direct get answer it into
    `ledger.nobody`. From then on, for every member and for good: `ledger verify` exits
    with a violation, Chains.clean() is False so no checkpoint is written again (each
    restart replays every chain), and each read asks the peer actor for keys again. It is
    the junk of test_junk_on_a_members_own_chain_leaves_the_others_checkpoints_on, one
    subject over."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        await fed.discovered()
        a = fed[A]
        code, out, err = await a.ctl("pay", B, "5")
        assert code == 0, out + err
        stranger = msgpack.packb([1, os.urandom(32), b"\x80", os.urandom(64)],
                                 use_bin_type=True)
        async with hostile_client(fed[B]) as nc:
            js = nc.jetstream(domain=federation.HUB_DOMAIN, timeout=5)
            junk = await js.publish(protocol.subjects.ledger(B), stranger)
            await nc.publish(DIRECT_GET, json.dumps({"seq": junk.seq}).encode(),
                             reply=protocol.subjects.ledger("nobody"))
            await nc.flush()
            await asyncio.sleep(1.0)  # the hub answers at once; give it time to store
        assert await money(a) == (45, 0)  # a has read the junk
        code, out, err = await a.ctl("ledger", "verify")
        assert code == 0, out + err
        assert await stopped(a) == 0
        a.start()
        await a.ready()
        lines = checkpoint_lines(a)
        assert lines[-1]["used"] is True, lines[-1]
