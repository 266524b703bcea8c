"""`entityctl watch`: the entity's signed events as they happen, or replayed from its
EVENTS stream (--since), and every entity's of the federation (--all), a colour each."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import os
import sys
import time
from typing import Any

import nats.js.errors

from actors.peer import keys
from actors.peer.messages import Peers, PeersGet
from protocol import Envelope

from ..client import EntityClient
from ..errors import EntitydError
from ..eventlog import EventReader
from . import args as args_mod
from . import terminal
from .args import command
from .terminal import visible

PEERS_TIMEOUT_S = 5.0
# ANSI foreground colours, the own entity's first; others by a hash of their name.
COLOURS = ("36", "33", "35", "32", "34", "31", "96", "93", "95", "92")
EXIT_NO_STREAM = 4


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
    watch.set_defaults(run=watch_events)


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
    try:
        async with reader.follow(since=since, feed=args.all) as events:
            print(f"watching {whose} events on {client.shown_url}, {start}; Ctrl-C stops",
                  file=sys.stderr, flush=True)
            async for stored in events:
                if args.all or stored.entity == client.config.name:
                    _print(stored.envelope, stored.seq, args, paint)
    except nats.js.errors.NotFoundError:
        print(f"entityctl: {client.config.name} keeps no EVENTS stream (its NATS server "
              "has no JetStream for it, see its log's events_stream_unavailable): use "
              "`entityctl watch` without --since and --all", file=sys.stderr)
        return EXIT_NO_STREAM
    return 0


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
