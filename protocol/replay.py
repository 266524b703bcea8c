"""Replay protection: a timestamp window plus a bounded cache of ids seen inside it."""

from __future__ import annotations

import heapq

from .errors import Replayed, StaleTimestamp

DEFAULT_WINDOW_MS = 90_000
DEFAULT_CAPACITY = 100_000


class ReplayGuard:
    """Accepts each envelope id once while its timestamp is inside ±window of now.

    Ids are remembered until their timestamp leaves the window, so a replay is either
    caught here or rejected as stale. When more than `capacity` ids are live at once the
    guard does not forget: it drops the id with the oldest timestamp and raises the floor
    of acceptable timestamps just past it, so an evicted id can never come back inside the
    window. Ids are ordered by timestamp, not by arrival, because senders' clocks differ:
    one message from a peer whose clock runs ahead must neither hold older ids in the
    cache past their window nor, when evicted first, lift the floor above the present.
    """

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, capacity: int = DEFAULT_CAPACITY):
        if window_ms <= 0 or capacity <= 0:
            raise ValueError("replay window and capacity must be positive")
        self.window_ms = window_ms
        self.capacity = capacity
        self._seen: set[bytes] = set()
        self._by_ts: list[tuple[int, bytes]] = []  # a heap: the oldest timestamp first
        self._floor_ms = 0

    def check(self, msg_id: bytes, ts_ms: int, now_ms: int) -> None:
        """Raise StaleTimestamp or Replayed, else remember the id."""
        if abs(ts_ms - now_ms) > self.window_ms:
            raise StaleTimestamp(f"timestamp {ts_ms} is {ts_ms - now_ms} ms from now")
        if ts_ms < self._floor_ms:
            raise StaleTimestamp(f"timestamp {ts_ms} is older than the replay cache holds")
        self._expire(now_ms)
        if msg_id in self._seen:
            raise Replayed(f"id {msg_id.hex()} was already accepted")
        self._seen.add(msg_id)
        heapq.heappush(self._by_ts, (ts_ms, msg_id))
        if len(self._seen) > self.capacity:
            oldest_ts, oldest_id = heapq.heappop(self._by_ts)
            self._seen.discard(oldest_id)
            self._floor_ms = max(self._floor_ms, oldest_ts + 1)

    def _expire(self, now_ms: int) -> None:
        horizon = now_ms - self.window_ms
        by_ts = self._by_ts
        while by_ts and by_ts[0][0] < horizon:
            _, msg_id = heapq.heappop(by_ts)
            self._seen.discard(msg_id)

    def __len__(self) -> int:
        return len(self._seen)
