"""The ledger's pure core (PROTOCOL.md §16): each rule with its reason code, the vectors
of protocol/vectors/ledger, and a stateful property test of random mints, payments,
holds, posts, voids, expiries, ratings, retries and racing writers against an
independent model of the balances."""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
)
from nacl.signing import SigningKey

from protocol import ProtocolError, reasons, seal, subjects, verify_signature
from protocol.ledger import (
    GENESIS,
    MAX_AMOUNT,
    Applied,
    Balance,
    Conflict,
    Hold,
    Ledger,
    LedgerError,
    LedgerKeys,
    Link,
    Mint,
    Post,
    Rate,
    Transfer,
    Void,
    check_entry,
    content,
    entry_hash,
    read_entry,
    seal_entry,
    snapshot,
)
from protocol.vectors.generate import as_json
from protocol.vectors.ledger import generate as ledger_vectors


def _key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(f"test_ledger_rules {name}".encode()).digest())


ACCOUNTS = ("alpha", "beta", "gamma")
KEYS = {name: _key(name) for name in ACCOUNTS}
OPERATOR = _key("operator")
STRANGER = _key("stranger")
T0 = 1_767_225_600_000
DAY = 86_400_000


def ledger_keys() -> LedgerKeys:
    return LedgerKeys({name: bytes(key.verify_key) for name, key in KEYS.items()},
                      {"treasury": bytes(OPERATOR.verify_key)})


def eid(tag: object) -> bytes:
    return hashlib.sha256(f"entry {tag}".encode()).digest()[:16]


def body_of(wire: bytes) -> bytes:
    body: bytes = msgpack.unpackb(wire)[2]
    return body


class Books:
    """A Ledger with a writer's helpers: entries sealed at the chain's next position."""

    def __init__(self) -> None:
        self.ledger = Ledger(ledger_keys())
        self.ts = T0

    def seal(self, account: str, record: Link, tag: object, *, ts: int | None = None,
             key: SigningKey | None = None, **position: Any) -> bytes:
        seq, prev, _ = self.ledger.position(account)
        placed: dict[str, Any] = {"seq": seq, "prev": prev, **position}
        record = dataclasses.replace(record, **placed)
        if key is None:
            key = OPERATOR if isinstance(record, Mint) else KEYS[account]
        return seal_entry(key, account, record, entry_id=eid(tag),
                          ts=self.ts if ts is None else ts)

    def put(self, account: str, record: Link, tag: object, **how: Any) -> Applied:
        return self.ledger.apply_wire(self.seal(account, record, tag, **how),
                                      subjects.ledger(account))

    def refused(self, reason: str, account: str, record: Link, tag: object,
                **how: Any) -> LedgerError | ProtocolError:
        """Apply an entry that must be refused with `reason`, and changes nothing."""
        before = self.snapshot()
        with pytest.raises(ProtocolError) as info:
            self.put(account, record, tag, **how)
        assert info.value.reason == reason, str(info.value)
        assert self.snapshot() == before
        return info.value

    def snapshot(self) -> Any:
        return ([(a, self.ledger.position(a), self.ledger.balance(a), self.ledger.holds(a),
                  self.ledger.reputation(a)) for a in ACCOUNTS], self.ledger.supply)

    def balance(self, account: str, now: int | None = None) -> tuple[int, int]:
        balance = self.ledger.balance(account, now)
        return balance.available, balance.held


def mint(amount: int, account: str = "alpha") -> Mint:
    return Mint(0, b"", account, amount)


def pay(to: str, amount: int, memo: str = "") -> Transfer:
    return Transfer(0, b"", to, amount, memo)


def hold(to: str, amount: int, expires_at: int = T0 + DAY, task: str = "t-1") -> Hold:
    return Hold(0, b"", to, amount, expires_at, task)


def post(tag: object, amount: int) -> Post:
    return Post(0, b"", eid(tag), amount)


def void(tag: object) -> Void:
    return Void(0, b"", eid(tag))


def rate(peer: str, task: str, score: int) -> Rate:
    return Rate(0, b"", peer, task, score)


@pytest.fixture
def books() -> Books:
    books = Books()
    books.put("alpha", mint(100), "mint")
    return books


# ---- entries on the wire -------------------------------------------------------------


def test_an_entry_reads_back_as_sealed_and_its_hash_is_its_bodys(books: Books) -> None:
    mint_hash = books.ledger.position("alpha").prev
    wire = books.seal("alpha", pay("beta", 10, "lunch"), "t")
    entry = read_entry(wire, "ledger.alpha", ledger_keys())
    assert entry.record == Transfer(2, mint_hash, "beta", 10, "lunch")
    assert (entry.account, entry.id, entry.ts) == ("alpha", eid("t"), T0)
    assert entry.hash == entry_hash(body_of(wire)) == hashlib.sha256(body_of(wire)).digest()
    applied = books.ledger.apply(entry)
    assert books.ledger.position("alpha") == (3, entry.hash, T0)
    assert applied == Applied("alpha", eid("t"), "transfer", 2, entry.hash, T0)


