"""The activity stream as server-sent events: each verified event of the EVENTS stream,
its stream sequence as the SSE id, so a browser that reconnects (it sends Last-Event-ID)
resumes exactly after the last event it got; nothing lost, nothing twice."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

from starlette.requests import Request
from starlette.responses import Response, StreamingResponse

from entityd import EventReader, StoredEvent

BACKLOG = 200  # a fresh page starts this many stored messages back
KEEPALIVE_S = 15.0  # a comment line this often keeps proxies and the browser attached
BURST = 255  # events taken beside the one awaited, for one write
MAX_ID = 2**63


def resume_point(request: Request) -> int | None:
    """After which sequence to start: the browser's Last-Event-ID, else ?after=N."""
    raw = request.headers.get("last-event-id") or request.query_params.get("after") or ""
    if raw.isascii() and raw.isdigit() and int(raw) < MAX_ID:
        return int(raw)
    return None


def render(stored: StoredEvent) -> bytes:
    env = stored.envelope
    event = env.message
    body = {"seq": stored.seq, "entity": env.src_entity, "actor": env.src.split("/", 1)[1],
            "type": event.type, "ts": env.ts, "data": event.data}
    data = json.dumps(body, default=str, ensure_ascii=True)
    return f"id: {stored.seq}\nevent: evt\ndata: {data}\n\n".encode()


def event_stream(reader: EventReader, keys: Callable[[], Awaitable[None]],
                 stopping: Callable[[], bool]) -> Callable[[Request], Awaitable[Response]]:
    async def events(request: Request) -> Response:
        after = resume_point(request)
        if after is None:
            after = max(0, await reader.last_seq() - BACKLOG)
            await keys()  # a fresh page: peers first seen since the last refresh verify

        async def body() -> AsyncIterator[bytes]:
            start = json.dumps({"after": after})
            # Its id is the start point: a page that got no event yet resumes from there.
            yield f"retry: 1000\nid: {after}\nevent: start\ndata: {start}\n\n".encode()
            async with reader.follow(after=after) as follower:
                while not stopping():
                    stored = await follower.next(KEEPALIVE_S)
                    if stored is None:
                        yield b": keepalive\n\n"
                        continue
                    # What else has come meanwhile goes in the same write: one wake-up
                    # of the browser (and one socket write here) for a burst.
                    burst = [stored, *await follower.waiting(BURST)]
                    yield b"".join(render(each) for each in burst)

        headers: dict[str, Any] = {"x-accel-buffering": "no"}
        return StreamingResponse(body(), media_type="text/event-stream", headers=headers)

    return events
