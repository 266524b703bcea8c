"""`entityctl watch`: the entity's signed events as they happen, or replayed from its
EVENTS stream (--since), and every entity's of the federation (--all), a colour each."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import hashlib
import json
import os
import sys
import time
from collections.abc import AsyncIterator
from typing import Any

import nats.errors
import nats.js.errors

from actors.peer import keys
from actors.peer.messages import Peers, PeersGet
from protocol import Envelope

from ..client import EntityClient
from ..errors import EntitydError
from ..eventlog import EventReader, Follower
from . import args as args_mod
from . import terminal
from .args import command
from .terminal import visible

PEERS_TIMEOUT_S = 5.0
# ANSI foreground colours, the own entity's first; others by a hash of their name.
COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93", "95", "92")
EXIT_NO_STREAM = 4
FOLLOW_LOOK_S = 1.0  # how often a stored watch looks whether the daemon came back
REFOLLOW_TRIES, REFOLLOW_PAUSE_S = 60, 0.5  # following on after a restart: for 30 s


def add_commands(sub: Any) -> None:
    watch = command(sub, "watch", "Print the entity's signed events as they happen (or "
                    "from its EVENTS stream since a while ago), until Ctrl-C.",
                    "entityctl watch --since 10m\nentityctl watch --all --json")
    watch.add_argument("--json", action="store_true", help="one JSON object per line")
    watch.add_argument("--since", type=args_mod.duration, metavar="DURATION",
                       help="first replay the events of the last DURATION (90s, 30m, 2h, "
                            "1d) from the EVENTS stream, then follow")
    watch.add_argument("--all", action="store_true",
                       help="every entity's events this entity's server sees (its peers'), "
                            "one colour each")
    watch.set_defaults(run=watch_events, follows=True)  # across the daemon's restarts


async def watch_events(client: EntityClient, args: argparse.Namespace) -> int:
    if args.since is None and not args.all:
        return await _live(client, args)
    return await _stored(client, args)


async def _live(client: EntityClient, args: argparse.Namespace) -> int:
    """Straight from the bus: works with or without the EVENTS stream."""
    paint = Painter(client.config.name, colour=False)
    async with client.events() as events:
        # On stderr, so that stdout stays the events alone (--json).
        print(f"watching {client.config.name}'s events on {client.shown_url}; waiting for "
              "events; Ctrl-C stops", file=sys.stderr, flush=True)
        async for event in events:
            _print(event, None, args, paint)
    return 0


async def _stored(client: EntityClient, args: argparse.Namespace) -> int:
    reader = client.event_reader()
    reader.refresh = lambda: add_peer_keys(client, reader)
    since = time.time() - args.since if args.since else None
    whose = "every entity's" if args.all else f"{client.config.name}'s"
    start = (f"from {time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(since))}"
             if since else "from now")
    paint = Painter(client.config.name, colour=_colour_wanted())
    last: int | None = None  # the stream sequence of the last event printed
    said = False
    try:
        while True:  # once, and again after each time the daemon came back (a restart)
            reconnects = client.reconnects()
            async with _following(reader, since if last is None else None, last,
                                  args.all) as events:
                if not said:
                    print(f"watching {whose} events on {client.shown_url}, {start}; "
                          "Ctrl-C stops", file=sys.stderr, flush=True)
                    said = True
                while client.reconnects() == reconnects:
                    stored = await events.next(timeout=FOLLOW_LOOK_S)
                    if stored is None:
                        continue
                    last = stored.seq
                    if args.all or stored.entity == client.config.name:
                        _print(stored.envelope, stored.seq, args, paint)
            # The server the consumer lived on restarted: follow on after `last`.
    except nats.js.errors.NotFoundError:
        print(f"entityctl: {client.config.name} keeps no EVENTS stream (its NATS server "
              "has no JetStream for it, see its log's events_stream_unavailable): use "
              "`entityctl watch` without --since and --all", file=sys.stderr)
        return EXIT_NO_STREAM
    return 0


@contextlib.asynccontextmanager
async def _following(reader: EventReader, since: float | None, after: int | None,
                     feed: bool) -> AsyncIterator[Follower]:
    """reader.follow, asked again for a while when it follows on after a restart (the
    new daemon's server may not serve its stream for a moment)."""
    async with contextlib.AsyncExitStack() as stack:
        for attempt in range(REFOLLOW_TRIES):
            try:  # only the follow's start is asked again, never what its user raises
                events = await stack.enter_async_context(
                    reader.follow(since=since, after=after, feed=feed))
                break
            except (nats.errors.Error, nats.js.errors.Error):
                if after is None or attempt == REFOLLOW_TRIES - 1:
                    raise
            await asyncio.sleep(REFOLLOW_PAUSE_S)
        yield events


async def add_peer_keys(client: EntityClient, reader: EventReader) -> None:
    """The peers' keys as the peer actor pinned them, so their events verify."""
    try:
        peers: Peers = await client.ask("peer", PeersGet(), PEERS_TIMEOUT_S)
    except EntitydError:
        return
    keys.pin(reader.keyring, peers)


def _print(event: Envelope, seq: int | None, args: argparse.Namespace,
           paint: Painter) -> None:
    if args.json:
        print(json.dumps({"subject": event.subj, "src": event.src, "ts": event.ts,
                          **({"seq": seq} if seq is not None else {}),
                          **dataclasses.asdict(event.message)}, default=str), flush=True)
        return
    line = render_progress(event)
    if args.all:
        line = f"{event.src_entity} {line}"
    if paint.colour:
        terminal.styled(paint(event.src_entity, visible(line)) + "\n")
    else:
        print(line, flush=True)


def _colour_wanted() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ


@dataclasses.dataclass
class Painter:
    own: str
    colour: bool

    def __call__(self, entity: str, text: str) -> str:
        """`text` in `entity`'s colour: `text` must be `visible` already."""
        if not self.colour:
            return text
        if entity == self.own:
            code = COLOURS[0]
        else:
            digest = hashlib.sha256(entity.encode()).digest()[0]
            code = COLOURS[1 + digest % (len(COLOURS) - 1)]
        return f"\x1b[{code}m{text}\x1b[0m"


def render_progress(event: Envelope) -> str:
    message = event.message
    data = dict(message.data)
    data.pop("task_id", None)
    actor = event.src.split("/", 1)[1]
    detail = " ".join(f"{k}={_short(v)}" for k, v in data.items())
    return f"[{actor}] {message.type} {detail}".rstrip()


def _short(value: Any, limit: int = 160) -> str:
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    text = text.replace("\n", " ")
    return text if len(text) <= limit else text[: limit - 3] + "..."
