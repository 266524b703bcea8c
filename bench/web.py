"""The web page's activity stream: how late an event reaches the browser's SSE handler
beside a raw NATS subscriber in the same run, and how many events per second it keeps
delivering to several connected pages.

`python -m bench.web` starts, in a temporary directory, one `entityd run` daemon
(entity-a, its web page on: `[web] enabled`, a free loopback port), logs in with the
one-time link `entityctl web --json` prints, launches headless Chromium (Debian's, or
$ENTITYD_CHROMIUM) under Playwright, and publishes signed events itself: `Event`
envelopes sealed with the entity's own key on `fed.evt.entity-a.bench.tick`, over a
connection to the entity's embedded server logged in with its local token. Each carries
the wall-clock time it was made (`sent_ns`), its number and its run's name.

1. latency: one event every `--gap-ms` (10; the next no sooner than every listener this
   process waits for has the last), in `--rounds` turns of two passes:
   - pass "browser": a raw core NATS subscriber on `fed.evt.entity-a.>` in this process,
     and one page's `EventSource('/api/events?after=N')` handler (the time read first
     thing in the handler, on Chromium's clock set against the wall clock; the page
     keeps its times and is read after the pass, so no Playwright traffic runs during it);
   - pass "steps": the raw subscriber again, the same stream read in this process as the
     web actor reads it (`EventReader.follow`: an ordered push consumer; times when the
     message arrives and once it is verified), and `/api/events` read by a plain HTTP
     client in this process: the way to the browser, step by step, without the browser;
2. throughput: `--pages` pages (one browser context each: Chromium opens at most six
   connections to one origin per context), each with its EventSource, and `--events`
   events published with JetStream (PubAcks awaited, `--window` in flight) as fast as
   the stream takes them; the rate the slowest page received them at, and the raw
   subscriber's for reference. Every listener must get every event once, in order.

It prints each figure, `web_events_per_s` (the slowest page's rate) and `ratio
web_event_latency_vs_nats` (browser p50 / raw p50 of pass "browser"). Nothing is
asserted about timings.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import http.client
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import AsyncExitStack, contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import msgpack
import nats
from nacl.signing import SigningKey
from nats.aio.client import Client
from nats.aio.msg import Msg
from playwright.async_api import Browser, BrowserContext, Page, async_playwright

import protocol
from bench.federation import Cpu, CpuMeter, _child_named, _cpu_seconds
from bench.harness import BenchError, DaemonProc, run_guarded
from bench.rig import READY, READY_TIMEOUT_S, STOP_TIMEOUT_S, Member, edit, enable_web, make_entity
from entityd import EventReader, StoredEvent, identity, logs
from entityd import config as config_mod
from entityd.transport import wait_closed
from protocol import Event, Keyring, subjects

A = "entity-a"
ACTOR, TYPE = "bench", "tick"
SUBJECT = subjects.event(A, ACTOR, TYPE)
CHROMIUM_ENV = "ENTITYD_CHROMIUM"
UNUSED_LLM_URL = "http://127.0.0.1:9/v1"  # the scripted provider needs some URL; none asked
EVENT_TIMEOUT_S = 10.0  # for one event to reach every listener of a latency pass
DRAIN_TIMEOUT_S = 120.0  # for every page to have every event of the throughput run
REPLY_TIMEOUT_S = 10.0
SETTLE_WINDOW_S = 0.25
SETTLED_CPU = 0.05  # of a core: the browser at rest
SETTLE_TIMEOUT_S = 10.0
POLL_S = 0.05  # asking a page whether it has every event of a latency pass
DRAIN_POLL_S = 0.25  # the same while the pages are still receiving the throughput's

# The listener a page runs: the time is read first thing in the handler, on the
# performance clock (finer than Date.now's whole milliseconds; set against the wall
# clock by OFFSET_JS). Only this run's ticks count; each must come next in order. Nothing
# is sent back to this process while events flow (Playwright's traffic would be measured).
LISTEN_JS = """async ([after, run]) => {
  const b = window.bench = {run, times: [], count: 0, next: 0, bad: 0, last: 0};
  await new Promise((resolve, reject) => {
    const es = new EventSource(`/api/events?after=${after}`);
    b.es = es;
    es.addEventListener("evt", (m) => {
      const t = performance.timeOrigin + performance.now();
      const e = JSON.parse(m.data);
      if (e.actor !== "bench" || e.type !== "tick" || e.data.run !== b.run) return;
      if (e.data.n !== b.next) b.bad++;
      b.next = e.data.n + 1; b.count++; b.last = t;
      b.times.push([e.data.n, t]);
    });
    es.addEventListener("start", () => resolve(null));
    es.addEventListener("error", () => {
      if (es.readyState === EventSource.CLOSED) reject(new Error("/api/events refused"));
    });
  });
}"""
# performance.timeOrigin + now() minus the wall clock (Date.now, what time.time_ns reads),
# taken at the instants Date.now ticks over to the next millisecond: median of 15.
OFFSET_JS = """() => {
  const offsets = [];
  for (let i = 0; i < 15; i++) {
    const d = Date.now();
    let p, e;
    do { p = performance.timeOrigin + performance.now(); e = Date.now(); } while (e === d);
    offsets.push(p - e);
  }
  offsets.sort((x, y) => x - y);
  return offsets[7];
}"""
STATE_JS = "() => [window.bench.count, window.bench.last, window.bench.bad]"
CLOSE_JS = "() => { window.bench.es.close(); return window.bench.times; }"


@dataclasses.dataclass(frozen=True)
class Sizes:
    """Events per latency pass (each of the two), untimed ones before the first of each,
    rounds the two passes alternate in, milliseconds between their events; pages, events
    and PubAcks in flight for the throughput."""

    latency: int
    warmup: int
    rounds: int
    gap_ms: int
    pages: int
    events: int
    window: int


DEFAULT = Sizes(latency=1000, warmup=50, rounds=4, gap_ms=10, pages=10, events=5000, window=256)
QUICK = Sizes(latency=50, warmup=5, rounds=1, gap_ms=10, pages=2, events=200, window=64)
TARGET = 3.0  # web_event_latency_vs_nats at most


# ---- the entity and the browser ----------------------------------------------------------


@contextmanager
def running_entity(keep: bool) -> Iterator[Member]:
    """entity-a with its web page, started on its own; stopped (the directory gone) after.
    If the bench is SIGKILLed, its daemon gets SIGTERM instead of staying an orphan."""
    root = Path(tempfile.mkdtemp(prefix="bench-web-"))
    try:
        config = make_entity(root, A)
        enable_web(config)
        edit(config, 'provider = "moonshot"', 'provider = "scripted"')
        edit(config, 'base_url = ""', f'base_url = "{UNUSED_LLM_URL}"')
        daemon = DaemonProc(config, root / f"{A}.log", die_with_parent=True)
        member = Member(A, config, config_mod.load(config).nats.port, daemon)
        t0 = time.monotonic()
        member.start()
        try:
            daemon.wait_log(READY, READY_TIMEOUT_S)
            print(f"{A} ready in {time.monotonic() - t0:.1f} s", flush=True)
            yield member
        finally:
            daemon.signal_stop()
            code = daemon.wait_stopped(STOP_TIMEOUT_S)
            if code != 0:
                print(f"bench.web: {A} exited with {code}: {daemon.log()[-2000:]}",
                      file=sys.stderr)
    finally:
        if keep:
            print(f"bench.web: kept {root} (config, daemon log, data)", file=sys.stderr)
        else:
            shutil.rmtree(root, ignore_errors=True)


def _redeem(login: str) -> tuple[str, str]:
    where = urlsplit(login)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port,
                                      timeout=REPLY_TIMEOUT_S)
    try:
        conn.request("GET", f"{where.path}?{where.query}")
        response = conn.getresponse()
        response.read()
        cookie = response.getheader("set-cookie") or ""
    finally:
        conn.close()
    name, _, value = cookie.split(";", 1)[0].partition("=")
    if response.status != 303 or not value:
        raise BenchError(f"the login link answered {response.status} without a session")
    return name, value


async def log_in(member: Member) -> tuple[str, tuple[str, str]]:
    """The page's base URL and a session cookie (name, value), from `entityctl web`'s
    one-time link, fetched as a browser would."""
    link = await member.ctl_json("web")
    if not link.get("login"):
        raise BenchError(f"entityctl web gave no login link: {link}")
    return link["url"], await asyncio.to_thread(_redeem, link["login"])


def chromium_path() -> str:
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not path:
        raise BenchError("no chromium: install Debian's chromium (tests/run does as root) or "
                         f"set {CHROMIUM_ENV} to a Chromium binary")
    return path


class Pages:
    """Browser contexts, one page each, logged in and on the page's origin (its login
    form: a same-origin document that runs none of the page's own scripts)."""

    def __init__(self, browser: Browser, url: str, cookie: tuple[str, str]) -> None:
        self.browser = browser
        self.url = url
        self.cookie = cookie
        self.contexts: list[BrowserContext] = []
        self.pages: list[Page] = []

    async def open(self, n: int) -> list[Page]:
        while len(self.pages) < n:
            context = await self.browser.new_context()
            self.contexts.append(context)
            await context.add_cookies([{"name": self.cookie[0], "value": self.cookie[1],
                                        "url": self.url, "httpOnly": True,
                                        "sameSite": "Strict"}])
            page = await context.new_page()
            await page.goto(f"{self.url}login")
            self.pages.append(page)
        return self.pages[:n]

    async def close(self) -> None:
        for context in self.contexts:
            await context.close()


