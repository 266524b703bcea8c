"""Soak: the pair left alone with autonomy on, sampled for growth.

`python -m bench.soak --minutes N` runs `entityd up` on a copy of deploy/pair.toml in a
temporary directory (free ports: `base_port = 0`; no web pages on fixed ports: `web = 0`;
the demo models unless the providers' keys are in the environment), as
./deploy/start-pair.sh runs the pair, and every `--interval` seconds (60; 3 with
`--quick`) prints per entity:

- the daemon's RSS, open files and threads (/proc of the pid in run/NAME.pid), and the RSS
  of its embedded nats-server (the daemon's child);
- the sizes of memory.sqlite3 and goals.sqlite3 (each with its -wal), of every SQLite
  file in its data dir, and of its JetStream store (DATA_DIR/nats/jetstream);
- the events it published in the interval (a raw core NATS subscriber on its own server,
  logged in with its local token, counting `fed.evt.NAME.>`), the error and warning
  lines its daemon logged in the interval, and its restarts: the actors' (from
  `entityctl status --json`) plus the daemon's own (run/state.json).

At the end, per entity and figure, the growth per hour: the least-squares slope over the
samples after the warm-up (20 % of the run, at most 5 minutes), times 3600, as a fraction
of the mean over the same samples (per-interval counts for events and errors; totals for
the rest), and `ratio soak_rss_growth_per_hour` (the larger of the two daemons'; target
<= 0.05). Everything it started is stopped however the run ends (SIGTERM to `entityd up`,
which stops its children; a kill after a grace period; leftovers by their pid files).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
from nats.aio.msg import Msg

from bench.harness import BIN, BenchError, child_env, run_guarded
from entityd import config as config_mod
from entityd import identity, localauth
from entityd.app.up.pidfiles import kill as kill_pid
from entityd.app.up.pidfiles import running
from entityd.app.up.plan import toml_set

REPO = Path(__file__).resolve().parent.parent
PAIR = REPO / "deploy" / "pair.toml"
TARGET = 0.05
READY_TIMEOUT_S = 120.0  # `entityd up` until "pair ready": hub, ledger, models, daemons
STOP_GRACE_S = 60.0  # `entityd up` stops daemons (15 s) and then models and hub (15 s)
STATUS_TIMEOUT_S = 20.0
MAX_WARMUP_S = 300.0
WARMUP_SHARE = 0.2
MB = 1024 * 1024
TOKENS_PER_TURN = 20_000  # [autonomy] max_tokens per max_turns, as the defaults have it
ERROR_LEVELS = {"error", "warning", "critical", "exception"}


# -- the pair -------------------------------------------------------------------------


def pair_copy(text: str) -> str:
    """deploy/pair.toml for a soak: its federation in `fed/` beside the copy, on free
    ports, and each entity's page on a free port instead of 8001/8002."""
    text, dirs = re.subn(r'(?m)^dir = .*$', 'dir = "fed"', text)
    text, bases = re.subn(r"(?m)^base_port = .*$", "base_port = 0", text)
    text, webs = re.subn(r"(?m)^web = .*$", "web = 0", text)
    if not (dirs == 1 and bases == 1 and webs >= 1):
        raise BenchError(f"{PAIR} changed: no single dir, base_port and web lines to set")
    return text


@dataclass
class Pair:
    file: Path  # the copy of pair.toml
    root: Path  # its federation's dir
    up_log: Path
    names: list[str]

    def data(self, name: str) -> Path:
        return self.root / name

    def state(self) -> dict[str, dict[str, object]]:
        try:
            processes = json.loads((self.root / "run" / "state.json").read_text())["processes"]
        except (OSError, ValueError, KeyError):
            return {}
        return dict(processes)

    def pid(self, name: str) -> int | None:
        return running(self.root).get(name)


def _die_with_parent() -> None:
    # SIGTERM to `entityd up` if this process is killed: it then stops the pair itself.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)


