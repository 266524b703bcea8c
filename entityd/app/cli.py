"""`entityd`: init an entity, run the daemon, make operator keys, run the economy, start
a whole federation from one file (up, down, ps)."""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import sys
import threading
import traceback
from pathlib import Path
from typing import TYPE_CHECKING, NoReturn

from protocol import subjects

from .. import config as config_mod
from .. import identity, logs, loop
from ..errors import EntitydError
from . import args as args_mod
from . import economy, up

if TYPE_CHECKING:
    from ..daemon import Daemon


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="entityd", description=__doc__)
    args_mod.add_version(top)
    # Each subcommand sets `handler(args) -> exit code`, so a module can add its own
    # commands with an `add_commands(sub)` of its own.
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    init = args_mod.command(
        sub, "init", "Write a starter config and a new key into a new data dir.",
        "entityd init entity-a --data-dir ~/entities/entity-a")
    init.add_argument("name", help="the entity's name, e.g. entity-a")
    init.add_argument(
        "--data-dir", required=True, type=Path, help="where config, key and state live"
    )
    init.add_argument("--nats-port", type=int, default=4222, help="embedded nats-server port")
    init.set_defaults(handler=lambda a: _init(a.name, a.data_dir, a.nats_port))

    run = args_mod.command(
        sub, "run", "Run the entity's daemon in the foreground until Ctrl-C or SIGTERM.",
        "entityd run --config ~/entities/entity-a/entityd.toml\n"
        "ENTITYD_CONFIG=~/entities/entity-a/entityd.toml entityd run")
    args_mod.add_config(run)
    run.set_defaults(handler=lambda a: _run(args_mod.config_file(a.config)))

    keygen = args_mod.command(
        sub, "keygen", "Make an operator key, which entityctl signs with (--key).",
        "entityd keygen ~/.config/entityd/alice.key")
    keygen.add_argument("path", type=Path, help="file to write the secret key to (0600)")
    keygen.set_defaults(handler=lambda a: _keygen(a.path))

    args_mod.command(sub, "federation",
                     "Make hub credentials and configs (its own --help lists them).",
                     "entityd federation hub-user entity-a --data-dir ~/entities/entity-a",
                     add_help=False)

    economy_cmd = args_mod.command(
        sub, "economy", "The ledger's operator side: make the LEDGER stream, and mint.",
        "entityd economy init --config ~/entities/entity-a/entityd.toml")
    economy.add_arguments(economy_cmd)
    economy_cmd.set_defaults(handler=economy.main)
    up.add_commands(sub)  # up, down, ps: a federation from one file
    return top


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["federation"]:
        from .. import federation

        return federation.main(argv[1:])
    try:
        args = parser().parse_args(argv)  # inside: a command's module may import a lot
        code: int = args.handler(args)
        return code
    except EntitydError as exc:
        print(f"entityd: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the daemon took over SIGINT: nothing to undo
        print("entityd: interrupted", file=sys.stderr)
        return 130


def _init(name: str, data_dir: Path, port: int) -> int:
    if not subjects.valid_name(name):
        print(
            f"entityd: name {name!r} must be 1-32 of lowercase letters, digits and '-'",
            file=sys.stderr,
        )
        return 2
    data_dir = data_dir.expanduser().resolve()
    data_dir.mkdir(parents=True, exist_ok=True)
    config_path = data_dir / config_mod.CONFIG_NAME
    if config_path.exists():
        print(f"entityd: {config_path} already exists; not overwriting it", file=sys.stderr)
        return 2
    key = identity.key_path(data_dir)
    if not key.exists():
        identity.create(data_dir)
    config_path.write_text(config_mod.STARTER.format(name=name, data_dir=data_dir, port=port))
    print(f"wrote {config_path}")
    print(f"key   {key} (public {identity.read_public(data_dir).hex()})")
    print(f"run:  entityd run --config {config_path}")
    return 0


# How `entityd run` ends. Python waits at exit for every non-daemon thread, and
# aiosqlite's connection threads (or a stuck executor thread) can outlive the event loop:
# a daemon that had given up would hang there for ever, with nothing for systemd to
# restart. So the process ends with os._exit once the logs are flushed, and a timer
# ends it anyway if the cleanup before that hangs.
FAILED_EXIT_WITHIN_S = 3.0  # from a fatal error to the exit, whatever the cleanup does
CLEANUP_WITHIN_S = 5.0  # asyncio.run's own cleanup after the daemon returned
FLUSH_WITHIN_S = 0.5


def _run(path: Path) -> NoReturn:
    """Run the daemon, then end the process with its code; never returns."""
    # Imported here, not at the top: Ctrl-C during this slow import is then answered by
    # main, with no traceback.
    from actors.assembly import StandardAssembly

    from ..daemon import EXIT_FAILED, EXIT_OK, Daemon

    cfg = config_mod.load(path)
    logs.configure(cfg.log.level, cfg.log.format)

    def give_up() -> None:  # called by the running daemon, so `daemon` is bound
        _exit_within(FAILED_EXIT_WITHIN_S, EXIT_FAILED, daemon)

    daemon = Daemon(cfg, StandardAssembly(cfg, os.environ), on_fatal=give_up)

    async def serve() -> int:
        nonlocal daemon
        code = await daemon.run()
        # A daemon that stopped to be started again (its store met a full disk and has
        # room again) is, with its config read again, as systemd would. No await
        # between here and the new daemon's signal handlers: no SIGTERM falls between.
        while code == EXIT_OK and daemon.restart_for and not daemon.signalled:
            cfg = config_mod.load(path)
            daemon = Daemon(cfg, StandardAssembly(cfg, os.environ), on_fatal=give_up)
            code = await daemon.run()
        _exit_within(CLEANUP_WITHIN_S, code, daemon)
        return code

    code = EXIT_FAILED
    try:
        code = loop.run(serve())
    except EntitydError as exc:  # refused before it started, e.g. the data dir is in use
        print(f"entityd: {exc}", file=sys.stderr)
        code = 2
    except KeyboardInterrupt:  # before the daemon took over SIGINT: nothing was started
        print("entityd: interrupted before start-up", file=sys.stderr)
        code = 130
    except BaseException:  # a bug of ours: its traceback, then the same bounded exit
        traceback.print_exc()
    _exit(code)


def _exit_within(seconds: float, code: int, daemon: Daemon) -> None:
    """Arm a timer that ends the process with `code` if it is still alive by then."""

    def force() -> None:
        pid = daemon.nats_server_pid
        if pid is not None:  # its death signal would do it too; do not leave it to chance
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGTERM)
        _exit(code, note=f"cleanup did not finish within {seconds:g} s")

    timer = threading.Timer(seconds, force)
    timer.daemon = True
    timer.start()


def _exit(code: int, note: str = "") -> NoReturn:
    """Flush the logs (for a bounded time: stderr may be a stuck pipe), then end the
    process at once, leaving behind any thread still running."""

    def flush() -> None:
        if note:
            logs.get("entityd.app.cli").error("entityd_exit_forced", code=code, reason=note)
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()

    flusher = threading.Thread(target=flush, name="exit-flush", daemon=True)
    flusher.start()
    flusher.join(FLUSH_WITHIN_S)
    os._exit(code)


def _keygen(path: Path) -> int:
    from nacl.signing import SigningKey

    key = SigningKey.generate()
    identity.write_key(path, key)
    print(f"wrote {path}")
    print(f"public key: {bytes(key.verify_key).hex()}")
    print('add it to the entity\'s config as:  [operators]  NAME = "<public key>"')
    return 0


if __name__ == "__main__":
    sys.exit(main())
