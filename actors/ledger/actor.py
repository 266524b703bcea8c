"""The ledger actor: the only writer of this entity's chain on the LEDGER stream, and its
reader of every chain (DESIGN.md, "The economy").

A payment is checked against the books before it is appended (an overdraft is refused
here, with its code, and never reaches the stream), appended with compare-and-set, and
counted once the stream has it. Its entry id makes it idempotent: asked again with the
same id and the same payment, the actor answers the original result and pays nothing
more; the same id with another payment is refused `conflict`.
"""

from __future__ import annotations

import dataclasses
import time
from concurrent.futures import ThreadPoolExecutor

import nats.errors

import protocol
from entityd import Actor, Config, Later
from protocol import ProtocolError, reasons
from protocol.ledger import (
    GENESIS,
    Hold,
    LedgerError,
    Post,
    Rate,
    Transfer,
    Void,
    entry_envelope,
)
from protocol.ledger.entries import Link

from ..peer.messages import Peers, PeersGet
from ..peer.outcomes import UNREACHABLE
from .chains import Chains
from .checkpoint import Checkpoint
from .messages import (
    RETRIED,
    Balance,
    BalanceGet,
    HoldGet,
    HoldInfo,
    HoldPlace,
    HoldResolve,
    LedgerEntries,
    LedgerGet,
    LedgerReport,
    LedgerResult,
    LedgerVerify,
    Pay,
    RatePeer,
    ReputationGet,
    ReputationInfo,
)
from .stream import ChainMoved, LedgerStream

ACTOR = protocol.subjects.LEDGER_ACTOR
CHECKPOINT = "ledger.checkpoint"  # in the data dir
APPEND_ATTEMPTS = 3  # another writer came first this many times: give up, say so
# Messages that are no entries (anyone can have the hub's JetStream store a reply on our
# chain's subject) also fail the compare-and-set; for this long such failures use up no
# attempt. (A flood of them can still outrun an append: PROTOCOL.md 16.3 and
# deploy/FEDERATION.md say so.)
APPEND_PATIENCE_S = 10.0
STREAM_FAILURES = (nats.errors.Error, TimeoutError)
# After a read of the stream failed, reads within this many seconds fail at once with the
# same reason, rather than each waiting out the timeout again (a hub with no LEDGER stream
# answers nothing, and a page asks for the balance on every load).
QUIET_AFTER_FAILURE_S = 5.0


