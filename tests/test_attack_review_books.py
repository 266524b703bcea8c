"""Attack review of the BOOKS account (LEDGER in an account of its own: members append
through the `ledger.*` service import and read through the hub's books reader on
`ledger_read.<self>`; readers falling back to the older routes when the reader has no
responder) and of Transport.ask's own reply inbox, by a hostile member: its own hub
login and key, any bytes on any subject its permissions let it publish, with any
headers and any reply subject.

Each test asserts the safe behaviour; a hole still open is a strict xfail naming it.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections.abc import Callable
from pathlib import Path

import nats
import nats.aio.msg
import pytest

import protocol
from bench.ports import free_port
from bench.rig import Federation
from entityd import federation
from tests.helpers import (
    funded,
    hostile_client,
    money,
    monitor,
    scripted_federation,
    stored_on,
)
from tests.peer_model import route

pytestmark = pytest.mark.timeout(180)
A, B = "entity-a", "entity-b"
READ_B = protocol.subjects.ledger_read(B)  # b's reads, through the hub's books reader
OLD_GET = protocol.subjects.LEDGER_GET  # a direct get import of hubs before the reader
LEGACY_GET = f"$JS.{federation.HUB_DOMAIN}.API.DIRECT.GET.LEDGER"  # LEDGER in FED


def monitored(port: int) -> Callable[[Federation], None]:
    """The hub's monitoring `port`, added to the config `build` wrote (before it starts)."""
    def add(fed: Federation) -> None:
        conf = fed.root / "hub.conf"
        conf.write_text(f'http: "127.0.0.1:{port}"\n' + conf.read_text())
    return add


async def verified(fed: Federation, name: str, entries: str) -> None:
    code, out, err = await fed[name].ctl("ledger", "verify")
    assert code == 0 and out.startswith(f"ok: {entries}"), out + err


# ---- 1. the `ledger.*` import: headers and reply subjects ------------------------------


