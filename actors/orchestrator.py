"""The orchestrator: takes goals, runs one agent turn at a time, learns from each.

Goals arrive from entityctl, from autonomy ticks and (with the federation) from peers.
They are accepted at once and queued; turns run one after another in `run`. Progress
is published as events carrying the task id, ending with an `answer` event. An accepted
goal is on disk before it is acknowledged (actors/goal_store.py): after a stop or a
crash, the goals still queued are run and a turn cut short is answered with the reason.
A goal may be cancelled (`goal_cancel`, by entityctl or the actor its goal notifies): a
queued one never starts, a running turn is stopped where it is, and either is answered
with `stopped` "cancelled" (and so never run again after a restart).

Each turn has a scope (actors/turn_scope.py): whose turn it is decides the tools its model
is offered, the memory it recalls, the token budget it spends and whether its events may
carry content. A peer's goals are paid from that peer's budget, never the operator's,
and a peer may hold only a few places in the queue, so the operator always has room.
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
import uuid
from collections import Counter, OrderedDict, deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entityd import Actor, AutonomySection, EntitydError, PeersSection
from protocol import Envelope, Error, reasons

from . import prompts
from .a2a.tools import A2ATools
from .agent import AgentLoop, Step, TaskStep, Toolbox
from .agent.loop import TurnOutcome, summarize
from .agent.toolbox import Tool, ToolFailed
from .goal_store import GoalState, GoalStore
from .ledger.tools import LedgerTools
from .lessons import learn
from .llm import LLM, BudgetExhausted, Completion, LLMError
from .llm.budget import LLMSource
from .llm.cost import ModelCost
from .llm.usage import UsageMeter
from .messages import (
    Goal,
    GoalAccepted,
    GoalCancel,
    GoalCancelled,
    LogAppend,
    MemoryHits,
    MemorySearch,
    TodoItems,
    TodoList,
    TurnCancel,
    TurnDone,
    Wake,
    WakeResult,
)
from .orchestrator_tools import OrchestratorTools, render_hits, render_todos
from .peer.messages import PeerReportIn, Tasks, TasksGet
from .peer.tools import PeerTools
from .remote_tools import RemoteTools
from .services.tools import ServicesTools
from .turn_scope import DELEGATED_PREFIX, NAME, WAKE_SOURCE, TurnScope, either, payer_of

QUEUE_SIZE = 32
PEER_GOALS = 4  # talks one peer may have queued or running here at once ...
OPERATOR_ROOM = 8  # ... and places in the queue that peers' goals never take
RECALL_LIMIT = 5
REPORTS_KEPT = 20
PROMPT_BALANCE_S = 3.0  # how long a turn waits to tell its prompt the balance
AUTONOMY_WINDOW_S = 3600.0  # autonomy's turn and token budgets are per hour
FINISHED_KEPT = 256  # goals answered lately, to tell a late cancel what became of them
CANCEL_REASON_CHARS = 300
CANCELLED = "cancelled"  # TurnOutcome.stopped of a cancelled goal
RECANCEL_S = 0.5  # how soon a cancelled turn that is still running is cancelled again
INTERRUPTED = ("stopped: this goal's turn was cut short by a restart of the entity (or a "
               "crash of its orchestrator) and is not run again, since what it did so far "
               "may already have taken effect; give the goal again to retry it")


@dataclass
class AutonomyState:
    """What the turns autonomy started spent in the current hour."""

    since: float = field(default_factory=time.monotonic)
    turns: int = 0
    tokens: int = 0
    spent_reported: bool = False
    model_spent_reported: bool = False  # the model budget, said once until it frees up

    def roll(self) -> None:
        """A new hour: a new budget."""
        if time.monotonic() - self.since >= AUTONOMY_WINDOW_S:
            self.since, self.turns, self.tokens = time.monotonic(), 0, 0
            self.spent_reported = False


def _cancel_until_done(turn: asyncio.Task[None]) -> None:
    """Cancel `turn`, and again every RECANCEL_S while it runs on: a cancel can be lost
    (3.11's wait_for, as nats-py's request uses it, returns a reply that came with the
    cancel). Armed only by a cancel: a turn nobody cancels costs no timer."""
    if turn.done():
        return
    turn.cancel()
    asyncio.get_running_loop().call_later(RECANCEL_S, _cancel_until_done, turn)


@dataclass
class Running:
    """The turn running now, for a cancel to stop."""

    goal: Goal
    turn: asyncio.Task[None]
    started: float = field(default_factory=time.monotonic)
    tools: OrchestratorTools | None = None  # the turn's own tools (its commits), once made
    llm: CountingLLM | None = None  # its tokens, once made
    steps: int = 0
    cancelled_by: str = ""  # set once a cancel stopped it: who, and why
    reason: str = ""
    answering: bool = False  # its agent loop is over: its answer is on the way, no cancel


class CountingLLM:
    """Counts the tokens a turn uses, for the autonomy budget and the answer event."""

    def __init__(self, llm: LLM) -> None:
        self.llm = llm
        self.tokens = 0

    async def generate(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None) -> Completion:
        completion = await self.llm.generate(messages, tools)
        self.tokens += completion.usage.total_tokens
        return completion


class OrchestratorActor(Actor):
    name = "orchestrator"
    accepts = (Goal, GoalCancel, Wake, PeerReportIn)

    def __init__(self, llm: LLMSource, max_steps: int,
                 autonomy: AutonomySection | None = None,
                 peers: PeersSection | None = None,
                 grants: Callable[[str], Iterable[str]] | None = None,
                 goals_path: Path | str = ":memory:", ledger_timeout: float = 40.0,
                 cost: ModelCost | None = None,
                 a2a_agents: Mapping[str, str] | None = None) -> None:
        self._llm = llm
        self.a2a_agents = a2a_agents or {}  # [a2a] agents: delegate_to_a2a_agent's choices
        self.cost = cost  # None: the turns' calls are not recorded in memory's usage
        self.ledger_timeout = ledger_timeout  # a ledger write, with its retries
        self.max_steps = max_steps
        self.autonomy = autonomy or AutonomySection()
        self.peers = peers or PeersSection()
        # A peer's permissions in [trust]: what the peer tools of its turns may do.
        self.grants = grants or (lambda peer: self.peers.default_trust)
        self._queue: asyncio.Queue[Goal] = asyncio.Queue(QUEUE_SIZE)
        self._busy = False
        self._ids: dict[str, Goal] = {}  # the goals queued or running, by task id
        self._cancelled: set[str] = set()  # queued goals cancelled: the run loop skips them
        # Goals answered lately (task id -> (Goal.notify, "answered" | "cancelled")).
        self._finished: OrderedDict[str, tuple[str, str]] = OrderedDict()
        self._running: Running | None = None
        self._pending: Counter[str] = Counter()  # goals queued or running, per paying peer
        self._reports: deque[PeerReportIn] = deque(maxlen=REPORTS_KEPT)
        self._auto = AutonomyState()
        self._tools = RemoteTools(self)
        self._goals = GoalStore(goals_path)

    async def on_start(self) -> None:
        await self._goals.open()

    async def on_stop(self) -> None:
        await self._goals.close()

    async def on_failure(self, exc: BaseException) -> None:
        await self._goals.close()

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case Goal() as goal:
                return await self._accept(goal)
            case GoalCancel() as cancel:
                return await self._cancel(cancel, envelope.src)
            case Wake(reason) if envelope.src == f"{self.ctx.entity}/peer":
                # A peer's wake names only the peer: its reason is its own words, which
                # stay out of the turn and its events (the peer actor logs it).
                peer = reason.removeprefix("peer:")
                if not NAME.fullmatch(peer):
                    return WakeResult(False, "a wake from the peer actor names its peer")
                return await self._wake(WAKE_SOURCE + peer)
            case Wake(reason):
                return await self._wake(f"wake:{reason or f'woken by {envelope.src}'}")
            case PeerReportIn() as report:
                await self._reported(report)
                return None
        raise TypeError(f"orchestrator does not handle {envelope.typ}")

    async def _accept(self, goal: Goal) -> GoalAccepted | Error:
        task_id = goal.task_id or uuid.uuid4().hex[:12]
        ahead = self._queue.qsize() + int(self._busy)
        if task_id in self._ids:
            return GoalAccepted(task_id, ahead)  # given again (a peer actor restarted)
        if self._finished.get(task_id, ("", ""))[1] == CANCELLED:
            # Given again after its cancel (by an asker that missed the turn_done): the
            # cancel stands.
            return Error(reasons.NOT_ALLOWED, f"goal {task_id} was cancelled; give it a "
                         "new task id to run it")
        payer = payer_of(goal)
        if payer:
            refused = self._peer_refusal(payer, goal.task_id.startswith(DELEGATED_PREFIX))
            if refused is not None:
                return refused
        if self._queue.full():
            return Error(reasons.BUSY, f"{QUEUE_SIZE} goals are already queued; try later")
        goal = dataclasses.replace(goal, task_id=task_id,
                                   conversation=goal.conversation or task_id)
        self._ids[task_id] = goal  # before the store's await: the same goal twice is one
        try:
            await self._goals.add(goal)  # on disk before it is acknowledged
        except BaseException:
            self._ids.pop(task_id, None)
            raise
        self._enqueue(goal)
        return GoalAccepted(task_id, ahead)

    def _enqueue(self, goal: Goal) -> None:
        # Never full here: _accept checked before its one await, and the tick's wake
        # only accepts with the queue empty.
        self._queue.put_nowait(goal)
        self._ids[goal.task_id] = goal
        payer = payer_of(goal)
        if payer:
            self._pending[payer] += 1

    def _peer_refusal(self, peer: str, delegated: bool) -> Error | None:
        try:
            self._llm.budget(peer).check()
        except BudgetExhausted as exc:
            return Error(reasons.BUDGET_EXHAUSTED, str(exc))
        # (A delegator's tasks are durable and each was accepted by trust: they queue.)
        if not delegated and self._pending[peer] >= PEER_GOALS:
            return Error(reasons.BUSY, f"{peer} already has {PEER_GOALS} turns queued or running "
                         f"at {self.ctx.entity}; try later")
        if self._pending.total() >= QUEUE_SIZE - OPERATOR_ROOM:
            return Error(reasons.BUSY, f"{self.ctx.entity} has as many peers' turns queued as it "
                         "takes; try later")
        return None

    async def _reported(self, report: PeerReportIn) -> None:
        """Note a peer's report for the next turn of the operator (memory has it)."""
        self._reports.append(report)
        await self.ctx.emit("report_noted", peer=report.peer, id=report.id,
                            memory_id=report.memory_id)

    async def _wake(self, source: str) -> WakeResult:
        if self._busy or not self._queue.empty():
            return WakeResult(False, "busy: a turn is running or queued")
        todos: TodoItems = await self.ctx.ask(f"{self.ctx.entity}/memory", TodoList())
        mission = self.autonomy.mission if source.startswith("wake:autonomy") else ""
        if not todos.items and not mission:
            return WakeResult(False, "idle: the todo list is empty")
        if not todos.items:
            text = _plan_goal(mission)
        else:
            settled = await self._settled_tasks() if mission else []
            text = _todo_goal(todos, mission, settled)
        accepted = await self._accept(Goal(text, source=source))
        if isinstance(accepted, Error):
            return WakeResult(False, accepted.message)
        return WakeResult(True, "started a turn on the todo list", accepted.task_id)

    async def run(self) -> None:
        await self._recover()
        async with asyncio.TaskGroup() as tg:
            if self.autonomy.enabled:
                tg.create_task(self._tick())
            while True:
                goal = await self._queue.get()
                if goal.task_id in self._cancelled:  # answered when it was cancelled
                    self._cancelled.discard(goal.task_id)
                    continue
                self._busy = True
                # Set before any await: a cancel from here on stops this very task.
                running = self._running = Running(goal, tg.create_task(self._work(goal)))
                try:
                    # wait(), not await: the turn's cancel must not cancel this loop.
                    await asyncio.wait([running.turn])
                    if running.turn.cancelled() and running.cancelled_by:
                        await self._stopped(running)
                    else:
                        running.turn.result()  # a bug of ours in the turn: raised here
                finally:
                    self._running = None
                    self._busy = False
                    self._done(goal, CANCELLED if running.cancelled_by else "answered")

    async def _work(self, goal: Goal) -> None:
        await self._goals.running(goal.task_id)
        await self._turn(goal)
        await self._goals.answered(goal.task_id)

    def _done(self, goal: Goal, how: str) -> None:
        """`goal` is answered: no longer queued or running, and remembered a while."""
        if self._ids.get(goal.task_id) is goal:
            del self._ids[goal.task_id]
        self._finished[goal.task_id] = (goal.notify, how)
        while len(self._finished) > FINISHED_KEPT:
            self._finished.popitem(last=False)
        payer = payer_of(goal)
        if payer:
            self._pending[payer] -= 1
            if self._pending[payer] <= 0:
                del self._pending[payer]

    async def _cancel(self, cancel: GoalCancel, src: str) -> GoalCancelled | Error:
        """Cancel a goal for `src`, if it may: entityctl, or the actor the goal notifies."""
        task_id = cancel.task_id
        goal = self._ids.get(task_id)
        notify, how = (goal.notify, "") if goal is not None else self._finished.get(
            task_id, ("", ""))
        if goal is None and not how:
            return Error(reasons.NOT_FOUND, f"no goal {task_id!r} is queued or running at "
                         f"{self.ctx.entity}")
        if src != f"{self.ctx.entity}/ctl" and not (notify and src == notify):
            return Error(reasons.NOT_ALLOWED, f"{src} may not cancel goal {task_id}: only "
                         "entityctl and the actor its goal reports to may")
        running = self._running
        if goal is None or (running is not None and running.goal is goal
                            and (running.answering or running.turn.done())):
            return Error(reasons.NOT_FOUND, f"goal {task_id} was already {how or 'answered'}")
        reason = " ".join(cancel.reason.split())[:CANCEL_REASON_CHARS]
        if running is not None and running.goal is goal:
            if not running.cancelled_by:
                running.cancelled_by, running.reason = src, reason
                _cancel_until_done(running.turn)  # the run loop answers it (_stopped)
            return GoalCancelled(task_id, "running")
        # Still queued: answered now, and skipped when the run loop comes to it.
        self._cancelled.add(task_id)
        self._done(goal, CANCELLED)
        await self._answer_cancelled(goal, src, reason, time.monotonic())
        return GoalCancelled(task_id, "queued")

    async def _stopped(self, running: Running) -> None:
        """Answer a turn a cancel stopped, and stop the work it had asked for."""
        goal = running.goal
        for actor in ("coder", "tool"):  # its coding task and its sandbox commands
            try:
                await self.ctx.tell(f"{self.ctx.entity}/{actor}", TurnCancel(goal.task_id))
            except EntitydError as exc:
                self.ctx.log.warning("cancel_not_passed_on", to=actor, error=str(exc))
        await self._answer_cancelled(goal, running.cancelled_by, running.reason,
                                     running.started, running)

    async def _answer_cancelled(self, goal: Goal, by: str, reason: str, started: float,
                                running: Running | None = None) -> None:
        scope = TurnScope.of(goal, self.grants)
        text = f"stopped: this goal was cancelled by {by}" + (f": {reason}" if reason else "")
        steps = running.steps if running is not None else 0
        tools = running.tools if running is not None else None
        tokens = running.llm.tokens if running is not None and running.llm else 0
        await self._finish(goal, scope, TurnOutcome(False, text, steps, CANCELLED),
                           tools or OrchestratorTools(self.ctx, goal.task_id, scope),
                           started, tokens)
        await self._goals.answered(goal.task_id)  # not run again after a restart

    async def _recover(self) -> None:
        """Run again the goals accepted before a stop or a crash and still queued (and a
        delegated task); answer any other whose turn was cut short, with the reason."""
        for goal, state in await self._goals.pending():
            if goal.task_id in self._ids:
                continue
            # A delegated task is worked again even if its turn was cut short: that is
            # the delegation's promise (its work is in the workspace, and the delegate's
            # peer actor gives it again after a restart, which counts as the same goal).
            rerun = state is GoalState.QUEUED or goal.task_id.startswith(DELEGATED_PREFIX)
            if rerun and not self._queue.full():
                self._enqueue(goal)  # (a cancelled goal is answered: not pending here)
                await self.ctx.emit("goal_resumed", task_id=goal.task_id, source=goal.source)
                continue
            scope = TurnScope.of(goal, self.grants)
            outcome = TurnOutcome(False, INTERRUPTED, 0, "interrupted")
            await self._finish(goal, scope, outcome, OrchestratorTools(self.ctx, goal.task_id,
                                                                       scope),
                               time.monotonic(), tokens=0)
            await self._goals.answered(goal.task_id)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.autonomy.interval)
            self._auto.roll()
            if self._autonomy_spent():
                if not self._auto.spent_reported:
                    self._auto.spent_reported = True
                    left = AUTONOMY_WINDOW_S - (time.monotonic() - self._auto.since)
                    await self.ctx.emit("autonomy_budget_spent", turns=self._auto.turns,
                                        tokens=self._auto.tokens, resumes_in_s=round(left))
                continue
            if await self._model_budget_spent():
                continue
            result = await self._wake("wake:autonomy")
            await self.ctx.emit("autonomy_tick", started=result.started, reason=result.reason,
                                task_id=result.task_id)

    async def _model_budget_spent(self) -> bool:
        """Whether the operator's model budget (llm.max_tokens_per_hour) is spent: a turn
        started now would fail at its first call, so autonomy waits, saying so once."""
        budget = self._llm.budget()
        if budget.remaining() > 0:
            self._auto.model_spent_reported = False
            return False
        if not self._auto.model_spent_reported:
            self._auto.model_spent_reported = True
            await self.ctx.emit("autonomy_paused", reason="model_budget_spent",
                                limit=budget.limit, resumes_in_s=round(budget.frees_in()))
        return True

    def _autonomy_spent(self) -> bool:
        return (self._auto.turns >= self.autonomy.max_turns
                or self._auto.tokens >= self.autonomy.max_tokens)

    async def _turn(self, goal: Goal) -> None:
        started = time.monotonic()
        running = self._running if self._running and self._running.goal is goal else None
        scope = TurnScope.of(goal, self.grants)
        await self.ctx.emit("turn_started", task_id=goal.task_id, source=goal.source,
                            **({} if scope.private else {"goal": goal.text[:500]}))
        await self._log(goal, "user", goal.text)
        tools = OrchestratorTools(self.ctx, goal.task_id, scope)
        try:
            llm = CountingLLM(self._metered(self._llm(scope.payer), goal.task_id, scope.payer))
        except LLMError as exc:
            if running is not None:
                running.answering = True
            outcome = TurnOutcome(False, f"no model is available: {exc}", 0, "llm_error")
            await self._finish(goal, scope, outcome, tools, started, tokens=0)
            return
        operator = not scope.owner  # only the operator's turns spend or rate
        peer_tools = PeerTools(self.ctx, self.peers, may_pay=operator,
                               ledger_timeout=self.ledger_timeout)
        ledger_tools = LedgerTools(self.ctx, self.ledger_timeout).tools() if operator else []
        services_tools = ServicesTools(self.ctx).tools() if operator else []
        a2a_tools = A2ATools(self.a2a_agents).tools() if operator else []
        toolbox = Toolbox(scope.toolbox([*tools.tools(), *peer_tools.tools(), *ledger_tools,
                                         *services_tools, *a2a_tools,
                                         *await self._workspace_tools(scope)]))

        if running is not None:
            running.tools, running.llm = tools, llm

        async def report(step: Step) -> None:
            if running is not None:
                running.steps += 1
            # Asked at each step: a tool may just have brought a peer's words in.
            await self.ctx.emit("step", task_id=goal.task_id,
                                **summarize(step, private=scope.private))

        if scope.owner:
            prompt = prompts.load("peer", entity=self.ctx.entity, peer=scope.owner)
        else:
            prompt = prompts.load("orchestrator", entity=self.ctx.entity,
                                  balance=await self._balance())
        loop = AgentLoop(llm, toolbox, prompt, self.max_steps, report)
        recalled = await self._recall(goal.text, scope)
        if not scope.owner:
            recalled += self._take_reports()
        outcome = await loop.run(TaskStep(goal.text, recalled))
        if running is not None:
            running.answering = True  # from here on, a cancel comes too late
        if outcome.stopped == "budget":
            await self.ctx.emit("budget_exhausted", task_id=goal.task_id,
                                **({} if scope.private else {"reason": outcome.answer}))
        await learn(self.ctx, llm, goal, outcome, scope)
        if goal.source.startswith("wake:autonomy"):
            self._auto.turns += 1
            self._auto.tokens += llm.tokens
        await self._finish(goal, scope, outcome, tools, started, llm.tokens)

    def _metered(self, llm: LLM, task_id: str, payer: str) -> LLM:
        """`llm` with each call's tokens and cost told to memory, under the turn's task."""
        if self.cost is None:
            return llm
        return UsageMeter(llm, self.ctx, task_id, self.cost, payer)

    async def _settled_tasks(self) -> list[str]:
        """The tasks we delegated whose escrow was paid: "<task id> (<peer>)", from our
        own records only (no peer's words reach an autonomous turn's goal)."""
        try:
            tasks: Tasks = await self.ctx.ask(f"{self.ctx.entity}/peer", TasksGet(),
                                              PROMPT_BALANCE_S)
        except EntitydError:
            return []
        return [f"{t.task_id} ({t.peer})" for t in tasks.tasks
                if t.direction == "out" and t.money == "posted"]

    async def _balance(self) -> str:
        """The operator's turn is told its balance, as check_balance says it (not waited
        for long: a turn does not wait on the ledger's stream)."""
        try:
            return await LedgerTools(self.ctx, PROMPT_BALANCE_S).balance({})
        except ToolFailed as exc:
            return f"unknown just now ({exc})"

    async def _workspace_tools(self, scope: TurnScope) -> list[Tool]:
        """The tool actor's tools, each audited privately once the turn is private, in
        the workspace of the turn's owner (a peer's task works in that peer's own)."""
        public = await self._tools.get(private=False, workspace=scope.owner)
        private = {tool.name: tool
                   for tool in await self._tools.get(private=True, workspace=scope.owner)}
        return [either(tool, private[tool.name], scope) for tool in public]

    async def _finish(self, goal: Goal, scope: TurnScope, outcome: TurnOutcome,
                      tools: OrchestratorTools, started: float, tokens: int) -> None:
        # Asked, not told: entityctl reads a private answer from the log once the answer
        # event is out, so it must be there first.
        await self._log(goal, "assistant", outcome.answer, wait=True)
        content: dict[str, Any] = ({"private": True} if scope.private else
                                   {"text": outcome.answer, "changes": tools.diffstats})
        await self.ctx.emit(
            "answer", task_id=goal.task_id, ok=outcome.ok, steps=outcome.steps,
            stopped=outcome.stopped, commits=tools.commits, tokens=tokens,
            seconds=round(time.monotonic() - started, 3), **content,
        )
        if goal.notify:
            try:
                await self.ctx.tell(goal.notify, TurnDone(goal.task_id, outcome.ok,
                                                          outcome.answer, outcome.stopped,
                                                          tools.commits))
            except EntitydError as exc:  # its asker restarts and gives the goal again
                self.ctx.log.warning("turn_done_lost", to=goal.notify, error=str(exc))

    def _take_reports(self) -> str:
        """Which peers reported since the operator's last turn; not what they said: their
        words reach a turn only when it asks memory for them, and then make it private."""
        if not self._reports:
            return ""
        lines = [f"- {r.peer} (memory #{r.memory_id})" for r in self._reports]
        self._reports.clear()
        return ("\n\nPeers sent reports since your last turn; recall with peers=true to "
                "read them:\n" + "\n".join(lines))

    async def _recall(self, text: str, scope: TurnScope) -> str:
        try:
            hits: MemoryHits = await self.ctx.ask(
                f"{self.ctx.entity}/memory",
                MemorySearch(text, RECALL_LIMIT, origin=scope.recall_origin()),
            )
        except EntitydError as exc:
            self.ctx.log.warning("recall_failed", error=str(exc))
            return ""
        scope.hear_origins(hit.origin for hit in hits.hits)
        return render_hits(hits)

    async def _log(self, goal: Goal, role: str, content: str, wait: bool = False) -> None:
        # Told, not asked, unless `wait`: the memory actor handles in order.
        entry = LogAppend(goal.conversation, role, content,
                          {"task_id": goal.task_id, "source": goal.source})
        try:
            if wait:
                await self.ctx.ask(f"{self.ctx.entity}/memory", entry)
            else:
                await self.ctx.tell(f"{self.ctx.entity}/memory", entry)
        except EntitydError as exc:
            self.ctx.log.warning("log_failed", error=str(exc))


def _todo_goal(todos: TodoItems, mission: str = "", settled: Sequence[str] = ()) -> str:
    text = ("You woke up to work on your todo list. Pick the most important open item, "
            "work on it, and update its status.")
    if mission:
        text += (f"\n\nYour mission: {mission}\nWork an item with your coder, or, when a "
                 "peer offers what it needs (list_peers), delegate it to that peer with a "
                 "price; tell your peers what you finished (report_to_peer). Deliveries "
                 "whose tests pass are accepted and paid by themselves.")
    if settled:
        text += ("\n\nTasks you delegated that were paid, to rate (rate_peer, once each): "
                 + ", ".join(settled))
    return text + "\n\n" + render_todos(todos)


def _plan_goal(mission: str) -> str:
    return (f"You woke up with an empty todo list. Your mission: {mission}\n\nPLAN the "
            "next steps towards it: add two to five small, concrete items with todo_add "
            "(each one a piece of code with its test, or a piece a peer could do for you), "
            "then answer with the plan in a few lines.")