def test_signatures_may_be_checked_apart_and_the_rest_in_order(books: Books) -> None:
    """read_entry is verify_signature (pure: any thread) then check_entry (in order)."""
    wires = []
    for n in range(1, 9):
        wires.append(books.seal("alpha", pay("beta", n), n))
        books.ledger.apply_wire(wires[-1], "ledger.alpha")
    reader = Ledger(ledger_keys())
    reader.apply_wire(books.seal("alpha", mint(100), "mint", seq=1, prev=GENESIS),
                      "ledger.alpha")
    keys = reader.keys
    with ThreadPoolExecutor(4) as pool:
        verified = list(pool.map(
            lambda wire: verify_signature(wire, subject="ledger.alpha", keyring=keys.keyring),
            wires))
    for one, wire in zip(verified, wires, strict=True):
        entry = check_entry(one, "ledger.alpha", keys)
        assert reader.apply(entry) == books.ledger.result("alpha", entry.id)
        assert entry == read_entry(wire, "ledger.alpha", keys)
    assert reader.balance("beta") == books.ledger.balance("beta") == Balance(36, 0)


def test_the_chain_hash_survives_a_reencoded_outer_array(books: Books) -> None:
    """The outer array is not signed (§3): a carrier that widens a length header changes
    the wire, not the entry, so the hash is the body's."""
    wire = books.seal("alpha", pay("beta", 10), "t")
    version, kid, body, sig = msgpack.unpackb(wire)
    widened = (b"\x94\x01" + b"\xc5" + len(kid).to_bytes(2, "big") + kid
               + b"\xc5" + len(body).to_bytes(2, "big") + body
               + b"\xc5" + len(sig).to_bytes(2, "big") + sig)
    assert widened != wire and msgpack.unpackb(widened) == [version, kid, body, sig]
    books.ledger.apply_wire(widened, "ledger.alpha")
    assert books.ledger.position("alpha").prev == hashlib.sha256(body).digest()
    books.put("alpha", pay("beta", 1), "next")  # sealed on the body's hash: it links


def test_an_entry_must_arrive_on_its_chains_subject(books: Books) -> None:
    wire = books.seal("alpha", pay("beta", 10), "t")
    with pytest.raises(ProtocolError) as info:
        books.ledger.apply_wire(wire, "ledger.beta")
    assert info.value.reason == reasons.WRONG_SUBJECT
    with pytest.raises(ProtocolError) as info:
        books.ledger.apply_wire(wire, "fed.evt.alpha.ledger.transfer")
    assert info.value.reason == reasons.WRONG_SUBJECT


def test_an_entry_is_addressed_to_its_chains_ledger(books: Books) -> None:
    record = pay("beta", 10)
    seq, prev, _ = books.ledger.position("alpha")
    wire, _ = seal(KEYS["alpha"], src="alpha/ledger", dst="alpha/peer", subj="ledger.alpha",
                   message=dataclasses.replace(record, seq=seq, prev=prev), msg_id=eid(1))
    with pytest.raises(ProtocolError) as info:
        books.ledger.apply_wire(wire, "ledger.alpha")
    assert info.value.reason == reasons.WRONG_DESTINATION


@pytest.mark.parametrize(("change", "why"), [
    ({"src": "alpha/peer"}, "src is not the chain's ledger"),
    ({"corr": bytes(16)}, "a corr"),
    ({"enc": True, "typ": "transfer", "payload": b"sealed"}, "encrypted"),
    ({"typ": "ping", "payload": {}}, "another kind"),
])
def test_an_entry_is_a_plain_ledger_kind_from_the_chains_ledger(
        books: Books, change: dict[str, Any], why: str) -> None:
    seq, prev, _ = books.ledger.position("alpha")
    fields: dict[str, Any] = {
        "src": "alpha/ledger", "dst": "alpha/ledger", "subj": "ledger.alpha",
        "message": Transfer(seq, prev, "beta", 10)}
    if "typ" in change or "enc" in change:
        del fields["message"]
    wire, _ = seal(KEYS["alpha"], **(fields | change), msg_id=eid(why))
    with pytest.raises(ProtocolError) as info:
        books.ledger.apply_wire(wire, "ledger.alpha")
    assert info.value.reason == reasons.BAD_ENTRY, why


# ---- the chain -------------------------------------------------------------------------


def test_a_chain_refuses_gaps_forks_foreign_prevs_and_backdating(books: Books) -> None:
    books.refused(reasons.BROKEN_CHAIN, "alpha", pay("beta", 1), "gap", seq=3)
    books.refused(reasons.BROKEN_CHAIN, "alpha", pay("beta", 1), "fork", seq=1,
                  prev=GENESIS)
    books.refused(reasons.BROKEN_CHAIN, "alpha", pay("beta", 1), "prev", prev=bytes(32))
    books.refused(reasons.BROKEN_CHAIN, "alpha", pay("beta", 1), "old", ts=T0 - 1)
    after_mint = books.ledger.position("alpha")
    books.put("alpha", pay("beta", 1), "ok")
    books.refused(reasons.BROKEN_CHAIN, "alpha", pay("beta", 1), "replaced", seq=2,
                  prev=after_mint.prev)
    assert books.ledger.position("alpha").seq == 3
    assert books.ledger.position("beta") == (1, GENESIS, 0)


