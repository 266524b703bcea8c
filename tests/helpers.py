"""Real processes for tests: nats-server on free ports, entity data dirs, entityd daemons."""

from __future__ import annotations

import asyncio
import inspect
import json
import sys
import time
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nats
from nacl.signing import SigningKey
from nats.aio.subscription import Subscription

import protocol
from actors.llm.scripted import ScriptedLLMServer
from actors.llm.scripted.script import Script

# Re-exported: the tests take ports, processes and entity data dirs from here, the same
# the benches use (bench/rig.py, the federation rig, starts them too).
from bench.harness import BIN as BIN
from bench.harness import DaemonProc as DaemonProc
from bench.harness import ServerProcess as ServerProcess
from bench.harness import child_env as child_env
from bench.harness import ctl as ctl
from bench.ports import free_port as free_port
from bench.ports import free_port_range as free_port_range
from bench.rig import Federation, Member, build, running
from bench.rig import make_entity as make_entity
from entityd import identity
from entityd.actor import Actor
from entityd.bus import barrier
from entityd.config import RuntimeSection
from entityd.runtime import Runtime
from entityd.transport import Transport
from protocol import Keyring, Sealer

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


@asynccontextmanager
async def hostile_client(member: Member) -> AsyncIterator[nats.NATS]:
    """`hostile(member)`, closed on the way out."""
    nc = await hostile(member)
    try:
        yield nc
    finally:
        await nc.close()


@asynccontextmanager
async def scripted_federation(
    root: Path, names: Sequence[str], script: Script, *,
    prepare: Callable[[Federation], object] | None = None,
) -> AsyncIterator[Federation]:
    """A federation of `names` (bench.rig.build in `root`) on a scripted model serving
    `script`, running; `prepare` is called on it after it is built, before it starts."""
    async with ScriptedLLMServer(script) as llm:
        fed = build(root, names, llm_url=llm.base_url)
        if prepare is not None:
            prepare(fed)
        async with running(fed):
            yield fed


def _read_subject(nc: nats.NATS) -> tuple[str, str]:
    """Where the member whose login `nc` is (`hostile`: inboxes `_i.<member>`) reads the
    ledger (the hub's books reader), and a fresh inbox of its own."""
    inbox = nc.new_inbox()
    return protocol.subjects.ledger_read(inbox.split(".")[1]), inbox


# A member the books reader stopped listening to (over its budget: a flood of its own)
# finds no responder until its budget refills; a reader asks again, as members do.
PAUSED_S = 15.0


async def stored_on(nc: nats.NATS, subject: str, after: int = 0) -> list[tuple[int, bytes]]:
    """(stream sequence, data) of every message on `subject` after stream sequence `after`,
    as members read (batched direct gets through the hub's books reader), page by page."""
    found: list[tuple[int, bytes]] = []
    deadline = time.monotonic() + PAUSED_S
    while True:
        read, inbox = _read_subject(nc)
        sub = await nc.subscribe(inbox)
        try:
            await nc.publish(read, json.dumps(
                {"seq": after + 1, "next_by_subj": subject, "batch": 256}).encode(), reply=inbox)
            page: list[tuple[int, bytes]] = []
            while True:
                msg = await sub.next_msg(timeout=5)
                status = (msg.headers or {}).get("Status")
                if status:
                    break
                page.append((int((msg.headers or {})["Nats-Sequence"]), msg.data))
        finally:
            await sub.unsubscribe()
        if status == "503" and time.monotonic() < deadline:
            await asyncio.sleep(0.5)
            continue
        assert status in ("204", "404"), f"a read of {subject} ended {status}"
        found += page
        if len(page) < 256:
            return found
        after = found[-1][0]


async def last_on(nc: nats.NATS, account: str) -> int:
    """The stream sequence of the last message on `account`'s chain, as a member reads it."""
    read, _ = _read_subject(nc)
    ask = json.dumps({"last_by_subj": protocol.subjects.ledger(account)}).encode()
    deadline = time.monotonic() + PAUSED_S
    while True:
        try:
            answer = await nc.request(read, ask, timeout=5)
            break
        except nats.errors.NoRespondersError:
            if time.monotonic() > deadline:
                raise
            await asyncio.sleep(0.5)
    assert answer.headers is not None and "Nats-Sequence" in answer.headers, answer.headers
    return int(answer.headers["Nats-Sequence"])


async def command_into_inbox(sender: Member, receiver: Member, op: str,
                             record: object) -> None:
    """`record` from `sender` straight into `receiver`'s INBOX as the command `op`, sealed
    with the sender's key as its daemon would (a member: its own key, its own hub login),
    every field of the sender's choosing."""
    sealer = Sealer(identity.load(sender.name, sender.data).signing_key)
    subject = protocol.subjects.command(receiver.name, sender.name, op)
    wire, msg_id = sealer.seal(identity.read_public(receiver.data), src=f"{sender.name}/peer",
                               dst=f"{receiver.name}/peer", subj=subject, message=record)
    async with hostile_client(sender) as nc:
        await nc.jetstream().publish(subject, wire, headers={"Nats-Msg-Id": msg_id.hex()})


async def task_by_id(member: Member, direction: str, task_id: str) -> dict[str, Any] | None:
    """The member's task `task_id` in `direction` ("in" or "out"), if it has one."""
    tasks = await member.ctl_json("tasks")
    return next((t for t in tasks if t["task_id"] == task_id and t["direction"] == direction),
                None)


async def stopped(member: Member, grace: float = 20.0) -> int:
    """The member's daemon sent SIGTERM: its exit code (-9: killed, still running after
    `grace` s)."""
    member.daemon.signal_stop()
    return await asyncio.to_thread(member.daemon.wait_stopped, grace)


def checkpoint_lines(member: Member) -> list[dict[str, Any]]:
    """The `ledger_checkpoint` lines of the member's daemon log, parsed, oldest first."""
    return [json.loads(line) for line in member.daemon.log().splitlines()
            if '"ledger_checkpoint"' in line]


async def monitor(port: int, path: str) -> Any:
    """What a nats-server's monitoring port (`http: 127.0.0.1:port` in its config) says at
    `path` (/varz, /leafz?subs=1, /subsz, /accountz?acc=...)."""
    def get() -> Any:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=10) as answer:
            return json.loads(answer.read())
    return await asyncio.to_thread(get)
