"""The EVENTS stream: the entity's signed events (and, on its own server, the peers' it
sees) kept bounded by age and size, so an observer resumes exactly where it left off.

The stream's sequence number is the event id: `entityctl watch --since` and the web
page's server-sent events start from a time or after an id, then follow live. What is
read back is verified like any envelope but for the replay step (PROTOCOL.md 6.1).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import api
from nats.js.client import JetStreamContext

from protocol import Envelope, Event, Keyring, ProtocolError, open_stored_event, subjects
from protocol.errors import UnknownKey

from .config import Config
from .logs import get

log = get("entityd.eventlog")
# How often an unknown signer may send the reader to ask for keys again: a peer seen
# for the first time pins on its heartbeat, so a refresh finds it; a stranger's events
# are skipped without asking again for each one.
REFRESH_EVERY_S = 5.0


def stream_name(entity: str) -> str:
    return f"EVENTS-{entity}"


def stream_subjects(config: Config) -> list[str]:
    """The entity's own events; every event its server sees when the server is its own
    (embedded, alone or a leaf of a federation): a shared server's other entities keep
    their own streams, which may not overlap this one."""
    if config.events.peers and config.embedded_nats:
        return [subjects.events_of("*")]
    return [subjects.events_of(config.name)]


async def ensure(nc: Client, config: Config) -> bool:
    """Make or update the stream; False (logged) when the server has no JetStream for
    it, and the entity then runs with live events only."""
    wanted = api.StreamConfig(
        name=stream_name(config.name),
        subjects=stream_subjects(config),
        max_age=config.events.max_age,
        max_bytes=config.events.max_bytes,
        discard=api.DiscardPolicy.OLD,
        storage=api.StorageType.FILE,
    )
    js = nc.jetstream()
    try:
        try:
            await js.add_stream(wanted)
        except nats.js.errors.BadRequestError:  # made before, with other limits
            await js.update_stream(wanted)
    except (nats.errors.Error, nats.js.errors.Error) as exc:
        log.warning("events_stream_unavailable", stream=wanted.name, error=repr(exc),
                    effect="events are published live but not kept; watch --since and "
                           "the web page's resumption need JetStream")
        return False
    return True


@dataclass(frozen=True, slots=True)
class StoredEvent:
    """One verified event read back from the stream: `seq` is its id there."""

    seq: int
    envelope: Envelope

    @property
    def entity(self) -> str:
        return self.envelope.src_entity


KeySource = Callable[[], Awaitable[None]]


class Follower:
    """The verified events of one consumer, in stream order: iterate, or take the next
    with a timeout (None when none came: the stream stays where it was)."""

    def __init__(self, reader: EventReader, sub: JetStreamContext.PushSubscription) -> None:
        self._reader = reader
        self._sub = sub

    async def next(self, timeout: float) -> StoredEvent | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await self._sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                return None
            stored = await self._reader.stored(msg)
            if stored is not None:
                return stored
        return None

    async def waiting(self, limit: int) -> list[StoredEvent]:
        """The events already delivered and waiting here (at most `limit`), without
        waiting for more: a writer sends them together."""
        found: list[StoredEvent] = []
        for _ in range(limit):
            if not self._sub.pending_msgs:
                break
            stored = await self._reader.stored(await self._sub.next_msg(timeout=1.0))
            if stored is not None:
                found.append(stored)
        return found

    def __aiter__(self) -> Follower:
        return self

    async def __anext__(self) -> StoredEvent:
        while True:
            stored = await self.next(3600.0)
            if stored is not None:
                return stored


class EventReader:
    """Reads one entity's EVENTS stream: verified events, from a position, then live.

    `keyring` verifies the signers; `refresh` (optional) is awaited to add keys when an
    event's signer is not in it yet (a peer's, pinned since), at most every few seconds.
    Anything that fails verification is skipped and counted, never yielded.
    """

    def __init__(self, js: JetStreamContext, entity: str, keyring: Keyring, *,
                 max_bytes: int, refresh: KeySource | None = None) -> None:
        self.js = js
        self.stream = stream_name(entity)
        self.keyring = keyring
        self.max_bytes = max_bytes
        self.refresh = refresh
        self.skipped = 0
        self._refreshed = 0.0

    async def last_seq(self) -> int:
        info = await self.js.stream_info(self.stream)
        return info.state.last_seq

    @contextlib.asynccontextmanager
    async def follow(self, *, after: int | None = None, since: float | None = None
                     ) -> AsyncIterator[Follower]:
        """Events with a sequence above `after`, or stored since the unix time `since`,
        or (neither) only new ones; the consumer is live when the block is entered."""
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        if after is not None:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                        opt_start_seq=max(1, after + 1))
        elif since is not None:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=datetime.datetime.fromtimestamp(since, datetime.UTC))
        sub = await self.js.subscribe(">", stream=self.stream, ordered_consumer=True,
                                      config=config, idle_heartbeat=5.0)
        try:
            yield Follower(self, sub)
        finally:
            with contextlib.suppress(nats.errors.Error, asyncio.CancelledError):
                await sub.unsubscribe()

    async def stored(self, msg: Msg) -> StoredEvent | None:
        """The verified event `msg` carries; None for a forged one or a heartbeat."""
        envelope = await self.open(msg.data, msg.subject)
        if envelope is None or not isinstance(envelope.message, Event):
            return None
        assert msg.metadata is not None and msg.metadata.sequence is not None
        return StoredEvent(msg.metadata.sequence.stream, envelope)

    async def open(self, data: bytes, subject: str) -> Envelope | None:
        try:
            return open_stored_event(data, subject=subject, keyring=self.keyring,
                                     max_bytes=self.max_bytes)
        except UnknownKey:
            if self.refresh is None or time.monotonic() - self._refreshed < REFRESH_EVERY_S:
                self.skipped += 1
                return None
            self._refreshed = time.monotonic()
            await self.refresh()
            return await self.open_known(data, subject)
        except ProtocolError:
            self.skipped += 1
            return None

    async def open_known(self, data: bytes, subject: str) -> Envelope | None:
        try:
            return open_stored_event(data, subject=subject, keyring=self.keyring,
                                     max_bytes=self.max_bytes)
        except ProtocolError:
            self.skipped += 1
            return None