async def until_all(page: Page, count: int) -> None:
    """Until the page's listener has `count` events (it says nothing while they flow,
    so it is asked)."""
    try:
        async with asyncio.timeout(EVENT_TIMEOUT_S):
            while (await page.evaluate(STATE_JS))[0] < count:  # noqa: ASYNC110
                await asyncio.sleep(POLL_S)
    except TimeoutError:
        got = (await page.evaluate(STATE_JS))[0]
        raise BenchError(f"the page had {got} events of {count} after {EVENT_TIMEOUT_S} s "
                         "more") from None


async def drained(pages: list[Page], count: int, timeout: float) -> list[list[float]]:
    """Each page's [count, time of its last event, events out of order] once every page
    has `count`; asked rarely, one page at a time, so that the asking costs little beside
    what is measured."""
    states = []
    try:
        async with asyncio.timeout(timeout):
            for page in pages:
                while (state := await page.evaluate(STATE_JS))[0] < count:  # noqa: ASYNC110
                    await asyncio.sleep(DRAIN_POLL_S)
                states.append(state)
    except TimeoutError:
        got = [(await page.evaluate(STATE_JS))[0] for page in pages]
        raise BenchError(f"after {timeout:.0f} s the pages had {got} of {count} events") from None
    return states


async def clock_offset_ms(page: Page) -> float:
    """Chromium's performance clock (timeOrigin + now) minus the wall clock, in ms."""
    return float(await page.evaluate(OFFSET_JS))


