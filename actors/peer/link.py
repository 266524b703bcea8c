"""The federation wire: sealing for peers (encrypted), opening what peers send, asking
over fed.req and putting durable commands into a peer's JetStream INBOX.

Keys: the entity's own, every peer pinned in the directory and every key fixed in
[peer_keys]. A peer never seen before is pinned from its first heartbeat whose
signature verifies under the key it carries (unless peers.pinning = "config"); after
that, only that key speaks for that name. No name beginning `a2a-` is ever a peer: the
A2A face runs a client's task as the turn of `peer:a2a-<client>` (actors/a2a/server.py),
so a member of that name would be the client to the orchestrator (its memories, its
token budget, its share of the queue).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from typing import Any

import msgpack
import nats.errors
import nats.js.errors
from nats.aio.msg import Msg

import protocol
from entityd import AskTimeout, FederationAccess, RemoteError
from protocol import Envelope, Keyring, ProtocolError, ReplayGuard, StrayReply, subjects

from .replies import RefusedReplies, Replies
from .store import OutboxRow, PeerStore

ACTOR = "peer"
PLAIN_KINDS = ("ping", "pong", "heartbeat", "error")
A2A_OWNERS = "a2a-"  # the prefix of the A2A clients' turn owners: never a peer's name


def reserved(name: str) -> bool:
    """Whether `name` may not be a peer's: it names an A2A client's turns."""
    return name.startswith(A2A_OWNERS)


class UnknownPeer(Exception):
    """A peer the directory has no key for (never seen, not in [peer_keys])."""


def inbox_stream(entity: str) -> str:
    return f"INBOX-{entity}"


class FedLink:
    def __init__(self, fed: FederationAccess, store: PeerStore, *, pinning: str) -> None:
        self.fed = fed
        self.entity = fed.entity
        self.address = f"{self.entity}/{ACTOR}"
        self.store = store
        self.pinning = pinning
        self.max_bytes = fed.max_bytes
        self.keyring = Keyring()
        self.keyring.add(fed.public_key, self.entity)
        self._keys: dict[str, bytes] = {}
        self.js = fed.jetstream()
        self.heartbeats = fed.new_replay_guard()
        self.requests = fed.new_replay_guard()
        self.replies = fed.new_replay_guard()
        self.reply_mux = Replies(fed, self.entity, fed.count_rejected)
        # (Commands get no guard here: see Inbound.serve_command.)

    async def load(self, fixed: Mapping[str, str]) -> None:
        """Trust the directory's pins, and the [peer_keys] (which win over old pins);
        listen for replies."""
        await self.reply_mux.start()
        for name, key_hex in fixed.items():
            await self.store.pin(name, bytes.fromhex(key_hex), "config")
        for peer in await self.store.peers():
            if peer.pinned_by == "config" and peer.name not in fixed:
                continue  # a key once fixed in config and since removed is not trusted
            if reserved(peer.name):
                continue  # pinned by an entityd that did not reserve the name yet
            self._trust(peer.name, peer.public_key)

    async def close(self) -> None:
        await self.reply_mux.stop()

    def _trust(self, name: str, key: bytes) -> None:
        old = self._keys.get(name)
        if old is not None and old != key:
            self.keyring.remove(old)
        self._keys[name] = key
        self.keyring.add(key, name, f"peer:{name}")

    def key_of(self, peer: str) -> bytes:
        key = self._keys.get(peer)
        if key is None:
            raise UnknownPeer(f"{peer} is not in the directory: no heartbeat seen from it "
                              "and no key for it in [peer_keys]")
        return key

    def known(self, peer: str) -> bool:
        return peer in self._keys

    # ---- opening ----------------------------------------------------------------------

    def open(self, msg: Msg, guard: ReplayGuard, now_ms: int | None = None
             ) -> tuple[Envelope, Any]:
        """Verify (PROTOCOL.md §6) and decrypt: the envelope and its record."""
        verified = protocol.verify_signature(msg.data, subject=msg.subject,
                                             keyring=self.keyring, max_bytes=self.max_bytes)
        env = protocol.check_body(verified, subject=msg.subject, local=self.address,
                                  replay=guard, now=now_ms, max_bytes=self.max_bytes)
        return env, self.fed.decrypt(env)

    async def open_heartbeat(self, msg: Msg) -> tuple[Envelope, Any, bool]:
        """A peer's heartbeat, pinning its key on first sight: (envelope, record, new)."""
        route = subjects.route(msg.subject)
        sender = route.sender if route else None
        new = False
        if sender and reserved(sender):
            raise protocol.UnknownKey(f"{sender} is no peer's name: {A2A_OWNERS}<client> "
                                      "names an A2A client's turns here")
        if sender and sender not in self._keys and self.pinning == "first-sight":
            kid = _claimed_kid(msg.data)
            if kid is not None and kid not in self.keyring:
                ring = Keyring()
                ring.add(kid, sender, f"peer:{sender}")
                verified = protocol.verify_signature(msg.data, subject=msg.subject,
                                                     keyring=ring, max_bytes=self.max_bytes)
                env = protocol.check_body(verified, subject=msg.subject, local=self.address,
                                          replay=self.heartbeats, max_bytes=self.max_bytes)
                if env.typ != "heartbeat":
                    raise protocol.UnknownKey(f"{sender} is not pinned yet; only its "
                                              "heartbeat can introduce its key")
                await self.store.pin(sender, kid, "first-sight")
                self._trust(sender, kid)
                new = True
                return env, env.message, new
        env, record = self.open(msg, self.heartbeats)
        return env, record, new

    # ---- sending ----------------------------------------------------------------------

    def seal(self, peer: str, subj: str, message: object, *, corr: bytes | None = None,
             msg_id: bytes | None = None, dst: str | None = None) -> tuple[bytes, bytes]:
        dst = dst or f"{peer}/{ACTOR}"
        if protocol.kinds.kind_name(message) in PLAIN_KINDS:
            return self.fed.sign(src=self.address, dst=dst, subj=subj, message=message,
                                 corr=corr, msg_id=msg_id)
        return self.fed.encrypt(self.key_of(peer), src=self.address, dst=dst, subj=subj,
                                message=message, corr=corr, msg_id=msg_id)

    async def ask(self, peer: str, op: str, message: object, timeout: float) -> Any:
        """A request on fed.req.<peer>.<self>.<op>; the verified, decrypted reply record.

        RemoteError for an `error` reply, AskTimeout when none came in time,
        nats NoRespondersError when the peer's peer actor does not listen. Only a reply
        signed by `peer` that answers this request ends it (see replies.py).
        """
        subj = subjects.request(peer, self.entity, op)
        wire, msg_id = self.seal(peer, subj, message)

        def answers(reply: Msg) -> tuple[Envelope, Any]:
            env, record = self.open(reply, self.replies)
            if env.corr != msg_id or env.src_entity != peer:
                raise protocol.WrongSender(f"reply from {env.src} does not answer {peer}",
                                           subject=reply.subject)
            return env, record

        try:
            env, record = await self.reply_mux.request(subj, wire, timeout, answers)
        except nats.errors.TimeoutError as exc:
            raise AskTimeout(f"{peer}/{ACTOR}", op, timeout, _refused(exc)) from None
        if isinstance(record, protocol.Error):
            raise RemoteError(env.src, record.code, record.message)
        return record

    async def reply(self, request: Envelope, reply_to: str, message: object) -> None:
        wire, _ = self.seal(request.src_entity, reply_to, message, corr=request.id,
                            dst=request.src)
        await self.fed.publish(reply_to, wire)

    async def put(self, row: OutboxRow, timeout: float) -> None:
        """Publish a durable command into the peer's INBOX; returns once it is stored
        there. Sealed afresh each attempt (same envelope id, so the INBOX and the
        receiver de-duplicate); raises on any failure, which the outbox retries. The
        PubAck comes on a reply subject of its own: only the INBOX's answer counts."""
        record = protocol.kinds.decode(row.typ, msgpack.unpackb(row.payload, raw=False))
        subj = subjects.command(row.peer, self.entity, row.op)
        wire, _ = self.seal(row.peer, subj, record, corr=row.corr, msg_id=row.id)
        stream = inbox_stream(row.peer)

        def pub_ack(reply: Msg) -> dict[str, Any]:
            answer = json.loads(reply.data)
            error = answer.get("error") if isinstance(answer, dict) else None
            if isinstance(error, dict) and isinstance(error.get("code"), int):
                return answer
            if isinstance(answer, dict) and answer.get("stream") == stream:
                return answer
            raise StrayReply

        try:
            answer = await self.reply_mux.request(subj, wire, timeout, pub_ack,
                                                  headers={"Nats-Msg-Id": row.id.hex()})
        except nats.errors.NoRespondersError:
            raise nats.js.errors.NoStreamResponseError from None
        if "error" in answer:
            nats.js.errors.APIError.from_error(answer["error"])  # raises the fitting error


