"""Who may ask what of this entity (the [trust] table) and how often (a token bucket
per peer)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

from entityd import PEER_PERMISSIONS, PeersSection


@dataclass(frozen=True)
class Trust:
    table: Mapping[str, tuple[str, ...]]
    default: tuple[str, ...]

    def allowed(self, peer: str) -> tuple[str, ...]:
        return self.table.get(peer, self.table.get("*", self.default))

    def permits(self, peer: str, permission: str) -> bool:
        return permission in self.allowed(peer)

    def refusal(self, peer: str, op: str, entity: str) -> str | None:
        """Why `peer` may not do `op` to `entity`, or None when it may (ops that are
        not permissions, such as ping or a command result, need none)."""
        if op not in PEER_PERMISSIONS or self.permits(peer, op):
            return None
        return (f"{peer} may not {op} {entity} "
                f"(trust: {', '.join(self.allowed(peer)) or 'nothing'})")


@dataclass
class _Bucket:
    tokens: float
    stamp: float


# Peers a limiter tracks at most. Past it, buckets that have filled up again (which is
# the same as having none) are dropped, then the longest idle: the keys are subject
# tokens, which only the hub's members (and local clients) choose.
MAX_BUCKETS = 4096


@dataclass
class RateLimiter:
    """`per_minute` messages per peer on average, bursts of up to `burst`."""

    per_minute: int
    burst: int
    clock: Callable[[], float] = time.monotonic
    _buckets: dict[str, _Bucket] = field(default_factory=dict)

    @classmethod
    def from_config(cls, peers: PeersSection) -> RateLimiter:
        return cls(peers.rate_per_minute, peers.rate_burst)

    def take(self, peer: str) -> float:
        """0.0 when `peer` may go ahead now, else the seconds until it may."""
        now = self.clock()
        bucket = self._buckets.get(peer)
        rate = self.per_minute / 60.0
        if bucket is None:
            if len(self._buckets) >= MAX_BUCKETS:
                self._prune(now, rate)
            bucket = self._buckets[peer] = _Bucket(float(self.burst), now)
        bucket.tokens = min(float(self.burst), bucket.tokens + (now - bucket.stamp) * rate)
        bucket.stamp = now
        if bucket.tokens >= 1.0:
            bucket.tokens -= 1.0
            return 0.0
        return (1.0 - bucket.tokens) / rate

    def _prune(self, now: float, rate: float) -> None:
        full = [peer for peer, b in self._buckets.items()
                if b.tokens + (now - b.stamp) * rate >= self.burst]
        for peer in full:
            del self._buckets[peer]
        if len(self._buckets) >= MAX_BUCKETS:
            idle = min(self._buckets, key=lambda peer: self._buckets[peer].stamp)
            del self._buckets[idle]
