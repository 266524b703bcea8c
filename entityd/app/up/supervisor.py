"""`entityd up`'s supervisor: starts a Plan's processes in order (hub, ledger, models,
daemons), each waited for until it serves; keeps every one running (a death is restarted
at once, then after 2, 4 ... 32 s while it keeps dying within QUICK_DEATH_S of starting);
stops them all, daemons first, on Ctrl-C, SIGTERM or SIGHUP.

Each child runs in a session of its own (a Ctrl-C in the terminal reaches only `up`, which
stops them in order), gets SIGTERM from the kernel if `up` dies (PR_SET_PDEATHSIG), and
has a pid file (entityd.app.up.pidfiles).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import json
import os
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path

from .pidfiles import STOP_TIMEOUT_S, UP, kill, run_dir, until, write_pid
from .plan import HOST, Child, Plan, StartError, fund, say, show

QUICK_DEATH_S = 30.0
MAX_BACKOFF_EXPONENT = 5  # 32 s
READY_TIMEOUT_S = {"hub": 20.0, "reader": 20.0, "model": 20.0, "daemon": 60.0}
# What a child logs once it serves (the others are ready once they listen on their port).
READY_LINES = {"daemon": b'"entityd_ready"', "reader": b'"books_reader_ready"'}
_PR_SET_PDEATHSIG = 1


def _die_with_parent(parent: int) -> None:
    """In the child, before exec: SIGTERM when `up` dies, even if it died already."""
    ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        os._exit(1)


@dataclass
class Running:
    """A child and what the supervisor knows of it."""

    child: Child
    proc: asyncio.subprocess.Process | None = None
    state: str = "waiting"  # waiting, starting, ready, restarting in N s, stopping, stopped
    restarts: int = 0
    started_at: float = 0.0
    log_offset: int = 0
    ready: asyncio.Event = field(default_factory=asyncio.Event)


class _Stopped(Exception):
    """Raised in the supervisor's task group to end it: `up` was told to stop."""


