"""Opening a SQLite file the entity keeps its state in: damage is said, never guessed over.

A file that is torn, garbled, of a newer schema or not a file at all (a directory where
it belongs) is refused as DamagedFile: the daemon stops (exit 2) naming it and the fix,
instead of crashing its actor on it again at every restart, and nothing is made afresh
over it. A file that is there but empty (torn before its first page was written) opens
as a new store, as SQLite takes it, but is said so: whatever it held is gone.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import TypeVar

from entityd import DamagedFile, disk_full, get_logger

log = get_logger("actors.state_file")
T = TypeVar("T")

FIX = ("restore it from a backup, or move it aside to start with an empty one (what it "
       "held is then gone)")
NEWER_FIX = "run the entityd that wrote it (or a newer one), or restore a backup"
# Not damage: another process holds the file for a moment.
_BUSY = ("locked", "busy")


async def opened(path: Path | str, open_: Callable[[], Awaitable[T]], *,
                    newer: tuple[type[Exception], ...] = ()) -> T:
    """`open_()`, which opens the SQLite file at `path`, with its damage made DamagedFile;
    `newer`: the errors that say the file was written by a newer entityd."""
    path = Path(path)
    try:
        empty = path.is_file() and path.stat().st_size == 0
    except OSError:
        empty = False
    if empty:
        log.warning("state_file_was_empty", file=str(path),
                    effect="opened as a new, empty store: what it held is gone (restore "
                           "it from a backup to have it back)")
    try:
        return await open_()
    except newer as exc:
        raise DamagedFile(path, str(exc), NEWER_FIX) from exc
    except (sqlite3.DatabaseError, OSError) as exc:
        if disk_full(exc) or any(word in str(exc).lower() for word in _BUSY):
            raise
        problem = "not a file" if path.is_dir() else f"cannot be opened ({exc})"
        raise DamagedFile(path, problem, FIX) from exc
