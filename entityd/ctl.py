"""`entityctl`: drive a running entity over NATS with signed requests."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import os
import sys
import time
from pathlib import Path

import nats.errors

from protocol import ProtocolError, Status, StatusGet

from . import config as config_mod
from . import logs
from .client import EntityClient
from .errors import ActorDeadError, AskTimeout, EntitydError, RemoteError

EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="entityctl", description=__doc__)
    parser.add_argument(
        "--config",
        type=Path,
        default=os.environ.get("ENTITYD_CONFIG"),
        help="the entity's entityd.toml (or $ENTITYD_CONFIG)",
    )
    parser.add_argument(
        "--key",
        type=Path,
        default=None,
        help="sign with this operator key instead of the entity's own",
    )
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds to wait for a reply")
    sub = parser.add_subparsers(dest="command", required=True)
    status = sub.add_parser("status", help="name, key, uptime, NATS server and actors")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    args = parser.parse_args(argv)
    if args.config is None:
        parser.error("--config is required (or set ENTITYD_CONFIG)")
    logs.configure("error", "console")
    try:
        cfg = config_mod.load(args.config)
        return asyncio.run(_status(cfg, args.key, args.timeout, args.json))
    except RemoteError as exc:
        print(f"entityctl: refused by {exc.src}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (AskTimeout, ActorDeadError) as exc:
        print(f"entityctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (nats.errors.NoServersError, OSError, TimeoutError) as exc:
        print(f"entityctl: cannot reach the entity's NATS server: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (EntitydError, ProtocolError) as exc:
        print(f"entityctl: {exc}", file=sys.stderr)
        return 2


async def _status(cfg: config_mod.Config, key: Path | None, timeout: float, as_json: bool) -> int:
    async with EntityClient(cfg, key) as client:
        status: Status = await client.ask("health", StatusGet(), timeout)
    if as_json:
        print(json.dumps(dataclasses.asdict(status), indent=2, sort_keys=True))
    else:
        print(render_status(status))
    return 0


def render_status(status: Status) -> str:
    started = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(status.started_at))
    lines = [
        f"entity:      {status.entity}",
        f"public key:  {status.public_key}",
        f"uptime:      {_duration(status.uptime_s)} (since {started})",
        f"nats server: {status.nats_server}",
        "actors:",
    ]
    width = max((len(a.name) for a in status.actors), default=5)
    for actor in status.actors:
        lines.append(f"  {actor.name:<{width}}  {actor.state:<10}  restarts {actor.restarts}")
    if status.rejected:
        counts = ", ".join(f"{k} {v}" for k, v in sorted(status.rejected.items()))
        lines.append(f"rejected:    {counts}")
    return "\n".join(lines)


def _duration(seconds: float) -> str:
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    return " ".join([*parts, f"{hours:02d}:{minutes:02d}:{s:02d}"])


if __name__ == "__main__":
    sys.exit(main())