class Supervisor:
    def __init__(self, plan: Plan) -> None:
        self.plan = plan
        self.root = plan.spec.dir
        self.procs = {child.name: Running(child) for child in plan.children}
        self.stopping = False

    async def run(self, stop: asyncio.Event, duration: float | None = None) -> bool:
        """Start everything, keep it running until `stop` is set (or `duration` seconds
        after all is ready), then stop it all; False if it could not start (said why).
        Everything it started is stopped again on every way out."""
        write_pid(self.root, UP, os.getpid())
        failed: list[BaseException] = []
        try:
            async with asyncio.TaskGroup() as tg:
                tg.create_task(self._stop_on(stop))
                await self._start_all(tg)
                if duration is not None:
                    tg.create_task(self._stop_after(duration, stop))
        except* _Stopped:
            pass
        except* StartError as group:
            failed = _leaves(group)
            for error in failed:
                say(f"could not start: {error}")
        finally:
            await self.stop_all()
            show(f"{self.plan.spec.name} stopped")
            for path in run_dir(self.root).glob("*.pid"):
                path.unlink(missing_ok=True)
            self._save_state()
        return not failed

    @staticmethod
    async def _stop_on(stop: asyncio.Event) -> None:
        await stop.wait()
        raise _Stopped

    @staticmethod
    async def _stop_after(duration: float, stop: asyncio.Event) -> None:
        await asyncio.sleep(duration)
        say(f"the duration of {duration:g} s is over")
        stop.set()

    async def _start_all(self, tg: asyncio.TaskGroup) -> None:
        plan = self.plan
        for group in (plan.of_kind("hub"), plan.of_kind("reader"), None, plan.of_kind("model"),
                      plan.of_kind("daemon")):
            if group is None:
                await fund(plan)
                continue
            for child in group:
                if child.kind == "hub":
                    say(f"starting the hub on {HOST}:{child.ports['clients']} "
                        f"(leafnodes :{child.ports['leafnodes']})")
                elif child.kind == "daemon":
                    say(f"starting {child.name}")
                tg.create_task(self._keep_running(self.procs[child.name]))
            for child in group:
                await self.procs[child.name].ready.wait()
        self._print_reach()
        show(f"{plan.spec.name} ready")

    async def _keep_running(self, proc: Running) -> None:
        """Start the child, and again whenever it dies, until `up` stops."""
        fails = 0
        while True:
            await self._spawn(proc)
            assert proc.proc is not None
            async with asyncio.TaskGroup() as watch:
                readiness = watch.create_task(self._until_ready(proc))
                code = await proc.proc.wait()
                readiness.cancel()
            if self.stopping:
                return
            if not proc.ready.is_set():
                raise StartError(f"{proc.child.label} exited (code {_shell_code(code)}) "
                                 f"before it was ready; see its log {proc.child.log}"
                                 + _tail(proc.child.log, proc.log_offset))
            fails = fails + 1 if time.monotonic() - proc.started_at < QUICK_DEATH_S else 1
            delay = 0 if fails == 1 else 2 ** min(fails - 1, MAX_BACKOFF_EXPONENT)
            why = f"{proc.child.label} exited (code {_shell_code(code)}); restarting"
            if delay:
                say(f"{why} in {delay} s (it died {fails} times in a row within "
                    f"{QUICK_DEATH_S:g} s of starting)")
            else:
                say(why)
            proc.state = f"restarting in {delay} s"
            proc.restarts += 1
            self._save_state()
            await asyncio.sleep(delay)

    async def _spawn(self, proc: Running) -> None:
        child = proc.child
        child.log.parent.mkdir(parents=True, exist_ok=True)
        proc.log_offset = child.log.stat().st_size if child.log.exists() else 0
        parent = os.getpid()
        with child.log.open("ab") as log:  # the child keeps its own descriptor
            try:
                proc.proc = await asyncio.create_subprocess_exec(
                    *child.argv, stdin=asyncio.subprocess.DEVNULL, stdout=log,
                    stderr=asyncio.subprocess.STDOUT, cwd=child.cwd,
                    env={**os.environ, **child.env}, start_new_session=True,
                    preexec_fn=lambda: _die_with_parent(parent))
            except OSError as exc:
                raise StartError(f"cannot start {child.label} ({child.argv[0]}): "
                                 f"{exc.strerror}") from None
        proc.started_at = time.monotonic()
        proc.state = "starting"
        write_pid(self.root, child.name, proc.proc.pid)
        self._save_state()

    async def _until_ready(self, proc: Running) -> None:
        child = proc.child
        timeout = READY_TIMEOUT_S[child.kind]
        try:
            async with asyncio.timeout(timeout):
                if child.kind in READY_LINES:
                    await until(self._logged_ready, proc)
                else:
                    await until(_listening, next(iter(child.ports.values())))
        except TimeoutError:
            if proc.ready.is_set():  # a restart that hangs: left to run, said
                say(f"{child.label} is not ready {timeout:g} s after its restart; "
                         f"see its log {child.log}")
                return
            raise StartError(f"{child.label} is not ready within {timeout:g} s; see its "
                             f"log {child.log}") from None
        if proc.ready.is_set():
            say(f"{child.label} is ready again")
        proc.state = "ready"
        proc.ready.set()
        self._save_state()

    @staticmethod
    async def _logged_ready(proc: Running) -> bool:
        """The child logged its ready line since its latest start (not an older run's)."""
        return READY_LINES[proc.child.kind] in _read_from(proc.child.log, proc.log_offset)

    async def stop_all(self) -> None:
        """Daemons first, so they drain while their models and the hub are still there."""
        self.stopping = True
        for kinds in (("daemon",), ("reader", "model"), ("hub",)):
            group = [p for p in self.procs.values() if p.child.kind in kinds and p.proc]
            for proc in group:
                assert proc.proc is not None
                if proc.proc.returncode is None:
                    proc.state = "stopping"
                    kill(proc.proc.pid, signal.SIGTERM)
            for proc in group:
                assert proc.proc is not None
                try:
                    async with asyncio.timeout(STOP_TIMEOUT_S):
                        await proc.proc.wait()
                except TimeoutError:
                    say(f"{proc.child.label} did not stop within {STOP_TIMEOUT_S:g} s; "
                             "killing it")
                # Whatever it started itself (a daemon's nats-server) goes too.
                kill(proc.proc.pid, signal.SIGKILL, group=True)
                await proc.proc.wait()
                proc.state = "stopped"
                (run_dir(self.root) / f"{proc.child.name}.pid").unlink(missing_ok=True)

    def _print_reach(self) -> None:
        daemons = self.plan.of_kind("daemon")
        first = daemons[0]
        peer = daemons[1].name if len(daemons) > 1 else ""
        venv_bin = Path(self.plan.children[-1].argv[0]).parent
        lines = [
            "",
            f"Reach and watch the {self.plan.spec.name} (with the venv's bin on PATH: "
            f'export PATH="{venv_bin}:$PATH"):',
            f"  entityctl --config {first.config} status",
            f"  entityctl --config {first.config} peers",
            *([f'  entityctl --config {first.config} talk {peer} "hi"'] if peer else []),
            f"  entityctl --config {first.config} watch --all",
            *([f"  entityctl --config {first.config} web    # its web page, "
               "with a login link"] if self.plan.pages.get(first.name) is not None else []),
            *[f"  ({d.name} likewise with --config {d.config})" for d in daemons[1:]],
            *[f"{name}'s page: http://{HOST}:{port}/" for name, port in self.plan.pages.items()
              if port],
            "Logs:",
            *[f"  {c.log}" for c in self.plan.children],
            f"`entityd ps {self.plan.spec.path}` lists the processes; Ctrl-C (or `entityd "
            f"down {self.plan.spec.path}`) stops them all.",
        ]
        for line in lines:
            show(line)

    def _save_state(self) -> None:
        """run/state.json: what `entityd ps` shows."""
        state = {name: {"pid": p.proc.pid if p.proc else None, "state": p.state,
                        "restarts": p.restarts, "ports": p.child.ports, "log": str(p.child.log)}
                 for name, p in self.procs.items()}
        path = run_dir(self.root) / "state.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_suffix(".tmp")
        partial.write_text(json.dumps({"up": os.getpid(), "processes": state}, indent=1))
        partial.replace(path)


def _leaves(group: BaseExceptionGroup[StartError]) -> list[BaseException]:
    found: list[BaseException] = []
    for error in group.exceptions:
        found += _leaves(error) if isinstance(error, BaseExceptionGroup) else [error]
    return found


def _shell_code(code: int) -> int:
    """An exit code as a shell shows it: 128 + N for a death by signal N."""
    return 128 - code if code < 0 else code


def _read_from(path: Path, offset: int) -> bytes:
    try:
        with path.open("rb") as f:
            f.seek(offset)
            return f.read()
    except OSError:
        return b""


def _tail(path: Path, offset: int, lines: int = 3) -> str:
    """The last lines the process wrote to its log since `offset`, indented."""
    last = _read_from(path, offset).decode(errors="replace").strip().splitlines()[-lines:]
    return "".join(f"\n  {line[:300]}" for line in last)


async def _listening(port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _reader, writer = await asyncio.open_connection(HOST, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
