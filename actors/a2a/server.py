"""The entity's A2A face, on the web actor's port: its signed agent card and a2a-sdk's
JSON-RPC endpoint (A2A 1.0: SendMessage, SendStreamingMessage, GetTask, CancelTask,
SubscribeToTask and the push-notification configs), with a durable task store (SQLite in
the data dir).

A message becomes a task run as a delegation to the orchestrator: a goal named
`dlg-a2a-<client>.<task id>` from `peer:a2a-<client>`, so its turn has exactly a trusted
peer's delegated task's rights (the workspace and the coder, nothing of the operator's;
the workspace is the one kept for this client's tasks: actors/workspaces.py),
its events carry no content, and the orchestrator runs it again after a crash. The
answer comes back as `turn_done` to the web actor and ends the task (an artifact with
the answer, another with the commits the turn made). The tasks handed over are kept on
disk (pending.py) until answered, so a restart of the daemon loses none: each is given
to the orchestrator again, and its answer is written to the task even with no request
left waiting for it. Cancelling a task (CancelTask) cancels its goal too
(`goal_cancel`): a turn running stops, a goal still queued never starts.

A task resumed after a restart runs through a2a-sdk's own machinery again (its active
task, fed by this executor), so a client that re-subscribes to it gets the rest of its
updates and its end, and its push notifications (push.py; their configs in the same
SQLite file) go on.

Who may call: a client presents its API key (`Authorization: Bearer KEY` or `X-API-Key`),
checked against the sha256 digests in `[a2a] api_keys`; with none configured, nothing
here is served. The card is public once serving, as A2A discovery expects.

What a client can make the entity keep is bounded: a call's body is at most MAX_BODY
bytes (a stored task keeps its messages whole), a task keeps its last MAX_HISTORY
messages (a client may go on sending to a task of its own while it runs), and the store
keeps a client's newest MAX_TASKS tasks, dropping its oldest beyond them with their push
configs.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

from a2a.helpers.proto_helpers import new_task, new_text_artifact, new_text_message, new_text_part
from a2a.server.agent_execution import AgentExecutor, RequestContext
from a2a.server.context import ServerCallContext
from a2a.server.events import EventQueue
from a2a.server.request_handlers import DefaultRequestHandlerV2
from a2a.server.routes import create_jsonrpc_routes
from a2a.server.routes.common import StarletteUser
from a2a.server.tasks import DatabaseTaskStore, TaskUpdater
from a2a.types import Artifact, Task, TaskState
from a2a.utils.errors import TaskNotFoundError, UnsupportedOperationError
from sqlalchemy import delete, literal_column, select
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from starlette.authentication import SimpleUser
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import BaseRoute, Route

from entityd import Config, Context, EntitydError
from protocol import Error

from ..messages import Goal, GoalAccepted, GoalCancel, TurnDone
from ..recent import Recent
from . import card
from .messages import CardSign, CardSigned
from .pending import Pending, PendingGoals
from .push import PushConfigStore, PushPolicy, PushSender, http_client

GOAL_PREFIX = "dlg-a2a-"  # the delegation's prefix (turn_scope.DELEGATED_PREFIX), then a2a-
SOURCE_PREFIX = "peer:a2a-"
CARD_TIMEOUT_S = 10.0
MAX_TEXT = 16_000
MAX_COMMITS = 100
TERMINAL = (TaskState.TASK_STATE_COMPLETED, TaskState.TASK_STATE_FAILED,
            TaskState.TASK_STATE_CANCELED, TaskState.TASK_STATE_REJECTED)

STEP_WAIT_S = 0.5  # how soon the relay of steps sees its task end
CANCELLED = "cancelled"  # TurnDone.stopped of a turn a goal_cancel stopped
HAND_OVER_WAIT_S = 30.0  # how long a cancel waits for a goal on its way to the orchestrator
CANCELLED_KEPT = 1024  # cancelled goals remembered, for a hand-over racing its cancel
MAX_BODY = 64 * 1024  # bytes of one call: a message's text is cut at MAX_TEXT anyway
MAX_TASKS = 1000  # tasks kept per client, the newest (the rest are dropped)
MAX_HISTORY = 16  # messages kept per task, the last

Endpoint = Callable[[Request], Awaitable[Response]]


def goal_id(client: str, task_id: str) -> str:
    return f"{GOAL_PREFIX}{client}.{task_id}"


def call_context(client: str) -> ServerCallContext:
    """The context a2a-sdk's task store scopes a client's tasks by."""
    return ServerCallContext(user=StarletteUser(SimpleUser(client)))


def api_key(request: Request) -> str:
    auth = request.headers.get("authorization", "")
    scheme, _, value = auth.partition(" ")
    if scheme.lower() == "bearer" and value.strip():
        return value.strip()
    return request.headers.get("x-api-key", "")


class TaskStore(DatabaseTaskStore):
    """a2a-sdk's SQLite task store, keeping each client's newest MAX_TASKS tasks (a
    client's older ones are dropped, with their push configs, as it saves a new one) and
    each task's last MAX_HISTORY messages, so no client can fill the disk with tasks."""

    def __init__(self, engine: AsyncEngine, push_configs: PushConfigStore,
                 max_tasks: int = MAX_TASKS) -> None:
        super().__init__(engine)
        self.push_configs = push_configs
        self.max_tasks = max_tasks

    async def save(self, task: Task, context: ServerCallContext) -> None:
        async with self.async_session_maker() as session:  # not `get`: no history read
            new = (await session.execute(select(self.task_model.id).where(
                self.task_model.id == task.id))).first() is None
        if len(task.history) > MAX_HISTORY:
            kept = Task()
            kept.CopyFrom(task)
            del kept.history[:len(kept.history) - MAX_HISTORY]
            task = kept
        await super().save(task, context)
        if new:
            await self._trim(self.owner_resolver(context))

    async def _trim(self, owner: str) -> None:
        tasks, configs = self.task_model, self.push_configs.config_model
        # By rowid: the order the tasks were made in (an update keeps a row's rowid).
        async with self.async_session_maker.begin() as session:
            old = (await session.execute(
                select(tasks.id).where(tasks.owner == owner)
                .order_by(literal_column("rowid").desc()).offset(self.max_tasks))).scalars().all()
            if old:
                await session.execute(delete(tasks).where(tasks.id.in_(old)))
                await session.execute(delete(configs).where(configs.task_id.in_(old)))


class A2AFace:
    """What the web actor serves for A2A, and the answers it hands back to tasks."""

    def __init__(self, ctx: Context, config: Config) -> None:
        self.ctx = ctx
        self.config = config
        self.pending = PendingGoals(config.data_dir / "a2a-pending.sqlite3")
        self.engine: AsyncEngine = create_async_engine(
            f"sqlite+aiosqlite:///{config.data_dir / 'a2a-tasks.sqlite3'}")
        self.push_configs = PushConfigStore(self.engine)
        self.store = TaskStore(self.engine, self.push_configs)
        self.policy = PushPolicy(config.a2a.push_host_allowed)
        self.push_http = http_client(self.policy)
        # A task's answer, by goal id, for the execution waiting for it.
        self.waiting: dict[str, asyncio.Future[TurnDone]] = {}
        # Goals on their way to the orchestrator (the ask not yet answered): a cancel
        # waits for the hand-over, so that it finds the goal there to stop.
        self.handing: dict[str, asyncio.Future[GoalAccepted | str]] = {}
        # Goals whose task was cancelled lately: one not yet handed over never is, and
        # one the orchestrator took while its cancel was on the way is cancelled there.
        self.cancelled: Recent[str] = Recent(CANCELLED_KEPT)
        self.handler: DefaultRequestHandlerV2 | None = None
        self.url = ""
        self._card: str | None = None

    async def open(self) -> None:
        await self.pending.open()
        await self.store.initialize()
        await self.push_configs.initialize()
        # Before any turn_done can arrive: a resumed task's answer waits for resume().
        loop = asyncio.get_running_loop()
        for item in await self.pending.all():
            self.waiting[item.goal_id] = loop.create_future()

    async def close(self) -> None:
        if self.handler is not None:
            await self.handler.aclose()  # a2a-sdk's running tasks (each resumed later)
        await self.push_http.aclose()
        await self.pending.close()
        await self.engine.dispose()

    def routes(self, url: str) -> list[BaseRoute]:
        """The card and the RPC endpoint of the A2A server at `url` (the page's base)."""
        self.url = url.rstrip("/") + card.RPC_PATH
        self.handler = DefaultRequestHandlerV2(
            EntityExecutor(self), self.store, card.build(self.config, self.url, bytes(32)),
            push_config_store=self.push_configs,
            push_sender=PushSender(self.push_http, self.push_configs, self.ctx.log),
            push_url_validator=self.policy.check)
        rpc = create_jsonrpc_routes(self.handler, card.RPC_PATH)[0]
        return [Route(card.CARD_PATH, self.agent_card, methods=["GET"]),
                Route(card.RPC_PATH, self._authed(rpc.endpoint), methods=["POST"])]

    async def agent_card(self, request: Request) -> Response:
        if self._card is None:
            try:
                signed: CardSigned = await self.ctx.ask(f"{self.ctx.entity}/peer",
                                                        CardSign(self.url), CARD_TIMEOUT_S)
            except EntitydError as exc:
                return JSONResponse({"error": "unavailable", "message": "the card could not "
                                     f"be signed just now: {exc}"[:300]}, status_code=503)
            if not signed.card:
                return JSONResponse({"error": "unavailable", "message": signed.problem},
                                    status_code=503)
            self._card = signed.card
        return Response(self._card, media_type="application/json")

    def _authed(self, inner: Endpoint) -> Endpoint:
        async def endpoint(request: Request) -> Response:
            key = api_key(request)
            client = self.config.a2a.client_of(key) if key else None
            if client is None:
                return JSONResponse({"error": "unauthorized", "message": "an A2A call needs "
                                     "an API key: Authorization: Bearer KEY"},
                                    status_code=401, headers={"www-authenticate": "Bearer"})
            # The page's guard let through only a body that says its length.
            length = request.headers.get("content-length", "0")
            if not length.isdigit() or int(length) > MAX_BODY:
                return JSONResponse({"error": "too_large", "message": "an A2A call is at "
                                     f"most {MAX_BODY} bytes"}, status_code=413)
            request.scope["user"] = SimpleUser(client)
            return await inner(request)
        return endpoint

    # ---- the orchestrator's side ------------------------------------------------------

    async def hand_over(self, item: Pending) -> GoalAccepted | str:
        """Give the orchestrator the task's goal (again: the same goal id is one goal);
        the accepted goal, or why it was refused."""
        goal = Goal(item.text, item.goal_id, item.goal_id, SOURCE_PREFIX + item.client,
                    private=True, notify=f"{self.ctx.entity}/web")
        try:
            accepted = await self.ctx.ask(f"{self.ctx.entity}/orchestrator", goal)
        except EntitydError as exc:
            return str(exc)
        if isinstance(accepted, Error):
            return accepted.message
        return accepted if isinstance(accepted, GoalAccepted) else "no answer"

    async def hand_over_unless_cancelled(self, item: Pending) -> GoalAccepted | str:
        """hand_over, but not for a cancelled task; and a goal taken while its task's
        cancel found nothing yet to stop is cancelled at once."""
        if item.goal_id in self.cancelled:
            return "cancelled"
        accepted = await self.hand_over(item)
        if isinstance(accepted, GoalAccepted) and item.goal_id in self.cancelled:
            await self.cancel_goal(item.goal_id, item.client)
        return accepted

    async def cancel_goal(self, goal: str, client: str) -> None:
        """goal_cancel to the orchestrator; a goal it does not hold is logged, not raised."""
        try:
            await self.ctx.ask(f"{self.ctx.entity}/orchestrator",
                               GoalCancel(goal, f"the A2A client {client} cancelled the task"))
        except EntitydError as exc:  # not queued or running (answered, or never handed over)
            self.ctx.log.info("a2a_cancel_no_turn", goal=goal, reason=str(exc)[:300])

    def mark_cancelled(self, goal: str) -> None:
        self.cancelled.add(goal)

    async def resume(self) -> None:
        """After a restart: every task handed over and not answered runs again through
        a2a-sdk's active task (so a client may re-subscribe to it, and its pushes go on),
        its goal handed to the orchestrator again."""
        for item in await self.pending.all():
            try:
                started = await self._restart(item)
            except Exception:
                self.waiting.pop(item.goal_id, None)
                raise
            if started:
                await self.ctx.emit("a2a_task_resumed", task_id=item.task_id,
                                    client=item.client)

    async def _restart(self, item: Pending) -> bool:
        if self.handler is None:
            return False
        future = self.waiting.setdefault(item.goal_id,
                                         asyncio.get_running_loop().create_future())
        context = call_context(item.client)
        # a2a-sdk has no public call to run a stored task again; its registry is the
        # one place an active task lives (and a re-subscription finds it).
        registry = self.handler._active_task_registry
        try:
            active = await registry.get_or_create(item.task_id, call_context=context,
                                                  create_task_if_missing=False)
        except (TaskNotFoundError, UnsupportedOperationError):
            # Gone, or it ended before the restart (its answer is in it): nothing to run.
            if self.waiting.get(item.goal_id) is future:
                del self.waiting[item.goal_id]
            await self.pending.remove(item.goal_id)
            return False
        await active.enqueue_request(RequestContext(call_context=context, task_id=item.task_id,
                                                    context_id=item.context_id))
        return True

    async def done(self, done: TurnDone) -> None:
        """A turn of an A2A task ended: to its waiting execution, or else to its record."""
        future = self.waiting.get(done.task_id)
        if future is not None and self.handler is not None:
            if not future.done():
                future.set_result(done)
            return
        self.waiting.pop(done.task_id, None)  # not serving yet (no port): nothing resumes it
        item = await self.pending.get(done.task_id)
        if item is None:
            return
        context = call_context(item.client)
        task = await self.store.get(item.task_id, context)
        if task is not None and task.status.state not in TERMINAL:
            task.status.state = (TaskState.TASK_STATE_COMPLETED if done.ok
                                 else TaskState.TASK_STATE_FAILED)
            task.status.message.CopyFrom(new_text_message(
                done.text[:MAX_TEXT], context_id=item.context_id, task_id=item.task_id))
            task.artifacts.extend(artifacts(done))
            await self.store.save(task, context)
        await self.pending.remove(done.task_id)
        await self.ctx.emit("a2a_task_answered", task_id=item.task_id, ok=done.ok)


def artifacts(done: TurnDone) -> list[Artifact]:
    """What a task's turn leaves: its answer, and the commits it made in the workspace."""
    found = [new_text_artifact("answer", done.text[:MAX_TEXT])]
    if done.commits:
        found.append(new_text_artifact("commits", "\n".join(done.commits[:MAX_COMMITS]),
                                       description="the commits made for this task, one "
                                       "id a line, in the workspace the entity keeps for "
                                       "this client's tasks"))
    return found


class EntityExecutor(AgentExecutor):
    """Runs an A2A task as a goal of the orchestrator and reports its outcome."""

    def __init__(self, face: A2AFace) -> None:
        self.face = face

    async def execute(self, context: RequestContext, event_queue: EventQueue) -> None:
        face = self.face
        task_id, context_id = context.task_id or "", context.context_id or ""
        client = context.call_context.user.user_name
        updater = TaskUpdater(event_queue, task_id, context_id)
        found: Pending | None
        if context.message is None:  # a task run again after a restart (A2AFace.resume)
            found = await face.pending.get(goal_id(client, task_id))
            if found is None:
                return
            item = found
        else:
            item = Pending(goal_id(client, task_id), client, task_id, context_id,
                           f"{client} (an A2A client) gives you a task:\n\n"
                           + context.get_user_input()[:MAX_TEXT])
            # On disk before the task is: a stored task that is not done is resumed.
            await face.pending.add(item)
            if context.current_task is None:
                await event_queue.enqueue_event(new_task(
                    task_id, context_id, TaskState.TASK_STATE_SUBMITTED,
                    history=[context.message]))
        future = face.waiting.setdefault(item.goal_id,
                                         asyncio.get_running_loop().create_future())
        try:
            # A resumed task's answer may have come in before it ran again (A2AFace.open).
            if not future.done() and not await self._work(item, updater, future):
                return
            done = future.result()
            if done.stopped == CANCELLED:  # `cancel` writes the task's end (canceled)
                await face.pending.remove(item.goal_id)
                return
            for artifact in artifacts(done):
                await updater.add_artifact(list(artifact.parts), name=artifact.name)
            message = updater.new_agent_message([new_text_part(done.text[:MAX_TEXT])])
            if done.ok:
                await updater.complete(message)
            else:
                await updater.failed(message)
            await face.pending.remove(item.goal_id)
            await face.ctx.emit("a2a_task_answered", task_id=task_id, ok=done.ok)
        finally:
            if face.waiting.get(item.goal_id) is future:
                del face.waiting[item.goal_id]

    async def _work(self, item: Pending, updater: TaskUpdater,
                    future: asyncio.Future[TurnDone]) -> bool:
        """Hand the task to the orchestrator and relay its turn's steps until its answer
        is in `future`; False if the orchestrator would not take it (the task failed)."""
        face = self.face
        after = await face.ctx.events.last_seq()  # the turn's steps come after this
        # Shielded: a2a-sdk cancels this execution right after `cancel`, and the ask may
        # have reached the orchestrator by then; `cancel` awaits the hand-over instead.
        handing = asyncio.ensure_future(face.hand_over_unless_cancelled(item))
        face.handing[item.goal_id] = handing
        handing.add_done_callback(lambda _: face.handing.pop(item.goal_id, None))
        accepted = await asyncio.shield(handing)
        if isinstance(accepted, str):
            await face.pending.remove(item.goal_id)
            await updater.failed(updater.new_agent_message(
                [new_text_part(f"not taken: {accepted}")]))
            return False
        await updater.start_work(updater.new_agent_message(
            [new_text_part(f"working on it ({accepted.queued} ahead)")]))
        await face.ctx.emit("a2a_task_started", task_id=item.task_id, client=item.client)
        async with asyncio.TaskGroup() as tasks:
            # It ends by itself once the future is done: a cancel can be lost in the
            # event reader's wait (nats-py's next_msg), so it is not relied on.
            tasks.create_task(self._relay_steps(updater, item.goal_id, after, future))
            try:
                await future
            finally:
                future.cancel()  # done already, or the execution was cancelled
        return True

    async def _relay_steps(self, updater: TaskUpdater, goal: str, after: int,
                           until: asyncio.Future[TurnDone]) -> None:
        """The turn's steps, as the orchestrator announces them (no content: the turn is
        private), each a `working` status update of the task, until `until` is done."""
        entity = self.face.ctx.entity
        async with self.face.ctx.events.follow(after=after) as follower:
            while not until.done():
                stored = await follower.next(STEP_WAIT_S)
                if stored is None or stored.envelope.src_entity != entity or until.done():
                    continue
                event = stored.envelope.message
                if event.type != "step" or event.data.get("task_id") != goal:
                    continue
                await updater.update_status(TaskState.TASK_STATE_WORKING,
                                            updater.new_agent_message(
                                                [new_text_part(step_line(event.data))]))

    async def cancel(self, context: RequestContext, event_queue: EventQueue) -> None:
        # The goal's turn is stopped too (or, still queued, never starts): the web actor
        # is the actor the goal notifies, so the orchestrator takes its goal_cancel. Its
        # turn_done then finds no execution waiting and no record: nothing more is written.
        face = self.face
        task_id, client = context.task_id or "", context.call_context.user.user_name
        goal = goal_id(client, task_id)
        face.mark_cancelled(goal)  # first: a hand-over from now on stops or cancels itself
        await face.pending.remove(goal)
        handing = face.handing.get(goal)
        if handing is not None:  # the orchestrator takes it now or never: then cancel it
            await asyncio.wait({handing}, timeout=HAND_OVER_WAIT_S)
        await face.cancel_goal(goal, client)
        await TaskUpdater(event_queue, task_id, context.context_id or "").cancel()


def step_line(data: dict[str, object]) -> str:
    """A step event of a private turn, in a line: its kind and the tools it used."""
    line = f"step: {data.get('kind', '?')}"
    tools = data.get("tools") or ([data["tool"]] if data.get("tool") else [])
    if isinstance(tools, list) and tools:
        line += " (" + ", ".join(str(t) for t in tools[:8]) + ")"
    return line
