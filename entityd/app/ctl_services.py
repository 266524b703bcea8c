"""entityctl's services commands: `services` lists the services the workspace's
services.toml declares, `services logs NAME` prints one's newest output, `services
restart NAME` starts a fresh revision and waits until it is ready. Each asks the entity's
own services actor. Exit codes: 0 done, 2 no such service, 3 the restart failed (its
reason and output are printed), 4 the entity could not be reached."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from actors.services.messages import (
    LOGS_DEFAULT,
    LOGS_MAX,
    NO_SUCH_SERVICE,
    ServiceLogs,
    ServiceLogsGet,
    ServiceRestart,
    ServiceResult,
    Services,
    ServicesGet,
)

from ..client import EntityClient
from .args import command
from .ctl_peers import EXIT_REFUSED, print_json

EXIT_UNKNOWN = 2
RESTART_MARGIN_S = 15.0


def add_commands(sub: Any) -> None:
    services = command(
        sub, "services", "List the entity's services (services.toml in its workspace): "
        "state, revision, preview URL, restarts; or print one's logs, or restart one.",
        "entityctl services --json\nentityctl services logs web --bytes 4096\n"
        "entityctl services restart web")
    services.add_argument("action", nargs="?", choices=["logs", "restart"])
    services.add_argument("name", nargs="?", default="", help="the service (logs, restart)")
    services.add_argument("--bytes", type=int, default=LOGS_DEFAULT,
                          help=f"logs: the newest this many bytes (at most {LOGS_MAX})")
    services.add_argument("--revision", default="",
                          help="logs: of this revision (default: the serving one)")
    services.add_argument("--json", action="store_true")
    services.set_defaults(run=_services)


async def _services(client: EntityClient, args: argparse.Namespace) -> int:
    if args.action and not args.name:
        print(f"entityctl: services {args.action} needs the service's NAME", file=sys.stderr)
        return 2
    if args.action == "logs":
        return await _logs(client, args)
    if args.action == "restart":
        return await _restart(client, args)
    answer: Services = await client.ask("services", ServicesGet(), args.timeout)
    if args.json:
        print_json(answer)
        return 0
    if answer.problem:
        print(f"problem: {answer.problem}")
    if not answer.services:
        where = client.config.services.file
        print(f"(no services: none is declared in {where} at the workspace's HEAD)")
    for s in answer.services:
        revision = s.revision or "-"
        pending = f"  ({s.pending} starting)" if s.pending else ""
        print(f"{s.name:<20} {s.state:<10} {revision:<16} {s.url or '-':<28} "
              f"restarts {s.restarts}{pending}")
        if s.last_error:
            print(f"    {s.last_error[:500]}")
    return 0


async def _logs(client: EntityClient, args: argparse.Namespace) -> int:
    answer = await client.ask("services", ServiceLogsGet(
        args.name, max(1, min(args.bytes, LOGS_MAX)), args.revision), args.timeout)
    if isinstance(answer, ServiceResult):
        return _result(answer, args.json)
    assert isinstance(answer, ServiceLogs)
    if args.json:
        print_json(answer)
        return 0
    if not answer.revision:
        print(f"({answer.name} has no output yet)", file=sys.stderr)
        return 0
    cut = f", {answer.cut} earlier bytes not shown" if answer.cut else ""
    print(f"== {answer.name} {answer.revision}{cut}", file=sys.stderr)
    sys.stdout.write(answer.text)
    if answer.text and not answer.text.endswith("\n"):
        sys.stdout.write("\n")
    return 0


async def _restart(client: EntityClient, args: argparse.Namespace) -> int:
    wait = client.config.services.ready_timeout + RESTART_MARGIN_S
    answer: ServiceResult = await client.ask(
        "services", ServiceRestart(args.name),
        float(args.timeout) if args.timeout_given else wait)
    return _result(answer, args.json)


def _result(answer: ServiceResult, as_json: bool) -> int:
    if as_json:
        print_json(answer)
    else:
        print(f"{answer.code}: {answer.text}")
    if answer.ok:
        return 0
    return EXIT_UNKNOWN if answer.code == NO_SUCH_SERVICE else EXIT_REFUSED
