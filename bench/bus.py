"""Bus throughput: raw nats-py beside entityd's signed envelopes, on one nats-server.

`python -m bench.bus` starts its own nats-server on a free port, measures request/reply
(one at a time and 256 in flight) and one-way publish, first with plain nats-py and then
through a Transport and a Runtime serving an echo actor, measures the Ed25519
sign+verify rate alone, and prints each figure and the ratios between them. Then the
request/reply figures again with the responders in a second process (as entityd and
entityctl are two), raw and enveloped alike: `ratio rr_seq_2p` and `ratio rr_conc_2p`.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable
from contextlib import AsyncExitStack

import msgpack
import nats
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg

import protocol
from bench.harness import BenchError, run_with_nats
from entityd import bus, logs, loop
from entityd.actor import Actor
from entityd.runtime import Runtime
from entityd.transport import Transport, wait_closed
from protocol import Envelope, Keyring

ENTITY = "bench"
ECHO_ADDRESS = f"{ENTITY}/echo"
CLIENT_ADDRESS = f"{ENTITY}/client"
IN_FLIGHT = 256
REPLY_TIMEOUT_S = 10.0
PHASE_TIMEOUT_S = 120.0

RAW_RR_SUBJECT = "bench.raw.rr"
RAW_ONEWAY_SUBJECT = "bench.raw.oneway"

TARGETS = {"rr_seq": 0.6, "rr_conc": 0.25, "oneway_vs_crypto": 0.9, "rr_seq_2p": 0.6,
           "rr_conc_2p": 0.25}
SEED_ENV = "BENCH_BUS_SEED"  # the echo process's signing key (hex), for --serve


@protocol.kind("bench_echo")
@dataclasses.dataclass(frozen=True, slots=True)
class BenchEcho:
    """What the bench sends; the echo actor answers an ask with the same record."""

    n: int


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Messages per measurement (and per warm-up, which is not timed)."""

    crypto: int
    raw_rr_seq: int
    raw_rr_conc: int
    raw_oneway: int
    env_rr_seq: int
    env_rr_conc: int
    env_oneway: int
    warmup: int


# Default sizes take about 5 s per measurement on a 2-core machine; --quick about 0.3 s.
DEFAULT = Sizes(
    crypto=40_000,
    raw_rr_seq=30_000,
    raw_rr_conc=150_000,
    raw_oneway=600_000,
    env_rr_seq=8_000,
    env_rr_conc=20_000,
    env_oneway=30_000,
    warmup=1_000,
)
QUICK = Sizes(
    crypto=3_000,
    raw_rr_seq=2_000,
    raw_rr_conc=8_000,
    raw_oneway=30_000,
    env_rr_seq=500,
    env_rr_conc=1_500,
    env_oneway=2_500,
    warmup=200,
)


@dataclasses.dataclass(frozen=True)
class Figure:
    name: str
    n: int
    seconds: float
    unit: str = "msg/s"

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def line(self) -> str:
        rate = f"{self.rate:>11,.0f} {self.unit:<7}"
        return f"{self.name:<26} {rate} (N={self.n}, {self.seconds:.3f} s)"


def report(figure: Figure) -> Figure:
    print(figure.line(), flush=True)
    return figure


async def timed(name: str, n: int, run: Awaitable[float]) -> Figure:
    return report(Figure(name, n, await run))


# ---- helpers -------------------------------------------------------------------------


async def drive(call: Callable[[int], Awaitable[None]], n: int, in_flight: int) -> float:
    """Run `call(i)` for i in range(n) with `in_flight` callers at once; the seconds taken."""
    counter = iter(range(n))

    async def caller() -> None:
        for i in counter:
            await call(i)

    start = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        if in_flight == 1:
            await caller()
        else:
            async with asyncio.TaskGroup() as tg:
                for _ in range(in_flight):
                    tg.create_task(caller())
    return time.perf_counter() - start


class Tally:
    """Counts messages a receiver handled; `done` is set at the target."""

    def __init__(self) -> None:
        self.seen = 0
        self.target = 0
        self.done = asyncio.Event()
        self._resume_at = 0
        self._resume = asyncio.Event()

    def expect(self, n: int) -> None:
        self.seen = 0
        self.target = n
        if n:
            self.done.clear()
        else:
            self.done.set()

    def count(self) -> None:
        self.seen += 1
        if self.seen == self._resume_at:
            self._resume.set()
        if self.seen == self.target:
            self.done.set()

    async def reached(self, seen: int) -> None:
        if self.seen >= seen:
            return
        self._resume_at = seen
        self._resume.clear()
        await self._resume.wait()


