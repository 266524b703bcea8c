"""The five peer tools (and helpers: the peer list, the delegated tasks and settling a
delivery) as the orchestrator's model sees them; each asks the entity's own peer actor,
which does the federation work. Only the operator's turns may put a price on a task."""

from __future__ import annotations

from typing import Any

from entityd import Context, EntitydError, PeersSection

from ..agent.toolbox import Tool, ToolFailed, integer, schema
from ..ledger.messages import ReputationGet, ReputationInfo
from .messages import (
    PeerCheck,
    PeerCheckResult,
    PeerDelegate,
    PeerOutcome,
    PeerReport,
    PeerRestart,
    Peers,
    PeersGet,
    PeerTalk,
    PeerWake,
    Tasks,
    TaskSettle,
    TasksGet,
)

MARGIN_S = 10.0  # on top of the peer actor's own timeouts, so its answer comes first
REPUTATION_S = 3.0  # what list_peers waits for the ledger's view of each peer


def render_outcome(outcome: PeerOutcome) -> str:
    latency = f", {outcome.latency_ms:.0f} ms" if outcome.latency_ms else ""
    return f"[{outcome.code}{latency}] {outcome.text}"


def render_check(result: PeerCheckResult) -> str:
    latency = f" ({result.latency_ms:.1f} ms)" if result.state == "alive" else ""
    return f"{result.peer}: {result.state}{latency}. {result.detail}"


def render_peers(peers: Peers, reputations: dict[str, str] | None = None) -> str:
    if not peers.peers:
        return "(no peers known yet)"
    reputations = reputations or {}
    return "\n".join(
        f"{p.name}: {'present' if p.present else 'absent'}, may {', '.join(p.trust) or 'nothing'}"
        f", offers {', '.join(p.capabilities) or 'nothing'}"
        + (f"; rated {reputations[p.name]}" if p.name in reputations else "")
        for p in peers.peers)


def render_tasks(tasks: Tasks) -> str:
    if not tasks.tasks:
        return "(no delegated tasks)"
    return "\n".join(
        f"{t.task_id} {'to' if t.direction == 'out' else 'from'} {t.peer}: [{t.state}] {t.title}"
        + (f" (branch {t.branch})" if t.branch else "")
        + (f" (price {t.price}, {t.money})" if t.price else "")
        + (f" - {t.note[:200]}" if t.note else "")
        for t in tasks.tasks)


