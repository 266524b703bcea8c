"""The ledger: payments appended through the ledger actor beside raw JetStream publishes
with the same headers on the same server, and `ledger verify`'s replay rate.

`python -m bench.ledger` starts, in a temporary directory, one `entityd run` daemon
(entity-a, on its own: its LEDGER stream on its own embedded nats-server), mints it
money with `entityd economy mint`, and measures:

1. ledger pay: `Pay` asked of the ledger actor with an EntityClient, as `entityctl pay`
   does (ctl -> ledger actor: sign, check against its books, append with
   Nats-Expected-Last-Subject-Sequence and Nats-Msg-Id, count it, emit its event),
   one at a time;
2. raw JetStream: nats-py `js.publish` of a payload as large as a transfer entry, with
   the same two headers (compare-and-set on the last PubAck's sequence), into a stream
   made like LEDGER on the same server, one at a time;
3. ledger balance: `BalanceGet` asked the same way: the ctl hop and one read of the
   stream finding nothing new, what a payment pays for before it appends;
3b. ledger ctl hop alone: `LedgerGet` with limit 0, which the actor refuses before it
   reads anything: the signed round trip bench -> daemon -> bench through the actor's
   mailbox, the floor under a payment (a payment adds its append's round trip to it);
   (1-3b alternate in rounds, so that drift on the machine hits them alike)
4. and 5. 1 and 2 with several in flight: callers asking Pay at once (the actor appends
   one after another to its one chain), and raw publishers each on its own subject;
6. read alone: the stream filled to `--entries` with valid chains of several accounts
   (signed here, their keys in the daemon's [peer_keys]), then read from the start by
   the actor's own reader (LedgerStream: batched direct gets) in this process, without
   verifying anything;
7. ledger verify: `LedgerVerify` asked and timed: entries replayed per second;
8. Ed25519 alone: the signatures of (up to SAMPLED of) those entries checked with
   PyNaCl in this process, on one thread and on a thread per core (libsodium runs
   without the GIL): the floor under verify, whatever else it checks;
9. checks alone: the same entries, their signatures already verified, checked as
   entries (`check_entry`: the envelope's fields, the entry's kind and form) and
   applied to fresh books (`Ledger.apply`: chain, balances), on one thread.

It prints each figure, then `ratio ledger_vs_js` (1/2), `ratio ledger_vs_js_conc`
(4/5) and `ratio ctl_hop_vs_js` (3b/2: what ledger_vs_js would be if a payment cost no
more than its ctl hop, with no append at all), and two ceilings: `ledger_vs_js`'s, and
`ledger verify`'s: every core busy with each entry's read from the stream (6, the CPU
of every process), its Ed25519 check (8) and its checks (9), the work verify does,
timed piece by piece, with nothing waiting on anything. Nothing is asserted about
timings.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import itertools
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path

import msgpack
import nats
from nacl.signing import SigningKey, VerifyKey
from nats.aio.client import Client
from nats.aio.msg import Msg

import protocol
from actors.ledger.messages import (
    Balance,
    BalanceGet,
    LedgerGet,
    LedgerReport,
    LedgerResult,
    LedgerVerify,
    Pay,
)
from actors.ledger.stream import STREAM, LedgerStream, stream_config
from bench.federation import Cpu, CpuMeter, Figure, _child_named, interleaved
from bench.harness import BIN, BenchError, DaemonProc, child_env, run_guarded
from bench.rig import MINT_KEY, READY, READY_TIMEOUT_S, STOP_TIMEOUT_S, edit, make_entity
from entityd import config as config_mod
from entityd import identity, localauth, logs
from entityd.client import EntityClient
from entityd.errors import RemoteError
from entityd.federated import FederationAccess
from entityd.transport import Transport, wait_closed
from protocol import Keyring
from protocol.ledger import (
    GENESIS,
    Ledger,
    LedgerKeys,
    Mint,
    Transfer,
    check_entry,
    entry_hash,
    seal_entry,
)

A, PAYEE = "entity-a", "entity-b"
LEDGER_ACTOR = protocol.subjects.LEDGER_ACTOR
RAW_STREAM = "BENCH-RAW"
RAW_SUBJECTS = "benchraw.>"
MINTED = 10**12  # to entity-a, far more than the bench pays
ACCOUNTS = 8  # the other chains the replay reads, beside entity-a's
LOAD_WINDOW = 512  # publishes in flight while the stream is filled
SAMPLED = 20_000  # entries whose Ed25519 check and other checks are timed alone (8, 9)
REPLY_TIMEOUT_S = 10.0
CORES = os.cpu_count() or 1
VERIFY_TIMEOUT_S = 900.0
PHASE_TIMEOUT_S = 600.0
UNUSED_LLM_URL = "http://127.0.0.1:9/v1"  # the scripted provider needs some URL; none asked


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Payments per figure, calls in flight for the concurrent ones, untimed warm-up calls
    before each, rounds in which the sequential figures alternate, and the entries the
    stream holds when it is verified."""

    pay: int
    raw: int
    conc: int
    in_flight: int
    warmup: int
    rounds: int
    entries: int


