"""`entityd up FILE`: a whole federation from one small TOML file (entityd.app.up.spec):
a hub, its treasurer and N entities, each with its model; started, supervised and stopped
together. `entityd down FILE` stops a running one, `entityd ps FILE` lists its processes.

Exit codes: 0 done (a stop by Ctrl-C, SIGTERM or `down` included), 1 could not start,
2 a wrong file or an earlier run still there, 3 (`ps`) nothing is running.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import fcntl
import json
import signal
import sys
from pathlib import Path
from typing import Any

from ... import logs, loop
from ...errors import EntitydError
from .. import args as args_mod
from .pidfiles import Leftovers, check_no_leftovers, named, run_dir, running, stop_leftovers
from .plan import StartError, prepare, show
from .spec import Overrides, Spec, load
from .supervisor import Supervisor

__all__ = ["add_commands", "main"]

EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_NOT_RUNNING = 3
DEFAULT_FILE = Path("deploy/pair.toml")


def add_commands(sub: Any) -> None:
    """`up`, `down` and `ps` on the `entityd` command's subparsers, each with `handler`
    (this module's main) set."""
    file_help = f"the federation file (default: {DEFAULT_FILE})"
    up = args_mod.command(
        sub, "up", "Start the hub and every entity of a federation file (creating them on "
        "the first run), keep them running, and stop them all on Ctrl-C.",
        "entityd up deploy/trio.toml\nentityd up deploy/pair.toml --provider entity-a=demo")
    up.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE, help=file_help)
    up.add_argument("--dir", type=Path, help="where the hub and the entities live "
                    "(instead of the file's [federation] dir)")
    up.add_argument("--base-port", type=int, help="the first port (instead of the file's)")
    up.add_argument("--allowance", type=int, help="minted once to each entity (instead of "
                    "the file's)")
    up.add_argument("--provider", action="append", default=[], metavar="NAME=PROVIDER",
                    help="an entity's provider, instead of the file's; repeat for each")
    up.add_argument("--duration", type=float, help="stop by itself this many seconds after "
                    "all is ready")
    down = args_mod.command(sub, "down", "Stop the federation `entityd up FILE` runs (or "
                            "what an earlier run left behind).", "entityd down deploy/trio.toml")
    ps = args_mod.command(sub, "ps", "List the processes of a running `entityd up FILE`: "
                          "pid, state, restarts, ports.", "entityd ps deploy/trio.toml")
    for name, cmd in (("up", up), ("down", down), ("ps", ps)):
        if cmd is not up:
            cmd.add_argument("file", nargs="?", type=Path, default=DEFAULT_FILE,
                             help=file_help)
            cmd.add_argument("--dir", type=Path, help="the dir `up` was given with --dir")
        cmd.set_defaults(handler=main, up_command=name)


def main(args: argparse.Namespace) -> int:
    logs.configure("warning", "console")
    try:
        overrides = Overrides(
            getattr(args, "dir", None), getattr(args, "base_port", None),
            getattr(args, "allowance", None), _providers(getattr(args, "provider", [])))
        spec = load(args.file, overrides)
        if args.up_command == "ps":
            return _ps(spec.dir, spec.path)
        if args.up_command == "down":
            return loop.run(_down(spec.dir, spec.path))
        return loop.run(_up(spec, args.duration))
    except EntitydError as exc:
        print(f"entityd {args.up_command}: {exc}", file=sys.stderr)
        return EXIT_FAILED if isinstance(exc, StartError) else EXIT_USAGE
    except OSError as exc:  # the dir or a file in it cannot be made or written
        print(f"entityd {args.up_command}: {exc.strerror}: {exc.filename}; check that "
              "the federation's dir is yours to write", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:  # before anything was started
        return 0


def _providers(items: list[str]) -> dict[str, str]:
    pairs = {}
    for item in items:
        name, sep, provider = item.partition("=")
        if not sep or not provider:
            raise EntitydError(f"--provider {item!r}: give NAME=PROVIDER, e.g. "
                               "--provider entity-a=demo")
        pairs[name] = provider
    return pairs


async def _up(spec: Spec, duration: float | None) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        loop.add_signal_handler(sig, stop.set)
    run_dir(spec.dir).mkdir(parents=True, exist_ok=True)
    with (run_dir(spec.dir) / "up.lock").open("w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            check_no_leftovers(spec.dir, spec.path)
            raise Leftovers(f"another `entityd up` is starting on {spec.dir}") from None
        check_no_leftovers(spec.dir, spec.path)
        plan = prepare(spec)
        if stop.is_set():
            return 0
        started = await Supervisor(plan).run(stop, duration)
    return 0 if started else EXIT_FAILED


async def _down(root: Path, file: Path) -> int:
    if not await stop_leftovers(root):
        show(f"nothing of `entityd up {file}` is running on {root}")
        return 0
    leftover = running(root)
    if leftover:
        print(f"entityd down: still running: {leftover}", file=sys.stderr)
        return EXIT_FAILED
    show("stopped")
    return 0


def _ps(root: Path, file: Path) -> int:
    alive = running(root)
    if "up" not in alive:
        show(f"`entityd up {file}` is not running on {root}"
             + (f"; leftovers: {named(alive)} (`entityd down {file}` stops them)"
                if alive else ""))
        return EXIT_NOT_RUNNING
    state = {}
    with contextlib.suppress(OSError, ValueError):
        state = json.loads((run_dir(root) / "state.json").read_text())["processes"]
    show(f"entityd up {file}: pid {alive['up']}, in {root}")
    show(f"{'NAME':<22} {'PID':>7}  {'STATE':<20} {'RESTARTS':>8}  PORTS")
    for name, proc in state.items():
        pid = proc.get("pid") if name in alive else None
        ports = " ".join(f"{what}:{port}" for what, port in proc.get("ports", {}).items())
        show(f"{name:<22} {pid or '-':>7}  {proc.get('state', '?'):<20} "
             f"{proc.get('restarts', 0):>8}  {ports}")
    return 0
