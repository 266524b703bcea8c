"""Attack review of the daemon's lifecycle: what survives, leaks or breaks across its
in-process restart (entityd.storewatch asks for one once the JetStream store met a full
disk and has room again; entityd.app.cli `_run` builds a new Daemon, its config read
again) and at awkward moments of start and stop.

entity-a (its page on, systemd's notify socket and watchdog pointed at this test) and
entity-b run on a hub (bench.rig, the scripted model server, not a model); entity-a's data
dir is a tmpfs of its own, filled and freed as tests/test_attack_review_diskfull.py does
to make it restart. Tried:

- Three in-process restarts with an `entityctl watch`, a `watch --since`, the page's event
  stream (SSE) and a peer's report in flight: open descriptors, threads, RSS, children,
  listening sockets before and after; what systemd is told; what each client sees.
- SIGTERM right after `entityd_restarting` (the old daemon draining), and SIGTERM twice
  while the new daemon starts its nats-server; SIGINT likewise (probed, as SIGTERM).
- The config edited into an invalid state (a bad value; TOML that does not parse) before
  the restart reads it again.
- kill -9 of the embedded nats-server; SIGSTOP of it, then SIGCONT.

Held: nothing is left behind by a restart (descriptors and children the same after
three restarts, threads within one, RSS within 8 MiB, one nats-server child, the page's
port only); systemd gets RELOADING=1 then READY=1 for each, in that order; the page's
session cookie is still good after it; a peer's report sent while entity-a restarts is
delivered once; SIGTERM during the drain, or twice during the new start, exits 0 within
seconds with no nats-server left; a config made invalid exits 2 naming the key, no
traceback, no nats-server left; kill -9 of the nats-server exits 1 at once, saying so.
The restart budget is the new Runtime's (reset by a restart): a restart only follows a
full disk freed and SETTLE_S, so no crash loop rides on it.

Found, four of six fixed (each test failed before its fix):

- `entityctl watch --since` died with a traceback (ConnectionClosedError, exit 1) when the
  daemon restarted. Now `watch` keeps its connection across a restart (EntityClient
  `follows`: reconnects, though its first connect still fails at once), and a stored
  watch follows on after the sequence of the last event it printed.
- `entityctl watch` (live) ended with exit 0 and not a word at a restart. Now it goes on
  with the new daemon's events (those sent while it reconnects are not seen: a live
  watch shows what it sees; `--since` misses nothing).
- A frozen embedded nats-server (SIGSTOP, or any hang) went unnoticed, and the daemon kept
  feeding systemd's watchdog. Now WATCHDOG=1 goes only after a round trip through the
  server (a message to itself on a local subject; nats-py's flush was tried first, but
  a flush that times out leaves a PONG future cancelled, and the late PONG broke nats-py's
  read loop with a traceback), and a server that does not answer is logged
  (`nats_server_not_answering`, error) within an interval, also without systemd.
- Notifier.notify sent on a blocking socket from the event loop: with 10 datagrams unread
  the next WATCHDOG=1 blocked the daemon for ever. It sends with MSG_DONTWAIT now.

Open (strict xfails):
- The page's event stream, resumed with Last-Event-ID after the restarts, misses the old
  daemons' actor_stopped events (27 logged, 18 received; own seq 51 then 74).
- A restart with the page's stream open leaves tracebacks in the log: a 5 s drain ending
  in "_GatheringFuture exception was never retrieved", or the old daemon's SSE response
  outliving it and dying after the new one is ready ("Exception in ASGI application").
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
import pytest_asyncio

from bench.harness import BIN, child_env
from bench.rig import READY, Federation, Member, edit, enable_web
from entityd.sdnotify import Notifier
from tests.helpers import free_port, poll, scripted_federation
from tests.peer_model import route
from tests.test_attack_review_diskfull import FILLER, fill, tmpfs
from tests.web_helpers import Session, log_in

pytestmark = [pytest.mark.timeout(150), pytest.mark.asyncio(loop_scope="module")]

A, B = "entity-a", "entity-b"
WATCHDOG_USEC = 4_000_000  # the daemon pets every 2 s
RESTARTS = 3
SETTLE_S = 10.0  # entityd.storewatch.SETTLE_S


# ---- what the process holds -------------------------------------------------------------


def children(pid: int) -> list[int]:
    found: list[int] = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            found += [int(p) for p in (task / "children").read_text().split()]
    return found


def comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def nats_servers_of(data: Path) -> list[int]:
    """Every nats-server running on `data`'s store, whoever started it."""
    found = []
    for proc in Path("/proc").iterdir():
        if not proc.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            cmdline = (proc / "cmdline").read_bytes().split(b"\0")
            if cmdline and cmdline[0].endswith(b"nats-server") and str(data).encode() in b" ".join(
                    cmdline):
                found.append(int(proc.name))
    return found


