"""The coder actor: a coding sub-agent on the git workspace; the daemon commits its work."""

from __future__ import annotations

from entityd import Actor
from protocol import Envelope

from . import prompts
from .agent import AgentLoop, Step, TaskStep, Toolbox
from .agent.loop import summarize
from .llm import LLMError
from .llm.budget import LLMSource
from .messages import CodeResult, CodeTask
from .remote_tools import RemoteTools
from .turn_scope import WORKSPACE_TOOLS
from .workspace import GitError, Workspace


class CoderActor(Actor):
    name = "coder"
    accepts = (CodeTask,)

    def __init__(self, llm: LLMSource, workspace: Workspace, max_steps: int) -> None:
        self._llm_factory = llm
        self.workspace = workspace
        self.max_steps = max_steps
        self._tools = RemoteTools(self)

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
                return await self._code(task)
        raise TypeError(f"coder does not handle {envelope.typ}")

    async def _code(self, task: CodeTask) -> CodeResult:
        try:
            llm = self._llm_factory(task.payer)  # a peer's task spends the peer's budget
        except LLMError as exc:
            return CodeResult(False, f"the coder has no model: {exc}")
        tools = await self._tools.get(private=task.private)
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
        if not outcome.ok:
            return CodeResult(False, outcome.answer, steps=outcome.steps)
        try:
            message = f"{_title(task.goal)}\n\nentityd task {task.task_id}"
            commit = await self.workspace.commit(message)
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
