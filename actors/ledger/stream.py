"""The LEDGER stream as the ledger actor reaches it: append to its own chain with
compare-and-set, and read every chain in the stream's order.

In a federation the stream lives in the hub's JetStream, in an account of its own
(entityd/federation.py): each entity may append only to `ledger.<itself>` (through an
import) and reads every chain through the hub's books reader, asking on
`ledger_read.<itself>` (entityd/books_reader.py), which answers as a direct get does, with
a budget per member (the hub's permissions; no consumer, purge or delete). Hubs made
before the reader took direct gets on `ledger_get`, and hubs made before that keep the
stream in the members' account, read by direct gets on its JetStream domain's API; a read
that finds no responder on one subject tries the others, and goes on with the one that
answered.
An entity on its own keeps the stream on its own server and makes it on first start.
Either way two writers of one chain (a restarted daemon beside the old one, the operator
minting) cannot both append at one position: each append names the stream sequence of
the chain's last entry (Nats-Expected-Last-Subject-Sequence), and the server refuses it
if another came first.

Since the stream keeps what it takes for ever, it takes nothing larger than an entry can
be (MAX_ENTRY_BYTES), and a read asks for a bounded number of bytes at a time
(READ_MAX_BYTES), so that no member can fill the hub's disk with a few large messages
on its own chain, nor make every reader hold them in memory by the batch.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import hashlib
import json
import secrets
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field
from typing import Any

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import DiscardPolicy, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

from entityd import FederationAccess, unsubscribe
from protocol import StrayReply, subjects
from protocol.ledger import MAX_ENTRY_BYTES

from ..peer.replies import Replies

STREAM = "LEDGER"
SUBJECTS = "ledger.>"
WRONG_LAST_SEQUENCE = 10071  # JetStream's err_code for a failed compare-and-set
READ_BATCH = 256
# The stream takes messages (headers included) up to protocol.ledger's MAX_ENTRY_BYTES:
# about four times the largest valid entry (a rate at its longest, 8,610 bytes of wire;
# tests/test_ledger_stream_limits.py seals one of each kind), far under the hub's
# max_payload (2 MB).
# What one batched read asks the server for at most: it stops once it has sent this
# much, so a batch holds at most this and one entry more (an entry stored before the
# stream had its limit may be as large as the server's max_payload), and a replay with
# its few batches in flight a few MB.
READ_MAX_BYTES = 1024 * 1024
END_OF_BATCH = "204"  # the status closing a batch of direct gets
NOTHING_MORE = "404"  # ... or answering one past the stream's end
NO_RESPONDERS = "503"
# How long a read waits on the other subject of direct gets when the usual one has no
# responder: a hub of the other layout answers at once, the usual one's absence (a hub
# down, a stream not made yet) is then told after this.
PROBE_S = 1.0
NUM_PENDING = "Nats-Num-Pending"  # on a batch's end: how many more there are after it


class ChainMoved(Exception):
    """The chain gained an entry since we read it (another writer): read and retry."""


class StreamUnbounded(Exception):
    """The LEDGER stream there takes entries of any size (it was made before it had its
    limit), and this login could not give it MAX_ENTRY_BYTES."""


@dataclass(frozen=True, slots=True)
class Stored:
    seq: int  # the stream sequence
    subject: str
    data: bytes


def stream_config(replicas: int = 1) -> StreamConfig:
    """The LEDGER stream: kept for ever, nothing deleted or purged, reads by direct get,
    no message larger than an entry can be."""
    return StreamConfig(
        name=STREAM, subjects=[SUBJECTS], retention=RetentionPolicy.LIMITS,
        discard=DiscardPolicy.NEW, storage=StorageType.FILE, num_replicas=replicas,
        allow_direct=True, deny_delete=True, deny_purge=True, duplicate_window=120.0,
        max_msg_size=MAX_ENTRY_BYTES)


def unbounded(config: StreamConfig) -> bool:
    """Whether a LEDGER stream as it is takes messages larger than MAX_ENTRY_BYTES (one
    made before the stream had that limit: the server says -1, "none")."""
    size = config.max_msg_size
    return size is None or size <= 0 or size > MAX_ENTRY_BYTES


async def bound(js: JetStreamContext, have: StreamConfig) -> StreamConfig:
    """Give the existing LEDGER stream `have` the limit of MAX_ENTRY_BYTES, the rest of
    its config unchanged; the config the server answers with. StreamUnbounded when the
    server refuses it, or does not answer (a login that may not update streams: the
    server drops the request)."""
    try:
        info = await js.update_stream(dataclasses.replace(have, max_msg_size=MAX_ENTRY_BYTES))
    except nats.js.errors.APIError as exc:
        raise StreamUnbounded(f"the server refused to update {STREAM}: {exc}") from exc
    except nats.errors.TimeoutError as exc:
        raise StreamUnbounded(f"no answer to the update of {STREAM} (a login that may "
                              "not update streams gets none)") from exc
    return info.config


class LedgerStream:
    def __init__(self, fed: FederationAccess, *, domain: str, timeout: float) -> None:
        self.fed = fed
        self.domain = domain
        self.timeout = timeout
        self.api = f"$JS.{domain}.API" if domain else "$JS.API"
        # Where reads go, the one that answered last first: the hub's books reader, a
        # hub's direct get import from before it, a hub's own JetStream from before that.
        self.routes = [subjects.ledger_read(fed.entity), subjects.LEDGER_GET] if domain else []
        self.routes.append(f"{self.api}.DIRECT.GET.{STREAM}")
        self.replies = Replies(fed, fed.entity, fed.count_rejected)
        # Reads come back to one inbox of ours, each to a token of its own.
        self._prefix = f"{subjects.inbox_prefix(fed.entity)}.{secrets.token_hex(8)}"
        self._reads: Subscription | None = None
        self._pending: dict[str, _Read] = {}

    async def start(self, *, create: bool) -> None:
        """Listen for answers; with `create` (an entity on its own), make the stream on
        our own server unless it is there, and give one made before it had its size
        limit that limit (StreamUnbounded if the server refuses)."""
        await self.replies.start()
        self._reads = await self.fed.subscribe(f"{self._prefix}.*", cb=self._arrived)
        if create:
            js = self.fed.jetstream()
            try:
                have = (await js.stream_info(STREAM)).config
            except nats.js.errors.NotFoundError:
                await js.add_stream(stream_config())
                return
            if unbounded(have):
                await bound(js, have)

    async def stop(self) -> None:
        await self.replies.stop()
        reads, self._reads = self._reads, None
        await unsubscribe(reads)
        for read in self._pending.values():
            read.done.cancel()

    async def append(self, account: str, wire: bytes, entry_id: bytes,
                     after: int) -> int:
        """Store `wire` on `account`'s chain if its last entry is still at stream
        sequence `after` (0: the chain is empty); the new entry's stream sequence.
        ChainMoved if another entry came first; nats errors when the stream cannot be
        reached (the caller says so; nothing is appended then, or a retry with the same
        id finds it)."""

        def pub_ack(reply: Msg) -> dict[str, Any]:
            answer = json.loads(reply.data)
            if not isinstance(answer, dict):
                raise StrayReply
            if isinstance(answer.get("error"), dict) or answer.get("stream") == STREAM:
                return answer
            raise StrayReply

        # The message id is the wire's digest, not the entry id: an id another member
        # can foresee (an escrow's are made from the task) it could publish first, on
        # its own chain, and the stream would refuse ours as a duplicate for its whole
        # window. Nobody knows a wire's digest before it is sent; a resent wire (its
        # PubAck lost) is still recognised. The entry id makes a retry exactly-once
        # through the books (retry_of) and the compare-and-set.
        answer = await self.replies.request(
            subjects.ledger(account), wire, self.timeout, pub_ack,
            headers={"Nats-Expected-Last-Subject-Sequence": str(after),
                     "Nats-Msg-Id": hashlib.blake2b(wire, digest_size=16).hexdigest()})
        error = answer.get("error")
        if error:
            if error.get("err_code") == WRONG_LAST_SEQUENCE:
                raise ChainMoved(error.get("description", ""))
            nats.js.errors.APIError.from_error(error)  # raises the fitting error
        if answer.get("duplicate"):  # this id was stored before: read where it went
            raise ChainMoved(f"the stream holds entry {entry_id.hex()} already")
        return int(answer["seq"])

    async def get(self, seq: int) -> Stored | None:
        """The entry at stream sequence `seq`; None when there is none."""
        found = await self._get({"seq": seq})
        return found[0] if found else None

    async def last(self, account: str) -> Stored | None:
        """The last entry of `account`'s chain; None when it has none."""
        batch = await self._get({"last_by_subj": subjects.ledger(account)})
        return batch[0] if batch else None

    async def read(self, after: int, subject: str = SUBJECTS) -> list[Stored]:
        """The entries on `subject` (every chain, or one) stored after stream sequence
        `after`, in order, up to one batch (READ_BATCH entries, fewer when they pass
        READ_MAX_BYTES); an empty list only when there are none."""
        return await self._get(_batch_after(after, subject))

    async def reads(self, after: int, subject: str = SUBJECTS) -> AsyncGenerator[list[Stored]]:
        """Every entry on `subject` stored after `after`, batch by batch in order, until
        the stream has no more: the server says none are left after a batch (a batch
        cut short by READ_MAX_BYTES is no end), or, from a server that does not say,
        a batch is shorter than READ_BATCH. Each next batch is asked for before this
        one is handed over, so that the stream sends it while the caller works on this
        one."""
        batch, token, read = await self._first(_batch_after(after, subject))
        try:
            while True:
                if not batch or not read.more(len(batch)):
                    yield batch
                    return
                token, read = await self._ask(_batch_after(batch[-1].seq, subject))
                yield batch
                batch = await self._answer(token, read)
        finally:
            self._abandon(token, read)

    async def _get(self, request: dict[str, Any]) -> list[Stored]:
        batch, token, _ = await self._first(request)
        self._pending.pop(token, None)
        return batch

    async def _first(self, request: dict[str, Any]) -> tuple[list[Stored], str, _Read]:
        """The answer to `request` (with its token and read). Where no stream answers on
        the subject that answered last, the other is tried for a moment (PROBE_S); if it
        answers, it is the one tried first from then on; else the first one's error."""
        first, *others = self.routes
        token, read = await self._ask(request, first)
        try:
            return await self._answer(token, read), token, read
        except nats.errors.NoRespondersError as exc:
            missing = exc
        for other in others:
            token, read = await self._ask(request, other)
            try:
                found = await self._answer(token, read, PROBE_S)
            except (nats.errors.NoRespondersError, nats.errors.TimeoutError):
                continue
            self.routes = [other, *(route for route in self.routes if route != other)]
            return found, token, read
        raise missing

    async def _ask(self, request: dict[str, Any], route: str = "") -> tuple[str, _Read]:
        """Send a direct get; its answers collect in the _Read under its token."""
        if self._reads is None:
            raise nats.errors.ConnectionClosedError
        token = secrets.token_hex(16)
        read = _Read(many="batch" in request)
        self._pending[token] = read
        try:
            await self.fed.publish(route or self.routes[0],
                                   json.dumps(request).encode(),
                                   reply=f"{self._prefix}.{token}")
        except BaseException:
            self._pending.pop(token, None)
            raise
        return token, read

    async def _answer(self, token: str, read: _Read, timeout: float = 0.0) -> list[Stored]:
        """What the direct get under `token` answered, once it has all come."""
        try:
            async with asyncio.timeout(timeout or self.timeout):
                await read.done
        except TimeoutError:
            raise nats.errors.TimeoutError from None
        finally:
            self._pending.pop(token, None)
        return sorted(read.got, key=lambda stored: stored.seq)

    def _abandon(self, token: str, read: _Read) -> None:
        """Stop waiting for the read under `token`: a batch asked ahead that its reader
        no longer wants. Its answers may still be on their way: they are dropped as
        they come (they are no strays), and the read forgotten once they end, or after
        the timeout at the latest."""
        if token not in self._pending or read.done.done():
            self._pending.pop(token, None)
            return
        read.abandoned = True
        asyncio.get_running_loop().call_later(self.timeout, self._pending.pop, token, None)

    async def _arrived(self, msg: Msg) -> None:
        """An answer to a read: an entry, or the status that ends the read."""
        token = msg.subject.rsplit(".", 1)[-1]
        read = self._pending.get(token)
        if read is None or read.done.done():
            self.fed.count_rejected(StrayReply.reason)  # late, or never asked
            return
        headers = msg.headers or {}
        # An entry is what carries the server's Nats-Sequence, whatever else it carries: a
        # member may store any header on its own chain (a `Status` too), and the server
        # hands it back with the entry (without the books reader: a hub's direct get).
        status = None if "Nats-Sequence" in headers else headers.get("Status")
        if read.abandoned:
            if status or not read.many:  # its end: nothing more will come
                self._pending.pop(token, None)
            return
        if status or (not msg.data and "Nats-Sequence" not in headers):
            if status in (END_OF_BATCH, NOTHING_MORE):
                with contextlib.suppress(KeyError, ValueError):
                    read.pending = int(headers[NUM_PENDING])
                read.done.set_result(None)
            else:  # 503: no stream answers; 408 and the like: the server's
                read.done.set_exception(nats.errors.NoRespondersError()
                                        if status == NO_RESPONDERS else
                                        nats.errors.Error(f"direct get: {status}"))
            return
        try:
            read.got.append(Stored(int(headers["Nats-Sequence"]), headers["Nats-Subject"],
                                   msg.data))
        except (KeyError, ValueError):
            self.fed.count_rejected(StrayReply.reason)
            return
        if not read.many:  # one message, no end marker
            read.done.set_result(None)


def _batch_after(after: int, subject: str) -> dict[str, Any]:
    return {"seq": after + 1, "next_by_subj": subject, "batch": READ_BATCH,
            "max_bytes": READ_MAX_BYTES}


@dataclass
class _Read:
    """A read in flight: what has come, and whether it is over."""

    many: bool
    got: list[Stored] = field(default_factory=list)
    abandoned: bool = False  # no one waits for it any more
    pending: int | None = None  # what the server says is left after the batch, if it does
    done: asyncio.Future[None] = field(
        default_factory=lambda: asyncio.get_running_loop().create_future())

    def more(self, got: int) -> bool:
        """Whether the stream holds more after this batch of `got` entries."""
        if self.pending is not None:
            return self.pending > 0
        return got >= READ_BATCH
