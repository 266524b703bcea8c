"""Federation round trips: two real entityd daemons across a hub, beside raw nats-py.

`python -m bench.federation` starts, in a temporary directory, a hub nats-server and two
`entityd run` daemons (entity-a, entity-b) whose embedded nats-servers are leaves of it,
waits until each lists the other as present, and then measures, one call at a time:

1. raw: nats-py request/reply from A's leaf, across the hub, to a responder on B's leaf;
2. fed ping: check_peer_alive as the tool does it, an EntityClient of entity-a asking its
   peer actor PeerCheck("entity-b") (ctl -> A's peer -> signed ping -> B's peer -> pong);
3. wire ping: the same signed ping sent straight from a connection on A's leaf, without
   the local ctl hop or A's peer actor;
4. the ctl hop alone: check_peer_alive of entity-a itself, answered by A's peer actor
   without sending anything;
   (1-4 alternate in rounds, so that drift on the machine hits them alike)
5. raw durable: nats-py JetStream publish from A's leaf into a file stream on B's leaf;
6. durable report: PeerReport("entity-b", ...) until B's INBOX acknowledged it, then the
   time until B's peer actor has handled every one (its `report_received` events).

It prints each figure with its p50 latency and the CPU every process on the path spent
per call, then `ratio fed_rr` (2/1), `ratio fed_rr_wire` (3/1), `ratio report_vs_raw`
(6/1) and `ratio report_vs_raw_js` (6/5). Nothing is asserted about timings.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import shutil
import signal
import statistics
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import msgpack
import nats
import nats.errors
import nats.js.errors
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import RetentionPolicy, StorageType, StreamConfig

import protocol
from actors.peer.messages import (
    PeerCheck,
    PeerCheckResult,
    PeerOutcome,
    PeerReport,
    Report,
)
from bench.harness import BenchError, run_guarded
from bench.rig import Federation, build, edit
from entityd import config as config_mod
from entityd import identity, logs
from entityd.client import EntityClient
from entityd.transport import wait_closed
from protocol import Keyring, Ping, Pong, ReplayGuard, Sealer, subjects

A, B = "entity-a", "entity-b"
PEER_ACTOR = "peer"
# One token more than a peer request (fed.req.<dst>.<src>.<op>): the same hub
# permissions and route, but B's peer actor (subscribed to fed.req.entity-b.*.*) does not
# see it, so the raw figure pays for nothing of entityd's.
RAW_SUBJECT = subjects.request(B, A, "bench") + ".raw"
WIRE_SUBJECT = subjects.request(B, A, "ping")
# The local leg's raw counterpart: a request and its reply between two clients of A's leaf.
RAW_LOCAL_SUBJECT = "bench.raw.local"
CRYPTO_PAIRS = 2000  # sign+verify of a ping, timed alone for the ceiling
# The raw durable baseline: a stream on B's leaf like its INBOX, on a subject one token
# longer than a command (fed.cmd.<dst>.<src>.<op>) so that it overlaps no INBOX subject.
RAW_STREAM = "BENCH-RAW"
RAW_CMD_SUBJECT = subjects.command(B, A, "bench") + ".raw"
# Far above what the bench sends, so B's per-peer token bucket never refuses it.
RATE_PER_MINUTE = 100_000_000
RATE_BURST = 1_000_000
# No model is asked by ping or report; the scripted provider only needs some URL.
UNUSED_LLM_URL = "http://127.0.0.1:9/v1"

REPLY_TIMEOUT_S = 10.0
PHASE_TIMEOUT_S = 300.0
DISCOVERY_TIMEOUT_S = 30.0


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Round trips per figure (the ctl hop alone takes `ping`), untimed warm-up calls
    before each, and in how many turns the four round-trip figures take their share."""

    raw: int
    ping: int
    wire: int
    report: int
    warmup: int
    rounds: int


DEFAULT = Sizes(raw=2000, ping=1000, wire=1000, report=300, warmup=100, rounds=5)
QUICK = Sizes(raw=200, ping=100, wire=100, report=30, warmup=20, rounds=2)


# ---- figures ------------------------------------------------------------------------------