def test_a_replayed_entry_is_only_ever_its_first_effect(books: Books) -> None:
    wire = books.seal("alpha", pay("beta", 10), "pay")
    applied = books.ledger.apply_wire(wire, "ledger.alpha")
    for _ in range(3):
        assert books.ledger.apply_wire(wire, "ledger.alpha") is applied
    assert books.balance("beta") == (10, 0)


# ---- signers ---------------------------------------------------------------------------


@pytest.mark.parametrize(("account", "record", "key", "reason"), [
    ("alpha", pay("beta", 10), KEYS["beta"], reasons.WRONG_SIGNER),
    ("alpha", pay("beta", 10), OPERATOR, reasons.WRONG_SIGNER),
    ("alpha", mint(10), KEYS["alpha"], reasons.WRONG_SIGNER),
    ("beta", mint(10, "beta"), KEYS["alpha"], reasons.WRONG_SIGNER),
    ("alpha", pay("beta", 10), STRANGER, reasons.UNKNOWN_KEY),
    ("alpha", mint(10), STRANGER, reasons.UNKNOWN_KEY),
])
def test_only_the_owner_spends_and_only_an_operator_mints(
        books: Books, account: str, record: Link, key: SigningKey, reason: str) -> None:
    books.refused(reason, account, record, "forged", key=key)


def test_a_key_is_an_accounts_or_an_operators_never_both() -> None:
    keys = ledger_keys()
    with pytest.raises(ValueError):
        keys.add_operator("sneaky", bytes(KEYS["alpha"].verify_key))
    with pytest.raises(ValueError):
        keys.add_account("delta", bytes(OPERATOR.verify_key))
    with pytest.raises(ValueError):
        keys.add_account("Not A Name", bytes(STRANGER.verify_key))


# ---- the fields of an entry --------------------------------------------------------------


@pytest.mark.parametrize(("record", "why"), [
    (pay("beta", 0), "a zero amount"),
    (pay("beta", -5), "a negative amount"),
    (pay("beta", MAX_AMOUNT + 1), "past int64"),
    (pay("alpha", 5), "to oneself"),
    (pay("Beta!", 5), "to no entity name"),
    (pay("beta", 5, "x" * 1025), "a memo over 1024 characters"),
    (hold("alpha", 5), "a hold for oneself"),
    (hold("beta", 5, expires_at=T0 - 1), "a hold expiring before it is made"),
    (hold("beta", 5, task=""), "a hold for no task"),
    (mint(5, "beta"), "a mint for another chain's account"),
    (rate("beta", "t-1", 0), "a score of 0"),
    (rate("beta", "t-1", 6), "a score of 6"),
    (rate("alpha", "t-1", 5), "rating oneself"),
])
def test_fields_out_of_bounds_are_bad_entries(books: Books, record: Link, why: str) -> None:
    books.refused(reasons.BAD_ENTRY, "alpha", record, why)


def test_the_supply_stays_within_int64(books: Books) -> None:
    books.refused(reasons.BAD_ENTRY, "beta", mint(MAX_AMOUNT - 99, "beta"), "overflow")
    books.put("beta", mint(MAX_AMOUNT - 100, "beta"), "fill")
    assert books.ledger.supply == MAX_AMOUNT


# ---- balances ------------------------------------------------------------------------------


def test_no_account_goes_below_zero(books: Books) -> None:
    books.put("alpha", pay("beta", 60), 1)
    books.refused(reasons.OVERDRAFT, "alpha", pay("beta", 41), 2)
    books.refused(reasons.OVERDRAFT, "alpha", hold("beta", 41), 3)
    books.put("alpha", hold("beta", 40), 4)
    books.refused(reasons.OVERDRAFT, "alpha", pay("gamma", 1), 5)
    books.refused(reasons.OVERDRAFT, "beta", pay("gamma", 61), 6)
    books.put("beta", pay("gamma", 60), 7)  # what it received, in stream order
    assert [books.balance(a) for a in ACCOUNTS] == [(0, 40), (0, 0), (60, 0)]
    assert books.ledger.audit() == []


def test_check_says_what_apply_would_do_and_changes_nothing(books: Books) -> None:
    before = books.snapshot()
    entry = books.ledger.read(books.seal("alpha", pay("beta", 30), "p"), "ledger.alpha")
    planned = books.ledger.check(entry)
    assert books.snapshot() == before
    assert books.ledger.apply(entry) == planned
    too_much = books.ledger.read(books.seal("alpha", pay("beta", 71), "q"), "ledger.alpha")
    with pytest.raises(LedgerError) as info:
        books.ledger.check(too_much)
    assert info.value.reason == reasons.OVERDRAFT
    assert (info.value.account, info.value.seq, info.value.entry_id) == ("alpha", 3, eid("q"))


