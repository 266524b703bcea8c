"""`entityctl`: drive a running entity over NATS with signed requests."""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from collections.abc import Callable, Coroutine
from pathlib import Path
from typing import Any

from actors.messages import (
    Goal,
    GoalAccepted,
    GoalCancel,
    GoalCancelled,
    History,
    HistoryGet,
    MemoryHits,
    MemorySearch,
    TodoAdd,
    TodoItems,
    TodoList,
)
from actors.web.messages import WebLink, WebLogin
from protocol import ProtocolError, Status, StatusGet

from .. import config as config_mod
from .. import logs, loop
from ..client import EntityClient, EntityDown
from ..errors import ActorDeadError, AskTimeout, EntitydError, RemoteError
from . import args as args_mod
from . import (
    ctl_a2a,
    ctl_ledger,
    ctl_mcp,
    ctl_moltbook,
    ctl_peers,
    ctl_services,
    ctl_watch,
    terminal,
)
from .args import command
from .ctl_peers import print_json
from .ctl_watch import render_progress

EXIT_REFUSED = 3
EXIT_UNREACHABLE = 4
EXIT_TASK_FAILED = 5
REPLY_TIMEOUT_S = 5.0
ASK_TIMEOUT_S = 1800.0

Command = Callable[[EntityClient, argparse.Namespace], Coroutine[Any, Any, int]]


def main(argv: list[str] | None = None) -> int:
    with terminal.safe_output():
        return _main(argv)