Cpu = dict[str, tuple[float, float]]  # process -> (user, system) CPU seconds


class CpuMeter:
    """CPU time (user and system, from /proc) of every process on the path: where a
    sequential round trip spends its CPU, and how much of its wall time that is."""

    TICK_S = 1.0 / os.sysconf("SC_CLK_TCK")

    def __init__(self, fed: Federation) -> None:
        pids: dict[str, int] = {"bench": os.getpid()}
        for name, short in ((A, "A"), (B, "B")):
            proc = fed[name].daemon.proc
            if proc is not None:
                pids[short] = proc.pid
                leaf = _child_named(proc.pid, "nats-server")
                if leaf is not None:
                    pids[f"{short} leaf"] = leaf
        if fed.hub.proc is not None:
            pids["hub"] = fed.hub.proc.pid
        order = ["bench", "A", "A leaf", "hub", "B leaf", "B"]
        self.pids = {k: pids[k] for k in order if k in pids}

    def sample(self) -> Cpu:
        return {name: _cpu_seconds(pid) for name, pid in self.pids.items()}

    @staticmethod
    def since(before: Cpu, after: Cpu) -> Cpu:
        return {k: (after[k][0] - before[k][0], after[k][1] - before[k][1]) for k in before}

    @staticmethod
    def add(total: Cpu, more: Cpu) -> Cpu:
        return {k: (total.get(k, (0.0, 0.0))[0] + u, total.get(k, (0.0, 0.0))[1] + s)
                for k, (u, s) in more.items()}

    @staticmethod
    def line(used: Cpu, n: int, wall_s: float) -> str:
        """CPU ms per call of each process, their sum, and the kernel's share of it."""
        per = {k: (u + s) / n * 1000 for k, (u, s) in used.items()}
        total = sum(per.values())
        kernel = sum(s for _, s in used.values()) / n * 1000
        wall_ms = wall_s / n * 1000
        parts = ", ".join(f"{k} {v:.3f}" for k, v in per.items())
        return (f"{'':<4}CPU ms per call: {parts}; sum {total:.3f} = {total / wall_ms:.0%} "
                f"of {wall_ms:.3f} ms wall, {kernel / total if total else 0.0:.0%} of it in "
                "the kernel")


def _cpu_seconds(pid: int) -> tuple[float, float]:
    """(user, system) CPU seconds of a process so far; zeros once it is gone."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return 0.0, 0.0
    return int(fields[11]) * CpuMeter.TICK_S, int(fields[12]) * CpuMeter.TICK_S


def _child_named(ppid: int, comm: str) -> int | None:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            head, tail = (entry / "stat").read_text().rsplit(")", 1)
        except OSError:
            continue
        if head.split("(", 1)[1] == comm and int(tail.split()[1]) == ppid:
            return int(entry.name)
    return None


@dataclasses.dataclass
class Figure:
    """One pattern's sequential round trips, summed over the rounds it ran in."""

    name: str
    call: Callable[[int], Awaitable[None]]
    n: int
    done: int = 0
    seconds: float = 0.0
    latencies: list[float] = dataclasses.field(default_factory=list)  # seconds, per call
    cpu: Cpu = dataclasses.field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.done / self.seconds

    @property
    def p50_ms(self) -> float:
        return statistics.median(self.latencies) * 1000

    @property
    def p99_ms(self) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))] * 1000

    async def warm_up(self, n: int) -> None:
        for i in range(n):
            await self.call(-1 - i)

    async def run(self, n: int, cpu: CpuMeter) -> None:
        """n more timed calls, one at a time."""
        clock = time.perf_counter
        before = cpu.sample()
        start = clock()
        for i in range(self.done, self.done + n):
            t0 = clock()
            await self.call(i)
            self.latencies.append(clock() - t0)
        self.seconds += clock() - start
        self.cpu = cpu.add(self.cpu, cpu.since(before, cpu.sample()))
        self.done += n

    def lines(self) -> list[str]:
        return [
            f"{self.name:<34} {self.rate:>8,.0f} msg/s  p50 {self.p50_ms:7.3f} ms  "
            f"p99 {self.p99_ms:7.3f} ms  (N={self.done}, {self.seconds:.2f} s)",
            CpuMeter.line(self.cpu, self.done, self.seconds),
        ]


