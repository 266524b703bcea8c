"""This entity's JetStream INBOX: the stream of durable commands peers send it, with
per-sender limits, and the pull consumer that hands the peer actor only real deliveries.

The command subject `fed.cmd.<self>.<sender>.<op>` names its sender (the hub lets only
that member publish it), so the stream keeps at most `peers.inbox_per_sender` commands
per sender and operation, refusing more to the sender (discard new, per subject), and at
most `peers.inbox_max_bytes` in all. It takes only the operations there are: a subject
per made-up operation would have been a limit per made-up operation.

The consumer pulls itself rather than through nats-py's fetch: anything published on its
delivery inbox reaches that subscription too, and fetch handed a message without a
reply to the actor (which crashed reading its JetStream metadata) and raised on a forged
status header. Here a message is a delivery only when it came from the stream (it carries
the stream's subject, not the inbox's, which no publisher can arrange) with an ack subject
of this stream and consumer that parses; anything else is refused with a reason and
dropped. Status messages (which anyone could forge) end nothing: the pull's own deadline
does; one saying the consumer is gone only has it looked up, and made again if so.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Awaitable, Callable, Sequence

import nats.errors
import nats.js.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import (
    AckPolicy,
    ConsumerConfig,
    DiscardPolicy,
    RetentionPolicy,
    StorageType,
    StreamConfig,
)
from nats.js.client import JetStreamContext
from structlog.typing import FilteringBoundLogger

from entityd import FederationAccess, PeersSection, unsubscribe
from protocol import NotADelivery, ProtocolError, subjects

DURABLE = "peer"
ACK_WAIT_S = 60.0
PULL_BATCH = 16
PULL_EXPIRES_S = 1.0
PULL_GRACE_S = 0.25  # past a pull's expiry before the next one is asked for
API = "$JS.API"  # the entity's own server, where its INBOX is (no domain prefix)
# Headers and slack beyond the largest envelope (the Nats-Msg-Id header, mostly).
HEADER_ROOM = 4096
# Deliveries waiting for their ack, room enough for this many senders each holding all
# they may keep: a sender over its rate limit has its commands put back with a delay, and
# they count as pending until then.
PENDING_SENDERS = 64
# Subject counts past this many are not listed in full by the server; then the stream's
# message count stands in for the fullest subject.
SUBJECTS_LISTED = 10_000
MAINTAIN_EVERY_S = 10.0
STATUS_LOG_EVERY_S = 60.0


def stream_config(name: str, entity: str, ops: Sequence[str], *, per_subject: int,
                  max_bytes: int, max_message_bytes: int) -> StreamConfig:
    return StreamConfig(
        name=name, subjects=[subjects.command(entity, "*", op) for op in sorted(ops)],
        retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
        duplicate_window=120.0, max_msg_size=max_message_bytes + HEADER_ROOM,
        max_msgs_per_subject=per_subject, discard=DiscardPolicy.NEW,
        discard_new_per_subject=True, max_bytes=max_bytes)


def insufficient_storage(exc: nats.js.errors.APIError) -> bool:
    """The server cannot set this much of its JetStream store aside for the stream (it
    reserves a stream's max_bytes; the embedded server's store is 75% of the free disk)."""
    return exc.err_code == 10047 or "insufficient storage" in (exc.description or "")


_COMPARED = ("retention", "duplicate_window", "max_msg_size", "max_msgs_per_subject",
             "discard", "discard_new_per_subject", "max_bytes")


def _differs(have: StreamConfig, want: StreamConfig) -> bool:
    if set(have.subjects or ()) != set(want.subjects or ()):
        return True
    return any(getattr(have, f) != getattr(want, f) for f in _COMPARED)


Refuse = Callable[[ProtocolError, Msg], Awaitable[None]]


class Inbox:
    """The INBOX stream and its pull consumer, for one entity."""

    def __init__(self, bus: FederationAccess, js: JetStreamContext, *, stream: str, entity: str,
                 ops: Sequence[str], settings: PeersSection, max_message_bytes: int,
                 log: FilteringBoundLogger, refuse: Refuse) -> None:
        self.bus = bus
        self.js = js
        self.stream = stream
        self.entity = entity
        self.ops = list(ops)
        self.settings = settings
        self.max_message_bytes = max_message_bytes
        self.log = log
        self._refuse = refuse
        self.per_subject = settings.inbox_per_sender  # what the stream holds to now
        self.max_bytes = settings.inbox_max_bytes  # less where the server has not the room
        self.deliver = ""
        self._sub: Subscription | None = None
        self._ready: asyncio.Queue[Msg] = asyncio.Queue()
        self._left = 0
        self._deadline = 0.0
        self._status_logged = 0.0
        self._recheck = False  # a pull was answered that there is no such consumer

    # ---- the stream and the consumer -----------------------------------------------------

    async def ensure(self) -> None:
        """Create the stream and the consumer, or bring an older one's limits up to date in
        place. Nothing it holds is lost: while some sender has more waiting than the
        per-sender limit allows (kept from before there was one), the limit stays at that
        many until the backlog is handled (see tighten)."""
        try:
            info = await self.js.stream_info(self.stream, subjects_filter=">")
        except nats.js.errors.NotFoundError:
            await self._put(create=True)
        else:
            fullest = _fullest(info.state.subjects, info.state.messages)
            if fullest > self.per_subject:
                self.per_subject = fullest
                self.log.warning("inbox_limit_deferred", stream=self.stream, holds=fullest,
                                 limit=self.settings.inbox_per_sender)
            if _differs(info.config, self._config()):
                await self._put(create=False)
                self.log.info("inbox_limits_updated", stream=self.stream,
                              per_sender=self.per_subject, max_bytes=self.max_bytes,
                              kept=info.state.messages)
        pending = max(1000, PENDING_SENDERS * len(self.ops) * self.settings.inbox_per_sender)
        consumer = ConsumerConfig(
            durable_name=DURABLE, name=DURABLE, ack_policy=AckPolicy.EXPLICIT,
            ack_wait=ACK_WAIT_S, max_ack_pending=pending,
            filter_subject=subjects.command(self.entity, "*", "*"))
        try:
            have = (await self.js.consumer_info(self.stream, DURABLE)).config
        except nats.js.errors.NotFoundError:
            have = None
        if have is None or have.max_ack_pending != pending:
            await self.js.add_consumer(self.stream, consumer)  # creates, or updates in place

    def _config(self) -> StreamConfig:
        return stream_config(self.stream, self.entity, self.ops, per_subject=self.per_subject,
                             max_bytes=self.max_bytes, max_message_bytes=self.max_message_bytes)

    async def _put(self, *, create: bool) -> None:
        """Create or update the stream; where the server has not the room for
        inbox_max_bytes, with half as much, and so on (down to two messages' worth)."""
        floor = 2 * (self.max_message_bytes + HEADER_ROOM)
        while True:
            try:
                if create:
                    await self.js.add_stream(self._config())
                else:
                    await self.js.update_stream(self._config())
                return
            except nats.js.errors.APIError as exc:
                if not insufficient_storage(exc) or self.max_bytes // 2 < floor:
                    raise
                self.max_bytes //= 2
                self.log.warning("inbox_max_bytes_reduced", stream=self.stream,
                                 max_bytes=self.max_bytes, error=exc.description,
                                 setting=self.settings.inbox_max_bytes)

    async def maintain(self) -> None:
        """Every few seconds: while an older backlog holds the per-sender limit above its
        setting, lower it as the backlog is handled (never below what some sender has
        waiting); when a pull was answered that the consumer is gone (deleted, or the
        server lost it), make it again."""
        while True:
            await asyncio.sleep(MAINTAIN_EVERY_S)
            try:
                if self.per_subject > self.settings.inbox_per_sender:
                    await self._tighten()
                if self._recheck:
                    self._recheck = False
                    await self._repair()
            except (nats.errors.Error, TimeoutError) as exc:
                self.log.warning("inbox_not_maintained", error=repr(exc))

    async def _tighten(self) -> None:
        info = await self.js.stream_info(self.stream, subjects_filter=">")
        fullest = _fullest(info.state.subjects, info.state.messages)
        limit = max(self.settings.inbox_per_sender, fullest)
        if limit < self.per_subject:
            self.per_subject = limit
            await self.js.update_stream(self._config())
            self.log.info("inbox_limit_tightened", stream=self.stream, limit=limit)

    async def _repair(self) -> None:
        try:
            await self.js.consumer_info(self.stream, DURABLE)
        except nats.js.errors.NotFoundError:  # the consumer, or the stream with it
            self.log.warning("inbox_consumer_missing", stream=self.stream)
            await self.ensure()

    # ---- deliveries -------------------------------------------------------------------

    async def subscribe(self) -> None:
        self.deliver = self.bus.new_inbox()
        self._sub = await self.bus.subscribe(self.deliver, cb=self._arrived)

    async def unsubscribe(self) -> None:
        sub, self._sub = self._sub, None
        await unsubscribe(sub)

    async def next(self) -> Msg:
        """The next delivery of the INBOX, asking the stream for more as needed."""
        loop = asyncio.get_running_loop()
        while True:
            if self._ready.empty() and (self._left <= 0 or loop.time() >= self._deadline):
                await self._pull()
            try:
                async with asyncio.timeout_at(self._deadline):
                    msg = await self._ready.get()
            except TimeoutError:
                self._left = 0
                continue
            self._left -= 1
            return msg

    def queued(self) -> list[Msg]:
        """Deliveries received and not yet taken (to hand back when stopping)."""
        msgs = []
        while not self._ready.empty():
            msgs.append(self._ready.get_nowait())
        return msgs

    async def _pull(self) -> None:
        loop = asyncio.get_running_loop()
        request = json.dumps({"batch": PULL_BATCH,
                              "expires": int(PULL_EXPIRES_S * 1_000_000_000)}).encode()
        try:
            await self.bus.publish(f"{API}.CONSUMER.MSG.NEXT.{self.stream}.{DURABLE}",
                                  request, reply=self.deliver)
        except (nats.errors.Error, OSError) as exc:  # e.g. closed; reconnects by itself
            self.log.warning("inbox_pull_failed", error=repr(exc))
            await asyncio.sleep(1.0)
            self._left, self._deadline = 0, loop.time()
            return
        self._left = PULL_BATCH
        self._deadline = loop.time() + PULL_EXPIRES_S + PULL_GRACE_S

    async def _arrived(self, msg: Msg) -> None:
        try:
            problem = self._judge(msg)
        except Exception as exc:  # nothing on this subject may end the subscription
            problem = f"unreadable: {type(exc).__name__}"
        if problem is None:
            self._ready.put_nowait(msg)
        elif problem:
            await self._refuse(NotADelivery(problem, subject=msg.subject), msg)

    def _judge(self, msg: Msg) -> str | None:
        """None for a delivery of ours, "" for a status (never acted on), else why not."""
        if msg.subject == self.deliver:
            # Published here: the stream's deliveries carry the subject they were stored
            # under. The server's status messages come this way too (no reply, no data).
            status = (msg.headers or {}).get("Status")
            if status and not msg.reply and not msg.data:
                self._note_status(status, (msg.headers or {}).get("Description", ""))
                return ""
            return ("published on the delivery inbox, not delivered by the INBOX"
                    + ("" if msg.reply else " (no reply subject)"))
        if not msg.reply:
            return "no reply subject: not a JetStream delivery"
        if not msg.reply.startswith("$JS.ACK."):
            return "its reply subject is not a JetStream ack subject"
        try:
            meta = msg.metadata
        except Exception:
            return "its ack subject does not parse"
        if meta.stream != self.stream or meta.consumer != DURABLE:
            return f"an ack subject of {meta.stream}/{meta.consumer}, not {self.stream}/{DURABLE}"
        route = subjects.route(msg.subject)
        if route is None or route.family != "cmd" or route.receiver != self.entity:
            return "not a command subject of this entity"
        return None

    def _note_status(self, status: str, description: str) -> None:
        if status in ("404", "408", "100"):  # no messages, the pull expired, heartbeat
            return
        # No responders (no such consumer), or 409 (deleted, ...): have maintain() look.
        # A forged one costs one consumer lookup per MAINTAIN_EVERY_S at most.
        self._recheck = True
        now = time.monotonic()
        if now - self._status_logged >= STATUS_LOG_EVERY_S:
            self._status_logged = now
            self.log.warning("inbox_pull_status", status=status, description=description[:200])


def _fullest(counts: dict[str, int] | None, messages: int) -> int:
    """The most commands any one subject holds (the stream's total if not all listed)."""
    if not messages:
        return 0
    if not counts or len(counts) >= SUBJECTS_LISTED:
        return messages
    return max(counts.values())