async def send_paced(
    send: Callable[[int], Awaitable[None]], flush: Callable[[], Awaitable[None]],
    tally: Tally, n: int, window: int,
) -> float:
    """Send n one-way messages, never more than `window` ahead of what the receiver
    handled, and return the seconds from the first send to the last one handled.

    One-way messages carry no backpressure to the sender: one that outruns the receiver
    fills its bounded mailbox, and what the mailbox cannot take within a short wait is
    refused. The window (half the mailbox) lets the bench measure the sustained rate
    instead of the size of those buffers.
    """
    tally.expect(n)
    start = time.perf_counter()
    async with asyncio.timeout(PHASE_TIMEOUT_S):
        for i in range(n):
            if i - tally.seen >= window:
                await flush()
                await tally.reached(i - window // 2)
            await send(i)
        await flush()
        await tally.done.wait()
    return time.perf_counter() - start


def sample_wire() -> bytes:
    """A typical bench envelope, to size raw payloads and the crypto input alike."""
    wire, _ = protocol.seal(
        SigningKey.generate(),
        src=CLIENT_ADDRESS,
        dst=ECHO_ADDRESS,
        subj=protocol.subjects.local(ENTITY, "echo", "bench_echo"),
        message=BenchEcho(123_456),
    )
    return wire


# ---- crypto alone --------------------------------------------------------------------


def crypto_pairs(n: int) -> Figure:
    """Ed25519 sign then verify of one envelope-sized message, n times on this thread."""
    key = SigningKey.generate()
    verify_key = key.verify_key
    _, _, body, _ = msgpack.unpackb(sample_wire())
    signed = protocol.DOMAIN + body
    for _ in range(min(n, 1_000)):
        verify_key.verify(signed, key.sign(signed).signature)
    start = time.perf_counter()
    for _ in range(n):
        verify_key.verify(signed, key.sign(signed).signature)
    return Figure("crypto sign+verify", n, time.perf_counter() - start, "pairs/s")


def crypto_signs(n: int) -> Figure:
    """Ed25519 sign alone of one envelope-sized message, n times on this thread."""
    key = SigningKey.generate()
    _, _, body, _ = msgpack.unpackb(sample_wire())
    signed = protocol.DOMAIN + body
    for _ in range(min(n, 1_000)):
        key.sign(signed)
    start = time.perf_counter()
    for _ in range(n):
        key.sign(signed)
    return Figure("crypto sign", n, time.perf_counter() - start, "signs/s")


# ---- raw nats-py ---------------------------------------------------------------------


class Raw:
    """Plain nats-py: a responder that echoes with msg.respond, and a counting subscriber."""

    def __init__(self, client: Client, server: Client, payload: bytes) -> None:
        self.client = client
        self.server = server
        self.payload = payload
        self.tally = Tally()

    async def open(self) -> None:
        await self.server.subscribe(RAW_RR_SUBJECT, cb=self._respond)
        await self.server.subscribe(
            RAW_ONEWAY_SUBJECT,
            cb=self._receive,
            pending_msgs_limit=-1,
            pending_bytes_limit=-1,
        )
        await self.server.flush()

    async def _respond(self, msg: Msg) -> None:
        await msg.respond(msg.data)

    async def _receive(self, msg: Msg) -> None:
        self.tally.count()

    async def _ask(self, i: int) -> None:
        reply = await self.client.request(RAW_RR_SUBJECT, self.payload, timeout=REPLY_TIMEOUT_S)
        if reply.data != self.payload:
            raise BenchError("the raw responder answered with other bytes")

    async def request_reply(self, n: int, in_flight: int, warmup: int) -> float:
        await drive(self._ask, warmup, in_flight)
        return await drive(self._ask, n, in_flight)

    async def oneway(self, n: int, warmup: int, window: int) -> float:
        await self._oneway(warmup, window)
        return await self._oneway(n, window)

    async def _oneway(self, n: int, window: int) -> float:
        try:
            return await send_paced(self._publish, self.client.flush, self.tally, n, window)
        except TimeoutError:
            raise BenchError(f"raw subscriber got {self.tally.seen} of {n} messages") from None

    async def _publish(self, i: int) -> None:
        await self.client.publish(RAW_ONEWAY_SUBJECT, self.payload)


# ---- entityd -------------------------------------------------------------------------


class EchoActor(Actor):
    """Answers an ask with the record it got; counts every message for the one-way test."""

    name = "echo"

    def __init__(self, tally: Tally) -> None:
        self.tally = tally

    async def handle(self, envelope: Envelope) -> object | None:
        message = envelope.message
        if not isinstance(message, BenchEcho):
            raise TypeError(f"echo got a {envelope.typ}")
        self.tally.count()
        return message


class Enveloped:
    """The same patterns through entityd: Transport.ask and .tell to a supervised actor."""

    def __init__(self, client: Transport, runtime: Runtime, tally: Tally) -> None:
        self.client = client
        self.runtime = runtime
        self.tally = tally

    async def _ask(self, i: int) -> None:
        reply = await self.client.ask(
            CLIENT_ADDRESS, ECHO_ADDRESS, BenchEcho(i), timeout=REPLY_TIMEOUT_S
        )
        if reply.message != BenchEcho(i):
            raise BenchError(f"echo answered {reply.message!r} to {i}")

    async def request_reply(self, n: int, in_flight: int, warmup: int) -> float:
        await drive(self._ask, warmup, in_flight)
        return await drive(self._ask, n, in_flight)

    @property
    def window(self) -> int:
        return self.runtime.settings.queue_size // 2

    async def oneway(self, n: int, warmup: int) -> float:
        await self._oneway(warmup)
        return await self._oneway(n)

    async def _oneway(self, n: int) -> float:
        rejected_before = sum(self.runtime.rejected.values())
        try:
            seconds = await send_paced(self._tell, self.client.nc.flush, self.tally, n, self.window)
        except TimeoutError:
            raise BenchError(f"the echo actor got {self.tally.seen} of {n} messages") from None
        rejected = sum(self.runtime.rejected.values()) - rejected_before
        if rejected:
            raise BenchError(f"the runtime refused {rejected} of {n} one-way messages")
        return seconds

    async def _tell(self, i: int) -> None:
        await self.client.tell(CLIENT_ADDRESS, ECHO_ADDRESS, BenchEcho(i))


# ---- the run -------------------------------------------------------------------------


@dataclasses.dataclass
class Results:
    raw_rr_seq: Figure
    env_rr_seq: Figure
    raw_rr_conc: Figure
    env_rr_conc: Figure
    raw_oneway: Figure
    crypto: Figure
    sign: Figure
    env_oneway: Figure
    two: TwoProcess | None = None

    def ratios(self) -> dict[str, float]:
        ratios = {
            "rr_seq": self.env_rr_seq.rate / self.raw_rr_seq.rate,
            "rr_conc": self.env_rr_conc.rate / self.raw_rr_conc.rate,
            "oneway_vs_crypto": self.env_oneway.rate / self.crypto.rate,
        }
        if self.two is not None:
            ratios["rr_seq_2p"] = self.two.env_rr_seq.rate / self.two.raw_rr_seq.rate
            ratios["rr_conc_2p"] = self.two.env_rr_conc.rate / self.two.raw_rr_conc.rate
        return ratios

    def ceilings(self) -> dict[str, float]:
        """The best each request/reply ratio could be if entityd added nothing to raw
        nats-py but the Ed25519 work a request and its reply need: raw / (raw + that),
        with the crypto of concurrent requests spread over every core at best. Across
        two processes that is two signs and two verifies (timed here as `crypto`); in
        one process, two signs (`sign`): a process does not verify again what it signed
        itself (protocol.envelope.SelfSigned)."""
        cores = os.cpu_count() or 1

        def ceiling(raw: Figure, floor: float, spread: int = 1) -> float:
            return (1 / raw.rate) / (1 / raw.rate + floor / spread)

        one, two = self.crypto_floors()
        found = {"rr_seq": ceiling(self.raw_rr_seq, one),
                 "rr_conc": ceiling(self.raw_rr_conc, one, cores)}
        if self.two is not None:
            found["rr_seq_2p"] = ceiling(self.two.raw_rr_seq, two)
            found["rr_conc_2p"] = ceiling(self.two.raw_rr_conc, two, cores)
        return found

    def crypto_floors(self) -> tuple[float, float]:
        """Seconds of Ed25519 per request and reply: in one process, across two."""
        return 2 / self.sign.rate, 2 / self.crypto.rate


@dataclasses.dataclass
class TwoProcess:
    raw_rr_seq: Figure
    env_rr_seq: Figure
    raw_rr_conc: Figure
    env_rr_conc: Figure


async def serve(url: str) -> None:
    """The responders of the two-process run, in this (child) process: the raw echo and a
    Runtime with the echo actor, on the key in $BENCH_BUS_SEED; until stdin closes."""
    key = SigningKey(bytes.fromhex(os.environ[SEED_ENV]))
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY, ENTITY)
    async with AsyncExitStack() as stack:
        raw_server = await nats.connect(url, name="bench-raw-server-2p")
        stack.push_async_callback(wait_closed, raw_server, 5.0)
        raw = Raw(raw_server, raw_server, b"")
        await raw.open()
        daemon_nc = await bus.connect(url, entity=ENTITY, client_name="bench-daemon-2p")
        stack.push_async_callback(wait_closed, daemon_nc, 5.0)
        runtime = Runtime(Transport(daemon_nc, entity=ENTITY, key=key, keyring=keyring))
        runtime.add(EchoActor.name, lambda: EchoActor(Tally()))
        async with asyncio.TaskGroup() as tg:
            await runtime.start(tg)
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
            await runtime.stop()


