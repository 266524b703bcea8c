"""Giving freed heap back to the system, so that a long-running daemon's RSS follows what
it holds rather than the most it ever held.

glibc's malloc returns memory to the kernel only from the top of its heaps, and only
past a threshold: pages freed in the middle of a heap (the messages, model answers and
SQLite pages of a turn, freed around longer-lived objects) stay counted in the process's
RSS until something reuses them. `malloc_trim(0)` hands every wholly free page back
(`madvise(MADV_DONTNEED)`); the daemon calls it every TRIM_INTERVAL_S. Elsewhere (musl,
macOS) there is no such call and `trim` does nothing.
"""

from __future__ import annotations

import asyncio
import ctypes
import ctypes.util
from collections.abc import Callable

TRIM_INTERVAL_S = 60.0


def _malloc_trim() -> Callable[[int], int] | None:
    name = ctypes.util.find_library("c")
    if name is None:
        return None
    try:
        func = ctypes.CDLL(name).malloc_trim
    except (OSError, AttributeError):
        return None
    func.argtypes = [ctypes.c_size_t]
    func.restype = ctypes.c_int
    return func


_TRIM = _malloc_trim()


def available() -> bool:
    return _TRIM is not None


def trim() -> bool:
    """Give wholly free heap pages back to the kernel; whether any were (False also where
    the C library has no malloc_trim)."""
    return _TRIM is not None and bool(_TRIM(0))


async def trim_every(interval: float = TRIM_INTERVAL_S) -> None:
    """Trim the heap every `interval` seconds, until cancelled."""
    if _TRIM is None:
        return
    while True:
        await asyncio.sleep(interval)
        trim()
