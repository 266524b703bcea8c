"""The actor runtime: mailboxes, supervised actors, rejection accounting, start and drain."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from nats.aio.msg import Msg

from protocol import ActorStatus, ProtocolError

from . import bus
from .actor import Actor
from .config import RuntimeSection
from .errors import ActorDeadError, RuntimeStateError
from .events import RuntimeEvents
from .logs import get
from .supervisor import RestartPolicy, Supervised, Supervisor
from .transport import Transport

log = get("entityd.runtime")

REJECT_LOG_PER_SECOND = 20


class RuntimeState(enum.StrEnum):
    NEW = "new"
    STARTING = "starting"
    RUNNING = "running"
    STOPPING = "stopping"
    STOPPED = "stopped"


class Runtime:
    def __init__(self, transport: Transport, settings: RuntimeSection | None = None) -> None:
        settings = settings or RuntimeSection()
        self.transport = transport
        self.settings = settings
        self.state = RuntimeState.NEW
        self.events = RuntimeEvents(transport)
        # Shared with the transport, where the peer actor counts its refusals too.
        self.rejected: Counter[str] = transport.rejected
        self._executor = ThreadPoolExecutor(max_workers=2, thread_name_prefix="entityd-verify")
        self.supervisor = Supervisor(
            transport,
            self.events,
            RestartPolicy(
                settings.restart_budget,
                settings.restart_window,
                settings.backoff_initial,
                settings.backoff_max,
            ),
            settings.ask_timeout,
            settings.queue_size,
            self._executor,
            self.reject,
        )
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._log_budget = (0.0, 0)

    def add(self, name: str, factory: Callable[[], Actor]) -> None:
        if self.state is not RuntimeState.NEW:
            raise RuntimeStateError(f"cannot add actor {name!r} to a {self.state} runtime")
        self.supervisor.add(name, factory)

    def restart(self, names: list[str], reason: str) -> list[str]:
        """Replace the named actors (all, when empty) with fresh instances; the names
        restarted. KeyError names one that does not run here."""
        names = names or list(self.supervisor.actors)
        for name in names:
            if name not in self.supervisor.actors:
                raise KeyError(name)
        for name in names:
            self.supervisor.restart(name, reason)
        return names

    def actors(self) -> list[ActorStatus]:
        return self.supervisor.snapshot()

    async def start(self, tg: asyncio.TaskGroup) -> None:
        """Subscribe every mailbox, start every actor in `tg`; return once all serve."""
        if self.state is not RuntimeState.NEW:
            raise RuntimeStateError(f"cannot start a {self.state} runtime")
        self.state = RuntimeState.STARTING
        children = list(self.supervisor.actors.values())
        for child in children:
            await child.mailbox.open()
        await bus.barrier(self.transport.nc)
        for child in children:
            self._tasks[child.name] = tg.create_task(
                self.supervisor.run(child), name=f"actor:{child.name}"
            )
        await asyncio.gather(*(self._started(c) for c in children))
        self.state = RuntimeState.RUNNING

    async def _started(self, child: Supervised) -> None:
        task = self._tasks[child.name]
        waiter = asyncio.ensure_future(child.started.wait())
        try:
            await asyncio.wait({waiter, task}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            waiter.cancel()
        if not child.started.is_set():
            raise ActorDeadError(f"actor {child.name} ended before it started")

    async def stop(self) -> None:
        """Drain: stop taking messages, let each actor finish what is queued, then stop it."""
        if self.state in (RuntimeState.STOPPING, RuntimeState.STOPPED):
            return
        self.state = RuntimeState.STOPPING
        children = list(self.supervisor.actors.values())
        for child in children:
            await child.mailbox.close()
        for child in children:
            await child.mailbox.stop()
        pending = {t for t in self._tasks.values() if not t.done()}
        if pending:
            _, late = await asyncio.wait(pending, timeout=self.settings.drain_timeout)
            for task in late:
                log.warning("drain_timeout", task=task.get_name())
                task.cancel()
            if late:
                await asyncio.wait(late)
        self.transport.closing = True
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.state = RuntimeState.STOPPED

    async def reject(self, msg: Msg, responder: str, error: ProtocolError) -> None:
        """Count a rejected message, log it (rate-limited), and tell a requester why."""
        self.rejected[error.reason] += 1
        window, logged = self._log_budget
        now = time.monotonic()
        if now - window >= 1.0:
            window, logged = now, 0
        if logged < REJECT_LOG_PER_SECOND:
            log.warning(
                "envelope_rejected",
                reason=error.reason,
                subject=msg.subject,
                detail=error.detail,
                total=self.rejected[error.reason],
            )
            logged += 1
        self._log_budget = (window, logged)
        try:
            await self.transport.refuse(msg, responder, error)
        except ActorDeadError:
            pass
