"""Why a ledger entry is refused: one subclass per rule of PROTOCOL.md §16, each with its
reason code, under the protocol's own error tree.

    ProtocolError                 (protocol.errors: an envelope that does not open)
    └── LedgerError               (account, seq, entry_id)
        ├── BrokenChain           broken_chain      seq, prev or ts out of the chain
        ├── WrongSigner           wrong_signer      not the key the entry's kind needs
        ├── BadEntry              bad_entry         a field breaks a rule of its own
        ├── Overdraft             overdraft         more than the available balance
        ├── UnknownHold           unknown_hold      a post or void naming no hold
        ├── HoldResolved          hold_resolved     the hold was posted or voided already
        ├── HoldExpired           hold_expired      a post past the hold's expires_at
        ├── Conflict              conflict          a known entry id with another body
        ├── NotSettled            not_settled       a rating no settled escrow backs
        └── DuplicateRating       duplicate_rating  the same peer and task rated twice

An entry that does not open as an envelope raises the envelope's own error (unknown_key,
bad_signature, bad_payload, ...), so a reader catches ProtocolError for both.
"""

from __future__ import annotations

from .. import reasons
from ..errors import ProtocolError


class LedgerError(ProtocolError):
    """An entry that opened as an envelope but breaks a ledger rule: the chain, the
    entry's position on it and its id say which one."""

    def __init__(self, detail: str, *, account: str, seq: int, entry_id: bytes,
                 subject: str | None = None) -> None:
        super().__init__(detail, subject=subject)
        self.account = account
        self.seq = seq
        self.entry_id = entry_id

    def __str__(self) -> str:
        return (f"{self.reason}: {self.detail} ({self.account}'s entry {self.seq}, "
                f"id {self.entry_id.hex()})")


class BrokenChain(LedgerError):
    reason = reasons.BROKEN_CHAIN


class WrongSigner(LedgerError):
    reason = reasons.WRONG_SIGNER


class BadEntry(LedgerError):
    reason = reasons.BAD_ENTRY


class Overdraft(LedgerError):
    reason = reasons.OVERDRAFT


class UnknownHold(LedgerError):
    reason = reasons.UNKNOWN_HOLD


class HoldResolved(LedgerError):
    reason = reasons.HOLD_RESOLVED


class HoldExpired(LedgerError):
    reason = reasons.HOLD_EXPIRED


class Conflict(LedgerError):
    reason = reasons.CONFLICT


class NotSettled(LedgerError):
    reason = reasons.NOT_SETTLED


class DuplicateRating(LedgerError):
    reason = reasons.DUPLICATE_RATING
