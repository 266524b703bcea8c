"""Attack review of the edges: what a hostile member of the federation (its own key and hub
login, any bytes on the subjects the hub lets it publish) can leave *persisted* in another
entity, and the numeric edges of what a peer or the ledger feeds, in classes the earlier
reviews (tests/test_attack*.py) did not try.

- A heartbeat's `capabilities` had no bound, and the peer actor keeps a member's last ones
  in peers.sqlite3. One heartbeat of about 1 MiB from a member (its own key, its own
  subject) made the answer to `peers_get` larger than an envelope may be, for good (a
  restart reads the same row): `entityctl peers` and `watch --all` failed with
  too_large, the ledger could learn no peer's key from the directory, and the
  orchestrator *crashed* on every `list_peers` its model called (TooLarge is no
  EntitydError), two restarts for two calls: past restart_budget in restart_window the
  daemon exits. (Fixed: capabilities kept clipped, 32 of 64 characters, on arrival and
  on reading an older row; an answer too large for an envelope goes as a `too_large`
  error, and a reply the asker cannot open is a RemoteError.)
- An unpaid task offer's `hold` (bytes, unchecked when the price is 0) was kept as it
  came, with every task a trusted delegator offers (accepted tasks are never pruned): six
  offers of 900 KB grew the delegate's peers.sqlite3 by 12 MB, at the sender's rate
  limit. (Fixed: a hold is kept only with a price, and only an entry id's 16 bytes.)
- The books summed what escrows between two accounts settled per task, and weighed
  ratings by it, with no bound: two members cycling one escrow of a supply within
  MAX_AMOUNT (2^62) and rating once made the reputation's sum pass 2^64, which the
  ledger's checkpoint (msgpack) cannot write: OverflowError where the ledger actor saves
  its books. (Fixed: the sums saturate at 2^63 - 1, PROTOCOL.md 16.5.)
- A payload's int is any msgpack int, up to 2^64 - 1, and SQLite keeps 2^63 - 1 at most: a
  task offer priced 2^63 raised OverflowError in the delegate's peer actor on every
  delivery (`command_failed`, our-bug path), and after five it was dropped unanswered, so
  the delegator never heard the refusal. (Fixed: a price past MAX_AMOUNT is refused
  with its reason and the task kept at price 0.)

Each test asserts the safe behaviour; a hole still open is a strict xfail naming it.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

import protocol
from actors.llm.scripted import Reply
from actors.peer.messages import Heartbeat, TaskOffer
from bench.rig import Federation, Member, edit
from entityd import identity
from protocol.ledger import GENESIS, Hold, Ledger, LedgerKeys, Link, Mint, Post, Rate, snapshot
from tests.helpers import (
    command_into_inbox,
    hostile_client,
    poll,
    scripted_federation,
    stopped,
    task_by_id,
)
from tests.peer_model import route

pytestmark = pytest.mark.timeout(120)
A, B = "entity-a", "entity-b"
MAX_WIRE = 1024 * 1024  # protocol.max_message_bytes by default: what a member may send


def answers_ok(request: dict[str, Any]) -> Reply:
    """A scripted model (not a model) that ends every turn at once."""
    return Reply(content="ok")


def b_beats_once_an_hour(fed: Federation) -> None:
    """b's own daemon beats at its start only: what b's leaf says of b afterwards is the
    attacker's alone (a member's daemon is the member's to run or not)."""
    edit(fed[B].config, "heartbeat_interval = 0.5", "heartbeat_interval = 3600")


def heartbeat_near_the_limit(key: SigningKey, subject: str) -> bytes:
    """b's heartbeat, signed with b's key, its capabilities filling an envelope."""
    count = MAX_WIRE // 1000
    while True:
        beat = Heartbeat(["c" * 1000] * count, 3600.0, time.time())
        wire, _ = protocol.seal(key, src=f"{B}/peer", dst=protocol.BROADCAST, subj=subject,
                                message=beat)
        if len(wire) <= MAX_WIRE - 64:
            return wire
        count -= 1


async def orchestrator_restarts(member: Member) -> int:
    status = await member.ctl_json("status")
    return int(next(a["restarts"] for a in status["actors"] if a["name"] == "orchestrator"))


