"""entityctl's federation commands: peers, check, talk, report, wake, restart, delegate,
tasks. Each asks the entity's own peer actor, which does the work and answers with an
outcome (but `wake` with no peer asks the entity's own orchestrator); the exit code
says how it went (0 done, 2 unknown peer, 3 refused, 4 not reachable or no answer in
time)."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import sys
import time
from typing import Any

from actors.messages import Wake, WakeResult
from actors.peer.messages import (
    PeerCheck,
    PeerCheckResult,
    PeerDelegate,
    PeerReport,
    PeerRestart,
    Peers,
    PeersGet,
    PeerTalk,
    PeerWake,
    Tasks,
    TaskSettle,
    TasksGet,
)
from actors.peer.outcomes import Verdict, verdict

from ..client import EntityClient
from . import args as args_mod
from .args import command

EXIT_UNKNOWN = 2
EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXITS = {Verdict.DONE: 0, Verdict.UNKNOWN: EXIT_UNKNOWN, Verdict.REFUSED: EXIT_REFUSED,
         Verdict.UNREACHABLE: EXIT_UNREACHABLE}
MARGIN_S = 10.0
REPLY_S = 5.0
FINAL = ("delivered", "completed", "failed", "rejected")


def add_commands(sub: Any) -> None:
    peers = command(sub, "peers", "List the entities this one knows: keys, heartbeat, "
                    "trust.", "entityctl peers --json")
    peers.add_argument("--json", action="store_true")
    peers.set_defaults(run=_peers)

    check = command(sub, "check", "Check that a peer is alive (check_peer_alive): "
                    "heartbeat and a signed ping.", "entityctl check entity-b")
    check.add_argument("peer")
    check.add_argument("--json", action="store_true")
    check.set_defaults(run=_check)

    talk = command(sub, "talk", "Say something to a peer (talk_to_peer) and print its "
                   "answer.", 'entityctl talk entity-b "what are you working on?"')
    talk.add_argument("peer")
    talk.add_argument("text")
    talk.add_argument("--json", action="store_true")
    talk.set_defaults(run=_talk)

    report = command(sub, "report", "Report to a peer (report_to_peer): durable, fire "
                     "and forget.", 'entityctl report entity-b "build is green"')
    report.add_argument("peer")
    report.add_argument("text")
    report.add_argument("--json", action="store_true")
    report.set_defaults(run=_report)

    wake = command(sub, "wake", "Wake this entity, or a peer (wake_up_peer): it starts a "
                   "turn on its todo list if it is idle.",
                   "entityctl wake\nentityctl wake entity-b --reason \"the build broke\"")
    wake.add_argument("peer", nargs="?", default="", help="a peer (default: this entity)")
    wake.add_argument("--reason", default="")
    wake.add_argument("--json", action="store_true")
    wake.set_defaults(run=_wake)

    restart = command(sub, "restart", "Have a peer's supervisor restart one actor, or all "
                      "(restart_peer).", "entityctl restart entity-b memory")
    restart.add_argument("peer")
    restart.add_argument("actor", nargs="?", default="")
    restart.add_argument("--json", action="store_true")
    restart.set_defaults(run=_restart)

    delegate = command(sub, "delegate", "Offer a task to a peer; --wait follows it to "
                       "its end.", 'entityctl delegate entity-b "Write calc.add with a '
                       'test" --price 10 --wait')
    delegate.add_argument("peer")
    delegate.add_argument("title", help="the task, in a line")
    delegate.add_argument("--description", default="", help="details (default: the title)")
    delegate.add_argument("--deliverables", default="")
    delegate.add_argument("--deadline", type=args_mod.duration, default=0.0,
                          help="from now: seconds, or 90s, 30m, 2h (default: "
                          "peers.delegation_timeout)")
    delegate.add_argument("--price", type=int, default=0,
                          help="pay the peer this much for the task: held in escrow from "
                          "now, paid when you accept the delivery (`tasks accept`)")
    delegate.add_argument("--capability", action="append", default=[],
                          help="a capability the peer must offer (repeatable)")
    delegate.add_argument("--wait", action="store_true",
                          help="wait until the task is delivered, failed or rejected")
    delegate.add_argument("--json", action="store_true")
    delegate.set_defaults(run=_delegate)

    tasks = command(sub, "tasks", "List delegated tasks, both ways, with their state and "
                    "money; `tasks accept|reject TASK` settles a delivered one (reject "
                    "before the delivery withdraws the task).",
                    "entityctl tasks\nentityctl tasks accept TASK")
    tasks.add_argument("action", nargs="?", choices=["accept", "reject"])
    tasks.add_argument("task", nargs="?", default="")
    tasks.add_argument("--amount", type=int, default=0,
                       help="accept: pay this much of the escrow (default: the price)")
    tasks.add_argument("--reason", default="", help="reject: why")
    tasks.add_argument("--json", action="store_true")
    tasks.set_defaults(run=_tasks)


def _timeout(args: argparse.Namespace, seconds: float) -> float:
    """--timeout if given, else the peer actor's own limit and a margin."""
    return float(args.timeout) if args.timeout_given else seconds + MARGIN_S


def print_json(value: Any) -> None:
    """Any result as JSON: records (dataclasses), lists of them, plain values."""
    print(json.dumps(_plain(value), indent=2, sort_keys=True, default=str))


def _plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.asdict(value)
    if isinstance(value, list):
        return [_plain(v) for v in value]
    return value