async def measure_two(url: str, sizes: Sizes) -> TwoProcess:
    """Request/reply with the responders in a second process, raw and enveloped."""
    key = SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY, ENTITY)
    child = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "bench.bus", "--serve", url, stdin=asyncio.subprocess.PIPE,
        stdout=asyncio.subprocess.PIPE, env={**os.environ, SEED_ENV: bytes(key).hex()})
    try:
        assert child.stdout is not None
        async with asyncio.timeout(30):
            if (await child.stdout.readline()).strip() != b"ready":
                raise BenchError("the echo process did not start")
        async with AsyncExitStack() as stack:
            raw_client = await nats.connect(url, name="bench-raw-client-2p")
            stack.push_async_callback(wait_closed, raw_client, 5.0)
            raw = Raw(raw_client, raw_client, b"x" * len(sample_wire()))
            client_nc = await bus.connect(url, entity=ENTITY, client_name="bench-client-2p",
                                          retry_forever=False)
            stack.push_async_callback(wait_closed, client_nc, 5.0)
            client = Transport(client_nc, entity=ENTITY, key=key, keyring=keyring)
            env = Enveloped(client, Runtime(client), Tally())
            w, k = sizes.warmup, IN_FLIGHT
            return TwoProcess(
                await timed("2p raw rr seq", sizes.raw_rr_seq,
                            raw.request_reply(sizes.raw_rr_seq, 1, w)),
                await timed("2p envelope rr seq", sizes.env_rr_seq,
                            env.request_reply(sizes.env_rr_seq, 1, w)),
                await timed(f"2p raw rr {k} in flight", sizes.raw_rr_conc,
                            raw.request_reply(sizes.raw_rr_conc, k, w)),
                await timed(f"2p envelope rr {k} in flight", sizes.env_rr_conc,
                            env.request_reply(sizes.env_rr_conc, k, w)),
            )
    finally:
        if child.stdin is not None:
            child.stdin.close()
        try:
            async with asyncio.timeout(10):
                await child.wait()
        except TimeoutError:
            child.kill()
            await child.wait()