DEFAULT = Sizes(pay=1000, raw=1000, conc=1000, in_flight=16, warmup=50, rounds=5,
                entries=100_000)
QUICK = Sizes(pay=100, raw=100, conc=100, in_flight=8, warmup=10, rounds=2, entries=2_000)


# ---- the entity --------------------------------------------------------------------------


@dataclasses.dataclass
class Entity:
    """entity-a's daemon, its config, the mint key and the other accounts' keys."""

    config: Path
    daemon: DaemonProc
    mint_key: SigningKey
    others: dict[str, SigningKey]

    @property
    def url(self) -> str:
        cfg = config_mod.load(self.config)
        return f"nats://{localauth.read(cfg.data_dir)}@127.0.0.1:{cfg.nats.port}"


@contextmanager
def running_entity(keep: bool) -> Iterator[Entity]:
    """entity-a started on its own and minted into; stopped (and the directory gone) after.
    If the bench is SIGKILLed, its daemon gets SIGTERM instead of staying an orphan."""
    root = Path(tempfile.mkdtemp(prefix="bench-ledger-"))
    try:
        mint_key = SigningKey.generate()
        identity.write_key(root / MINT_KEY, mint_key)
        others = {f"bench-{i}": SigningKey.generate() for i in range(1, ACCOUNTS + 1)}
        config = make_entity(root, A)
        pinned = "".join(f'{name} = "{bytes(key.verify_key).hex()}"\n'
                         for name, key in others.items())
        edit(config, "\n[peer_keys]\n", f"\n[peer_keys]\n{pinned}")
        edit(config, "[mint_keys]\n",
             f'[mint_keys]\ntreasury = "{bytes(mint_key.verify_key).hex()}"\n')
        edit(config, 'provider = "moonshot"', 'provider = "scripted"')
        edit(config, 'base_url = ""', f'base_url = "{UNUSED_LLM_URL}"')
        daemon = DaemonProc(config, root / f"{A}.log", die_with_parent=True)
        t0 = time.monotonic()
        daemon.start()
        try:
            daemon.wait_log(READY, READY_TIMEOUT_S)
            print(f"{A} ready in {time.monotonic() - t0:.1f} s", flush=True)
            minted = subprocess.run(
                [str(BIN / "entityd"), "economy", "mint", A, str(MINTED), "--config",
                 str(config), "--key", str(root / MINT_KEY)],
                capture_output=True, text=True, timeout=60, env=child_env())
            if minted.returncode != 0:
                raise BenchError(f"entityd economy mint exited {minted.returncode}: "
                                 f"{minted.stdout}{minted.stderr}")
            yield Entity(config, daemon, mint_key, others)
        finally:
            daemon.signal_stop()
            code = daemon.wait_stopped(STOP_TIMEOUT_S)
            if code != 0:
                print(f"bench.ledger: {A} exited with {code}: {daemon.log()[-2000:]}",
                      file=sys.stderr)
    finally:
        if keep:
            print(f"bench.ledger: kept {root} (config, daemon log, data)", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


class ProcessCpu(CpuMeter):
    """CpuMeter over the bench, the daemon and its nats-server."""

    def __init__(self, entity: Entity) -> None:
        self.pids = {"bench": os.getpid()}
        proc = entity.daemon.proc
        if proc is not None:
            self.pids["daemon"] = proc.pid
            server = _child_named(proc.pid, "nats-server")
            if server is not None:
                self.pids["nats-server"] = server


# ---- what is measured --------------------------------------------------------------------


class LedgerPay:
    """entityctl pay, on one open client: the ledger actor appends a transfer of 1."""

    def __init__(self, client: EntityClient) -> None:
        self.client = client

    async def call(self, i: int) -> None:
        result = await self.client.ask(LEDGER_ACTOR, Pay(PAYEE, 1, "bench"), REPLY_TIMEOUT_S)
        if not isinstance(result, LedgerResult) or result.code != protocol.reasons.DONE:
            raise BenchError(f"pay answered {result!r}")


class LedgerBalance:
    """entityctl balance: the ctl hop and one read of the stream (nothing new there)."""

    def __init__(self, client: EntityClient) -> None:
        self.client = client

    async def call(self, i: int) -> None:
        result = await self.client.ask(LEDGER_ACTOR, BalanceGet(), REPLY_TIMEOUT_S)
        if not isinstance(result, Balance):
            raise BenchError(f"balance answered {result!r}")


class LedgerHop:
    """The ctl hop alone, through the ledger actor's mailbox: `LedgerGet` with limit 0,
    which the actor refuses (bad_request) before it reads anything. What a payment costs
    before the actor does any work of its own."""

    def __init__(self, client: EntityClient) -> None:
        self.client = client

    async def call(self, i: int) -> None:
        try:
            result = await self.client.ask(LEDGER_ACTOR, LedgerGet("", 0), REPLY_TIMEOUT_S)
        except RemoteError as refused:
            if refused.code == protocol.reasons.BAD_REQUEST:
                return
            raise
        raise BenchError(f"ledger_get with limit 0 answered {result!r}")


class RawAppend:
    """js.publish with the ledger's two headers on its own subject: compare-and-set on
    the sequence of its own last PubAck, and a fresh Nats-Msg-Id."""

    def __init__(self, nc: Client, subject: str, payload: bytes) -> None:
        self.js = nc.jetstream()
        self.subject = subject
        self.payload = payload
        self.last = 0

    async def call(self, i: int) -> None:
        ack = await self.js.publish(
            self.subject, self.payload, timeout=REPLY_TIMEOUT_S,
            headers={"Nats-Expected-Last-Subject-Sequence": str(self.last),
                     "Nats-Msg-Id": os.urandom(16).hex()})
        if ack.stream != RAW_STREAM or ack.duplicate:
            raise BenchError(f"the raw publish got {ack!r}")
        self.last = ack.seq


class RawRequest:
    """nats-py request/reply, no envelope: to a responder on a second connection of this
    process that answers each request with its bytes. What a ctl hop would cost if it
    signed and verified nothing and the daemon did no work: the floor under any hop."""

    SUBJECT = "benchecho.rr"  # outside the raw stream's subjects: no PubAck answers it

    def __init__(self, nc: Client, responder: Client, payload: bytes) -> None:
        self.nc = nc
        self.responder = responder
        self.payload = payload

    async def open(self) -> None:
        async def echo(msg: Msg) -> None:
            await msg.respond(msg.data)

        await self.responder.subscribe(self.SUBJECT, cb=echo)
        await self.responder.flush()

    async def call(self, i: int) -> None:
        reply = await self.nc.request(self.SUBJECT, self.payload, timeout=REPLY_TIMEOUT_S)
        if reply.data != self.payload:
            raise BenchError("the raw echo answered other bytes")


@dataclasses.dataclass
class Burst:
    """n calls made by `in_flight` callers at once; from the first to the last answer."""

    name: str
    n: int
    in_flight: int
    seconds: float = 0.0
    cpu: Cpu = dataclasses.field(default_factory=dict)

    async def run(self, calls: list[Callable[[int], Awaitable[None]]],
                  meter: CpuMeter) -> None:
        """`calls[k]` is caller k's call; each makes its share of n, one at a time."""
        async def caller(k: int) -> None:
            for i in range(k, self.n, self.in_flight):
                await calls[k](i)

        before = meter.sample()
        start = time.perf_counter()
        async with asyncio.timeout(PHASE_TIMEOUT_S), asyncio.TaskGroup() as tg:
            for k in range(self.in_flight):
                tg.create_task(caller(k))
        self.seconds = time.perf_counter() - start
        self.cpu = meter.since(before, meter.sample())

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def lines(self) -> list[str]:
        return [f"{self.name:<34} {self.rate:>8,.0f} msg/s  (N={self.n}, {self.in_flight} in "
                f"flight, {self.seconds:.2f} s)",
                CpuMeter.line(self.cpu, self.n, self.seconds)]


@dataclasses.dataclass(frozen=True)
class Replay:
    name: str
    entries: int
    seconds: float
    cpu: Cpu
    chains: int = 0

    @property
    def rate(self) -> float:
        return self.entries / self.seconds

    @property
    def cpu_per_entry(self) -> float:
        """CPU seconds per entry, every process measured together."""
        return sum(u + s for u, s in self.cpu.values()) / self.entries

    def lines(self) -> list[str]:
        where = f" on {self.chains} chains" if self.chains else ""
        return [f"{self.name:<34} {self.rate:>8,.0f} entries/s  ({self.entries:,} "
                f"entries{where} in {self.seconds:.2f} s)",
                CpuMeter.line(self.cpu, self.entries, self.seconds).replace(
                    "per call", "per entry")]


async def read_alone(nc: Client, key: SigningKey, meter: CpuMeter) -> Replay:
    """Every entry of the stream read as the ledger actor reads it, verifying nothing."""
    stream = LedgerStream(FederationAccess(Transport(nc, entity=A, key=key,
                                                     keyring=Keyring())),
                          domain="", timeout=REPLY_TIMEOUT_S)
    await stream.start(create=False)
    before = meter.sample()
    start = time.perf_counter()
    after = read = 0
    try:
        while batch := await stream.read(after):
            read += len(batch)
            after = batch[-1].seq
    finally:
        await stream.stop()
    return Replay("read alone (LedgerStream.read)", read, time.perf_counter() - start,
                  meter.since(before, meter.sample()))


@dataclasses.dataclass(frozen=True)
class Results:
    pay: Figure
    raw: Figure
    pay_conc: Burst
    raw_conc: Burst
    replay: Replay
    hop: Figure
    raw_rr: Figure
    reading: Replay
    signatures: Replay  # Ed25519 alone, one thread
    checks: Replay  # check_entry and Ledger.apply alone

    def verify_ceiling(self) -> float:
        """Entries/s `ledger verify` could reach with every core busy with its work and
        nothing waiting: each entry's read from the stream (the CPU of every process on
        the read: this one, nats-server), signature check and other checks."""
        return CORES / sum(piece.cpu_per_entry
                           for piece in (self.reading, self.signatures, self.checks))

    def ratios(self) -> dict[str, float]:
        return {"ledger_vs_js": self.pay.rate / self.raw.rate,
                "ledger_vs_js_conc": self.pay_conc.rate / self.raw_conc.rate,
                "ctl_hop_vs_js": self.hop.rate / self.raw.rate}

    def ceiling(self) -> float:
        """The best `ledger_vs_js` could be if a payment's hop from the caller to the
        daemon and back cost no more than a raw, unsigned request/reply on the same
        server and its append no more than the raw one: raw append / (raw rr + raw
        append). A payment needs both, one after the other."""
        append, hop = 1 / self.raw.rate, 1 / self.raw_rr.rate
        return append / (hop + append)


def pay_request_wire(key: SigningKey) -> bytes:
    """A Pay as the bench's EntityClient seals it to the ledger actor."""
    wire, _ = protocol.seal(key, src=f"{A}/ctl", dst=f"{A}/{LEDGER_ACTOR}",
                            subj=protocol.subjects.local(A, LEDGER_ACTOR, "pay"),
                            message=Pay(PAYEE, 1, "bench"))
    return wire


def transfer_size(key: SigningKey) -> int:
    """The bytes of a transfer entry as the actor appends it (PAYEE, 1, memo "bench")."""
    record = Transfer(seq=2, prev=bytes(32), to=PAYEE, amount=1, memo="bench")
    return len(seal_entry(key, A, record, entry_id=protocol.new_id(), ts=protocol.now_ms()))


def chains(others: dict[str, SigningKey], mint_key: SigningKey, n: int) -> Iterator[
        tuple[str, bytes]]:
    """n entries (subject, wire) on the chains of `others`: a mint to each, then transfers
    of 1 from each to the next in turn, each chain linked by its entries' hashes."""
    names = list(others)
    heads = dict.fromkeys(names, (0, GENESIS))
    ts = protocol.now_ms()
    for i in range(n):
        name = names[i % len(names)]
        seq, prev = heads[name]
        if seq == 0:
            key: SigningKey = mint_key
            record: Transfer | Mint = Mint(seq=1, prev=prev, account=name, amount=MINTED)
        else:
            key = others[name]
            record = Transfer(seq=seq + 1, prev=prev, to=names[(i + 1) % len(names)],
                              amount=1)
        wire = seal_entry(key, name, record, entry_id=protocol.new_id(), ts=ts)
        heads[name] = (seq + 1, entry_hash(msgpack.unpackb(wire)[2]))
        yield protocol.subjects.ledger(name), wire


async def fill(nc: Client, entity: Entity, total: int,
               sample: list[tuple[str, bytes]]) -> int:
    """Entries of the other accounts appended until the stream holds `total`; how many.
    The first SAMPLED of them are kept in `sample`."""
    js = nc.jetstream(timeout=REPLY_TIMEOUT_S)
    have = (await js.stream_info(STREAM)).state.messages
    wanted = max(0, total - have)
    entries = kept(chains(entity.others, entity.mint_key, wanted), sample)
    for subject, wire in itertools.islice(entries, 1):
        await js.publish(subject, wire)  # alone: nats-py's first request sets up its inbox
    pending: list[asyncio.Task[object]] = []
    async with asyncio.TaskGroup() as tg:
        for subject, wire in entries:  # in order: each publish is written before it waits
            pending.append(tg.create_task(js.publish(subject, wire)))
            if len(pending) >= LOAD_WINDOW:
                await asyncio.gather(*pending)
                pending.clear()
    held = (await js.stream_info(STREAM)).state.messages
    if held != total and wanted:
        raise BenchError(f"LEDGER holds {held} entries, not {total}")
    return wanted


def kept(entries: Iterator[tuple[str, bytes]], sample: list[tuple[str, bytes]]
         ) -> Iterator[tuple[str, bytes]]:
    for entry in entries:
        if len(sample) < SAMPLED:
            sample.append(entry)
        yield entry


def signatures_alone(entity: Entity, sample: list[tuple[str, bytes]], threads: int
                     ) -> Replay:
    """The Ed25519 checks of the sampled entries alone (PyNaCl, as the ledger actor makes
    them, the body framed by the envelope's domain), split over `threads` threads."""
    keys = {bytes(key.verify_key): key.verify_key
            for key in [entity.mint_key, *entity.others.values()]}
    signed = []
    for _, wire in sample:
        _, kid, body, sig = msgpack.unpackb(wire)
        signed.append((keys[kid], protocol.envelope.DOMAIN + body, sig))

    def check(part: list[tuple[VerifyKey, bytes, bytes]]) -> None:
        for key, message, signature in part:
            key.verify(message, signature)

    parts = [signed[i::threads] for i in range(threads)]
    cpu = time.process_time()
    start = time.perf_counter()
    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(check, parts))
    seconds = time.perf_counter() - start
    used = time.process_time() - cpu
    name = f"Ed25519 alone, {threads} thread{'s' if threads > 1 else ''}"
    return Replay(name, len(signed), seconds, {"bench": (used, 0.0)})


