"""The federation handle: what the peer actor may do on the shared bus, and no more.

The peer actor speaks for the entity on the federation's subjects (fed.*, its reply
inboxes, its JetStream INBOX), so it needs more than ask, tell and emit, but not the
connection itself nor the entity's signing key. This handle signs and encrypts with the
key without handing it out, and publishes and subscribes on any subject but the
entity's own local ones: never on an actor's mailbox (loc.*), never a publish to the
connection's local reply inboxes (_l.*), and a subscription there only to one inbox of
its own (new_inbox), not a wildcard over the others' replies. The local actors are
reached through ask and tell like every actor reaches them, so a bug in federation code
cannot speak as, or listen in on, the entity's own actors.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.client import JetStreamContext

import protocol
from protocol import Envelope, ProtocolError, ReplayGuard, Sealer

from .transport import Transport

_B64URL = re.compile(rb"[A-Za-z0-9_-]+")
LOCAL_PREFIXES = ("loc.", "_l.")  # the actors' mailboxes, the connection's reply inboxes


class FederationAccess:
    def __init__(self, transport: Transport) -> None:
        self._transport = transport
        self._nc = transport.nc
        self._sealer = Sealer(transport.key)
        self.entity = transport.entity
        self.max_bytes = transport.max_bytes
        self.public_key = bytes(transport.key.verify_key)

    # ---- keys, without handing them out -------------------------------------------

    def sign(self, *, src: str, dst: str, subj: str, message: object,
             corr: bytes | None = None, msg_id: bytes | None = None,
             ts: int | None = None) -> tuple[bytes, bytes]:
        """A plain signed envelope (PROTOCOL.md §5): the wire bytes and the id."""
        return protocol.seal(self._transport.key, src=src, dst=dst, subj=subj,
                             message=message, corr=corr, msg_id=msg_id, ts=ts)

    def sign_agent_card(self, signing_input: bytes) -> bytes:
        """The raw Ed25519 signature of an A2A agent card's JWS signing input
        (actors/a2a/card.py): `<header>.<payload>`, both base64url, the header a JSON
        object. Such bytes never begin with an envelope's signing domain, so this cannot
        be made to sign an envelope; the peer actor builds the card it passes here."""
        protected, dot, payload = signing_input.partition(b".")
        if not (dot and protected.startswith(b"eyJ") and _B64URL.fullmatch(protected)
                and _B64URL.fullmatch(payload)):
            raise ValueError("not a JWS signing input")
        return bytes(self._transport.key.sign(signing_input).signature)

    def encrypt(self, recipient: bytes, *, src: str, dst: str, subj: str, message: object,
                corr: bytes | None = None, msg_id: bytes | None = None
                ) -> tuple[bytes, bytes]:
        """A signed envelope whose payload only `recipient` (an Ed25519 key) can read."""
        return self._sealer.seal(recipient, src=src, dst=dst, subj=subj, message=message,
                                 corr=corr, msg_id=msg_id)

    def decrypt(self, envelope: Envelope) -> Any:
        """The record of a verified envelope, decrypted when it was encrypted to us."""
        return self._sealer.decrypt(envelope, self.max_bytes)

    def new_replay_guard(self) -> ReplayGuard:
        return self._transport.new_replay_guard()

    def count_rejected(self, reason: str) -> None:
        """Count a refused envelope where the entity's status reports refusals."""
        self._transport.rejected[reason] += 1

    # ---- the bus, but for the entity's local subjects -------------------------------

    async def publish(self, subject: str, data: bytes, *, reply: str = "",
                      headers: dict[str, str] | None = None) -> None:
        if subject.startswith(LOCAL_PREFIXES):
            raise ValueError(f"{subject} is one of the entity's local subjects: local "
                             "actors are asked and told through the actor's context")
        await self._nc.publish(subject, data, reply=reply, headers=headers)

    async def subscribe(self, subject: str, *,
                        cb: Callable[[Msg], Awaitable[None]]) -> Subscription:
        head = subject.split(".", 1)[0]
        if head in ("loc", "*", ">") or (
                head == "_l" and ("*" in subject or ">" in subject)):
            raise ValueError(f"{subject} covers the entity's local subjects: the "
                             "federation handle listens on federation subjects and its "
                             "own inboxes only")
        return await self._nc.subscribe(subject, cb=cb)

    def new_inbox(self) -> str:
        return self._nc.new_inbox()

    def jetstream(self) -> JetStreamContext:
        return self._nc.jetstream()

    async def refuse(self, msg: Msg, responder: str, error: ProtocolError) -> None:
        """Tell the sender of a refused request why (see Transport.refuse)."""
        await self._transport.refuse(msg, responder, error)

