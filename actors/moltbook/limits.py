"""Our side of Moltbook's documented rate limits, enforced before anything is sent.

- Requests: at most `requests_per_minute` in any 60 s, counted from when each answer came
  back (so the server, which counts arrivals, never sees more). A burst waits for a slot;
  nothing is sent past the limit. This is a sliding window rather than a token bucket of
  the same rate on purpose: a bucket holding a minute's tokens lets twice the limit
  through within one minute (a full bucket, then its refill).
- Posts: one per `post_interval` s; a post before that is refused with the time left.
- Comments: one per `comment_interval` s (a comment asked for sooner waits, up to
  COMMENT_WAIT_MAX s), and `comments_per_day` in any 24 h (past them: refused).
- An account younger than 24 h (or whose age Moltbook has not told us yet) is held to
  Moltbook's stricter first-day limits: posts 1 per 2 h, comments 1 per 60 s and 20 a day,
  no DMs. They are kept as ratios of the established limits (x4, x3, x0.4), so the
  defaults give exactly the documented numbers and a configuration that lowers the
  limits (a test's) lowers the first-day ones alike.

Posts and comments are counted from when Moltbook's answer came back (recorded when they
are sent, in case the daemon dies meanwhile). The times of the last post and of the day's
comments live in the state file, so a restart resets nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from .state import DAY_S, StateFile

NEW_ACCOUNT_S = DAY_S
NEW_POST_FACTOR = 7200 / 1800  # "Posts: 1 per 2 hours" against "1 per 30 min"
NEW_COMMENT_FACTOR = 60 / 20  # "60 sec cooldown" against "20 sec cooldown"
NEW_DAILY_FACTOR = 20 / 50  # "20/day" against "50/day"
COMMENT_WAIT_MAX = 120.0  # a comment waits this long for its interval, else is refused


@dataclass
class Slot:
    waited: float = 0.0  # seconds spent waiting for it


class RequestPacer:
    """At most `limit` requests in any `window` seconds, each counted until `window`
    seconds after its answer came back; a request beyond that waits its turn (in order)."""

    def __init__(self, limit: int, window: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.limit = max(1, limit)
        self.window = window
        self.clock = clock
        self._done: deque[float] = deque()  # when each answer came back, oldest first
        self._in_flight = 0
        self._turn = asyncio.Lock()  # the next request to go: first come, first served
        self._changed = asyncio.Condition()

    @contextlib.asynccontextmanager
    async def slot(self) -> AsyncIterator[Slot]:
        slot = Slot()
        started = self.clock()
        async with self._turn:
            async with self._changed:
                while True:
                    now = self.clock()
                    while self._done and self._done[0] <= now - self.window:
                        self._done.popleft()
                    if len(self._done) + self._in_flight < self.limit:
                        self._in_flight += 1
                        break
                    wait = (self._done[0] + self.window - now) if self._done else None
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(wait):
                            await self._changed.wait()
        slot.waited = self.clock() - started
        try:
            yield slot
        finally:
            async with self._changed:
                self._in_flight -= 1
                self._done.append(self.clock())
                self._changed.notify_all()


@dataclass(frozen=True)
class Effective:
    """The limits that apply now."""

    post_interval: float
    comment_interval: float
    comments_per_day: int
    new_account: bool


class ActionLimits:
    """Posts and comments against the configured limits and the state file."""

    def __init__(self, store: StateFile, post_interval: float, comment_interval: float,
                 comments_per_day: int, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.post_interval = post_interval
        self.comment_interval = comment_interval
        self.comments_per_day = comments_per_day
        self.clock = clock

    def new_account(self, now: float) -> bool:
        created = self.store.state.account_created
        return created is None or now - created < NEW_ACCOUNT_S

    def effective(self, now: float) -> Effective:
        if not self.new_account(now):
            return Effective(self.post_interval, self.comment_interval,
                             self.comments_per_day, False)
        return Effective(self.post_interval * NEW_POST_FACTOR,
                         self.comment_interval * NEW_COMMENT_FACTOR,
                         max(1, math.floor(self.comments_per_day * NEW_DAILY_FACTOR)), True)

    def post_wait(self, now: float) -> float:
        """Seconds until a post is allowed (0: now)."""
        posts = self.store.state.posts
        if not posts:
            return 0.0
        return max(0.0, posts[-1] + self.effective(now).post_interval - now)

    def comment_wait(self, now: float) -> tuple[float, bool]:
        """Seconds until a comment is allowed, and whether it is the daily cap (no use
        waiting in a call) rather than the interval."""
        limits = self.effective(now)
        day = [t for t in self.store.state.comments if t > now - DAY_S]
        if len(day) >= limits.comments_per_day:
            return day[-limits.comments_per_day] + DAY_S - now, True
        if not day:
            return 0.0, False
        return max(0.0, day[-1] + limits.comment_interval - now), False

    def why_no_post(self, now: float, wait: float) -> str:
        limits = self.effective(now)
        return (f"Moltbook allows one post per {_duration(limits.post_interval)}"
                f"{_first_day(limits)}; the last was {_duration(now - self.store.state.posts[-1])}"
                f" ago, so the next post is allowed in {_duration(wait)}")

    def why_no_comment(self, now: float, wait: float, daily: bool) -> str:
        limits = self.effective(now)
        if daily:
            return (f"Moltbook allows {limits.comments_per_day} comments a day"
                    f"{_first_day(limits)} and this entity made them within the last 24 h; "
                    f"the next comment is allowed in {_duration(wait)}")
        return (f"Moltbook allows one comment per {_duration(limits.comment_interval)}"
                f"{_first_day(limits)}; the next is allowed in {_duration(wait)}")

    def record(self, kind: str, when: float) -> None:
        (self.store.state.posts if kind == "post" else self.store.state.comments).append(when)
        self.store.save(self.clock())

    def settle(self, kind: str, sent: float, refused: bool) -> None:
        """After the attempt recorded at `sent`: take it back if Moltbook certainly refused
        it (a 4xx but 429), else count it from now, when its answer came back (never
        before Moltbook saw it, so the next one is at least an interval later there)."""
        times = self.store.state.posts if kind == "post" else self.store.state.comments
        if sent in times:
            times.remove(sent)
        if not refused:
            times.append(self.clock())
            times.sort()
        self.store.save(self.clock())

    def describe(self, now: float) -> dict[str, object]:
        limits = self.effective(now)
        post_wait = self.post_wait(now)
        comment_wait, daily = self.comment_wait(now)
        state = self.store.state
        return {
            "new_account": limits.new_account,
            "account_created": state.account_created,
            "post_interval_s": limits.post_interval,
            "comment_interval_s": limits.comment_interval,
            "comments_per_day": limits.comments_per_day,
            "last_post": state.posts[-1] if state.posts else None,
            "next_post_in_s": round(post_wait, 1),
            "comments_last_24h": len([t for t in state.comments if t > now - DAY_S]),
            "next_comment_in_s": round(comment_wait, 1),
            "comments_capped": daily,
        }


def _first_day(limits: Effective) -> str:
    return " (stricter in an account's first 24 h)" if limits.new_account else ""


def _duration(seconds: float) -> str:
    seconds = max(0.0, seconds)
    if seconds < 120:
        return f"{math.ceil(seconds)} s"
    minutes = math.ceil(seconds / 60)
    if minutes < 120:
        return f"{minutes} min"
    return f"{minutes // 60} h {minutes % 60} min"
