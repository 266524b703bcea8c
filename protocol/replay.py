"""Replay protection: a timestamp window plus, per sender key, a bounded cache of the ids
accepted inside it."""

from __future__ import annotations

import heapq

from .errors import Replayed, StaleTimestamp

DEFAULT_WINDOW_MS = 90_000
DEFAULT_FUTURE_MS = 5_000
DEFAULT_CAPACITY = 100_000


class _Sender:
    """One sender key's remembered ids, ordered by timestamp, and its floor."""

    __slots__ = ("by_ts", "floor_ms", "seen")

    def __init__(self) -> None:
        self.seen: set[bytes] = set()
        self.by_ts: list[tuple[int, bytes]] = []  # a heap: the oldest timestamp first
        self.floor_ms = 0

    def expire(self, horizon_ms: int) -> None:
        by_ts = self.by_ts
        while by_ts and by_ts[0][0] < horizon_ms:
            _, msg_id = heapq.heappop(by_ts)
            self.seen.discard(msg_id)


class ReplayGuard:
    """Accepts each (sender key, envelope id) once while its timestamp is fresh.

    Fresh means `now - window_ms <= ts <= now + future_ms`: the past window tolerates
    delivery delays and a receiver clock running ahead; the small future allowance only
    the jitter of synchronised clocks, so a message dated ahead cannot hold its place in
    the cache for much longer than the window.

    Each sender key (the envelope's kid) has its own cache, so what one sender sends can
    never crowd another's ids out. A sender's ids are remembered until their timestamp
    leaves the window, so a replay is either caught here or rejected as stale. When more
    than `capacity` ids of one sender are live at once the guard does not forget: it drops
    that sender's id with the oldest timestamp and raises *that sender's* floor of
    acceptable timestamps just past it, so an evicted id can never come back, and only
    the sender that overflowed its cache has messages refused. Ids are ordered by
    timestamp, not by arrival, because a sender's messages may arrive out of order.

    Memory is bounded by `capacity` ids per sender, and the senders are bounded by the
    key ring: `check_body` calls the guard only for envelopes whose signature verified
    under a trusted key. A sender whose ids have all expired is forgotten entirely (its
    floor then lies below the window, so nothing depends on it).

    An id counts as seen only once the envelope has passed every check (PROTOCOL.md §6):
    `admit` checks freshness and replays without remembering, `remember` records an
    admitted id, and `check` is the two together.
    """

    def __init__(
        self,
        window_ms: int = DEFAULT_WINDOW_MS,
        capacity: int = DEFAULT_CAPACITY,
        future_ms: int = DEFAULT_FUTURE_MS,
    ) -> None:
        if window_ms <= 0 or capacity <= 0:
            raise ValueError("replay window and capacity must be positive")
        if not 0 <= future_ms <= window_ms:
            raise ValueError("the future allowance must be between 0 and the window")
        self.window_ms = window_ms
        self.future_ms = future_ms
        self.capacity = capacity
        self._senders: dict[bytes, _Sender] = {}
        self._next_sweep_ms = 0

    def check(self, msg_id: bytes, ts_ms: int, now_ms: int, *, sender: bytes) -> None:
        """Raise StaleTimestamp or Replayed, else remember the id for `sender`."""
        self.admit(msg_id, ts_ms, now_ms, sender=sender)
        self.remember(msg_id, ts_ms, sender=sender)

    def admit(self, msg_id: bytes, ts_ms: int, now_ms: int, *, sender: bytes) -> None:
        """Raise StaleTimestamp or Replayed; remembers nothing."""
        if ts_ms > now_ms + self.future_ms:
            raise StaleTimestamp(f"timestamp {ts_ms} is {ts_ms - now_ms} ms ahead of now, "
                                 f"more than the {self.future_ms} ms allowed")
        if ts_ms < now_ms - self.window_ms:
            raise StaleTimestamp(f"timestamp {ts_ms} is {now_ms - ts_ms} ms old, "
                                 f"more than the {self.window_ms} ms window")
        if now_ms >= self._next_sweep_ms:
            self._sweep(now_ms)
        cache = self._senders.get(sender)
        if cache is None:
            return
        if ts_ms < cache.floor_ms:
            raise StaleTimestamp(f"timestamp {ts_ms} is older than the replay cache holds "
                                 "for this sender")
        cache.expire(now_ms - self.window_ms)
        if msg_id in cache.seen:
            raise Replayed(f"id {msg_id.hex()} was already accepted")

    def remember(self, msg_id: bytes, ts_ms: int, *, sender: bytes) -> None:
        """Record an id that `admit` let through (and that nothing since refused)."""
        cache = self._senders.get(sender)
        if cache is None:
            cache = self._senders[sender] = _Sender()
        cache.seen.add(msg_id)
        heapq.heappush(cache.by_ts, (ts_ms, msg_id))
        if len(cache.seen) > self.capacity:
            oldest_ts, oldest_id = heapq.heappop(cache.by_ts)
            cache.seen.discard(oldest_id)
            cache.floor_ms = max(cache.floor_ms, oldest_ts + 1)

    def floor_ms(self, sender: bytes) -> int:
        """The timestamp below which `sender`'s messages are refused (0: none yet)."""
        cache = self._senders.get(sender)
        return cache.floor_ms if cache is not None else 0

    def senders(self) -> int:
        """How many sender keys have ids remembered."""
        return len(self._senders)

    def _sweep(self, now_ms: int) -> None:
        """Expire every sender's old ids and forget senders with none left; runs about
        once a window, so a sender that went quiet does not hold memory for ever."""
        horizon = now_ms - self.window_ms
        for sender, cache in list(self._senders.items()):
            cache.expire(horizon)
            if not cache.seen:
                # Every id this sender was refused for at the floor is older than its
                # remembered ids were, so below the window now: the window refuses them.
                del self._senders[sender]
        self._next_sweep_ms = now_ms + self.window_ms

    def __len__(self) -> int:
        return sum(len(cache.seen) for cache in self._senders.values())
