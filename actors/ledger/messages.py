"""What the orchestrator and entityctl ask of their own ledger actor, and its answers.

Amounts are integers (the ledger's unit); entry ids are 16 bytes, shown as hex.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import kind

# A LedgerResult's code when the chain held the entry already: the original result,
# nothing more done. (Otherwise `done`, or a reason code of protocol.reasons.)
RETRIED = "retried"


@kind("balance_get")
@dataclass(frozen=True, slots=True)
class BalanceGet:
    account: str = ""  # empty: this entity's own


@kind("balance")
@dataclass(frozen=True, slots=True)
class Balance:
    account: str
    available: int  # what it may pay or hold now
    held: int  # in its pending holds
    entries: int  # how many entries its chain holds


@kind("pay")
@dataclass(frozen=True, slots=True)
class Pay:
    """Transfer `amount` to `to` at once. `id` (16 bytes) makes a retry safe: the same id
    with the same payment is answered with the original result and pays nothing more."""

    to: str
    amount: int
    memo: str = ""
    id: bytes = b""  # empty: a fresh one


@kind("ledger_result")
@dataclass(frozen=True, slots=True)
class LedgerResult:
    """What a write to the chain did: `code` is `done` (appended now), `retried` (the
    chain held this entry already: nothing more was done) or a reason code."""

    ok: bool
    code: str
    text: str
    id: str = ""  # the entry's id, hex
    seq: int = 0  # its position on the chain


@kind("ledger_get")
@dataclass(frozen=True, slots=True)
class LedgerGet:
    peer: str = ""  # only the entries that concern this peer
    limit: int = 50


@dataclass(frozen=True, slots=True)
class EntryInfo:
    account: str  # whose chain holds it
    seq: int
    id: str  # hex
    ts: int  # ms since the epoch
    typ: str  # mint | transfer | hold | post | void | rate
    amount: int  # 0 for a rating
    counterparty: str  # the payee, the rated peer, or the payer of a credit
    text: str  # memo, task, reason or note


@kind("ledger_entries")
@dataclass(frozen=True, slots=True)
class LedgerEntries:
    """The entries of this entity's chain and the credits to it, newest first."""

    entries: list[EntryInfo] = field(default_factory=list)


@kind("ledger_verify")
@dataclass(frozen=True, slots=True)
class LedgerVerify:
    """Replay every chain of the LEDGER stream from its start into fresh books."""


@kind("ledger_report")
@dataclass(frozen=True, slots=True)
class LedgerReport:
    ok: bool
    entries: int  # entries replayed
    chains: int
    supply: int  # the sum of every mint
    violations: list[str] = field(default_factory=list)  # the first of each chain
    ignored: int = 0  # messages on the chains' subjects that are no entries (16.3)
    ignored_noted: list[str] = field(default_factory=list)  # the first of them, said


@kind("hold_place")
@dataclass(frozen=True, slots=True)
class HoldPlace:
    """Escrow: set `amount` aside for `to` until a post pays it, a void releases it or
    `expires_at` (ms since the epoch) passes. `id` makes a retry safe, as for a payment."""

    to: str
    amount: int
    expires_at: int
    task: str
    id: bytes = b""


@kind("hold_resolve")
@dataclass(frozen=True, slots=True)
class HoldResolve:
    """Resolve one of this entity's holds: `amount` > 0 posts that much of it to its
    payee (the rest released), 0 voids it."""

    hold: bytes
    amount: int = 0
    reason: str = ""  # for a void: why
    id: bytes = b""


@kind("hold_get")
@dataclass(frozen=True, slots=True)
class HoldGet:
    payer: str  # whose chain holds it
    hold: bytes


@kind("hold_info")
@dataclass(frozen=True, slots=True)
class HoldInfo:
    found: bool
    payer: str = ""
    to: str = ""
    amount: int = 0
    expires_at: int = 0  # ms since the epoch
    task: str = ""
    state: str = ""  # pending | posted | voided | expired (as of now)
    posted: int = 0  # what its post paid


@kind("rate_peer")
@dataclass(frozen=True, slots=True)
class RatePeer:
    """Rate `peer` 1..5 for `task`, an escrow between the two that was settled."""

    peer: str
    task: str
    score: int
    note: str = ""
    id: bytes = b""


@kind("reputation_get")
@dataclass(frozen=True, slots=True)
class ReputationGet:
    account: str = ""  # empty: this entity's own


@kind("reputation")
@dataclass(frozen=True, slots=True)
class ReputationInfo:
    """Ratings weighed by the amount each rated escrow settled."""

    account: str
    score: float  # the weighted mean, 1..5; 0 when nothing rated
    tasks: int  # rated settled escrows
    weight: int  # the amount they settled, as far as it counts (at most 2^63 - 1)
