"""The orchestrator: takes goals, runs one agent turn at a time, learns from each.

Goals arrive from entityctl, from autonomy ticks and (with the federation) from peers.
They are accepted at once and queued; turns run one after another in `run`. Progress
is published as events carrying the task id, ending with an `answer` event.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from entityd.actor import Actor
from entityd.config import AutonomySection, PeersSection
from entityd.errors import EntitydError
from protocol import Envelope, Error

from . import prompts
from .agent import AgentLoop, Step, TaskStep, Toolbox
from .agent.loop import TurnOutcome, summarize
from .llm import LLM, Completion, LLMError
from .messages import (
    Goal,
    GoalAccepted,
    LogAppend,
    MemoryAdd,
    MemoryHits,
    MemorySearch,
    TodoItems,
    TodoList,
    TurnDone,
    Wake,
    WakeResult,
)
from .orchestrator_tools import OrchestratorTools, render_hits, render_todos
from .peer.messages import PeerReportIn
from .peer.tools import PeerTools
from .remote_tools import RemoteTools

QUEUE_SIZE = 32
RECALL_LIMIT = 5
REPORTS_KEPT = 20


@dataclass
class AutonomyState:
    turns: int = 0
    tokens: int = 0
    spent_reported: bool = False


class CountingLLM:
    """Counts the tokens a turn uses, for the autonomy budget."""

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
    accepts = (Goal, Wake, PeerReportIn)

    def __init__(self, llm: Callable[[], LLM], max_steps: int,
                 autonomy: AutonomySection | None = None,
                 peers: PeersSection | None = None) -> None:
        self._llm_factory = llm
        self.max_steps = max_steps
        self.autonomy = autonomy or AutonomySection()
        self.peers = peers or PeersSection()
        self._queue: asyncio.Queue[Goal] = asyncio.Queue(QUEUE_SIZE)
        self._busy = False
        self._ids: set[str] = set()  # task ids queued or running
        self._reports: deque[PeerReportIn] = deque(maxlen=REPORTS_KEPT)
        self._auto = AutonomyState()
        self._tools = RemoteTools(self)

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case Goal() as goal:
                return self._accept(goal)
            case Wake(reason):
                return await self._wake(reason or f"woken by {envelope.src}")
            case PeerReportIn() as report:
                await self._reported(report)
                return None
        raise TypeError(f"orchestrator does not handle {envelope.typ}")

    def _accept(self, goal: Goal) -> GoalAccepted | Error:
        task_id = goal.task_id or uuid.uuid4().hex[:12]
        ahead = self._queue.qsize() + int(self._busy)
        if task_id in self._ids:
            return GoalAccepted(task_id, ahead)  # given again (a peer actor restarted)
        try:
            self._queue.put_nowait(
                dataclasses.replace(goal, task_id=task_id,
                                    conversation=goal.conversation or task_id)
            )
        except asyncio.QueueFull:
            return Error("busy", f"{QUEUE_SIZE} goals are already queued; try later")
        self._ids.add(task_id)
        return GoalAccepted(task_id, ahead)

    async def _reported(self, report: PeerReportIn) -> None:
        """Keep a peer's report for the next turn (memory has it already)."""
        self._reports.append(report)
        await self.ctx.emit("report_noted", peer=report.peer, id=report.id,
                            memory_id=report.memory_id)

    async def _wake(self, reason: str) -> WakeResult:
        if self._busy or not self._queue.empty():
            return WakeResult(False, "busy: a turn is running or queued")
        todos: TodoItems = await self.ctx.ask(f"{self.ctx.entity}/memory", TodoList())
        if not todos.items:
            return WakeResult(False, "idle: the todo list is empty")
        accepted = self._accept(Goal(_todo_goal(todos), source=f"wake:{reason}"))
        if isinstance(accepted, Error):
            return WakeResult(False, accepted.message)
        return WakeResult(True, "started a turn on the todo list", accepted.task_id)

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            if self.autonomy.enabled:
                tg.create_task(self._tick())
            while True:
                goal = await self._queue.get()
                self._busy = True
                try:
                    await self._turn(goal)
                finally:
                    self._busy = False
                    self._ids.discard(goal.task_id)

    async def _tick(self) -> None:
        while True:
            await asyncio.sleep(self.autonomy.interval)
            if self._autonomy_spent():
                if not self._auto.spent_reported:
                    self._auto.spent_reported = True
                    await self.ctx.emit("autonomy_budget_spent", turns=self._auto.turns,
                                        tokens=self._auto.tokens)
                return
            result = await self._wake("autonomy")
            await self.ctx.emit("autonomy_tick", started=result.started, reason=result.reason,
                                task_id=result.task_id)

    def _autonomy_spent(self) -> bool:
        return (self._auto.turns >= self.autonomy.max_turns
                or self._auto.tokens >= self.autonomy.max_tokens)

    async def _turn(self, goal: Goal) -> None:
        started = time.monotonic()
        await self.ctx.emit("turn_started", task_id=goal.task_id, source=goal.source,
                            **({} if goal.private else {"goal": goal.text[:500]}))
        await self._log(goal, "user", goal.text)
        try:
            llm = CountingLLM(self._llm_factory())
        except LLMError as exc:
            outcome = TurnOutcome(False, f"no model is available: {exc}", 0, "llm_error")
            await self._finish(goal, outcome, OrchestratorTools(self.ctx, goal.task_id,
                                                                goal.private),
                               started, tokens=0)
            return
        tools = OrchestratorTools(self.ctx, goal.task_id, goal.private)
        toolbox = Toolbox([*tools.tools(), *PeerTools(self.ctx, self.peers).tools(),
                           *await self._tools.get(private=goal.private)])

        async def report(step: Step) -> None:
            await self.ctx.emit("step", task_id=goal.task_id,
                                **summarize(step, private=goal.private))

        loop = AgentLoop(llm, toolbox, prompts.load("orchestrator", entity=self.ctx.entity),
                         self.max_steps, report)
        recalled = await self._recall(goal.text) + self._take_reports()
        outcome = await loop.run(TaskStep(goal.text, recalled))
        if outcome.stopped == "budget":
            await self.ctx.emit("budget_exhausted", task_id=goal.task_id,
                                **({} if goal.private else {"reason": outcome.answer}))
        await self._learn(llm, goal, outcome)
        if goal.source.startswith("wake:autonomy"):
            self._auto.turns += 1
            self._auto.tokens += llm.tokens
        await self._finish(goal, outcome, tools, started, llm.tokens)

    async def _finish(self, goal: Goal, outcome: TurnOutcome, tools: OrchestratorTools,
                      started: float, tokens: int) -> None:
        await self._log(goal, "assistant", outcome.answer)
        content = {} if goal.private else {"text": outcome.answer, "changes": tools.diffstats}
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
        if not self._reports:
            return ""
        lines = [f"- {r.peer} reported: {r.text}" for r in self._reports]
        self._reports.clear()
        return "\n\nReports from peers since your last turn:\n" + "\n".join(lines)

    async def _recall(self, text: str) -> str:
        try:
            hits: MemoryHits = await self.ctx.ask(
                f"{self.ctx.entity}/memory", MemorySearch(text, RECALL_LIMIT)
            )
        except EntitydError as exc:
            self.ctx.log.warning("recall_failed", error=str(exc))
            return ""
        return render_hits(hits)

    async def _log(self, goal: Goal, role: str, content: str) -> None:
        # Told, not asked: nothing waits on the log (the memory actor handles in order).
        try:
            await self.ctx.tell(f"{self.ctx.entity}/memory",
                                LogAppend(goal.conversation, role, content,
                                          {"task_id": goal.task_id, "source": goal.source}))
        except EntitydError as exc:
            self.ctx.log.warning("log_failed", error=str(exc))

    async def _learn(self, llm: LLM, goal: Goal, outcome: TurnOutcome) -> None:
        """Ask the model for lessons from the finished task and keep them (merged)."""
        if outcome.stopped == "llm_error":
            return
        messages = [
            {"role": "system", "content": prompts.load("lessons")},
            {"role": "user", "content": f"Goal: {goal.text}\n\nOutcome "
             f"({'done' if outcome.ok else 'not done'}): {outcome.answer}"},
        ]
        try:
            completion = await llm.generate(messages, None)
        except LLMError as exc:
            self.ctx.log.warning("lessons_failed", error=str(exc))
            return
        lessons = _parse_lessons(completion.content or "")
        stored = []
        for lesson in lessons:
            try:
                ref = await self.ctx.ask(f"{self.ctx.entity}/memory",
                                         MemoryAdd("lesson", lesson, 0.6, f"task {goal.task_id}"))
                stored.append({"id": ref.id, "merged": ref.merged})
            except EntitydError as exc:
                self.ctx.log.warning("lesson_not_stored", error=str(exc))
        await self.ctx.ask(
            f"{self.ctx.entity}/memory",
            MemoryAdd("episode", f"{goal.text[:300]} -> {outcome.answer[:300]}", 0.3,
                      f"task {goal.task_id}"),
        )
        await self.ctx.emit("lessons", task_id=goal.task_id, stored=stored,
                            **({} if goal.private else {"lessons": lessons}))


def _parse_lessons(text: str) -> list[str]:
    """The model's JSON array of lessons; anything else means none (and is not an error)."""
    start, end = text.find("["), text.rfind("]")
    if start < 0 or end <= start:
        return []
    try:
        parsed = json.loads(text[start : end + 1])
    except json.JSONDecodeError:
        return []
    if not isinstance(parsed, list):
        return []
    return [item.strip() for item in parsed if isinstance(item, str) and item.strip()][:3]


def _todo_goal(todos: TodoItems) -> str:
    return ("You woke up to work on your todo list. Pick the most important open item, "
            "work on it, and update its status.\n\n" + render_todos(todos))
