"""Delegated tasks, both ways: offer -> accepted/rejected -> progress -> completed/failed.

Every step is a durable, encrypted command (op `delegate` for the offer, `task` for
the updates) and is written to the store before it is queued, so either side can be
killed at any point and pick the task up where it was:

    delegator (out)  offered -> accepted -> working -> delivered | failed | rejected
    delegate (in)    accepted -> working -> completed | failed   (or rejected at once)

The delegate runs the task as a turn of its orchestrator; when the turn commits code,
the commits travel back as `git format-patch` output and land on the branch
`delegated/<task_id>` of the delegator's workspace, beside its own work, where it can
test them before merging. On restart the delegate gives unfinished tasks to its
orchestrator again; the delegator fails a task whose deadline passed without a result.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
import time
import uuid
from collections.abc import Awaitable, Callable

from entityd import Config, Context, EntitydError

from ..messages import Goal, TurnDone
from ..workspace import GitError, Workspace
from . import outcomes
from .deliverable import Deliverables
from .messages import (
    DeliverableChunk,
    DeliverableGet,
    PeerDelegate,
    PeerOutcome,
    TaskInfo,
    TaskOffer,
    TaskUpdate,
)
from .policy import Trust
from .store import PeerStore, TaskRow
from .turns import Turns

Send = Callable[[str, str, object], Awaitable[object]]  # (peer, op, message)

FINAL = ("delivered", "completed", "failed", "rejected")
GOAL_PREFIX = "dlg-"
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")


class Delegation:
    def __init__(self, ctx: Context, config: Config, store: PeerStore, turns: Turns,
                 workspace: Workspace, trust: Trust, send: Send,
                 deliverables: Deliverables) -> None:
        self.ctx = ctx
        self.config = config
        self.store = store
        self.turns = turns
        self.workspace = workspace
        self.trust = trust
        self.send = send
        self.deliverables = deliverables
        self._answers: asyncio.Queue[TurnDone] = asyncio.Queue()
        turns.listen(self._on_turn)

    # ---- as the delegator -------------------------------------------------------------

    async def offer(self, request: PeerDelegate) -> PeerOutcome:
        now = time.time()
        deadline = now + (request.deadline_s or self.config.peers.delegation_timeout)
        task = TaskRow(uuid.uuid4().hex[:12], "out", request.peer, request.title,
                       request.description, request.deliverables, deadline,
                       list(request.capabilities), "offered", "", "", "", now, now)
        await self.store.save_task(task)
        await self.send(request.peer, "delegate", TaskOffer(
            task.task_id, task.title, task.description, task.deliverables, deadline,
            task.capabilities))
        await self.ctx.emit("task_offered", task_id=task.task_id, peer=request.peer)
        return PeerOutcome(request.peer, True, outcomes.OFFERED,
                           f"offered task {task.task_id} to {request.peer}; "
                           "`entityctl tasks` follows it", task.task_id)

    async def on_update(self, peer: str, update: TaskUpdate) -> None:
        task = await self.store.task(update.task_id, "out", peer)
        if task is None:
            self.ctx.log.warning("task_update_unknown", peer=peer, task_id=update.task_id)
            return
        if task.state in FINAL:
            return  # a late or repeated update changes nothing
        state, note, branch = update.state, update.note, task.branch
        if state == "progress":
            state = "working"
        elif state == "completed":
            state, note, branch = await self._receive(task, update)
        elif state not in ("accepted", "rejected", "failed", "working"):
            self.ctx.log.warning("task_update_bad_state", peer=peer, state=update.state)
            return
        await self._save(task, state, note, branch)

    async def _receive(self, task: TaskRow, update: TaskUpdate) -> tuple[str, str, str]:
        patch = update.patch
        if update.size:  # kept by the delegate; PeerUnavailable: handled again later
            try:
                patch = await self.deliverables.fetch(task.peer, task.task_id, update.size,
                                                      update.sha256)
            except ValueError as exc:
                return "failed", f"the deliverable could not be fetched: {exc}", ""
            self.ctx.log.info("deliverable_fetched", task_id=task.task_id, peer=task.peer,
                              size=update.size)
        if not patch:
            return "delivered", update.note, ""
        branch = f"delegated/{task.task_id}"
        try:
            await self.workspace.land(branch, patch)
        except (GitError, OSError) as exc:
            return "failed", f"the deliverable did not apply: {exc}"[:2000], ""
        return "delivered", update.note, branch

    async def expire(self) -> None:
        """Fail our offers whose deadline passed without a result."""
        now = time.time()
        for task in await self.store.tasks(("offered", "accepted", "working")):
            if task.direction == "out" and task.deadline and now > task.deadline:
                await self._save(task, "failed", "the deadline passed without a result")

    # ---- as the delegate --------------------------------------------------------------

    async def on_offer(self, peer: str, offer: TaskOffer) -> None:
        if not TASK_ID.fullmatch(offer.task_id):
            self.ctx.log.warning("task_offer_bad_id", peer=peer)
            await self.send(peer, "task", TaskUpdate(
                offer.task_id[:64], "rejected", "a task id is 1-64 of A-Z a-z 0-9 _ -"))
            return
        if await self.store.task(offer.task_id, "in", peer) is not None:
            return  # already recorded: the offer came again
        now = time.time()
        reason = self._refusal(peer, offer, now)
        task = TaskRow(offer.task_id, "in", peer, offer.title, offer.description,
                       offer.deliverables, offer.deadline, list(offer.capabilities),
                       "rejected" if reason else "accepted", reason, "", "", now, now)
        await self._save(task, task.state, reason)
        await self.send(peer, "task", TaskUpdate(task.task_id, task.state, reason))
        if not reason:
            await self._start(task)

    def _refusal(self, peer: str, offer: TaskOffer, now: float) -> str:
        if not self.trust.permits(peer, "delegate"):
            return f"{peer} is not trusted to delegate tasks to {self.ctx.entity}"
        missing = sorted(set(offer.capabilities) - set(self.config.peers.capabilities))
        if missing:
            return f"{self.ctx.entity} lacks the capabilities {', '.join(missing)}"
        if offer.deadline and offer.deadline < now:
            return "the deadline has already passed"
        return ""

    async def resume(self) -> None:
        """After a restart: give unfinished tasks to the orchestrator again."""
        for task in await self.store.tasks(("accepted", "working")):
            if task.direction == "in":
                await self._start(task)

    async def _start(self, task: TaskRow) -> None:
        goal_id = task.goal_id or f"{GOAL_PREFIX}{task.peer}-{task.task_id}"
        if task.goal_id != goal_id:  # recorded first: the turn's end finds it by this id
            task = dataclasses.replace(task, goal_id=goal_id)
            await self.store.save_task(task)
        goal = Goal(_goal_text(task), goal_id, goal_id, f"peer:{task.peer}")
        try:
            await self.turns.submit(goal)
        except EntitydError as exc:
            await self._finish(task, "failed", f"could not start the task: {exc}")
            return
        if task.state != "working":
            await self._save(task, "working", "")
            await self.send(task.peer, "task", TaskUpdate(task.task_id, "progress",
                                                          "started working on it"))

    async def _on_turn(self, done: TurnDone) -> None:
        if done.task_id.startswith(GOAL_PREFIX):
            await self._answers.put(done)

    async def run(self) -> None:
        """Finish the tasks whose turns ended (outside the event callback: git is slow)."""
        while True:
            done = await self._answers.get()
            task = await self.store.task_by_goal(done.task_id)
            if task is None or task.state in FINAL:
                continue
            if not done.ok:
                await self._finish(task, "failed", done.text[:4000])
                continue
            try:
                patch = await self.workspace.format_patch(done.commits)
            except GitError as exc:
                await self._finish(task, "failed", f"could not package the work: {exc}")
                continue
            try:
                inline, size, digest = await self.deliverables.pack(_kept(task), patch)
            except ValueError as exc:
                await self._finish(task, "failed", str(exc))
                continue
            await self._finish(task, "completed", done.text[:4000], inline, len(done.commits),
                               size, digest)

    async def _finish(self, task: TaskRow, state: str, note: str, patch: bytes = b"",
                      commits: int = 0, size: int = 0, digest: str = "") -> None:
        await self._save(task, state, note)
        await self.send(task.peer, "task", TaskUpdate(task.task_id, state, note, patch, commits,
                                                      size, digest))

    async def piece(self, peer: str, get: DeliverableGet) -> DeliverableChunk | None:
        """A piece of the deliverable of a task `peer` delegated to us; None if not ours."""
        task = await self.store.task(get.task_id, "in", peer)
        if task is None or task.state != "completed":
            return None
        data = await self.deliverables.piece(_kept(task), get.offset, get.length)
        return None if data is None else DeliverableChunk(data)

    # ---- both -------------------------------------------------------------------------

    async def _save(self, task: TaskRow, state: str, note: str, branch: str = "",
                    goal_id: str = "") -> None:
        now = time.time()
        await self.store.save_task(TaskRow(
            task.task_id, task.direction, task.peer, task.title, task.description,
            task.deliverables, task.deadline, task.capabilities, state, note,
            branch or task.branch, goal_id or task.goal_id, task.created, now))
        # No title or note: events cross the hub, and these came encrypted.
        await self.ctx.emit(f"task_{state}", task_id=task.task_id, peer=task.peer,
                            direction=task.direction, branch=branch or task.branch)

    async def infos(self) -> list[TaskInfo]:
        return [TaskInfo(t.task_id, t.direction, t.peer, t.title, t.state, t.note, t.branch,
                         t.created, t.updated) for t in await self.store.tasks()]


def _kept(task: TaskRow) -> str:
    """The name of a task's deliverable in the object store: ids are unique per peer."""
    return f"{task.peer}.{task.task_id}"


def _goal_text(task: TaskRow) -> str:
    lines = [f"{task.peer} delegated a task to you: {task.title}", "", task.description]
    if task.deliverables:
        lines += ["", f"Deliverables: {task.deliverables}"]
    if task.deadline:
        left = max(0, int(task.deadline - time.time()))
        lines += ["", f"Deadline: in {left} seconds."]
    lines += ["", "Code you have committed in your workspace during this task is sent "
              f"back to {task.peer} as the deliverable."]
    return "\n".join(lines)
