"""The sums the books keep over the chains' history, at their bound (PROTOCOL.md 16.5).

Balances are bounded by conservation, but what escrows settled and what ratings weigh add
up as often as money goes round: the settled amount of a payer, payee and task stops at
MAX_AMOUNT, and a rating weighs at most what keeps its peer's weighted sum within it, so
every value of the books fits a signed 64-bit integer: the checkpoint, the `reputation`
message, and any other implementation's int64.
"""

from __future__ import annotations

import os

import msgpack
import pytest
from nacl.signing import SigningKey

import protocol
from actors.ledger.messages import ReputationInfo
from protocol import kinds
from protocol.ledger import (
    GENESIS,
    MAX_AMOUNT,
    Hold,
    Ledger,
    LedgerKeys,
    Link,
    Mint,
    Post,
    Rate,
    Reputation,
    Transfer,
    snapshot,
)

X, Y = "entity-x", "entity-y"
INT64 = 2**63 - 1


class Books:
    """Books over real signed entries, each put sealed as the next entry of its chain;
    the wires are kept, for a reader replaying them afresh."""

    def __init__(self) -> None:
        self.keys = {name: SigningKey.generate() for name in (X, Y, "treasurer")}
        self.ledger_keys = LedgerKeys(
            {name: bytes(self.keys[name].verify_key) for name in (X, Y)},
            {"treasurer": bytes(self.keys["treasurer"].verify_key)})
        self.books = Ledger(self.ledger_keys)
        self.wires: list[tuple[bytes, str]] = []
        self.ts = 1_700_000_000_000

    def put(self, account: str, record: Link, signer: str = "") -> bytes:
        self.ts += 1
        wire = self.books.seal_next(self.keys[signer or account], account, record,
                                    entry_id=os.urandom(16), ts=self.ts)
        subject = protocol.subjects.ledger(account)
        self.wires.append((wire, subject))
        return self.books.apply_wire(wire, subject).id

    def mint(self, account: str, amount: int) -> None:
        self.put(account, Mint(0, GENESIS, account, amount), signer="treasurer")

    def escrow(self, payer: str, payee: str, amount: int, task: str) -> None:
        hold = self.put(payer, Hold(0, GENESIS, payee, amount, self.ts + 10**9, task))
        self.put(payer, Post(0, GENESIS, hold, amount))

    def give_back(self, payer: str, payee: str, amount: int) -> None:
        self.put(payer, Transfer(0, GENESIS, payee, amount))

    def rate(self, rater: str, peer: str, task: str, score: int) -> Reputation:
        self.put(rater, Rate(0, GENESIS, peer, task, score))
        return self.books.reputation(peer)

    def replayed(self) -> Ledger:
        """What another reader (or `ledger verify`) builds from the same entries."""
        books = Ledger(self.ledger_keys)
        for wire, subject in self.wires:
            books.apply_wire(wire, subject)
        return books

    def restored(self) -> Ledger:
        """The books through the ledger actor's checkpoint (actors/ledger/checkpoint.py)."""
        data = msgpack.packb({"peers": {}, "books": snapshot.dump(self.books, {})},
                             use_bin_type=True)
        books, _ = snapshot.load(msgpack.unpackb(data, raw=False)["books"], self.ledger_keys)
        return books


def fits_every_reader(ledger: Books) -> None:
    """The books written and read back, and built afresh, say the same; and every sum fits
    a signed 64-bit integer."""
    for books in (ledger.restored(), ledger.replayed()):
        assert books._settled == ledger.books._settled
        assert books._reputation == ledger.books._reputation
    assert all(0 <= v <= INT64 for v in ledger.books._settled.values())
    for r in ledger.books._reputation.values():
        assert 0 <= r.weight <= r.weighted <= INT64
    assert ledger.books.audit() == []


def test_what_one_escrow_settles_stops_at_the_bound() -> None:
    assert MAX_AMOUNT == INT64
    ledger = Books()
    ledger.mint(X, MAX_AMOUNT)
    ledger.escrow(X, Y, MAX_AMOUNT - 1, "t")
    assert ledger.books.settled(X, Y, "t") == MAX_AMOUNT - 1
    ledger.give_back(Y, X, MAX_AMOUNT - 1)
    ledger.escrow(X, Y, 1, "t")
    assert ledger.books.settled(X, Y, "t") == MAX_AMOUNT  # at the bound: all of it
    ledger.give_back(Y, X, 1)
    ledger.escrow(X, Y, MAX_AMOUNT, "t")
    assert ledger.books.settled(X, Y, "t") == MAX_AMOUNT  # past it: no more
    assert ledger.books.settled(Y, X, "t") == 0  # the other way is its own sum
    assert ledger.books.balance(Y).available == MAX_AMOUNT  # the money moved all the same
    fits_every_reader(ledger)