# ---- events and who receives them --------------------------------------------------------


class Ticks:
    """Sealed tick events, numbered per run; remembers each one's envelope id."""

    def __init__(self, key: SigningKey) -> None:
        self.key = key
        self.numbers: dict[bytes, tuple[str, int]] = {}  # envelope id -> (run, n)
        self.runs = 0

    def run_name(self, label: str) -> str:
        self.runs += 1
        return f"{label}-{self.runs}"

    def seal(self, run: str, n: int) -> tuple[bytes, int]:
        sent = time.time_ns()
        wire, msg_id = protocol.seal(self.key, src=f"{A}/{ACTOR}", dst=protocol.BROADCAST,
                                     subj=SUBJECT, message=Event(TYPE, ACTOR, {
                                         "run": run, "n": n, "sent_ns": sent}))
        self.numbers[msg_id] = (run, n)
        return wire, sent

    def which(self, wire: bytes) -> tuple[str, int] | None:
        body = msgpack.unpackb(msgpack.unpackb(wire)[2])
        return self.numbers.get(body["id"])


class Arrivals:
    """When each listener got each event of one run; `wait(n)` until those this process
    sees (`awaited`, by default all) have it."""

    def __init__(self, run: str, listeners: list[str], awaited: list[str] | None = None
                 ) -> None:
        self.run = run
        self.listeners = listeners
        self.awaited = listeners if awaited is None else awaited
        self.sent: dict[int, int] = {}
        self.got: dict[str, dict[int, int]] = {name: {} for name in listeners}
        self._missing: dict[int, set[str]] = {}
        self._done: dict[int, asyncio.Future[None]] = {}

    def expect(self, n: int, sent: int) -> None:
        self.sent[n] = sent
        self._missing[n] = set(self.awaited) - {k for k, v in self.got.items() if n in v}
        self._done[n] = asyncio.get_running_loop().create_future()

    def mark(self, listener: str, n: int, t_ns: int) -> None:
        if n in self.got[listener]:
            raise BenchError(f"{listener} got event {n} of {self.run} twice")
        self.got[listener][n] = t_ns
        missing = self._missing.get(n)
        if missing is not None:
            missing.discard(listener)
            if not missing and not self._done[n].done():
                self._done[n].set_result(None)

    async def wait(self, n: int) -> None:
        try:
            async with asyncio.timeout(EVENT_TIMEOUT_S):
                await self._done[n]
        except TimeoutError:
            raise BenchError(f"event {n} of {self.run} did not reach "
                             f"{sorted(self._missing[n])} within {EVENT_TIMEOUT_S} s") from None

    def latencies_ms(self, listener: str, skip: int) -> list[float]:
        got = self.got[listener]
        return [(got[n] - sent) / 1e6 for n, sent in self.sent.items() if n >= skip]


