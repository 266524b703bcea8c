"""What the orchestrator and entityctl ask of their own ledger actor, and its answers.

Amounts are integers (the ledger's unit); entry ids are 16 bytes, shown as hex.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import kind


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