class PeerTools:
    def __init__(self, ctx: Context, settings: PeersSection, *, may_pay: bool = False,
                 ledger_timeout: float = 10.0) -> None:
        self.ctx = ctx
        self.settings = settings
        self.may_pay = may_pay  # the operator's turn: its delegations may carry a price
        self.ledger_timeout = ledger_timeout

    async def _ask(self, message: object, timeout: float) -> Any:
        try:
            return await self.ctx.ask(f"{self.ctx.entity}/peer", message, timeout + MARGIN_S)
        except EntitydError as exc:
            raise ToolFailed(str(exc)) from None

    def tools(self) -> list[Tool]:
        peer = {"peer": "the peer entity's name, e.g. entity-b"}
        return [
            Tool("list_peers", "List the entities you know in the federation.", schema({}),
                 self.list_peers),
            Tool("check_peer_alive", "Check whether a peer is alive: its heartbeat and a "
                 "signed ping. Returns alive, unresponsive or unknown, with latency.",
                 schema(peer), self.check),
            Tool("talk_to_peer", "Say something to a peer and wait for its answer.",
                 schema({**peer, "text": "what to say"}), self.talk),
            Tool("report_to_peer", "Send a peer a report (fire and forget; it is kept until "
                 "the peer has it, even if the peer is down now).",
                 schema({**peer, "text": "the report"}), self.report),
            Tool("wake_up_peer", "Wake a peer so it works on its todo list (no-op if busy).",
                 schema(peer, {"reason": "why"}), self.wake),
            Tool("restart_peer", "Ask a peer to restart one of its actors, or all of them.",
                 schema(peer, {"actor": "the actor's name; empty for all"}), self.restart),
            Tool("delegate_to_peer", "Delegate a task to a peer. Coding work comes back as "
                 "a branch delegated/<task id> in your workspace."
                 + (" With a price, that much of your balance is held in escrow until you "
                    "accept the delivery (accept_delivery pays it) or reject it or the "
                    "deadline passes (it comes back to you); check_balance and "
                    "peer_reputation help you choose." if self.may_pay else ""),
                 schema({**peer, "title": "short title", "description": "what to do and "
                         "how to check it"},
                        {"deliverables": "what to hand back",
                         **({"price": "what you pay for it (0: unpaid)"} if self.may_pay
                            else {})},
                        types={"price": "integer"}),
                 self.delegate),
            Tool("delegated_tasks", "Show the tasks delegated to and from you, with state.",
                 schema({}), self.tasks),
            *([Tool("accept_delivery", "Accept a delivered task you delegated: its escrow "
                    "pays the peer (the whole price, or the amount you give).",
                    schema({"task": "the task id"}, {"amount": "pay only this much"},
                           types={"amount": "integer"}), self.accept),
               Tool("reject_delivery", "Reject a delivered task you delegated: its escrow "
                    "comes back to you; say why.",
                    schema({"task": "the task id", "reason": "what is wrong with it"}),
                    self.reject)] if self.may_pay else []),
        ]

    async def list_peers(self, args: dict[str, Any]) -> str:
        peers: Peers = await self._ask(PeersGet(), 0)
        if not self.may_pay:
            return render_peers(peers)
        reputations = {}  # the operator's turn, choosing whom to pay, sees their ratings
        for peer in peers.peers:
            try:
                known: ReputationInfo = await self.ctx.ask(
                    f"{self.ctx.entity}/ledger", ReputationGet(peer.name), REPUTATION_S)
            except EntitydError:
                break  # no ledger now: the list without ratings
            reputations[peer.name] = (f"{known.score:.1f}/5 over {known.tasks} paid task(s)"
                                      if known.tasks else "by no one yet")
        return render_peers(peers, reputations)

    async def check(self, args: dict[str, Any]) -> str:
        result: PeerCheckResult = await self._ask(PeerCheck(str(args["peer"])),
                                                  self.settings.ping_timeout)
        return render_check(result)

    async def talk(self, args: dict[str, Any]) -> str:
        outcome: PeerOutcome = await self._ask(
            PeerTalk(str(args["peer"]), str(args["text"])), self.settings.talk_timeout)
        return render_outcome(outcome)

    async def report(self, args: dict[str, Any]) -> str:
        return render_outcome(await self._ask(PeerReport(str(args["peer"]), str(args["text"])),
                                              self.settings.command_timeout))

    async def wake(self, args: dict[str, Any]) -> str:
        return render_outcome(await self._ask(
            PeerWake(str(args["peer"]), str(args.get("reason", ""))),
            self.settings.command_timeout))

    async def restart(self, args: dict[str, Any]) -> str:
        return render_outcome(await self._ask(
            PeerRestart(str(args["peer"]), str(args.get("actor", ""))),
            self.settings.command_timeout))

    async def delegate(self, args: dict[str, Any]) -> str:
        price = integer(args.get("price", 0), "price") if self.may_pay else 0
        return render_outcome(await self._ask(PeerDelegate(
            str(args["peer"]), str(args["title"]), str(args["description"]),
            str(args.get("deliverables", "")), price=price), self.ledger_timeout))

    async def accept(self, args: dict[str, Any]) -> str:
        return render_outcome(await self._ask(TaskSettle(
            str(args["task"]), True, integer(args.get("amount", 0), "amount")),
            self.ledger_timeout))

    async def reject(self, args: dict[str, Any]) -> str:
        return render_outcome(await self._ask(TaskSettle(
            str(args["task"]), False, reason=str(args["reason"])), self.ledger_timeout))

    async def tasks(self, args: dict[str, Any]) -> str:
        return render_tasks(await self._ask(TasksGet(), 0))
