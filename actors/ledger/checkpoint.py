"""The ledger actor's checkpoint: its books written to the data dir now and then, so that
a restart reads only what the LEDGER stream gained since, not every chain from the start.

The file is the actor's own cache (0600 in the data dir, beside its key), not evidence:
`ledger verify` never reads it. It is used only when it still matches the stream: every
chain's last entry it names must be in the stream at the same place with the same hash
(a stream made afresh, or another federation's, fails that), else the books are replayed
from the start. Books that refused or repeated an entry are not written down at all.

A damaged file is never trusted: it carries the BLAKE2b digest of what it holds (a torn
or flipped byte that still decodes is caught), and the books it holds must pass their own
audit (balances and holds add up to the supply, none below zero) before they are used; a
file that fails either, or cannot be read at all, is set aside by replaying the chains.
"""

from __future__ import annotations

import asyncio
import hashlib
from pathlib import Path

import msgpack

from entityd import get_logger
from protocol import ProtocolError
from protocol.ledger import snapshot

from ..private_file import replace_private
from .chains import Chains

log = get_logger("entityd.ledger")

SAVE_EVERY = 1000  # entries read between two checkpoints


class Checkpoint:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.saved_at = 0  # the stream sequence the last checkpoint was made at

    async def restore(self, chains: Chains) -> str:
        """Put `chains` where the checkpoint left them; '' when it did, else why not."""
        try:
            data = await asyncio.to_thread(self.path.read_bytes)
        except FileNotFoundError:
            return "no checkpoint yet"
        except OSError as exc:  # a directory, unreadable: replay, and a save says so
            return f"the checkpoint cannot be read: {exc}"
        try:
            outer = msgpack.unpackb(data, raw=False)
            body = outer["body"]
            if not isinstance(body, bytes) or _digest(body) != outer["digest"]:
                raise ValueError("what it holds does not match its digest (damaged)")
            kept = msgpack.unpackb(body, raw=False)
            chains.restart({name: bytes(key) for name, key in kept["peers"].items()})
            chains.adopt(*snapshot.load(kept["books"], chains.keys))
            wrong = chains.books.audit()
            if wrong:
                raise ValueError(f"its books do not add up ({wrong[0]})")
        except (snapshot.SnapshotError, KeyError, TypeError, ValueError) as exc:
            chains.restart()
            return f"the checkpoint cannot be used: {exc}"
        for chain, seq in chains.last_of.items():
            stored = await chains.stream.get(seq)
            head = chains.books.position(chain).prev
            try:
                same = stored is not None and chains.books.read(
                    stored.data, stored.subject).hash == head
            except ProtocolError:
                same = False
            if not same:
                chains.restart()
                return f"the stream no longer holds {chain}'s entry at {seq}"
        self.saved_at = chains.after
        return ""

    async def save(self, chains: Chains, *, force: bool = False) -> None:
        if not chains.clean() or chains.after == self.saved_at:
            return
        if not force and chains.after - self.saved_at < SAVE_EVERY:
            return
        body = msgpack.packb({"peers": chains.peers,
                              "books": snapshot.dump(chains.books, chains.state())},
                             use_bin_type=True)
        data = msgpack.packb({"digest": _digest(body), "body": body}, use_bin_type=True)
        try:
            await asyncio.to_thread(replace_private, self.path, data)
        except OSError as exc:  # a full disk: the books stand, the next start replays more
            log.warning("ledger_checkpoint_not_saved", path=str(self.path), error=str(exc))
            return
        self.saved_at = chains.after


def _digest(body: bytes) -> bytes:
    return hashlib.blake2b(body, digest_size=32, person=b"entityd-ckpt").digest()
