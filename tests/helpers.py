"""Real processes for tests: nats-server on free ports, entity data dirs, entityd daemons."""

from __future__ import annotations

import asyncio
import inspect
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

# Re-exported: the tests take ports, processes and entity data dirs from here, the same
# the benches use (bench/rig.py, the federation rig, starts them too).
from bench.harness import BIN as BIN
from bench.harness import DaemonProc as DaemonProc
from bench.harness import ServerProcess as ServerProcess
from bench.harness import child_env as child_env
from bench.harness import ctl as ctl
from bench.ports import free_port as free_port
from bench.ports import free_port_range as free_port_range
from bench.rig import Federation, Member
from bench.rig import make_entity as make_entity
from entityd.actor import Actor
from entityd.bus import barrier
from entityd.config import RuntimeSection
from entityd.runtime import Runtime
from entityd.transport import Transport
from protocol import Keyring

REPO = Path(__file__).resolve().parent.parent
NATS_SERVER = str(BIN / "nats-server")


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


class NatsServer(ServerProcess):
    """A real nats-server with JetStream in `store`, on a free port unless one is given."""

    def __init__(self, store: Path, port: int | None = None) -> None:
        port = port or free_port()
        self.store = store
        super().__init__(
            [NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store)],
            port, store / "nats-server.log",
        )

    def start(self, timeout: float = 10.0) -> NatsServer:
        super().start(timeout)
        return self


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


async def task_of(member: Member, direction: str) -> dict[str, Any] | None:
    tasks = await member.ctl_json("tasks")
    return next((t for t in tasks if t["direction"] == direction), None)


async def wait_state(member: Member, direction: str, states: tuple[str, ...],
                     timeout: float = 90.0, task_id: str | None = None) -> dict[str, Any]:
    """The member's task (the first in `direction`, or `task_id`) once it is in `states`."""
    async def arrived() -> dict[str, Any] | None:
        tasks = await member.ctl_json("tasks")
        task = next((t for t in tasks if t["direction"] == direction
                     and task_id in (None, t["task_id"])), None)
        return task if task is not None and task["state"] in states else None

    found: dict[str, Any] = await poll(
        arrived, timeout=timeout, every=0.3,
        what=lambda: f"{member.name}'s {direction} task in {states}\n"
                     + member.daemon.log()[-3000:])
    return found


# ---- the economy, for tests of a federation (bench/rig.py) -----------------------------


async def money(member: Member, of: str = "") -> tuple[int, int]:
    """(available, held) of `member`'s account, or of `of`'s as `member` reads it."""
    balance = await member.ctl_json("balance", *([of] if of else []))
    return balance["available"], balance["held"]


async def funded(fed: Federation, **amounts: int) -> None:
    """The federation's LEDGER made, and each entity (entity_a=500: `entity-a`) minted
    its amount by the operator."""
    assert (await asyncio.to_thread(fed.economy, "init")).returncode == 0
    for name, amount in amounts.items():
        minted = await asyncio.to_thread(fed.economy, "mint", name.replace("_", "-"),
                                         str(amount))
        assert minted.returncode == 0, minted.stdout + minted.stderr


async def hostile(member: Member) -> nats.NATS:
    """A raw client on `member`'s leaf: its hub login, nothing of its daemon's rules."""
    return await nats.connect(member.url, inbox_prefix=f"_i.{member.name}")