def test_a_rating_weighs_what_keeps_the_weighted_sum_within_the_bound() -> None:
    ledger = Books()
    ledger.mint(X, MAX_AMOUNT)
    ledger.escrow(X, Y, MAX_AMOUNT - 3, "t1")
    ledger.give_back(Y, X, MAX_AMOUNT - 3)
    assert ledger.rate(Y, X, "t1", 1) == Reputation(X, 1, MAX_AMOUNT - 3, MAX_AMOUNT - 3)
    ledger.escrow(X, Y, 5, "t2")
    ledger.give_back(Y, X, 5)
    # 5 settled, a score of 2: 2 x 2 would pass the bound by one, so it weighs 1.
    assert ledger.rate(Y, X, "t2", 2) == Reputation(X, 2, MAX_AMOUNT - 2, MAX_AMOUNT - 1)
    ledger.escrow(X, Y, 1, "t3")
    ledger.give_back(Y, X, 1)
    # Exactly at the bound: it weighs all it settled.
    assert ledger.rate(Y, X, "t3", 1) == Reputation(X, 3, MAX_AMOUNT - 1, MAX_AMOUNT)
    ledger.escrow(X, Y, MAX_AMOUNT, "t4")
    # Past it: the rating is counted, and weighs nothing.
    full = ledger.rate(Y, X, "t4", 5)
    assert full == Reputation(X, 4, MAX_AMOUNT - 1, MAX_AMOUNT)
    assert full.score == pytest.approx(1.0)
    # The other party's rating is its own reputation, with its own bound.
    assert ledger.rate(X, Y, "t4", 5) == Reputation(Y, 1, MAX_AMOUNT // 5,
                                                    MAX_AMOUNT // 5 * 5)
    fits_every_reader(ledger)


def test_a_round_trip_of_the_supply_and_one_rating() -> None:
    """The review's case: one escrow paid there and back settles twice the supply for one
    task, and the rating of it weighs what the bound leaves, at its full score."""
    ledger = Books()
    ledger.mint(X, 2**62)
    ledger.escrow(X, Y, 2**62, "t")
    ledger.escrow(Y, X, 2**62, "t")
    known = ledger.rate(Y, X, "t", 5)
    assert known == Reputation(X, 1, MAX_AMOUNT // 5, MAX_AMOUNT // 5 * 5)
    assert known.score == 5.0
    fits_every_reader(ledger)
    # What the ledger actor answers `reputation` with (actors/ledger/actor.py) goes on
    # the wire.
    info = ReputationInfo(X, round(known.score or 0.0, 3), known.tasks, known.weight)
    sent = msgpack.unpackb(msgpack.packb(kinds.encode(info)), raw=False)
    assert kinds.decode("reputation", sent) == info


def over_the_bound_in_format_1() -> tuple[Books, bytes]:
    """A checkpoint the books could write before the bound: format 1, a settled sum of
    2^63 (msgpack takes up to 2^64 - 1), which the rules now stop at MAX_AMOUNT."""
    ledger = Books()
    ledger.mint(X, 2**62)
    ledger.escrow(X, Y, 2**62, "t")
    ledger.give_back(Y, X, 2**62)
    ledger.escrow(X, Y, 2**62, "t")
    state = msgpack.unpackb(snapshot.dump(ledger.books, {}), raw=False,
                            strict_map_key=False)
    state["format"] = 1
    state["settled"] = [[X, Y, "t", 2**63]]
    return ledger, msgpack.packb(state, use_bin_type=True)


def test_a_checkpoint_of_format_1_within_the_bound_is_still_read() -> None:
    ledger = Books()
    ledger.mint(X, 100)
    ledger.escrow(X, Y, 40, "t")
    ledger.rate(Y, X, "t", 4)
    state = msgpack.unpackb(snapshot.dump(ledger.books, {"after": 7}), raw=False,
                            strict_map_key=False)
    assert state["format"] == 2
    state["format"] = 1
    books, extra = snapshot.load(msgpack.packb(state, use_bin_type=True), ledger.ledger_keys)
    assert extra == {"after": 7}
    assert books.reputation(X) == Reputation(X, 1, 40, 160)
    assert books.settled(X, Y, "t") == 40


def test_a_checkpoint_past_the_bound_is_refused_so_the_reader_replays() -> None:
    ledger, old = over_the_bound_in_format_1()
    with pytest.raises(snapshot.SnapshotError, match="sums past"):
        snapshot.load(old, ledger.ledger_keys)
    assert ledger.replayed().settled(X, Y, "t") == MAX_AMOUNT  # what the replay gives
    state = msgpack.unpackb(old, raw=False, strict_map_key=False)
    state["settled"] = []
    state["reputation"] = [[X, 1, 2**62, 2**63]]
    with pytest.raises(snapshot.SnapshotError, match="sums past"):
        snapshot.load(msgpack.packb(state, use_bin_type=True), ledger.ledger_keys)