# ---- holds -----------------------------------------------------------------------------------


def test_a_post_pays_part_of_a_hold_and_releases_the_rest(books: Books) -> None:
    books.put("alpha", hold("beta", 50), "h")
    assert books.balance("alpha") == (50, 50)
    books.refused(reasons.BAD_ENTRY, "alpha", post("h", 51), "over")
    books.put("alpha", post("h", 30), "p")
    assert [books.balance(a) for a in ACCOUNTS[:2]] == [(70, 0), (30, 0)]
    assert books.ledger.settled("alpha", "beta", "t-1") == 30
    (state,) = books.ledger.holds("alpha")
    assert (state.state, state.posted) == ("posted", 30)


def test_a_hold_resolves_at_most_once(books: Books) -> None:
    books.put("alpha", hold("beta", 50), "h1")
    books.put("alpha", post("h1", 50), "p1")
    books.refused(reasons.HOLD_RESOLVED, "alpha", post("h1", 1), "p1-again")
    books.refused(reasons.HOLD_RESOLVED, "alpha", void("h1"), "v1")
    books.put("alpha", hold("beta", 20), "h2")
    books.put("alpha", void("h2"), "v2")
    books.refused(reasons.HOLD_RESOLVED, "alpha", void("h2"), "v2-again")
    books.refused(reasons.HOLD_RESOLVED, "alpha", post("h2", 20), "p2")
    assert [books.balance(a) for a in ACCOUNTS[:2]] == [(50, 0), (50, 0)]


def test_a_post_or_void_names_a_hold_of_its_own_chain(books: Books) -> None:
    books.put("alpha", hold("beta", 50), "h")
    books.refused(reasons.UNKNOWN_HOLD, "alpha", post("nothing", 1), "p")
    books.refused(reasons.UNKNOWN_HOLD, "alpha", void("mint"), "v-not-a-hold")
    books.put("beta", mint(5, "beta"), "beta-mint")
    books.refused(reasons.UNKNOWN_HOLD, "beta", void("h"), "v-other-chain")


def test_expiry_is_read_from_entry_timestamps(books: Books) -> None:
    deadline = T0 + 1000
    books.put("alpha", hold("beta", 60, deadline), "h1")
    books.put("alpha", hold("beta", 40, deadline), "h2")
    books.put("alpha", post("h1", 60), "p1", ts=deadline)  # at the deadline: in time
    books.refused(reasons.HOLD_EXPIRED, "alpha", post("h2", 40), "p2", ts=deadline + 1)
    # The reader's clock shows the expired hold released; the chain holds it until an
    # entry of the chain passes its deadline, or a void records it.
    assert books.balance("alpha") == (0, 40)
    assert books.balance("alpha", now=deadline) == (0, 40)
    assert books.balance("alpha", now=deadline + 1) == (40, 0)
    assert [h.state for h in books.ledger.holds("alpha", now=deadline + 1)] == [
        "posted", "expired"]
    books.put("alpha", pay("gamma", 40), "spend", ts=deadline + 1)
    books.put("alpha", void("h2"), "v2", ts=deadline + 2)  # records it, moves nothing
    books.refused(reasons.HOLD_RESOLVED, "alpha", void("h2"), "v2-again", ts=deadline + 3)
    assert [books.balance(a) for a in ACCOUNTS] == [(0, 0), (60, 0), (40, 0)]
    assert [h.state for h in books.ledger.holds("alpha")] == ["posted", "voided"]


def test_a_void_before_the_deadline_releases_the_hold(books: Books) -> None:
    books.put("alpha", hold("beta", 70), "h")
    books.refused(reasons.OVERDRAFT, "alpha", pay("beta", 31), "t")
    books.put("alpha", void("h"), "v")
    books.put("alpha", pay("beta", 100), "t2")
    assert books.balance("alpha") == (0, 0)


# ---- idempotency ------------------------------------------------------------------------------


def test_the_same_id_and_body_again_is_the_original_result(books: Books) -> None:
    applied = books.put("alpha", pay("beta", 25, "invoice 7"), "pay-7")
    again = books.put("alpha", pay("beta", 25, "invoice 7"), "pay-7", ts=T0 + 5)
    assert again is applied
    assert books.ledger.position("alpha").seq == 4  # appended again: a link, no effect
    assert books.balance("beta") == (25, 0)
    books.refused(reasons.CONFLICT, "alpha", pay("beta", 26, "invoice 7"), "pay-7")
    books.refused(reasons.CONFLICT, "alpha", hold("beta", 25), "pay-7")


