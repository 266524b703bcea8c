"""Whether the embedded nats-server's store met a full disk and has room again.

nats-server (2.15) keeps a stream's write error for as long as it runs: once a store to a
stream failed with ENOSPC, every later store to that stream times out though the disk
has room again (a peer's report to the INBOX, the entity's own events), and neither an
update of the stream nor a reload clears it; a restart does. Nothing outside the server
says so (its `healthz` does, but only over a monitoring port or the system account, which
the entity's own server does not open), so the watch looks where the cause is: every
`EVERY_S` it reads the free space of the store's file system and what the server logged
since the last look. Free space under `FULL_BELOW`, or the server logging a full disk,
marks the store as having met one; once the file system has `ROOM_ABOVE` free again, the
watch says so once (the daemon then restarts, as systemd would). A daemon just started
waits `SETTLE_S` before it asks again, so a disk at the edge does not restart it in a loop.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import Callable
from pathlib import Path

from .logs import get

log = get("entityd.storewatch")

EVERY_S = 1.0
FULL_BELOW = 1 << 20  # bytes free: the store may have met a full disk
ROOM_ABOVE = 8 << 20  # bytes free: room for the server to write again
SETTLE_S = 10.0  # after a start, how long before a restart is asked for
LOG_READ_MAX = 1 << 20  # at most this much of the server's log read at each look
# What the server logs when a store met a full disk or a quota (Go's syscall errors at
# the end of its own store's lines), and nothing a client can put in a line (a client's
# name or subject comes after its address, never right after the level).
FULL_SAYS = re.compile(rb"^\[\d+\] [^\[\n]*\[(?:ERR|WRN)\] (?:Filestore|JetStream) [^\n]*"
                       rb"(?:no space left on device|disk quota exceeded)$",
                       re.IGNORECASE | re.MULTILINE)


def free_bytes(path: Path) -> int | None:
    """Bytes an unprivileged writer may still use on `path`'s file system; None if unknown."""
    try:
        st = os.statvfs(path)
    except OSError:
        return None
    return st.f_bavail * st.f_frsize


class LogTail:
    """What a growing log file says after a point: the new bytes at each read."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._offset = self._size()

    def _size(self) -> int:
        try:
            return self.path.stat().st_size
        except OSError:
            return 0

    def new(self) -> bytes:
        size = self._size()
        if size < self._offset:  # truncated or replaced: read it from the start
            self._offset = 0
        start = max(self._offset, size - LOG_READ_MAX)
        if start >= size:
            return b""
        try:
            with self.path.open("rb") as f:
                f.seek(start)
                data = f.read(size - start)
        except OSError:
            return b""
        self._offset = start + len(data)
        return data


class StoreWatch:
    """Calls `on_room(reason)` once when the store met a full disk and has room again."""

    def __init__(self, store: Path, server_log: Path, on_room: Callable[[str], None], *,
                 every: float = EVERY_S, settle: float = SETTLE_S) -> None:
        self.store = store
        self.on_room = on_room
        self.every = every
        self._log = LogTail(server_log)
        self._since = time.monotonic()
        self._settle = settle
        self.met_full = False

    def look(self) -> bool:
        """One look; True when it is time to restart (and `on_room` was called)."""
        said_full = FULL_SAYS.search(self._log.new()) is not None
        free = free_bytes(self.store)
        if free is None:
            return False
        if said_full or free < FULL_BELOW:
            if not self.met_full:
                log.warning("nats_store_disk_full", free_bytes=free, logged=said_full,
                            effect="streams that met it refuse stores until the daemon "
                                   "restarts, which it does once the disk has room")
            self.met_full = True
            return False
        if not self.met_full or free < ROOM_ABOVE:
            return False
        if time.monotonic() - self._since < self._settle:
            return False
        self.met_full = False
        self.on_room(f"the JetStream store's disk filled and has room again "
                     f"({free // (1 << 20)} MiB free)")
        return True

    async def run(self) -> None:
        while True:
            await asyncio.sleep(self.every)
            if await asyncio.to_thread(self.look):
                return
