"""Budgets that stop a runaway agent loop: tokens per sliding hour, steps per turn."""

from __future__ import annotations

import time
from collections import deque
from collections.abc import Callable

from .errors import BudgetExhausted

WINDOW_S = 3600.0


class TokenBudget:
    """At most `max_tokens_per_hour` tokens spent within any sliding hour."""

    def __init__(
        self, max_tokens_per_hour: int, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        if max_tokens_per_hour <= 0:
            raise ValueError(f"max_tokens_per_hour must be positive, got {max_tokens_per_hour}")
        self.limit = max_tokens_per_hour
        self._clock = clock
        self._spent: deque[tuple[float, int]] = deque()
        self._total = 0

    def __repr__(self) -> str:
        return f"TokenBudget(limit={self.limit}, used={self.used()})"

    def _expire(self, now: float) -> None:
        while self._spent and self._spent[0][0] <= now - WINDOW_S:
            self._total -= self._spent.popleft()[1]

    def used(self) -> int:
        self._expire(self._clock())
        return self._total

    def remaining(self) -> int:
        return max(0, self.limit - self.used())

    def spend(self, tokens: int) -> None:
        if tokens < 0:
            raise ValueError(f"cannot spend a negative number of tokens ({tokens})")
        if tokens:
            now = self._clock()
            self._expire(now)
            self._spent.append((now, tokens))
            self._total += tokens

    def frees_in(self) -> float:
        """Seconds until some budget is available again (0 when some is left now)."""
        now = self._clock()
        self._expire(now)
        excess = self._total - self.limit
        if excess < 0:
            return 0.0
        for stamp, tokens in self._spent:
            excess -= tokens
            if excess < 0:
                return max(0.0, stamp + WINDOW_S - now)
        return 0.0  # unreachable: the whole window expiring frees everything

    def check(self) -> None:
        """Raise BudgetExhausted when no token is left in the current hour."""
        if self.remaining() > 0:
            return
        wait = self.frees_in()
        raise BudgetExhausted(
            "tokens",
            self.limit,
            f"token budget of {self.limit} per hour is spent; "
            f"it frees up in {_duration(wait)} (llm.max_tokens_per_hour)",
            frees_in=wait,
        )


class StepBudget:
    """At most `max_steps` LLM steps in one turn; call step() before each."""

    def __init__(self, max_steps: int) -> None:
        if max_steps <= 0:
            raise ValueError(f"max_steps must be positive, got {max_steps}")
        self.limit = max_steps
        self.used = 0

    def __repr__(self) -> str:
        return f"StepBudget(limit={self.limit}, used={self.used})"

    def remaining(self) -> int:
        return self.limit - self.used

    def step(self) -> None:
        if self.used >= self.limit:
            raise BudgetExhausted(
                "steps",
                self.limit,
                f"turn stopped after {self.limit} steps (llm.max_steps_per_turn)",
            )
        self.used += 1


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.0f} min"
