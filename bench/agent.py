"""Orchestrator overhead per LLM step, beside one bare chat-completions call.

`python -m bench.agent` starts its own nats-server (with JetStream, which the peer and
ledger actors need) and a scripted chat-completions server (not a model: it answers at
once), runs the daemon's standard actors in one Runtime, and drives turns as `entityctl
ask` does: a signed `Goal` to the orchestrator, then its `answer` event. Each turn's model
calls are replayed as bare calls through the same client, and the difference is what the
orchestrator adds per LLM call.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import re
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from nats.aio.client import Client
from nats.aio.msg import Msg

from actors import prompts
from actors.assembly import StandardAssembly
from actors.llm import LLM, Reply, ScriptedLLMServer, ScriptedToolCall
from actors.messages import Goal, GoalAccepted
from bench.harness import BenchError, run_with_nats
from entityd import bus, identity, logs
from entityd import config as config_mod
from entityd.daemon import build_keyring
from entityd.runtime import Runtime
from entityd.transport import Transport, wait_closed
from protocol import Envelope, Keyring, ProtocolError, Status, subjects

ENTITY = "bench-agent"
ORCHESTRATOR = f"{ENTITY}/orchestrator"
CLIENT = f"{ENTITY}/ctl"  # the address entityctl speaks as
TOOL = "todo_list"  # answered by the memory actor from SQLite, no sandbox
FINAL_ANSWER = "done"
GOAL = "Bench turn {n}: call todo_list {steps} times, then answer."
GOAL_STEPS = re.compile(r"call todo_list (\d+) times")
ACCEPT_TIMEOUT_S = 10.0
TURN_TIMEOUT_S = 60.0
TARGET = 1.1  # issue 15


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Timed rounds (each: one long turn, one short turn, both replayed bare) and warm-up."""

    rounds: int
    tool_steps: int  # tool calls in a long turn; a short turn has none
    warmup: int


# Default: 30-40 s on a 2-core machine; --quick about 5 s.
DEFAULT = Sizes(rounds=200, tool_steps=8, warmup=5)
QUICK = Sizes(rounds=15, tool_steps=8, warmup=2)


class BenchModel:
    """The script: a cheap tool call until the goal's count is reached, then an answer;
    `[]` to the lessons request. Decided from each request alone, so replaying a request
    gets the same answer."""

    def __init__(self) -> None:
        self.lessons_prompt = prompts.load("lessons")

    def __call__(self, body: dict[str, Any]) -> Reply:
        messages: list[dict[str, Any]] = body["messages"]
        if messages[0].get("content") == self.lessons_prompt:
            return Reply(content="[]")
        user = next((m["content"] for m in messages if m["role"] == "user"), "")
        wanted = GOAL_STEPS.search(user)
        if wanted is None:
            raise ValueError(f"not a bench goal: {user[:100]!r}")
        done = sum(1 for m in messages if m["role"] == "tool")
        if done < int(wanted[1]):
            return Reply(tool_calls=[ScriptedToolCall(TOOL, {})])
        return Reply(content=FINAL_ANSWER)


def write_config(root: Path, nats_url: str, llm_url: str, tool_steps: int) -> config_mod.Config:
    """A minimal entity config file pointed at our servers, loaded as the daemon loads it."""
    data = root / ENTITY
    data.mkdir()
    identity.create(data)
    path = data / config_mod.CONFIG_NAME
    path.write_text(
        f'[entity]\nname = "{ENTITY}"\ndata_dir = "{data}"\n\n'
        f'[nats]\nurl = "{nats_url}"\n\n'
        f'[llm]\nprovider = "scripted"\nbase_url = "{llm_url}"\n'
        f"max_steps_per_turn = {tool_steps + 2}\n"
        # Thousands of calls within the hour: the budget must not be what stops a turn.
        "max_tokens_per_hour = 1000000000000\n"
    )
    return config_mod.load(path, environ={})


# ---- the client: entityctl ask -----------------------------------------------------


class AskClient:
    """Sends goals as `<entity>/ctl` and waits for the orchestrator's answer events."""

    def __init__(self, transport: Transport) -> None:
        self.transport = transport
        self.guard = transport.new_replay_guard()
        self.answers: asyncio.Queue[Envelope | ProtocolError] = asyncio.Queue()
        self.count = 0

    async def open(self) -> None:
        # Only the answer subject: verifying every step event here, on the daemon's
        # event loop, would bill the daemon for work a separate entityctl does.
        await self.transport.nc.subscribe(
            subjects.event(ENTITY, "orchestrator", "answer"), cb=self._answer
        )
        await bus.barrier(self.transport.nc)

    async def _answer(self, msg: Msg) -> None:
        try:
            env = self.transport.open(msg.data, subject=msg.subject, local=CLIENT,
                                      replay=self.guard)
        except ProtocolError as exc:
            self.answers.put_nowait(exc)
            return
        self.answers.put_nowait(env)

    async def turn(self, tool_steps: int) -> float:
        """One goal to its answer event; the seconds taken."""
        self.count += 1
        task_id = f"bench{self.count:06d}"
        goal = Goal(GOAL.format(n=self.count, steps=tool_steps), task_id, "", "ctl")
        started = time.perf_counter()
        accepted = await self.transport.ask(CLIENT, ORCHESTRATOR, goal, ACCEPT_TIMEOUT_S)
        if not isinstance(accepted.message, GoalAccepted):
            raise BenchError(f"the orchestrator answered a goal with {accepted.typ}")
        try:
            async with asyncio.timeout(TURN_TIMEOUT_S):
                answer = await self.answers.get()
        except TimeoutError:
            raise BenchError(f"no answer to {task_id} within {TURN_TIMEOUT_S} s") from None
        seconds = time.perf_counter() - started
        if isinstance(answer, ProtocolError):
            raise BenchError(f"an answer event did not verify: {answer}")
        data = answer.message.data
        expected = {"task_id": task_id, "ok": True, "text": FINAL_ANSWER,
                    "steps": tool_steps + 1, "stopped": ""}
        got = {key: data.get(key) for key in expected}
        if got != expected:
            raise BenchError(f"turn {task_id} ended with {got}, expected {expected}")
        return seconds


