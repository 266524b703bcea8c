"""Replies to the requests an entity sends across the federation (fed.req asks, and the
PubAcks of commands put into a peer's INBOX).

Every member may publish on `_i.<entity>.>` (that is how a peer answers), so a reply
subject is a capability: each request gets its own, `_i.<entity>.<session>.<token>` with
128 random bits, never reused, and only a message that the request's own check accepts
answers it. Junk, a forgery or a stray reply on it is counted and dropped, and the
request keeps waiting; nats-py's shared request inbox would have let the first message
end it, and its tokens follow a guessable sequence.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from typing import Any, TypeVar

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

from entityd import FederationAccess, unsubscribe
from protocol import ProtocolError, StrayReply, subjects

T = TypeVar("T")
NO_RESPONDERS = "503"


class RefusedReplies(nats.errors.TimeoutError):
    """No reply was taken in time, but some came on the request's own subject and were
    refused: `refused` is the last one's reason (only the peer and the server know that
    subject, so it says why the peer's answer did not count, e.g. a clock far off)."""

    def __init__(self, refused: ProtocolError) -> None:
        super().__init__()
        self.refused = refused

    def __str__(self) -> str:
        return f"nats: timeout; a reply came but was refused: {self.refused}"


class Replies:
    def __init__(self, bus: FederationAccess, entity: str, rejected: Callable[[str], None]) -> None:
        self.bus = bus
        self.prefix = f"{subjects.inbox_prefix(entity)}.{secrets.token_hex(8)}"
        self._rejected = rejected
        self._pending: dict[str, tuple[asyncio.Future[Any], Callable[[Msg], Any]]] = {}
        self._refused: dict[str, ProtocolError] = {}  # token -> its last reply refused
        self._sub: Subscription | None = None

    async def start(self) -> None:
        self._sub = await self.bus.subscribe(f"{self.prefix}.*", cb=self._on_reply)

    async def stop(self) -> None:
        sub, self._sub = self._sub, None
        await unsubscribe(sub)
        for future, _ in self._pending.values():
            future.cancel()

    async def request(self, subject: str, data: bytes, timeout: float,
                      accept: Callable[[Msg], T], headers: dict[str, str] | None = None) -> T:
        """Publish with a fresh reply subject and wait for the first reply that `accept`
        takes (it raises ProtocolError or StrayReply for one it does not).

        nats TimeoutError when none came in time, NoRespondersError when the server says
        nobody listens on `subject`."""
        if self._sub is None:
            raise nats.errors.ConnectionClosedError
        token = secrets.token_hex(16)
        future: asyncio.Future[T] = asyncio.get_running_loop().create_future()
        self._pending[token] = (future, accept)
        try:
            await self.bus.publish(subject, data, reply=f"{self.prefix}.{token}",
                                  headers=headers)
            try:
                async with asyncio.timeout(timeout):
                    return await future
            except TimeoutError:
                refused = self._refused.get(token)
                raise (RefusedReplies(refused) if refused else nats.errors.TimeoutError()
                       ) from None
        finally:
            self._pending.pop(token, None)
            self._refused.pop(token, None)

    async def _on_reply(self, msg: Msg) -> None:
        token = msg.subject.rsplit(".", 1)[-1]
        entry = self._pending.get(token)
        if entry is None:
            self._rejected(StrayReply.reason)  # late, or never ours
            return
        future, accept = entry
        if future.done():
            return
        if msg.headers and msg.headers.get("Status") == NO_RESPONDERS and not msg.data:
            # Only the server can know this token (128 random bits, sent to it alone).
            future.set_exception(nats.errors.NoRespondersError())
            return
        try:
            value = accept(msg)
        except ProtocolError as exc:  # StrayReply among them
            self._rejected(exc.reason)
            if not isinstance(exc, StrayReply):
                self._refused[token] = exc
            return
        except (ValueError, KeyError, TypeError, RecursionError):  # unreadable: not ours
            self._rejected(StrayReply.reason)
            return
        future.set_result(value)
