"""How a delegated task's code travels back: inline in the `completed` update when it
fits in one envelope, else kept in the delegate's JetStream object store and fetched by
the delegator in encrypted chunks over fed.req (`fetch`).

JetStream stays local to each entity's domain (the hub grants no cross-domain API), so
the delegator cannot read the delegate's object store itself; it asks the delegate's
peer actor for the pieces, and checks the whole against the SHA-256 the update carried.
"""

from __future__ import annotations

import hashlib

import nats.errors
import nats.js.errors
from nats.js.object_store import ObjectStore

from entityd.errors import EntitydError, PeerUnavailable
from protocol import ProtocolError

from .link import FedLink, UnknownPeer
from .messages import DeliverableChunk, DeliverableGet

BUCKET = "deliverables"
# Room left in an envelope for everything but the patch (fields, encryption, msgpack).
ENVELOPE_ROOM = 64 * 1024
MAX_BYTES = 64 * 1024 * 1024
CHUNK_MAX = 256 * 1024
FETCH_TIMEOUT_S = 30.0


class Deliverables:
    def __init__(self, link: FedLink, max_message_bytes: int) -> None:
        self.link = link
        self.inline_limit = max_message_bytes - ENVELOPE_ROOM
        self.chunk = min(CHUNK_MAX, max_message_bytes // 2)
        self._store: ObjectStore | None = None

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            try:
                self._store = await self.link.js.object_store(BUCKET)
            except nats.js.errors.BucketNotFoundError:
                self._store = await self.link.js.create_object_store(BUCKET)
        return self._store

    async def pack(self, task_id: str, patch: bytes) -> tuple[bytes, int, str]:
        """(inline patch, size, sha256): the patch itself when small, else b"" and the
        size and digest of the copy kept in the object store under the task id."""
        if len(patch) <= self.inline_limit:
            return patch, 0, ""
        if len(patch) > MAX_BYTES:
            raise ValueError(f"the deliverable is {len(patch)} bytes; at most {MAX_BYTES}")
        await (await self._bucket()).put(task_id, patch)
        return b"", len(patch), hashlib.sha256(patch).hexdigest()

    async def piece(self, task_id: str, offset: int, length: int) -> bytes | None:
        """A piece of a kept deliverable, for the delegator's fetch; None if none kept."""
        try:
            data = (await (await self._bucket()).get(task_id)).data or b""
        except nats.js.errors.ObjectNotFoundError:
            return None
        return data[offset:offset + min(length, self.chunk)]

    async def fetch(self, peer: str, task_id: str, size: int, sha256: str) -> bytes:
        """The whole deliverable from the delegate; PeerUnavailable while it cannot be
        reached (the update is then handled again later), ValueError if it is corrupt."""
        parts = []
        offset = 0
        while offset < size:
            try:
                got = await self.link.ask(peer, "fetch", DeliverableGet(
                    task_id, offset, self.chunk), FETCH_TIMEOUT_S)
            except (EntitydError, nats.errors.Error, UnknownPeer, ProtocolError,
                    TimeoutError) as exc:
                raise PeerUnavailable(f"cannot fetch task {task_id}'s deliverable from "
                                      f"{peer}: {exc}") from None
            if not isinstance(got, DeliverableChunk) or not got.data:
                raise ValueError(f"{peer} sent no data at offset {offset} of {size}")
            parts.append(got.data)
            offset += len(got.data)
        patch = b"".join(parts)
        if len(patch) != size or hashlib.sha256(patch).hexdigest() != sha256:
            raise ValueError("the fetched deliverable does not match its size and SHA-256")
        return patch
