"""An actor's mailbox: the NATS subscription feeding a bounded queue, and verification.

The subscription callback only enqueues, so a slow handler never blocks NATS delivery;
a full queue refuses the message (reason `overloaded`) instead of growing without bound.
Signatures of queued messages are verified in batches on a worker thread (PyNaCl
releases the GIL), so verification runs beside the event loop instead of on it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Coroutine
from concurrent.futures import Executor
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from protocol import Envelope, ProtocolError, subjects

from .transport import Transport

INLINE_BELOW = 4
BATCH_MAX = 64

Rejecter = Callable[[Msg, str, ProtocolError], Coroutine[Any, Any, None]]


class Overloaded(ProtocolError):
    reason = "overloaded"


class Stop:
    """The message that stops a worker: everything queued before it is handled first."""


STOP = Stop()


class Mailbox:
    def __init__(
        self, transport: Transport, actor: str, size: int, executor: Executor, reject: Rejecter
    ) -> None:
        self.transport = transport
        self.actor = actor
        self.address = f"{transport.entity}/{actor}"
        self.subject = subjects.local(transport.entity, actor, "*")
        self.queue: asyncio.Queue[Msg | Stop] = asyncio.Queue(maxsize=size)
        self.replay = transport.new_replay_guard()
        self._executor = executor
        self._reject = reject
        self._sub: Subscription | None = None
        self._ready: deque[tuple[Msg, Envelope]] = deque()

    async def open(self) -> None:
        self._sub = await self.transport.nc.subscribe(
            self.subject, cb=self._deliver, pending_msgs_limit=-1, pending_bytes_limit=-1
        )

    async def close(self) -> None:
        """Stop taking new messages; what is queued stays for the worker."""
        sub, self._sub = self._sub, None
        if sub is not None:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may already be gone
                pass

    async def _deliver(self, msg: Msg) -> None:
        try:
            self.queue.put_nowait(msg)
        except asyncio.QueueFull:
            await self._reject(
                msg, self.address, Overloaded(f"{self.actor} has {self.queue.qsize()} queued")
            )

    def pending(self) -> int:
        """Messages received and not yet handed to the actor."""
        return self.queue.qsize() + len(self._ready)

    async def stop(self) -> None:
        await self.queue.put(STOP)

    async def next(self) -> tuple[Msg, Envelope] | Stop:
        """The next verified message, or STOP; rejected messages are reported and skipped."""
        while not self._ready:
            first = await self.queue.get()
            if isinstance(first, Stop):
                return first
            batch = [first]
            while len(batch) < BATCH_MAX and not self.queue.empty():
                item = self.queue.get_nowait()
                if isinstance(item, Stop):
                    self.queue.put_nowait(item)  # keep order: STOP after this batch
                    break
                batch.append(item)
            if len(batch) < INLINE_BELOW:
                results = self._verify(batch)
            else:
                loop = asyncio.get_running_loop()
                results = await loop.run_in_executor(self._executor, self._verify, batch)
            for msg, result in zip(batch, results, strict=True):
                if isinstance(result, ProtocolError):
                    await self._reject(msg, self.address, result)
                else:
                    self._ready.append((msg, result))
        return self._ready.popleft()

    def _verify(self, batch: list[Msg]) -> list[Envelope | ProtocolError]:
        results: list[Envelope | ProtocolError] = []
        for msg in batch:
            try:
                results.append(
                    self.transport.open(
                        msg.data, subject=msg.subject, local=self.address, replay=self.replay
                    )
                )
            except ProtocolError as exc:
                results.append(exc)
        return results
