"""Who may ask what of this entity (Trust) and how often (RateLimiter, on a fake clock)."""

from __future__ import annotations

import pytest

from actors.peer.policy import RateLimiter, Trust
from entityd.config import PeersSection


class FakeClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


# -- Trust ------------------------------------------------------------------------------------


TABLE = {
    "entity-b": ("talk", "delegate", "restart"),
    "entity-c": (),
    "*": ("talk", "wake"),
}


def test_named_peer_gets_exactly_its_entry() -> None:
    trust = Trust(TABLE, default=("talk", "report"))
    assert trust.allowed("entity-b") == ("talk", "delegate", "restart")
    assert trust.permits("entity-b", "restart")
    assert trust.permits("entity-b", "delegate")
    # Neither "*" nor the default adds to a named peer's entry.
    assert not trust.permits("entity-b", "wake")
    assert not trust.permits("entity-b", "report")


def test_empty_entry_denies_everything_despite_star_and_default() -> None:
    trust = Trust(TABLE, default=("talk", "report"))
    assert trust.allowed("entity-c") == ()
    for permission in ("talk", "report", "delegate", "wake", "restart"):
        assert not trust.permits("entity-c", permission)


def test_unlisted_peer_falls_back_to_star() -> None:
    trust = Trust(TABLE, default=("talk", "report"))
    assert trust.allowed("entity-z") == ("talk", "wake")
    assert trust.permits("entity-z", "wake")
    assert not trust.permits("entity-z", "report")  # the default is not consulted


def test_without_star_unlisted_peer_gets_the_default() -> None:
    trust = Trust({"entity-b": ("restart",)}, default=("talk", "report"))
    assert trust.allowed("entity-z") == ("talk", "report")
    assert trust.permits("entity-z", "report")
    assert not trust.permits("entity-z", "restart")


def test_empty_table_and_empty_default_deny_everyone() -> None:
    trust = Trust({}, default=())
    assert trust.allowed("entity-b") == ()
    assert not trust.permits("entity-b", "talk")


def test_unknown_permission_is_never_permitted() -> None:
    trust = Trust(TABLE, default=("talk",))
    assert not trust.permits("entity-b", "launch")
    assert not trust.permits("entity-b", "")


# -- RateLimiter ------------------------------------------------------------------------------


def limiter(per_minute: int = 60, burst: int = 3) -> tuple[RateLimiter, FakeClock]:
    clock = FakeClock()
    return RateLimiter(per_minute, burst, clock=clock), clock


def test_burst_then_refusal_with_the_wait_until_the_next_token() -> None:
    rl, _ = limiter(per_minute=60, burst=3)  # one token a second
    assert [rl.take("entity-b") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("entity-b") == pytest.approx(1.0)
    # A refusal costs nothing: asking again at once gives the same wait.
    assert rl.take("entity-b") == pytest.approx(1.0)


def test_wait_shrinks_as_time_passes_and_the_token_is_taken_when_due() -> None:
    rl, clock = limiter(per_minute=60, burst=3)
    for _ in range(3):
        rl.take("entity-b")
    clock.advance(0.25)
    assert rl.take("entity-b") == pytest.approx(0.75)
    clock.advance(0.75)
    assert rl.take("entity-b") == 0.0
    assert rl.take("entity-b") == pytest.approx(1.0)  # that token is spent


def test_refill_rate_follows_per_minute() -> None:
    rl, clock = limiter(per_minute=6, burst=1)  # one token every ten seconds
    assert rl.take("entity-b") == 0.0
    assert rl.take("entity-b") == pytest.approx(10.0)
    clock.advance(4.0)
    assert rl.take("entity-b") == pytest.approx(6.0)
    clock.advance(6.0)
    assert rl.take("entity-b") == 0.0


def test_refill_is_capped_at_the_burst() -> None:
    rl, clock = limiter(per_minute=60, burst=3)
    rl.take("entity-b")
    clock.advance(3600.0)  # an hour idle still allows only one burst
    assert [rl.take("entity-b") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert rl.take("entity-b") > 0.0


def test_peers_have_independent_buckets() -> None:
    rl, clock = limiter(per_minute=60, burst=2)
    assert [rl.take("entity-b") for _ in range(2)] == [0.0, 0.0]
    assert rl.take("entity-b") > 0.0
    # entity-c's first burst is untouched by entity-b's.
    assert [rl.take("entity-c") for _ in range(2)] == [0.0, 0.0]
    assert rl.take("entity-c") > 0.0
    clock.advance(1.0)
    assert rl.take("entity-b") == 0.0
    assert rl.take("entity-c") == 0.0
    assert rl.take("entity-b") > 0.0


def test_from_config_uses_the_peers_rates() -> None:
    rl = RateLimiter.from_config(PeersSection(rate_per_minute=30, rate_burst=4))
    assert (rl.per_minute, rl.burst) == (30, 4)
    clock = FakeClock()
    rl.clock = clock
    assert [rl.take("entity-b") for _ in range(4)] == [0.0] * 4
    assert rl.take("entity-b") == pytest.approx(2.0)


def test_the_buckets_are_bounded_and_a_flooding_peer_stays_throttled() -> None:
    """Subject tokens are the keys: many distinct senders cannot grow the limiter for
    ever, nor reset the bucket of a peer that keeps flooding (only idle ones go)."""
    from actors.peer import policy

    rl, clock = limiter(per_minute=60, burst=2)
    for n in range(policy.MAX_BUCKETS + 100):
        if n % 100 == 0:  # entity-c floods all along, and is refused all along
            assert [rl.take("entity-c") for _ in range(3)][-1] > 0
        rl.take(f"sender-{n}")
        clock.advance(0.0001)
    assert len(rl._buckets) <= policy.MAX_BUCKETS
    assert rl.take("entity-c") > 0
    clock.advance(10.0)  # every bucket has refilled: the next new sender prunes them all
    rl.take("entity-new")
    assert len(rl._buckets) == 1
