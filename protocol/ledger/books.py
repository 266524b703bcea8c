"""The books: a pure replay of ledger entries in stream order that applies each entry or
refuses it with the rule it breaks (PROTOCOL.md §16), and the balances, holds and
reputation that follow from what it applied.

Every reader that applies the same entries in the same order gets the same books: time
is read only from the entries' own `ts`, except in the views that take the reader's `now`.
"""

from __future__ import annotations

import dataclasses
import heapq
from collections.abc import Callable
from typing import TypeVar

from nacl.signing import SigningKey

from .. import kinds
from .entries import GENESIS, MAX_AMOUNT, Hold, Link, Mint, Post, Rate, Transfer, Void, content
from .errors import (
    BadEntry,
    BrokenChain,
    Conflict,
    DuplicateRating,
    HoldExpired,
    HoldResolved,
    LedgerError,
    NotSettled,
    Overdraft,
    UnknownHold,
)
from .signed import Entry, LedgerKeys, read_entry, seal_entry
from .state import (
    EXPIRED,
    PENDING,
    POSTED,
    RESOLVED,
    VOIDED,
    Account,
    Applied,
    Balance,
    HoldState,
    Position,
    Reputation,
)

R = TypeVar("R", bound=Link)
Effect = Callable[[], None]


class Ledger:
    """The books of every chain it is given, entry by entry in the stream's order.

    `apply` takes an entry or raises a LedgerError (changing nothing); `check` says what
    `apply` would do without doing it.
    """

    def __init__(self, keys: LedgerKeys) -> None:
        self.keys = keys
        self.supply = 0  # the sum of every mint
        self._accounts: dict[str, Account] = {}
        self._settled: dict[tuple[str, str, str], int] = {}  # (payer, payee, task)
        self._rated: set[tuple[str, str, str]] = set()  # (rater, peer, task)
        self._reputation: dict[str, Reputation] = {}

    # ---- entries in ----------------------------------------------------------------

    def read(self, wire: bytes, subject: str) -> Entry:
        return read_entry(wire, subject, self.keys)

    def apply_wire(self, wire: bytes, subject: str) -> Applied:
        return self.apply(self.read(wire, subject))

    def apply(self, entry: Entry) -> Applied:
        return self._take(entry, commit=True)

    def check(self, entry: Entry) -> Applied:
        return self._take(entry, commit=False)

    def _take(self, entry: Entry, *, commit: bool) -> Applied:
        account = self._accounts.get(entry.account) or Account(entry.account)
        known = account.results.get(entry.id)
        if known is not None:
            if account.contents[entry.id] != content(entry.record):
                raise _refused(Conflict, entry, "the chain holds this id with another body "
                               f"(entry {known.seq})")
            if entry.seq <= account.seq:
                return known  # delivered again
        _check_position(account, entry)
        if known is not None:  # appended again: a link of the chain, with no effect
            if commit:
                self._advance(account, entry)
            return known
        rule = _RULES[type(entry.record)]
        effect = rule(self, account, entry)
        applied = Applied(entry.account, entry.id, kinds.kind_name(entry.record), entry.seq,
                          entry.hash, entry.ts)
        if commit:
            self._advance(account, entry)
            effect()
            account.results[entry.id] = applied
            account.contents[entry.id] = content(entry.record)
        return applied

    def _advance(self, account: Account, entry: Entry) -> None:
        self._accounts[account.name] = account
        account.expire(entry.ts)
        account.seq, account.head, account.ts = entry.seq, entry.hash, entry.ts

    def _account(self, name: str) -> Account:
        account = self._accounts.get(name)
        if account is None:
            account = self._accounts[name] = Account(name)
        return account

    # ---- the rules of each kind: check, and return the effect to commit -------------

    def _mint(self, account: Account, entry: Entry) -> Effect:
        amount = _record(entry, Mint).amount
        if self.supply + amount > MAX_AMOUNT:
            raise _refused(BadEntry, entry, f"the supply would pass {MAX_AMOUNT}")

        def effect() -> None:
            account.available += amount
            self.supply += amount

        return effect

    def _transfer(self, account: Account, entry: Entry) -> Effect:
        record = _record(entry, Transfer)
        _cover(account, entry, record.amount)

        def effect() -> None:
            account.available -= record.amount
            self._account(record.to).available += record.amount

        return effect

    def _hold(self, account: Account, entry: Entry) -> Effect:
        record = _record(entry, Hold)
        _cover(account, entry, record.amount)

        def effect() -> None:
            account.available -= record.amount
            account.held += record.amount
            account.holds[entry.id] = HoldState(entry.id, account.name, record.to,
                                                record.amount, record.expires_at,
                                                record.task)
            heapq.heappush(account.expiries, (record.expires_at, entry.id))

        return effect

    def _post(self, account: Account, entry: Entry) -> Effect:
        record = _record(entry, Post)
        hold = _resolvable(account, entry, record.hold)
        if entry.ts > hold.expires_at:
            raise _refused(HoldExpired, entry, f"the hold expired at {hold.expires_at}")
        if record.amount > hold.amount:
            raise _refused(BadEntry, entry, f"posts {record.amount} of a hold of "
                           f"{hold.amount}")

        def effect() -> None:
            account.holds[hold.id] = dataclasses.replace(hold, state=POSTED,
                                                         posted=record.amount)
            account.held -= hold.amount
            account.available += hold.amount - record.amount
            self._account(hold.to).available += record.amount
            escrow = (account.name, hold.to, hold.task)
            # Saturates (PROTOCOL.md 16.5): one escrow posted again and again adds up
            # without bound, and the books must fit 64 bits on every reader.
            self._settled[escrow] = min(self._settled.get(escrow, 0) + record.amount,
                                        MAX_AMOUNT)

        return effect

    def _void(self, account: Account, entry: Entry) -> Effect:
        hold = _resolvable(account, entry, _record(entry, Void).hold)

        def effect() -> None:
            if account.holds[hold.id].state == PENDING:  # else its deadline released it
                account.held -= hold.amount
                account.available += hold.amount
            account.holds[hold.id] = dataclasses.replace(hold, state=VOIDED)

        return effect

    def _rate(self, account: Account, entry: Entry) -> Effect:
        record = _record(entry, Rate)
        rater, peer, task = account.name, record.peer, record.task
        settled = (self._settled.get((rater, peer, task), 0)
                   + self._settled.get((peer, rater, task), 0))
        if not settled:
            raise _refused(NotSettled, entry, f"no escrow between {rater} and {peer} was "
                           f"settled for task {task!r}")
        if (rater, peer, task) in self._rated:
            raise _refused(DuplicateRating, entry, f"{rater} rated {peer} for task "
                           f"{task!r} already")

        def effect() -> None:
            self._rated.add((rater, peer, task))
            self._reputation[peer] = self.reputation(peer).rated(record.score, settled)

        return effect

    # ---- views -------------------------------------------------------------------------

    def accounts(self) -> list[str]:
        return sorted(self._accounts)

    def position(self, account: str) -> Position:
        known = self._accounts.get(account)
        if known is None:
            return Position(1, GENESIS, 0)
        return Position(known.seq + 1, known.head, known.ts)

    def balance(self, account: str, now: int | None = None) -> Balance:
        """The account's balance; given the reader's clock `now`, the pending holds whose
        deadline it has passed count as released."""
        known = self._accounts.get(account)
        if known is None:
            return Balance(0, 0)
        released = 0 if now is None else known.released_by(now)
        return Balance(known.available + released, known.held - released)

    def holds(self, account: str, now: int | None = None) -> list[HoldState]:
        """The account's holds, oldest first; a pending one whose deadline `now` has
        passed shows as expired."""
        known = self._accounts.get(account)
        if known is None:
            return []
        return [dataclasses.replace(hold, state=EXPIRED)
                if now is not None and hold.state == PENDING and now > hold.expires_at
                else hold for hold in known.holds.values()]

    def settled(self, payer: str, payee: str, task: str) -> int:
        """What `payer`'s escrows for `task` paid `payee`, up to MAX_AMOUNT."""
        return self._settled.get((payer, payee, task), 0)

    def reputation(self, account: str) -> Reputation:
        return self._reputation.get(account) or Reputation(account, 0, 0, 0)

    def result(self, account: str, entry_id: bytes) -> Applied | None:
        """What the entry `entry_id` of `account`'s chain gave, if the chain holds it."""
        known = self._accounts.get(account)
        return None if known is None else known.results.get(entry_id)

    def retry_of(self, account: str, entry_id: bytes, record: Link) -> Applied | None:
        """For a writer about to append `record` as `entry_id`: the original result when
        the chain holds that entry already (then append nothing), None when the id is new;
        Conflict when the chain holds the id with another body."""
        known = self._accounts.get(account)
        if known is None or entry_id not in known.results:
            return None
        if known.contents[entry_id] != content(record):
            original = known.results[entry_id]
            raise Conflict(f"the chain holds this id with another body (entry "
                           f"{original.seq})", account=account, seq=record.seq,
                           entry_id=entry_id)
        return known.results[entry_id]

    def audit(self) -> list[str]:
        """The invariants, checked: what breaks them (nothing, unless the books are
        wrong). Conservation: balances and holds add up to the supply; no balance below
        zero; each account's held amount is its pending holds'; a hold paid at most its
        amount, and only once posted."""
        problems = []
        total = 0
        for account in self._accounts.values():
            total += account.available + account.held
            if account.available < 0 or account.held < 0:
                problems.append(f"{account.name}: balance {account.available} held "
                                f"{account.held}")
            pending = sum(h.amount for h in account.holds.values() if h.state == PENDING)
            if pending != account.held:
                problems.append(f"{account.name}: holds {pending}, held {account.held}")
            for hold in account.holds.values():
                if (hold.state == POSTED) != (0 < hold.posted <= hold.amount):
                    problems.append(f"{account.name}: hold {hold.id.hex()} {hold.state} "
                                    f"paid {hold.posted} of {hold.amount}")
        if total != self.supply:
            problems.append(f"balances and holds add up to {total}, the mints to "
                            f"{self.supply}")
        return problems

    # ---- writing -----------------------------------------------------------------------

    def seal_next(self, key: SigningKey, account: str, record: Link, *, entry_id: bytes,
                  ts: int) -> bytes:
        """The wire of `record` as the next entry of `account`'s chain as these books hold
        it (its own `seq` and `prev` replaced), signed by `key`."""
        seq, prev, _ = self.position(account)
        return seal_entry(key, account, dataclasses.replace(record, seq=seq, prev=prev),
                          entry_id=entry_id, ts=ts)


