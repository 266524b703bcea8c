"""The EVENTS stream: the entity's signed events (and, on its own server, the peers' it
sees) kept bounded by age and size, so an observer resumes exactly where it left off.

The stream's sequence number is the event id: `entityctl watch --since` and the web
page's server-sent events start from a time or after an id, then follow live. What is
read back is verified like any envelope but for the replay step (PROTOCOL.md 6.1).

When the stream keeps the peers' events too, any member can fill it (the hub lets each
publish what it likes under its own name), and a full stream drops its oldest first: the
entity's own history would go with them. So the entity's own events are also kept in a
stream of their own, `EVENTS-<entity>-OWN`, sourced from the first with its own limits
(a stream with subjects of its own could not overlap the first's); the entity's own
history is read from there, and a member's flood costs only the federation's feed.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

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


def own_stream_name(entity: str) -> str:
    """The entity's own events apart, when its EVENTS stream keeps its peers' too."""
    return f"EVENTS-{entity}-OWN"


def keeps_peers(config: Config) -> bool:
    """Whether the EVENTS stream keeps every event the server sees: only on the entity's
    own server (embedded, alone or a leaf of a federation): a shared server's other
    entities keep their own streams, which may not overlap this one."""
    return config.events.peers and config.embedded_nats


def stream_subjects(config: Config) -> list[str]:
    """The entity's own events; every event its server sees when it `keeps_peers`."""
    if keeps_peers(config):
        return [subjects.events_of("*")]
    return [subjects.events_of(config.name)]


def stream_configs(config: Config) -> list[api.StreamConfig]:
    """EVENTS, and when it keeps the peers' events the entity's own apart (each with
    the `events` limits)."""
    def kept(name: str, **source: Any) -> api.StreamConfig:
        return api.StreamConfig(name=name, max_age=config.events.max_age,
                                max_bytes=config.events.max_bytes,
                                discard=api.DiscardPolicy.OLD,
                                storage=api.StorageType.FILE, **source)

    main = stream_name(config.name)
    wanted = [kept(main, subjects=stream_subjects(config))]
    if keeps_peers(config):
        own = api.StreamSource(name=main, filter_subject=subjects.events_of(config.name))
        wanted.append(kept(own_stream_name(config.name), sources=[own]))
    return wanted


async def ensure(nc: Client, config: Config) -> bool:
    """Make or update the streams; False (logged) when the server has no JetStream for
    them, and the entity then runs with live events only."""
    js = nc.jetstream()
    for wanted in stream_configs(config):
        try:
            try:
                await js.add_stream(wanted)
            except nats.js.errors.BadRequestError:  # made before, with other limits
                await js.update_stream(wanted)
        except (nats.errors.Error, nats.js.errors.Error) as exc:
            log.warning("events_stream_unavailable", stream=wanted.name, error=repr(exc),
                        effect="events are published live but not kept; watch --since "
                               "and the web page's resumption need JetStream")
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

    def __init__(self, reader: EventReader, sub: JetStreamContext.PushSubscription,
                 skip: str = "") -> None:
        self._reader = reader
        self._sub = sub
        # Events stored under this entity's name are passed over unread (not verified).
        self._skip = subjects.events_of(skip)[:-1] if skip else ""

    async def next(self, timeout: float) -> StoredEvent | None:
        deadline = time.monotonic() + timeout
        while (left := deadline - time.monotonic()) > 0:
            try:
                msg = await self._sub.next_msg(timeout=left)
            except nats.errors.TimeoutError:
                return None
            if self._skip and msg.subject.startswith(self._skip):
                continue
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
            msg = await self._sub.next_msg(timeout=1.0)
            if self._skip and msg.subject.startswith(self._skip):
                continue
            stored = await self._reader.stored(msg)
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
    """Reads one entity's EVENTS streams: verified events, from a position, then live.

    By default the entity's own history (`EVENTS-<entity>-OWN` where its EVENTS stream
    keeps its peers' too, else EVENTS itself); with `feed=True` EVENTS, the entity's own
    events and its peers' as its server saw them (`watch --all`, the peers' events on
    the web page). `keyring` verifies the signers; `refresh` (optional) is awaited to
    add keys when an event's signer is not in it yet (a peer's, pinned since), at most
    every few seconds. Anything that fails verification is skipped and counted, never
    yielded.
    """

    def __init__(self, js: JetStreamContext, entity: str, keyring: Keyring, *,
                 max_bytes: int, refresh: KeySource | None = None) -> None:
        self.js = js
        self.entity = entity
        self.feed = stream_name(entity)
        self.keyring = keyring
        self.max_bytes = max_bytes
        self.refresh = refresh
        self.skipped = 0
        self._refreshed = 0.0
        self._own: str | None = None

    async def own_stream(self) -> str:
        """The stream of the entity's own history (found once, then kept)."""
        if self._own is None:
            try:
                await self.js.stream_info(own_stream_name(self.entity))
            except nats.js.errors.NotFoundError:
                self._own = self.feed
            else:
                self._own = own_stream_name(self.entity)
        return self._own

    async def keeps_peers(self) -> bool:
        """Whether the feed holds more than the entity's own history."""
        return await self.own_stream() != self.feed

    async def last_seq(self, *, feed: bool = False) -> int:
        info = await self.js.stream_info(self.feed if feed else await self.own_stream())
        return info.state.last_seq

    @contextlib.asynccontextmanager
    async def follow(self, *, after: int | None = None, since: float | None = None,
                     feed: bool = False, others: bool = False) -> AsyncIterator[Follower]:
        """Events with a sequence above `after`, or stored since the unix time `since`,
        or (neither) only new ones; the consumer is live when the block is entered. With
        `others`, the entity's own events are passed over before they are verified."""
        config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.NEW)
        if after is not None:
            config = api.ConsumerConfig(deliver_policy=api.DeliverPolicy.BY_START_SEQUENCE,
                                        opt_start_seq=max(1, after + 1))
        elif since is not None:
            config = api.ConsumerConfig(
                deliver_policy=api.DeliverPolicy.BY_START_TIME,
                opt_start_time=datetime.datetime.fromtimestamp(since, datetime.UTC))
        stream = self.feed if feed else await self.own_stream()
        sub = await self.js.subscribe(">", stream=stream, ordered_consumer=True,
                                      config=config, idle_heartbeat=5.0)
        try:
            yield Follower(self, sub, self.entity if others else "")
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