def listening(pid: int) -> set[int]:
    """The TCP ports `pid` listens on."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True).stdout
    ports = set()
    for line in out.splitlines():
        if f"pid={pid}," in line:
            ports.add(int(line.split()[3].rsplit(":", 1)[1]))
    return ports


@dataclass
class Held:
    fds: int
    threads: int
    rss_kib: int
    kids: list[str]
    ports: set[int]

    @classmethod
    def of(cls, pid: int) -> Held:
        rss = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines()
                   if line.startswith("VmRSS"))
        return cls(len(os.listdir(f"/proc/{pid}/fd")), len(os.listdir(f"/proc/{pid}/task")),
                   int(rss.split()[1]), sorted(comm(k) for k in children(pid)),
                   listening(pid))


# ---- systemd's side ---------------------------------------------------------------------


class NotifySocket:
    """What the daemon tells systemd ($NOTIFY_SOCKET), with when it came, read at once as
    systemd does (a queue of 10 unread datagrams blocks the daemon's notify: see
    test_a_notify_socket_nobody_reads_never_blocks)."""

    def __init__(self) -> None:
        self.dir = tempfile.mkdtemp(prefix="lc-")  # a short path: sun_path is 108 bytes
        self.path = os.path.join(self.dir, "notify")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.sock.settimeout(0.2)
        self.got: list[tuple[float, str]] = []
        self._closed = threading.Event()
        self._reader = threading.Thread(target=self._read, name="notify-reader", daemon=True)
        self._reader.start()

    def _read(self) -> None:
        while not self._closed.is_set():
            with contextlib.suppress(TimeoutError):
                self.got.append((time.monotonic(), self.sock.recv(4096).decode()))

    def read(self) -> list[tuple[float, str]]:
        return self.got

    def close(self) -> None:
        self._closed.set()
        self._reader.join(2)
        self.sock.close()
        with contextlib.suppress(OSError):
            os.unlink(self.path)
            os.rmdir(self.dir)


# ---- the page's event stream ------------------------------------------------------------


async def sse(session: Session, last_id: str, seen: list[tuple[str, int | None, str]],
              until: asyncio.Event | None = None) -> str:
    """Read the page's /api/events (after `last_id`, if any) into `seen` (id, own seq, type)
    until the server ends it or `until` is set; the last id read."""
    where = urlsplit(session.url)
    reader, writer = await asyncio.open_connection(where.hostname, where.port)
    head = (f"GET /api/events HTTP/1.0\r\nHost: {where.netloc}\r\nCookie: {session.cookie}\r\n"
            f"Accept: text/event-stream\r\n" + (f"Last-Event-ID: {last_id}\r\n" if last_id
                                                 else "") + "\r\n")
    writer.write(head.encode())
    await writer.drain()
    event_id, data = last_id, ""
    try:
        while until is None or not until.is_set():
            try:
                line = await asyncio.wait_for(reader.readline(), 0.5)
            except TimeoutError:
                continue
            if not line:
                break
            text = line.decode().strip()
            if text.startswith("id: "):
                event_id = text[4:]
            elif text.startswith("data: "):
                data = text[6:]
            elif text == "" and data:
                with contextlib.suppress(ValueError):
                    body = json.loads(data)
                    if "type" in body:
                        seen.append((event_id, body.get("seq"), body["type"]))
                data = ""
    finally:
        writer.close()
    return event_id


# ---- the rig ----------------------------------------------------------------------------


@dataclass
class Rig:
    fed: Federation
    mount: Path
    notify: NotifySocket
    notes: dict[str, Any] = field(default_factory=dict)
    ready_at: float = field(default_factory=time.monotonic)  # the daemon's last ready

    @property
    def a(self) -> Member:
        return self.fed[A]

    @property
    def b(self) -> Member:
        return self.fed[B]

    @property
    def pid(self) -> int:
        assert self.a.daemon.proc is not None
        return self.a.daemon.proc.pid

    def count(self, needle: str) -> int:
        return self.a.daemon.log().count(needle)

    async def wait_log(self, needle: str, count: int, timeout: float = 40.0) -> None:
        await asyncio.to_thread(self.a.daemon.wait_log, needle, timeout, count)

    async def fill_and_free(self) -> None:
        """entity-a's disk filled until its daemon says so, then freed: it will restart
        (SETTLE_S after its start)."""
        full = self.count('"nats_store_disk_full"')
        filler = self.mount / FILLER
        try:
            assert fill(filler) > 0
            await self.wait_log('"nats_store_disk_full"', full + 1, 10)
        finally:
            filler.unlink(missing_ok=True)

    async def settled(self) -> None:
        await asyncio.sleep(max(0.0, self.ready_at + SETTLE_S - time.monotonic()))

    async def restart(self) -> None:
        """One in-process restart. The disk is filled only once the daemon has run for
        SETTLE_S (it restarts at once when freed): filled sooner, the daemon may go deaf
        (test_a_disk_filled_again_just_after_a_restart_is_seen)."""
        restarting, ready = self.count('"entityd_restarting"'), self.count(READY)
        await self.settled()
        await self.fill_and_free()
        await self.wait_log('"entityd_restarting"', restarting + 1)
        await self.wait_log(READY, ready + 1, 60)
        self.ready_at = time.monotonic()

    async def exit_code(self, within: float = 20.0) -> int | None:
        proc = self.a.daemon.proc
        assert proc is not None
        with contextlib.suppress(subprocess.TimeoutExpired):
            return await asyncio.to_thread(proc.wait, within)
        return None

    async def start_again(self) -> None:
        if self.a.daemon.proc is not None and self.a.daemon.proc.poll() is None:
            return
        self.a.start()
        await self.a.ready()
        self.ready_at = time.monotonic()


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("lifecycle")
    notify = NotifySocket()

    def prepare(fed: Federation) -> None:
        enable_web(fed[A].config, free_port())  # the same port after a restart
        daemon = fed[A].daemon
        daemon.env = {**daemon.env, "NOTIFY_SOCKET": notify.path,
                      "WATCHDOG_USEC": str(WATCHDOG_USEC)}

    try:
        with tmpfs(root / A) as mount:
            async with scripted_federation(root, [A, B], route, prepare=prepare) as fed:
                with contextlib.ExitStack() as cleanup:
                    cleanup.callback((mount / FILLER).unlink, missing_ok=True)
                    await fed.discovered()
                    rig = Rig(fed, mount, notify)
                    yield rig
                    await rig.start_again()  # every daemon must exit 0 at the end
    finally:
        notify.close()


@contextlib.contextmanager
def watching(member: Member, *args: str) -> Iterator[tuple[subprocess.Popen[str], Path]]:
    """`entityctl watch --json ARGS` running, its stdout and stderr in one file."""
    out = member.data.parent / f"watch{'-'.join(args)}.out"
    with out.open("w") as sink:
        proc = subprocess.Popen([str(BIN / "entityctl"), "--config", str(member.config),
                                 "watch", "--json", *args], stdout=sink, stderr=sink,
                                text=True, env=child_env())
    try:
        yield proc, out
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


async def remembered(member: Member, text: str) -> int:
    code, out, err = await member.ctl("memory", "search", text, "--json")
    assert code == 0, out + err
    return out.count(text)


# ---- three restarts with clients attached -----------------------------------------------


async def test_restarts_leave_nothing_behind_and_clients_across_them(rig: Rig) -> None:
    """Held: after three in-process restarts the process holds what it held after the
    first (descriptors, threads, one nats-server child, the page's port), RSS within
    8 MiB. The clients' outcomes are recorded for the tests below."""
    code, out, err = await rig.a.ctl("ask", "hello before the restarts")
    assert code == 0, out + err
    page = await log_in(rig.a)
    rig.notes["page"] = page
    # The first restart warms up whatever a daemon loads once (imports, caches).
    await rig.restart()
    await asyncio.sleep(1)
    before = Held.of(rig.pid)
    nats_before = nats_servers_of(rig.a.data)
    rig.notify.read().clear()

    seen: list[tuple[str, int | None, str]] = []
    stop_sse = asyncio.Event()
    with watching(rig.a) as (live, live_out), \
            watching(rig.a, "--since", "1h") as (since, since_out):
        await asyncio.sleep(2)  # both subscribed
        first = asyncio.create_task(sse(page, "", seen))
        await asyncio.sleep(1)
        for n in range(RESTARTS - 1):
            restarting = rig.count('"entityd_restarting"')
            if n == 0:
                rig.notes["mark"] = len(rig.a.daemon.log())
            restart = asyncio.create_task(rig.restart())
            if n == 0:  # a peer's report while entity-a restarts
                await rig.wait_log('"entityd_restarting"', restarting + 1)
                code, out, err = await rig.b.ctl("report", A, "report sent across the restart")
                rig.notes["report"] = (code, out + err)
            await restart
        await asyncio.sleep(2)
        rig.notes["drain"] = rig.a.daemon.log()[rig.notes["mark"]:]
        last_id = await asyncio.wait_for(first, 10)  # the first restart ended it
        rig.notes["sse_first"] = list(seen)
        second = asyncio.create_task(sse(page, last_id, seen, stop_sse))
        code, out, err = await rig.a.ctl("todo", "--add", "after the restarts")
        assert code == 0, out + err
        await asyncio.sleep(3)
        stop_sse.set()
        await second
        rig.notes["sse"] = seen
        rig.notes["live"] = (live.poll(), live_out.read_text())
        rig.notes["since"] = (since.poll(), since_out.read_text())
        rig.notes["page_after"] = (await page.get("/api/status")).status
    rig.notes["notify"] = [text for _, text in rig.notify.read() if "WATCHDOG" not in text]
    await asyncio.sleep(1)
    after = Held.of(rig.pid)
    assert (after.fds, after.kids, after.ports) == (before.fds, before.kids, before.ports), (
        before, after)
    assert after.threads <= before.threads + 1, (before, after)  # (executors grow lazily)
    assert after.rss_kib - before.rss_kib < 8 * 1024, (before, after)
    now = nats_servers_of(rig.a.data)
    assert len(now) == 1 and not set(now) & set(nats_before), (nats_before, now)


async def test_systemd_hears_reloading_then_ready_at_each_restart(rig: Rig) -> None:
    said = rig.notes["notify"]
    assert [text.split("\n")[0] for text in said] == ["RELOADING=1", "READY=1"] * (
        RESTARTS - 1), said


@pytest.mark.xfail(strict=True, reason="the page reconnected with Last-Event-ID after the "
                   "restarts misses the old daemons' actor_stopped events (the daemon logged "
                   "27, the page got 18; another run 0): its resumed stream went from own seq "
                   "51 to 74. Not settled: whether EVENTS-<entity>-OWN (sourced from the feed) "
                   "lacks them or the page skips them")
async def test_the_page_resumes_after_a_restart_with_nothing_lost_or_twice(rig: Rig) -> None:
    """The stream ends at the restart; reconnected with Last-Event-ID it must go on exactly
    after the last event it got: every actor start and stop once, and the session cookie
    still good."""
    seen = rig.notes["sse"]
    own = [(seq, typ) for _, seq, typ in seen if seq is not None]
    seqs = [seq for seq, _ in own]
    assert rig.notes["sse_first"], "the page got no event before the restart"
    assert len(seen) > len(rig.notes["sse_first"]), "nothing after the reconnect"
    assert seqs == sorted(set(seqs)), f"own sequences not increasing, or twice: {seqs}"
    # Every actor start and stop the daemon logged is an event the page got, once.
    for typ in ("actor_started", "actor_stopped"):
        assert [t for _, t in own].count(typ) == rig.a.daemon.log().count(
            f'"event": "{typ}"'), typ
    assert rig.notes["page_after"] == 200


async def test_a_report_sent_while_the_entity_restarts_arrives_once(rig: Rig) -> None:
    code, said = rig.notes["report"]
    assert code == 0, said
    await poll(lambda: remembered(rig.a, "report sent across the restart"), timeout=30,
               what="the report reaching entity-a")
    await asyncio.sleep(2)
    assert await remembered(rig.a, "report sent across the restart") == 1


def went_on(said: str) -> bool:
    """Whether a watch's output has an event after the last actor stopped (the new
    daemon's)."""
    lines = said.splitlines()
    stops = [n for n, line in enumerate(lines) if '"actor_stopped"' in line]
    return bool(stops) and any(line.startswith("{") for line in lines[stops[-1] + 1:])


def started_again(said: str) -> bool:
    """Whether a watch's output has an actor started after the last actor stopped (the
    new daemon's actors, after the old one's)."""
    lines = said.splitlines()
    stops = [n for n, line in enumerate(lines) if '"actor_stopped"' in line]
    return bool(stops) and any('"actor_started"' in line for line in lines[stops[-1]:])


@pytest.mark.xfail(strict=True, reason="a restart with the page's event stream open leaves "
                   "tracebacks in the log: either the drain waits wait_closed's whole 5 s (a "
                   "subscription's pending queue never empties) and prints '_GatheringFuture "
                   "exception was never retrieved', or the old daemon's SSE response outlives "
                   "it and dies after the new one is ready ('Exception in ASGI application', "
                   "ConnectionClosedError from eventlog.Follower.next)")
async def test_a_restart_with_the_page_streaming_drains_at_once_and_quietly(rig: Rig) -> None:
    said = rig.notes["drain"]
    stamps = {json.loads(line)["event"]: json.loads(line)["timestamp"]
              for line in said.splitlines()
              if line.startswith("{") and ('"entityd_stopping"' in line
                                           or '"entityd_stopped"' in line)}
    assert "Traceback" not in said and "never retrieved" not in said, said[-2000:]
    took = (datetime.fromisoformat(stamps["entityd_stopped"])
            - datetime.fromisoformat(stamps["entityd_stopping"])).total_seconds()
    assert took < 2.0, f"the old daemon took {took:.1f} s to stop"


async def test_watch_since_follows_the_daemon_across_its_restart(rig: Rig) -> None:
    code, said = rig.notes["since"]
    assert "Traceback" not in said, said[-1500:]
    assert code is None, f"watch --since ended ({code}) at the restart: {said[-600:]}"
    assert started_again(said), said[-600:]


async def test_live_watch_goes_on_or_says_it_lost_the_daemon(rig: Rig) -> None:
    code, said = rig.notes["live"]
    if code is None:  # still running: it must have printed the new daemon's events (those
        # of its start come while the watch reconnects: a live watch shows what it sees;
        # `--since` is the one that misses nothing)
        assert went_on(said), said[-600:]
    else:  # or it ended saying why, not as a clean end of the events
        assert code != 0 and not said.splitlines()[-1].startswith("{"), said[-600:]


# ---- a frozen or killed nats-server ------------------------------------------------------


FROZEN_S = 16.0


async def test_a_frozen_nats_server_is_said_and_starves_the_watchdog(rig: Rig) -> None:
    async def serves() -> bool:
        return (await rig.a.ctl("status", timeout=10))[0] == 0

    [server] = [k for k in children(rig.pid) if comm(k) == "nats-server"]
    mark = len(rig.a.daemon.log())
    rig.notify.read().clear()
    os.kill(server, signal.SIGSTOP)
    started = time.monotonic()
    try:
        await asyncio.sleep(FROZEN_S)
        pets = [at - started for at, text in rig.notify.read() if text == "WATCHDOG=1"]
        said = rig.a.daemon.log()[mark:]
    finally:
        os.kill(server, signal.SIGCONT)
    code = rig.a.daemon.proc.poll() if rig.a.daemon.proc else None
    if code is None:  # still running: it serves again once its server does
        await poll(serves, timeout=30, what="entity-a serving again")
    else:
        await rig.start_again()
    loud = [line for line in said.splitlines() if "nats" in line.lower()
            and ('"level": "warning"' in line or '"level": "error"' in line)]
    assert loud, f"nothing said in {FROZEN_S} s of a frozen nats-server: {said[-800:]}"
    # Past a few watchdog intervals with no answer from its server, the daemon must stop
    # saying it is alive (or have exited non-zero for systemd).
    assert code not in (None, 0) or not [t for t in pets if t > FROZEN_S / 2], pets


async def test_a_killed_nats_server_exits_1_at_once_saying_so(rig: Rig) -> None:
    """Held: kill -9 of the embedded nats-server: `entityd_failed` names it, exit 1 (for
    systemd's Restart=on-failure) within a second."""
    [server] = [k for k in children(rig.pid) if comm(k) == "nats-server"]
    mark = len(rig.a.daemon.log())
    os.kill(server, signal.SIGKILL)
    code = await rig.exit_code(5)
    said = rig.a.daemon.log()[mark:]
    await rig.start_again()
    assert code == 1, said[-1500:]
    assert "the embedded nats-server exited unexpectedly" in said and "Traceback" not in said


# ---- signals and config across the restart ----------------------------------------------


async def test_sigterm_while_the_old_daemon_drains_stops_the_process(rig: Rig) -> None:
    """Held: SIGTERM right after `entityd_restarting`: no new daemon; exit 0, no
    nats-server left."""
    restarting = rig.count('"entityd_restarting"')
    await rig.settled()
    await rig.fill_and_free()
    await rig.wait_log('"entityd_restarting"', restarting + 1)
    mark = len(rig.a.daemon.log())
    rig.a.daemon.signal_stop()
    code = await rig.exit_code()
    said = rig.a.daemon.log()[mark:]
    left = nats_servers_of(rig.a.data)
    await rig.start_again()
    assert code == 0, said[-1500:]
    assert not left and "Traceback" not in said


async def test_sigterm_twice_while_the_new_daemon_starts_stops_the_process(rig: Rig) -> None:
    """Held: SIGTERM twice as the new daemon starts its nats-server: it finishes its start,
    then stops; exit 0, no nats-server left, no traceback."""
    restarting, starting = rig.count('"entityd_restarting"'), rig.count(
        '"nats_server_starting"')
    await rig.settled()
    await rig.fill_and_free()
    await rig.wait_log('"entityd_restarting"', restarting + 1)
    await rig.wait_log('"nats_server_starting"', starting + 1)
    proc = rig.a.daemon.proc
    assert proc is not None
    mark = len(rig.a.daemon.log())
    proc.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.05)
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    code = await rig.exit_code()
    said = rig.a.daemon.log()[mark:]
    left = nats_servers_of(rig.a.data)
    await rig.start_again()
    assert code == 0 and not left and "Traceback" not in said, said[-1500:]