async def measure(url: str, sizes: Sizes) -> Results:
    payload = b"x" * len(sample_wire())  # raw messages as large as an envelope
    key = SigningKey.generate()
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), ENTITY, ENTITY)
    tally = Tally()

    async with AsyncExitStack() as stack:
        raw_server = await nats.connect(url, name="bench-raw-server")
        stack.push_async_callback(wait_closed, raw_server, 5.0)
        raw_client = await nats.connect(url, name="bench-raw-client")
        stack.push_async_callback(wait_closed, raw_client, 5.0)
        raw = Raw(raw_client, raw_server, payload)
        await raw.open()

        # The daemon's connection, as entityd run makes it; the client's, as entityctl does.
        daemon_nc = await bus.connect(url, entity=ENTITY, client_name="bench-daemon")
        stack.push_async_callback(wait_closed, daemon_nc, 5.0)
        client_nc = await bus.connect(
            url, entity=ENTITY, client_name="bench-client", retry_forever=False
        )
        stack.push_async_callback(wait_closed, client_nc, 5.0)
        runtime = Runtime(Transport(daemon_nc, entity=ENTITY, key=key, keyring=keyring))
        runtime.add(EchoActor.name, lambda: EchoActor(tally))
        client = Transport(client_nc, entity=ENTITY, key=key, keyring=keyring)
        env = Enveloped(client, runtime, tally)

        async with asyncio.TaskGroup() as tg:
            await runtime.start(tg)
            try:
                # Raw and enveloped side by side, so drift on the machine hits both alike.
                w, k = sizes.warmup, IN_FLIGHT
                raw_rr_seq = await timed(
                    "raw rr seq", sizes.raw_rr_seq, raw.request_reply(sizes.raw_rr_seq, 1, w)
                )
                env_rr_seq = await timed(
                    "envelope rr seq", sizes.env_rr_seq, env.request_reply(sizes.env_rr_seq, 1, w)
                )
                raw_rr_conc = await timed(
                    f"raw rr {k} in flight",
                    sizes.raw_rr_conc,
                    raw.request_reply(sizes.raw_rr_conc, k, w),
                )
                env_rr_conc = await timed(
                    f"envelope rr {k} in flight",
                    sizes.env_rr_conc,
                    env.request_reply(sizes.env_rr_conc, k, w),
                )
                raw_oneway = await timed(
                    "raw one-way", sizes.raw_oneway, raw.oneway(sizes.raw_oneway, w, env.window)
                )
                # Next to the figure it is compared with; it blocks the loop, but nothing
                # is in flight then.
                crypto = report(crypto_pairs(sizes.crypto))
                sign = report(crypto_signs(sizes.crypto))
                env_oneway = await timed(
                    "envelope one-way", sizes.env_oneway, env.oneway(sizes.env_oneway, w)
                )
            finally:
                await runtime.stop()
    return Results(
        raw_rr_seq, env_rr_seq, raw_rr_conc, env_rr_conc, raw_oneway, crypto, sign,
        env_oneway
    )


