"""ReplayGuard: each id once inside ±window, bounded memory that never forgets unsafely."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from protocol import Replayed, ReplayGuard, StaleTimestamp
from protocol.errors import ProtocolError

NOW = 1_767_225_600_000
WINDOW = 90_000


def ident(n: int) -> bytes:
    return n.to_bytes(16, "big")


def test_an_id_is_accepted_once() -> None:
    guard = ReplayGuard()
    guard.check(ident(1), NOW, NOW)
    with pytest.raises(Replayed):
        guard.check(ident(1), NOW, NOW)
    guard.check(ident(2), NOW, NOW)
    assert len(guard) == 2


def test_the_default_window_is_90_seconds() -> None:
    assert ReplayGuard().window_ms == 90_000


@pytest.mark.parametrize("offset", [-WINDOW, 0, WINDOW])
def test_timestamps_inside_the_window_bounds_included_are_accepted(offset: int) -> None:
    ReplayGuard(WINDOW).check(ident(1), NOW + offset, NOW)


@pytest.mark.parametrize("offset", [-WINDOW - 1, WINDOW + 1, -NOW])
def test_timestamps_outside_the_window_are_stale(offset: int) -> None:
    guard = ReplayGuard(WINDOW)
    with pytest.raises(StaleTimestamp):
        guard.check(ident(1), NOW + offset, NOW)
    assert len(guard) == 0


def test_an_id_is_remembered_until_its_timestamp_leaves_the_window() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check(ident(1), NOW, NOW)
    with pytest.raises(Replayed):
        guard.check(ident(1), NOW, NOW + WINDOW)  # the last moment the timestamp is fresh
    with pytest.raises(StaleTimestamp):
        guard.check(ident(1), NOW, NOW + WINDOW + 1)


def test_ids_are_forgotten_once_their_window_has_passed() -> None:
    guard = ReplayGuard(WINDOW)
    for n in range(100):
        guard.check(ident(n), NOW + n, NOW + n)
    guard.check(ident(1000), NOW + WINDOW + 50, NOW + WINDOW + 50)
    assert len(guard) == 51  # ids 50..99 and the new one


def test_expiry_follows_timestamps_not_arrival_order() -> None:
    guard = ReplayGuard(WINDOW)
    guard.check(ident(0), NOW + 60_000, NOW)  # from a peer whose clock runs 60 s ahead
    for n in range(1, 50):
        guard.check(ident(n), NOW, NOW)
    guard.check(ident(99), NOW + WINDOW + 1, NOW + WINDOW + 1)
    assert len(guard) == 2  # the ids stamped NOW left the window; the skewed one did not


def test_the_capacity_bound_never_lets_an_evicted_id_back_in() -> None:
    guard = ReplayGuard(WINDOW, capacity=4)
    accepted = []
    for n in range(10):
        guard.check(ident(n), NOW + n, NOW + n)
        accepted.append((ident(n), NOW + n))
        assert len(guard) <= 4
    for now in (NOW + 10, NOW + WINDOW // 2, NOW + WINDOW):
        for msg_id, ts in accepted:
            with pytest.raises((Replayed, StaleTimestamp)):
                guard.check(msg_id, ts, now)


def test_overflow_does_not_lock_out_traffic_because_of_one_clock_running_ahead() -> None:
    guard = ReplayGuard(WINDOW, capacity=3)
    guard.check(ident(0), NOW + 80_000, NOW)  # 80 s ahead, inside the window
    for n in range(1, 4):
        guard.check(ident(n), NOW + n, NOW + n)  # overflows: the oldest timestamp goes
    guard.check(ident(10), NOW + 10, NOW + 10)
    with pytest.raises(Replayed):
        guard.check(ident(0), NOW + 80_000, NOW + 10)


def test_window_and_capacity_must_be_positive() -> None:
    with pytest.raises(ValueError):
        ReplayGuard(window_ms=0)
    with pytest.raises(ValueError):
        ReplayGuard(capacity=0)


# An operation: deliver the message (id, ts offset) after the clock advanced by `step` ms.
operations = st.lists(
    st.tuples(
        st.integers(0, 12),
        st.integers(-2 * WINDOW // 1000, 2 * WINDOW // 1000).map(lambda s: s * 1000),
        st.sampled_from([0, 0, 1, 500, 10_000, 45_000, WINDOW]),
    ),
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(operations, st.integers(1, 6))
def test_no_message_is_ever_accepted_twice(ops: list[tuple[int, int, int]], capacity: int) -> None:
    """A replay carries the same (id, ts); with a clock that does not go back, it never
    passes twice, whatever the capacity."""
    guard = ReplayGuard(WINDOW, capacity=capacity)
    now = NOW
    accepted: set[tuple[int, int]] = set()
    for n, ts_offset, step in ops:
        now += step
        ts = NOW + ts_offset
        try:
            guard.check(ident(n), ts, now)
        except ProtocolError:
            continue
        assert (n, ts) not in accepted
        accepted.add((n, ts))
        assert len(guard) <= capacity


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(-WINDOW, WINDOW), st.integers(0, 5_000)), max_size=60))
def test_below_capacity_every_fresh_id_inside_the_window_is_accepted(
    ops: list[tuple[int, int]],
) -> None:
    guard = ReplayGuard(WINDOW)
    now = NOW
    for n, (ts_offset, step) in enumerate(ops):
        now += step
        guard.check(ident(n), now + ts_offset, now)