def test_a_writer_asks_before_it_appends(books: Books) -> None:
    ledger = books.ledger
    assert ledger.retry_of("alpha", eid("pay"), pay("beta", 5)) is None
    applied = books.put("alpha", pay("beta", 5), "pay")
    assert ledger.retry_of("alpha", eid("pay"), Transfer(9, b"x", "beta", 5)) is applied
    with pytest.raises(Conflict):
        ledger.retry_of("alpha", eid("pay"), pay("beta", 6))
    assert ledger.result("alpha", eid("pay")) is applied
    assert ledger.result("alpha", eid("other")) is None
    assert content(Transfer(9, b"x", "beta", 5)) == content(pay("beta", 5))


# ---- reputation ----------------------------------------------------------------------------------


def test_ratings_need_a_settled_escrow_and_weigh_its_amount(books: Books) -> None:
    books.put("alpha", mint(900), "more")
    books.put("alpha", hold("beta", 100, task="t-1"), "h1")
    books.refused(reasons.NOT_SETTLED, "alpha", rate("beta", "t-1", 5), "early")
    books.put("alpha", post("h1", 100), "p1")
    books.put("alpha", hold("beta", 300, task="t-2"), "h2")
    books.put("alpha", post("h2", 300), "p2")
    books.put("alpha", hold("beta", 500, task="t-3"), "h3")
    books.put("alpha", void("h3"), "v3")
    assert books.ledger.reputation("beta").score is None
    books.put("alpha", rate("beta", "t-1", 5), "r1")
    books.put("alpha", rate("beta", "t-2", 1), "r2")
    books.refused(reasons.NOT_SETTLED, "alpha", rate("beta", "t-3", 5), "voided")
    books.refused(reasons.DUPLICATE_RATING, "alpha", rate("beta", "t-1", 3), "again")
    books.put("beta", rate("alpha", "t-1", 4), "payee rates payer")
    books.refused(reasons.NOT_SETTLED, "gamma", rate("beta", "t-1", 5), "stranger")
    beta = books.ledger.reputation("beta")
    assert (beta.tasks, beta.weight, beta.weighted) == (2, 400, 5 * 100 + 1 * 300)
    assert beta.score == pytest.approx(2.0)
    assert books.ledger.reputation("alpha").score == 4.0


def test_audit_sees_books_that_do_not_add_up(books: Books) -> None:
    assert books.ledger.audit() == []
    books.ledger._accounts["alpha"].available += 1  # a bug, planted
    assert any("add up" in problem for problem in books.ledger.audit())


# ---- the vectors -----------------------------------------------------------------------------

LEDGER_VECTORS = sorted(ledger_vectors.HERE.glob("*.json"))


def test_ledger_vectors_are_the_generators_output() -> None:
    assert ledger_vectors.committed() == ledger_vectors.render(), (
        "protocol/vectors/ledger differs: run `python -m protocol.vectors.ledger.generate "
        "--write`")
    assert ledger_vectors.main(["--check"]) == 0


def test_every_ledger_rule_has_a_vector() -> None:
    expected = {step["expect"].get("error") for path in LEDGER_VECTORS
                for step in json.loads(path.read_text())["steps"]}
    ledger_codes = {cls.reason for cls in LedgerError.__subclasses__()}
    assert ledger_codes == {
        reasons.BROKEN_CHAIN, reasons.WRONG_SIGNER, reasons.BAD_ENTRY, reasons.OVERDRAFT,
        reasons.UNKNOWN_HOLD, reasons.HOLD_RESOLVED, reasons.HOLD_EXPIRED, reasons.CONFLICT,
        reasons.NOT_SETTLED, reasons.DUPLICATE_RATING}
    assert ledger_codes <= expected


@pytest.mark.parametrize("path", LEDGER_VECTORS, ids=lambda p: p.stem)
def test_ledger_vector(path: Path) -> None:
    vector = json.loads(path.read_text(encoding="utf-8"))
    keys = LedgerKeys({a["account"]: bytes.fromhex(a["public_key"])
                       for a in vector["accounts"]},
                      {o["name"]: bytes.fromhex(o["public_key"]) for o in vector["operators"]})
    ledger = Ledger(keys)
    for index, step in enumerate(vector["steps"]):
        where = f"step {index} ({step['note']})"
        wire = bytes.fromhex(step["wire"])
        if "error" in step["expect"]:
            before = [(ledger.position(a), ledger.balance(a)) for a in ACCOUNTS]
            with pytest.raises(ProtocolError) as info:
                ledger.apply_wire(wire, step["subject"])
            assert info.value.reason == step["expect"]["error"], f"{where}: {info.value}"
            assert [(ledger.position(a), ledger.balance(a)) for a in ACCOUNTS] == before
            continue
        applied = ledger.apply_wire(wire, step["subject"])
        assert as_json(dataclasses.asdict(applied)) == step["expect"]["ok"], where
    after = vector["after"]
    assert ledger.supply == after["supply"]
    for account, balance in after["balances"].items():
        assert ledger.balance(account, now=vector["now_ms"]) == Balance(**balance), account
    for account, reputation in after.get("reputation", {}).items():
        assert dataclasses.asdict(ledger.reputation(account)) == {"account": account,
                                                                  **reputation}
    assert ledger.audit() == []