# ---- the measurement ---------------------------------------------------------------


@dataclasses.dataclass
class Series:
    """Turns of one length: wall time of each, and the bare replay of its model calls."""

    tool_steps: int
    turns: list[float] = dataclasses.field(default_factory=list)
    bare: list[float] = dataclasses.field(default_factory=list)

    @property
    def calls(self) -> int:
        """Model calls per turn: the tool steps, the final answer and the lessons."""
        return self.tool_steps + 2

    @property
    def bare_rtt(self) -> float:
        return sum(self.bare) / (len(self.bare) * self.calls)

    @property
    def overhead(self) -> float:
        """What the orchestrator adds per turn beyond its model calls (seconds)."""
        return (sum(self.turns) - sum(self.bare)) / len(self.turns)

    def add(self, turn: float, bare: float) -> None:
        self.turns.append(turn)
        self.bare.append(bare)


class TurnProfiler:
    """pyinstrument over the timed turns only: not the set-up, not the bare replays.

    It samples the event loop's thread whichever task runs, so the actors, the scripted
    server and the client all show; waiting shows as the selector's poll.
    """

    def __init__(self) -> None:
        from pyinstrument import Profiler  # not a dependency: only --profile needs it

        self.profiler = Profiler(interval=0.001, async_mode="disabled")

    @contextlib.contextmanager
    def sampling(self) -> Iterator[None]:
        self.profiler.start()  # sessions of successive turns are combined
        try:
            yield
        finally:
            self.profiler.stop()

    def text(self) -> str:
        return str(self.profiler.output_text(unicode=True, color=False))


class Bench:
    """Runs rounds: a turn through the whole entity, then its model calls bare."""

    def __init__(self, client: AskClient, server: ScriptedLLMServer, llm: LLM,
                 profiler: TurnProfiler | None) -> None:
        self.client = client
        self.server = server
        self.llm = llm
        self.profiler = profiler

    async def round(self, series: Series, *, timed: bool = True) -> None:
        """One turn, then its model calls replayed bare; both recorded in `series`."""
        self.server.requests.clear()  # recorded bodies: keep only this turn's
        sampling = self.profiler.sampling if timed and self.profiler else contextlib.nullcontext
        with sampling():
            seconds = await self.client.turn(series.tool_steps)
        bodies = self.server.bodies
        if len(bodies) != series.calls:
            raise BenchError(f"a turn made {len(bodies)} model calls, expected {series.calls}")
        series.add(seconds, await self.replay(bodies))

    async def replay(self, bodies: list[dict[str, Any]]) -> float:
        """The same requests (messages, tools) through the same client, one at a time."""
        self.server.requests.clear()
        started = time.perf_counter()
        for body in bodies:
            await self.llm.generate(body["messages"], body.get("tools"))
        seconds = time.perf_counter() - started
        self.server.requests.clear()
        return seconds


@dataclasses.dataclass
class Results:
    long: Series
    short: Series

    @property
    def bare_rtt(self) -> float:
        """One bare call with the long turns' message sizes (seconds)."""
        return self.long.bare_rtt

    @property
    def step_overhead(self) -> float:
        """Per LLM call of a long turn: (turn - calls x bare RTT) / calls (seconds)."""
        return self.long.overhead / self.long.calls

    @property
    def fixed_per_turn(self) -> float:
        return self.short.overhead

    @property
    def per_tool_step(self) -> float:
        return (self.long.overhead - self.short.overhead) / self.long.tool_steps

    def lines(self) -> Iterator[str]:
        for s in (self.long, self.short):
            turns = sorted(s.turns)
            p90 = turns[int(0.9 * (len(turns) - 1))]
            yield row(f"turn, {s.tool_steps} tool steps ({s.calls} LLM calls)",
                      statistics.fmean(turns),
                      f"mean; p50 {ms(statistics.median(turns))}, p90 {ms(p90)} (N={len(turns)})")
        yield row("bare call RTT, same messages", self.bare_rtt,
                  f"N={len(self.long.bare) * self.long.calls}; "
                  f"{ms(self.short.bare_rtt)} ms with the short turns' messages")
        yield row("step overhead per LLM call", self.step_overhead,
                  f"(turn - {self.long.calls} x RTT) / {self.long.calls}")
        yield row("  fixed per turn", self.fixed_per_turn, "a 0-tool-step turn minus its 2 calls")
        yield row("  marginal per tool step", self.per_tool_step,
                  "what one more tool step adds beyond its call")


