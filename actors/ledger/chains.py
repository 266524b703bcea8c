"""The ledger actor's view of every chain: the books, replayed from the LEDGER stream in
its order, each entry verified before it counts.

An entry its account wrote that breaks a rule (reordered, dropped, an overdraft) is not
applied, and its chain counts for nothing past it: the first violation of each chain is
kept and reported. What is on a chain's subject but is no writing of its account's is
*ignored*: it changes nothing and stops nothing, and is reported apart (PROTOCOL.md 16.3,
"Not the account's"). The stream stores whatever is published on `ledger.<account>`,
and not only by the account: any member can have the hub's JetStream publish a reply
there (a PubAck, or a stored message from a direct get, sent to the reply subject it
names), so a message that does not open, is not signed by a key allowed on the chain,
or was not sealed for it, must not be able to stop the chain, or one member could freeze
another's money. A copy of an entry the chain holds already is ignored the same way. An
entry signed by a key we do not know yet, on the chain of an account whose key we do not
know either (a peer never heard), stops its chain until we ask for the peers' keys; if
that does not teach the account's key, the chain is *unverifiable* here: not counted,
its messages ignored, asked about again now and then (a key learnt replays the books
from the start, so every reader ends with the same books). A subject under `ledger.`
that names no account is no chain: what is on it is ignored.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import dataclasses
import time
from collections.abc import Awaitable, Callable, Mapping
from concurrent.futures import Executor
from typing import Any

import protocol
from protocol import ProtocolError, Replayed
from protocol.ledger import (
    Entry,
    Hold,
    Ledger,
    LedgerKeys,
    Mint,
    Post,
    Rate,
    Transfer,
    Void,
    read_entry,
)

from .messages import EntryInfo
from .stream import LedgerStream, Stored

_INFO_FIELDS = tuple(field.name for field in dataclasses.fields(EntryInfo))
MAX_KEPT = 1000  # entries of our own that ledger_get can show, newest kept
MAX_IGNORED_NOTED = 20  # ignored messages described for a report; the rest are counted
# Refusals at steps 1 to 3 and 5 of PROTOCOL.md 16.3: the message was not sealed by a key
# allowed on the chain, for the chain (so not written by its account, or not as an entry
# of it). unknown_key only where the account's own key is known (else: learn it).
NOT_THE_ACCOUNTS = frozenset({
    protocol.reasons.TOO_LARGE, protocol.reasons.MALFORMED, protocol.reasons.BAD_VERSION,
    protocol.reasons.UNKNOWN_KEY, protocol.reasons.BAD_SIGNATURE,
    protocol.reasons.WRONG_SUBJECT, protocol.reasons.MALFORMED_BODY,
    protocol.reasons.WRONG_SENDER, protocol.reasons.WRONG_DESTINATION,
    protocol.reasons.UNKNOWN_KIND, protocol.reasons.BAD_PAYLOAD,
    protocol.reasons.WRONG_SIGNER})
PARALLEL_FROM = 64  # a read this long has its signatures checked in threads
OPENING_AHEAD = 2  # batches opened in the threads while an earlier one is applied
RELEARN_S = 60.0  # how often the keys of unverifiable chains' accounts are asked again

Opened = Entry | ProtocolError


class Chains:
    def __init__(self, stream: LedgerStream, me: str, own_key: bytes,
                 mint_keys: Mapping[str, bytes],
                 peer_keys: Callable[[], Awaitable[Mapping[str, bytes]]], *,
                 peers: Mapping[str, bytes] | None = None,
                 verifier: Executor | None = None) -> None:
        """`peers`: the keys known already; `verifier`: threads that check signatures
        of long reads beside the loop (Ed25519 in libsodium runs without the GIL)."""
        self.stream = stream
        self.me = me
        self._own_key = own_key
        self._mint_keys = dict(mint_keys)
        self._peer_keys = peer_keys
        self._verifier = verifier
        self._known: dict[str, bytes] = {}
        self._reset(peers or {})

    def _reset(self, peers: Mapping[str, bytes]) -> None:
        self._known = {**peers, self.me: self._own_key}
        self.keys = LedgerKeys(self._known, self._mint_keys)
        self.books = Ledger(self.keys)
        self.after = 0  # the stream sequence read up to
        self.last_of: dict[str, int] = {}  # each chain's last entry, by stream sequence
        # The last stream sequence on each chain's subject, ignored messages included:
        # what an append's compare-and-set must name.
        self.subject_last: dict[str, int] = {}
        self.violations: dict[str, ProtocolError] = {}  # the first of each chain
        self.ignored = 0  # messages on chains' subjects that are no entries of theirs
        self.ignored_noted: list[str] = []  # the first MAX_IGNORED_NOTED of them, said
        self.unknown_signer = False
        # Accounts whose chains hold entries of a key a refresh did not teach us.
        self.unverifiable: set[str] = set()
        self._relearnt = 0.0  # when the peers' keys were last asked for them
        self._keys_fresh = False  # the peers' keys were asked for during this catch_up
        self.entries = 0
        self.mine: list[EntryInfo] = []  # our entries and the ones naming us, oldest first

    @property
    def peers(self) -> dict[str, bytes]:
        """The peers' keys the books are built with."""
        return {name: key for name, key in self._known.items() if name != self.me}

    def clean(self) -> bool:
        """Whether no chain was stopped (ignored messages change nothing: they do not
        count against it)."""
        return not (self.violations or self.unknown_signer)

    def state(self) -> dict[str, Any]:
        """Where this reader is, beside its books (for a checkpoint)."""
        return {"after": self.after, "last_of": self.last_of, "entries": self.entries,
                "subject_last": self.subject_last, "ignored": self.ignored,
                "unverifiable": sorted(self.unverifiable),
                "mine": [tuple([getattr(info, name) for name in _INFO_FIELDS])
                         for info in self.mine]}  # astuple, without its deep copies

    def adopt(self, books: Ledger, state: dict[str, Any]) -> None:
        """Go on from a checkpoint: books built with our keys (restart(peers) first),
        and where state() said we were."""
        self.books = books
        self.after, self.last_of = state["after"], state["last_of"]
        # (A checkpoint from before ignored messages were kept apart had none.)
        self.subject_last = dict(state.get("subject_last", self.last_of))
        self.ignored = state.get("ignored", 0)
        self.unverifiable = set(state.get("unverifiable", ()))
        self.entries = state["entries"]
        self.mine = [EntryInfo(*info) for info in state["mine"]]

    def restart(self, peers: Mapping[str, bytes] | None = None) -> None:
        """Forget everything read (and take these peers' keys, if given): the next
        catch_up replays every chain."""
        self._reset(self.peers if peers is None else peers)

    async def catch_up(self) -> None:
        """Read and apply what the stream has past what we read; when it holds entries
        of signers we did not know, learn the peers' keys and, if that taught us any,
        replay from the start. The keys are asked for at the first such entry, not
        after reading on to the end (a replay whose keys are learnt that way would
        otherwise read the stream twice)."""
        self._keys_fresh = False
        stopped = await self._read(stop_at_unknown=not self.unknown_signer)
        due = self.unverifiable and time.monotonic() - self._relearnt >= RELEARN_S
        if not (self.unknown_signer or due):
            return
        peers = await self._peer_keys()
        if any(self._known.get(name) != key for name, key in peers.items()):
            self._reset(peers)
            self._relearnt = time.monotonic()
        else:
            self._relearnt = time.monotonic()
            self._unverifiable_now()
            if not stopped:
                return
        self._keys_fresh = True  # an unknown account met from here on is unverifiable
        await self._read(stop_at_unknown=False)

    def _unverifiable_now(self) -> None:
        """The peers' keys were asked for and taught nothing: the chains stopped at a
        key we do not know, of accounts we do not know, are unverifiable here, not
        violated (a message anyone can have stored on `ledger.nobody` must not fail
        everyone's `ledger verify` and checkpoints)."""
        for chain, exc in list(self.violations.items()):
            if exc.reason == protocol.reasons.UNKNOWN_KEY and chain not in self._known:
                del self.violations[chain]
                self._unverifiable(chain, exc)
        self.unknown_signer = any(exc.reason == protocol.reasons.UNKNOWN_KEY
                                  for exc in self.violations.values())

    def _unverifiable(self, chain: str, exc: ProtocolError) -> None:
        self.unverifiable.add(chain)
        self._ignore(0, chain, f"{exc}; no key of {chain}'s is known here, so its chain "
                     "is not counted")

    async def _read(self, *, stop_at_unknown: bool) -> bool:
        """Apply what the stream has past what we read; True if it stopped early, at an
        entry whose signer we do not know (with `stop_at_unknown`).

        A pipeline: while one batch is applied in stream order, the batches after it
        are on their way from the stream and being opened (signatures checked) in the
        threads, OPENING_AHEAD of them at most."""
        opening: collections.deque[tuple[list[Stored], asyncio.Future[list[Opened]]]] = (
            collections.deque())
        try:
            async with contextlib.aclosing(self.stream.reads(self.after)) as batches:
                async for batch in batches:  # the next one on its way meanwhile
                    opening.append((batch, asyncio.ensure_future(self._open(batch))))
                    if len(opening) > OPENING_AHEAD:
                        batch, opened = opening.popleft()
                        if self._apply(batch, await opened, stop_at_unknown):
                            return True
            while opening:
                batch, opened = opening.popleft()
                if self._apply(batch, await opened, stop_at_unknown):
                    return True
            return False
        finally:
            for _, opened in opening:
                opened.cancel()

    def _apply(self, batch: list[Stored], opened: list[Opened], stop_at_unknown: bool
               ) -> bool:
        """Take a batch's entries in order; True if it stopped at an unknown signer."""
        for stored, one in zip(batch, opened, strict=True):
            self._take(stored.seq, stored.subject, one)
            self.after = stored.seq
            if stop_at_unknown and self.unknown_signer:
                return True
        return False

    def _not_the_accounts(self, chain: str, refused: ProtocolError) -> bool:
        """Whether a message refused this way on `chain` cannot be its account's writing.
        An unknown signer on the chain of an account whose key we do not know yet may be
        that account: it stops the chain until the keys are learnt (catch_up)."""
        if refused.reason not in NOT_THE_ACCOUNTS:
            return False
        return refused.reason != protocol.reasons.UNKNOWN_KEY or chain in self._known

    def _ignore(self, seq: int, chain: str, why: str) -> None:
        self.ignored += 1
        if len(self.ignored_noted) < MAX_IGNORED_NOTED:
            where = f"stream sequence {seq} on " if seq else ""
            self.ignored_noted.append(f"{where}{chain}'s chain: {why}")

    def take_own(self, seq: int, entry: Entry) -> bool:
        """Count an entry we just appended, at stream sequence `seq`, as the books read
        it before appending it (its signature checked then), without reading it back:
        only when nothing else came into the stream before it (else False: read)."""
        if seq != self.after + 1:
            return False
        self._take(seq, entry.subject, entry)
        self.after = seq
        return True

    async def _open(self, batch: list[Stored]) -> list[Opened]:
        """Each entry's signature and fields checked (what needs no books), a long
        batch in threads beside the loop."""
        keys = self.keys
        if self._verifier is None or len(batch) < PARALLEL_FROM:
            return [_opened(stored, keys) for stored in batch]
        loop = asyncio.get_running_loop()
        half = len(batch) // 2
        parts = await asyncio.gather(*(
            loop.run_in_executor(self._verifier, _open_all, part, keys)
            for part in (batch[:half], batch[half:])))
        return [*parts[0], *parts[1]]

    def _take(self, seq: int, subject: str, opened: Entry | ProtocolError) -> None:
        """Apply what was read at stream sequence `seq` on `subject`."""
        chain = _chain_of(subject)
        if not chain:
            self._ignore(seq, subject, "no account's chain (ledger.<entity name>)")
            return
        self.subject_last[chain] = seq
        if chain in self.violations:
            return
        if chain in self.unverifiable:
            self._ignore(seq, chain, "on a chain whose account's key is not known here")
            return
        if isinstance(opened, ProtocolError) and self._not_the_accounts(chain, opened):
            self._ignore(seq, chain, str(opened))
            return
        try:
            if isinstance(opened, ProtocolError):
                raise opened
            entry = opened
            head = self.books.position(chain).seq - 1
            self.books.apply(entry)
        except ProtocolError as exc:
            if exc.reason == protocol.reasons.UNKNOWN_KEY and self._keys_fresh:
                self._unverifiable(chain, exc)  # (an account's own key is never unknown)
                return
            self.violations[chain] = exc
            if exc.reason == protocol.reasons.UNKNOWN_KEY:
                self.unknown_signer = True
            return
        if entry.seq <= head:  # the books took it as a redelivery: no effect
            self._ignore(seq, chain, str(Replayed(
                f"{chain}'s entry {entry.seq} (id {entry.id.hex()}) is in the stream again; "
                "it counts once", subject=subject)))
            return
        self.last_of[chain] = seq
        self.entries += 1
        if entry.account == self.me or _counterparty(entry.record) == self.me:
            self.mine.append(describe(entry))
            if len(self.mine) > MAX_KEPT:
                del self.mine[:-MAX_KEPT]


