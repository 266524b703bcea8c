"""One declared service: its revisions, the one serving, restarts and reloads.

Everything that changes a service happens in its own loop (`run`), one record at a time:
what the actor asks (Deploy, Remove) and what its revisions' runs report (Started,
Ready, NotReady, Exited). So a reload, a death and a restart never interleave halfway.

- Deploy: a new revision starts beside the serving one; once ready the proxy switches to
  it (new connections only) and the old one is stopped when its connections are done. A
  revision that never becomes ready is stopped and the old one keeps serving.
- A serving revision that dies is started again with exponential backoff, at most
  `budget` times within `window` seconds (a new revision has the whole budget again);
  past that, or under restart = "never" (or
  "on-failure" after a clean exit), the service stays stopped and says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass, field
from typing import Any

from .messages import ServiceInfo, ServiceResult
from .proxy import Proxy
from .revision import Exited, NotReady, Ready, Revision, Started, live

BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
DRAIN_S = 30.0  # a replaced revision's open connections have this long to finish
TAIL_EVENT = 2000  # characters of output an event carries
KEPT_REVISIONS = 4  # whose output stays readable

Emit = Callable[..., Awaitable[None]]


@dataclass(frozen=True)
class Policy:
    ready_timeout: float
    budget: int
    window: float
    quota_bytes: int


@dataclass(frozen=True)
class Deploy:
    rev: Revision
    waiter: asyncio.Future[ServiceResult] | None = None


@dataclass(frozen=True)
class Remove:
    reason: str


@dataclass(frozen=True)
class _Relaunch:
    rev: Revision


@dataclass(frozen=True)
class _Retired:
    rev: Revision
    was_running: bool  # False: it had died already (and said so)


@dataclass
class Service:
    name: str
    commit: str  # the commit of the newest revision tried: later commits are diffed to it
    proxy_url: str
    proxy: Proxy | None
    policy: Policy
    emit: Emit
    discard: Callable[[Revision], Awaitable[None]]  # removes a revision's directory
    state: str = "starting"
    current: Revision | None = None
    candidate: Revision | None = None
    restarts: int = 0
    last_error: str = ""
    deaths: deque[float] = field(default_factory=deque)
    outputs: dict[str, Revision] = field(default_factory=dict)  # kept for their logs
    inbox: asyncio.Queue[object] = field(default_factory=asyncio.Queue)
    waiters: dict[Revision, asyncio.Future[ServiceResult]] = field(default_factory=dict)
    _tasks: asyncio.TaskGroup | None = None
    _spawned: set[asyncio.Task[None]] = field(default_factory=set)  # cancelled at the end

    def post(self, record: object) -> None:
        self.inbox.put_nowait(record)

    def serving(self) -> Revision | None:
        """The revision new connections go to (the proxy's target)."""
        current = self.current
        return current if current is not None and current.ready else None

    def info(self) -> ServiceInfo:
        shown = self.current
        return ServiceInfo(
            name=self.name, state=self.state, revision=shown.id if shown else "",
            commit=shown.commit if shown else "", restarts=self.restarts,
            url=self.proxy_url, port=self.proxy.port if self.proxy else 0,
            last_error=self.last_error, pending=self.candidate.id if self.candidate else "",
            pid=shown.pid if shown and shown.ready else 0)

    def revision(self, wanted: str = "") -> Revision | None:
        """A revision whose output is kept: `wanted`, else the serving one, else the
        newest."""
        if wanted:
            return self.outputs.get(wanted)
        if self.current is not None:
            return self.current
        return next(reversed(self.outputs.values()), None)

    # ---- the loop ------------------------------------------------------------------------

    async def run(self) -> None:
        """Serve the proxy and handle records until Remove or cancellation; every process
        of the service is gone when this returns."""
        async with asyncio.TaskGroup() as tasks:
            self._tasks = tasks
            proxy = tasks.create_task(self.proxy.serve()) if self.proxy else None
            try:
                while True:
                    record = await self.inbox.get()
                    if isinstance(record, Remove):
                        await self._remove(record.reason)
                        break
                    await self._on(record)
            finally:
                # Not the runs of its revisions: they were stopped (Remove), or the task
                # group cancels them once (cancellation); a second cancel could cut their
                # cleanup short.
                for task in self._spawned:
                    task.cancel()
                if proxy is not None:
                    proxy.cancel()
                if self.proxy is not None:
                    self.proxy.close()
                for waiter in self.waiters.values():
                    if not waiter.done():
                        waiter.set_result(ServiceResult(False, "not_ready", f"{self.name} "
                                                        "was stopped before it was ready"))

    def _revisions(self) -> list[Revision]:
        return list({id(r): r for r in (self.current, self.candidate, *self.outputs.values())
                     if r is not None}.values())

    async def _on(self, record: object) -> None:
        match record:
            case Deploy():
                await self._deploy(record)
            case Started(rev=rev, pid=pid):
                await self.emit("service_started", name=self.name, revision=rev.id,
                                commit=rev.commit, pid=pid)
            case Ready(rev=rev, seconds=seconds):
                await self._ready(rev, seconds)
            case NotReady(rev=rev, reason=reason):
                await self._not_ready(rev, reason)
            case Exited(rev=rev, reason=reason, clean=clean):
                if rev is self.current and not rev.retired:
                    rev.ready = False
                    await self._died(rev, reason, clean)
            case _Relaunch(rev=rev):
                if rev is self.current and self.state == "restarting":
                    self._launch(rev)
            case _Retired(rev=rev, was_running=was_running):
                if was_running:
                    await self.emit("service_stopped", name=self.name, revision=rev.id,
                                    reason=f"replaced by "
                                    f"{self.current.id if self.current else '?'}")
                self._forget(rev)
            case _:
                raise TypeError(f"a service does not handle {record!r}")

    def _launch(self, rev: Revision) -> None:
        assert self._tasks is not None
        rev.task = self._tasks.create_task(self._run_after(rev, rev.task),
                                           name=f"service:{self.name}:{rev.id}")

    async def _run_after(self, rev: Revision, previous: asyncio.Task[None] | None) -> None:
        """A run of `rev`, once its previous run (if any) has cleaned up after itself."""
        if previous is not None:
            await asyncio.wait({previous})
        await live(rev, self.post, self.policy.ready_timeout, self.policy.quota_bytes)

    def _spawn(self, work: Coroutine[Any, Any, None]) -> asyncio.Task[None]:
        """Work beside the loop (a backoff, a drain, a removal), cancelled when the loop
        ends."""
        assert self._tasks is not None
        task = self._tasks.create_task(work)
        self._spawned.add(task)
        task.add_done_callback(self._spawned.discard)
        return task

    async def _deploy(self, record: Deploy) -> None:
        rev = record.rev
        old = self.candidate
        if old is not None:  # a newer commit came before it was ready
            self._stop(old)
            await self.emit("service_stopped", name=self.name, revision=old.id,
                            reason=f"superseded by {rev.id} before it was ready")
            self._answer(old, False, "not_ready", f"superseded by {rev.id}")
            self._forget(old)
        self.candidate = rev
        self.outputs[rev.id] = rev
        if record.waiter is not None:
            self.waiters[rev] = record.waiter
        if self.serving() is None and self.state != "restarting":
            self.state = "starting"
        self._launch(rev)

    async def _ready(self, rev: Revision, seconds: float) -> None:
        if rev is self.candidate:
            self.candidate = None
            old, self.current = self.current, rev
            rev.ready = True
            self.state = "running"
            self.last_error = ""
            self.deaths.clear()  # a new revision has the whole restart budget
            await self.emit("service_ready", name=self.name, revision=rev.id,
                            commit=rev.commit, seconds=round(seconds, 3), url=self.proxy_url)
            if old is not None:
                old.retired = True
                await self.emit("service_switched", name=self.name, revision=rev.id,
                                previous=old.id, url=self.proxy_url)
                self._spawn(self._retire(old))
            self._answer(rev, True, "ready", f"{self.name} {rev.id} is ready "
                         f"({seconds:.2f} s) at {self.proxy_url}")
        elif rev is self.current:  # started again after a death
            rev.ready = True
            self.state = "running"
            await self.emit("service_ready", name=self.name, revision=rev.id,
                            commit=rev.commit, seconds=round(seconds, 3), url=self.proxy_url,
                            restarts=self.restarts)

    async def _not_ready(self, rev: Revision, reason: str) -> None:
        if rev is self.candidate:
            self.candidate = None
            serving = self.serving()
            keeps = (f"; {serving.id} keeps serving" if serving else
                     "; no revision is serving")
            self.last_error = f"revision {rev.id} never became ready: {reason}{keeps}"
            if serving is None and self.state != "restarting":
                self.state = "failed"
            await self.emit("service_failed", name=self.name, revision=rev.id,
                            commit=rev.commit, reason=f"never became ready: {reason}",
                            serving=serving.id if serving else "",
                            output=rev.output.text(TAIL_EVENT))
            self._answer(rev, False, "not_ready", f"{self.last_error}\n"
                         f"{rev.output.text(TAIL_EVENT)}")
            self._forget(rev)
        elif rev is self.current:  # a start after a death that did not come up
            await self._died(rev, f"restarted, but {reason}", clean=False)

    async def _died(self, rev: Revision, reason: str, clean: bool) -> None:
        policy = rev.spec.restart
        if policy == "never" or (policy == "on-failure" and clean):
            self.state = "stopped"
            self.last_error = f"{rev.id} ended: {reason}"
            await self.emit("service_stopped", name=self.name, revision=rev.id,
                            reason=f"{reason}; restart = {policy!r}",
                            output=rev.output.text(TAIL_EVENT))
            return
        now = time.monotonic()
        while self.deaths and now - self.deaths[0] > self.policy.window:
            self.deaths.popleft()
        if len(self.deaths) >= self.policy.budget:
            self.state = "failed"
            self.last_error = (
                f"{rev.id} ended: {reason}; it was restarted {len(self.deaths)} times within "
                f"{self.policy.window:g} s (services.restart_budget), so it stays stopped "
                f"until a commit changes its files or `entityctl services restart "
                f"{self.name}`")
            await self.emit("service_failed", name=self.name, revision=rev.id,
                            commit=rev.commit, reason=self.last_error, serving="",
                            output=rev.output.text(TAIL_EVENT))
            return
        self.deaths.append(now)
        self.restarts += 1
        delay = min(BACKOFF_MAX_S, BACKOFF_FIRST_S * 2 ** (len(self.deaths) - 1))
        self.state = "restarting"
        self.last_error = f"{rev.id} ended: {reason}"
        rev.output.note(f"restarting in {delay:g} s")
        await self.emit("service_exited", name=self.name, revision=rev.id, reason=reason,
                        restart_in=delay, restarts=self.restarts,
                        output=rev.output.text(TAIL_EVENT))
        self._spawn(self._after(delay, _Relaunch(rev)))

    async def _after(self, delay: float, record: object) -> None:
        await asyncio.sleep(delay)
        self.post(record)

    async def _retire(self, rev: Revision) -> None:
        """Stop a replaced revision once its connections are done (or after DRAIN_S)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(DRAIN_S):
                await rev.idle.wait()
        running = rev.task is not None and not rev.task.done()
        self._stop(rev)
        if rev.task is not None:
            await asyncio.wait({rev.task})
        self.post(_Retired(rev, running))

    async def _remove(self, reason: str) -> None:
        for rev in self._revisions():
            if rev.task is not None and not rev.task.done():
                self._stop(rev)
                await self.emit("service_stopped", name=self.name, revision=rev.id,
                                reason=reason)
        self.state = "stopped"
        self.current = self.candidate = None

    @staticmethod
    def _stop(rev: Revision) -> None:
        rev.stop()

    def _forget(self, rev: Revision) -> None:
        """Its directory goes once its run has ended; its output stays readable among
        the newest few."""
        while len(self.outputs) > KEPT_REVISIONS:
            oldest = next(iter(self.outputs))
            if self.outputs[oldest] in (self.current, self.candidate):
                break
            del self.outputs[oldest]
        self._spawn(self._discard(rev))

    async def _discard(self, rev: Revision) -> None:
        if rev.task is not None:
            await asyncio.wait({rev.task})
        await self.discard(rev)

    def _answer(self, rev: Revision, ok: bool, code: str, text: str) -> None:
        waiter = self.waiters.pop(rev, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(ServiceResult(ok, code, text, rev.id))