def checks_alone(entity: Entity, sample: list[tuple[str, bytes]]) -> Replay:
    """The sampled entries (a prefix of every bench chain), their signatures verified
    beforehand, checked as entries and applied to fresh books, on this thread."""
    keys = LedgerKeys({name: bytes(key.verify_key) for name, key in entity.others.items()},
                      {"treasury": bytes(entity.mint_key.verify_key)})
    verified = [(protocol.verify_signature(wire, subject=subject, keyring=keys.keyring),
                 subject) for subject, wire in sample]
    books = Ledger(keys)
    cpu = time.process_time()
    start = time.perf_counter()
    for one, subject in verified:
        books.apply(check_entry(one, subject, keys))
    seconds = time.perf_counter() - start
    return Replay("checks alone (check_entry, apply)", len(verified), seconds,
                  {"bench": (time.process_time() - cpu, 0.0)})


async def measure(entity: Entity, sizes: Sizes) -> Results:
    cfg = config_mod.load(entity.config)
    key = identity.read_key(identity.key_path(cfg.data_dir))
    payload = b"x" * transfer_size(key)
    meter = ProcessCpu(entity)
    async with AsyncExitStack() as stack:
        client = await stack.enter_async_context(EntityClient(cfg))
        nc = await nats.connect(entity.url, name="bench-ledger-raw")
        stack.push_async_callback(wait_closed, nc, 5.0)
        await nc.jetstream().add_stream(dataclasses.replace(
            stream_config(), name=RAW_STREAM, subjects=[RAW_SUBJECTS]))

        responder = await nats.connect(entity.url, name="bench-ledger-echo")
        stack.push_async_callback(wait_closed, responder, 5.0)
        raw_rr = RawRequest(nc, responder, b"x" * len(pay_request_wire(key)))
        await raw_rr.open()

        pay, raw = LedgerPay(client), RawAppend(nc, "benchraw.seq", payload)
        figures = [Figure("ledger pay (ledger actor)", pay.call, sizes.pay),
                   Figure("raw JetStream publish, CAS", raw.call, sizes.raw),
                   Figure("ledger balance (ctl hop, a read)", LedgerBalance(client).call,
                          sizes.pay),
                   Figure("ledger ctl hop alone (refused)", LedgerHop(client).call,
                          sizes.pay),
                   Figure("raw nats-py request/reply", raw_rr.call, sizes.raw)]
        await interleaved(figures, sizes.rounds, sizes.warmup, meter)
        for figure in figures:
            print("\n".join(figure.lines()), flush=True)

        k = sizes.in_flight
        pay_conc = Burst(f"ledger pay, {k} in flight", sizes.conc, k)
        await pay_conc.run([pay.call] * k, meter)
        print("\n".join(pay_conc.lines()), flush=True)
        raws = [RawAppend(nc, f"benchraw.conc.{i}", payload) for i in range(k)]
        raw_conc = Burst(f"raw publish, {k} subjects at once", sizes.conc, k)
        await raw_conc.run([r.call for r in raws], meter)
        print("\n".join(raw_conc.lines()), flush=True)

        t0 = time.perf_counter()
        sample: list[tuple[str, bytes]] = []
        added = await fill(nc, entity, sizes.entries, sample)
        print(f"  LEDGER filled to {sizes.entries:,} entries ({added:,} signed and appended "
              f"in {time.perf_counter() - t0:.1f} s)", flush=True)
        reading = await read_alone(nc, key, meter)
        print("\n".join(reading.lines()), flush=True)
        before = meter.sample()
        start = time.perf_counter()
        report = await client.ask(LEDGER_ACTOR, LedgerVerify(), VERIFY_TIMEOUT_S)
        seconds = time.perf_counter() - start
        if not isinstance(report, LedgerReport) or not report.ok or (
                report.entries != sizes.entries):
            raise BenchError(f"ledger verify answered {report!r}")
        replay = Replay("ledger verify", report.entries, seconds,
                        meter.since(before, meter.sample()), report.chains)
        print("\n".join(replay.lines()), flush=True)
        alone = [signatures_alone(entity, sample, n) for n in sorted({1, CORES})]
        checks = checks_alone(entity, sample)
        for piece in [*alone, checks]:
            print("\n".join(piece.lines()), flush=True)
    return Results(figures[0], figures[1], pay_conc, raw_conc, replay, figures[3],
                   figures[4], reading, alone[0], checks)


