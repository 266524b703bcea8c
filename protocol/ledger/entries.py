"""The ledger's entry kinds (PROTOCOL.md §16): a record per kind, each carrying its place
on its account's chain, and the limits their fields must keep.

An entry's id and time are its envelope's `id` (caller-chosen: the idempotency key) and
`ts`; the records hold the rest.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from .. import kinds

GENESIS = bytes(32)  # the `prev` of an account's first entry
HASH_BYTES = 32
MAX_AMOUNT = 2**63 - 1  # an amount, a balance and the supply fit a signed 64-bit integer
SCORES = range(1, 6)
MAX_TEXT = 1024  # characters of a memo, task id, reason or note


@dataclasses.dataclass(frozen=True, slots=True)
class Link:
    """The fields every entry begins with: where it sits on its account's chain."""

    seq: int  # the entry's position on its account's chain, 1 for the first
    # SHA-256 of the previous entry's body as signed (32 bytes); 32 zero bytes at seq 1
    prev: bytes


@kinds.kind("mint")
@dataclasses.dataclass(frozen=True, slots=True)
class Mint(Link):
    """Money entering the ledger, credited to the chain's own account; signed by an
    operator key, never by the account's."""

    account: str  # the account credited: the chain's own
    amount: int  # 1..2^63-1, and the supply stays within 2^63-1
    memo: str = ""  # for people, as every text of an entry: at most 1024 characters


@kinds.kind("transfer")
@dataclasses.dataclass(frozen=True, slots=True)
class Transfer(Link):
    """A payment from the chain's account to `to`, at once."""

    to: str  # the payee, an entity name other than the account
    amount: int  # 1..2^63-1, at most the account's available balance
    memo: str = ""  # for people


@kinds.kind("hold")
@dataclasses.dataclass(frozen=True, slots=True)
class Hold(Link):
    """A pending transfer (escrow) to `to`: the amount leaves the available balance
    until a `post` pays it, a `void` releases it, or `expires_at` passes."""

    to: str  # the payee, an entity name other than the account
    amount: int  # 1..2^63-1, at most the account's available balance
    expires_at: int  # ms since the epoch; not before the entry's ts
    task: str  # the task the escrow pays for (1..1024 characters)


@kinds.kind("post")
@dataclasses.dataclass(frozen=True, slots=True)
class Post(Link):
    """Resolves a hold of the same chain by paying `amount` of it to its payee; the rest
    is released to the account."""

    hold: bytes  # the hold's entry id
    amount: int  # 1..the amount held


@kinds.kind("void")
@dataclasses.dataclass(frozen=True, slots=True)
class Void(Link):
    """Resolves a hold of the same chain by releasing all of it to the account."""

    hold: bytes  # the hold's entry id
    reason: str = ""  # for people: why the work was not accepted, say


@kinds.kind("rate")
@dataclasses.dataclass(frozen=True, slots=True)
class Rate(Link):
    """A rating of `peer` by the chain's account for an escrow between them that was
    settled (posted) for `task`; once per peer and task."""

    peer: str  # the party rated: the escrow's payee, or its payer
    task: str  # the `task` of the settled hold
    score: int  # 1..5
    note: str = ""  # for people


ENTRY_KINDS: dict[str, type[Link]] = {
    "mint": Mint, "transfer": Transfer, "hold": Hold, "post": Post, "void": Void,
    "rate": Rate,
}


def content(record: Link) -> dict[str, Any]:
    """What an entry says, without where it sits: two entries with one id are the same
    entry (a retry) exactly when their kinds and contents are equal."""
    # Every field of an entry kind is its own wire form (an int, str or bytes), so its
    # encoding is the field's value: read the fields directly, as kinds.encode would.
    names = _CONTENT.get(type(record))
    if names is None:
        names = _CONTENT[type(record)] = tuple(
            field.name for field in dataclasses.fields(record)
            if field.name not in ("seq", "prev"))
    return {"typ": kinds.kind_name(record), **{name: getattr(record, name) for name in names}}


_CONTENT: dict[type[Link], tuple[str, ...]] = {}