class RawSubscriber:
    """A core NATS subscription on the entity's event subjects, in this process."""

    def __init__(self, nc: Client, ticks: Ticks) -> None:
        self.nc = nc
        self.ticks = ticks
        self.arrivals: Arrivals | None = None
        self.count = 0
        self.last_ns = 0

    async def start(self) -> None:
        await self.nc.subscribe(subjects.events_of(A), cb=self._on)
        await self.nc.flush()

    async def _on(self, msg: Msg) -> None:
        t = time.time_ns()
        if msg.subject != SUBJECT or self.arrivals is None:
            return
        which = self.ticks.which(msg.data)
        if which is None or which[0] != self.arrivals.run:
            return
        self.count += 1
        self.last_ns = t
        self.arrivals.mark("nats", which[1], t)


class TimedReader(EventReader):
    """The web actor's reader, in this process: marks when a message arrives from the
    ordered consumer ("stream") and when it is verified ("verified")."""

    arrivals: Arrivals

    async def stored(self, msg: Msg) -> StoredEvent | None:
        t = time.time_ns()
        stored = await super().stored(msg)
        if stored is not None:
            verified = time.time_ns()
            event = stored.envelope.message
            assert isinstance(event, Event)
            if event.actor == ACTOR and event.data.get("run") == self.arrivals.run:
                self.arrivals.mark("stream", event.data["n"], t)
                self.arrivals.mark("verified", event.data["n"], verified)
        return stored

    async def follow_all(self, after: int, live: asyncio.Event) -> None:
        async with self.follow(after=after) as follower:
            live.set()
            async for _ in follower:
                pass