@contextlib.contextmanager
def started_pair(keep: bool, max_turns: int | None) -> Iterator[Pair]:
    """`entityd up` on a copy of deploy/pair.toml in a temporary dir, until "pair ready";
    stopped (and its dir removed unless `keep`) however the block ends. With `max_turns`,
    each entity is made beforehand with that autonomy budget per hour (and its autonomy
    and model token budgets in proportion), which the federation file has no key for
    (`up` keeps it)."""
    tmp = Path(tempfile.mkdtemp(prefix="bench-soak-"))
    file = tmp / "pair.toml"
    text = pair_copy(PAIR.read_text())
    file.write_text(text)
    names = re.findall(r"(?m)^\[entities\.([\w-]+)\]", text)
    pair = Pair(file, tmp / "fed", tmp / "up.log", names)
    proc: subprocess.Popen[bytes] | None = None
    try:
        if max_turns is not None:
            for name in names:
                data = pair.data(name)
                data.mkdir(parents=True)
                identity.create(data)
                config = config_mod.STARTER.format(name=name, data_dir=data, port=4222)
                config = toml_set(config, "autonomy", "max_turns", str(max_turns))
                config = toml_set(config, "autonomy", "max_tokens",
                                  str(max_turns * TOKENS_PER_TURN))
                # The model budget in proportion too: spent, it pauses autonomy (rightly,
                # for a paid model), which would leave the rest of the soak idle.
                config = toml_set(config, "llm", "max_tokens_per_hour",
                                  str(max(400_000, max_turns * TOKENS_PER_TURN)))
                (data / config_mod.CONFIG_NAME).write_text(config)  # up sets the port
        with pair.up_log.open("wb") as log:
            proc = subprocess.Popen(
                [str(BIN / "entityd"), "up", str(file)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, env=child_env(), cwd=tmp, start_new_session=True,
                preexec_fn=_die_with_parent)
        deadline = time.monotonic() + READY_TIMEOUT_S
        while "pair ready" not in pair.up_log.read_text(errors="replace"):
            if proc.poll() is not None:
                raise BenchError(f"entityd up exited ({proc.returncode}) before the pair was "
                                 f"ready:\n{pair.up_log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise BenchError(f"the pair was not ready within {READY_TIMEOUT_S:g} s:\n"
                                 f"{pair.up_log.read_text(errors='replace')[-2000:]}")
            time.sleep(0.2)
        print(f"pair ready in {tmp} (up: pid {proc.pid})", flush=True)
        yield pair
    finally:
        if proc is not None:
            _stop_up(proc, pair)
        if keep:
            print(f"kept {tmp}", flush=True)
        else:
            shutil.rmtree(tmp, ignore_errors=True)


def _stop_up(proc: subprocess.Popen[bytes], pair: Pair) -> None:
    """SIGTERM to `entityd up` (it stops the daemons, then the models and the hub); a kill
    past the grace; then whatever its pid files still name, killed with its group."""
    with contextlib.suppress(ProcessLookupError):
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_GRACE_S)
    except subprocess.TimeoutExpired:
        print("bench.soak: entityd up did not stop in time; killing it", file=sys.stderr)
        proc.kill()
        proc.wait(10)
    for _ in range(50):  # its children get SIGTERM when it dies: let them go
        if not running(pair.root):
            return
        time.sleep(0.1)
    for name, pid in running(pair.root).items():
        print(f"bench.soak: {name} (pid {pid}) still ran; killing it", file=sys.stderr)
        kill_pid(pid, signal.SIGKILL, group=True)
        kill_pid(pid, signal.SIGKILL)


# -- what is sampled ------------------------------------------------------------------


FIGURES = {  # name: (label, unit, per-interval count rather than a level)
    "rss_mb": ("daemon RSS", "MB", False),
    # RSS in two parts: the heap's (a leak shows here) and the mapped files' (SQLite's
    # mmap of memory.sqlite3 grows with the memories read, and the kernel reclaims it).
    "anon_mb": ("  of it anonymous", "MB", False),
    "file_mb": ("  of it files", "MB", False),
    "fds": ("open files", "", False),
    "threads": ("threads", "", False),
    "nats_rss_mb": ("nats-server RSS", "MB", False),
    "memory_mb": ("memory.sqlite3+wal", "MB", False),
    "goals_mb": ("goals.sqlite3+wal", "MB", False),
    "sqlite_mb": ("all SQLite", "MB", False),
    "js_mb": ("JetStream store", "MB", False),
    "events": ("events", "/interval", True),
    "errors": ("errors+warnings", "/interval", True),
    "restarts": ("restarts", "total", False),
}


