"""Ledger entries as signed envelopes: sealing one onto its account's chain, and reading
one back, checked in the order of PROTOCOL.md §16.3 up to the rules that need the books.

An entry's hash, which the next entry of its chain names as `prev`, is the SHA-256 of its
envelope's body bytes as signed (not of the whole wire, whose outer array §3 lets a
carrier re-encode).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping
from typing import TypedDict

from nacl.signing import SigningKey

from .. import subjects
from ..envelope import Verified, check_body, seal, verify_signature
from ..errors import WrongSubject
from ..keyring import Keyring
from ..replay import ReplayGuard
from .entries import MAX_AMOUNT, MAX_TEXT, SCORES, Hold, Link, Mint, Rate
from .errors import BadEntry, LedgerError, WrongSigner

ACTOR = subjects.LEDGER_ACTOR
# An entry's wire at most (PROTOCOL.md 16): four times the largest the kinds allow (a
# rate at its longest, 8,610 bytes); the LEDGER stream takes no larger message.
MAX_ENTRY_BYTES = 32 * 1024


class _NoReplayCheck(ReplayGuard):
    """A chain is its own replay protection (each position holds one entry), so an entry
    has no replay window: it is read at any age, and its id is the books' to judge (the
    same as a ReplayGuard made afresh for each entry, with a window of 2^64 ms: a ts is at
    most 2^64 - 1, so that guard refuses nothing). Keeps nothing, so threads may share it."""

    def admit(self, msg_id: bytes, ts_ms: int, now_ms: int, *, sender: bytes) -> None:
        return None

    def remember(self, msg_id: bytes, ts_ms: int, *, sender: bytes) -> None:
        return None


_NO_REPLAY_CHECK = _NoReplayCheck()
_ACCOUNTS: dict[str, str] = {}  # the subjects of chains seen, and their accounts


def _account_of(subject: str) -> str:
    """The account whose chain `subject` is; WrongSubject when it is no chain's."""
    account = _ACCOUNTS.get(subject)
    if account is None:
        route = subjects.route(subject)
        if route is None or route.family != "ledger" or route.receiver is None:
            raise WrongSubject("not the subject of a ledger chain", subject=subject)
        if len(_ACCOUNTS) >= 4096:  # bounded: forgetting only costs working it out again
            _ACCOUNTS.clear()
        account = _ACCOUNTS[subject] = route.receiver
    return account


def entry_hash(body: bytes) -> bytes:
    """The hash the next entry of the chain names as its `prev`."""
    return hashlib.sha256(body).digest()


class LedgerKeys:
    """Who may sign on the chains: each account's own key, and the operator keys that
    mint. A key is one account's or an operator's, never both."""

    def __init__(self, accounts: Mapping[str, bytes] | None = None,
                 operators: Mapping[str, bytes] | None = None) -> None:
        self.keyring = Keyring()
        self._owners: dict[str, bytes] = {}
        self._operators: set[bytes] = set()
        for name, key in (accounts or {}).items():
            self.add_account(name, key)
        for name, key in (operators or {}).items():
            self.add_operator(name, key)

    def add_account(self, account: str, key: bytes) -> None:
        if key in self._operators:
            raise ValueError(f"{account}'s key is an operator key")
        if not subjects.valid_name(account):
            raise ValueError(f"{account!r} is not an entity name")
        self.keyring.add(key, account)
        self._owners[account] = key

    def add_operator(self, name: str, key: bytes) -> None:
        if key in self.keyring and key not in self._operators:
            raise ValueError(f"operator {name}'s key is an account's key")
        self.keyring.add(key, name, f"operator:{name}")
        self._operators.add(key)

    def fingerprint(self) -> bytes:
        """What identifies these keys: each account's, and the operators'."""
        held = (sorted(self._owners.items()), sorted(self._operators))
        return hashlib.sha256(repr(held).encode()).digest()

    def may_sign(self, account: str, kid: bytes, record: Link) -> bool:
        """Whether `kid` may sign `record` on `account`'s chain."""
        if isinstance(record, Mint):
            return kid in self._operators
        return self._owners.get(account) == kid


@dataclasses.dataclass(frozen=True, slots=True)
class Entry:
    """An entry read from a chain: its envelope opened, its signer and fields checked."""

    account: str
    id: bytes  # the envelope's id: the idempotency key
    ts: int  # the envelope's ts, ms since the epoch
    record: Link
    hash: bytes  # entry_hash of the signed body
    kid: bytes
    subject: str

    @property
    def seq(self) -> int:
        return self.record.seq

    @property
    def prev(self) -> bytes:
        return self.record.prev