def _refused(exc: nats.errors.TimeoutError) -> str:
    """What became of a reply that came and was refused (a stale timestamp: the clocks)."""
    if not isinstance(exc, RefusedReplies):
        return ""
    why = f"its reply was refused ({exc.refused.reason}: {exc.refused})"
    if isinstance(exc.refused, protocol.StaleTimestamp):
        why += "; the two hosts' clocks differ by more than the replay window: set them (NTP)"
    return why


def outbox_row(peer: str, op: str, message: object, corr: bytes | None = None) -> OutboxRow:
    payload = msgpack.packb(protocol.kinds.encode(message), use_bin_type=True)
    return OutboxRow(protocol.new_id(), peer, op, protocol.kinds.kind_name(message),
                     payload, corr, time.time(), 0, "", None)


def describe_failure(exc: BaseException) -> str:
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return "no INBOX answers for it (the peer or the hub is down)"
    if isinstance(exc, nats.errors.TimeoutError | TimeoutError):
        return "no acknowledgement in time (the peer or the hub is down or slow)"
    if isinstance(exc, UnknownPeer):
        return str(exc)
    if isinstance(exc, ProtocolError):
        return str(exc)
    return f"{type(exc).__name__}: {exc}"


def _claimed_kid(data: bytes) -> bytes | None:
    try:
        outer = msgpack.unpackb(data, raw=False, max_bin_len=len(data))
        kid = outer[1]
    except Exception:
        return None
    return kid if isinstance(kid, bytes) and len(kid) == protocol.keyring.KEY_BYTES else None