_RULES: dict[type[Link], Callable[[Ledger, Account, Entry], Effect]] = {
    Mint: Ledger._mint, Transfer: Ledger._transfer, Hold: Ledger._hold,
    Post: Ledger._post, Void: Ledger._void, Rate: Ledger._rate,
}


def _check_position(account: Account, entry: Entry) -> None:
    if entry.seq != account.seq + 1:
        raise _refused(BrokenChain, entry, f"seq {entry.seq} where {account.seq + 1} is "
                       "next")
    if entry.prev != account.head:
        raise _refused(BrokenChain, entry, "prev is not the hash of the entry before")
    if entry.ts < account.ts:
        raise _refused(BrokenChain, entry, f"ts {entry.ts} is older than the entry "
                       f"before ({account.ts})")


def _cover(account: Account, entry: Entry, amount: int) -> None:
    available = account.available + account.released_by(entry.ts)
    if amount > available:
        raise _refused(Overdraft, entry, f"{amount} is more than the {available} available")


def _resolvable(account: Account, entry: Entry, hold_id: bytes) -> HoldState:
    hold = account.holds.get(hold_id)
    if hold is None:
        raise _refused(UnknownHold, entry, f"no hold {hold_id.hex()} on the chain")
    if hold.state in RESOLVED:
        raise _refused(HoldResolved, entry, f"the hold was {hold.state} already")
    return hold


def _record(entry: Entry, cls: type[R]) -> R:
    record = entry.record
    if not isinstance(record, cls):
        raise TypeError(f"{type(record).__name__} is not a {cls.__name__}")
    return record


def _refused(error: type[LedgerError], entry: Entry, detail: str) -> LedgerError:
    return error(detail, account=entry.account, seq=entry.seq, entry_id=entry.id,
                 subject=entry.subject)
