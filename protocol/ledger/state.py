"""What the books keep per account (its chain's head, balances and holds) and the
records their views return."""

from __future__ import annotations

import dataclasses
import heapq
from typing import Any, NamedTuple

from .entries import GENESIS, MAX_AMOUNT

PENDING, POSTED, VOIDED, EXPIRED = "pending", "posted", "voided", "expired"
RESOLVED = (POSTED, VOIDED)


@dataclasses.dataclass(frozen=True, slots=True)
class Applied:
    """What applying an entry gave; a retry of the entry (its id and content again) gets
    this same result back and changes nothing."""

    account: str
    id: bytes
    typ: str
    seq: int  # where the entry that took effect sits on the chain
    hash: bytes
    ts: int


@dataclasses.dataclass(frozen=True, slots=True)
class Balance:
    available: int  # what the account may transfer or hold
    held: int  # in its pending holds

    @property
    def total(self) -> int:
        return self.available + self.held


@dataclasses.dataclass(frozen=True, slots=True)
class HoldState:
    """A hold and what became of it: pending, posted, voided, or expired (released by
    its deadline; a void may still record it, a post may not)."""

    id: bytes
    payer: str
    to: str
    amount: int
    expires_at: int
    task: str
    state: str = PENDING
    posted: int = 0  # paid to `to` by its post


@dataclasses.dataclass(frozen=True, slots=True)
class Reputation:
    """What the ratings of an account say: each score weighs as much as the amount its
    escrow settled, so a rating no money backs counts for nothing."""

    account: str
    tasks: int  # the settled escrows rated
    weight: int  # the amount they settled
    weighted: int  # the sum of score times settled amount

    @property
    def score(self) -> float | None:
        """The weighted mean score, 1..5; None before any rating."""
        return self.weighted / self.weight if self.weight else None

    def rated(self, score: int, settled: int) -> Reputation:
        """With one more rating: it weighs `settled`, or the most that keeps `weighted`
        within MAX_AMOUNT (PROTOCOL.md 16.5). So `weight` <= `weighted` <= MAX_AMOUNT,
        and the mean is still exact over the weights counted: money cycled between two
        accounts adds up without bound, and the books must fit 64 bits on every reader."""
        weight = min(settled, (MAX_AMOUNT - self.weighted) // score)
        return Reputation(self.account, self.tasks + 1, self.weight + weight,
                          self.weighted + score * weight)


class Position(NamedTuple):
    """Where the next entry of a chain goes."""

    seq: int
    prev: bytes
    ts: int  # the last entry's ts: the next one's is not older


class Account:
    """One account's chain head, balances and holds, as the books hold them."""

    __slots__ = ("available", "contents", "expiries", "head", "held", "holds", "name",
                 "results", "seq", "ts")

    def __init__(self, name: str) -> None:
        self.name = name
        self.seq = 0
        self.head = GENESIS
        self.ts = 0
        self.available = 0
        self.held = 0
        self.results: dict[bytes, Applied] = {}
        self.contents: dict[bytes, dict[str, Any]] = {}
        self.holds: dict[bytes, HoldState] = {}
        self.expiries: list[tuple[int, bytes]] = []  # a heap of pending holds' expires_at

    def released_by(self, ts: int) -> int:
        """What the pending holds whose deadline `ts` passes give back: a walk of the
        heap's part below `ts`, which the next entry's `expire` pops anyway."""
        heap, total, stack = self.expiries, 0, [0]
        while stack:
            index = stack.pop()
            if index < len(heap) and heap[index][0] < ts:
                hold = self.holds[heap[index][1]]
                if hold.state == PENDING:
                    total += hold.amount
                stack += (2 * index + 1, 2 * index + 2)
        return total

    def expire(self, ts: int) -> None:
        """Release the pending holds whose deadline `ts` passes."""
        while self.expiries and self.expiries[0][0] < ts:
            _, hold_id = heapq.heappop(self.expiries)
            hold = self.holds[hold_id]
            if hold.state == PENDING:
                self.holds[hold_id] = dataclasses.replace(hold, state=EXPIRED)
                self.held -= hold.amount
                self.available += hold.amount
