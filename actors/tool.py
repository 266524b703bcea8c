"""The tool actor: the only place the entity's side effects happen.

It answers `tool_call` with `tool_result` (a refusal or failure is ok=false with an error
for the model to read, never a crash) and `tool_specs_get` with the OpenAI function
schemas, and publishes an audit event `call` for every call. The Moltbook tools
(actors/moltbook) answer beside the mailbox (a call may wait for Moltbook's limits), for
the orchestrator and entityctl only, and are offered to the orchestrator when a key is.
The MCP tools (actors/mcp) answer beside the mailbox too (each call starts its server in
the sandbox), for the orchestrator and the coder, and entityctl lists and approves them.

A call works in the workspace it names (`ToolCall.workspace`): the entity's own, or the
one of the tasks a peer delegated here, made at its first call (`Config.workspace_of`);
each has its own confinement, shell and quota, and no call sees another's files.

A workspace's calls run one at a time in arrival order, each beside the mailbox (a FIFO
lock per workspace keeps the order; calls in different workspaces do not wait for each
other, so a peer's long command never holds up the entity's own tools), so that nothing
waits behind a long shell command in the mailbox: a
`turn_cancel` from the orchestrator, sent when it stops a turn, is handled at once, and a
shell command running (or still waiting for its turn) for the orchestrator or the coder
is killed (its process group, as at its timeout) and answered as cancelled.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from entityd import Actor, Config, Later
from protocol import Envelope, Error, reasons

from .mcp import McpApprove, McpApproved, McpList, McpListing
from .mcp.tools import McpTools
from .messages import ToolCall, ToolResult, ToolSpecs, ToolSpecsGet, TurnCancel
from .moltbook import MoltbookTools
from .sandbox import (
    BadArguments,
    Confinement,
    FileLimits,
    FileTools,
    SandboxUnavailable,
    Shell,
    ToolError,
    check_args,
    classify,
    prepare,
    tool_specs,
)
from .sandbox.cgroup import MiB, SharedLimits
from .workspaces import peer_root

MAX_COMMAND = 100_000  # characters in one shell command line
GROWING_TOOLS = frozenset({"write_file", "str_replace"})  # checked against the quota first
SUMMARY_LIMIT = 160
MAX_ERROR = 2000  # characters of an error message sent back (it may quote the arguments)
MAX_TOOL_NAME = 64  # characters of an unknown tool's name kept in events and logs
_SECRETS = [
    (re.compile(r"\b(sk|pk|rk)-[A-Za-z0-9_\-]{6,}"), r"\1-***"),
    (re.compile(r"(?i)\b([A-Z0-9_]*(?:KEY|TOKEN|SECRET|PASSWORD|PASSWD)[A-Z0-9_]*)=\S+"),
     r"\1=***"),
    (re.compile(r"(?i)(authorization:\s*\w+\s+)\S+"), r"\1***"),
]


@dataclass
class Space:
    """One workspace the tools work in."""

    root: Path
    confinement: Confinement
    files: FileTools
    shell: Shell
    ready: bool = False  # created, handed to the sandbox's uid, its shell probed


class ToolActor(Actor):
    name = "tool"
    accepts = (ToolCall, ToolSpecsGet, McpList, McpApprove, TurnCancel)
    # Whose shell commands a turn's cancel kills: the orchestrator's and its coder's.
    TURN_ACTORS = ("orchestrator", "coder")

    def __init__(self, config: Config, limits: SharedLimits | None = None) -> None:
        self.config = config
        self.settings = config.sandbox
        self.limits = limits
        self.root = Path(os.path.realpath(config.workspace_dir))
        own = self._space(self.root)
        # The workspaces by the peer whose tasks work there ("": the entity's own).
        self.spaces: dict[str, Space] = {"": own}
        self.workspace, self.files, self.shell = own.confinement, own.files, own.shell
        self.unavailable = _contains(self.root, config.data_dir)
        self.moltbook = MoltbookTools(config)
        self.mcp = McpTools(config, limits)
        # Each workspace's calls, one at a time, in arrival order; workspaces apart, so
        # one peer's long command (or its workspace's first preparation) never holds up
        # the entity's own tools or another peer's.
        self._orders: dict[str, tuple[asyncio.Lock, int]] = {}  # lock, its calls
        # Shell calls not yet answered (running, or waiting for the lock): their callers.
        self._shells: dict[asyncio.Future[ToolResult], str] = {}
        self._cancelling: set[asyncio.Future[ToolResult]] = set()

    async def on_start(self) -> None:
        if self.mcp.problem:
            self.ctx.log.error("mcp_unavailable", reason=self.mcp.problem)
        if not self.unavailable:
            try:
                left = await asyncio.to_thread(prepare, self.root, self.workspace.owner)
            except OSError as exc:
                self.unavailable = f"cannot prepare the workspace {self.root}: {exc.strerror}"
            else:
                if left:
                    self.ctx.log.warning("workspace_partly_prepared", left=left)
        if self.unavailable:
            self.ctx.log.error("tool_unavailable", reason=self.unavailable)
            await self.ctx.emit("sandbox", available=False, reason=self.unavailable, shell=False)
            return
        reason = await self.shell.probe()
        self.spaces[""].ready = True
        await self.ctx.emit("sandbox", available=True, shell=reason is None, reason=reason or "",
                            workspace=str(self.root), missing_hardening=list(self.shell.missing),
                            limits=self.shell.limits.description)

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case ToolCall() as call if self.moltbook.owns(call.tool) or self.mcp.owns(call.tool):
                return Later(self.call(call, envelope.src))
            case ToolCall() as call:
                # Beside the mailbox, so that a long shell command never keeps the actor
                # from a cancel (or anything else); in arrival order all the same: each
                # call's task is made now and takes the FIFO lock at its first step.
                work = asyncio.ensure_future(self._in_order(call))
                if call.tool == "shell":  # known at once, for a cancel right behind it
                    self._shells[work] = envelope.src
                    work.add_done_callback(self._shell_done)
                return Later(self._answer(work, call))
            case TurnCancel() if envelope.src == f"{self.ctx.entity}/orchestrator":
                turn = {f"{self.ctx.entity}/{actor}" for actor in self.TURN_ACTORS}
                for task, src in self._shells.items():
                    if src in turn and task not in self._cancelling:
                        self._cancelling.add(task)
                        task.cancel()
                return None
            case TurnCancel():
                return Error(reasons.NOT_ALLOWED, "only the orchestrator cancels a turn's "
                             "shell commands")
            case ToolSpecsGet() if self.mcp.servers:  # may list the servers first
                return Later(self.specs(envelope.src))
            case ToolSpecsGet():
                return ToolSpecs(tools=tool_specs() + self.moltbook.specs(envelope.src))
            case McpList() if _from_ctl(envelope.src, self.ctx.entity):
                return Later(self.mcp.listing())
            case McpList():
                return McpListing(problem="the MCP servers are listed for entityctl only")
            case McpApprove() as approve if _from_ctl(envelope.src, self.ctx.entity):
                return Later(self.mcp.approve(approve.server))
            case McpApprove() as approve:
                return McpApproved(approve.server, error="only entityctl approves MCP tools")
            case _:
                raise TypeError(f"tool does not handle {envelope.typ}")

    def _space(self, root: Path, peer: str = "") -> Space:
        settings = self.config.sandbox_of(peer)
        owner = (settings.uid, settings.gid) if os.geteuid() == 0 else None
        confinement = Confinement(root, owner)
        files = FileTools(confinement, FileLimits(
            max_file_bytes=settings.file_size_mb * 1024 * 1024,
            output_limit=settings.output_limit,
        ))
        return Space(root, confinement, files, Shell(settings, root, self.limits))

    async def _space_of(self, peer: str) -> Space:
        """The workspace a call names, made ready at its first call."""
        space = self.spaces.get(peer)
        if space is None:
            try:
                root = await asyncio.to_thread(peer_root, self.config, peer)
            except ValueError as exc:
                raise BadArguments(f"no such workspace: {exc}") from None
            space = self.spaces.setdefault(peer, self._space(root, peer))
        if not space.ready:
            try:
                left = await asyncio.to_thread(prepare, space.root, space.confinement.owner)
            except OSError as exc:
                raise ToolError(f"cannot prepare the workspace of {peer}'s tasks: "
                                f"{exc.strerror}") from None
            if left:
                self.ctx.log.warning("workspace_partly_prepared", left=left, peer=peer)
            await space.shell.probe()
            space.ready = True
        return space

    async def _in_order(self, call: ToolCall) -> ToolResult:
        name = call.workspace
        lock, users = self._orders.get(name) or (asyncio.Lock(), 0)
        self._orders[name] = (lock, users + 1)
        try:
            async with lock:
                return await self.call(call)
        finally:
            # Kept while a call holds or waits for it, so a name never makes a lasting
            # entry (one no workspace has is refused inside, by `_space_of`).
            lock, users = self._orders[name]
            if users == 1:
                del self._orders[name]
            else:
                self._orders[name] = (lock, users - 1)

    def _shell_done(self, work: asyncio.Future[ToolResult]) -> None:
        self._shells.pop(work, None)  # (`_cancelling` is `_answer`'s to clear: it reads it)

    async def _answer(self, work: asyncio.Future[ToolResult], call: ToolCall) -> ToolResult:
        """The call's result; a shell call a turn's cancel killed (running, or still
        waiting for its turn) is answered as cancelled."""
        try:
            return await work
        except asyncio.CancelledError:
            current = asyncio.current_task()
            if work not in self._cancelling or (current is not None and current.cancelling()):
                raise  # the actor stops: not a turn's cancel
            await self.ctx.emit("call", tool="shell", caller=call.caller[:MAX_TOOL_NAME],
                                ok=False, cancelled=True,
                                **({"private": True} if call.private else
                                   {"summary": "shell call killed: its turn was cancelled"}))
            return ToolResult(ok=False, error="cancelled: the turn it ran for was "
                              "cancelled; the command and everything it started were killed")
        finally:
            self._cancelling.discard(work)

    async def specs(self, src: str) -> ToolSpecs:
        return ToolSpecs(tools=tool_specs() + self.moltbook.specs(src)
                         + await self.mcp.specs(src))

    async def call(self, call: ToolCall, src: str = "") -> ToolResult:
        started = time.monotonic()
        tool = call.tool if len(call.tool) <= MAX_TOOL_NAME else call.tool[:MAX_TOOL_NAME] + "..."
        moltbook = self.moltbook.owns(call.tool)
        mcp = self.mcp.owns(call.tool)
        try:
            if moltbook:  # needs no workspace; refuses and answers by itself
                result = await self.moltbook.call(call, src, self.ctx.emit)
            elif mcp:  # the server runs in a directory of its own, not the workspace
                result = await self.mcp.call(call, src)
            elif self.unavailable:
                raise ToolError(f"tools are unavailable: {self.unavailable}")
            else:
                args = check_args(call.tool, call.args)
                result = await self.dispatch(call.tool, args, await self._space_of(call.workspace))
        except ToolError as exc:
            result = ToolResult(ok=False, error=str(exc))
        except Exception as exc:
            # A bug of ours, not the agent's doing; the agent still gets an answer (its
            # arguments must never be able to crash the actor), and the bug is logged.
            self.ctx.log.error("tool_failed", tool=tool, error_type=type(exc).__name__,
                               error=repr(exc)[:MAX_ERROR], exc_info=exc)
            result = ToolResult(ok=False, error=f"{tool} failed: an internal error "
                                f"({type(exc).__name__}) in the tool actor; it was logged")
        result = _sendable(result)
        duration_ms = round((time.monotonic() - started) * 1000)
        if moltbook:
            summary = self.moltbook.summary(call.tool, result)
        elif mcp:
            summary = self.mcp.summary(call.tool, result)
        else:
            summary = summarize(call.tool, call.args, result)
        if call.private:  # events cross the hub; a peer's work stays in the local log
            self.ctx.log.info("tool_call", tool=tool, caller=call.caller[:MAX_TOOL_NAME],
                              ok=result.ok, duration_ms=duration_ms, summary=summary)
        await self.ctx.emit(
            "call", tool=tool, caller=call.caller[:MAX_TOOL_NAME], ok=result.ok,
            duration_ms=duration_ms,
            **({"private": True} if call.private else {"summary": summary}),
        )
        return result

    async def dispatch(self, tool: str, args: dict[str, Any], space: Space) -> ToolResult:
        if tool == "shell":
            return await self.run_shell(args["command"], space.shell)
        if tool in GROWING_TOOLS:
            await self._room_for(args, space)
        method = getattr(space.files, tool)
        output, data = await asyncio.to_thread(method, **args)
        return ToolResult(ok=True, output=output, data=data)

    async def _room_for(self, args: dict[str, Any], space: Space) -> None:
        """Refuse a write that would take the workspace past its disk quota (the shell's
        runs are bounded apart: actors/sandbox/shell.py)."""
        found = await space.shell.scan()
        grows = len(str(args.get("content", args.get("new", ""))).encode())
        if grows > space.shell.room(found):
            raise ToolError(f"the workspace holds {found.bytes // MiB} MiB of its disk quota "
                            f"of {space.shell.settings.workspace_mb} MiB: no room for this "
                            "write; remove files to make room")

    async def run_shell(self, command: str, shell: Shell) -> ToolResult:
        if len(command) > MAX_COMMAND:
            raise BadArguments(f"the command is {len(command)} characters; the limit is "
                               f"{MAX_COMMAND} (write a script file and run it)")
        if "\x00" in command:
            raise BadArguments("the command contains a NUL byte, which no program can be given")
        if shell.unavailable:
            raise SandboxUnavailable(shell.unavailable)
        # Off the loop: bashlex takes ~10-100 us a character (more on long pipelines), so
        # a command near MAX_COMMAND would stall every actor of the daemon for seconds.
        verdict = await asyncio.to_thread(classify, command)
        network = verdict.wants_network(shell.settings.network_commands)
        run = await shell.run(command, network=network)
        data: dict[str, Any] = {
            "exit_code": run.exit_code, "timed_out": run.timed_out, "cut_bytes": run.cut_bytes,
            "network": network, "duration_ms": round(run.duration * 1000),
            "over_quota": run.over_quota, "oom_killed": run.oom_killed,
            "tasks_refused": run.tasks_refused,
        }
        if run.timed_out:
            error = (f"timed out after {self.settings.timeout:g} s; the command and everything "
                     "it started were killed")
        elif run.over_quota:
            error = (f"killed: the workspace grew past its disk quota of "
                     f"{shell.settings.workspace_mb} MiB")
        elif run.exit_code != 0:
            error = f"exit code {run.exit_code}"
            if run.oom_killed:
                error += "; the call reached its memory limit and the kernel killed in it"
        else:
            error = ""
        return ToolResult(ok=not error, output=run.output, error=error, data=data)


def _sendable(result: ToolResult) -> ToolResult:
    """`result` as a reply can carry it: its error clipped (it may quote a huge argument)
    and no lone surrogates (file names that are not UTF-8) left in its text."""
    error = result.error
    if len(error) > MAX_ERROR:
        error = error[:MAX_ERROR] + f" [... {len(error) - MAX_ERROR} characters cut]"
    output = _utf8(result.output)
    error = _utf8(error)
    if output is result.output and error is result.error:
        return result
    return ToolResult(ok=result.ok, output=output, error=error, data=result.data)


def _utf8(text: str) -> str:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text



def summarize(tool: str, args: dict[str, Any], result: ToolResult) -> str:
    """One line for the audit event: what was asked, never file contents or secrets."""
    def arg(name: str) -> str:
        value = args.get(name)
        return value if isinstance(value, str) else ""

    if tool == "shell":
        first, *rest = arg("command").strip().splitlines() or [""]
        text = f"$ {first}" + (f" [+{len(rest)} more lines]" if rest else "")
    elif tool == "read_file":
        span = ""
        if "start_line" in args or "end_line" in args:
            span = f" lines {args.get('start_line', 1)}-{args.get('end_line', 'end')}"
        text = f"read {arg('path')}{span}"
    elif tool == "write_file":
        text = f"write {arg('path')} ({len(arg('content').encode())} bytes)"
    elif tool == "str_replace":
        text = f"edit {arg('path')}"
    elif tool == "list_dir":
        text = f"list {arg('path') or '.'}"
    elif tool == "glob":
        text = f"glob {arg('pattern')}"
    elif tool == "grep":
        text = f"grep {arg('pattern')!r} in {arg('path') or '.'}"
    else:
        text = f"unknown tool {tool!r}"
    if not result.ok:
        text += f" -> {result.error}"
    # Cut before redacting, as the patterns below are not linear on a megabyte of one word;
    # far enough out that a secret starting within the summary still matches and is masked.
    text = " ".join(text.split())[: SUMMARY_LIMIT * 8]
    for pattern, replacement in _SECRETS:
        text = pattern.sub(replacement, text)
    return text if len(text) <= SUMMARY_LIMIT else text[: SUMMARY_LIMIT - 3] + "..."


def _from_ctl(src: str, entity: str) -> bool:
    return src == f"{entity}/ctl"


def _contains(workspace: Path, data_dir: Path) -> str:
    """Why the workspace may not be used: it must not hold the data dir (the keys)."""
    data = Path(os.path.realpath(data_dir))
    if data == workspace or workspace in data.parents:
        return (f"the workspace {workspace} contains the data dir {data} (keys); configure a "
                "workspace inside or beside the data dir, never above it")
    return ""