class SseClient:
    """`/api/events` read by a plain HTTP/1.1 client in this process (no browser)."""

    def __init__(self, url: str, cookie: tuple[str, str]) -> None:
        where = urlsplit(url)
        self.host, self.port = where.hostname or "127.0.0.1", where.port or 80
        self.cookie = f"{cookie[0]}={cookie[1]}"

    async def follow(self, after: int, arrivals: Arrivals, live: asyncio.Event) -> None:
        reader, writer = await asyncio.open_connection(self.host, self.port)
        try:
            writer.write(f"GET /api/events?after={after} HTTP/1.1\r\nHost: {self.host}:"
                         f"{self.port}\r\nCookie: {self.cookie}\r\nAccept: text/event-stream"
                         "\r\n\r\n".encode())
            head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").lower()
            if not head.startswith("http/1.1 200") or "transfer-encoding: chunked" not in head:
                raise BenchError(f"/api/events answered {head.splitlines()[0]!r} (chunked "
                                 "expected)")
            buffer = b""
            while True:
                size = int((await reader.readline()).split(b";")[0], 16)
                chunk = await reader.readexactly(size + 2)
                t = time.time_ns()
                if size == 0:
                    raise BenchError("/api/events ended")
                buffer += chunk[:-2]
                *events, buffer = buffer.split(b"\n\n")
                for text in events:
                    self._one(text, arrivals, live, t)
        finally:
            writer.close()

    @staticmethod
    def _one(text: bytes, arrivals: Arrivals, live: asyncio.Event, t: int) -> None:
        fields = dict(line.split(b": ", 1) for line in text.split(b"\n")
                      if b": " in line and not line.startswith(b":"))
        if fields.get(b"event") == b"start":
            live.set()
        elif fields.get(b"event") == b"evt":
            event = json.loads(fields[b"data"])
            if event["actor"] == ACTOR and event["data"].get("run") == arrivals.run:
                arrivals.mark("sse", event["data"]["n"], t)


# ---- CPU of every process on the way -----------------------------------------------------


class ProcessCpu(CpuMeter):
    """CpuMeter over this process, the daemon, its nats-server and the browser: the
    Playwright driver and every Chromium process, summed (this process's other children,
    the daemon's tree left out)."""

    def __init__(self, member: Member) -> None:
        self.pids = {"bench": os.getpid()}
        self.daemon_tree: set[int] = set()
        proc = member.daemon.proc
        if proc is not None:
            self.pids["daemon"] = proc.pid
            self.daemon_tree.add(proc.pid)
            server = _child_named(proc.pid, "nats-server")
            if server is not None:
                self.pids["nats-server"] = server
                self.daemon_tree.add(server)

    def sample(self) -> Cpu:
        parents: dict[int, int] = {}
        for entry in Path("/proc").iterdir():
            if entry.name.isdigit():
                try:
                    stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                except OSError:
                    continue
                parents[int(entry.name)] = int(stat[1])
        user = system = 0.0
        for pid in parents:
            if self._browser(pid, parents):
                u, s = _cpu_seconds(pid)
                user, system = user + u, system + s
        return {**super().sample(), "browser": (user, system)}

    def _browser(self, pid: int, parents: dict[int, int]) -> bool:
        me = os.getpid()
        for _ in range(64):  # a descendant of this process, not in the daemon's tree
            if pid in self.daemon_tree or pid <= 1:
                return False
            pid = parents.get(pid, 0)
            if pid == me:
                return True
        return False


async def settled(meter: ProcessCpu) -> float:
    """Until the browser, just launched, has finished its own start-up work (a quarter
    second in which it used under SETTLED_CPU of a core), at most SETTLE_TIMEOUT_S;
    seconds waited. Its start-up would otherwise be counted against the first events."""
    start = time.perf_counter()
    before = meter.sample()["browser"]
    while time.perf_counter() - start < SETTLE_TIMEOUT_S:
        await asyncio.sleep(SETTLE_WINDOW_S)
        after = meter.sample()["browser"]
        if sum(after) - sum(before) < SETTLED_CPU * SETTLE_WINDOW_S:
            break
        before = after
    return time.perf_counter() - start


# ---- what is measured --------------------------------------------------------------------