def _opened(stored: Stored, keys: LedgerKeys) -> Entry | ProtocolError:
    try:
        return read_entry(stored.data, stored.subject, keys)
    except ProtocolError as exc:
        return exc


def _open_all(batch: list[Stored], keys: LedgerKeys) -> list[Entry | ProtocolError]:
    return [_opened(stored, keys) for stored in batch]


_CHAINS: dict[str, str] = {}  # subject -> the chain it is, worked out once each


def _chain_of(subject: str) -> str:
    """The account whose chain `subject` is ('' for a subject that names none)."""
    chain = _CHAINS.get(subject)
    if chain is None:
        account = subject.removeprefix("ledger.")
        valid = (protocol.subjects.ledger(account) == subject
                 and protocol.subjects.valid_name(account))
        chain = account if valid else ""
        if len(_CHAINS) >= 4096:  # bounded: forgetting only costs working it out again
            _CHAINS.clear()
        _CHAINS[subject] = chain
    return chain


def _counterparty(record: object) -> str:
    """The other party describe() names: the payee of a transfer or hold, the rated peer."""
    match record:
        case Transfer() | Hold():
            return record.to
        case Rate():
            return record.peer
    return ""


def describe(entry: Entry) -> EntryInfo:
    record = entry.record
    amount = getattr(record, "amount", 0)
    match record:
        case Transfer():
            counterparty, text = record.to, record.memo
        case Hold():
            counterparty, text = record.to, f"escrow for {record.task}"
        case Rate():
            counterparty, text = record.peer, f"{record.score}/5 for {record.task}"
        case Post():
            counterparty, text = "", f"hold {record.hold.hex()}"
        case Void():
            counterparty, text = "", record.reason or f"hold {record.hold.hex()}"
        case Mint():
            counterparty, text = "", record.memo
        case _:
            counterparty, text = "", ""
    return EntryInfo(entry.account, entry.seq, entry.id.hex(), entry.ts,
                     protocol.kinds.kind_name(record), amount, counterparty, text)