# ---- the property: random histories against a model ------------------------------------------


@dataclasses.dataclass
class ModelHold:
    payer: str
    to: str
    amount: int
    expires_at: int
    task: str
    state: str = "pending"


class Model:
    """The balances as a payments clerk would add them up: what came in, what went out,
    what is held by a pending hold whose deadline has not passed."""

    def __init__(self) -> None:
        self.incoming: Counter[str] = Counter()
        self.outgoing: Counter[str] = Counter()
        self.supply = 0
        self.holds: dict[bytes, ModelHold] = {}
        self.settled: Counter[tuple[str, str, str]] = Counter()
        self.rated: set[tuple[str, str, str]] = set()
        self.scores: dict[str, tuple[int, int, int]] = {}
        self.heads: dict[str, tuple[int, bytes, int]] = {a: (0, GENESIS, 0) for a in ACCOUNTS}
        self.entries: dict[tuple[str, bytes], tuple[dict[str, Any], Applied]] = {}

    def held(self, account: str, now: int) -> int:
        return sum(h.amount for h in self.holds.values()
                   if h.payer == account and h.state == "pending" and h.expires_at >= now)

    def available(self, account: str, now: int) -> int:
        return self.incoming[account] - self.outgoing[account] - self.held(account, now)

    def refusal(self, account: str, record: Link, entry_id: bytes, ts: int) -> str | None:
        """The code the entry must be refused with, or None."""
        form = self.form(account, record, ts)
        if form:
            return form
        known = self.entries.get((account, entry_id))
        if known is not None and known[0] != content(record):
            return reasons.CONFLICT
        seq, head, last = self.heads[account]
        if (record.seq, record.prev) != (seq + 1, head) or ts < last:
            return None if known is not None and record.seq <= seq else reasons.BROKEN_CHAIN
        if known is not None:
            return None
        return self.rule(account, record, ts)

    def form(self, account: str, record: Link, ts: int) -> str | None:
        amount = getattr(record, "amount", 1)
        party = getattr(record, "to", None) or getattr(record, "peer", None)
        if not 0 < amount <= MAX_AMOUNT or party == account:
            return reasons.BAD_ENTRY
        if isinstance(record, Hold) and record.expires_at < ts:
            return reasons.BAD_ENTRY
        if isinstance(record, Rate) and not 1 <= record.score <= 5:
            return reasons.BAD_ENTRY
        return None

    def rule(self, account: str, record: Link, ts: int) -> str | None:
        if isinstance(record, Transfer | Hold) and record.amount > self.available(account, ts):
            return reasons.OVERDRAFT
        if isinstance(record, Post | Void):
            held = self.holds.get(record.hold)
            if held is None or held.payer != account:
                return reasons.UNKNOWN_HOLD
            if held.state in ("posted", "voided"):
                return reasons.HOLD_RESOLVED
            if isinstance(record, Post) and ts > held.expires_at:
                return reasons.HOLD_EXPIRED
            if isinstance(record, Post) and record.amount > held.amount:
                return reasons.BAD_ENTRY
        if isinstance(record, Rate):
            if not (self.settled[account, record.peer, record.task]
                    or self.settled[record.peer, account, record.task]):
                return reasons.NOT_SETTLED
            if (account, record.peer, record.task) in self.rated:
                return reasons.DUPLICATE_RATING
        return None

    def take(self, account: str, record: Link, entry_id: bytes, body: bytes, ts: int) -> None:
        """Book an entry the rules let through."""
        if isinstance(record, Mint):
            self.incoming[account] += record.amount
            self.supply += record.amount
        elif isinstance(record, Transfer):
            self.outgoing[account] += record.amount
            self.incoming[record.to] += record.amount
        elif isinstance(record, Hold):
            self.holds[entry_id] = ModelHold(account, record.to, record.amount,
                                             record.expires_at, record.task)
        elif isinstance(record, Post):
            held = self.holds[record.hold]
            held.state = "posted"
            self.outgoing[account] += record.amount
            self.incoming[held.to] += record.amount
            self.settled[account, held.to, held.task] += record.amount
        elif isinstance(record, Void):
            self.holds[record.hold].state = "voided"
        elif isinstance(record, Rate):
            weight = (self.settled[account, record.peer, record.task]
                      + self.settled[record.peer, account, record.task])
            self.rated.add((account, record.peer, record.task))
            tasks, total, weighted = self.scores.get(record.peer, (0, 0, 0))
            self.scores[record.peer] = (tasks + 1, total + weight,
                                        weighted + weight * record.score)
        self.heads[account] = (record.seq, hashlib.sha256(body).digest(), ts)


@dataclasses.dataclass
class Sent:
    account: str
    record: Link
    entry_id: bytes
    wire: bytes
    ts: int
    applied: Applied | None  # what it gave, once applied