def _status_field(pid: int, key: str) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


def _children(pid: int) -> list[int]:
    found = []
    with contextlib.suppress(OSError):
        for task in os.listdir(f"/proc/{pid}/task"):
            with contextlib.suppress(OSError):
                found += [int(c) for c in
                          Path(f"/proc/{pid}/task/{task}/children").read_text().split()]
    return found


def _comm(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/comm").read_text().strip()
    except OSError:
        return ""


def _size(*paths: Path) -> int:
    total = 0
    for path in paths:
        with contextlib.suppress(OSError):
            total += path.stat().st_size
    return total


def _du(root: Path) -> int:
    """Bytes on disk under `root` (as du counts them: allocated blocks)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_blocks * 512
    return total


@dataclass
class LogReader:
    """The error and warning lines a daemon log gains, read from where it was left."""

    path: Path
    offset: int = 0
    partial: bytes = b""
    kinds: Counter[str] = field(default_factory=Counter)

    def skip_to_end(self) -> None:
        self.offset = _size(self.path)

    def read(self) -> int:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                chunk = f.read()
        except OSError:
            return 0
        self.offset += len(chunk)
        lines = (self.partial + chunk).split(b"\n")
        self.partial = lines.pop()
        count = 0
        for raw in lines:
            line = raw.decode(errors="replace")
            try:
                record = json.loads(line)
            except ValueError:
                if line.startswith("Traceback"):  # a traceback outside the JSON logger
                    count += 1
                    self.kinds["(traceback)"] += 1
                continue
            if not isinstance(record, dict):
                continue
            if str(record.get("level", "")).lower() in ERROR_LEVELS:
                count += 1
                self.kinds[f"{record.get('level')} {record.get('event', '?')}"] += 1
        return count


@dataclass
class Entity:
    name: str
    data: Path
    log: LogReader
    events: int = 0  # fed.evt.NAME.> seen so far
    counted: int = 0  # ... at the previous sample
    samples: list[tuple[float, dict[str, float]]] = field(default_factory=list)

    def on_event(self, _msg: Msg) -> None:
        self.events += 1


async def _actor_restarts(config: Path) -> int | None:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "entityctl"), "--config", str(config), "status", "--json",
        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL, env=child_env())
    try:
        async with asyncio.timeout(STATUS_TIMEOUT_S):
            out, _ = await proc.communicate()
    except TimeoutError:
        proc.kill()
        await proc.wait()
        return None
    try:
        return sum(int(actor["restarts"]) for actor in json.loads(out)["actors"])
    except (ValueError, KeyError, TypeError):
        return None


async def sample(pair: Pair, entity: Entity, at: float) -> dict[str, float]:
    data = entity.data
    state = pair.state().get(entity.name, {})
    restarts = await _actor_restarts(data / "entityd.toml")
    figures: dict[str, float] = {}
    pid = pair.pid(entity.name)
    try:
        if pid is None:
            raise OSError
        figures["rss_mb"] = _status_field(pid, "VmRSS") / 1024
        figures["anon_mb"] = _status_field(pid, "RssAnon") / 1024
        figures["file_mb"] = _status_field(pid, "RssFile") / 1024
        figures["threads"] = _status_field(pid, "Threads")
        figures["fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        servers = [c for c in _children(pid) if _comm(c).startswith("nats-server")]
        figures["nats_rss_mb"] = sum(_status_field(c, "VmRSS") for c in servers) / 1024
    except OSError:  # between a death and its restart: the figures of no process
        pass
    figures["memory_mb"] = _size(data / "memory.sqlite3", data / "memory.sqlite3-wal") / MB
    figures["goals_mb"] = _size(data / "goals.sqlite3", data / "goals.sqlite3-wal") / MB
    figures["sqlite_mb"] = _size(*data.glob("*.sqlite3*")) / MB
    figures["js_mb"] = _du(data / "nats" / "jetstream") / MB
    figures["events"] = entity.events - entity.counted
    entity.counted = entity.events
    figures["errors"] = entity.log.read()
    daemon_restarts = state.get("restarts", 0)
    figures["restarts"] = (restarts if restarts is not None else float("nan")) + (
        daemon_restarts if isinstance(daemon_restarts, int) else 0)
    entity.samples.append((at, figures))
    return figures


def show_sample(name: str, at: float, f: dict[str, float]) -> str:
    def g(key: str, fmt: str) -> str:
        return format(f[key], fmt) if key in f else "-"

    return (f"[{at / 60:6.2f} min] {name}: rss {g('rss_mb', '.1f')} MB (anon "
            f"{g('anon_mb', '.1f')}, files {g('file_mb', '.1f')})  fds {g('fds', '.0f')}"
            f"  threads {g('threads', '.0f')}  nats {g('nats_rss_mb', '.1f')} MB | "
            f"memory {g('memory_mb', '.2f')} MB  goals {g('goals_mb', '.2f')} MB  "
            f"sqlite {g('sqlite_mb', '.2f')} MB  js {g('js_mb', '.2f')} MB | "
            f"events {g('events', '.0f')}  errors {g('errors', '.0f')}  "
            f"restarts {g('restarts', '.0f')}")


# -- growth ---------------------------------------------------------------------------


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of y over x (0 with fewer than two distinct x)."""
    n = len(points)
    if n < 2:
        return 0.0
    mx = sum(x for x, _ in points) / n
    my = sum(y for _, y in points) / n
    sxx = sum((x - mx) ** 2 for x, _ in points)
    if sxx == 0:
        return 0.0
    return sum((x - mx) * (y - my) for x, y in points) / sxx


@dataclass
class Growth:
    first: float
    last: float
    mean: float
    per_hour: float  # units per hour
    fraction: float | None  # per_hour / mean; None when the mean is 0


def growth(samples: list[tuple[float, dict[str, float]]], key: str,
           warmup_s: float) -> Growth | None:
    points = [(t, f[key]) for t, f in samples if t >= warmup_s and key in f and f[key] == f[key]]
    if len(points) < 2:
        return None
    mean = sum(y for _, y in points) / len(points)
    per_hour = slope(points) * 3600
    return Growth(points[0][1], points[-1][1], mean, per_hour,
                  per_hour / mean if mean else None)


# -- the run --------------------------------------------------------------------------


@dataclass
class Result:
    entities: list[Entity]
    duration_s: float
    warmup_s: float
    up_log: str


async def soak(pair: Pair, duration_s: float, interval_s: float, warmup_s: float) -> Result:
    entities = [Entity(n, pair.data(n), LogReader(pair.data(n) / "entityd.log"))
                for n in pair.names]
    connections = []
    try:
        for entity in entities:
            port = pair.state()[entity.name]["ports"]
            assert isinstance(port, dict)
            token = localauth.read(entity.data)
            nc = await nats.connect(f"nats://{token}@127.0.0.1:{port['nats']}",
                                    name="bench.soak", max_reconnect_attempts=-1,
                                    reconnect_time_wait=0.5)
            connections.append(nc)
            entity.log.skip_to_end()  # errors while it started are not the soak's

            async def count(msg: Msg, entity: Entity = entity) -> None:
                entity.on_event(msg)

            await nc.subscribe(f"fed.evt.{entity.name}.>", cb=count)
        start = time.monotonic()
        ticks = max(1, round(duration_s / interval_s))
        for tick in range(1, ticks + 1):
            await asyncio.sleep(max(0.0, start + tick * interval_s - time.monotonic()))
            at = time.monotonic() - start
            figures = await asyncio.gather(*(sample(pair, e, at) for e in entities))
            for entity, f in zip(entities, figures, strict=True):
                print(show_sample(entity.name, at, f), flush=True)
        elapsed = time.monotonic() - start
    finally:
        for nc in connections:
            with contextlib.suppress(Exception):
                await nc.close()
    return Result(entities, elapsed, warmup_s, pair.up_log.read_text(errors="replace"))


def report(result: Result) -> tuple[float | None, float | None]:
    """Prints the growth table; the larger daemon RSS growth per hour (a fraction), and
    the larger growth of its anonymous part."""
    worst: float | None = None
    worst_anon: float | None = None
    print(f"\ngrowth per hour over the samples after the {result.warmup_s:g} s warm-up "
          "(least-squares slope x 3600; as a fraction of the mean):")
    for entity in result.entities:
        after = [s for s in entity.samples if s[0] >= result.warmup_s]
        print(f"{entity.name} ({len(after)} samples of {len(entity.samples)}; "
              f"{entity.events} events in all):")
        for key, (label, unit, _count) in FIGURES.items():
            g = growth(entity.samples, key, result.warmup_s)
            if g is None:
                print(f"  {label:<20} not enough samples")
                continue
            frac = f"{g.fraction:+.3f}" if g.fraction is not None else "   n/a"
            print(f"  {label:<20} first {g.first:9.2f}  last {g.last:9.2f}  mean {g.mean:9.2f}"
                  f" {unit:<9}  {g.per_hour:+10.2f}/h  growth/h {frac}")
            if key == "rss_mb" and g.fraction is not None:
                worst = g.fraction if worst is None else max(worst, g.fraction)
            if key == "anon_mb" and g.fraction is not None:
                worst_anon = g.fraction if worst_anon is None else max(worst_anon, g.fraction)
        if entity.log.kinds:
            top = ", ".join(f"{kind} x{n}" for kind, n in entity.log.kinds.most_common(6))
            print(f"  logged: {top}")
    restarted = [line for line in result.up_log.splitlines() if "restarting" in line]
    for line in restarted:
        print(f"  entityd up: {line}")
    return worst, worst_anon


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.soak", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--minutes", type=float, default=10.0, help="how long (default 10)")
    parser.add_argument("--interval", type=float, help="seconds between samples "
                        "(default 60; 3 with --quick)")
    parser.add_argument("--quick", action="store_true",
                        help="20 s sampled every 3 s: a smoke run of about 35 s")
    parser.add_argument("--max-turns", type=int, help="each entity's autonomous turns per "
                        "hour (default: the config's, 10, as start-pair.sh has it; they are "
                        "spent in the first minutes on the demo model)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary dir "
                        "(logs, data) and print where it is")
    args = parser.parse_args(argv)
    duration_s = 20.0 if args.quick else args.minutes * 60
    interval_s = args.interval or (3.0 if args.quick else 60.0)
    if duration_s <= 0 or interval_s <= 0 or (args.max_turns is not None
                                              and args.max_turns <= 0):
        parser.error("--minutes, --interval and --max-turns must be positive")
    warmup_s = min(MAX_WARMUP_S, WARMUP_SHARE * duration_s)
    # The quick run keeps the samples after its first third, so it has a slope to print.
    if args.quick:
        warmup_s = duration_s / 3
    print(f"bench.soak: the pair of {PAIR.relative_to(REPO)} with autonomy on for "
          f"{duration_s:g} s, sampled every {interval_s:g} s, warm-up {warmup_s:g} s"
          + (f", {args.max_turns} autonomous turns per hour" if args.max_turns else ""),
          flush=True)
    result, code = run_guarded(
        "bench.soak", lambda: started_pair(args.keep, args.max_turns),
        lambda pair: soak(pair, duration_s, interval_s, warmup_s))
    if result is None:
        return code
    worst, worst_anon = report(result)
    if worst is None:
        print("bench.soak: no RSS growth figure (too few samples after the warm-up)",
              file=sys.stderr)
        return 1
    print(f"ratio soak_rss_growth_per_hour: {worst:.3f}  (target <= {TARGET:.2f})")
    if worst_anon is not None:
        print(f"ratio soak_anon_rss_growth_per_hour: {worst_anon:.3f}  (the heap's part)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