class LedgerActor(Actor):
    name = ACTOR
    accepts = (BalanceGet, Pay, LedgerGet, LedgerVerify, HoldPlace, HoldResolve, HoldGet,
               RatePeer, ReputationGet)
    federated = True  # it appends to ledger.<entity> and reads the others' chains

    def __init__(self, config: Config) -> None:
        self.config = config
        # Signature checks of long reads (verify, a replay), beside the loop.
        self.verifier = ThreadPoolExecutor(max_workers=2, thread_name_prefix="ledger-verify")
        self.federation_domain = config.economy.hub_domain if config.nats.hub_url else ""
        self._failed: tuple[float, str] | None = None  # when a read last failed, and why

    async def on_start(self) -> None:
        fed = self.ctx.federation
        self.stream = LedgerStream(fed, domain=self.federation_domain,
                                   timeout=self.config.economy.append_timeout)
        await self.stream.start(create=not self.config.nats.hub_url)
        self.chains = self._chains()
        self.checkpoint = Checkpoint(self.config.data_dir / CHECKPOINT)
        try:
            why_not = await self.checkpoint.restore(self.chains)
        except STREAM_FAILURES as exc:  # the stream is away: replay once it is back
            self.chains.restart()
            why_not = f"the stream cannot be read now: {exc!r}"
        # A checkpoint there but not used (damaged, or of another stream) is worth a
        # warning; none yet is the first start's ordinary case.
        said = (self.ctx.log.warning if why_not and self.checkpoint.path.exists()
                else self.ctx.log.info)
        said("ledger_checkpoint", used=not why_not, after=self.chains.after,
             **({"why_not": why_not} if why_not else {}))

    async def _catch_up(self) -> None:
        await self.chains.catch_up()
        await self.checkpoint.save(self.chains)

    async def _caught_up(self) -> protocol.Error | None:
        """Read what the stream gained; an `unavailable` error when it cannot be read."""
        failed = self._failed
        if failed is not None and time.monotonic() - failed[0] < QUIET_AFTER_FAILURE_S:
            ago = time.monotonic() - failed[0]
            return protocol.Error(reasons.UNAVAILABLE, f"the LEDGER stream: {failed[1]} "
                                  f"({ago:.1f} s ago; asked again {QUIET_AFTER_FAILURE_S:g} s "
                                  "after that)")
        try:
            await self._catch_up()
        except STREAM_FAILURES as exc:
            self._failed = (time.monotonic(), repr(exc))
            return protocol.Error(reasons.UNAVAILABLE, f"the LEDGER stream: {exc!r}")
        self._failed = None
        return None

    def _chains(self) -> Chains:
        mint_keys = {name: bytes.fromhex(key) for name, key in self.config.mint_keys.items()}
        known = self.chains.peers if hasattr(self, "chains") else {}
        return Chains(self.stream, self.ctx.entity, self.ctx.federation.public_key, mint_keys,
                      self._peer_keys, peers=known, verifier=self.verifier)

    async def on_stop(self) -> None:
        try:
            await self.checkpoint.save(self.chains, force=True)
        finally:
            await self._close()

    async def on_failure(self, exc: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        if hasattr(self, "stream"):
            await self.stream.stop()
        self.verifier.shutdown(wait=False, cancel_futures=True)

    async def _peer_keys(self) -> dict[str, bytes]:
        """The keys the peer actor's directory pins, and the fixed [peer_keys]."""
        keys = {name: bytes.fromhex(key) for name, key in self.config.peer_keys.items()}
        try:
            peers: Peers = await self.ctx.ask(f"{self.ctx.entity}/peer", PeersGet())
        except Exception as exc:  # no directory now: the fixed keys, and try again later
            self.ctx.log.warning("ledger_peer_keys_unavailable", error=repr(exc))
            return keys
        return {**{p.name: bytes.fromhex(p.public_key) for p in peers.peers}, **keys}

    async def handle(self, envelope: protocol.Envelope) -> object | None:
        match envelope.message:
            case BalanceGet(account):
                return await self._balance(account or self.ctx.entity)
            case Pay() as pay:
                return await self._pay(pay)
            case LedgerGet(peer, limit):
                return await self._entries(peer, limit)
            case LedgerVerify():
                return Later(self._verify())
            case HoldPlace() as hold:
                return await self._hold(hold)
            case HoldResolve() as resolve:
                return await self._resolve(resolve)
            case HoldGet(payer, hold_id):
                return await self._hold_info(payer, hold_id)
            case RatePeer() as rating:
                return await self._rate(rating)
            case ReputationGet(account):
                return await self._reputation(account or self.ctx.entity)
        raise TypeError(f"unexpected {envelope.typ}")  # the runtime refuses others first

    # ---- reading ------------------------------------------------------------------------

    async def _balance(self, account: str) -> Balance | protocol.Error:
        if error := await self._caught_up():
            return error
        books = self.chains.books
        balance = books.balance(account, now=_now_ms())
        return Balance(account, balance.available, balance.held,
                       books.position(account).seq - 1)

    async def _entries(self, peer: str, limit: int) -> LedgerEntries | protocol.Error:
        if limit < 1:
            return protocol.Error(reasons.BAD_REQUEST, f"limit must be at least 1, not {limit}")
        if error := await self._caught_up():
            return error
        mine = [info for info in reversed(self.chains.mine)
                if not peer or peer in (info.account, info.counterparty)]
        return LedgerEntries(mine[:limit])

    async def _hold_info(self, payer: str, hold_id: bytes) -> HoldInfo | protocol.Error:
        if error := await self._caught_up():
            return error
        for hold in self.chains.books.holds(payer, now=_now_ms()):
            if hold.id == hold_id:
                return HoldInfo(True, hold.payer, hold.to, hold.amount, hold.expires_at,
                                hold.task, hold.state, hold.posted)
        return HoldInfo(False)

    async def _reputation(self, account: str) -> ReputationInfo | protocol.Error:
        if error := await self._caught_up():
            return error
        known = self.chains.books.reputation(account)
        return ReputationInfo(account, round(known.score or 0.0, 3), known.tasks,
                              known.weight)

    async def _verify(self) -> LedgerReport:
        """Every chain replayed afresh into new books: signatures, chains, rules, and the
        invariants of the books that result."""
        fresh = self._chains()
        try:
            await fresh.catch_up()
        except STREAM_FAILURES as exc:
            return LedgerReport(False, fresh.entries, 0, 0,
                                [f"the LEDGER stream cannot be read: {exc!r}"])
        books = fresh.books
        violations = [str(exc) for exc in fresh.violations.values()] + books.audit()
        return LedgerReport(not violations, fresh.entries, len(books.accounts()),
                            books.supply, violations, fresh.ignored, fresh.ignored_noted)

    # ---- writing ------------------------------------------------------------------------

    async def _pay(self, pay: Pay) -> LedgerResult:
        me = self.ctx.entity
        problem = _payment_problem(me, pay.to, pay.amount, pay.id, pay.memo)
        if problem:
            return LedgerResult(False, reasons.BAD_REQUEST, problem)
        record = Transfer(seq=0, prev=GENESIS, to=pay.to, amount=pay.amount, memo=pay.memo)
        result = await self._append(record, pay.id or protocol.new_id())
        if result.code == reasons.DONE:
            await self.ctx.emit("transfer", to=pay.to, amount=pay.amount, id=result.id,
                                seq=result.seq)
        return result

    async def _hold(self, hold: HoldPlace) -> LedgerResult:
        problem = _payment_problem(self.ctx.entity, hold.to, hold.amount, hold.id, hold.task)
        if not hold.task:
            problem = problem or "a hold names the task it pays for"
        if problem:
            return LedgerResult(False, reasons.BAD_REQUEST, problem)
        record = Hold(seq=0, prev=GENESIS, to=hold.to, amount=hold.amount,
                      expires_at=hold.expires_at, task=hold.task)
        result = await self._append(record, hold.id or protocol.new_id())
        if result.code == reasons.DONE:
            await self.ctx.emit("hold", to=hold.to, amount=hold.amount, id=result.id,
                                seq=result.seq, expires_at=hold.expires_at)
        return result

    async def _resolve(self, resolve: HoldResolve) -> LedgerResult:
        if len(resolve.hold) != 16 or (resolve.id and len(resolve.id) != 16):
            return LedgerResult(False, reasons.BAD_REQUEST, "ids are 16 bytes")
        if resolve.amount < 0:
            return LedgerResult(False, reasons.BAD_REQUEST, "a post pays more than 0")
        record: Link = (Post(seq=0, prev=GENESIS, hold=resolve.hold, amount=resolve.amount)
                        if resolve.amount else
                        Void(seq=0, prev=GENESIS, hold=resolve.hold,
                             reason=resolve.reason[:protocol.ledger.entries.MAX_TEXT]))
        result = await self._append(record, resolve.id or protocol.new_id())
        if result.code == reasons.DONE:
            typ = "post" if resolve.amount else "void"
            await self.ctx.emit(typ, hold=resolve.hold.hex(), amount=resolve.amount,
                                id=result.id, seq=result.seq)
        return result

    async def _rate(self, rating: RatePeer) -> LedgerResult:
        if not 1 <= rating.score <= 5:
            return LedgerResult(False, reasons.BAD_REQUEST, "a score is 1..5")
        if rating.peer == self.ctx.entity or not protocol.subjects.valid_name(rating.peer):
            return LedgerResult(False, reasons.BAD_REQUEST, f"{rating.peer!r} is not a peer")
        if not rating.task or (rating.id and len(rating.id) != 16):
            return LedgerResult(False, reasons.BAD_REQUEST, "a rating names its task; ids "
                                "are 16 bytes")
        record = Rate(seq=0, prev=GENESIS, peer=rating.peer, task=rating.task,
                      score=rating.score, note=rating.note[:protocol.ledger.entries.MAX_TEXT])
        result = await self._append(record, rating.id or protocol.new_id())
        if result.code == reasons.DONE:
            await self.ctx.emit("rate", peer=rating.peer, score=rating.score, id=result.id,
                                seq=result.seq)
        return result

    async def _append(self, record: Link, entry_id: bytes) -> LedgerResult:
        """Append `record` to our chain as entry `entry_id`, once.

        The first attempt trusts the books as they are (we are our chain's writer, and
        count each entry we append at once): a rival's entry on our chain fails the
        compare-and-set, and a refusal may be for credits not read yet; either way the
        next attempt reads the stream first."""
        me = self.ctx.entity
        subject = protocol.subjects.ledger(me)
        patience = time.monotonic() + APPEND_PATIENCE_S
        attempt, moved = 0, False
        while attempt < APPEND_ATTEMPTS:
            try:
                if moved:
                    head = self.chains.last_of.get(me)
                    await self._catch_up()
                    if self.chains.last_of.get(me) == head and time.monotonic() < patience:
                        attempt -= 1  # only what is no entry came between: try again
                broken = self.chains.violations.get(me)
                if broken is not None:
                    return LedgerResult(False, reasons.BROKEN_CHAIN, f"{me}'s chain holds an "
                                        f"entry its readers refuse ({broken}): nothing can "
                                        "be appended after it", entry_id.hex())
                books = self.chains.books
                done = books.retry_of(me, entry_id, record)
                if done is not None:
                    return LedgerResult(True, RETRIED, "the chain holds this entry already; "
                                        "nothing more was done", entry_id.hex(), done.seq)
                seq, prev, last_ts = books.position(me)
                placed = dataclasses.replace(record, seq=seq, prev=prev)
                wire, _ = self.ctx.federation.sign(
                    **entry_envelope(me), message=placed, msg_id=entry_id,
                    ts=max(_now_ms(), last_ts))
                entry = books.read(wire, subject)
                books.check(entry)
                stored = await self.stream.append(me, wire, entry_id,
                                                  self.chains.subject_last.get(me, 0))
            except ChainMoved:
                attempt, moved = attempt + 1, True
                continue  # another writer came first: read its entry, then try again
            except LedgerError as exc:
                if not moved:
                    attempt, moved = attempt + 1, True
                    continue  # on books read up to date, the same refusal is final
                return LedgerResult(False, exc.reason, exc.detail, entry_id.hex())
            except ProtocolError as exc:  # our own entry does not open: a bug of ours
                raise RuntimeError(f"the ledger's own entry is refused: {exc}") from exc
            except STREAM_FAILURES as exc:
                return LedgerResult(False, UNREACHABLE, "the LEDGER stream cannot be "
                                    f"reached ({exc!r}); ask again with the same id to be "
                                    "sure it happens once", entry_id.hex())
            if self.chains.take_own(stored, entry):
                await self.checkpoint.save(self.chains)
            else:
                await self._caught_up()  # others' entries came first; if the stream is
                # away now, the next read counts ours
            return LedgerResult(True, reasons.DONE, f"entry {seq} of {me}'s chain",
                                entry_id.hex(), seq)
        return LedgerResult(False, UNREACHABLE, f"another writer appended to {me}'s chain "
                            f"{APPEND_ATTEMPTS} times in a row; ask again with the same id",
                            entry_id.hex())


def _payment_problem(me: str, to: str, amount: int, entry_id: bytes, text: str) -> str:
    """What is wrong with a payment or hold of `amount` to `to` ('' if nothing is)."""
    if to == me:
        return "an entity pays no one but others"
    if not protocol.subjects.valid_name(to):
        return f"{to!r} is not an entity name"
    if not 0 < amount <= protocol.ledger.MAX_AMOUNT:
        return f"amount {amount} is outside 1..{protocol.ledger.MAX_AMOUNT}"
    if entry_id and len(entry_id) != 16:
        return "an entry id is 16 bytes"
    if len(text) > protocol.ledger.entries.MAX_TEXT:
        return f"the text is longer than {protocol.ledger.entries.MAX_TEXT} characters"
    return ""


def _now_ms() -> int:
    return time.time_ns() // 1_000_000
