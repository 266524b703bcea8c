"""The hub's reader of the LEDGER stream: members' ledger reads, each member on a line of its
own with a budget, so that no member's flood of reads costs another member (or the hub's
memory) anything.

Why it exists (deploy/FEDERATION.md, "Reads of the ledger"): NATS has no rate limit per
user, and a JetStream direct get that reaches the hub over a leafnode connection waits in
a queue without a bound (nats-server serves only a client connection's in line), so a
member asking as fast as its link goes grew the hub's memory by hundreds of MB a minute
and slowed every member's reads to seconds. Here a member asks on `ledger_read.<itself>`
(the hub lets each member publish only its own name there, so the subject names the
asker); this process, logged in to the members' account FED once per member, takes each
member's asks on a connection of its own, at most BUDGET_RATE a second (a burst of
BUDGET_BURST) and READS_IN_FLIGHT at a time, and reads the stream for them through one
client connection to BOOKS, where the server serves each direct get in line. A member over
its budget, or with WAITING asks queued, is not listened to for a while (its subscription
dropped: its asks then meet "no responders" at its own leaf and cost the hub nothing), and
the hub bounds what waits on its line by the connection's `max_pending` (64 MB) however
fast it sends. Nothing but the asker's own reply inbox (`_i.<member>.`) is ever answered,
so no answer lands on a chain or in another member's inbox; the hub lets this process
publish nowhere else anyway.

Answers are the direct get's own messages, forwarded as they come (the entry with its
headers, then the batch's end), so a member reads them as it reads a direct get.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import secrets
import signal
import sys
import time
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import nats
import nats.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from protocol import subjects

from . import federation, logs
from .errors import ConfigError, EntitydError

log = logs.get("entityd.books_reader")

NAME = "books-reader"  # its logins' name, and its queue group (a hub cluster runs several)
DIRECT_GET = "$JS.API.DIRECT.GET.LEDGER"  # in BOOKS, through its client connection
# Per member: asks a second, and a burst. A replay reads batches of 256 entries: at
# 20,000 entries a second (faster than a member verifies them) of 600 bytes each, about
# 80 asks and 45 more for the bytes (below) a second.
BUDGET_RATE = 200.0
BUDGET_BURST = 800.0
ASK_BYTES = 256 * 1024  # an answer costs one ask more for each this many bytes in it
READS_IN_FLIGHT = 4  # per member
WAITING = 32  # per member: asks queued behind those; more, and it is not listened to
PAUSE_S = 1.0  # at least, when a member goes over; longer until its budget has refilled
MAX_ASK_BYTES = 512
MAX_BATCH = 256
MAX_BYTES = 1024 * 1024
ANSWER_S = 10.0  # a direct get's answer, all of it
ENDS = ("204", "404")  # a batch's end; nothing there
_KEYS = frozenset({"seq", "last_by_subj", "next_by_subj", "batch", "max_bytes"})


class BadAsk(ValueError):
    """An ask this reader does not forward."""


def checked(data: bytes) -> dict[str, Any]:
    """The ask in `data` as the direct get it becomes: only the reads a member's ledger
    makes (one entry by sequence, a chain's last, a batch after a sequence), bounded
    (MAX_BATCH entries, MAX_BYTES); BadAsk for anything else."""
    if len(data) > MAX_ASK_BYTES:
        raise BadAsk(f"an ask of {len(data)} bytes (at most {MAX_ASK_BYTES})")
    try:
        ask = json.loads(data)
    except (ValueError, UnicodeDecodeError):
        raise BadAsk("not JSON") from None
    if not isinstance(ask, dict) or not ask or not set(ask) <= _KEYS:
        raise BadAsk(f"an ask names only {sorted(_KEYS)}")
    for key in ("seq", "batch", "max_bytes"):
        if key in ask and (type(ask[key]) is not int or ask[key] < 1):
            raise BadAsk(f"{key} must be a positive integer")
    for key in ("last_by_subj", "next_by_subj"):
        if key in ask and not _chain_subject(ask[key]):
            raise BadAsk(f"{key} must be ledger.> or ledger.<account>")
    if "last_by_subj" in ask:
        if len(ask) != 1:
            raise BadAsk("last_by_subj goes alone")
        return ask
    if "seq" not in ask:
        raise BadAsk("an ask names a seq or a last_by_subj")
    if "batch" in ask or "next_by_subj" in ask:
        ask["batch"] = min(ask.get("batch", 1), MAX_BATCH)
        ask["max_bytes"] = min(ask.get("max_bytes", MAX_BYTES), MAX_BYTES)
    elif "max_bytes" in ask:
        raise BadAsk("max_bytes goes with a batch")
    return ask


def _chain_subject(value: object) -> bool:
    if not isinstance(value, str):
        return False
    if value == "ledger.>":
        return True
    root, _, account = value.partition(".")
    return root == "ledger" and subjects.valid_name(account)


@dataclass
class Budget:
    """A token bucket: `rate` a second, up to `burst`."""

    rate: float = BUDGET_RATE
    burst: float = BUDGET_BURST
    tokens: float = BUDGET_BURST
    at: float = field(default_factory=time.monotonic)

    def take(self, now: float) -> bool:
        self.tokens = min(self.burst, self.tokens + (now - self.at) * self.rate)
        self.at = now
        if self.tokens < 1:
            return False
        self.tokens -= 1
        return True

    def spend(self, units: float) -> None:
        """Charge `units` more (what an answer cost): the budget may go below zero, and
        the member's next ask waits for it to refill."""
        self.tokens -= units

    def refilled_in(self) -> float:
        """Seconds until it holds a tenth of its burst again."""
        return max(0.0, (self.burst / 10 - self.tokens) / self.rate)


# What the reader reads of an answer's headers, and forwards: the server's own, which it
# writes after whatever headers the stored message carries (a member may store any on its
# own chain: a `Status`, names nats-py will not publish, 32 KiB of them).
ENTRY_HEADERS = ("Nats-Stream", "Nats-Sequence", "Nats-Subject", "Nats-Time-Stamp")
END_HEADERS = ("Status", "Description", "Nats-Num-Pending", "Nats-Last-Sequence")


class ServerHeaders(Client):
    """nats-py's client, reading of a message's headers only the last `Name:` line of
    each name the reader forwards (ENTRY_HEADERS, END_HEADERS): the server's, which come
    last. The stored ones are never parsed, however many (a byte search, not a Python
    loop over lines), so an entry made of headers costs the reader nothing more."""

    @staticmethod
    def _parse_header_lines(raw: bytes) -> dict[str, str]:
        block = b"\r\n" + raw
        out: dict[str, str] = {}
        for name in ENTRY_HEADERS + END_HEADERS:
            at = block.rfind(b"\r\n" + name.encode() + b":")
            if at >= 0:
                start = at + len(name) + 3
                end = block.find(b"\r\n", start)
                out[name] = block[start:end if end >= 0 else None].strip().decode(
                    "ascii", "replace")
        return out


def forwarded(headers: dict[str, str]) -> dict[str, str]:
    """What goes to the member of an answer's `headers`: an entry (it has the server's
    Nats-Sequence) with the entry's headers only, else the end with its status."""
    kept = ENTRY_HEADERS if "Nats-Sequence" in headers else END_HEADERS
    return {name: headers[name] for name in kept if name in headers}


class Books:
    """The reader's one client connection to BOOKS: direct gets, answered in line."""

    def __init__(self, nc: Client) -> None:
        self.nc = nc
        # Not under `_i.`: on a hub whose LEDGER is in FED, this login is FED's, where
        # every member may publish on `_i.*.>`.
        self._prefix = f"{federation.READER_INBOX}.{secrets.token_hex(8)}"
        self._reads: dict[str, asyncio.Queue[Msg]] = {}
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.nc.subscribe(f"{self._prefix}.*", cb=self._arrived)

    async def _arrived(self, msg: Msg) -> None:
        read = self._reads.get(msg.subject.rsplit(".", 1)[-1])
        if read is not None:
            read.put_nowait(msg)

    async def read(self, ask: dict[str, Any], reply: str, answer: Client) -> int:
        """Direct-get `ask` and forward each message of its answer to `reply` on `answer`,
        as it comes, until its end (or ANSWER_S); the bytes forwarded."""
        token = secrets.token_hex(16)
        sent = 0
        arrived: asyncio.Queue[Msg] = asyncio.Queue()
        self._reads[token] = arrived
        many = "batch" in ask
        try:
            await self.nc.publish(DIRECT_GET, json.dumps(ask).encode(),
                                  reply=f"{self._prefix}.{token}")
            async with asyncio.timeout(ANSWER_S):
                while True:
                    msg = await arrived.get()
                    headers = forwarded(msg.headers or {})
                    await answer.publish(reply, msg.data, headers=headers or None)
                    sent += len(msg.data)
                    if "Nats-Sequence" not in headers or not many:
                        return sent
        finally:
            del self._reads[token]


class Line:
    """One member's asks: a connection of the reader's own to FED, subscribed to
    `ledger_read.<member>` only, with the member's budget and queue."""

    def __init__(self, member: str, nc: Client, books: Books) -> None:
        self.member = member
        self.nc = nc
        self.books = books
        self.subject = subjects.ledger_read(member)
        self.inbox = f"{subjects.inbox_prefix(member)}."
        self.budget = Budget()
        self.waiting: asyncio.Queue[tuple[dict[str, Any], str]] = asyncio.Queue(WAITING)
        self._sub: Subscription | None = None
        self._resume: asyncio.TimerHandle | None = None
        self._tasks: set[asyncio.Task[None]] = set()  # an unsubscribe, a listen again
        self.paused = 0  # how many times

    async def work(self) -> None:
        async with asyncio.TaskGroup() as group:
            for _ in range(READS_IN_FLIGHT):
                group.create_task(self._work())

    async def listen(self) -> None:
        self._resume = None
        if self.nc.is_closed:
            return
        self._sub = await self.nc.subscribe(self.subject, queue=NAME, cb=self._asked,
                                            pending_msgs_limit=4 * WAITING,
                                            pending_bytes_limit=4 * WAITING * MAX_ASK_BYTES)

    async def _asked(self, msg: Msg) -> None:
        if self._sub is None:
            return  # paused: what was on its way when it was
        if not self.budget.take(time.monotonic()):
            self._pause("over its budget")
            return
        if not msg.reply.startswith(self.inbox) or not subjects.literal(msg.reply):
            return  # an answer goes to the asker's own inbox or nowhere (it still counts)
        try:
            ask = checked(msg.data)
        except BadAsk as exc:
            await self._refuse(msg.reply, "400", str(exc))
            return
        try:
            self.waiting.put_nowait((ask, msg.reply))
        except asyncio.QueueFull:
            self._pause(f"{WAITING} asks waiting")

    async def _refuse(self, reply: str, status: str, why: str) -> None:
        with contextlib.suppress(nats.errors.Error):
            await self.nc.publish(reply, b"", headers={"Status": status, "Description": why})

    def _pause(self, why: str) -> None:
        """Stop listening to this member until its budget has refilled. Nothing here
        awaits: it runs in the subscription's own task, which the unsubscribe cancels, so
        the unsubscribe goes in a task of its own, after the resume is set."""
        sub, self._sub = self._sub, None
        if sub is None:
            return
        self.paused += 1
        while not self.waiting.empty():
            self.waiting.get_nowait()
        wait = max(PAUSE_S, self.budget.refilled_in())
        log.warning("ledger_reads_paused", member=self.member, why=why, seconds=round(wait, 1),
                    times=self.paused)
        loop = asyncio.get_running_loop()
        self._resume = loop.call_later(wait, lambda: self._start(self.listen()))
        self._start(self._drop(sub))

    def _start(self, work: Coroutine[Any, Any, None]) -> None:
        task = asyncio.get_running_loop().create_task(work)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    @staticmethod
    async def _drop(sub: Subscription) -> None:
        with contextlib.suppress(nats.errors.Error):
            await sub.unsubscribe()

    async def _work(self) -> None:
        while True:
            ask, reply = await self.waiting.get()
            try:
                self.budget.spend(await self.books.read(ask, reply, self.nc) / ASK_BYTES)
            except TimeoutError:
                await self._refuse(reply, "408", "the stream did not answer in time")
            except (nats.errors.Error, ValueError) as exc:  # the read ends, said
                log.warning("ledger_read_failed", member=self.member, error=str(exc))
                await self._refuse(reply, "500", "the read failed on the hub")

    def stop(self) -> None:
        if self._resume is not None:
            self._resume.cancel()
        for task in self._tasks:
            task.cancel()


async def _connect(url: str, seed: Path, name: str, inbox: str = "",
                   client: type[Client] = Client) -> Client:
    said = [0.0]

    async def error(exc: Exception) -> None:  # a flood's drops, a lost hub: now and then
        now = time.monotonic()
        if now - said[0] >= 10.0:
            said[0] = now
            log.warning("nats_error", connection=name, error=f"{type(exc).__name__}: {exc}")

    options: dict[str, Any] = {"inbox_prefix": inbox} if inbox else {}
    nc = client()
    await nc.connect(url.split(","), nkeys_seed=str(seed), name=name, max_reconnect_attempts=-1,
                     reconnect_time_wait=1, error_cb=error, **options)
    return nc


async def serve(url: str, keys: Path, members: Sequence[str]) -> None:
    """Serve `members`' reads on the hub at `url` (a client URL) with the logins in `keys`
    (`python -m entityd.federation reader-user` makes them), until cancelled. Logs
    `books_reader_ready` once every member's line listens."""
    books_nc = await _connect(url, seed(keys, "books"), f"{NAME} books",
                              federation.READER_INBOX, ServerHeaders)
    lines: list[Line] = []
    try:
        books = Books(books_nc)
        await books.start()
        for member in members:
            nc = await _connect(url, seed(keys, "fed"), f"{NAME} {member}")
            lines.append(Line(member, nc, books))
            await lines[-1].listen()
            await nc.flush()
        log.info("books_reader_ready", members=list(members))
        async with asyncio.TaskGroup() as group:
            for line in lines:
                group.create_task(line.work())
    finally:
        for line in lines:
            line.stop()
            await line.nc.close()
        await books_nc.close()


def seed(keys: Path, account: str) -> Path:
    """The seed of the reader's login to `account` ("fed" or "books")."""
    return federation.seed_path(keys / account)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m entityd.books_reader",
        description="Serve the federation members' ledger reads on the hub, each member on "
        "a line of its own with a budget (deploy/FEDERATION.md).")
    parser.add_argument("--hub", default="nats://127.0.0.1:4222", help="the hub's client URL")
    parser.add_argument("--keys", required=True, type=Path,
                        help="its logins (`python -m entityd.federation reader-user`)")
    parser.add_argument("--member", action="append", default=[], metavar="NAME",
                        help="a member whose reads it serves; repeat for each")
    args = parser.parse_args(argv)
    logs.configure()
    try:
        for member in args.member:
            if not subjects.valid_name(member):
                raise ConfigError("--member", f"{member!r} is not an entity's name")
        if not args.member:
            raise ConfigError("--member", "name every member of the federation")
        for account in ("fed", "books"):
            federation.read_seed(seed(args.keys, account))
    except EntitydError as exc:
        print(f"books_reader: {exc}", file=sys.stderr)
        return 2
    loop = asyncio.new_event_loop()
    task = loop.create_task(serve(args.hub, args.keys, args.member))
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, task.cancel)
    try:
        loop.run_until_complete(task)
    except asyncio.CancelledError:
        return 0
    except (OSError, nats.errors.Error) as exc:
        log.error("books_reader_failed", error=f"{type(exc).__name__}: {exc}")
        return 1
    finally:
        loop.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