def _main(argv: list[str] | None) -> int:
    args = parser().parse_args(argv)
    logs.configure("error", "console")
    try:
        cfg = config_mod.load(args_mod.config_file(args.config))
        return loop.run(_run(cfg, args))
    except RemoteError as exc:
        print(f"entityctl: refused by {exc.src}: {exc.code}: {exc.message}", file=sys.stderr)
        return EXIT_REFUSED
    except (AskTimeout, ActorDeadError, TimeoutError) as exc:
        print(f"entityctl: {exc or 'timed out'}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except BrokenPipeError:  # `entityctl ... | head`: the reader has all it wanted
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # no error at exit
        return 0
    except EntityDown as exc:
        print(f"entityctl: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (ConnectionError, OSError) as exc:
        print(f"entityctl: cannot reach the entity's NATS server: {exc}", file=sys.stderr)
        return EXIT_UNREACHABLE
    except (EntitydError, ProtocolError) as exc:
        print(f"entityctl: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        note = getattr(args, "on_interrupt", "")
        print(f"entityctl: interrupted{'; ' + note if note else ''}", file=sys.stderr)
        return 130


def parser() -> argparse.ArgumentParser:
    top = argparse.ArgumentParser(prog="entityctl", description=__doc__)
    args_mod.add_config(top)
    args_mod.add_version(top)
    top.add_argument("--key", type=Path, default=None,
                     help="sign with this operator key instead of the entity's own")
    top.add_argument("--timeout", type=float, default=None,
                     help="seconds to wait for a reply (default 5; ask: for the whole "
                          "task, default 1800)")
    sub = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    status = command(sub, "status", "Show the entity's name, key, uptime, NATS server "
                     "and actors.", "entityctl status --json")
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(run=_status)

    ask = command(sub, "ask", "Give the entity a goal, stream its progress and print "
                  "the answer.", 'entityctl ask "write fib.py with a test"')
    ask.add_argument("text")
    ask.add_argument("--json", action="store_true", help="print the answer event as JSON")
    ask.add_argument("--conversation", default="", help="continue this conversation")
    ask.add_argument("--quiet", action="store_true", help="no progress lines")
    ask.set_defaults(run=_ask)

    task = command(sub, "task", "Give the entity a goal and return at once with its "
                   "task id.", 'entityctl task "tidy the README" && entityctl watch')
    task.add_argument("text")
    task.set_defaults(run=_task)

    cancel = command(sub, "cancel", "Cancel a goal: a queued one never starts, a running "
                     "turn stops where it is, with its coding task and sandbox commands "
                     "(exit 3 when the goal is unknown or answered already).",
                     "entityctl cancel 3f2a9c1b7d04 --reason 'not needed any more'")
    cancel.add_argument("task_id", metavar="TASK_ID", help="the task id `ask`, `task` or "
                        "`watch` showed")
    cancel.add_argument("--reason", default="", help="why, for the goal's answer")
    cancel.set_defaults(run=_cancel)

    memory = command(sub, "memory", "Search what the entity remembers.",
                     'entityctl memory search "unittest"')
    memory_sub = memory.add_subparsers(dest="memory_command", required=True)
    search = command(memory_sub, "search", "Search the entity's facts, lessons, "
                     "reflections and episodes, best first.",
                     'entityctl memory search "unittest" --limit 5')
    search.add_argument("text")
    search.add_argument("--limit", type=int, default=10)
    search.add_argument("--json", action="store_true")
    search.set_defaults(run=_memory_search)

    todo = command(sub, "todo", "Show the entity's todo list, or add to it.",
                   'entityctl todo --add "write a CHANGELOG"')
    todo.add_argument("--all", action="store_true", help="include done and dropped items")
    todo.add_argument("--add", metavar="TEXT", help="add an item")
    todo.add_argument("--json", action="store_true")
    todo.set_defaults(run=_todo)

    history = command(sub, "history", "Show the conversation log.",
                      "entityctl history --limit 10")
    history.add_argument("--conversation", default="")
    history.add_argument("--limit", type=int, default=30)
    history.add_argument("--json", action="store_true")
    history.set_defaults(run=_history)

    ctl_watch.add_commands(sub)
    web = command(sub, "web", "Print the entity's web page and a login link for it (good "
                  "once, for 5 minutes).", "entityctl web")
    web.add_argument("--json", action="store_true")
    web.set_defaults(run=_web)
    ctl_peers.add_commands(sub)
    ctl_ledger.add_commands(sub)
    ctl_services.add_commands(sub)
    ctl_moltbook.add_commands(sub)
    ctl_mcp.add_commands(sub)
    ctl_a2a.add_commands(sub)
    return top


async def _run(cfg: config_mod.Config, args: argparse.Namespace) -> int:
    command: Command = args.run
    args.timeout_given = args.timeout is not None
    if args.command != "ask":
        args.timeout = args.timeout or REPLY_TIMEOUT_S
    async with EntityClient(cfg, args.key, follows=getattr(args, "follows", False)) as client:
        return await command(client, args)


async def _status(client: EntityClient, args: argparse.Namespace) -> int:
    status: Status = await client.ask("health", StatusGet(), args.timeout)
    if args.json:
        print_json(status)
    else:
        print(render_status(status))
    return 0


async def _ask(client: EntityClient, args: argparse.Namespace) -> int:
    task_id = uuid.uuid4().hex[:12]
    timeout = args.timeout or ASK_TIMEOUT_S
    async with client.events() as events:
        accepted: GoalAccepted = await client.ask(
            "orchestrator", Goal(args.text, task_id, args.conversation, "ctl"), 10.0
        )
        args.on_interrupt = (f"the entity keeps task {accepted.task_id} and answers it; "
                             "see `entityctl history`")
        if not args.quiet and not args.json:
            ahead = f", {accepted.queued} ahead" if accepted.queued else ""
            print(f"task {accepted.task_id} accepted{ahead}", file=sys.stderr)
        async with asyncio.timeout(timeout):
            async for event in events:
                data = event.message.data
                if data.get("task_id") != task_id:
                    continue
                if event.message.type == "answer" and event.src.endswith("/orchestrator"):
                    if data.get("private"):
                        data = {**data, "text": await _private_answer(
                            client, args.conversation or task_id)}
                    return _print_answer(data, args.json)
                if not args.quiet and not args.json:
                    print(render_progress(event), file=sys.stderr)
    # The events ended: the connection to the entity is gone (it stopped or died). The
    # goal is kept by the entity and answered once it runs again, in its history.
    print(f"entityctl: lost the entity before task {task_id} was answered; it keeps the "
          f"task and answers it when it runs again: see `entityctl history`", file=sys.stderr)
    return EXIT_UNREACHABLE


async def _private_answer(client: EntityClient, conversation: str) -> str:
    """The answer of a turn that held a peer's words: its event carries no text (events
    cross the hub), so it comes from the entity's own log, over the local bus."""
    history: History = await client.ask("memory", HistoryGet(conversation, 10), 10.0)
    answers = [e.content for e in history.entries if e.role == "assistant"]
    return answers[-1] if answers else ""


def _print_answer(data: dict[str, Any], as_json: bool) -> int:
    if as_json:
        print_json(data)
    else:
        print(data.get("text", ""))
        changes = data.get("changes", [])
        for index, commit in enumerate(data.get("commits", [])):
            print(f"commit {commit}")
            if index < len(changes) and changes[index]:
                print(changes[index])
    return 0 if data.get("ok") else EXIT_TASK_FAILED


async def _task(client: EntityClient, args: argparse.Namespace) -> int:
    accepted: GoalAccepted = await client.ask("orchestrator", Goal(args.text), args.timeout)
    print(f"task {accepted.task_id} queued ({accepted.queued} ahead)")
    return 0


async def _cancel(client: EntityClient, args: argparse.Namespace) -> int:
    try:
        cancelled: GoalCancelled = await client.ask(
            "orchestrator", GoalCancel(args.task_id, args.reason), args.timeout)
    except RemoteError as exc:
        print(f"entityctl: task {args.task_id} not cancelled: {exc.code}: {exc.message}",
              file=sys.stderr)
        return EXIT_REFUSED
    if cancelled.was == "queued":
        print(f"task {cancelled.task_id} cancelled before it started")
    else:
        print(f"task {cancelled.task_id} cancelled: its turn was stopped")
    return 0


async def _memory_search(client: EntityClient, args: argparse.Namespace) -> int:
    hits: MemoryHits = await client.ask("memory", MemorySearch(args.text, args.limit),
                                        args.timeout)
    if args.json:
        print_json(hits)
        return 0
    if not hits.hits:
        print("(nothing found)")
    for hit in hits.hits:
        print(f"#{hit.id:<5} {hit.kind:<10} {hit.score:6.2f}  {hit.text}")
    return 0


async def _todo(client: EntityClient, args: argparse.Namespace) -> int:
    if args.add:
        await client.ask("memory", TodoAdd(args.add), args.timeout)
    items: TodoItems = await client.ask("memory", TodoList(args.all), args.timeout)
    if args.json:
        print_json(items)
        return 0
    if not items.items:
        print("(the todo list is empty)")
    for item in items.items:
        print(f"#{item.id:<4} {item.status:<8} p{item.priority:<3} {item.text}")
    return 0


async def _history(client: EntityClient, args: argparse.Namespace) -> int:
    history: History = await client.ask("memory", HistoryGet(args.conversation, args.limit),
                                        args.timeout)
    if args.json:
        print_json(history)
        return 0
    for entry in history.entries:
        when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(entry.created_at))
        print(f"{when} [{entry.conversation}] {entry.role}: {entry.content}")
    return 0


async def _web(client: EntityClient, args: argparse.Namespace) -> int:
    if not client.config.web.enabled:
        where = client.config.path or "its entityd.toml"
        print(f"entityctl: {client.config.name}'s web page is off: set enabled = true under "
              f"[web] in {where} and restart the entity", file=sys.stderr)
        return 2
    link: WebLink = await client.ask("web", WebLogin(), REPLY_TIMEOUT_S)
    if args.json:
        print_json(link)
        return 0 if link.url else EXIT_UNREACHABLE
    if not link.url:
        print(f"entityctl: {client.config.name}'s web page is not serving: {link.problem}",
              file=sys.stderr)
        return EXIT_UNREACHABLE
    print(f"{client.config.name}'s page: {link.url}")
    print(f"log in (the link works once, for {int(link.expires_in // 60)} minutes):")
    print(link.login)
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
    if status.sandbox:
        lines.append(f"sandbox:     {status.sandbox}")
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
