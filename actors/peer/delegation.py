"""Delegated tasks, both ways: offer -> accepted/rejected -> progress -> completed/failed.

Every step is a durable, encrypted command (op `delegate` for the offer, `task` for
the updates) and is written to the store before it is queued, so either side can be
killed at any point and pick the task up where it was:

    delegator (out)  offered -> accepted -> working -> delivered | failed | rejected
    delegate (in)    accepted -> working -> completed | failed   (or rejected at once)

A priced task is paid through an escrow on the delegator's chain (escrow.py): held
before the offer, checked by the delegate before it accepts, posted when the delegator
accepts the delivery, voided when it rejects it or the deadline passes; the delegate
hears which (`paid` or `unpaid`), and both sides show the task's money state. The
delegate takes that word as a hint only: it reads the hold again on the delegator's
chain then, and before it hands over any of the work (the `completed` update, a piece of
a kept deliverable), which it withholds once the hold no longer pays for it. With
`[economy] auto_accept`, a priced delivery is accepted by itself once the operator's
accept command passes on its branch (acceptance.py); otherwise it waits for them.

The delegate runs the task as a turn of its orchestrator, in the workspace it keeps for
that delegator (actors/workspaces.py: never its own, nor another peer's); when the turn
commits code, the commits travel back as `git format-patch` output and land on the
branch `delegated/<task_id>` of the delegator's workspace, beside its own work, where it
can test them before merging. On restart the delegate gives unfinished tasks to its
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
from protocol import Error, reasons
from protocol.ledger import MAX_AMOUNT

from ..messages import Goal, TurnDone
from ..workspace import GitError
from ..workspaces import Workspaces
from . import outcomes
from .acceptance import PREFIX, Acceptance, Verdict
from .deliverable import KEEP_READ_S, Deliverables
from .escrow import HELD, HOLD_ID_BYTES, POSTED, VOIDED, Escrow, settled
from .messages import (
    DeliverableChunk,
    DeliverableGet,
    PeerDelegate,
    PeerOutcome,
    TaskInfo,
    TaskOffer,
    TaskSettle,
    TaskUpdate,
)
from .policy import Trust
from .store import CAPABILITIES_KEPT, PeerStore, TaskRow, kept_capabilities
from .task_locks import TaskLocks
from .turns import Turns

Send = Callable[[str, str, object], Awaitable[object]]  # (peer, op, message)

FINAL = ("delivered", "completed", "failed", "rejected")
PAID, UNPAID = "paid", "unpaid"  # the delegator's word to the delegate on its escrow
WITHDRAWN = "withdrawn"  # the delegator's word on an unpaid task it no longer wants
GOAL_PREFIX = "dlg-"
TASK_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
# What a task keeps of the text a member chose, and what the task list shows of it: the
# list answers in one message, so it holds the newest tasks (at most LISTED) only while
# their text stays under LIST_BYTES, far under an envelope's size whatever members sent.
TITLE_MAX = 160
NOTE_MAX = 2000  # in the list; a task keeps up to peers.max_text_chars of its note
LISTED = 200
LIST_BYTES = 512 * 1024
# Offers refused at once (no trust, a missing capability, too long) kept per member: the
# newest, so that a member cannot grow the store (and the list) without bound.
REFUSED_KEPT = 50


def goal_of(peer: str, task_id: str) -> str:
    """The orchestrator's goal id for the task `task_id` of `peer`: one per peer and task,
    since no peer name nor task id holds a '.' (with '-', "a" giving "b-x" and "a-b"
    giving "x" named one goal, and either could stop the other's by withdrawing its own;
    actors/a2a/server.py's goals are dlg-a2a-<client>.<task>, and no peer is a2a-*)."""
    return f"{GOAL_PREFIX}{peer}.{task_id}"


class Delegation:
    def __init__(self, ctx: Context, config: Config, store: PeerStore, turns: Turns,
                 workspaces: Workspaces, trust: Trust, send: Send,
                 deliverables: Deliverables) -> None:
        self.ctx = ctx
        self.config = config
        self.store = store
        self.turns = turns
        self.workspaces = workspaces
        self.workspace = workspaces.own  # where what we delegated lands
        self.trust = trust
        self.send = send
        self.deliverables = deliverables
        self.escrow = Escrow(ctx)
        self.locks = TaskLocks()  # one decision at a time per task
        self._answers: asyncio.Queue[TurnDone] = asyncio.Queue()
        self.acceptance = Acceptance(config, workspaces.own)
        self._to_check: asyncio.Queue[tuple[str, str]] = asyncio.Queue()  # (task id, peer)
        # Kept deliverables whose escrow was read lately, as still paying: name -> when.
        self._escrow_read: dict[str, float] = {}
        turns.listen(self._on_turn)

    # ---- as the delegator -------------------------------------------------------------

    async def offer(self, request: PeerDelegate) -> PeerOutcome:
        now = time.time()
        deadline = now + (request.deadline_s or self.config.peers.delegation_timeout)
        task = TaskRow(uuid.uuid4().hex[:12], "out", request.peer, request.title,
                       request.description, request.deliverables, deadline,
                       list(request.capabilities), "offered", "", "", "", now, now)
        if request.price < 0:
            return PeerOutcome(request.peer, False, reasons.BAD_REQUEST,
                               "a price is 0 (unpaid) or more")
        if request.price:
            placed = await self.escrow.place(request.peer, task.task_id, request.price,
                                             deadline)
            if not placed.ok:
                return PeerOutcome(request.peer, False, placed.code, "the escrow could not "
                                   f"be placed, so nothing was offered: {placed.text}")
            task = dataclasses.replace(task, price=request.price,
                                       hold=bytes.fromhex(placed.id), money=HELD)
        await self.store.save_task(task)
        await self.send(request.peer, "delegate", TaskOffer(
            task.task_id, task.title, task.description, task.deliverables, deadline,
            task.capabilities, task.price, task.hold))
        await self.ctx.emit("task_offered", task_id=task.task_id, peer=request.peer,
                            price=task.price)
        paid = f" for {task.price}, held in escrow" if task.price else ""
        return PeerOutcome(request.peer, True, outcomes.OFFERED,
                           f"offered task {task.task_id} to {request.peer}{paid}; "
                           "`entityctl tasks` follows it", task.task_id)

    async def settle(self, request: TaskSettle) -> PeerOutcome:
        """The delegator's verdict on a task it delegated: accept the delivery (the
        escrow pays) or reject it (the escrow is voided)."""
        found = next((t for t in await self.store.tasks()
                      if t.task_id == request.task_id and t.direction == "out"), None)
        if found is None:
            return PeerOutcome("", False, reasons.NOT_FOUND,
                               f"no task {request.task_id} was delegated by this entity")
        async with self.locks.hold(found.task_id, "out", found.peer):
            task = await self.store.task(found.task_id, "out", found.peer) or found
            return await self._settle_as_asked(task, request)

    async def _settle_as_asked(self, task: TaskRow, request: TaskSettle) -> PeerOutcome:
        if request.accept and task.state != "delivered":
            return PeerOutcome(task.peer, False, reasons.BAD_REQUEST,
                               f"task {task.task_id} is {task.state}, not delivered")
        if not task.price:
            if request.accept or task.state in FINAL:
                return PeerOutcome(task.peer, True, reasons.DONE, f"task {task.task_id} "
                                   "was unpaid: there is no escrow to settle")
            return await self._withdraw(task, request.reason or "not needed any more")
        if task.money != HELD:
            return PeerOutcome(task.peer, False, reasons.HOLD_RESOLVED,
                               f"the escrow of task {task.task_id} is {task.money} already")
        amount = (request.amount or task.price) if request.accept else 0
        if amount > task.price:
            return PeerOutcome(task.peer, False, reasons.BAD_REQUEST,
                               f"the escrow holds {task.price}, not {amount}")
        reason = request.reason or ("" if request.accept else "the delivery was rejected")
        return await self._settle(task, amount, reason)

    async def _settle(self, task: TaskRow, amount: int, reason: str,
                      why: str = "") -> PeerOutcome:
        result = await self.escrow.settle(task, amount, reason)
        if not settled(result):
            if result.code == reasons.HOLD_RESOLVED:
                await self._reconciled(task)
            return PeerOutcome(task.peer, False, result.code, result.text)
        note = f"{amount} of {task.price} paid" if amount else reason
        note += f" ({why})" if why else ""
        await self._resolved(task, POSTED if amount else VOIDED, note)
        return PeerOutcome(task.peer, True, reasons.DONE,
                           f"task {task.task_id}: {note}", task.task_id)

    async def _resolved(self, task: TaskRow, money: str, note: str) -> None:
        """Record that the task's escrow was posted or voided, and tell the delegate."""
        word = PAID if money == POSTED else UNPAID
        task = dataclasses.replace(task, money=money)
        await self._save(task, task.state, note, event=f"task_{word}")
        await self.send(task.peer, "task", TaskUpdate(task.task_id, word, note))

    async def _reconciled(self, task: TaskRow) -> None:
        """The ledger says the task's hold was resolved already, though the task still
        says held: a decision cut off between the ledger's answer and the task's save (a
        kill, a restart). The task takes what the ledger has, and the delegate hears it;
        else a deadline's void would be refused for ever and the delegate never told."""
        try:
            state, paid = await self.escrow.resolved(task)
        except EntitydError as exc:
            self.ctx.log.warning("escrow_not_read", task_id=task.task_id, error=str(exc))
            return
        if state == POSTED:
            await self._resolved(task, POSTED, f"{paid} of {task.price} paid (found posted "
                                 "on the ledger)")
        elif state == VOIDED:
            await self._resolved(task, VOIDED, "the escrow was found voided on the ledger")

    async def _withdraw(self, task: TaskRow, reason: str) -> PeerOutcome:
        """An unpaid task rejected before its delivery: the delegate is told to stop.
        (A priced one is withdrawn by voiding its escrow, which the delegate can check.)"""
        note = f"withdrawn: {reason}"[:1000]
        await self._save(task, task.state, note, event="task_withdrawn")
        await self.send(task.peer, "task", TaskUpdate(task.task_id, WITHDRAWN, reason[:1000]))
        return PeerOutcome(task.peer, True, reasons.DONE,
                           f"task {task.task_id} withdrawn: {task.peer} is told to stop",
                           task.task_id)

    async def on_update(self, peer: str, update: TaskUpdate) -> None:
        if update.state in (PAID, UNPAID, WITHDRAWN):  # on a task given to us
            async with self.locks.hold(update.task_id, "in", peer):
                if update.state == WITHDRAWN:
                    await self._called_off(peer, update)
                else:
                    await self._paid(peer, update)
            return
        async with self.locks.hold(update.task_id, "out", peer):
            await self._progressed(peer, update)

    async def _progressed(self, peer: str, update: TaskUpdate) -> None:
        """The delegate's word on a task we gave it (landing its delivery)."""
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
        task = await self._save(task, state, note, branch)
        if state in ("rejected", "failed") and task.money == HELD:  # no work to pay for
            await self._settle(task, 0, f"the task was {state}: {note}"[:1000])
        elif self._to_accept(task):
            self._to_check.put_nowait((task.task_id, task.peer))

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

    def _to_accept(self, task: TaskRow) -> bool:
        """Whether a task of ours waits for the accept command: delivered, its escrow
        held, and not checked yet (a check's note says so; a delegate whose own note
        began so would only forgo being paid by itself)."""
        return (self.config.economy.auto_accept and task.direction == "out"
                and task.state == "delivered" and task.money == HELD
                and not task.note.startswith(PREFIX))

    async def _waiting(self, task_id: str, peer: str) -> TaskRow | None:
        """The task as stored, if it still waits for the accept command: the operator or
        the deadline may have settled it while the command ran."""
        task = await self.store.task(task_id, "out", peer)
        return task if task is not None and self._to_accept(task) else None

    async def _checks(self) -> None:
        """Run the accept command on each delivery waiting for it, one at a time (outside
        the handling of the delivery: a test suite takes minutes)."""
        while True:
            task_id, peer = await self._to_check.get()
            task = await self._waiting(task_id, peer)
            if task is None:
                continue
            verdict = await self.acceptance.check(task.branch)
            # No output: events cross the hub.
            await self.ctx.emit("task_checked", task_id=task_id, peer=peer,
                                branch=task.branch, outcome=verdict.outcome,
                                exit_code=verdict.exit_code)
            async with self.locks.hold(task_id, "out", peer):
                await self._checked(task_id, peer, verdict)

    async def _checked(self, task_id: str, peer: str, verdict: Verdict) -> None:
        note = verdict.note
        task = await self._waiting(task_id, peer)
        if task is not None and verdict.passed:
            paid = await self._settle(task, task.price, "", verdict.note)
            if paid.ok:
                return
            note += (f", but the escrow could not be posted ({paid.text}); "
                     "`entityctl tasks accept` tries again")
            task = await self._waiting(task_id, peer)
        if task is not None:  # the operator decides, with what the delegate said
            note += f"\n\nThe delegate's note: {task.note}" if task.note else ""
            await self.store.save_task(dataclasses.replace(task, note=note[:8000],
                                                           updated=time.time()))

    async def expire(self) -> None:
        """Fail our offers whose deadline passed without a result, and void the escrow
        of every task of ours whose deadline passed before it was settled."""
        now = time.time()
        unfinished = ("offered", "accepted", "working")
        for task in await self.store.tasks(unfinished):
            if task.direction == "out" and task.deadline and now > task.deadline:
                async with self.locks.hold(task.task_id, "out", task.peer):
                    fresh = await self.store.task(task.task_id, "out", task.peer)
                    if fresh is not None and fresh.state in unfinished:
                        await self._save(fresh, "failed",
                                         "the deadline passed without a result")
        for task in await self.store.tasks():
            if (task.direction == "out" and task.money == HELD and task.deadline
                    and now > task.deadline):
                async with self.locks.hold(task.task_id, "out", task.peer):
                    fresh = await self.store.task(task.task_id, "out", task.peer)
                    if fresh is None or fresh.money != HELD:
                        continue
                    done = await self._settle(fresh, 0, "the deadline passed before the "
                                              "delivery was accepted")
                if not done.ok:
                    self.ctx.log.warning("escrow_not_voided", task_id=task.task_id,
                                         reason=done.text)

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
        if not reason and offer.price:
            reason = await self.escrow.check(peer, offer)
        limit = self.config.peers.max_text_chars
        # Kept only as the ledger could hold them (a member may send any int and bytes):
        # a price within MAX_AMOUNT, a hold id of an entry's length.
        price = offer.price if 0 < offer.price <= MAX_AMOUNT else 0
        hold = offer.hold if price and len(offer.hold) == HOLD_ID_BYTES else b""
        task = TaskRow(offer.task_id, "in", peer, _clipped(offer.title, TITLE_MAX),
                       offer.description[:limit], offer.deliverables[:limit], offer.deadline,
                       kept_capabilities(offer.capabilities),
                       "rejected" if reason else "accepted", reason, "", "", now, now,
                       price, hold, HELD if price and not reason else "")
        await self._save(task, task.state, reason)
        await self.send(peer, "task", TaskUpdate(task.task_id, task.state, reason))
        if reason:
            await self.store.forget_refused(peer, REFUSED_KEPT)
        else:
            await self._start(task)

    def _refusal(self, peer: str, offer: TaskOffer, now: float) -> str:
        limit = self.config.peers.max_text_chars
        for field in ("title", "description", "deliverables"):
            size = len(getattr(offer, field))
            if size > (TITLE_MAX if field == "title" else limit):
                return (f"the task's {field} is {size} characters; {self.ctx.entity} takes "
                        f"at most {TITLE_MAX if field == 'title' else limit}")
        if len(offer.capabilities) > CAPABILITIES_KEPT:
            return f"a task names at most {CAPABILITIES_KEPT} capabilities"
        if not self.trust.permits(peer, "delegate"):
            return f"{peer} is not trusted to delegate tasks to {self.ctx.entity}"
        missing = sorted(set(offer.capabilities) - set(self.config.peers.capabilities))
        if missing:
            return f"{self.ctx.entity} lacks the capabilities {', '.join(missing)}"
        if offer.deadline and offer.deadline < now:
            return "the deadline has already passed"
        if not 0 <= offer.price <= MAX_AMOUNT:
            return f"a price is 0 (unpaid) to {MAX_AMOUNT}"
        return ""

    async def _paid(self, peer: str, update: TaskUpdate) -> None:
        """The delegator says it settled the escrow of a task it gave us: a hint to read
        the hold again on its chain, which alone sets the task's money (`paid` for a
        hold still pending changes nothing). Voided before we delivered (the delegator
        rejected the task, or its deadline passed), or `unpaid` while the hold still
        stands, the task is withdrawn: its turn stops, and the delegator hears that it
        failed (stopping costs us nothing; only working on would). EntitydError (the
        ledger cannot be read): the word is handled again later."""
        task = await self.store.task(update.task_id, "in", peer)
        if task is None:
            self.ctx.log.warning("task_update_unknown", peer=peer, task_id=update.task_id)
            return
        if task.money != HELD:
            return  # a repeated word, or an offer we did not take
        money, problem = await self.escrow.standing(task)
        if money != HELD:
            task = await self._save(dataclasses.replace(task, money=money), task.state,
                                    update.note,
                                    event=f"task_{PAID if money == POSTED else UNPAID}")
        elif update.state == PAID:
            self.ctx.log.warning("escrow_word_unfounded", peer=peer, task_id=task.task_id,
                                 said=update.state)
            return
        if task.state not in ("accepted", "working"):
            return
        if money == VOIDED:
            await self._withdrawn(task, "the escrow is no longer held before the delivery: "
                                        f"{problem} ({update.note})")
        elif money == HELD:
            await self._withdrawn(task, "the delegator says it will not pay, before the "
                                        f"delivery ({update.note})")

    async def _called_off(self, peer: str, update: TaskUpdate) -> None:
        """The delegator withdrew an unpaid task it gave us: its turn stops, and the
        delegator hears that it failed. A priced task is withdrawn only through its
        escrow (voided: `_paid`), so that what we were promised stays checkable."""
        task = await self.store.task(update.task_id, "in", peer)
        if task is None:
            self.ctx.log.warning("task_update_unknown", peer=peer, task_id=update.task_id)
            return
        if task.price or task.state not in ("accepted", "working"):
            return  # priced, or over already
        await self._withdrawn(task, f"the delegator withdrew it before the delivery "
                                    f"({update.note})")

    async def _withdrawn(self, task: TaskRow, why: str) -> None:
        # Final first: the cancelled turn's end then finds nothing to deliver.
        await self._finish(task, "failed", f"withdrawn: {why}"[:1000])
        if not task.goal_id:
            return
        try:
            await self.turns.cancel(task.goal_id, f"{task.peer} withdrew the task")
        except EntitydError as exc:
            self.ctx.log.warning("withdrawn_turn_not_cancelled", task_id=task.task_id,
                                 error=str(exc))

    async def resume(self) -> None:
        """After a restart: give unfinished tasks to the orchestrator again, and check
        the deliveries whose check had not ended."""
        for task in await self.store.tasks(("accepted", "working")):
            if task.direction == "in":
                await self._start(task)
        for task in await self.store.tasks(("delivered",)):
            if self._to_accept(task):
                self._to_check.put_nowait((task.task_id, task.peer))

    async def _start(self, task: TaskRow) -> None:
        goal_id = task.goal_id or goal_of(task.peer, task.task_id)
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
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(self._turns_ended())
            tasks.create_task(self._checks())

    async def _turns_ended(self) -> None:
        """Finish the tasks whose turns ended (outside the event callback: git is slow)."""
        while True:
            done = await self._answers.get()
            found = await self.store.task_by_goal(done.task_id)
            if found is None:
                continue
            async with self.locks.hold(found.task_id, "in", found.peer):
                await self._turn_ended(found, done)

    async def _turn_ended(self, found: TaskRow, done: TurnDone) -> None:
        task = await self.store.task(found.task_id, "in", found.peer)
        if task is None or task.state in FINAL:  # withdrawn meanwhile, say
            return
        if not done.ok:
            await self._finish(task, "failed", done.text[:4000])
            return
        try:
            patch = await self.workspaces.of(task.peer).format_patch(done.commits)
        except (GitError, ValueError) as exc:
            await self._finish(task, "failed", f"could not package the work: {exc}")
            return
        if task.price and await self._not_paid_for(task):
            return
        try:
            inline, size, digest = await self.deliverables.pack(_kept(task), patch)
        except ValueError as exc:
            await self._finish(task, "failed", str(exc))
            return
        await self._finish(task, "completed", done.text[:4000], inline, len(done.commits),
                           size, digest)

    async def _not_paid_for(self, task: TaskRow) -> bool:
        """Whether a priced task's work is withheld at its delivery: its escrow no longer
        pays for it, or cannot be read (the work is not given for nothing: the task
        fails with why)."""
        try:
            return bool(await self._withheld(task))
        except EntitydError as exc:
            await self._finish(task, "failed", "the escrow could not be read before the "
                               f"delivery, so nothing was handed over: {exc}"[:1000])
            return True

    async def _finish(self, task: TaskRow, state: str, note: str, patch: bytes = b"",
                      commits: int = 0, size: int = 0, digest: str = "") -> None:
        await self._save(task, state, note)
        await self.send(task.peer, "task", TaskUpdate(task.task_id, state, note, patch, commits,
                                                      size, digest))

    async def piece(self, peer: str, get: DeliverableGet) -> DeliverableChunk | Error | None:
        """A piece of the deliverable of a task `peer` delegated to us; None if not ours,
        an error while its escrow does not pay for it. A held escrow is read again on the
        delegator's chain once a fetch (at its first piece, or when not read lately), not
        once a piece; voided (`withdrawn` on our side), the task fails."""
        task = await self.store.task(get.task_id, "in", peer)
        if task is None or task.state != "completed":
            return None
        name, now = _kept(task), time.monotonic()
        if task.money == VOIDED:
            return Error(reasons.NOT_FOUND, f"task {task.task_id}'s escrow was voided: "
                         "its deliverable is not handed over")
        read = self._escrow_read.get(name)
        if task.money == HELD and (get.offset == 0 or read is None or now - read > KEEP_READ_S):
            try:
                why = await self._withheld(task)
            except EntitydError as exc:
                return Error(reasons.BUSY, f"{self.ctx.entity} cannot read the escrow of "
                             f"task {task.task_id} now ({exc}); fetch it again later")
            if why:
                self._escrow_read.pop(name, None)
                return Error(reasons.NOT_FOUND, f"task {task.task_id}'s deliverable is "
                             f"not handed over: {why}")
            self._escrow_read = {n: t for n, t in self._escrow_read.items()
                                 if now - t <= KEEP_READ_S}
            self._escrow_read[name] = now
        data = await self.deliverables.piece(name, get.offset, get.length)
        return None if data is None else DeliverableChunk(data)

    async def _withheld(self, task: TaskRow) -> str:
        """Why a priced task given to us must not be handed over ('' when its escrow
        still pays for it), read again on the delegator's chain, whatever the delegator
        said: when it does not, the task fails, withdrawn. EntitydError when the ledger
        cannot be read."""
        money, problem = await self.escrow.standing(task)
        if money != VOIDED:
            return ""
        why = f"withdrawn: the escrow is no longer held for {self.ctx.entity}: {problem}"
        await self._finish(dataclasses.replace(task, money=VOIDED), "failed", why[:1000])
        return why

    # ---- both -------------------------------------------------------------------------

    async def _save(self, task: TaskRow, state: str, note: str, branch: str = "",
                    goal_id: str = "", event: str = "") -> TaskRow:
        """Record the task's new state, announce it (as `event`, by default
        `task_<state>`), and return the row as saved."""
        note = note[:self.config.peers.max_text_chars]
        saved = dataclasses.replace(task, state=state, note=note, branch=branch or task.branch,
                                    goal_id=goal_id or task.goal_id, updated=time.time())
        await self.store.save_task(saved)
        # No title or note: events cross the hub, and these came encrypted.
        await self.ctx.emit(event or f"task_{state}", task_id=task.task_id, peer=task.peer,
                            direction=task.direction, branch=saved.branch, price=task.price,
                            money=task.money)
        return saved

    async def infos(self) -> list[TaskInfo]:
        """The newest tasks, oldest first, their title and note clipped: at most LISTED,
        and only as many as keep their text under LIST_BYTES."""
        listed: list[TaskInfo] = []
        size = 0
        for t in reversed(await self.store.tasks(newest=LISTED)):
            info = TaskInfo(t.task_id, t.direction, t.peer, _clipped(t.title, TITLE_MAX),
                            t.state, _clipped(t.note, NOTE_MAX), t.branch, t.created,
                            t.updated, t.price, t.money)
            size += len(info.title.encode()) + len(info.note.encode()) + 256
            if size > LIST_BYTES:
                break
            listed.append(info)
        return listed[::-1]


def _clipped(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[:limit - 1] + "\u2026"


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
