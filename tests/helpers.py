"""Real processes for tests: nats-server on free ports, entity data dirs, entityd daemons."""

from __future__ import annotations

import asyncio
import inspect
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nacl.signing import SigningKey
from nats.aio.subscription import Subscription

# Re-exported: the tests take ports from here, the same picker the benches use.
from bench.ports import free_port as free_port
from bench.ports import free_port_range as free_port_range
from entityd import config as config_mod
from entityd import identity
from entityd.actor import Actor
from entityd.bus import barrier
from entityd.config import RuntimeSection
from entityd.runtime import Runtime
from entityd.transport import Transport
from protocol import Keyring

BIN = Path(sys.executable).parent
REPO = Path(__file__).resolve().parent.parent
NATS_SERVER = str(BIN / "nats-server")


def wait_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2) as s:
                if s.recv(4) == b"INFO":
                    return
        except OSError:
            time.sleep(0.02)
    raise TimeoutError(f"nothing answered NATS on port {port} within {timeout} s")


async def poll(
    check: Callable[[], Any | Awaitable[Any]], *, timeout: float = 20.0, every: float = 0.2,
    what: str | Callable[[], str] = "condition",
) -> Any:
    """Call `check` (plain or async) until it returns something true, and return that.

    For states that no event announces (another process's tables, a file); where an event
    exists, wait on it instead. Past `timeout` seconds the test fails, saying `what` it was
    waiting for (a callable is asked only then, e.g. for a daemon's log).
    """
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if inspect.isawaitable(result):
            result = await result
        if result:
            return result
        if time.monotonic() >= deadline:
            said = what() if callable(what) else what
            raise AssertionError(f"not within {timeout} s: {said}")
        await asyncio.sleep(every)


class ServerProcess:
    """A nats-server process on a known port, its output in a log; kill() and start() again."""

    def __init__(self, args: list[str], port: int, log: Path,
                 env: dict[str, str] | None = None) -> None:
        self.args = args
        self.port = port
        self.log = log
        self.env = env
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def start(self) -> ServerProcess:
        self.log.parent.mkdir(parents=True, exist_ok=True)
        with self.log.open("ab") as output:
            self.proc = subprocess.Popen(
                self.args, stdout=output, stderr=output, stdin=subprocess.DEVNULL, env=self.env
            )
        try:
            wait_port(self.port)
        finally:
            # Whoever answered must be our server, not another one that took the port.
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.args} exited: {self.log.read_text()[-800:]}")
        return self

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.kill()


class NatsServer(ServerProcess):
    """A real nats-server with JetStream in `store`, on a free port unless one is given."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        port = port or free_port()
        self.store = store
        super().__init__(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
            port, store / "nats-server.log",
        )

    def start(self) -> NatsServer:
        super().start()
        return self


def make_entity(
    root: Path, name: str = "entity-a", *, nats_url: str = "", port: int | None = None,
    extra: str = "",
) -> Path:
    """An initialised data dir with a config; returns the config path."""
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    identity.create(data)
    text = config_mod.STARTER.format(name=name, data_dir=data, port=port or free_port())
    if nats_url:
        text = re.sub(r'(?m)^url = ""', f'url = "{nats_url}"', text, count=1)
    path = data / config_mod.CONFIG_NAME
    path.write_text(text + extra)
    return path


def child_env(**extra: str) -> dict[str, str]:
    env = dict(os.environ)
    env.pop("NOTIFY_SOCKET", None)
    env["PATH"] = f"{BIN}:{env.get('PATH', '')}"
    env.update(extra)
    return env


class DaemonProc:
    """`entityd run` as a child process, with its log captured to a file."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None) -> None:
        self.config = config
        self.log_path = log
        self.env = env or child_env()
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> DaemonProc:
        with self.log_path.open("ab") as output:  # the child keeps its own descriptor
            self.proc = subprocess.Popen(
                [str(BIN / "entityd"), "run", "--config", str(self.config)],
                stdout=output,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.env,
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
                raise AssertionError(
                    f"entityd exited ({self.proc.returncode}) before logging {needle!r}:\n"
                    + self.log()[-3000:]
                )
            time.sleep(0.05)
        raise AssertionError(
            f"entityd did not log {needle!r} within {timeout} s:\n{self.log()[-3000:]}"
        )

    def terminate(self, timeout: float = 20.0) -> int:
        assert self.proc is not None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def kill(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


def ctl(config: Path, *args: str, timeout: float = 30.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BIN / "entityctl"), "--config", str(config), *args],
        capture_output=True, text=True, timeout=timeout, env=child_env(),
    )


async def nats_connect(url: str, inbox_prefix: str = "_INBOX") -> nats.NATS:
    return await nats.connect(url, inbox_prefix=inbox_prefix, max_reconnect_attempts=-1)


@dataclass
class RunningActors:
    """Actors of one entity under a real Runtime, and a client speaking as <entity>/ctl."""

    runtime: Runtime
    client: Transport
    client_nc: nats.NATS
    key: SigningKey
    keyring: Keyring
    events: Subscription | None  # the client's subscription to the events asked for


@asynccontextmanager
async def running_actors(
    url: str, entity: str, actors: dict[str, Callable[[], Actor]], *,
    events: str | None = None, key: SigningKey | None = None,
    settings: RuntimeSection | None = None,
) -> AsyncIterator[RunningActors]:
    """Start `actors` on their own connection, as the daemon does, and stop them after."""
    key = key or SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), entity)
    daemon_nc = await nats_connect(url, inbox_prefix=f"_i.{entity}")
    client_nc = await nats_connect(url, inbox_prefix=f"_i.{entity}")
    subscription = None
    if events is not None:
        subscription = await client_nc.subscribe(events)
        await barrier(client_nc)
    runtime = Runtime(Transport(daemon_nc, entity=entity, key=key, keyring=keyring),
                      settings or RuntimeSection(backoff_initial=0.01))
    for name, factory in actors.items():
        runtime.add(name, factory)
    client = Transport(client_nc, entity=entity, key=key, keyring=keyring)
    try:
        async with asyncio.TaskGroup() as tg:
            await runtime.start(tg)
            try:
                yield RunningActors(runtime, client, client_nc, key, keyring, subscription)
            finally:
                await runtime.stop()
    finally:
        await client_nc.close()
        await daemon_nc.close()


async def start_attacker(module: str, payload: str) -> asyncio.subprocess.Process:
    """A hostile member in a process of its own (`python -m module payload`): it says
    `ready` once its messages are signed, and floods on `go` (the signing is not part of
    the flood the tests measure)."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", module, payload, cwd=REPO,
        env=child_env(), stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE)
    assert proc.stdin is not None and proc.stdout is not None
    line = await asyncio.wait_for(proc.stdout.readline(), 60.0)
    assert line == b"ready\n", line
    proc.stdin.write(b"go\n")
    await proc.stdin.drain()
    return proc
