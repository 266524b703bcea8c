"""Paid delegation, the peer actor's side: the escrow of a priced task, placed, checked
and settled through the entity's own ledger actor (DESIGN.md, "The economy").

The delegator holds the price on its chain before it offers the task, until the task's
deadline; the delegate takes a priced offer only once it sees that hold on the
delegator's chain, pending, for itself, for the task and at least the price. Accepting
the delivery posts the hold (all of it, or part, the rest released); rejecting it, or
the deadline, voids it. Each of these entries has an id made from the task, so asking
again after a crash appends nothing twice.
"""

from __future__ import annotations

import hashlib

from entityd import Context, EntitydError
from protocol import reasons

from ..ledger.messages import RETRIED, HoldGet, HoldInfo, HoldPlace, HoldResolve, LedgerResult
from . import outcomes
from .messages import TaskOffer
from .store import TaskRow

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
            delegate, price, int(deadline * 1000), task_id,
            entry_id("hold", self.ctx.entity, delegate, task_id)))

    async def settle(self, task: TaskRow, amount: int, reason: str = "") -> LedgerResult:
        """Post `amount` of the task's hold to the delegate (0: void it)."""
        step = "post" if amount else "void"
        return await self._write(HoldResolve(
            task.hold, amount, reason, entry_id(step, self.ctx.entity, task.peer,
                                                task.task_id)))

    async def check(self, delegator: str, offer: TaskOffer) -> str:
        """Why a priced offer cannot be taken ('' when its hold covers it)."""
        if len(offer.hold) != 16:
            return f"the task is priced at {offer.price} but names no hold"
        try:
            hold: HoldInfo = await self.ctx.ask(self.ledger, HoldGet(delegator, offer.hold))
        except EntitydError as exc:
            return f"{self.ctx.entity} cannot read the ledger to see the escrow: {exc}"
        problem = ""
        if not hold.found:
            problem = f"no hold {offer.hold.hex()} is on {delegator}'s chain"
        elif hold.to != self.ctx.entity or hold.task != offer.task_id:
            problem = f"the hold is for {hold.to}'s task {hold.task!r}, not this one"
        elif hold.state != "pending":
            problem = f"the hold is {hold.state}"
        elif hold.amount < offer.price:
            problem = f"the hold of {hold.amount} is less than the price {offer.price}"
        elif offer.deadline and hold.expires_at < int(offer.deadline * 1000):
            problem = "the hold expires before the task's deadline"
        return problem and f"the escrow does not cover the task: {problem}"

    async def _write(self, message: object) -> LedgerResult:
        try:
            result: LedgerResult = await self.ctx.ask(self.ledger, message)
        except EntitydError as exc:
            return LedgerResult(False, outcomes.UNREACHABLE, f"the ledger: {exc}")
        return result


def settled(result: LedgerResult) -> bool:
    """Whether a ledger write took effect, now or on an earlier attempt."""
    return result.ok and result.code in (reasons.DONE, RETRIED)
