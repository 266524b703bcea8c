"""The books written down and read back (a reader's checkpoint): what a replay of the
chains built, so that a reader restarting does not replay every entry again.

A snapshot is the reader's own cache, not evidence: it holds no signatures, so it is
trusted only as far as the file it is kept in, and only with the keys it was made with
(LedgerKeys.fingerprint). A reader that cannot use one (another format, other keys, a stream that
no longer holds the chain heads it names) replays from the start instead.

Format 2 is format 1's layout from books whose sums over history stop at MAX_AMOUNT
(PROTOCOL.md 16.5). A format 1 snapshot is still read when none of its sums passes
MAX_AMOUNT: every sum only grows, so then none ever did, and the bounded rules would have
built the very same books; else it is refused, and the reader replays.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import msgpack

from .books import Ledger
from .entries import MAX_AMOUNT
from .signed import LedgerKeys
from .state import Account, Applied, HoldState, Reputation

FORMAT = 2
READS = (1, FORMAT)  # the formats `load` takes


class SnapshotError(ValueError):
    """A snapshot that cannot be used: replay from the start instead."""


def dump(books: Ledger, extra: dict[str, Any]) -> bytes:
    """The books and `extra` (the reader's own position, say) as bytes."""
    accounts = [[
        a.name, a.seq, a.head, a.ts, a.available, a.held,
        [_fields(r) for r in a.results.values()],
        [[k, v] for k, v in a.contents.items()],
        [_fields(h) for h in a.holds.values()],
        [list(e) for e in a.expiries],
    ] for a in books._accounts.values()]
    state = {
        "format": FORMAT, "keys": books.keys.fingerprint(), "supply": books.supply,
        "accounts": accounts,
        "settled": [[*k, v] for k, v in books._settled.items()],
        "rated": [list(k) for k in books._rated],
        "reputation": [_fields(r) for r in books._reputation.values()],
        "extra": extra,
    }
    return msgpack.packb(state, use_bin_type=True)


_NAMES: dict[type[Any], tuple[str, ...]] = {}


def _fields(record: Applied | HoldState | Reputation) -> tuple[Any, ...]:
    """dataclasses.astuple of a record whose fields are plain values (ints, str, bytes),
    without its deep copy: a checkpoint writes one for every entry of the books."""
    names = _NAMES.get(type(record))
    if names is None:
        names = _NAMES[type(record)] = tuple(f.name for f in dataclasses.fields(record))
    return tuple([getattr(record, name) for name in names])


def load(data: bytes, keys: LedgerKeys) -> tuple[Ledger, dict[str, Any]]:
    """Books built with `keys` from a snapshot, and its `extra`; SnapshotError when it
    cannot be used."""
    try:
        state = msgpack.unpackb(data, raw=False, strict_map_key=False)
        if state.get("format") not in READS:
            raise SnapshotError(f"format {state.get('format')!r}, not {FORMAT}")
        if state["keys"] != keys.fingerprint():
            raise SnapshotError("made with other keys")
        books = Ledger(keys)
        books.supply = state["supply"]
        for (name, seq, head, ts, available, held, results, contents, holds,
             expiries) in state["accounts"]:
            account = Account(name)
            account.seq, account.head, account.ts = seq, head, ts
            account.available, account.held = available, held
            account.results = {r[1]: Applied(*r) for r in results}
            account.contents = {k: v for k, v in contents}
            account.holds = {h[0]: HoldState(*h) for h in holds}
            account.expiries = [(e[0], e[1]) for e in expiries]
            books._accounts[name] = account
        books._settled = {(p, q, t): v for p, q, t, v in state["settled"]}
        books._rated = {(r, p, t) for r, p, t in state["rated"]}
        books._reputation = {r[0]: Reputation(*r) for r in state["reputation"]}
        extra: dict[str, Any] = state["extra"]
        if (any(v > MAX_AMOUNT for v in books._settled.values())
                or any(r.weighted > MAX_AMOUNT for r in books._reputation.values())):
            raise SnapshotError(f"sums past {MAX_AMOUNT}: books made before the bound")
    except SnapshotError:
        raise
    except Exception as exc:  # a damaged or foreign file: not worth more than a replay
        raise SnapshotError(f"unreadable: {type(exc).__name__}: {exc}") from None
    return books, extra
