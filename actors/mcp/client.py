"""One session with a configured MCP server, started for it in the shell tool's sandbox.

The server runs under the sandbox's rules (actors/sandbox/shell.py): the unprivileged uid,
bwrap with no network, a cleared environment (only what `env` adds), rlimits, a cgroup of
its own, and a wall-clock limit (sandbox.timeout) on the whole session. Its working
directory is a directory of its own, DATA_DIR/mcp/NAME, mounted read-only at /workspace: no
workspace, no data dir, no keys; host paths it needs (a virtualenv) are mounted
read-only when the config lists them under `read_only`. What it writes goes to the
sandbox's /tmp (a tmpfs of sandbox.memory_mb, gone with the session): a server that
could write its directory would fill the data dir's disk a session at a time, and
could rewrite its own code after the operator approved its tools.

A session lasts one listing or one call: each call starts the server anew, so the
definitions checked against the pins are the ones of the process that runs the call.
The `mcp` SDK's stdio client spawns the process; it is given the sandbox's command line.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from entityd import McpServer, SandboxSection

from ..sandbox import Shell, ToolError
from ..sandbox.cgroup import SharedLimits
from ..sandbox.paths import WORKSPACE_MOUNT
from ..sandbox.shell import HOST_ENV

if TYPE_CHECKING:  # the SDK (half a second to import) only once a server is used
    from mcp import ClientSession

STDERR_TAIL = 600  # characters of the server's stderr quoted when it fails
STDERR_KEPT = 64 * 1024  # bytes of the end of its stderr the daemon keeps meanwhile
STDERR_WAIT_S = 1.0  # for the rest of a failed server's stderr to arrive
# What one session of a server may send the daemon, in all (a tool listing, a result):
# the SDK reads a line without bound and parses whatever it gets, so a server could
# otherwise make the daemon hold what it likes. Past it the server's output ends there
# (in the sandbox, before the daemon reads it) and the session fails.
SESSION_BYTES = 4 * 1024 * 1024
MAX_TOOLS = 512  # tools one server may list
# Inside the sandbox: the server, its standard output cut at SESSION_BYTES.
# (dd hands on each read at once; head -c would wait for a full buffer.)
_CAPPED = f'"$@" | dd bs=65536 iflag=count_bytes count={SESSION_BYTES} status=none'



class ServerUnavailable(ToolError):
    """The server could not be started, listed or called."""


@dataclass(frozen=True)
class ServedTool:
    name: str
    description: str
    input_schema: dict[str, Any]


class ServerSandbox(Shell):
    """The shell tool's sandbox over the server's own directory, bound read-only, with
    the host paths the config lists bound read-only at the same place."""

    def __init__(self, settings: SandboxSection, directory: Path, read_only: Sequence[str],
                 limits: SharedLimits | None = None) -> None:
        super().__init__(settings, directory, limits)
        self.read_only = tuple(read_only)

    def bwrap_args(self, *, network: bool, found: Any = None, git: bool = False,
                   env: Mapping[str, str] | None = None) -> list[str]:
        args = super().bwrap_args(network=network, found=found, git=git, env=env)
        workspace = next(i for i in range(len(args) - 2)
                         if args[i:i + 3] == ["--bind", self.source, WORKSPACE_MOUNT])
        args[workspace] = "--ro-bind"
        # Before the root is made read-only: bwrap makes the mount points on it.
        at = next(i for i in range(len(args) - 1) if args[i:i + 2] == ["--remount-ro", "/"])
        binds = [part for path in self.read_only for part in ("--ro-bind", path, path)]
        return args[:at] + binds + args[at:]


class Server:
    """A configured server and its sandbox, probed on first use."""

    def __init__(self, spec: McpServer, settings: SandboxSection, data_dir: Path,
                 limits: SharedLimits | None = None) -> None:
        self.spec = spec
        self.settings = settings
        self.directory = data_dir / "mcp" / spec.name
        self.limits = limits
        self.sandbox: ServerSandbox | None = None
        self._probing = asyncio.Lock()

    async def _ready_sandbox(self) -> ServerSandbox:
        async with self._probing:
            if self.sandbox is None:
                await asyncio.to_thread(self._make_directory)
                sandbox = ServerSandbox(self.settings, self.directory, self.spec.read_only,
                                        self.limits)
                reason = await sandbox.probe()
                if reason:
                    raise ServerUnavailable(f"MCP server {self.spec.name}: the sandbox is "
                                            f"unavailable: {reason}")
                self.sandbox = sandbox
            return self.sandbox

    def _make_directory(self) -> None:
        self.directory.mkdir(mode=0o755, parents=True, exist_ok=True)
        # An empty .git of the daemon's: the sandbox then binds it read-only instead of
        # placing (and removing) a placeholder of its own at every start.
        (self.directory / ".git").mkdir(mode=0o755, exist_ok=True)

    @contextlib.asynccontextmanager
    async def session(self) -> AsyncIterator[ClientSession]:
        """An initialized session with a fresh process of the server, within the wall-clock
        limit; any failure is ServerUnavailable, with the end of the server's stderr."""
        from mcp import ClientSession, StdioServerParameters, stdio_client

        sandbox = await self._ready_sandbox()
        missing = await asyncio.to_thread(
            lambda: [path for path in self.spec.read_only if not os.path.exists(path)])
        if missing:
            raise ServerUnavailable(f"mcp.servers.{self.spec.name}.read_only: {missing[0]} "
                                    "does not exist")
        capped = ["/bin/sh", "-c", _CAPPED, "mcp-server", *self.spec.command]
        argv = sandbox.program_argv(capped, env=self.spec.env)
        async with _tail(STDERR_KEPT) as errlog:
            try:
                async with asyncio.timeout(self.settings.timeout):
                    async with sandbox.limits.call() as cgroup:
                        command = [*cgroup.prefix, *argv]
                        params = StdioServerParameters(command=command[0], args=command[1:],
                                                       env=dict(HOST_ENV))
                        assert errlog.file is not None
                        async with stdio_client(params, errlog=errlog.file) as (read, write):
                            errlog.spawned()
                            async with _unchecked(ClientSession)(read, write) as session:
                                await session.initialize()
                                yield session
            except ToolError:
                raise
            except BaseExceptionGroup as group:  # the SDK's task groups wrap what the body raised
                ours = _first_tool_error(group)
                if ours is not None:
                    raise ours from None
                raise ServerUnavailable(await self._failed(_describe(group), errlog)) from None
            except TimeoutError:
                raise ServerUnavailable(await self._failed(
                    f"did not answer within {self.settings.timeout:g} s (sandbox.timeout)",
                    errlog)) from None
            except Exception as exc:  # the SDK's, anyio's, the process's: all the same here
                raise ServerUnavailable(await self._failed(_describe(exc), errlog)) from None

    async def _failed(self, what: str, errlog: _Tail) -> str:
        await errlog.ended(STDERR_WAIT_S)
        stderr = errlog.text()[-STDERR_TAIL:].strip()
        text = f"MCP server {self.spec.name}: {what}"
        return text + (f"; its stderr ends: {stderr}" if stderr else "")