async def test_stream_headers_through_the_import_touch_no_other_chain(tmp_path: Path) -> None:
    """b appends to its own chain (all its permissions allow) with every header that makes
    JetStream do more than store: rollups (sub, all: would purge a's chain with it),
    per-message TTL, atomic batches, schedules aimed at a's chain, counters, purge markers,
    a compare-and-set against a's chain. Held: the LEDGER config refuses each feature
    (rollup not permitted, TTL / atomic / schedules / counters disabled), the rest store
    junk on b's own chain only; a's chain is whole, a pays, verify passes."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        async with hostile_client(fed[B]) as nc:
            refused = {}
            for headers in [
                {"Nats-Rollup": "all"}, {"Nats-Rollup": "sub"}, {"Nats-TTL": "1s"},
                {"Nats-Batch-Id": "x", "Nats-Batch-Sequence": "1"},
                {"Nats-Schedule": "@at 2030-01-01T00:00:00Z",
                 "Nats-Schedule-Target": protocol.subjects.ledger(A)},
                {"Nats-Incr": "1"},
            ]:
                ack = json.loads((await nc.request(protocol.subjects.ledger(B), b"junk",
                                                   headers=headers, timeout=5)).data)
                refused[next(iter(headers))] = ack.get("error", {}).get("description")
            assert all(refused.values()), refused
            for headers in [
                {"Nats-Marker-Reason": "Purge"},
                {"Nats-Expected-Last-Subject-Sequence-Subject": protocol.subjects.ledger(A),
                 "Nats-Expected-Last-Subject-Sequence": "1"},
            ]:
                await nc.request(protocol.subjects.ledger(B), b"junk", headers=headers,
                                 timeout=5)
            assert len(await stored_on(nc, protocol.subjects.ledger(A))) == 1  # the mint
        code, out, err = await fed[A].ctl("pay", B, "5")
        assert code == 0, out + err
        assert await money(fed[A]) == (45, 0)
        await verified(fed, A, "2 entries on 2 chains, 50 minted")


async def test_answers_aimed_at_an_import_or_the_api_land_nowhere(tmp_path: Path) -> None:
    """b asks the import and the reader (an append to its chain; single, batched and
    multi-last reads) naming as reply subject the import (`ledger.entity-a`), the old
    `ledger_get`, FED's old JetStream API, BOOKS' own API subject, a's read subject: a
    reply that re-entered an import would be stored on a's chain or become a request of
    b's making. Held: service answers are not routed through imports again, the reader
    answers only into b's own inbox; only b's own appends are stored (on b's chain)."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        async with hostile_client(fed[B]) as nc:
            replies = [protocol.subjects.ledger(A), OLD_GET, LEGACY_GET,
                       "$JS.API.DIRECT.GET.LEDGER", protocol.subjects.ledger_read(A)]
            for reply in replies:
                await nc.publish(protocol.subjects.ledger(B),
                                 json.dumps({"seq": 1}).encode(), reply=reply)
                for ask in ({"seq": 1}, {"seq": 1, "batch": 3},
                            {"multi_last": ["ledger.>"], "batch": 10}):
                    await nc.publish(READ_B, json.dumps(ask).encode(), reply=reply)
            await nc.flush()
            await asyncio.sleep(1.0)
            assert len(await stored_on(nc, protocol.subjects.ledger(A))) == 1
            assert len(await stored_on(nc, "ledger.>")) == 1 + len(replies)
        code, out, err = await fed[A].ctl("pay", B, "5")
        assert code == 0, out + err
        await verified(fed, A, "2 entries on 2 chains, 50 minted")


# ---- 2. the reader's routes and inboxes ---------------------------------------------


def _fake_answers(seq: int, data: bytes) -> list[tuple[bytes, dict[str, str]]]:
    """What b would have a's reader take: a stored entry, and each status that ends or
    fails a read (end of batch with nothing pending, nothing more, no responders)."""
    return [
        (data, {"Nats-Sequence": str(seq), "Nats-Subject": protocol.subjects.ledger(A)}),
        (b"", {"Status": "204", "Nats-Num-Pending": "0"}),
        (b"", {"Status": "404"}),
        (b"", {"Status": "503"}),
    ]


async def test_a_member_who_knows_the_inbox_prefixes_cannot_answer_for_the_stream(
        tmp_path: Path) -> None:
    """b learns a's reply inboxes from the interest the hub propagates (here from the
    hub's /leafz; b's own leaf sees the same subscriptions): the ledger reader's
    `_i.entity-a.<hex>.*`, the peer replies', Transport.ask's `_i.entity-a.<nuid>.*`. It
    floods each with fake direct-get answers (a stored entry with a made-up sequence, an
    end of batch with Nats-Num-Pending 0, a 404 that would end a replay early, a 503 that
    would switch the reader to the legacy route) under random tokens, and subscribes as a
    responder on both read routes, while a pays and reads. Held: the last token of each
    inbox is 128 random bits (the reader's, the envelope id for asks) that never leave a's
    leaf and the hub; b's subscriptions to the read routes (a's `ledger_read`, every
    member's, the old `ledger_get`, the legacy API) are refused."""
    port = free_port()
    async with scripted_federation(tmp_path, [A, B], route, prepare=monitored(port)) as fed:
        await funded(fed, entity_a=50, entity_b=10)
        leafz = await monitor(port, "/leafz?subs=1")
        seen = {sub for leaf in leafz["leafs"] for sub in leaf.get("subscriptions_list") or []}
        prefixes = sorted({sub[:-2] for sub in seen
                           if re.fullmatch(rf"_i\.{A}\.[^.>*]+\.\*", sub)})
        assert len(prefixes) >= 2, seen  # the reader's, the replies' (and asks')
        overheard: list[str] = []
        async with hostile_client(fed[B]) as nc:
            async def answer(msg: nats.aio.msg.Msg) -> None:
                if msg.reply.startswith(f"_i.{A}."):  # a's read (b's own stay on its leaf)
                    overheard.append(msg.reply)

            for subject in (protocol.subjects.ledger_read(A),
                            protocol.subjects.ledger_read("*"), OLD_GET, LEGACY_GET):
                await nc.subscribe(subject, cb=answer)
            mint = (await stored_on(nc, protocol.subjects.ledger(B)))[0]
            stop = asyncio.Event()
            sent = 0

            async def flood() -> None:
                nonlocal sent
                while not stop.is_set():
                    for prefix in prefixes:
                        for data, headers in _fake_answers(mint[0] + 1000, mint[1]):
                            await nc.publish(f"{prefix}.{secrets.token_hex(16)}", data,
                                             headers=headers)
                            sent += 1
                    await nc.flush()
                    await asyncio.sleep(0.002)

            flooding = asyncio.create_task(flood())
            try:
                for _ in range(3):
                    code, out, err = await fed[A].ctl("pay", B, "1")
                    assert code == 0, out + err
                assert await money(fed[A], B) == (13, 0)
            finally:
                stop.set()
                await flooding
        assert sent > 500, sent
        assert not overheard, overheard
        assert await money(fed[A]) == (47, 0)
        await verified(fed, A, "5 entries on 2 chains, 60 minted")


# ---- 3. the old layout: nothing a member does makes the hub fall back to it ----------


async def test_a_member_cannot_make_the_hub_take_the_old_layout(tmp_path: Path) -> None:
    """`ledger_in_fed` keeps LEDGER in FED (the reply flood open again) when the hub's
    store holds `jetstream/FED/streams/LEDGER`. b asks the hub to make that stream in FED
    through the hub's JetStream domain. Held: FED has no
    JetStream in the new layout and b's permissions allow no stream create; the store
    holds no FED stream, and the hub rendered again keeps BOOKS."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        config = json.dumps({"name": "LEDGER", "subjects": ["ledger.>"]}).encode()
        async with hostile_client(fed[B]) as nc:
            # (the bare $JS.API is b's own leaf's JetStream, not the hub's)
            for op in ("STREAM.CREATE.LEDGER", "STREAM.CREATE.X", "STREAM.LIST"):
                with pytest.raises((nats.errors.NoRespondersError,
                                    nats.errors.TimeoutError)):
                    await nc.request(f"$JS.{federation.HUB_DOMAIN}.API.{op}", config,
                                     timeout=2)
        store = tmp_path / "hub-store"
        assert not federation.ledger_in_fed(store)
        again = federation.render_hub_conf([], store_dir=store, leaf_host="127.0.0.1")
        assert federation.BOOKS_ACCOUNT in again


# ---- 4. the hub's work for one member ------------------------------------------------


async def test_a_flood_of_reads_costs_the_hub_and_the_others_nothing(tmp_path: Path) -> None:
    """b asks for reads on `ledger_read.entity-b` as fast as its link takes them, for 15 s:
    batches of its chain into its own inbox (real work for the hub), and asks naming a
    reply subject nobody listens on. Before the books reader (direct gets through a
    service import), such a flood left 100,000+ response maps in BOOKS and a backlog in
    JetStream's direct-get queue (unbounded for asks arriving over a leafnode): ~2.4
    million asks in 20 s took the hub's RSS from 18 MB to 550 MB and every member's reads
    to 1-2 s. Held now: the reader stops listening to b once it is over its budget (b's
    asks then end at its own leaf), the hub grows by a few MB at most and holds no
    response map, and a's reads during and after the flood are each answered at once."""
    port = free_port()
    async with scripted_federation(tmp_path, [A, B], route, prepare=monitored(port)) as fed:
        await funded(fed, entity_a=50, entity_b=10)
        before = (await monitor(port, "/varz"))["mem"]
        async with hostile_client(fed[B]) as nc, hostile_client(fed[A]) as victim:
            mine = json.dumps({"seq": 1, "next_by_subj": "ledger.>", "batch": 256}).encode()
            read_a = protocol.subjects.ledger_read(A)
            ask = json.dumps({"seq": 1}).encode()
            stop = asyncio.Event()
            sent = 0

            async def flood() -> None:
                nonlocal sent
                inbox = nc.new_inbox()
                while not stop.is_set():
                    for i in range(1000):
                        await nc.publish(READ_B, mine if i % 2 else ask,
                                         reply=inbox if i % 2 else "_i.nobody.x")
                    sent += 1000
                    await nc.flush()

            flooding = asyncio.create_task(flood())
            waits = []
            try:
                began = time.monotonic()
                while time.monotonic() - began < 15:
                    asked = time.monotonic()
                    answer = await victim.request(read_a, ask, timeout=10)
                    waits.append(time.monotonic() - asked)
                    assert (answer.headers or {}).get("Nats-Sequence") == "1", answer.headers
                    await asyncio.sleep(0.2)
                peak = (await monitor(port, "/varz"))["mem"]
            finally:
                stop.set()
                await flooding
            await asyncio.sleep(2)
            asked = time.monotonic()
            await victim.request(read_a, ask, timeout=10)
            after = time.monotonic() - asked
            books = await monitor(port, "/accountz?acc=BOOKS")
        held = len(books["account_detail"].get("responses") or {})
        log = (tmp_path / f"{federation.READER}.log").read_text()
        print("FIGS", sent, (peak - before) / 2**20, held, sorted(waits)[-5:], len(waits), after)
        assert sent > 50_000, sent
        assert '"member": "entity-b"' in log and "ledger_reads_paused" in log, log[-2000:]
        assert '"member": "entity-a"' not in log, log[-2000:]
        grown = (peak - before) / 2**20
        assert held == 0 and grown < 100, (held, grown)
        assert max(waits) < 1.0 and after < 1.0, (sorted(waits)[-5:], after)
