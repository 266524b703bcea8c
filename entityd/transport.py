"""Signed messaging over one NATS connection: seal and send, ask and verify the reply.

Both the daemon's actors and entityctl speak through a Transport, so a request is
sealed, sent and its reply verified the same way wherever it comes from.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import msgpack
import nats.errors
from nacl.signing import SigningKey
from nats.aio.client import NO_RESPONDERS_STATUS, Client
from nats.aio.msg import Msg
from nats.js.api import Header

import protocol
from protocol import Envelope, Keyring, ProtocolError, ReplayGuard, Verified, subjects
from protocol.envelope import _unpack  # §4's decoding of a body, for §9.1

from .errors import ActorDeadError, AskTimeout, RemoteError, Unsendable
from .logs import get

log = get("entityd.transport")

REPLY_PREFIXES = ("_i.", "_l.", "_INBOX.")


def entity_of(address: str) -> str:
    return address.split("/", 1)[0]


class Transport:
    def __init__(
        self,
        nc: Client,
        *,
        entity: str,
        key: SigningKey,
        keyring: Keyring,
        replay_window_ms: int = protocol.replay.DEFAULT_WINDOW_MS,
        replay_capacity: int = protocol.replay.DEFAULT_CAPACITY,
        replay_future_ms: int = protocol.replay.DEFAULT_FUTURE_MS,
        max_bytes: int = protocol.MAX_WIRE_BYTES,
    ) -> None:
        self.nc = nc
        self.entity = entity
        self.key = key
        self.keyring = keyring
        self.max_bytes = max_bytes
        self.replay_window_ms = replay_window_ms
        self.replay_capacity = replay_capacity
        self.replay_future_ms = min(replay_future_ms, replay_window_ms)
        self._reply_guard = self.new_replay_guard()
        self.closing = False
        # Envelopes refused on this connection, by reason code: the runtime's mailboxes
        # and the peer actor's federation subjects count here; the status reports it.
        self.rejected: Counter[str] = Counter()
        # The replies to this transport's asks: one wildcard subscription on an inbox of
        # its own (made on the first ask), each ask waiting under its request's id.
        self._replies: dict[str, asyncio.Future[Msg]] = {}
        self._reply_prefix = ""
        self._reply_lock = asyncio.Lock()

    def new_replay_guard(self) -> ReplayGuard:
        """A replay cache: ids per sender key, each sender's bounded by the capacity."""
        return ReplayGuard(self.replay_window_ms, self.replay_capacity, self.replay_future_ms)

    def subject_for(self, dst: str, typ: str) -> str:
        entity, _, actor = dst.partition("/")
        if entity != self.entity:
            raise ValueError(f"{dst} is not an actor of {self.entity}; federation comes later")
        return subjects.local(entity, actor, typ)

    def seal(
        self, *, src: str, dst: str, subj: str, message: object, corr: bytes | None = None
    ) -> tuple[bytes, bytes]:
        """Unsendable when the message holds what the wire cannot carry: the sender's
        error to handle (a tool's observation, an error reply), never a crash."""
        try:
            return protocol.seal(self.key, src=src, dst=dst, subj=subj, message=message,
                                 corr=corr)
        except protocol.BadPayload as exc:
            raise Unsendable(f"nothing sent to {dst}: {exc.detail}") from None

    def open(self, data: bytes, *, subject: str, local: str, replay: ReplayGuard) -> Envelope:
        return protocol.open(
            data,
            subject=subject,
            local=local,
            keyring=self.keyring,
            replay=replay,
            max_bytes=self.max_bytes,
        )

    def verify_signature(self, data: bytes, *, subject: str) -> Verified:
        """The first half of `open` (steps 1-6): thread-safe, mostly Ed25519."""
        return protocol.verify_signature(
            data, subject=subject, keyring=self.keyring, max_bytes=self.max_bytes
        )

    def check_body(
        self, verified: Verified, *, subject: str, local: str, replay: ReplayGuard
    ) -> Envelope:
        """The second half of `open` (steps 7-14): on the loop, in arrival order."""
        return protocol.check_body(
            verified, subject=subject, local=local, replay=replay, max_bytes=self.max_bytes
        )

    async def tell(self, src: str, dst: str, message: object) -> None:
        subj = self.subject_for(dst, protocol.kinds.kind_name(message))
        wire, _ = self.seal(src=src, dst=dst, subj=subj, message=message)
        await self._publish(subj, wire)

    async def ask(self, src: str, dst: str, message: object, timeout: float) -> Envelope:
        """Send a request and return the verified reply; RemoteError if it is an `error`."""
        typ = protocol.kinds.kind_name(message)
        subj = self.subject_for(dst, typ)
        wire, msg_id = self.seal(src=src, dst=dst, subj=subj, message=message)
        if self.closing:
            raise ActorDeadError(f"cannot ask {dst}: shutting down")
        try:
            reply = await self._request(subj, wire, msg_id.hex(), timeout)
        except TimeoutError:
            raise AskTimeout(dst, typ, timeout) from None
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            raise ActorDeadError(f"cannot ask {dst}: the connection is closed") from None
        if reply.headers and reply.headers.get(Header.STATUS) == NO_RESPONDERS_STATUS:
            raise ActorDeadError(f"{dst} is not running (no responders on {subj})")
        try:
            env = self.open(reply.data, subject=reply.subject, local=src,
                            replay=self._reply_guard)
        except ProtocolError as exc:  # the asker's failure to read it, not a bug of ours
            raise RemoteError(dst, exc.reason, f"its reply to {typ} was refused: "
                              f"{exc.detail}") from None
        if env.corr != msg_id or env.src != dst:
            raise protocol.WrongSender(
                f"reply from {env.src} for {env.corr!r} does not answer {dst}'s {msg_id.hex()}",
                subject=reply.subject,
            )
        if isinstance(env.message, protocol.Error):
            raise RemoteError(env.src, env.message.code, env.message.message)
        return env

    async def _request(self, subject: str, wire: bytes, token: str, timeout: float) -> Msg:
        """Publish `wire` with a reply inbox ending in `token` and wait for the one reply;
        TimeoutError after `timeout` seconds.

        What nats-py's request() does, less its per-request work that a Transport need
        not pay (measured at 256 in flight: 10-16 % of the event loop's time per ask):
        `asyncio.wait_for`, a second random token from the OS and the future's done
        callback. The request's id is random already, so it names the reply inbox."""
        prefix = self._reply_prefix or await self._subscribe_replies()
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[Msg] = loop.create_future()
        self._replies[token] = waiter
        timer = loop.call_later(timeout, _time_out, waiter)
        try:
            await self.nc.publish(subject, wire, reply=prefix + token)
            return await waiter
        finally:
            timer.cancel()
            del self._replies[token]

    async def _subscribe_replies(self) -> str:
        async with self._reply_lock:
            if not self._reply_prefix:
                prefix = self.nc.new_inbox() + "."
                await self.nc.subscribe(prefix + "*", cb=self._on_reply)
                self._reply_prefix = prefix
        return self._reply_prefix

    async def _on_reply(self, msg: Msg) -> None:
        waiter = self._replies.get(msg.subject[len(self._reply_prefix):])
        if waiter is not None and not waiter.done():
            waiter.set_result(msg)

    async def reply(self, request: Envelope, reply_to: str, message: object) -> None:
        """Answer `request`; an answer no receiver could open (larger than an envelope may
        be, or holding what msgpack cannot carry) goes as an `error` saying so instead."""
        try:
            wire, _ = self.seal(
                src=request.dst, dst=request.src, subj=reply_to, message=message,
                corr=request.id)
        except Unsendable as exc:
            wire, _ = self.seal(src=request.dst, dst=request.src, subj=reply_to, corr=request.id,
                                message=protocol.Error(protocol.reasons.BAD_PAYLOAD, (
                                    f"the answer to {request.typ} could not be sent: {exc}")))
        if len(wire) > self.max_bytes:
            wire, _ = self.seal(src=request.dst, dst=request.src, subj=reply_to, corr=request.id,
                                message=protocol.Error(protocol.reasons.TOO_LARGE, (
                                    f"the answer to {request.typ} would be {len(wire)} bytes, "
                                    f"over the {self.max_bytes} an envelope may be "
                                    "(protocol.max_message_bytes)")))
        await self._publish(reply_to, wire)

    async def refuse(self, msg: Msg, responder: str, error: ProtocolError) -> None:
        """Tell the sender of a rejected request why, when we can address it.

        Only to reply inboxes, and only when the unverified body names a valid sender,
        so a forged message cannot make us publish anywhere else.
        """
        if not msg.reply or not msg.reply.startswith(REPLY_PREFIXES):
            return
        claimed = _claimed_header(msg.data, self.max_bytes)
        if claimed is None:
            return
        src, msg_id = claimed
        wire, _ = self.seal(
            src=responder,
            dst=src,
            subj=msg.reply,
            message=protocol.Error(error.reason, error.detail),
            corr=msg_id,
        )
        await self._publish(msg.reply, wire)

    async def publish_event(self, actor: str, typ: str, message: object) -> None:
        """An event; one holding what the wire cannot carry is logged and not sent (what
        it reports happened all the same: the emitter goes on)."""
        subj = subjects.event(self.entity, actor, typ)
        try:
            wire, _ = self.seal(
                src=f"{self.entity}/{actor}", dst=protocol.BROADCAST, subj=subj, message=message
            )
        except Unsendable as exc:
            log.warning("event_not_sent", subject=subj, error=str(exc))
            return
        await self._publish(subj, wire)

    async def _publish(self, subject: str, wire: bytes) -> None:
        try:
            await self.nc.publish(subject, wire)
        except (nats.errors.ConnectionClosedError, nats.errors.ConnectionDrainingError):
            raise ActorDeadError(f"cannot publish on {subject}: the connection is closed") from None


