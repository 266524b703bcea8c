"""How a delegated task's code travels back: inline in the `completed` update when it
fits in one envelope, else kept in the delegate's JetStream object store and fetched by
the delegator in encrypted chunks over fed.req (`fetch`).

JetStream stays local to each entity's domain (the hub grants no cross-domain API), so
the delegator cannot read the delegate's object store itself; it asks the delegate's
peer actor for the pieces, and checks the whole against the SHA-256 the update carried.

The store is bounded: in all (peers.deliverables_max_bytes), per delegator
(peers.deliverables_per_peer_bytes) and in time (peers.deliverables_ttl, after which a
deliverable expires). A deliverable that does not fit fails its task with the reason.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time

import nats.errors
import nats.js.errors
from nats.js.api import ObjectStoreConfig
from nats.js.object_store import ObjectStore

from entityd import EntitydError, PeersSection, PeerUnavailable, RemoteError
from protocol import ProtocolError, reasons

from .inbox import insufficient_storage
from .link import FedLink, UnknownPeer
from .messages import DeliverableChunk, DeliverableGet

BUCKET = "deliverables"
# Room left in an envelope for everything but the patch (fields, encryption, msgpack).
ENVELOPE_ROOM = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024
CHUNK_MAX = 256 * 1024
FETCH_TIMEOUT_S = 30.0
# What the store adds to a deliverable's bytes (chunk subjects and headers, its meta).
STORE_OVERHEAD = 1.02
STORE_SLACK = 16 * 1024
KEEP_READ_S = 60.0  # a deliverable read for a fetch is kept this long for the next piece


class Deliverables:
    def __init__(self, link: FedLink, max_message_bytes: int, limits: PeersSection) -> None:
        self.link = link
        self.inline_limit = max_message_bytes - ENVELOPE_ROOM
        self.chunk = min(CHUNK_MAX, max_message_bytes // 2)
        self.limits = limits
        self.max_bytes = limits.deliverables_max_bytes  # less where the server has not the room
        self._store: ObjectStore | None = None
        self._read: tuple[str, bytes, float] | None = None

    async def _bucket(self) -> ObjectStore:
        """The bucket, with its limits; an older one without them is updated in place."""
        if self._store is not None:
            return self._store
        js, ttl = self.link.js, self.limits.deliverables_ttl
        while True:
            try:
                try:
                    store = await js.object_store(BUCKET)
                except nats.js.errors.BucketNotFoundError:
                    store = await js.create_object_store(BUCKET, config=ObjectStoreConfig(
                        ttl=ttl, max_bytes=self.max_bytes))
                else:
                    config = (await store.status()).stream_info.config
                    if config.max_bytes != self.max_bytes or config.max_age != ttl:
                        await js.update_stream(dataclasses.replace(
                            config, max_bytes=self.max_bytes, max_age=ttl))
            except nats.js.errors.APIError as exc:
                # The server sets a stream's max_bytes aside; with less room, keep less.
                if not insufficient_storage(exc) or self.max_bytes // 2 < MAX_BYTES:
                    raise
                self.max_bytes //= 2
                continue
            self._store = store
            return store

    async def pack(self, name: str, patch: bytes) -> tuple[bytes, int, str]:
        """(inline patch, size, sha256): the patch itself when small, else b"" and the
        size and digest of the copy kept in the object store under `name` (the
        delegator's name, a dot, the task id). ValueError when it cannot be kept."""
        if len(patch) <= self.inline_limit:
            return patch, 0, ""
        if len(patch) > MAX_BYTES:
            raise ValueError(f"the deliverable is {len(patch)} bytes; at most {MAX_BYTES}")
        try:
            bucket = await self._bucket()
            await self._room(bucket, name, len(patch))
            await bucket.put(name, patch)
        except nats.js.errors.APIError as exc:  # full after all (another put was faster)
            raise ValueError(f"the deliverable ({len(patch)} bytes) could not be kept: the "
                             f"store of deliverables refused it ({exc.description})") from None
        except (nats.errors.Error, TimeoutError) as exc:
            raise ValueError(f"the deliverable ({len(patch)} bytes) could not be kept: "
                             f"{type(exc).__name__}: {exc}") from None
        return b"", len(patch), hashlib.sha256(patch).hexdigest()

    async def _room(self, bucket: ObjectStore, name: str, size: int) -> None:
        need = int(size * STORE_OVERHEAD) + STORE_SLACK
        state = (await bucket.status()).stream_info.state
        total = self.max_bytes
        if state.bytes + need > total:
            raise ValueError(
                f"no room for the deliverable ({size} bytes): the store of deliverables "
                f"holds {state.bytes} of its {total} bytes (peers.deliverables_max_bytes); "
                f"kept ones expire after {self.limits.deliverables_ttl:g} s")
        peer = name.split(".", 1)[0]
        try:
            kept = await bucket.list(ignore_deletes=True)
        except nats.js.errors.NotFoundError:
            kept = []
        held = sum(info.size or 0 for info in kept
                   if info.name.startswith(f"{peer}.") and info.name != name)
        allowed = self.limits.deliverables_per_peer_bytes
        if held + need > allowed:
            raise ValueError(
                f"no room for the deliverable ({size} bytes): {peer}'s deliverables kept "
                f"here take {held} of the {allowed} bytes one delegator may have "
                f"(peers.deliverables_per_peer_bytes); kept ones expire after "
                f"{self.limits.deliverables_ttl:g} s")

    async def piece(self, name: str, offset: int, length: int) -> bytes | None:
        """A piece of a kept deliverable, for the delegator's fetch; None if none kept.
        The whole is read once per fetch, not once per piece."""
        now = time.monotonic()
        if self._read is not None and self._read[0] == name and now - self._read[2] < KEEP_READ_S:
            data = self._read[1]
        else:
            self._read = None
            try:
                data = (await (await self._bucket()).get(name)).data or b""
            except nats.js.errors.ObjectNotFoundError:
                return None
            self._read = (name, data, now)
        return data[offset:offset + min(length, self.chunk)]

    async def fetch(self, peer: str, task_id: str, size: int, sha256: str) -> bytes:
        """The whole deliverable from the delegate; PeerUnavailable while it cannot be
        reached (the update is then handled again later), ValueError if it is corrupt or
        bigger than a deliverable may be. The delegate chooses `size` and every piece:
        no more than `size` (at most MAX_BYTES) is taken, nor a piece longer than asked."""
        if not 0 < size <= MAX_BYTES:
            raise ValueError(f"{peer} says it is {size} bytes; a deliverable is 1 to "
                             f"{MAX_BYTES}")
        parts = []
        digest = hashlib.sha256()
        offset = 0
        while offset < size:
            length = min(self.chunk, size - offset)
            try:
                got = await self.link.ask(peer, "fetch", DeliverableGet(
                    task_id, offset, length), FETCH_TIMEOUT_S)
            except RemoteError as exc:
                if exc.code == reasons.NOT_FOUND:  # expired (its ttl), or never kept
                    raise ValueError(f"{peer} no longer keeps it: {exc.message}") from None
                raise PeerUnavailable(f"cannot fetch task {task_id}'s deliverable from "
                                      f"{peer}: {exc}") from None
            except (EntitydError, nats.errors.Error, UnknownPeer, ProtocolError,
                    TimeoutError) as exc:
                raise PeerUnavailable(f"cannot fetch task {task_id}'s deliverable from "
                                      f"{peer}: {exc}") from None
            if not isinstance(got, DeliverableChunk) or not got.data:
                raise ValueError(f"{peer} sent no data at offset {offset} of {size}")
            if len(got.data) > length:
                raise ValueError(f"{peer} sent {len(got.data)} bytes at offset {offset} of "
                                 f"{size}, asked for {length}")
            digest.update(got.data)
            parts.append(got.data)
            offset += len(got.data)
        if digest.hexdigest() != sha256:
            raise ValueError("the fetched deliverable does not match its SHA-256")
        return b"".join(parts)