async def test_a_config_made_invalid_before_the_restart_exits_2_naming_the_key(
        rig: Rig) -> None:
    """Held: the restart reads the config again; a bad value stops the process with exit 2
    and one line naming the key, no traceback, no half-started daemon."""
    original = rig.a.config.read_text()
    edit(rig.a.config, "restart_budget = 5 ", "restart_budget = -3 ")
    try:
        mark = len(rig.a.daemon.log())
        await rig.settled()
        await rig.fill_and_free()
        code = await rig.exit_code(40)
        said = rig.a.daemon.log()[mark:]
        left = nats_servers_of(rig.a.data)
    finally:
        rig.a.config.write_text(original)
    await rig.start_again()
    assert code == 2, said[-1500:]
    assert "runtime.restart_budget" in said and "Traceback" not in said, said[-1500:]
    assert not left



async def test_a_notify_socket_nobody_reads_never_blocks(tmp_path: Path) -> None:
    """sdnotify says a notification that cannot be sent is not an error of ours: it must
    not hold the daemon either, whatever the reader (PID 1 busy) does."""
    path = tempfile.mkdtemp(prefix="lc-") + "/notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as unread:
        unread.bind(path)
        notifier = Notifier({"NOTIFY_SOCKET": path, "WATCHDOG_USEC": str(WATCHDOG_USEC)})

        def pets() -> None:
            for _ in range(20):
                notifier.watchdog()

        sender = threading.Thread(target=pets, daemon=True)
        sender.start()
        sender.join(3)
        blocked = sender.is_alive()
        unread.settimeout(0.1)
        with contextlib.suppress(TimeoutError):
            while True:
                unread.recv(4096)  # lets the sender's thread end
    os.unlink(path)
    os.rmdir(os.path.dirname(path))
    assert not blocked, "20 watchdog notifications to an unread socket blocked"