def _time_out(waiter: asyncio.Future[Msg]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _claimed_header(data: bytes, max_bytes: int) -> tuple[str, bytes] | None:
    """The src and id a (possibly forged) envelope claims, or None.

    "Decodes" as PROTOCOL.md §9.1 says: the wire as step 2 decodes it, the body as §4
    does (one value, no trailing bytes, every map key a str and none repeated), so a
    body `open` would refuse at step 7 for its keys is not answered either.
    """
    if len(data) > max_bytes:
        return None
    try:
        outer = msgpack.unpackb(data, raw=False, max_bin_len=max_bytes)
        body: Any = _unpack(outer[2], max_bytes=max_bytes)
        src, msg_id = body["src"], body["id"]
    except Exception:
        return None
    if not (isinstance(src, str) and isinstance(msg_id, bytes) and len(msg_id) == 16):
        return None
    entity, sep, actor = src.partition("/")
    if not (sep and subjects.valid_name(entity) and subjects.valid_name(actor)):
        return None
    return src, msg_id


async def wait_closed(nc: Client, timeout: float) -> None:
    """Flush and close a connection, bounded by `timeout`."""
    if nc.is_closed:
        return
    try:
        async with asyncio.timeout(timeout):
            await nc.drain()
    except (TimeoutError, nats.errors.Error):
        pass
    if not nc.is_closed:
        await nc.close()
