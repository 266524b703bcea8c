"""The services actor: runs the services the workspace's services.toml declares, each in
the sandbox behind a loopback preview port, restarts them when they die and reloads
them when a commit changes their files (DESIGN.md, "The entity's reach").

Services run what is committed, never the working tree: each revision is a snapshot of
one commit. New commits are found by watching the repository: every POLL_S the actor
looks at the modification times of .git/HEAD, its reflog, packed-refs and refs/heads
(a stat, no read of anything the agent wrote), and asks the sandboxed git for HEAD when
one moved, and in any case every RECHECK_S. So every commit is seen whoever made it (the
coder, a landed patch, an operator), within a fraction of a second, without a message
from the coder, and with no sandbox started while nothing happens.

How a service must behave: listen for HTTP on the Unix socket named by $ENTITYD_SOCKET
(/workspace/.entityd.sock), answer `ready` with 200 once it can serve, and keep its state
in its own directory (a revision's snapshot, writable, gone when the revision is
replaced). It has no network, no secrets and no view of anything but its snapshot. A
minimal service with the standard library alone:

    import http.server, os, socketserver

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            body = b"ok\\n" if self.path == "/health" else b"hello\\n"
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def address_string(self):  # a Unix socket has no client address
            return "proxy"

    class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
        daemon_threads = True

    Server(os.environ["ENTITYD_SOCKET"], Handler).serve_forever()

with, in services.toml:

    [services.hello]
    command = ["python3", "app.py"]
    ready = "/health"
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os

from entityd import Actor, Config, DamagedFile, Later
from protocol import Envelope

from ..sandbox import ToolError
from ..workspace import GitError, Workspace
from .manifest import ManifestError, ServiceSpec, parse
from .messages import (
    LOGS_MAX,
    NO_SUCH_SERVICE,
    ServiceInfo,
    ServiceLogs,
    ServiceLogsGet,
    ServiceRestart,
    ServiceResult,
    Services,
    ServicesGet,
)
from .proxy import Proxy, listen
from .revision import Revision, kill
from .service import Deploy, Policy, Remove, Service
from .snapshot import ExportError, Snapshots, remove_tree

POLL_S = 0.25
RECHECK_S = 10.0
RETRY_S = 5.0  # after git could not be asked (no sandbox yet, a lock): look again
RESTART_MARGIN_S = 10.0  # a restart's answer waits for the readiness check and this
CLEANUP_S = 10.0  # to remove the revision directories when the actor stops
PORTS_FILE = "ports.json"  # the preview port each service had, kept across restarts
WATCHED = ("HEAD", "logs/HEAD", "packed-refs", "refs/heads")
EXPORT_FAILURES = (GitError, ExportError, ToolError, OSError)


class ServicesActor(Actor):
    name = "services"
    accepts = (ServicesGet, ServiceLogsGet, ServiceRestart)

    def __init__(self, config: Config, workspace: Workspace) -> None:
        self.config = config
        self.settings = config.services
        self.workspace = workspace
        self.root = config.data_dir / "services"
        self.snapshots = Snapshots(workspace, self.root, config.sandbox)
        self.policy = Policy(self.settings.ready_timeout, self.settings.restart_budget,
                             self.settings.restart_window,
                             config.sandbox.workspace_mb * 1024 * 1024)
        self.services: dict[str, Service] = {}
        self.running: dict[str, asyncio.Task[None]] = {}
        self.applied = ""  # the commit whose services.toml is in force
        self.problem = ""  # why the last services.toml was not applied
        self.unreadable = ""  # why the workspace's commits could not be read, if they cannot
        self.ports: dict[str, int] = {}
        self._declared: dict[str, ServiceSpec] = {}
        self._tasks: asyncio.TaskGroup | None = None
        self._lock = asyncio.Lock()  # one reconcile or restart export at a time

    async def on_start(self) -> None:
        if not self.settings.enabled:
            return
        await asyncio.to_thread(self._clean)

    def _clean(self) -> None:
        """The revision directories of an earlier run go: services start from HEAD."""
        if self.root.exists() and not self.root.is_dir():
            raise DamagedFile(self.root, "not a directory", "remove it: the daemon makes "
                              "it again (it holds only what services were built from HEAD)")
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        try:
            self.ports = {k: int(v) for k, v in json.loads(
                (self.root / PORTS_FILE).read_text()).items()}
        except (OSError, ValueError, AttributeError, TypeError):
            self.ports = {}  # its ports are chosen afresh
        self._remove_revisions()

    def _remove_revisions(self) -> None:
        for entry in self.root.iterdir():
            if entry.is_dir() and not entry.is_symlink():
                remove_tree(entry)

    async def run(self) -> None:
        if not self.settings.enabled:
            return
        try:
            async with asyncio.TaskGroup() as tasks:
                self._tasks = tasks
                await self._watch()
        finally:
            self._release_all()

    async def on_stop(self) -> None:
        self._release_all()
        if self.settings.enabled:  # the snapshots go with their processes
            with contextlib.suppress(TimeoutError, OSError):
                async with asyncio.timeout(CLEANUP_S):
                    await asyncio.to_thread(self._remove_revisions)

    async def on_failure(self, exc: BaseException) -> None:
        self._release_all()

    def _release_all(self) -> None:
        """Whatever still runs or listens goes, at once (the service loops' own cleanup
        normally did it already)."""
        for service in self.services.values():
            for rev in (service.current, service.candidate, *service.outputs.values()):
                if rev is not None and rev.pid:
                    kill(rev.pid)
            if service.proxy is not None:
                service.proxy.close()

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case ServicesGet():
                return self.listing()
            case ServiceLogsGet() as asked:
                return self.logs(asked)
            case ServiceRestart(name=name):
                return Later(self.restart(name))
            case _:
                raise TypeError(f"services does not handle {envelope.typ}")

    # ---- answers -------------------------------------------------------------------------

    def listing(self) -> Services:
        problem = self.unreadable or self.problem
        if not self.settings.enabled:
            problem = "services are off (services.enabled = false)"
        infos: list[ServiceInfo] = [s.info() for _, s in sorted(self.services.items())]
        return Services(self.settings.enabled, self.applied, infos, problem)

    def logs(self, asked: ServiceLogsGet) -> ServiceLogs | ServiceResult:
        service = self.services.get(asked.name)
        if service is None:
            return self._unknown(asked.name)
        rev = service.revision(asked.revision)
        kept = list(service.outputs)
        if rev is None:
            return ServiceLogs(asked.name, asked.revision, "", 0, kept)
        size = max(0, min(asked.bytes, LOGS_MAX, self.settings.log_bytes))
        data, cut = rev.output.tail(size)
        return ServiceLogs(asked.name, rev.id, data.decode(errors="replace"), cut, kept)

    async def restart(self, name: str) -> ServiceResult:
        if not self.settings.enabled:
            return ServiceResult(False, "disabled", "services are off (services.enabled = "
                                 "false)")
        service = self.services.get(name)
        if service is None:
            return self._unknown(name)
        waiter: asyncio.Future[ServiceResult] = asyncio.get_running_loop().create_future()
        async with self._lock:
            spec = service.current.spec if service.current else None
            spec = self._declared.get(name, spec)
            if spec is None:
                return self._unknown(name)
            try:
                rev = await self._export(name, service.commit, spec)
            except EXPORT_FAILURES as exc:
                return ServiceResult(False, "unavailable", f"{name} could not be restarted: "
                                     f"{exc}")
            service.post(Deploy(rev, waiter))
        try:
            async with asyncio.timeout(self.settings.ready_timeout + RESTART_MARGIN_S):
                return await waiter
        except TimeoutError:
            return ServiceResult(False, "not_ready", f"{name} {rev.id} was not ready in time")

    def _unknown(self, name: str) -> ServiceResult:
        known = ", ".join(sorted(self.services)) or "none"
        return ServiceResult(False, NO_SUCH_SERVICE, f"no service {name[:40]!r} is declared in "
                             f"{self.settings.file} (declared: {known})")

    # ---- watching the repository ---------------------------------------------------------

    async def _watch(self) -> None:
        """Apply each new HEAD, for as long as the actor runs."""
        seen: tuple[object, ...] | None = None
        checked = -RECHECK_S
        loop = asyncio.get_running_loop()
        while True:
            now = loop.time()
            signature = self._signature()  # a few stats: no thread needed
            if signature != seen or now - checked >= RECHECK_S:
                seen, checked = signature, now
                try:
                    head = await self.snapshots.head()
                    self.unreadable = ""
                    if head and head != self.applied:
                        async with self._lock:
                            await self._apply(head)
                except (GitError, ToolError) as exc:
                    await self._git_failed(str(exc)[:1000])
                    seen = None  # look again soon
                    await asyncio.sleep(RETRY_S)
            await asyncio.sleep(POLL_S)

    async def _git_failed(self, reason: str) -> None:
        """Said once per distinct reason: the services stay as they are meanwhile."""
        problem = f"the workspace's commits cannot be read: {reason}"
        if problem != self.unreadable:
            self.unreadable = problem
            self.ctx.log.warning("services_git_failed", error=reason)
            await self.ctx.emit("services_unavailable", reason=problem)

    def _signature(self) -> tuple[object, ...]:
        marks: list[object] = []
        git = self.workspace.path / ".git"
        for name in WATCHED:
            try:
                info = os.stat(git / name, follow_symlinks=False)
            except OSError:
                marks.append(None)
                continue
            marks.append((info.st_ino, info.st_mtime_ns, info.st_size))
        return tuple(marks)

    async def _apply(self, head: str) -> None:
        """Make the services what services.toml at `head` declares."""
        try:
            raw = await self.snapshots.manifest(head, self.settings.file)
            declared = {} if raw is None else parse(raw, self.settings.max_services)
        except ManifestError as exc:
            self.applied = head
            if self.problem != str(exc):
                self.problem = str(exc)
                await self.ctx.emit("services_invalid", commit=head, file=self.settings.file,
                                    errors=exc.errors)
            return
        self.problem = ""
        self._declared = declared
        for name in [n for n in self.services if n not in declared]:
            await self._remove(name, f"no longer declared in {self.settings.file} at "
                               f"{head[:12]}")
        tar: bytes | None = None
        for name, spec in declared.items():
            service = self.services.get(name)
            if service is not None:
                changed = (spec != self._spec_of(service)
                           or await self.snapshots.changed(service.commit, head, spec))
                if not changed:
                    continue
            else:
                service = self._add(name, head)
            if tar is None:
                tar = await self.snapshots.archive(head)
            service.commit = head
            try:
                rev = await self._export(name, head, spec, tar)
            except EXPORT_FAILURES as exc:
                service.last_error = f"{head[:12]} could not be exported: {exc}"
                await self.ctx.emit("service_failed", name=name, revision="", commit=head,
                                    reason=service.last_error, serving="", output="")
                continue
            service.post(Deploy(rev))
        self.applied = head
        await self.ctx.emit("services_applied", commit=head, services=sorted(declared))

    @staticmethod
    def _spec_of(service: Service) -> ServiceSpec | None:
        rev = service.candidate or service.current
        return rev.spec if rev is not None else None

    async def _export(self, name: str, commit: str, spec: ServiceSpec,
                      tar: bytes | None = None) -> Revision:
        if tar is None:
            tar = await self.snapshots.archive(commit)
        return await self.snapshots.export(name, commit, tar, spec, self.settings.log_bytes)

    def _add(self, name: str, commit: str) -> Service:
        service = Service(name, commit, "", None, self.policy, self.ctx.emit, self._discard)
        try:
            sock = listen(self.settings.host, self.ports.get(name, 0))
        except OSError as exc:  # it still runs; only its preview is missing
            service.last_error = (f"no preview port on {self.settings.host}: "
                                  f"{exc.strerror or exc}")
        else:
            host = f"[{self.settings.host}]" if ":" in self.settings.host else self.settings.host
            service.proxy = Proxy(sock, service.serving)
            service.proxy_url = f"http://{host}:{service.proxy.port}/"
            if self.ports.get(name) != service.proxy.port:
                self.ports[name] = service.proxy.port
                self._save_ports()
        assert self._tasks is not None
        self.services[name] = service
        self.running[name] = self._tasks.create_task(service.run(), name=f"service:{name}")
        return service

    async def _remove(self, name: str, reason: str) -> None:
        service = self.services.pop(name)
        service.post(Remove(reason))
        task = self.running.pop(name)
        await asyncio.wait({task})
        await asyncio.to_thread(self.snapshots.forget, name)

    async def _discard(self, rev: Revision) -> None:
        await asyncio.to_thread(remove_tree, rev.directory)

    def _save_ports(self) -> None:
        with contextlib.suppress(OSError):
            path = self.root / PORTS_FILE
            path.write_text(json.dumps(self.ports, sort_keys=True))
