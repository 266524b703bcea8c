"""Answering the verification challenge Moltbook may attach to a new post or comment, and
counting the failures in a row.

Documented: the creating call's answer carries `verification_required: true` and, under
the content (`post.verification`, `comment.verification`), `verification_code`,
`challenge_text`, `expires_at` (5 minutes) and `instructions`; the answer goes to
POST /verify as {"verification_code", "answer"} (a string, two decimals). Success is
{"success": true, ...}; a wrong answer {"success": false, "error": "Incorrect answer"};
410 expired, 404 unknown code, 409 already used. "If your last 10 challenge attempts are
all failures (expired or incorrect), your account will be automatically suspended." So
after STOP_AFTER failures in a row this entity stops posting and commenting until the
operator resets the count (`entityctl moltbook reset`); a success resets it too.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from .challenge import Unsolvable, solve
from .client import MoltbookClient
from .errors import MoltbookError, Refused
from .state import StateFile

STOP_AFTER = 3
SUSPENDED_AT = 10  # Moltbook's: failures in a row that suspend the account
DEFAULT_WINDOW_S = 300.0  # "You have 5 minutes to solve it"


@dataclass(frozen=True)
class Challenge:
    code: str
    text: str
    expires_at: float  # wall clock


def find_challenge(data: dict[str, Any], kind: str, now: float) -> Challenge | None:
    """The challenge in the answer to creating a `kind` (post, comment), or None when the
    content was published at once (a trusted agent). Also read: the older shape, a
    top-level `verification` with `code` and `challenge`."""
    places: list[Any] = [data.get(kind), data.get("data"), data]
    found: dict[str, Any] | None = None
    for place in places:
        if isinstance(place, dict) and isinstance(place.get("verification"), dict):
            found = place["verification"]
            break
    if found is None:
        if data.get("verification_required") is True:
            return Challenge("", "", now)  # asked for, but in no shape we know: a failure
        return None
    code = found.get("verification_code") or found.get("code") or ""
    text = found.get("challenge_text") or found.get("challenge") or ""
    return Challenge(str(code), str(text), _expiry(found.get("expires_at"), now))


def _expiry(value: Any, now: float) -> float:
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            pass
    return now + DEFAULT_WINDOW_S


class Verification:
    """The count of failures in a row, kept in the state file."""

    def __init__(self, store: StateFile, clock: Callable[[], float] = time.time) -> None:
        self.store = store
        self.clock = clock

    @property
    def failures(self) -> int:
        return self.store.state.failures

    def refusal(self) -> str | None:
        """Why posting and commenting are stopped, or None."""
        state = self.store.state
        if state.failures < STOP_AFTER:
            return None
        return (f"posting and commenting on Moltbook are stopped: {state.failures} "
                f"verification challenges failed in a row (the last: {state.last_failure}). "
                f"Moltbook suspends an account after {SUSPENDED_AT} in a row, so the "
                "operator must check (`entityctl moltbook status`) and then reset the count "
                "(`entityctl moltbook reset`)")

    def reset(self) -> int:
        before = self.store.state.failures
        self.store.state.failures = 0
        self.store.state.last_failure = ""
        self.store.save(self.clock())
        return before

    def _failed(self, why: str) -> None:
        self.store.state.failures += 1
        self.store.state.last_failure = why[:300]
        self.store.save(self.clock())

    async def answer(self, client: MoltbookClient, challenge: Challenge, kind: str) -> str:
        """Solve and submit `challenge` within its window; a note for the tool's answer
        on success, Refused saying what failed (and the count) otherwise."""
        why = await self._attempt(client, challenge)
        if why is None:
            self.reset()
            return f"Moltbook's verification challenge was answered; the {kind} is published"
        self._failed(why)
        count = self.store.state.failures
        message = (f"Moltbook's verification of the {kind} failed: {why}. The {kind} stays "
                   f"hidden. Failures in a row: {count}")
        stopped = self.refusal()
        if stopped:
            raise Refused(f"{message}. {stopped}")
        raise Refused(f"{message}; after {STOP_AFTER} this entity stops posting and "
                      f"commenting (Moltbook suspends an account after {SUSPENDED_AT})")

    async def _attempt(self, client: MoltbookClient, challenge: Challenge) -> str | None:
        if not challenge.code or not challenge.text:
            return "the answer asked for verification in a shape this client does not know"
        try:
            answer = solve(challenge.text)
        except Unsolvable as exc:
            return f"the challenge was not understood ({exc})"
        if self.clock() >= challenge.expires_at:
            return "the challenge expired before it could be answered"
        try:
            reply = await client.call("POST", "/verify", "POST /verify", body={
                "verification_code": challenge.code, "answer": answer})
        except MoltbookError as exc:
            return str(exc)
        if reply.data.get("success") is False:
            return str(reply.data.get("error") or "Moltbook refused the answer")
        return None
