"""Paid delegation, the peer actor's side: the escrow of a priced task, placed, checked
and settled through the entity's own ledger actor (DESIGN.md, "The economy").

The delegator holds the price on its chain before it offers the task, until the task's
deadline; the delegate takes a priced offer only once it sees that hold on the
delegator's chain, pending, for itself, for the task and at least the price, expiring no
earlier than the deadline. Accepting the delivery posts the hold (all of it, or part, the
rest released); rejecting it, or the deadline, voids it. Each of these entries has an id
made from the task, so asking again after a crash appends nothing twice.

The delegator's word on its escrow (`paid`, `unpaid`) is never taken as the fact: the
delegate reads the hold again on the chain (`standing`) when told, and before it hands
over any of the work.
"""

from __future__ import annotations

import hashlib
import math
import time

from entityd import Context, EntitydError
from protocol import reasons

from ..ledger.messages import RETRIED, HoldGet, HoldInfo, HoldPlace, HoldResolve, LedgerResult
from . import outcomes
from .messages import TaskOffer
from .store import TaskRow

HOLD_ID_BYTES = 16  # a hold is named by its ledger entry's id

HELD, POSTED, VOIDED = "held", "posted", "voided"


def entry_id(step: str, delegator: str, delegate: str, task_id: str) -> bytes:
    """The id of an escrow's entry (`hold`, `post` or `void`) for a task: the same on
    every attempt."""
    return hashlib.sha256(f"{step}/{delegator}/{delegate}/{task_id}".encode()).digest()[:16]


class Escrow:
    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.ledger = f"{ctx.entity}/ledger"

    async def place(self, delegate: str, task_id: str, price: int,
                    deadline: float) -> LedgerResult:
        return await self._write(HoldPlace(
            delegate, price, deadline_ms(deadline), task_id,
            entry_id("hold", self.ctx.entity, delegate, task_id)))

    async def settle(self, task: TaskRow, amount: int, reason: str = "") -> LedgerResult:
        """Post `amount` of the task's hold to the delegate (0: void it)."""
        step = "post" if amount else "void"
        return await self._write(HoldResolve(
            task.hold, amount, reason, entry_id(step, self.ctx.entity, task.peer,
                                                task.task_id)))

    async def check(self, delegator: str, offer: TaskOffer) -> str:
        """Why a priced offer cannot be taken ('' when its hold covers it until the
        deadline)."""
        if len(offer.hold) != HOLD_ID_BYTES:
            return f"the task is priced at {offer.price} but names no hold"
        if not (math.isfinite(offer.deadline) and offer.deadline > time.time()):
            # With no end to the task, no hold could be checked to last until it.
            return (f"the task is priced at {offer.price} but has no deadline in the "
                    "future for its escrow to last until")
        try:
            hold: HoldInfo = await self.ctx.ask(self.ledger, HoldGet(delegator, offer.hold))
        except EntitydError as exc:
            return f"{self.ctx.entity} cannot read the ledger to see the escrow: {exc}"
        problem = self._uncovered(hold, delegator, offer.hold, offer.task_id, offer.price)
        if not problem and hold.expires_at < deadline_ms(offer.deadline):
            problem = (f"the hold expires at {hold.expires_at} ms, before the task's "
                       f"deadline {deadline_ms(offer.deadline)} ms")
        return problem and f"the escrow does not cover the task: {problem}"

    async def resolved(self, task: TaskRow) -> tuple[str, int]:
        """A priced task we gave, its hold as our own chain has it: (POSTED, what it
        paid), (VOIDED, 0), or (HELD, 0) while pending. EntitydError when the ledger
        cannot be read."""
        hold: HoldInfo = await self.ctx.ask(self.ledger, HoldGet(self.ctx.entity, task.hold))
        if hold.found and hold.task == task.task_id and hold.to == task.peer:
            if hold.state == "posted":
                return POSTED, hold.posted
            if hold.state in ("voided", "expired"):
                return VOIDED, 0
        return HELD, 0

    async def standing(self, task: TaskRow) -> tuple[str, str]:
        """A priced task given to us, its escrow as the delegator's chain has it now:
        (HELD, '') while its hold is pending for us, for the task and at least the price
        (so not expired), (POSTED, '') once it paid us, else (VOIDED, why). EntitydError
        when the ledger cannot be read."""
        hold: HoldInfo = await self.ctx.ask(self.ledger, HoldGet(task.peer, task.hold))
        if (hold.found and hold.state == "posted" and hold.to == self.ctx.entity
                and hold.task == task.task_id):
            return POSTED, ""
        problem = self._uncovered(hold, task.peer, task.hold, task.task_id, task.price)
        return (VOIDED, problem) if problem else (HELD, "")

    def _uncovered(self, hold: HoldInfo, delegator: str, hold_id: bytes, task_id: str,
                   price: int) -> str:
        """Why `hold` does not escrow `price` for our task `task_id` ('' when it does)."""
        if not hold.found:
            return f"no hold {hold_id.hex()} is on {delegator}'s chain"
        if hold.to != self.ctx.entity or hold.task != task_id:
            return f"the hold is for {hold.to}'s task {hold.task!r}, not this one"
        if hold.state != "pending":
            return f"the hold is {hold.state}"
        if hold.amount < price:
            return f"the hold of {hold.amount} is less than the price {price}"
        return ""

    async def _write(self, message: object) -> LedgerResult:
        try:
            result: LedgerResult = await self.ctx.ask(self.ledger, message)
        except EntitydError as exc:
            return LedgerResult(False, outcomes.UNREACHABLE, f"the ledger: {exc}")
        return result


def deadline_ms(deadline: float) -> int:
    """A task's deadline (epoch seconds) as a hold's expires_at (ms since the epoch)."""
    return int(deadline * 1000)


def settled(result: LedgerResult) -> bool:
    """Whether a ledger write took effect, now or on an earlier attempt."""
    return result.ok and result.code in (reasons.DONE, RETRIED)
