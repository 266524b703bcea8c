"""The hub's books reader (entityd/books_reader.py): which asks it forwards, the budget it
keeps per member, and, through a real federation (hub, reader, two daemons), that it
answers only into the asker's inbox, stops listening to a member over its budget and
no other, and that members read again once a killed reader is back."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import nats.errors
import pytest

from actors.ledger.stream import SUBJECTS, _batch_after
from entityd import books_reader, federation
from entityd.books_reader import BadAsk, Budget, checked
from protocol import subjects
from tests.helpers import funded, hostile_client, money, poll, scripted_federation
from tests.peer_model import route

A, B = "entity-a", "entity-b"


# ---- the asks it forwards ----------------------------------------------------------------

@pytest.mark.parametrize("ask", [
    {"seq": 7},
    {"last_by_subj": "ledger.entity-a"},
    _batch_after(41, SUBJECTS),
    _batch_after(0, subjects.ledger(A)),
])
def test_the_reads_a_members_ledger_makes_are_forwarded_as_they_are(ask: dict) -> None:
    assert checked(json.dumps(ask).encode()) == ask


def test_a_batch_is_bounded_whatever_it_asks() -> None:
    ask = checked(json.dumps({"seq": 1, "next_by_subj": "ledger.>", "batch": 10**9,
                              "max_bytes": 2**40}).encode())
    assert (ask["batch"], ask["max_bytes"]) == (books_reader.MAX_BATCH, books_reader.MAX_BYTES)
    assert checked(b'{"seq": 1, "next_by_subj": "ledger.>"}')["max_bytes"] == 2**20


@pytest.mark.parametrize(("data", "why"), [
    (b"not json", "not JSON"),
    (b"[1, 2]", "names only"),
    (b"{}", "names only"),
    (json.dumps({"seq": 1, "pad": "x" * 600}).encode(), "bytes"),
    (b'{"seq": 1, "multi_last": ["ledger.>"]}', "names only"),
    (b'{"seq": 1, "start_time": "2020-01-01T00:00:00Z"}', "names only"),
    (b'{"seq": 0}', "positive"),
    (b'{"seq": true}', "positive"),
    (b'{"seq": "1"}', "positive"),
    (b'{"last_by_subj": "fed.evt.>"}', "ledger.>"),
    (b'{"last_by_subj": "ledger.a.b"}', "ledger.>"),
    (b'{"last_by_subj": "ledger.*"}', "ledger.>"),
    (b'{"seq": 1, "next_by_subj": "$JS.API.>"}', "ledger.>"),
    (b'{"last_by_subj": "ledger.a", "seq": 1}', "alone"),
    (b'{"batch": 5}', "a seq or"),
    (b'{"seq": 1, "max_bytes": 5}', "with a batch"),
])
def test_anything_else_is_refused_with_its_reason(data: bytes, why: str) -> None:
    with pytest.raises(BadAsk, match=why):
        checked(data)


def test_the_budget_refills_at_its_rate_up_to_its_burst_and_answers_may_overdraw_it() -> None:
    budget = Budget(rate=10.0, burst=3.0, tokens=3.0, at=0.0)
    assert [budget.take(0.0) for _ in range(4)] == [True, True, True, False]
    assert budget.take(0.1) and not budget.take(0.1)  # one refilled in 0.1 s
    assert [budget.take(100.0) for _ in range(4)] == [True, True, True, False]  # burst 3
    budget.spend(5)  # a large answer
    assert budget.tokens < 0 and not budget.take(100.2)
    assert budget.refilled_in() == pytest.approx((0.3 - budget.tokens) / 10)


def test_only_the_servers_own_headers_are_read_and_forwarded() -> None:
    """A stored message's headers come first, the server's last: a `Status`, a name
    nats-py would not publish, a Nats-Sequence of the member's choosing and thousands of
    names stay behind; an entry goes on with its four headers, an end with its status."""
    stored = (b"Status: 404\r\nBad(Key: v\r\nNats-Sequence: 999\r\n"
              + b"".join(b"X-%d: y\r\n" % i for i in range(4000)))
    server = (b"Nats-Stream: LEDGER\r\nNats-Subject: ledger.entity-b\r\n"
              b"Nats-Sequence: 7\r\nNats-Time-Stamp: 2026-12-06T00:00:00Z\r\n"
              b"Nats-Num-Pending: 3\r\n\r\n")
    headers = books_reader.ServerHeaders._parse_header_lines(stored + server)
    assert headers["Nats-Sequence"] == "7" and headers["Status"] == "404"
    assert books_reader.forwarded(headers) == {
        "Nats-Stream": "LEDGER", "Nats-Subject": "ledger.entity-b", "Nats-Sequence": "7",
        "Nats-Time-Stamp": "2026-12-06T00:00:00Z"}
    end = {"Status": "204", "Description": "EOB", "Nats-Num-Pending": "0",
           "Nats-Last-Sequence": "7"}
    assert books_reader.forwarded(end | {"X-Other": "1"}) == end


def test_only_literal_subjects_are_answered() -> None:
    assert subjects.literal("_i.entity-b.abc.1")
    for wild in ("_i.entity-b.>", "_i.entity-b.*", "_i.entity-b..x", "_i.*.x"):
        assert not subjects.literal(wild)


# ---- through a federation -----------------------------------------------------------------

async def test_answers_go_only_into_the_askers_inbox_and_bad_asks_get_their_reason(
        tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        async with hostile_client(fed[A]) as a, hostile_client(fed[B]) as b:
            trap = await a.subscribe(f"_i.{A}.trap.>")
            ask = json.dumps({"seq": 1}).encode()
            for reply in (f"_i.{A}.trap.1", f"_i.{B}.>", subjects.ledger(A), "_i.x.y"):
                await b.publish(subjects.ledger_read(B), ask, reply=reply)
            # b may not ask on a's line: the hub drops it.
            await b.publish(subjects.ledger_read(A), ask, reply=f"_i.{A}.trap.2")
            own = await b.request(subjects.ledger_read(B), ask, timeout=5)
            assert own.headers and own.headers["Nats-Sequence"] == "1", own.headers
            bad = await b.request(subjects.ledger_read(B), b'{"seq": 1, "x": 2}', timeout=5)
            assert bad.headers and bad.headers["Status"] == "400", bad.headers
            assert "names only" in bad.headers["Description"]
            with pytest.raises(nats.errors.TimeoutError):
                await trap.next_msg(timeout=1.0)
        assert await money(fed[A]) == (50, 0)


async def test_a_member_over_its_budget_is_not_listened_to_for_a_while_and_no_other(
        tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        async with hostile_client(fed[A]) as a, hostile_client(fed[B]) as b:
            ask = json.dumps({"seq": 1}).encode()
            inbox = b.new_inbox()
            for _ in range(3 * int(books_reader.BUDGET_BURST)):
                await b.publish(subjects.ledger_read(B), ask, reply=inbox)
            await b.flush()

            log = tmp_path / f"{federation.READER}.log"
            await poll(lambda: '"ledger_reads_paused"' in log.read_text(), timeout=10,
                       what="the reader pausing b")
            answered = await a.request(subjects.ledger_read(A), ask, timeout=5)
            assert answered.headers and answered.headers["Nats-Sequence"] == "1"

            async def served() -> bool:
                try:
                    await b.request(subjects.ledger_read(B), ask, timeout=1)
                except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                    return False
                return True

            await poll(served, timeout=15, every=0.5, what="b served again")
        said = log.read_text()
        assert f'"member": "{B}"' in said and f'"member": "{A}"' not in said, said[-2000:]


async def test_members_read_again_once_a_killed_reader_is_back(tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await funded(fed, entity_a=50)
        assert fed.reader is not None
        fed.reader.kill()
        async with hostile_client(fed[A]) as a:
            with pytest.raises(nats.errors.NoRespondersError):
                await a.request(subjects.ledger_read(A), b'{"seq": 1}', timeout=5)
        code, out, err = await fed[A].ctl("pay", B, "5")
        assert code != 0 and "Traceback" not in out + err, out + err
        await asyncio.to_thread(fed.reader.start, [fed.hub.url])
        code, out, err = await fed[A].ctl("pay", B, "5")
        assert code == 0, out + err
        assert await money(fed[A]) == (45, 0)
        assert await money(fed[B]) == (5, 0)
