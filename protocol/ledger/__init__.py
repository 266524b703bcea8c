"""The ledger's pure core (PROTOCOL.md §16): its entry kinds, sealing and reading entries
of an account's chain, and the books that replay the chains and refuse what breaks a rule.

entries (the kinds and their limits), signed (entries as envelopes, the hash rule, who
may sign), errors (a LedgerError per rule), state (what the books keep and show), books
(the Ledger: the rules, applied entry by entry).
"""

from .books import Ledger
from .entries import (
    ENTRY_KINDS,
    GENESIS,
    MAX_AMOUNT,
    Hold,
    Link,
    Mint,
    Post,
    Rate,
    Transfer,
    Void,
    content,
)
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
    WrongSigner,
)
from .signed import (
    MAX_ENTRY_BYTES,
    Entry,
    LedgerKeys,
    check_entry,
    entry_envelope,
    entry_hash,
    read_entry,
    seal_entry,
)
from .state import Applied, Balance, HoldState, Position, Reputation

__all__ = [
    "ENTRY_KINDS",
    "GENESIS",
    "MAX_AMOUNT",
    "MAX_ENTRY_BYTES",
    "Applied",
    "BadEntry",
    "Balance",
    "BrokenChain",
    "Conflict",
    "DuplicateRating",
    "Entry",
    "Hold",
    "HoldExpired",
    "HoldResolved",
    "HoldState",
    "Ledger",
    "LedgerError",
    "LedgerKeys",
    "Link",
    "Mint",
    "NotSettled",
    "Overdraft",
    "Position",
    "Post",
    "Rate",
    "Reputation",
    "Transfer",
    "UnknownHold",
    "Void",
    "WrongSigner",
    "check_entry",
    "content",
    "entry_envelope",
    "entry_hash",
    "read_entry",
    "seal_entry",
]
