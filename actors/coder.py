"""The coder actor: a coding sub-agent on the git workspace; the daemon commits its work.
A peer's task codes and commits in that peer's workspace (actors/workspaces.py), never
in the entity's own. It also shows the entity's own workspace's commits and diffs (for
the entity's page) while it codes.
A `turn_cancel` from the orchestrator stops the coding task of that goal (running or
waiting), unless it is committing already: its result says it was cancelled, and what it
wrote stays uncommitted in the workspace, as after a failed task."""

from __future__ import annotations

import asyncio

import protocol
from entityd import Actor, Later
from protocol import Envelope, reasons

from . import commits, prompts
from .agent import AgentLoop, Step, TaskStep, Toolbox
from .agent.loop import summarize
from .llm import LLMError
from .llm.budget import LLMSource
from .llm.cost import ModelCost
from .llm.usage import UsageMeter
from .messages import (
    CodeResult,
    CodeTask,
    CommitDiff,
    CommitDiffGet,
    Commits,
    CommitsGet,
    TurnCancel,
)
from .remote_tools import RemoteTools
from .turn_scope import WORKSPACE_TOOLS
from .workspace import GitError
from .workspaces import Workspaces

# Coding tasks waiting for the one running, and queries of the history answered at once;
# past these a request is answered `busy`.
WAITING_TASKS = 16
QUERIES = 8