class _Tail(asyncio.Protocol):
    """The end of what the server writes to its standard error, kept in memory: its
    stderr is a pipe the daemon reads as it comes, so however much a server writes there
    fills no disk and no memory (a file would have filled the host's temporary directory,
    up to RLIMIT_FSIZE, and then killed the server for talking)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.kept = bytearray()
        self.file: TextIO | None = None  # the write end, handed to the server
        self._ended = asyncio.Event()

    def spawned(self) -> None:
        """The server has its copy of the write end: the daemon's goes, so the pipe ends
        when the server's processes are gone."""
        if self.file is not None:
            self.file.close()

    async def ended(self, timeout: float) -> None:
        """Until the server's processes closed their stderr (all of it read), or `timeout`."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ended.wait()

    def connection_lost(self, exc: Exception | None) -> None:
        self._ended.set()

    def data_received(self, data: bytes) -> None:
        self.kept += data
        if len(self.kept) > 2 * self.size:
            del self.kept[:-self.size]

    def text(self) -> str:
        return bytes(self.kept[-self.size:]).decode("utf-8", errors="replace")


@contextlib.asynccontextmanager
async def _tail(size: int) -> AsyncIterator[_Tail]:
    read_fd, write_fd = os.pipe()
    tail = _Tail(size)
    loop = asyncio.get_running_loop()
    transport = None
    try:
        reader = os.fdopen(read_fd, "rb", buffering=0)
        read_fd = -1
        transport, _ = await loop.connect_read_pipe(lambda: tail, reader)
        tail.file = os.fdopen(write_fd, "w")
        write_fd = -1
        yield tail
    finally:
        for fd in (read_fd, write_fd):
            if fd >= 0:
                os.close(fd)
        if tail.file is not None:
            tail.file.close()  # the daemon's copy, if the server never started
        if transport is not None:
            transport.close()


async def list_tools(session: ClientSession) -> list[ServedTool]:
    from mcp import types

    tools: list[ServedTool] = []
    cursor: str | None = None
    for _ in range(100):  # pages; a server paging forever is cut off
        if cursor is None:
            result = await session.list_tools()
        else:
            result = await session.list_tools(params=types.PaginatedRequestParams(cursor=cursor))
        tools += [ServedTool(t.name, t.description or "", dict(field(t, "input_schema") or {}))
                  for t in result.tools]
        if len(tools) > MAX_TOOLS:
            raise ServerUnavailable(f"the server lists more than {MAX_TOOLS} tools")
        cursor = field(result, "next_cursor")
        if not cursor:
            break
    return tools


@functools.cache
def _unchecked(session: type[Any]) -> type[Any]:
    """The SDK's session without its check of a result's structured content against the
    tool's outputSchema: that check runs on the event loop with Python's backtracking
    regular expressions, so a server's schema (`"pattern": "^(a+)+$"`) and result could
    hold every actor of the daemon for minutes. The daemon does not rely on it (it hands
    the model the result's text, cut to the output limit)."""

    class Unchecked(session):
        async def validate_tool_result(self, name: str, result: Any) -> None:
            return None

        async def _validate_tool_result(self, name: str, result: Any) -> None:  # mcp 1
            return None

    return Unchecked


def field(record: Any, name: str) -> Any:
    """`record.name`: mcp 2 names the SDK's fields in snake_case, mcp 1 as on the wire
    (inputSchema, nextCursor, isError, structuredContent)."""
    if hasattr(record, name):
        return getattr(record, name)
    head, *rest = name.split("_")
    return getattr(record, head + "".join(part.title() for part in rest), None)


def _first_tool_error(group: BaseExceptionGroup[BaseException]) -> ToolError | None:
    for exc in group.exceptions:
        if isinstance(exc, ToolError):
            return exc
        if isinstance(exc, BaseExceptionGroup):
            found = _first_tool_error(exc)
            if found is not None:
                return found
    return None


def _describe(exc: BaseException) -> str:
    if isinstance(exc, BaseExceptionGroup):
        return "; ".join(_describe(e) for e in exc.exceptions)
    return f"{type(exc).__name__}: {exc}"[:400] or type(exc).__name__