@dataclasses.dataclass
class Latency:
    """Latencies (ms) per listener over the rounds, and the CPU they took."""

    name: str
    events: int = 0
    seconds: float = 0.0
    ms: dict[str, list[float]] = dataclasses.field(default_factory=dict)
    cpu: Cpu = dataclasses.field(default_factory=dict)

    def add(self, arrivals: Arrivals, skip: int, seconds: float, cpu: Cpu) -> None:
        for listener in arrivals.listeners:
            self.ms.setdefault(listener, []).extend(arrivals.latencies_ms(listener, skip))
        self.events += len(arrivals.sent) - skip
        self.seconds += seconds
        self.cpu = CpuMeter.add(self.cpu, cpu)

    def p50(self, listener: str) -> float:
        return statistics.median(self.ms[listener])

    def lines(self, labels: dict[str, str], gap_ms: int) -> list[str]:
        out = [f"latency, pass {self.name!r} (N={self.events}, one every {gap_ms} ms or once "
               "the last has arrived):"]
        for listener, values in self.ms.items():
            ordered = sorted(values)
            p99 = ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]
            out.append(f"  {labels[listener]:<46} p50 {self.p50(listener):7.3f} ms  "
                       f"p99 {p99:7.3f} ms  mean {statistics.fmean(values):7.3f} ms")
        out.append(CpuMeter.line(self.cpu, self.events, self.seconds).replace(
            "per call", "per event"))
        return out


LABELS = {
    "nats": "raw NATS core subscriber (this process)",
    "browser": "browser: EventSource handler (Chromium)",
    "stream": "ordered push consumer, message in (this proc)",
    "verified": "... verified (open_stored_event)",
    "sse": "/api/events, plain HTTP client (this process)",
}


