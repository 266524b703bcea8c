"""The activity stream as server-sent events: each verified event of the entity's own
history and, where its server keeps them, its peers' from the federation's feed.

The two are kept apart (entityd/eventlog.py: a member filling the feed must not cost the
entity its own history), each with its own sequence numbers. Every event's SSE id names
the position in both, `OWN.FEED`, so a browser that reconnects (it sends Last-Event-ID)
resumes exactly after the last event it got from each: nothing lost, nothing twice. An
own event carries its `seq`, a peer's its `feed_seq`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from entityd import EventReader, StoredEvent

BACKLOG = 200  # a fresh page starts this many stored messages back (in each stream)
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies and the browser attached
BURST = 255  # events taken beside the one awaited, for one write
QUEUED = 1024  # events read ahead of the browser
PUMP_WAIT_S = 1.0
MAX_ID = 2**63
ID_DIGITS = len(str(MAX_ID))


@dataclass
class Position:
    """Where a page is: the last own event and the last feed event it got."""

    own: int
    feed: int | None  # None: the feed is the own history (no peers' events kept)

    def __str__(self) -> str:
        return str(self.own) if self.feed is None else f"{self.own}.{self.feed}"


def _number(raw: str) -> int | None:
    """A sequence number, 0 to MAX_ID - 1 (no longer than MAX_ID's digits: int() refuses
    a string of more than 4,300 digits with a ValueError)."""
    if not (raw.isascii() and raw.isdigit() and len(raw) <= ID_DIGITS):
        return None
    number = int(raw)
    return number if number < MAX_ID else None


def resume_point(request: Request) -> tuple[int, int | None] | None:
    """After which events to start: the browser's Last-Event-ID, else ?after=; `OWN` or
    `OWN.FEED` (None where it names none)."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    own, dot, feed = raw.partition(".")
    own_n = _number(own)
    if own_n is None:
        return None
    return own_n, (_number(feed) if dot else None)


def render(stored: StoredEvent, own: bool, at: Position) -> bytes:
    env = stored.envelope
    event = env.message
    place = {"seq": stored.seq} if own else {"seq": None, "feed_seq": stored.seq}
    body = {**place, "entity": env.src_entity, "actor": env.src.split("/", 1)[1],
            "type": event.type, "ts": env.ts, "data": event.data}
    data = json.dumps(body, default=str, ensure_ascii=True)
    return f"id: {at}\nevent: evt\ndata: {data}\n\n".encode()


async def _start(reader: EventReader, request: Request,
                 keys: Callable[[], Awaitable[None]]) -> Position:
    peers = await reader.keeps_peers()
    resumed = resume_point(request)
    if resumed is not None:
        own, feed = resumed
        if peers and feed is None:  # an id from before the feed was apart: from now
            feed = await reader.last_seq(feed=True)
        return Position(own, feed if peers else None)
    await keys()  # a fresh page: peers first seen since the last refresh verify
    own = max(0, await reader.last_seq() - BACKLOG)
    feed = max(0, await reader.last_seq(feed=True) - BACKLOG) if peers else None
    return Position(own, feed)


async def _pump(follower: Any, own: bool,
                queue: asyncio.Queue[tuple[bool, StoredEvent]], closed: asyncio.Event) -> None:
    """One stream's events into `queue` until `closed`. It waits at most PUMP_WAIT_S at a
    time: a cancel that nats-py's next_msg swallows (asyncio.wait_for in Python 3.11, when
    a message comes at the same moment) must not keep it, and the response, for ever."""
    while not closed.is_set():
        stored = await follower.next(PUMP_WAIT_S)
        if stored is None:  # (the feed's follower passes the entity's own events over)
            continue
        while not closed.is_set():
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(PUMP_WAIT_S):
                    await queue.put((own, stored))
                break


def event_stream(reader: EventReader, keys: Callable[[], Awaitable[None]],
                 stopping: Callable[[], bool]) -> Callable[[Request], Awaitable[Response]]:
    async def events(request: Request) -> Response:
        at = await _start(reader, request, keys)

        async def body() -> AsyncIterator[bytes]:
            start = json.dumps({"after": at.own, "feed_after": at.feed})
            # Its id is the start point: a page that got no event yet resumes from there.
            yield f"retry: 1000\nid: {at}\nevent: start\ndata: {start}\n\n".encode()
            queue: asyncio.Queue[tuple[bool, StoredEvent]] = asyncio.Queue(QUEUED)
            closed = asyncio.Event()
            async with contextlib.AsyncExitStack() as stack:
                pumps = [asyncio.create_task(_pump(
                    await stack.enter_async_context(reader.follow(after=at.own)),
                    True, queue, closed))]
                if at.feed is not None:
                    pumps.append(asyncio.create_task(_pump(
                        await stack.enter_async_context(
                            reader.follow(after=at.feed, feed=True, others=True)),
                        False, queue, closed)))
                try:
                    while not stopping():
                        try:
                            async with asyncio.timeout(KEEPALIVE_S):
                                burst = [await queue.get()]
                        except TimeoutError:
                            _check(pumps)
                            yield b": keepalive\n\n"
                            continue
                        # What else has come meanwhile goes in the same write: one
                        # wake-up of the browser (and one socket write here) for a burst.
                        while len(burst) <= BURST and not queue.empty():
                            burst.append(queue.get_nowait())
                        yield b"".join(_advance(at, own, stored) for own, stored in burst)
                finally:
                    closed.set()
                    for pump in pumps:
                        pump.cancel()
                    await asyncio.wait(pumps, timeout=2 * PUMP_WAIT_S)
                    for pump in pumps:  # a failure at the end is no one's news
                        if pump.done() and not pump.cancelled():
                            pump.exception()

        headers: dict[str, Any] = {"x-accel-buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    return events


def _check(pumps: list[asyncio.Task[None]]) -> None:
    """A reader that failed ends the response (the browser comes back and resumes)."""
    for pump in pumps:
        if pump.done():
            pump.result()


def _advance(at: Position, own: bool, stored: StoredEvent) -> bytes:
    if own:
        at.own = stored.seq
    else:
        at.feed = stored.seq
    return render(stored, own, at)