async def interleaved(figures: list[Figure], rounds: int, warmup: int, cpu: CpuMeter) -> None:
    """Each figure's calls in `rounds` slices, the figures taking turns, so that drift on
    the machine (it is shared) hits them alike; an untimed warm-up of each first."""
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        for figure in figures:
            await figure.warm_up(warmup)
        for r in range(rounds):
            for figure in figures:
                await figure.run(figure.n * (r + 1) // rounds - figure.n * r // rounds, cpu)


def report_wire(key_a: SigningKey, public_b: bytes, text: str) -> bytes:
    """A report from A's peer actor to B's, encrypted and signed as FedLink.put seals it."""
    wire, _ = Sealer(key_a).seal(public_b, src=f"{A}/{PEER_ACTOR}", dst=f"{B}/{PEER_ACTOR}",
                                 subj=subjects.command(B, A, "report"), message=Report(text))
    return wire


def ping_wire(key_a: SigningKey) -> bytes:
    """A signed ping from A's peer actor to B's, as FedLink.ask seals it."""
    wire, _ = protocol.seal(key_a, src=f"{A}/{PEER_ACTOR}", dst=f"{B}/{PEER_ACTOR}",
                            subj=WIRE_SUBJECT, message=Ping())
    return wire


# ---- what is measured --------------------------------------------------------------------


class Raw:
    """Plain nats-py: requester on A's leaf, echoing responder on B's (across the hub)
    or, on RAW_LOCAL_SUBJECT, on A's leaf too."""

    def __init__(self, requester: Client, payload: bytes, subject: str = RAW_SUBJECT) -> None:
        self.requester = requester
        self.payload = payload
        self.subject = subject

    @staticmethod
    async def respond(msg: Msg) -> None:
        await msg.respond(msg.data)

    async def call(self, i: int) -> None:
        reply = await self.requester.request(self.subject, self.payload,
                                             timeout=REPLY_TIMEOUT_S)
        if reply.data != self.payload:
            raise BenchError("the raw responder answered with other bytes")


class ToolPing:
    """check_peer_alive as entityctl and the orchestrator's tool do it."""

    def __init__(self, client: EntityClient) -> None:
        self.client = client
        self.link_latencies: list[float] = []  # A's own timing of its signed ping (ms)

    async def call(self, i: int) -> None:
        result = await self.client.ask(PEER_ACTOR, PeerCheck(B), REPLY_TIMEOUT_S)
        if not isinstance(result, PeerCheckResult) or result.state != "alive":
            raise BenchError(f"check_peer_alive answered {result!r}")
        if i >= 0:
            self.link_latencies.append(result.latency_ms)


class LocalHop:
    """The ctl hop alone: check_peer_alive of the entity itself, which A's peer actor
    answers at once (state "unknown": no Later, no store read, nothing sent to B)."""

    def __init__(self, client: EntityClient) -> None:
        self.client = client

    async def call(self, i: int) -> None:
        result = await self.client.ask(PEER_ACTOR, PeerCheck(A), REPLY_TIMEOUT_S)
        if not isinstance(result, PeerCheckResult) or result.state == "alive":
            raise BenchError(f"check_peer_alive of itself answered {result!r}")


class WirePing:
    """A signed ping straight from a connection on A's leaf, signed with A's key, and
    B's signed pong verified with B's public key: B's peer actor without A's."""

    def __init__(self, nc: Client, key_a: SigningKey, public_b: bytes) -> None:
        self.nc = nc
        self.key = key_a
        self.keyring = Keyring()
        self.keyring.add(public_b, B)
        self.replay = ReplayGuard()
        self.local = f"{A}/{PEER_ACTOR}"

    async def call(self, i: int) -> None:
        wire, msg_id = protocol.seal(self.key, src=self.local, dst=f"{B}/{PEER_ACTOR}",
                                     subj=WIRE_SUBJECT, message=Ping())
        reply = await self.nc.request(WIRE_SUBJECT, wire, timeout=REPLY_TIMEOUT_S)
        env = protocol.open(reply.data, subject=reply.subject, local=self.local,
                            keyring=self.keyring, replay=self.replay)
        if env.corr != msg_id or env.src != f"{B}/{PEER_ACTOR}" or not isinstance(
                env.message, Pong):
            raise BenchError(f"the wire ping got {env.typ} from {env.src}")


class RawDurable:
    """nats-py JetStream publish from A's leaf into a file stream on B's leaf, each with a
    Nats-Msg-Id, returning on the PubAck: what a report's landing costs without entityd."""

    def __init__(self, requester: Client, payload: bytes) -> None:
        self.js = requester.jetstream()
        self.payload = payload

    @staticmethod
    async def create(responder: Client) -> None:
        """The stream, on B's leaf (a stream is made in the domain of the server asked)."""
        await responder.jetstream().add_stream(StreamConfig(
            name=RAW_STREAM, subjects=[RAW_CMD_SUBJECT], retention=RetentionPolicy.WORK_QUEUE,
            storage=StorageType.FILE, duplicate_window=120.0))

    async def call(self, i: int) -> None:
        ack = await self.js.publish(RAW_CMD_SUBJECT, self.payload, timeout=REPLY_TIMEOUT_S,
                                    headers={"Nats-Msg-Id": os.urandom(16).hex()})
        if ack.stream != RAW_STREAM or ack.duplicate:
            raise BenchError(f"the raw JetStream publish got {ack!r}")


class Reports:
    """report_to_peer: returns once B's INBOX has the report; B's events say when B's
    peer actor has handled it (kept in memory, told to the orchestrator)."""

    def __init__(self, client: EntityClient, tag: str) -> None:
        self.client = client
        self.tag = tag
        self.sent: dict[str, float] = {}  # envelope id -> perf_counter when asked
        self.handled: dict[str, float] = {}  # envelope id -> perf_counter of its event
        self.codes: dict[str, int] = {}
        self.watching = asyncio.Event()
        self._changed = asyncio.Event()

    async def call(self, i: int) -> None:
        t0 = time.perf_counter()
        outcome = await self.client.ask(
            PEER_ACTOR, PeerReport(B, f"bench report {self.tag} {i}"), REPLY_TIMEOUT_S)
        if not isinstance(outcome, PeerOutcome) or outcome.code not in ("delivered", "queued"):
            raise BenchError(f"report_to_peer answered {outcome!r}")
        self.codes[outcome.code] = self.codes.get(outcome.code, 0) + 1
        self.sent[outcome.id] = t0

    async def watch(self, nc: Client, public_b: bytes) -> None:
        """B's signed `report_received` events, verified with B's key (only that subject:
        a cheaper watch than every event of B, on a machine whose cores the run shares)."""
        keyring = Keyring()
        keyring.add(public_b, B)
        replay = ReplayGuard()
        sub = await nc.subscribe(subjects.event(B, PEER_ACTOR, "report_received"))
        await nc.flush()
        self.watching.set()
        try:
            async for msg in sub.messages:
                env = protocol.open(msg.data, subject=msg.subject, local=f"{B}/bench",
                                    keyring=keyring, replay=replay)
                self.handled[str(env.message.data.get("id", ""))] = time.perf_counter()
                self._changed.set()
        finally:
            await sub.unsubscribe()

    async def warm_up(self, n: int) -> None:
        """n untimed reports, handled by B before the timed ones start; then forgotten."""
        for i in range(n):
            await self.call(-1 - i)
        try:
            await self.drained(set(self.sent), PHASE_TIMEOUT_S)
        except TimeoutError:
            raise BenchError(f"B did not handle the {n} warm-up reports") from None
        self.sent.clear()
        self.codes.clear()

    async def drained(self, ids: set[str], timeout: float) -> float:
        """Wait until B has handled every report in `ids`; perf_counter of the last one."""
        async with asyncio.timeout(timeout):
            while not ids <= self.handled.keys():
                self._changed.clear()
                await self._changed.wait()
        return max(self.handled[i] for i in ids)


@dataclasses.dataclass(frozen=True)
class Drain:
    """From the first timed report sent until B's peer actor had handled the last one."""

    n: int
    seconds: float
    after_last_ack_s: float
    e2e_p50_ms: float  # report_to_peer asked -> B's report_received event
    codes: dict[str, int]
    cpu: Cpu

    def lines(self) -> list[str]:
        codes = ", ".join(f"{k} {v}" for k, v in sorted(self.codes.items()))
        return [
            f"{'report end to end (B handled)':<34} {self.n / self.seconds:>8,.0f} msg/s  "
            f"p50 {self.e2e_p50_ms:7.3f} ms  (all handled {self.seconds:.2f} s after the "
            f"first was sent, {self.after_last_ack_s:.3f} s after the last ack; {codes})",
            CpuMeter.line(self.cpu, self.n, self.seconds),
        ]


@dataclasses.dataclass(frozen=True)
class Results:
    raw: Figure
    ping: Figure
    wire: Figure
    local: Figure
    raw_js: Figure
    report: Figure
    link_p50_ms: float
    drain: Drain
    raw_local: Figure
    crypto_pair_s: float  # one Ed25519 sign and verify of a ping, in this process

    def ratios(self) -> dict[str, float]:
        return {
            "fed_rr": self.ping.rate / self.raw.rate,
            "fed_rr_wire": self.wire.rate / self.raw.rate,
            "report_vs_raw": self.report.rate / self.raw.rate,
            "report_vs_raw_js": self.report.rate / self.raw_js.rate,
        }

    def fed_rr_ceiling(self) -> float:
        """The best fed_rr could be if entityd added nothing but what a check_peer_alive
        must do: its two legs (the local request to A's peer actor, A's ping to B) as
        raw nats-py does them, and the Ed25519 of its four envelopes (request, ping,
        pong, answer: four signs, four verifies)."""
        raw = 1 / self.raw.rate
        return raw / (raw + 1 / self.raw_local.rate + 4 * self.crypto_pair_s)


def crypto_pair_seconds(key: SigningKey, n: int = CRYPTO_PAIRS) -> float:
    """Seconds per Ed25519 sign and verify of a ping's body, timed alone."""
    _, _, body, _ = msgpack.unpackb(ping_wire(key))
    signed = protocol.DOMAIN + body
    verify_key = key.verify_key
    start = time.perf_counter()
    for _ in range(n):
        verify_key.verify(signed, key.sign(signed).signature)
    return (time.perf_counter() - start) / n


async def measure(fed: Federation, sizes: Sizes) -> Results:
    await fed.discovered(DISCOVERY_TIMEOUT_S)
    cpu = CpuMeter(fed)
    cfg_a, cfg_b = config_mod.load(fed[A].config), config_mod.load(fed[B].config)
    key_a = identity.read_key(identity.key_path(cfg_a.data_dir))
    public_b = identity.read_public(cfg_b.data_dir)
    payload = b"x" * len(ping_wire(key_a))  # raw messages as large as a signed ping

    async with AsyncExitStack() as stack:
        responder = await nats.connect(fed[B].url, name="bench-raw-responder")
        stack.push_async_callback(wait_closed, responder, 5.0)
        await responder.subscribe(RAW_SUBJECT, cb=Raw.respond)
        await responder.flush()
        local_responder = await nats.connect(fed[A].url, name="bench-raw-local-responder")
        stack.push_async_callback(wait_closed, local_responder, 5.0)
        await local_responder.subscribe(RAW_LOCAL_SUBJECT, cb=Raw.respond)
        await local_responder.flush()
        requester = await nats.connect(fed[A].url, name="bench-raw-requester",
                                       inbox_prefix=subjects.inbox_prefix(A))
        stack.push_async_callback(wait_closed, requester, 5.0)
        client_a = await stack.enter_async_context(EntityClient(cfg_a))
        raw = Raw(requester, payload)
        await _reachable(raw.call)
        tool = ToolPing(client_a)
        figures = [
            Figure("raw nats-py rr across hub", raw.call, sizes.raw),
            Figure("fed ping (check_peer_alive)", tool.call, sizes.ping),
            Figure("fed ping, wire level", WirePing(requester, key_a, public_b).call,
                   sizes.wire),
            Figure("ctl hop alone (check of itself)", LocalHop(client_a).call, sizes.ping),
            Figure("raw nats-py rr on A's leaf", Raw(requester, payload, RAW_LOCAL_SUBJECT).call,
                   sizes.raw),
        ]
        await interleaved(figures, sizes.rounds, sizes.warmup, cpu)
        for figure in figures:
            print("\n".join(figure.lines()), flush=True)
        link_p50_ms = statistics.median(tool.link_latencies)
        print(f"  fed ping as A's peer actor times it: p50 {link_p50_ms:.3f} ms "
              "(PeerCheckResult.latency_ms: seal, A -> hub -> B -> hub -> A, open)", flush=True)

        reports = Reports(client_a, os.urandom(4).hex())
        await RawDurable.create(responder)
        durable = RawDurable(requester, b"x" * len(report_wire(
            key_a, public_b, f"bench report {reports.tag} {sizes.report // 2}")))
        await _reachable(durable.call)
        raw_js = Figure("raw JetStream publish across hub", durable.call, sizes.report)
        await raw_js.warm_up(sizes.warmup)
        await raw_js.run(sizes.report, cpu)
        print("\n".join(raw_js.lines()), flush=True)
        async with asyncio.TaskGroup() as tg:
            watcher = tg.create_task(reports.watch(responder, public_b))
            await reports.watching.wait()
            try:
                report, drain = await _reports(reports, sizes, cpu)
            finally:
                watcher.cancel()
    raw_fig, ping_fig, wire_fig, local_fig, raw_local = figures
    crypto_s = crypto_pair_seconds(key_a)
    print(f"Ed25519 sign+verify of a ping     {crypto_s * 1e6:8.1f} us (N={CRYPTO_PAIRS}, "
          "in this process)", flush=True)
    return Results(raw_fig, ping_fig, wire_fig, local_fig, raw_js, report, link_p50_ms, drain,
                   raw_local, crypto_s)


async def _reports(reports: Reports, sizes: Sizes, cpu: CpuMeter) -> tuple[Figure, Drain]:
    """The durable reports, after warm-up ones that B has handled; then the drain."""
    await reports.warm_up(sizes.warmup)
    figure = Figure("durable report (to B's INBOX)", reports.call, sizes.report)
    before = cpu.sample()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        await figure.run(sizes.report, cpu)
    last_ack = time.perf_counter()
    first_sent = min(reports.sent.values())
    try:
        last_handled = await reports.drained(set(reports.sent), PHASE_TIMEOUT_S)
    except TimeoutError:
        raise BenchError(f"B handled {len(reports.handled)} of {len(reports.sent)} reports "
                         f"within {PHASE_TIMEOUT_S} s") from None
    used = cpu.since(before, cpu.sample())
    e2e = [reports.handled[i] - t for i, t in reports.sent.items()]
    drain = Drain(sizes.report, last_handled - first_sent, max(0.0, last_handled - last_ack),
                  statistics.median(e2e) * 1000, dict(reports.codes), used)
    print("\n".join(figure.lines()), flush=True)
    print("\n".join(drain.lines()), flush=True)
    return figure, drain


async def _reachable(call: Callable[[int], Awaitable[None]]) -> None:
    """Until `call` gets through: interest on B's leaf takes a moment to reach A's."""
    deadline = time.monotonic() + DISCOVERY_TIMEOUT_S
    while True:
        try:
            async with asyncio.timeout(1.0):
                await call(-1)
            return
        # (A JetStream publish reports no responders as NoStreamResponseError.)
        except (nats.errors.NoRespondersError, nats.js.errors.NoStreamResponseError,
                nats.errors.TimeoutError, TimeoutError):
            if time.monotonic() > deadline:
                raise BenchError("B's leaf is not reachable from A's") from None
            await asyncio.sleep(0.1)


async def run(fed: Federation, sizes: Sizes) -> Results:
    """measure(), cancelled on SIGTERM so that every connection is closed."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        return await measure(fed, sizes)
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


@contextmanager
def workdir(keep: bool) -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="bench-federation-"))
    try:
        yield root
    finally:
        if keep:
            print(f"bench.federation: kept {root} (hub.conf, logs, data dirs)", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def run_federation(sizes: Sizes, keep: bool) -> tuple[Results | None, int]:
    """(results, 0), or (None, exit code): 1 when a measurement failed, 130 interrupted."""
    return run_guarded("bench.federation", lambda: running_federation(keep),
                       lambda fed: run(fed, sizes))


@contextmanager
def running_federation(keep: bool) -> Iterator[Federation]:
    """The hub and both daemons, ready; all stopped (and the work dir gone) after. If the
    bench is SIGKILLed, its daemons and hub get SIGTERM instead of staying orphans."""
    with workdir(keep) as root:
        # No model is asked by ping or report; per-peer rate limits far above what is sent.
        fed = build(root, (A, B), llm_url=UNUSED_LLM_URL, die_with_parent=True)
        for member in fed.members.values():
            edit(member.config, "rate_per_minute = 120", f"rate_per_minute = {RATE_PER_MINUTE}")
            edit(member.config, "rate_burst = 30", f"rate_burst = {RATE_BURST}")
        print(f"hub on 127.0.0.1:{fed.hub.port} (leafnodes {fed.leaf_port}); "
              f"{A} leaf {fed[A].port}, {B} leaf {fed[B].port}", flush=True)
        t0 = time.monotonic()
        try:
            fed.start()
            print(f"daemons ready in {time.monotonic() - t0:.1f} s", flush=True)
            yield fed
        finally:
            codes = fed.stop()
            if set(codes) - {0}:
                print(f"bench.federation: the daemons exited with {codes}", file=sys.stderr)


TARGETS = {"fed_rr": 0.5}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.federation", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small N: a smoke run (the N options below still win)")
    parser.add_argument("--raw", type=int, help=f"raw round trips (default {DEFAULT.raw})")
    parser.add_argument("--ping", type=int,
                        help=f"check_peer_alive round trips (default {DEFAULT.ping})")
    parser.add_argument("--wire", type=int,
                        help=f"wire-level signed pings (default {DEFAULT.wire})")
    parser.add_argument("--report", type=int,
                        help=f"durable reports (default {DEFAULT.report})")
    parser.add_argument("--warmup", type=int,
                        help=f"untimed calls before each figure (default {DEFAULT.warmup})")
    parser.add_argument("--rounds", type=int,
                        help="turns in which the round-trip figures alternate "
                             f"(default {DEFAULT.rounds})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (configs, daemon and hub logs)")
    args = parser.parse_args(argv)
    base = QUICK if args.quick else DEFAULT
    sizes = Sizes(**{f.name: getattr(args, f.name) if getattr(args, f.name) is not None
                     else getattr(base, f.name) for f in dataclasses.fields(Sizes)})
    if min(sizes.raw, sizes.ping, sizes.wire, sizes.report) < sizes.rounds or min(
            sizes.warmup, sizes.rounds - 1) < 0:
        parser.error("every N must be at least --rounds, which must be at least 1 "
                     "(warm-up at least 0)")

    logs.configure("error")  # this process's clients; failures end the run as BenchError
    print(f"bench.federation: raw={sizes.raw} ping={sizes.ping} wire={sizes.wire} "
          f"report={sizes.report} warmup={sizes.warmup} rounds={sizes.rounds}, "
          "one call at a time", flush=True)
    results, code = run_federation(sizes, args.keep)
    if results is None:
        return code
    print("targets: " + ", ".join(f"{name} >= {t:.2f}" for name, t in TARGETS.items()))
    for name, value in results.ratios().items():
        print(f"ratio {name}: {value:.2f}")
    print(f"ceiling fed_rr: {results.fed_rr_ceiling():.2f} (raw nats-py's two legs, across "
          "the hub and on A's leaf, plus the 4 signs and 4 verifies of the check's envelopes "
          "and nothing else)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
