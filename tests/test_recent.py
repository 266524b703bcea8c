"""actors.recent.Recent: a bounded set that forgets the oldest."""

from __future__ import annotations

import pytest

from actors.recent import Recent


def test_it_keeps_the_last_distinct_items_and_forgets_the_oldest() -> None:
    recent: Recent[int] = Recent(3)
    for item in (1, 2, 3, 2, 4):
        recent.add(item)
    assert len(recent) == 3
    assert 1 not in recent and all(i in recent for i in (2, 3, 4))
    for item in range(100, 10_100):
        recent.add(item)
    assert len(recent) == 3 and 10_099 in recent and 4 not in recent


def test_a_capacity_below_one_is_refused() -> None:
    with pytest.raises(ValueError):
        Recent(0)
