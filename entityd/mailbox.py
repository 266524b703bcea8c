"""An actor's mailbox: the NATS subscription feeding a bounded queue, and verification.

A message goes through three stages, in arrival order: received (the subscription
callback only enqueues, so a slow handler never blocks NATS delivery), signature
verified (`protocol.verify_signature`, in batches on the runtime's worker threads:
PyNaCl releases the GIL, so batches verify on two cores beside the event loop), and
body checked (`protocol.check_body`, on the loop, because it consults the replay cache
and must see messages in the order they came). Only then does the actor get it, and
only if it accepts the message's kind (the supervisor refuses others before `handle`).

The bound is on everything received and not yet handed to the actor, whatever its
stage. When the mailbox is full, the callback waits up to BURST_WAIT_S for the actor to
take a message before refusing (reason `overloaded`): a burst larger than the mailbox is
absorbed while the actor keeps up, and a stuck actor is refused promptly. nats-py runs a
subscription's callbacks one at a time, so while one waits, later messages for this actor
(and only this actor) wait in nats-py's own pending queue, which is bounded too (64 MiB,
64 Ki messages); past that nats-py drops them and reports a SlowConsumerError,
which the bus logs. So a burst is delivered or refused, and only a flood that outlasts
the wait and overflows nats-py's queue is dropped; memory stays bounded either way.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from protocol import Envelope, Overloaded, ProtocolError, Verified, subjects

from .bus import unsubscribe
from .transport import Transport

# With fewer waiting than this and no batch on a thread, verify on the loop: a lone
# message (a request one at a time) is answered sooner without the hop to a thread.
INLINE_BELOW = 4
BATCH_MAX = 64
# Batches handed to the runtime's verify pool (two threads) at once per mailbox: two per
# thread, so that a thread done with one starts the next at once instead of idling until
# the busy loop gets round to handing it more (measured: one-way +15-25 % over one each).
PIPELINE_DEPTH = 4
# How long a full mailbox holds the subscription before refusing: a burst drains in
# milliseconds while the actor keeps up; longer means the actor is stuck on a message.
BURST_WAIT_S = 0.5
# nats-py's own queue for the subscription, in front of the callback. It holds what
# arrives while the callback waits for room, and every message of a socket read at once
# (nats-py queues them before the callback runs), so it must be much deeper than the
# mailbox; it is bounded mainly in bytes (nats-py's defaults: 512 Ki messages, 128 MiB).
# Past it nats-py drops messages and reports a SlowConsumerError.
PENDING_MSGS_LIMIT = 64 * 1024
PENDING_BYTES_LIMIT = 64 * 1024 * 1024

Rejecter = Callable[[Msg, str, ProtocolError], Coroutine[Any, Any, None]]
Checked = tuple[Msg, Envelope | ProtocolError]


class Stop:
    """The message that stops a worker: everything queued before it is handled first."""


STOP = Stop()


@dataclass
class _Batch:
    """Messages whose signatures are being verified together, in arrival order."""

    msgs: list[Msg]
    future: asyncio.Future[list[Verified | ProtocolError]]


class Mailbox:
    def __init__(
        self, transport: Transport, actor: str, size: int, executor: Executor, reject: Rejecter
    ) -> None:
        self.transport = transport
        self.actor = actor
        self.address = f"{transport.entity}/{actor}"
        self.subject = subjects.local(transport.entity, actor, "*")
        self.size = size
        self.replay = transport.new_replay_guard()
        self._executor = executor
        self._reject = reject
        self._sub: Subscription | None = None
        # The three stages, each in arrival order; _count is the sum of their lengths.
        self._arrived: deque[Msg] = deque()
        self._verifying: deque[_Batch] = deque()
        self._ready: deque[Checked] = deque()
        self._count = 0
        self._changed = asyncio.Event()  # wakes next(): an arrival, a batch done, stop()
        self._room: asyncio.Future[None] | None = None  # a full mailbox's waiting callback
        self._overloaded = False  # waited in vain: refuse at once until the actor takes one
        self._pump_soon = False
        self._stopping = False

    async def open(self) -> None:
        self._sub = await self.transport.nc.subscribe(
            self.subject,
            cb=self._deliver,
            pending_msgs_limit=PENDING_MSGS_LIMIT,
            pending_bytes_limit=PENDING_BYTES_LIMIT,
        )

    async def close(self) -> None:
        """Stop taking new messages; what is queued stays for the worker."""
        sub, self._sub = self._sub, None
        await unsubscribe(sub)

    def pending(self) -> int:
        """Messages received and not yet handed to the actor."""
        return self._count

    async def stop(self) -> None:
        """Deliver STOP once everything received has been handed over (the runtime
        closes the subscription first, so nothing new comes after it)."""
        self._stopping = True
        self._changed.set()

    # ---- receiving -------------------------------------------------------------------

    async def _deliver(self, msg: Msg) -> None:
        if self._count >= self.size and not await self._wait_for_room():
            await self._reject(
                msg, self.address, Overloaded(f"{self.actor} has {self._count} queued")
            )
            return
        self._count += 1
        self._arrived.append(msg)
        self._changed.set()
        if self._pump_soon or not (self._verifying or len(self._arrived) >= INLINE_BELOW):
            return  # a pump is due, or next() will verify these few on the loop
        # After the rest of this burst of callbacks, so that it goes out as one batch.
        self._pump_soon = True
        asyncio.get_running_loop().call_soon(self._pump)

    async def _wait_for_room(self) -> bool:
        """Wait up to BURST_WAIT_S for the actor to take a message; False if it did not."""
        if self._overloaded:
            return False
        try:
            async with asyncio.timeout(BURST_WAIT_S):
                while self._count >= self.size:
                    self._room = asyncio.get_running_loop().create_future()
                    await self._room
        except TimeoutError:
            self._overloaded = True
            return False
        finally:
            self._room = None
        return True

    def _handed_over(self) -> None:
        self._count -= 1
        self._overloaded = False
        if self._room is not None and not self._room.done():
            self._room.set_result(None)

    # ---- verifying -------------------------------------------------------------------

    def _pump(self) -> None:
        """Hand waiting messages to the pool, split evenly over the free batch slots."""
        self._pump_soon = False
        free = PIPELINE_DEPTH - sum(not batch.future.done() for batch in self._verifying)
        waiting = len(self._arrived)
        if free <= 0 or not waiting:
            return
        if not self._verifying and waiting < INLINE_BELOW:
            return  # next() verifies these on the loop
        per_batch = min(BATCH_MAX, -(-waiting // free))
        while free and self._arrived:
            self._start(self._take(per_batch))
            free -= 1

    def _take(self, n: int) -> list[Msg]:
        arrived = self._arrived
        return [arrived.popleft() for _ in range(min(n, len(arrived)))]

    def _start(self, msgs: list[Msg]) -> None:
        loop = asyncio.get_running_loop()
        try:
            future = loop.run_in_executor(self._executor, self._verify, msgs)
        except RuntimeError:  # the pool is shut down: verify here, keeping the order
            future = loop.create_future()
            future.set_result(self._verify(msgs))
        future.add_done_callback(self._verified)
        self._verifying.append(_Batch(msgs, future))

    def _verified(self, future: asyncio.Future[list[Verified | ProtocolError]]) -> None:
        # Refill the thread at once: a finished batch may wait for next() while the
        # actor is busy, but verification of what came after it need not.
        self._changed.set()
        self._pump()

    def _verify(self, msgs: list[Msg]) -> list[Verified | ProtocolError]:
        """Steps 1-6 of PROTOCOL.md §6 for each message; runs on a worker thread."""
        results: list[Verified | ProtocolError] = []
        for msg in msgs:
            try:
                results.append(self.transport.verify_signature(msg.data, subject=msg.subject))
            except ProtocolError as exc:
                results.append(exc)
        return results

    def _results(self, batch: _Batch) -> list[Verified | ProtocolError]:
        future = batch.future
        if future.cancelled() or future.exception() is not None:
            return self._verify(batch.msgs)  # the pool was shut down under it
        return future.result()

    def _check(self, msgs: list[Msg], results: list[Verified | ProtocolError]) -> None:
        """Steps 7-14 (replay included) on the loop, in arrival order."""
        for msg, result in zip(msgs, results, strict=True):
            if isinstance(result, Verified):
                try:
                    env = self.transport.check_body(
                        result, subject=msg.subject, local=self.address, replay=self.replay
                    )
                except ProtocolError as exc:
                    self._ready.append((msg, exc))
                else:
                    self._ready.append((msg, env))
            else:
                self._ready.append((msg, result))

    # ---- handing over ----------------------------------------------------------------

    async def next(self) -> tuple[Msg, Envelope] | Stop:
        """The next verified message, or STOP; rejected messages are reported and skipped."""
        while True:
            if self._ready:
                msg, result = self._ready.popleft()
                self._handed_over()
                if isinstance(result, ProtocolError):
                    await self._reject(msg, self.address, result)
                    continue
                return msg, result
            if self._verifying:
                head = self._verifying[0]
                if head.future.done():
                    self._verifying.popleft()
                    self._check(head.msgs, self._results(head))
                    continue
            elif self._arrived:
                if len(self._arrived) < INLINE_BELOW:
                    msgs = self._take(INLINE_BELOW)
                    self._check(msgs, self._verify(msgs))
                else:
                    self._pump()
                continue
            elif self._stopping:
                return STOP
            self._changed.clear()
            await self._changed.wait()