def row(label: str, seconds: float, detail: str) -> str:
    return f"{label:<34} {ms(seconds):>8} ms  {detail}"


def ms(seconds: float) -> str:
    return f"{seconds * 1000:.2f}"


async def close_connection(nc: Client) -> None:
    # A Ctrl-C at the terminal interrupts the nats-server too (one process group), so
    # on the way out the connection may be gone already: that is closed enough.
    with contextlib.suppress(ConnectionError):
        await wait_closed(nc, 5.0)


async def measure(nats_url: str, sizes: Sizes, root: Path, profile: bool) -> Results:
    async with contextlib.AsyncExitStack() as stack:
        server = await stack.enter_async_context(ScriptedLLMServer(BenchModel()))
        print(f"scripted LLM server {server.base_url} (not a model)", flush=True)
        cfg = write_config(root, nats_url, server.base_url, sizes.tool_steps)
        own = identity.load(cfg.name, cfg.data_dir)

        # The daemon's side, as entityd run builds it (daemon.py), minus the nats-server.
        daemon_nc = await bus.connect(nats_url, entity=cfg.name, client_name="bench-daemon",
                                      connect_timeout=cfg.nats.connect_timeout)
        stack.push_async_callback(close_connection, daemon_nc)
        daemon = Transport(
            daemon_nc, entity=cfg.name, key=own.signing_key, keyring=build_keyring(cfg, own),
            replay_window_ms=int(cfg.protocol.replay_window * 1000),
            replay_capacity=cfg.protocol.replay_capacity,
            max_bytes=cfg.protocol.max_message_bytes,
        )
        runtime = Runtime(daemon, cfg.runtime)
        assembly = StandardAssembly(cfg, {})
        stack.push_async_callback(assembly.aclose)

        def status() -> Status:
            return Status(cfg.name, own.public_hex, 0.0, nats_url, runtime.actors())

        for name, factory in assembly.actors(status, runtime).items():
            runtime.add(name, factory)

        # The client's side, as entityctl builds it (entityd/client.py).
        client_nc = await bus.connect(nats_url, entity=cfg.name, client_name="bench-ctl",
                                      retry_forever=False)
        stack.push_async_callback(close_connection, client_nc)
        keyring = Keyring()
        keyring.add(identity.read_public(cfg.data_dir), cfg.name)
        client = AskClient(Transport(client_nc, entity=cfg.name, key=own.signing_key,
                                     keyring=keyring, max_bytes=cfg.protocol.max_message_bytes))
        await client.open()

        profiler = TurnProfiler() if profile else None
        bench = Bench(client, server, assembly.llm(), profiler)
        long, short = Series(sizes.tool_steps), Series(0)
        async with asyncio.TaskGroup() as tg:
            await runtime.start(tg)
            try:
                for _ in range(sizes.warmup):
                    await bench.round(Series(sizes.tool_steps), timed=False)
                    await bench.round(Series(0), timed=False)
                # Long and short turns alternate, each followed by its bare replay, so
                # drift on the machine hits all of them alike.
                for _ in range(sizes.rounds):
                    await bench.round(long)
                    await bench.round(short)
            finally:
                await runtime.stop()
        if profiler is not None:
            print(profiler.text())
    return Results(long, short)


async def run(nats_url: str, sizes: Sizes, profile: bool) -> Results:
    """measure() in a temporary directory, cancelled on SIGTERM so everything closes."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        with tempfile.TemporaryDirectory(prefix="bench-agent-") as root:
            return await measure(nats_url, sizes, Path(root), profile)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.agent", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="few turns: a smoke run")
    parser.add_argument(
        "--profile", action="store_true",
        help="profile the timed turns with pyinstrument (which must be installed); "
             "the turn figures are then inflated and no ratio is printed",
    )
    args = parser.parse_args(argv)
    sizes = QUICK if args.quick else DEFAULT
    logs.configure("error")  # a failed turn ends the run as BenchError instead

    print(f"bench.agent: {'quick' if args.quick else 'default'} sizes, {sizes.rounds} rounds "
          f"of a {sizes.tool_steps}-tool-step turn and a 0-tool-step turn, each replayed bare")
    results, code = run_with_nats("bench.agent", lambda url: run(url, sizes, args.profile),
                                  jetstream=True)
    if results is None:
        return code

    for line in results.lines():
        print(line)
    if args.profile:
        # Only the turns ran under the profiler, which hooks every call: the bare calls
        # they would be compared with did not.
        print("ratio not reported: under --profile the turns ran with the profiler, the bare "
              "calls without it")
        return 0
    print(f"target: step_overhead_vs_llm_call <= {TARGET:.2f}")
    print(f"ratio step_overhead_vs_llm_call: {results.step_overhead / results.bare_rtt:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