async def test_a_members_heartbeat_leaves_the_peer_list_answerable(tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route, prepare=b_beats_once_an_hour
                                   ) as fed:
        a, b = fed[A], fed[B]
        subject = protocol.subjects.event(B, "peer", "heartbeat")
        wire = heartbeat_near_the_limit(identity.load(B, b.data).signing_key, subject)
        async with hostile_client(b) as nc:
            await nc.publish(subject, wire)
            await nc.flush()

        async def taken() -> bool:  # a keeps b's capabilities, clipped (or cannot list them)
            code, out, _ = await a.ctl("peers", "--json")
            return code != 0 or "c" * 64 in out

        await poll(taken, timeout=30, every=0.5, what="a takes b's heartbeat")
        # What a keeps outlives its restart: the row is in peers.sqlite3.
        assert await stopped(a) == 0
        a.start()
        await a.ready()
        code, out, err = await a.ctl("peers", "--json")
        assert code == 0, err[-500:]
        listed = {p["name"]: p for p in json.loads(out)}
        assert B in listed and len(out) < 64 * 1024, len(out)
        assert listed[B]["capabilities"] == ["c" * 64] * 32, listed[B]["capabilities"][:2]
        # The model listing the peers gets a list, and the orchestrator stays up.
        code, out, err = await a.ctl("ask", "CALL list_peers {}", timeout=60)
        assert code == 0, out + err[-500:]
        assert await orchestrator_restarts(a) == 0


def store_bytes(member: Member) -> int:
    db = member.data / "peers.sqlite3"
    return sum(os.path.getsize(p) for p in (db, Path(f"{db}-wal")) if p.exists())


async def test_unpaid_offers_do_not_fill_the_delegates_store(tmp_path: Path) -> None:
    offers, junk = 6, b"h" * 900_000
    async with scripted_federation(tmp_path, [A, B], answers_ok) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]  # b may delegate to a (the rig trusts every member)
        before = store_bytes(a)
        for n in range(offers):
            await command_into_inbox(b, a, "delegate", TaskOffer(
                f"hold{n}", "say hello", "say hello", "", time.time() + 600, [], 0, junk))
        await poll(lambda: task_by_id(a, "in", f"hold{offers - 1}"), timeout=30,
                   what="a records b's offers")
        grown = store_bytes(a) - before
        assert grown < offers * len(junk) // 4, f"{grown} bytes for {offers} offers"


# ---- the books: sums the ledger keeps beyond 64 bits ---------------------------------


class Chains:
    """Books over real signed entries: each put seals the next entry of a chain."""

    def __init__(self, *owners: str) -> None:
        self.keys = {name: SigningKey.generate() for name in (*owners, "treasurer")}
        self.books = Ledger(LedgerKeys(
            {name: bytes(self.keys[name].verify_key) for name in owners},
            {"treasurer": bytes(self.keys["treasurer"].verify_key)}))
        self.ts = 1_700_000_000_000

    def put(self, account: str, record: Link, signer: str = "") -> bytes:
        self.ts += 1
        wire = self.books.seal_next(self.keys[signer or account], account, record,
                                    entry_id=os.urandom(16), ts=self.ts)
        return self.books.apply_wire(wire, protocol.subjects.ledger(account)).id

    def escrow(self, payer: str, payee: str, amount: int, task: str) -> None:
        hold = self.put(payer, Hold(0, GENESIS, payee, amount, self.ts + 10**9, task))
        self.put(payer, Post(0, GENESIS, hold, amount))


def test_books_of_a_supply_within_the_limit_can_be_checkpointed() -> None:
    x, y = "entity-x", "entity-y"
    chains = Chains(x, y)
    supply = 2**62  # within MAX_AMOUNT: every balance and the supply fit 64 bits
    chains.put(x, Mint(0, GENESIS, x, supply), signer="treasurer")
    chains.escrow(x, y, supply, "t")  # y, x's other name, is paid for "t"...
    chains.escrow(y, x, supply, "t")  # ...and pays it back for the same task
    chains.put(y, Rate(0, GENESIS, x, "t", 5))
    assert chains.books.audit() == []
    # What the ledger actor's checkpoint writes (actors/ledger/checkpoint.py), read back.
    books, _ = snapshot.load(snapshot.dump(chains.books, {}), chains.books.keys)
    assert books.reputation(x) == chains.books.reputation(x)


async def test_an_offer_priced_past_64_bits_is_refused_with_a_reason(tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], answers_ok) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]
        await command_into_inbox(b, a, "delegate", TaskOffer(
            "priced", "say hello", "say hello", "", time.time() + 600, [], 2**63,
            b"\x01" * 16))
        task = await poll(lambda: task_by_id(a, "in", "priced"), timeout=12,
                          what=lambda: "a records the offer; a's log: " + "\n".join(
                              line[:300] for line in a.daemon.log().splitlines()
                              if "command_failed" in line))
        assert task["state"] == "rejected", task