TARGETS = {"ledger_vs_js": 0.5}
REPLAY_TARGET = 20_000  # entries/s at 100,000 entries


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.ledger", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small N: a smoke run (the N options below still win)")
    for name, text in (("pay", "payments through the ledger actor, one at a time"),
                       ("raw", "raw publishes, one at a time"),
                       ("conc", "payments and raw publishes with several in flight"),
                       ("in-flight", "callers at once for the concurrent figures"),
                       ("warmup", "untimed calls before each sequential figure"),
                       ("rounds", "turns in which the sequential figures alternate"),
                       ("entries", "entries in the stream when it is verified")):
        parser.add_argument(f"--{name}", type=int,
                            help=f"{text} (default {getattr(DEFAULT, name.replace('-', '_'))})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (config, daemon log, data)")
    args = parser.parse_args(argv)
    given = {f.name: value for f in dataclasses.fields(Sizes)
             if (value := getattr(args, f.name)) is not None}
    sizes = dataclasses.replace(QUICK if args.quick else DEFAULT, **given)
    if min(sizes.pay, sizes.raw) < sizes.rounds or min(sizes.conc, sizes.in_flight,
                                                        sizes.rounds) < 1 or sizes.warmup < 0:
        parser.error("every N must be at least 1, --pay and --raw at least --rounds")

    logs.configure("error")  # this process's clients; failures end the run as BenchError
    print(f"bench.ledger: pay={sizes.pay} raw={sizes.raw} conc={sizes.conc} "
          f"in_flight={sizes.in_flight} warmup={sizes.warmup} rounds={sizes.rounds} "
          f"entries={sizes.entries}", flush=True)
    results, code = run_guarded("bench.ledger", lambda: running_entity(args.keep),
                                lambda entity: measure(entity, sizes))
    if results is None:
        return code
    print("targets: " + ", ".join(f"{name} >= {t:.2f}" for name, t in TARGETS.items())
          + f", ledger verify >= {REPLAY_TARGET:,} entries/s at 100,000 entries")
    for name, value in results.ratios().items():
        print(f"ratio {name}: {value:.2f}")
    print(f"ceiling ledger_vs_js: {results.ceiling():.2f} (an unsigned hop that cost only "
          "its raw request/reply, then the raw append)")
    print(f"ceiling ledger verify: {results.verify_ceiling():,.0f} entries/s ({CORES} "
          "cores busy with each entry's read, Ed25519 check and checks, nothing waiting)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