def _outcome_exit(outcome: Any, as_json: bool) -> int:
    if as_json:
        print_json(outcome)
    else:
        latency = f" in {outcome.latency_ms:.0f} ms" if outcome.latency_ms else ""
        print(f"{outcome.peer}: {outcome.code}{latency}\n{outcome.text}")
    return EXITS[verdict(outcome.ok, outcome.code)]


async def _peers(client: EntityClient, args: argparse.Namespace) -> int:
    peers: Peers = await client.ask("peer", PeersGet(), args.timeout)
    if args.json:
        print_json(peers.peers)
        return 0
    if not peers.peers:
        print("(no peers known yet: none has sent a heartbeat)")
    now = time.time()
    for p in peers.peers:
        seen = f"{now - p.last_seen:.0f} s ago" if p.last_seen else "never"
        print(f"{p.name:<20} {'present' if p.present else 'absent':<8} heartbeat {seen:<12} "
              f"key {p.public_key[:16]}... ({p.pinned_by})  may: {', '.join(p.trust) or '-'}"
              f"  offers: {', '.join(p.capabilities) or '-'}")
    return 0


async def _check(client: EntityClient, args: argparse.Namespace) -> int:
    result = await client.ask("peer", PeerCheck(args.peer),
                              _timeout(args, client.config.peers.ping_timeout))
    if not isinstance(result, PeerCheckResult):
        return _outcome_exit(result, args.json)
    if args.json:
        print_json(result)
    else:
        latency = f" {result.latency_ms:.1f} ms" if result.state == "alive" else ""
        print(f"{result.peer}: {result.state}{latency}\n{result.detail}")
    if result.state == "unknown":
        return EXIT_UNKNOWN
    return 0 if result.state == "alive" else EXIT_UNREACHABLE


async def _talk(client: EntityClient, args: argparse.Namespace) -> int:
    wait = client.config.peers.talk_timeout
    outcome = await client.ask("peer", PeerTalk(args.peer, args.text),
                               _timeout(args, wait))
    return _outcome_exit(outcome, args.json)


async def _report(client: EntityClient, args: argparse.Namespace) -> int:
    outcome = await client.ask("peer", PeerReport(args.peer, args.text),
                               _timeout(args, 5.0))
    return _outcome_exit(outcome, args.json)


async def _wake(client: EntityClient, args: argparse.Namespace) -> int:
    if not args.peer:
        return await _wake_self(client, args)
    outcome = await client.ask("peer", PeerWake(args.peer, args.reason),
                               _timeout(args, client.config.peers.command_timeout))
    return _outcome_exit(outcome, args.json)


async def _wake_self(client: EntityClient, args: argparse.Namespace) -> int:
    """The same Wake the peer actor sends for a peer's wake_up_peer, from entityctl."""
    result: WakeResult = await client.ask(
        "orchestrator", Wake(args.reason or "woken by its operator"), args.timeout)
    if args.json:
        print_json(result)
    elif result.started:
        print(f"{client.config.name}: started task {result.task_id} on its todo list")
    else:
        print(f"{client.config.name}: noop: {result.reason}")
    return 0


async def _restart(client: EntityClient, args: argparse.Namespace) -> int:
    outcome = await client.ask("peer", PeerRestart(args.peer, args.actor),
                               _timeout(args, client.config.peers.command_timeout))
    return _outcome_exit(outcome, args.json)


async def _delegate(client: EntityClient, args: argparse.Namespace) -> int:
    outcome = await client.ask("peer", PeerDelegate(
        args.peer, args.title, args.description or args.title, args.deliverables,
        args.deadline, list(args.capability), args.price),
        _timeout(args, client.config.economy.append_timeout))
    if not outcome.ok or not args.wait:
        return _outcome_exit(outcome, args.json)
    print(f"task {outcome.id} offered to {args.peer}; waiting", flush=True)
    deadline = args.deadline or client.config.peers.delegation_timeout
    async with asyncio.timeout(deadline + MARGIN_S):
        while True:
            tasks: Tasks = await client.ask("peer", TasksGet(), REPLY_S)
            task = next(t for t in tasks.tasks
                        if t.task_id == outcome.id and t.direction == "out")
            if task.state in FINAL:
                break
            await asyncio.sleep(1.0)
    if args.json:
        print_json(task)
    else:
        where = (f" on branch {task.branch}" if task.branch else
                 " (no code changes came back)" if task.state == "delivered" else "")
        print(f"{task.task_id}: {task.state}{where}" + (f"\n{task.note}" if task.note else ""))
    return 0 if task.state == "delivered" else EXIT_REFUSED



async def _tasks(client: EntityClient, args: argparse.Namespace) -> int:
    if args.action:
        if not args.task:
            print(f"entityctl: tasks {args.action} needs the TASK id", file=sys.stderr)
            return 2
        outcome = await client.ask("peer", TaskSettle(
            args.task, args.action == "accept", args.amount, args.reason),
            _timeout(args, client.config.economy.append_timeout))
        return _outcome_exit(outcome, args.json)
    tasks: Tasks = await client.ask("peer", TasksGet(), args.timeout)
    if args.json:
        print_json(tasks.tasks)
        return 0
    if not tasks.tasks:
        print("(no delegated tasks)")
    for t in tasks.tasks:
        way = f"to {t.peer}" if t.direction == "out" else f"from {t.peer}"
        branch = f"  branch {t.branch}" if t.branch else ""
        money = f"  {t.price} {t.money}" if t.price else ""
        print(f"{t.task_id}  {way:<22} {t.state:<10} {t.title}{branch}{money}")
        if t.note:
            print(f"    {t.note[:300]}")
    return 0
