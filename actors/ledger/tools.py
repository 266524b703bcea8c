"""The ledger tools as the orchestrator's model sees them: its balance, paying a peer,
rating one, and what the ledger says of a peer. Each asks the entity's ledger actor.

Only the operator's turns are offered them (actors/turn_scope.py): a peer's turn never
spends or rates in this entity's name.
"""

from __future__ import annotations

from typing import Any

from entityd import Context, EntitydError

from ..agent.toolbox import Tool, ToolFailed, integer, schema
from .messages import (
    Balance,
    BalanceGet,
    LedgerResult,
    Pay,
    RatePeer,
    ReputationGet,
    ReputationInfo,
)


def render_result(result: LedgerResult) -> str:
    return f"[{result.code}] {result.text}" + (f" (entry {result.id})" if result.id else "")


def render_reputation(known: ReputationInfo) -> str:
    if not known.tasks:
        return f"{known.account}: no ratings yet (no settled, rated task)"
    return (f"{known.account}: {known.score:.2f} of 5 from {known.tasks} rated task(s), "
            f"{known.weight} settled in all")


class LedgerTools:
    def __init__(self, ctx: Context, timeout: float) -> None:
        self.ctx = ctx
        self.timeout = timeout

    async def _ask(self, message: object) -> Any:
        try:
            return await self.ctx.ask(f"{self.ctx.entity}/ledger", message, self.timeout)
        except EntitydError as exc:
            raise ToolFailed(str(exc)) from None

    def tools(self) -> list[Tool]:
        peer = {"peer": "the peer entity's name, e.g. entity-b"}
        return [
            Tool("check_balance", "Your balance in the federation's ledger: what you may "
                 "pay or put in escrow now, and what is held in escrow for tasks you "
                 "delegated.", schema({}), self.balance),
            Tool("pay_peer", "Pay a peer at once from your balance (final: there is no "
                 "undo). For work you delegate, prefer delegate_to_peer with a price: the "
                 "money is held in escrow and paid only when you accept the delivery.",
                 schema({**peer, "amount": "a whole number, at most your balance",
                         "memo": "what the payment is for"}, types={"amount": "integer"}),
                 self.pay),
            Tool("rate_peer", "Rate a peer 1..5 for a delegated task whose escrow was "
                 "settled between you (once per task).",
                 schema({**peer, "task": "the task id", "score": "1 (bad) .. 5 (excellent)"},
                        {"note": "why"}, types={"score": "integer"}), self.rate),
            Tool("peer_reputation", "What the ledger's ratings say of a peer, weighed by "
                 "the money its rated tasks settled.", schema(peer), self.reputation),
        ]

    async def balance(self, args: dict[str, Any]) -> str:
        balance: Balance = await self._ask(BalanceGet())
        return (f"{balance.available} available, {balance.held} held in escrow "
                f"({balance.entries} entries on your chain)")

    async def pay(self, args: dict[str, Any]) -> str:
        return render_result(await self._ask(Pay(
            str(args["peer"]), integer(args["amount"], "amount"), str(args["memo"]))))

    async def rate(self, args: dict[str, Any]) -> str:
        return render_result(await self._ask(RatePeer(
            str(args["peer"]), str(args["task"]), integer(args["score"], "score"),
            str(args.get("note", "")))))

    async def reputation(self, args: dict[str, Any]) -> str:
        return render_reputation(await self._ask(ReputationGet(str(args["peer"]))))

