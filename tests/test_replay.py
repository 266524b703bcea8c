"""ReplayGuard: each id of each sender once while fresh (the window behind now, a small
allowance ahead), bounded memory per sender that never forgets unsafely, and no sender
able to crowd another's ids out."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Replayed, ReplayGuard, StaleTimestamp
from protocol.errors import ProtocolError

NOW = 1_767_225_600_000
WINDOW = 90_000
FUTURE = 5_000
A = b"a" * 32  # sender keys (kids)
B = b"b" * 32


def ident(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_an_id_is_accepted_once() -> None:
    guard = ReplayGuard()
    guard.check(ident(1), NOW, NOW, sender=A)
    with pytest.raises(Replayed):
        guard.check(ident(1), NOW, NOW, sender=A)
    guard.check(ident(2), NOW, NOW, sender=A)
    assert len(guard) == 2


def test_the_defaults_are_90_seconds_behind_and_5_ahead() -> None:
    guard = ReplayGuard()
    assert (guard.window_ms, guard.future_ms) == (90_000, 5_000)


@pytest.mark.parametrize("offset", [-WINDOW, -1, 0, 1, FUTURE])
def test_timestamps_inside_the_bounds_included_are_accepted(offset: int) -> None:
    ReplayGuard(WINDOW, future_ms=FUTURE).check(ident(1), NOW + offset, NOW, sender=A)


@pytest.mark.parametrize("offset", [-WINDOW - 1, FUTURE + 1, WINDOW, WINDOW + 1, -NOW, 2**64])
def test_timestamps_outside_the_bounds_are_stale(offset: int) -> None:
    guard = ReplayGuard(WINDOW, future_ms=FUTURE)
    with pytest.raises(StaleTimestamp):
        guard.check(ident(1), NOW + offset, NOW, sender=A)
    assert len(guard) == 0


def test_a_message_dated_ahead_says_so() -> None:
    with pytest.raises(StaleTimestamp, match="ahead of now"):
        ReplayGuard().check(ident(1), NOW + 60_000, NOW, sender=A)


def test_an_id_is_remembered_until_its_timestamp_leaves_the_window() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check(ident(1), NOW, NOW, sender=A)
    with pytest.raises(Replayed):
        guard.check(ident(1), NOW, NOW + WINDOW, sender=A)  # the last moment it is fresh
    with pytest.raises(StaleTimestamp):
        guard.check(ident(1), NOW, NOW + WINDOW + 1, sender=A)


def test_ids_are_forgotten_once_their_window_has_passed() -> None:
    guard = ReplayGuard(WINDOW)
    for n in range(100):
        guard.check(ident(n), NOW + n, NOW + n, sender=A)
    guard.check(ident(1000), NOW + WINDOW + 50, NOW + WINDOW + 50, sender=A)
    assert len(guard) == 51  # ids 50..99 and the new one


def test_expiry_follows_timestamps_not_arrival_order() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check(ident(0), NOW + FUTURE, NOW, sender=A)  # a clock a little ahead
    for n in range(1, 50):
        guard.check(ident(n), NOW, NOW, sender=A)
    guard.check(ident(50), NOW - 60_000, NOW, sender=A)  # delayed, arrives last
    guard.check(ident(99), NOW + WINDOW + 1, NOW + WINDOW + 1, sender=A)
    assert len(guard) == 2  # the ids stamped NOW or earlier left; the one ahead did not


def test_the_capacity_bound_never_lets_an_evicted_id_back_in() -> None:
    guard = ReplayGuard(WINDOW, capacity=4)
    accepted = []
    for n in range(10):
        guard.check(ident(n), NOW + n, NOW + n, sender=A)
        accepted.append((ident(n), NOW + n))
        assert len(guard) <= 4
    for now in (NOW + 10, NOW + WINDOW // 2, NOW + WINDOW):
        for msg_id, ts in accepted:
            with pytest.raises((Replayed, StaleTimestamp)):
                guard.check(msg_id, ts, now, sender=A)


def test_overflow_does_not_lock_out_traffic_because_of_one_message_dated_ahead() -> None:
    guard = ReplayGuard(WINDOW, capacity=3)
    guard.check(ident(0), NOW + FUTURE, NOW, sender=A)
    for n in range(1, 4):
        guard.check(ident(n), NOW + n, NOW + n, sender=A)  # overflows: the oldest ts goes
    guard.check(ident(10), NOW + 10, NOW + 10, sender=A)
    with pytest.raises(Replayed):
        guard.check(ident(0), NOW + FUTURE, NOW + 10, sender=A)


# ---- one cache per sender --------------------------------------------------------------


def test_each_sender_has_its_own_ids() -> None:
    guard = ReplayGuard()
    guard.check(ident(1), NOW, NOW, sender=A)
    guard.check(ident(1), NOW, NOW, sender=B)  # the same id from another key: not a replay
    with pytest.raises(Replayed):
        guard.check(ident(1), NOW, NOW, sender=B)
    assert (len(guard), guard.senders()) == (2, 2)


def test_a_flooding_sender_evicts_only_its_own_ids() -> None:
    """The attack of issue 9: one member fills the cache with messages dated as far ahead
    as it may. Its own floor rises; the other sender's ids stay and its fresh messages
    pass, while its remembered ones are still caught."""
    guard = ReplayGuard(WINDOW, capacity=100, future_ms=FUTURE)
    guard.check(ident(0), NOW - 1_000, NOW, sender=B)
    refused = 0
    for n in range(1_000):
        try:
            guard.check(ident(10_000 + n), NOW + FUTURE, NOW, sender=A)
        except StaleTimestamp:
            refused += 1
    assert refused == 1_000 - 101  # its cache held 100, then its floor passed its dates
    assert guard.floor_ms(A) == NOW + FUTURE + 1
    assert guard.floor_ms(B) == 0
    for n in range(1, 200):  # B sends as usual, past its own capacity only in count
        guard.check(ident(n), NOW + n, NOW + n, sender=B)
    with pytest.raises(StaleTimestamp):  # the flooder refused its own later messages
        guard.check(ident(20_000), NOW + 300, NOW + 300, sender=A)
    with pytest.raises((Replayed, StaleTimestamp)):  # and B's first message still caught
        guard.check(ident(0), NOW - 1_000, NOW + 300, sender=B)


def test_when_a_senders_cache_is_full_only_that_sender_is_refused() -> None:
    guard = ReplayGuard(WINDOW, capacity=3)
    for n in range(4):
        guard.check(ident(n), NOW, NOW, sender=A)
    with pytest.raises(StaleTimestamp, match="this sender"):
        guard.check(ident(9), NOW, NOW, sender=A)
    guard.check(ident(9), NOW, NOW, sender=B)
    guard.check(ident(10), NOW + 1, NOW + 1, sender=A)  # newer than its floor: fine


def test_admit_remembers_nothing_until_remember() -> None:
    guard = ReplayGuard()
    guard.admit(ident(1), NOW, NOW, sender=A)
    guard.admit(ident(1), NOW, NOW, sender=A)
    assert len(guard) == 0
    guard.remember(ident(1), NOW, sender=A)
    with pytest.raises(Replayed):
        guard.admit(ident(1), NOW, NOW, sender=A)


def test_a_quiet_sender_is_forgotten_once_its_ids_expired() -> None:
    guard = ReplayGuard(WINDOW, capacity=2)
    for n in range(5):  # overflows, so A has a floor
        guard.check(ident(n), NOW + n, NOW + n, sender=A)
    guard.check(ident(0), NOW, NOW, sender=B)
    later = NOW + 2 * WINDOW + 10
    guard.check(ident(1), later, later, sender=B)
    assert guard.senders() == 1  # A's cache is gone, B's holds its new id
    assert guard.floor_ms(A) == 0
    for n in range(5):  # and A's old messages are still refused, by the window
        with pytest.raises(StaleTimestamp):
            guard.check(ident(n), NOW + n, later, sender=A)


def test_window_capacity_and_future_must_be_sensible() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(window_ms=0)
    with pytest.raises(ValueError):
        ReplayGuard(capacity=0)
    with pytest.raises(ValueError):
        ReplayGuard(future_ms=-1)
    with pytest.raises(ValueError):
        ReplayGuard(window_ms=1_000, future_ms=1_001)
    assert ReplayGuard(future_ms=0).future_ms == 0


# ---- properties --------------------------------------------------------------------------

# An operation: after the clock advanced by `step` ms, sender `who` delivers the message
# (id, ts offset).
operations = st.lists(
    st.tuples(
        st.sampled_from([A, B]),
        st.integers(0, 12),
        st.integers(-2 * WINDOW // 1000, 2 * WINDOW // 1000).map(lambda s: s * 1000),
        st.sampled_from([0, 0, 1, 500, 10_000, 45_000, WINDOW, 2 * WINDOW]),
    ),
    max_size=80,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 6), st.sampled_from([0, FUTURE, WINDOW]))
def test_no_message_is_ever_accepted_twice(
    ops: list[tuple[bytes, int, int, int]], capacity: int, future: int
) -> None:
    """A replay carries the same (kid, id, ts); with a clock that does not go back, it
    never passes twice, whatever the capacity, the senders and forgotten senders."""
    guard = ReplayGuard(WINDOW, capacity=capacity, future_ms=future)
    now = NOW
    accepted: set[tuple[bytes, int, int]] = set()
    for who, n, ts_offset, step in ops:
        now += step
        ts = NOW + ts_offset
        try:
            guard.check(ident(n), ts, now, sender=who)
        except ProtocolError:
            continue
        assert (who, n, ts) not in accepted
        accepted.add((who, n, ts))
        assert len(guard) <= capacity * 2


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(-WINDOW, FUTURE), st.integers(0, 5_000)), max_size=60),
    st.lists(st.integers(-WINDOW, FUTURE), max_size=300),
)
def test_below_its_capacity_every_fresh_id_of_a_sender_is_accepted_whatever_others_send(
    ops: list[tuple[int, int]], flood: list[int]
) -> None:
    guard = ReplayGuard(WINDOW, capacity=100, future_ms=FUTURE)
    now = NOW
    flood_ids = iter(range(10**6, 2 * 10**6))
    for n, (ts_offset, step) in enumerate(ops):
        now += step
        for offset in flood[n * 5 : (n + 1) * 5]:
            try:  # the flooder overflows its own cache over and over
                guard.check(ident(next(flood_ids)), now + offset, now, sender=A)
            except StaleTimestamp:
                pass
        guard.check(ident(n), now + ts_offset, now, sender=B)