class Bench:
    """The measurements, on one connection to the entity's server and one browser."""

    def __init__(self, nc: Client, ticks: Ticks, raw: RawSubscriber, pages: Pages,
                 sse: SseClient, meter: ProcessCpu, offset_ms: float, max_bytes: int) -> None:
        self.nc = nc
        self.js = nc.jetstream(timeout=REPLY_TIMEOUT_S)
        self.ticks = ticks
        self.raw = raw
        self.pages = pages
        self.sse = sse
        self.meter = meter
        self.offset_ms = offset_ms
        self.max_bytes = max_bytes

    async def last_seq(self) -> int:
        info = await self.js.stream_info(f"EVENTS-{A}")
        return info.state.last_seq

    async def paced(self, arrivals: Arrivals, count: int, gap_s: float) -> float:
        """`count` ticks, one every `gap_s` (later if the last had not yet reached every
        listener awaited); seconds."""
        self.raw.arrivals = arrivals
        start = time.perf_counter()
        for n in range(count):
            await asyncio.sleep(max(0.0, start + n * gap_s - time.perf_counter()))
            wire, sent = self.ticks.seal(arrivals.run, n)
            arrivals.expect(n, sent)
            await self.nc.publish(SUBJECT, wire)
            await arrivals.wait(n)
        return time.perf_counter() - start

    async def browser_pass(self, page: Page, count: int, skip: int, gap_s: float,
                           into: Latency) -> None:
        arrivals = Arrivals(self.ticks.run_name("browser"), ["nats", "browser"], ["nats"])
        await page.evaluate(LISTEN_JS, [await self.last_seq(), arrivals.run])
        before = self.meter.sample()
        seconds = await self.paced(arrivals, count, gap_s)
        await until_all(page, count)
        cpu = self.meter.since(before, self.meter.sample())
        _, _, bad = await page.evaluate(STATE_JS)
        times = await page.evaluate(CLOSE_JS)
        if bad or len(times) != count:
            raise BenchError(f"the page got {len(times)} events of {count}, {bad} out of order")
        for n, t_ms in times:
            arrivals.got["browser"][n] = round((t_ms - self.offset_ms) * 1e6)
        into.add(arrivals, skip, seconds, cpu)

    async def steps_pass(self, count: int, skip: int, gap_s: float, into: Latency) -> None:
        arrivals = Arrivals(self.ticks.run_name("steps"), ["nats", "stream", "verified", "sse"])
        keyring = Keyring()
        keyring.add(bytes(self.ticks.key.verify_key), A)
        reader = TimedReader(self.js, A, keyring, max_bytes=self.max_bytes)
        reader.arrivals = arrivals
        after = await self.last_seq()
        reading, streaming = asyncio.Event(), asyncio.Event()
        async with asyncio.TaskGroup() as tg:
            tasks = [tg.create_task(reader.follow_all(after, reading)),
                     tg.create_task(self.sse.follow(after, arrivals, streaming))]
            try:
                async with asyncio.timeout(EVENT_TIMEOUT_S):
                    await reading.wait()
                    await streaming.wait()
            except TimeoutError:
                raise BenchError("the stream reader or /api/events did not start within "
                                 f"{EVENT_TIMEOUT_S} s") from None
            before = self.meter.sample()
            seconds = await self.paced(arrivals, count, gap_s)
            cpu = self.meter.since(before, self.meter.sample())
            for task in tasks:
                task.cancel()
        into.add(arrivals, skip, seconds, cpu)

    async def throughput(self, sizes: Sizes) -> tuple[list[str], float]:
        """The figures' lines, and the rate the slowest page received the events at."""
        pages = await self.pages.open(sizes.pages)
        await settled(self.meter)
        run = self.ticks.run_name("throughput")
        arrivals = Arrivals(run, ["nats"])
        self.raw.arrivals = arrivals
        self.raw.count = 0
        after = await self.last_seq()
        await asyncio.gather(*(p.evaluate(LISTEN_JS, [after, run]) for p in pages))
        wires = [self.ticks.seal(run, n) for n in range(sizes.events)]
        for n, (_, sent) in enumerate(wires):
            arrivals.sent[n] = sent
        before = self.meter.sample()
        start_ns = time.time_ns()
        start = time.perf_counter()
        pending: list[asyncio.Task[Any]] = []
        async with asyncio.TaskGroup() as tg:
            for wire, _ in wires:
                pending.append(tg.create_task(self.js.publish(SUBJECT, wire)))
                if len(pending) >= sizes.window:
                    await asyncio.gather(*pending)
                    pending.clear()
        published = time.perf_counter() - start
        states = await drained(pages, sizes.events, DRAIN_TIMEOUT_S + sizes.events / 50)
        cpu = self.meter.since(before, self.meter.sample())
        await asyncio.gather(*(p.evaluate(CLOSE_JS) for p in pages))
        for i, (count, _, bad) in enumerate(states):
            if count != sizes.events or bad:
                raise BenchError(f"page {i} got {count} events of {sizes.events}, {bad} out "
                                 "of order")
        if self.raw.count != sizes.events:
            raise BenchError(f"the raw subscriber got {self.raw.count} of {sizes.events}")
        finish = [(last - self.offset_ms) * 1e6 - start_ns for _, last, _ in states]
        rates = sorted(sizes.events / (s / 1e9) for s in finish)
        raw_s = (self.raw.last_ns - start_ns) / 1e9
        return [
            f"throughput: {sizes.events} events to {sizes.pages} pages, published with "
            f"{sizes.window} PubAcks in flight:",
            f"  published (the stream's PubAcks)        {sizes.events / published:>9,.0f} "
            f"events/s  ({published:.2f} s)",
            f"  raw NATS core subscriber (this process) {sizes.events / raw_s:>9,.0f} events/s",
            f"  slowest page (sustained)                {rates[0]:>9,.0f} events/s  (fastest "
            f"{rates[-1]:,.0f}; {rates[0] * sizes.pages:,.0f} deliveries/s in all)",
            CpuMeter.line(cpu, sizes.events, max(finish) / 1e9).replace("per call",
                                                                         "per event"),
        ], rates[0]


