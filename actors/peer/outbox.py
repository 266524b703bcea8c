"""Durable commands on their way out: kept in the store until the peer's INBOX has them.

A command is written to the outbox first, then published; only a JetStream PubAck
from the peer's INBOX marks it landed. While the peer or the hub is down every attempt
fails and the command waits; it is retried with backoff, sealed afresh each time under
the same envelope id, so the INBOX (Nats-Msg-Id) and the receiver (its store of handled
ids) see one command however often it was sent. So does a command the peer's INBOX
refuses because it holds all it keeps from us (its peers.inbox_per_sender) or all it
keeps (peers.inbox_max_bytes): the error kept says so, and it lands once the peer has
handled some.
"""

from __future__ import annotations

import asyncio

import nats.errors
import nats.js.errors
from structlog.typing import FilteringBoundLogger

from protocol import ProtocolError

from .link import FedLink, UnknownPeer, describe_failure, outbox_row
from .store import UNDELIVERED_MAX, OutboxRow, PeerStore

PUT_TIMEOUT_S = 2.0
BACKOFF_INITIAL_S = 0.5
BACKOFF_MAX_S = 5.0
FAILURES = (nats.errors.Error, TimeoutError, UnknownPeer, ProtocolError, OSError)


class Outbox:
    def __init__(self, link: FedLink, store: PeerStore, log: FilteringBoundLogger) -> None:
        self.link = link
        self.store = store
        self.log = log
        self._kick = asyncio.Event()
        self._errors: dict[bytes, str] = {}
        # What a failed row holds up until the next round: its peer (unreachable, or
        # its INBOX full), the peer's INBOX for that op, or only itself (too large).
        self._holds: dict[bytes, tuple[str, ...]] = {}

    async def send(self, peer: str, op: str, message: object, corr: bytes | None = None,
                   *, now: bool = False) -> OutboxRow:
        """Keep `message` for `peer` and have it sent; returns at once (with `now`, the
        caller makes the first attempt itself with try_now)."""
        row = outbox_row(peer, op, message, corr)
        dropped = await self.store.enqueue(row)
        if dropped:
            self.log.warning("peer_outbox_full", peer=peer, dropped=dropped,
                             kept=UNDELIVERED_MAX,
                             effect="the oldest messages it has not taken are dropped")
        if not now:
            self._kick.set()
        return row

    async def try_now(self, row: OutboxRow) -> bool:
        """One attempt now; True when it landed (else the loop goes on trying)."""
        try:
            await self.link.put(row, PUT_TIMEOUT_S)
        except FAILURES as exc:
            self._errors[row.id], self._holds[row.id] = _failure(row, exc)
            await self.store.failed_attempt(row.id, self._errors[row.id])
            self._kick.set()  # the loop retries it from now on
            return False
        self._errors.pop(row.id, None)
        self._holds.pop(row.id, None)
        await self.store.landed(row.id)
        return True

    def last_error(self, msg_id: bytes) -> str:
        return self._errors.get(msg_id, "not tried yet")

    async def has_landed(self, msg_id: bytes) -> bool:
        row = await self.store.outbox_row(msg_id)
        return row is not None and row.landed is not None

    async def run(self) -> None:
        delay = BACKOFF_INITIAL_S
        while True:
            failed: set[tuple[str, ...]] = set()
            for row in await self.store.pending():
                if (row.peer,) in failed or (row.peer, row.op) in failed:
                    continue  # one failure per peer and round: the others wait for it
                if not await self.try_now(row):
                    failed.add(self._holds.get(row.id, (row.peer,)))
                    self._log_failure(row)
            delay = min(BACKOFF_MAX_S, delay * 2) if failed else BACKOFF_INITIAL_S
            self._kick.clear()
            try:
                async with asyncio.timeout(delay if failed else None):
                    await self._kick.wait()
            except TimeoutError:
                pass

    def _log_failure(self, row: OutboxRow) -> None:
        if row.attempts in (0, 1) or row.attempts % 20 == 0:
            self.log.warning("outbox_waiting", peer=row.peer, op=row.op, id=row.id.hex(),
                             attempts=row.attempts + 1, error=self._errors.get(row.id, ""))


def _failure(row: OutboxRow, exc: BaseException) -> tuple[str, tuple[str, ...]]:
    """What the sender's operator is told about a failed attempt, and what it holds up."""
    if isinstance(exc, nats.js.errors.APIError):
        said = exc.description or ""
        if "per subject" in said:  # maximum messages per subject exceeded
            return (f"{row.peer}'s INBOX refused it as full for us: it already holds as many "
                    f"{row.op} commands from us as it keeps waiting (its "
                    f"peers.inbox_per_sender); kept here and sent again until {row.peer} "
                    "has handled some", (row.peer, row.op))
        if "maximum bytes" in said or "maximum messages" in said:
            return (f"{row.peer}'s INBOX refused it as full: it holds as much as it keeps "
                    f"(its peers.inbox_max_bytes); kept here and sent again until "
                    f"{row.peer} has handled some", (row.peer,))
        if "message size" in said:
            return (f"{row.peer}'s INBOX refused it as too large ({said}); kept here and "
                    "sent again", ("row", row.id.hex()))
    if isinstance(exc, nats.errors.MaxPayloadError):
        return (f"too large to publish ({exc}); kept here and sent again",
                ("row", row.id.hex()))
    return describe_failure(exc), (row.peer,)