async def run(url: str, sizes: Sizes) -> Results:
    """measure(), cancelled on SIGTERM so that every connection and actor is closed."""
    loop = asyncio.get_running_loop()
    task = asyncio.current_task()
    assert task is not None
    loop.add_signal_handler(signal.SIGTERM, task.cancel)
    try:
        results = await measure(url, sizes)
        results.two = await measure_two(url, sizes)
        return results
    finally:
        loop.remove_signal_handler(signal.SIGTERM)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.bus", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="small N: a smoke run of a few seconds"
    )
    parser.add_argument("--serve", metavar="URL", help=argparse.SUPPRESS)  # the 2p child
    args = parser.parse_args(argv)
    if args.serve:
        logs.configure("error")  # stdout carries the ready line
        loop.run(serve(args.serve))
        return 0
    sizes = QUICK if args.quick else DEFAULT
    logs.configure("error")  # rejections end the run as BenchError instead

    print(f"bench.bus: {'quick' if args.quick else 'default'} sizes, {IN_FLIGHT} in flight")
    results, code = run_with_nats("bench.bus", lambda url: run(url, sizes))
    if results is None:
        return code

    ratios = results.ratios()
    print("targets: " + ", ".join(f"{name} >= {t:.2f}" for name, t in TARGETS.items()))
    for name, value in ratios.items():
        print(f"ratio {name}: {value:.2f}")
    one, two = results.crypto_floors()
    print("ceilings (raw nats-py plus only the request's and reply's Ed25519, "
          f"{one * 1e6:.0f} us in one process, {two * 1e6:.0f} us across two; "
          f"concurrent: spread over {os.cpu_count()} cores): "
          + ", ".join(f"{name} {value:.2f}" for name, value in results.ceilings().items()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