class CoderActor(Actor):
    name = "coder"
    accepts = (CodeTask, CommitsGet, CommitDiffGet, TurnCancel)

    def __init__(self, llm: LLMSource, workspaces: Workspaces, max_steps: int,
                 cost: ModelCost | None = None) -> None:
        self._llm_factory = llm
        self.cost = cost  # None: its calls are not recorded in memory's usage
        self.workspaces = workspaces
        self.workspace = workspaces.own
        self.max_steps = max_steps
        self._tools = RemoteTools(self)
        # Tasks run one at a time, in arrival order, beside the mailbox: a query of the
        # history is answered while a task is coding.
        self._turn = asyncio.Lock()
        self._tasks = 0  # running and waiting
        self._queries = 0
        # The coding tasks that a cancel may still stop (waiting, or in their loop), by
        # goal id; and those a cancel did stop.
        self._cancellable: dict[str, asyncio.Task[object]] = {}
        self._cancelling: set[asyncio.Task[object]] = set()

    async def on_start(self) -> None:
        try:
            await self.workspace.ensure()
            leaked = await self.workspace.secrets_in_history()
        except GitError as exc:  # each task says so again; the coder still answers
            self.ctx.log.error("workspace_unavailable", reason=str(exc))
            await self.ctx.emit("workspace_unavailable", reason=str(exc))
            return
        if leaked:
            # The daemon never commits these; an earlier commit (by a person, or an older
            # entityd) did, and the agent can read them through git. Only a rewrite of the
            # history removes them: say so where the operator looks.
            self.ctx.log.warning("workspace_secrets_in_history", paths=leaked[:50],
                                 count=len(leaked))
            await self.ctx.emit("secrets_in_history", paths=leaked[:50], count=len(leaked))

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case CodeTask() as task:
                if self._tasks > WAITING_TASKS:
                    return protocol.Error(reasons.BUSY, f"{self._tasks} coding tasks are "
                                          "already running or waiting; retry later")
                self._tasks += 1
                return Later(self._one_at_a_time(task))
            case CommitsGet() | CommitDiffGet() as query:
                if self._queries >= QUERIES:
                    return protocol.Error(reasons.BUSY, f"{QUERIES} queries of the "
                                          "workspace's history are running; retry later")
                self._queries += 1
                return Later(self._history(query))
            case TurnCancel(task_id=task_id) if envelope.src == f"{self.ctx.entity}/orchestrator":
                coding = self._cancellable.pop(task_id, None)
                if coding is not None:
                    self._cancelling.add(coding)
                    coding.cancel()
                return None
            case TurnCancel():
                return protocol.Error(reasons.NOT_ALLOWED, "only the orchestrator cancels a "
                                      "coding task")
        raise TypeError(f"coder does not handle {envelope.typ}")

    async def _one_at_a_time(self, task: CodeTask) -> CodeResult:
        current = asyncio.current_task()
        assert current is not None
        self._cancellable[task.task_id] = current
        try:
            async with self._turn:
                return await self._code(task)
        except asyncio.CancelledError:
            # Stopped by a cancel (and by nothing else, such as a stop of the actor).
            if current in self._cancelling and current.uncancel() == 0:
                await self.ctx.emit("cancelled", task_id=task.task_id)
                return CodeResult(False, "cancelled: the goal this task was for was "
                                  "cancelled; what it wrote so far is left uncommitted")
            raise
        finally:
            self._tasks -= 1
            self._cancelling.discard(current)
            if self._cancellable.get(task.task_id) is current:
                del self._cancellable[task.task_id]

    async def _history(self, query: CommitsGet | CommitDiffGet
                       ) -> Commits | CommitDiff | protocol.Error:
        """The workspace's commits, or one with its diff, for the entity's page."""
        try:
            if isinstance(query, CommitsGet):
                page, more = await commits.commits(self.workspace, query.limit, query.before)
                return Commits(page, more)
            return await commits.commit_diff(self.workspace, query.sha)
        except commits.QueryRefused as exc:
            return protocol.Error(exc.code, exc.message)
        except GitError as exc:
            return protocol.Error(reasons.UNAVAILABLE, f"the workspace's git: {exc}")
        finally:
            self._queries -= 1

    # ---- coding ---------------------------------------------------------------------------

    async def _code(self, task: CodeTask) -> CodeResult:
        try:
            llm = self._llm_factory(task.payer)  # a peer's task spends the peer's budget
        except LLMError as exc:
            return CodeResult(False, f"the coder has no model: {exc}")
        if self.cost is not None:
            llm = UsageMeter(llm, self.ctx, task.task_id, self.cost, task.payer)
        try:
            workspace = self.workspaces.of(task.workspace)
            await workspace.ensure()  # a repository before the agent writes a file there
        except (ValueError, GitError) as exc:
            return CodeResult(False, f"the coder has no workspace for this task: {exc}")
        tools = await self._tools.get(private=task.private, workspace=task.workspace)
        if task.payer:  # a peer's task: the workspace, not whatever else the tool actor offers
            tools = [tool for tool in tools if tool.name in WORKSPACE_TOOLS]
        toolbox = Toolbox(tools)

        async def report(step: Step) -> None:
            await self.ctx.emit("step", task_id=task.task_id,
                                **summarize(step, private=task.private))

        loop = AgentLoop(llm, toolbox, prompts.load("coder", entity=self.ctx.entity),
                         self.max_steps, report)
        goal = task.goal if not task.context else f"{task.goal}\n\nContext:\n{task.context}"
        outcome = await loop.run(TaskStep(goal))
        # Done coding: a cancel no longer stops it (not in the middle of its commit).
        if self._cancellable.get(task.task_id) is asyncio.current_task():
            del self._cancellable[task.task_id]
        if not outcome.ok:
            return CodeResult(False, outcome.answer, steps=outcome.steps)
        try:
            # A private task's goal is a peer's words: never in the workspace's history.
            title = "a private task" if task.private else _title(task.goal)
            message = f"{title}\n\nentityd task {task.task_id}"
            commit = await workspace.commit(message)
        except GitError as exc:
            return CodeResult(False, f"{outcome.answer}\n\nbut the commit failed: {exc}",
                              steps=outcome.steps)
        if commit is None:
            return CodeResult(True, outcome.answer, steps=outcome.steps)
        await self.ctx.emit("committed", task_id=task.task_id, commit=commit.sha,
                            **({} if task.private else {"diffstat": commit.diffstat}))
        return CodeResult(True, outcome.answer, commit.sha, commit.diffstat, outcome.steps)


def _title(goal: str, limit: int = 72) -> str:
    first = goal.strip().splitlines()[0] if goal.strip() else "work"
    return first if len(first) <= limit else first[: limit - 3] + "..."