async def measure(member: Member, sizes: Sizes) -> tuple[float, float]:
    """(web_event_latency_vs_nats, the slowest page's events/s)."""
    cfg = config_mod.load(member.config)
    key = identity.read_key(identity.key_path(cfg.data_dir))
    url, cookie = await log_in(member)
    print(f"web page at {url}, logged in with the link of entityctl web", flush=True)
    async with AsyncExitStack() as stack:
        nc = await nats.connect(member.url, name="bench-web")
        stack.push_async_callback(wait_closed, nc, 5.0)
        ticks = Ticks(key)
        raw = RawSubscriber(nc, ticks)
        await raw.start()
        playwright = await stack.enter_async_context(async_playwright())
        browser = await playwright.chromium.launch(executable_path=chromium_path(),
                                                   args=["--no-sandbox"])
        stack.push_async_callback(browser.close)
        pages = Pages(browser, url, cookie)
        stack.push_async_callback(pages.close)
        first = (await pages.open(1))[0]
        offset = await clock_offset_ms(first)
        meter = ProcessCpu(member)
        waited = await settled(meter)
        print(f"chromium {browser.version} ({chromium_path()}), at rest after {waited:.2f} s; "
              f"its performance clock is {offset:+.3f} ms off the wall clock (corrected)",
              flush=True)
        bench = Bench(nc, ticks, raw, pages, SseClient(url, cookie), meter, offset,
                      cfg.protocol.max_message_bytes)

        shown, steps = Latency("browser"), Latency("steps")
        for r in range(sizes.rounds):
            count = sizes.latency * (r + 1) // sizes.rounds - sizes.latency * r // sizes.rounds
            skip = sizes.warmup if r == 0 else 0
            await bench.browser_pass(first, count + skip, skip, sizes.gap_ms / 1000, shown)
            await bench.steps_pass(count + skip, skip, sizes.gap_ms / 1000, steps)
        for figure in (shown, steps):
            print("\n".join(figure.lines(LABELS, sizes.gap_ms)), flush=True)
        lines, page_rate = await bench.throughput(sizes)
        print("\n".join(lines), flush=True)
        return shown.p50("browser") / shown.p50("nats"), page_rate


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.web", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true",
                        help="small N: a smoke run (the N options below still win)")
    for name, text in (("latency", "events per latency pass (each of the two)"),
                       ("warmup", "untimed events before the first of each pass"),
                       ("rounds", "turns in which the two latency passes alternate"),
                       ("gap-ms", "milliseconds between two events of a latency pass"),
                       ("pages", "pages connected for the throughput"),
                       ("events", "events published for the throughput"),
                       ("window", "PubAcks in flight while publishing them")):
        parser.add_argument(f"--{name}", type=int,
                            help=f"{text} (default {getattr(DEFAULT, name.replace('-', '_'))})")
    parser.add_argument("--keep", action="store_true",
                        help="keep the temporary directory (config, daemon log, data)")
    args = parser.parse_args(argv)
    given = {f.name: value for f in dataclasses.fields(Sizes)
             if (value := getattr(args, f.name)) is not None}
    sizes = dataclasses.replace(QUICK if args.quick else DEFAULT, **given)
    if min(sizes.rounds, sizes.pages, sizes.events, sizes.window) < 1 or (
            sizes.latency < sizes.rounds or min(sizes.warmup, sizes.gap_ms) < 0):
        parser.error("every N must be at least 1, --latency at least --rounds")

    logs.configure("error")  # this process's clients; failures end the run as BenchError
    print(f"bench.web: latency={sizes.latency} warmup={sizes.warmup} rounds={sizes.rounds} "
          f"gap_ms={sizes.gap_ms} pages={sizes.pages} events={sizes.events} "
          f"window={sizes.window}", flush=True)
    results, code = run_guarded("bench.web", lambda: running_entity(args.keep),
                                lambda member: measure(member, sizes))
    if results is None:
        return code
    ratio, rate = results
    print(f"web_events_per_s: {rate:.0f}")
    print(f"target: web_event_latency_vs_nats <= {TARGET:.2f}")
    print(f"ratio web_event_latency_vs_nats: {ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