class EntryEnvelope(TypedDict):
    """The envelope fields of an entry on an account's chain."""

    src: str
    dst: str
    subj: str


def entry_envelope(account: str) -> EntryEnvelope:
    """The envelope fields of an entry on `account`'s chain: src, dst and subj."""
    address = f"{account}/{ACTOR}"
    return EntryEnvelope(src=address, dst=address, subj=subjects.ledger(account))


def seal_entry(key: SigningKey, account: str, record: Link, *, entry_id: bytes,
               ts: int) -> bytes:
    """The wire of `record` as entry `entry_id` of `account`'s chain, signed by `key`."""
    wire, _ = seal(key, **entry_envelope(account), message=record, msg_id=entry_id, ts=ts)
    return wire


def read_entry(wire: bytes, subject: str, keys: LedgerKeys, *,
               max_bytes: int = MAX_ENTRY_BYTES) -> Entry:
    """Open an entry stored on `subject` (PROTOCOL.md §16.3, steps 1 to 6); raise
    ProtocolError (a LedgerError for a ledger rule). The rules that depend on the chain
    and the balances are the books'."""
    verified = verify_signature(wire, subject=subject, keyring=keys.keyring,
                                max_bytes=max_bytes)
    return check_entry(verified, subject, keys, max_bytes=max_bytes)


def check_entry(verified: Verified, subject: str, keys: LedgerKeys, *,
                max_bytes: int = MAX_ENTRY_BYTES) -> Entry:
    """Steps 2 to 6 of §16.3 on a wire whose signature verified under `keys.keyring`
    (step 1, `protocol.verify_signature`: pure, so a reader replaying many entries may
    run it on other threads and this in stream order)."""
    account = _account_of(subject)
    # Which key may sign what on a chain is the ledger's rule (wrong_signer, below), so
    # the envelope is opened as the chain's account's whichever trusted key signed it.
    as_chain = verified if verified.signer.entity == account else Verified(
        verified.kid, verified.body, dataclasses.replace(verified.signer, entity=account))
    envelope = check_body(as_chain, subject=subject, local=f"{account}/{ACTOR}",
                          replay=_NO_REPLAY_CHECK, now=0, max_bytes=max_bytes)
    record = envelope.message

    def refused(error: type[LedgerError], detail: str) -> LedgerError:
        return error(detail, account=account, seq=getattr(record, "seq", 0),
                     entry_id=envelope.id, subject=subject)

    if not isinstance(record, Link):  # encrypted, or another kind
        raise refused(BadEntry, f"{'an encrypted' if envelope.enc else 'a'} "
                                f"{envelope.typ!r} is no ledger entry")
    if not keys.may_sign(account, verified.kid, record):
        raise refused(WrongSigner, f"a {envelope.typ} on {account}'s chain signed by "
                                   f"{verified.signer.label} ({verified.kid.hex()[:16]}...)")
    if envelope.src != f"{account}/{ACTOR}" or envelope.corr is not None:
        raise refused(BadEntry, f"src must be {account}/{ACTOR} and corr nil")
    problem = _form_problem(account, record, envelope.ts)
    if problem:
        raise refused(BadEntry, problem)
    return Entry(account, envelope.id, envelope.ts, record, entry_hash(verified.body),
                 verified.kid, subject)


def _form_problem(account: str, record: Link, ts: int) -> str:
    """What is wrong with an entry's fields on their own ('' when nothing is)."""
    amount = getattr(record, "amount", 1)
    if not 0 < amount <= MAX_AMOUNT:
        return f"amount {amount} is outside 1..{MAX_AMOUNT}"
    for name in ("to", "peer"):
        party = getattr(record, name, None)
        if party is not None and (party == account or not subjects.valid_name(party)):
            return f"{name} {party!r} is not another entity"
    for name in ("memo", "task", "reason", "note"):
        text = getattr(record, name, "")
        if len(text) > MAX_TEXT:
            return f"{name} is longer than {MAX_TEXT} characters"
    if isinstance(record, Mint) and record.account != account:
        return f"a mint for {record.account!r} on {account}'s chain"
    if isinstance(record, Hold | Rate) and not record.task:
        return "no task"
    if isinstance(record, Hold) and record.expires_at < ts:
        return f"the hold expires at {record.expires_at}, before it is made at {ts}"
    if isinstance(record, Rate) and record.score not in SCORES:
        return f"score {record.score} is outside 1..5"
    return ""