ACCOUNT = st.sampled_from(ACCOUNTS)
# Another account mostly, now and then the account itself (bad_entry).
OTHER = st.sampled_from([1, 2, 1, 2, 1, 2, 0])
AMOUNT = st.integers(1, 400)
TASK = st.sampled_from(["t-1", "t-2", "t-3"])


def other(account: str, offset: int) -> str:
    return ACCOUNTS[(ACCOUNTS.index(account) + offset) % len(ACCOUNTS)]


class LedgerMachine(RuleBasedStateMachine):
    """Random histories of three entities; after every step the books must equal the
    model, add up, and hold no balance below zero and no hold resolved twice."""

    def __init__(self) -> None:
        super().__init__()
        self.ledger = Ledger(ledger_keys())
        self.model = Model()
        self.clock = T0
        self.count = 0
        self.sent: list[Sent] = []
        self.resolutions: Counter[bytes] = Counter()

    def submit(self, account: str, record: Link, entry_id: bytes | None = None, *,
               at: tuple[int, bytes] | None = None) -> Applied | None:
        """Seal `record` at the chain's next position (or `at`), apply it, and hold the
        outcome to the model's; returns what was applied."""
        self.clock += 1
        self.count += 1
        entry_id = entry_id or eid(f"machine {self.count}")
        seq, head, _ = self.model.heads[account]
        seq, prev = at or (seq + 1, head)
        record = dataclasses.replace(record, seq=seq, prev=prev)
        key = OPERATOR if isinstance(record, Mint) else KEYS[account]
        wire = seal_entry(key, account, record, entry_id=entry_id, ts=self.clock)
        return self.deliver(Sent(account, record, entry_id, wire, self.clock, None))

    def deliver(self, sent: Sent) -> Applied | None:
        account, record, entry_id, ts = sent.account, sent.record, sent.entry_id, sent.ts
        expected = self.model.refusal(account, record, entry_id, ts)
        known = self.model.entries.get((account, entry_id))
        try:
            entry = self.ledger.read(sent.wire, subjects.ledger(account))
            planned = self.ledger.check(entry)
            applied = self.ledger.apply(entry)
        except LedgerError as exc:
            assert exc.reason == expected, f"{exc} where the model says {expected}"
            return None
        assert expected is None, f"applied where the model says {expected}"
        assert applied == planned
        if known is not None:  # a retry: the original result, and no second effect
            assert applied == known[1]
            if record.seq == self.model.heads[account][0] + 1:
                self.model.heads[account] = (record.seq, entry.hash, ts)
            return applied
        self.model.take(account, record, entry_id, body_of(sent.wire), ts)
        self.model.entries[account, entry_id] = (content(record), applied)
        self.sent.append(dataclasses.replace(sent, applied=applied))
        if isinstance(record, Post | Void):
            self.resolutions[record.hold] += 1
        return applied

    def hold_of(self, account: str, pick: int, pending: bool) -> bytes:
        """One of the account's holds (a pending one if it has any and `pending`), or an
        id that names none."""
        holds = [hold_id for hold_id, h in self.model.holds.items() if h.payer == account]
        if pending:
            holds = [h for h in holds if self.model.holds[h].state == "pending"] or holds
        return holds[pick % len(holds)] if holds else eid("no such hold")

    @initialize(amount=st.integers(0, 500))
    def allowance(self, amount: int) -> None:
        for account in ACCOUNTS if amount else ():
            self.submit(account, mint(amount, account))

    @rule(account=ACCOUNT, amount=AMOUNT)
    def mint(self, account: str, amount: int) -> None:
        self.submit(account, mint(amount, account))

    @rule(payer=ACCOUNT, payee=OTHER, amount=AMOUNT)
    def transfer(self, payer: str, payee: int, amount: int) -> None:
        self.submit(payer, pay(other(payer, payee), amount))

    @rule(payer=ACCOUNT, payee=OTHER, amount=AMOUNT, lasts=st.integers(0, 30), task=TASK)
    def hold(self, payer: str, payee: int, amount: int, lasts: int, task: str) -> None:
        self.submit(payer, hold(other(payer, payee), amount, self.clock + 1 + lasts, task))

    @rule(payer=ACCOUNT, pick=st.integers(0, 99), pending=st.booleans(),
          percent=st.integers(1, 110))
    def post(self, payer: str, pick: int, pending: bool, percent: int) -> None:
        hold_id = self.hold_of(payer, pick, pending)
        held = self.model.holds.get(hold_id)
        amount = max(1, held.amount * percent // 100) if held else percent
        self.submit(payer, Post(0, b"", hold_id, amount))

    @rule(payer=ACCOUNT, pick=st.integers(0, 99), pending=st.booleans())
    def void(self, payer: str, pick: int, pending: bool) -> None:
        self.submit(payer, Void(0, b"", self.hold_of(payer, pick, pending)))

    @rule(ms=st.integers(1, 100))
    def time_passes(self, ms: int) -> None:
        self.clock += ms

    @rule(rater=ACCOUNT, peer=OTHER, task=TASK, score=st.integers(0, 6))
    def rate(self, rater: str, peer: int, task: str, score: int) -> None:
        self.submit(rater, rate(other(rater, peer), task, score))

    @precondition(lambda self: bool(self.model.settled))
    @rule(pick=st.integers(0, 99), payee_rates=st.booleans(), score=st.integers(1, 5))
    def rate_a_settled_escrow(self, pick: int, payee_rates: bool, score: int) -> None:
        escrows = sorted(self.model.settled)
        payer, payee, task = escrows[pick % len(escrows)]
        rater, peer = (payee, payer) if payee_rates else (payer, payee)
        self.submit(rater, rate(peer, task, score))

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(0, 999))
    def redelivered(self, pick: int) -> None:
        """The same wire again, as JetStream may redeliver it."""
        sent = self.sent[pick % len(self.sent)]
        assert self.deliver(sent) == sent.applied

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(0, 999))
    def retried_after_a_lost_reply(self, pick: int) -> None:
        """The writer seals the same id and body again at the chain's end."""
        sent = self.sent[pick % len(self.sent)]
        self.submit(sent.account, sent.record, sent.entry_id)

    @precondition(lambda self: bool(self.sent))
    @rule(pick=st.integers(0, 999))
    def id_reused_for_another_body(self, pick: int) -> None:
        sent = self.sent[pick % len(self.sent)]
        record = sent.record
        changed: Link
        if isinstance(record, Mint | Transfer | Hold | Post):
            changed = dataclasses.replace(record, amount=record.amount + 1)
        elif isinstance(record, Void):
            changed = dataclasses.replace(record, reason="changed")
        else:
            assert isinstance(record, Rate)
            changed = dataclasses.replace(record, note="changed")
        self.submit(sent.account, changed, sent.entry_id)

    @rule()
    def restarted_from_a_snapshot(self) -> None:
        """A reader restarting from its checkpoint goes on exactly as if it had not: the
        rules after this step check the restored books against the model."""
        views = [(a, self.ledger.position(a), self.ledger.balance(a, self.clock),
                  self.ledger.holds(a), self.ledger.reputation(a)) for a in ACCOUNTS]
        self.ledger, extra = snapshot.load(snapshot.dump(self.ledger, {"after": self.count}),
                                           self.ledger.keys)
        assert extra == {"after": self.count}
        assert views == [(a, self.ledger.position(a), self.ledger.balance(a, self.clock),
                          self.ledger.holds(a), self.ledger.reputation(a)) for a in ACCOUNTS]

    @rule(payer=ACCOUNT, payees=st.tuples(OTHER, OTHER), amounts=st.tuples(AMOUNT, AMOUNT))
    def two_writers_race(self, payer: str, payees: tuple[int, int],
                         amounts: tuple[int, int]) -> None:
        """Two processes with the payer's key append at the same position: the second
        finds the chain moved on (the stream's compare-and-set), reads it, and retries."""
        seq, head, _ = self.model.heads[payer]
        first, second = (pay(other(payer, p), a) for p, a in zip(payees, amounts, strict=True))
        applied = self.submit(payer, first, at=(seq + 1, head))
        racer = eid(f"racer {self.count}")
        self.submit(payer, second, racer, at=(seq + 1, head))
        if applied is not None:
            self.submit(payer, second, racer)

    @invariant()
    def books_equal_the_model_and_add_up(self) -> None:
        assert self.ledger.audit() == []
        total = 0
        for account in ACCOUNTS:
            balance = self.ledger.balance(account, now=self.clock)
            assert balance == Balance(self.model.available(account, self.clock),
                                      self.model.held(account, self.clock)), account
            assert balance.available >= 0 and balance.held >= 0
            total += balance.total
            seq, head, last = self.model.heads[account]
            assert self.ledger.position(account) == (seq + 1, head, last)
            tasks, weight, weighted = self.model.scores.get(account, (0, 0, 0))
            reputation = self.ledger.reputation(account)
            assert (reputation.tasks, reputation.weight, reputation.weighted) == (
                tasks, weight, weighted)
        assert total == self.ledger.supply == self.model.supply
        assert all(count == 1 for count in self.resolutions.values())


LedgerMachine.TestCase.settings = settings(
    max_examples=60, stateful_step_count=40, deadline=None,
    suppress_health_check=[HealthCheck.too_slow])
TestLedgerHistories = LedgerMachine.TestCase


def test_a_snapshot_is_refused_for_other_keys_a_foreign_format_or_damage() -> None:
    books = Ledger(ledger_keys())
    data = snapshot.dump(books, {})
    other = LedgerKeys({"alpha": bytes(KEYS["alpha"].verify_key)})
    for bad, keys, says in ((data, other, "other keys"), (b"\x93junk", ledger_keys(),
                                                           "unreadable"),
                            (msgpack.packb({"format": 99}), ledger_keys(), "format 99")):
        with pytest.raises(snapshot.SnapshotError, match=says):
            snapshot.load(bad, keys)

