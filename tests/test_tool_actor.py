"""The tool actor through a real nats-server: tools, specs, refusals, audit events, the sandbox.

`tool_rig` is shared with the escape suite: a Runtime running only the tool actor for an
entity whose data dir (with a key) holds the workspace, as `entityd init` lays it out.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import socket
import subprocess
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import nats
import pytest

import protocol
from actors.messages import ToolCall, ToolResult, ToolSpecs, ToolSpecsGet
from actors.sandbox import TOOL_NAMES
from actors.tool import ToolActor
from entityd import identity
from entityd.config import (
    Config,
    EntitySection,
    SandboxSection,
    WorkspaceSection,
)
from entityd.transport import Transport
from protocol import Event, Keyring, ReplayGuard
from tests.helpers import NatsServer, running_actors

ENTITY = "entity-a"
AS_ROOT = os.geteuid() == 0
ASK_TIMEOUT = 15.0  # above the sandbox timeout below
SANDBOX = SandboxSection(timeout=2.0, cpu_seconds=10, memory_mb=1024, file_size_mb=4,
                         max_processes=64, max_open_files=256, output_limit=4000)


@dataclasses.dataclass
class ToolRig:
    client: Transport
    nc: nats.NATS
    keyring: Keyring
    config: Config
    events: Any  # the subscription to fed.evt.<entity>.tool.>
    guard: ReplayGuard = dataclasses.field(default_factory=ReplayGuard)

    @property
    def workspace(self) -> Path:
        return self.config.workspace_dir

    @property
    def data_dir(self) -> Path:
        return self.config.data_dir

    async def call(self, tool: str, **args: Any) -> ToolResult:
        env = await self.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/tool",
                                    ToolCall(tool, args, caller="test"), ASK_TIMEOUT)
        assert isinstance(env.message, ToolResult)
        return env.message

    async def shell(self, command: str) -> ToolResult:
        return await self.call("shell", command=command)

    async def event(self, typ: str, timeout: float = 5.0) -> Event:
        """The next audit or status event of type `typ`, verified like any observer would."""
        async with asyncio.timeout(timeout):
            while True:
                msg = await self.events.next_msg(timeout=timeout)
                env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                    keyring=self.keyring, replay=self.guard)
                if env.message.type == typ:
                    assert msg.subject == f"fed.evt.{ENTITY}.tool.{typ}"
                    return env.message


@asynccontextmanager
async def tool_rig(nats_server: NatsServer, root: Path, sandbox: SandboxSection = SANDBOX,
                   workspace: str = "", git: bool = False) -> AsyncIterator[ToolRig]:
    data = root / ENTITY
    data.mkdir(parents=True)
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)), sandbox=sandbox,
                    workspace=WorkspaceSection(path=workspace))
    if git:
        config.workspace_dir.mkdir(parents=True)
        await asyncio.to_thread(subprocess.run, ["git", "init", "-q", str(config.workspace_dir)],
                                check=True)
    async with running_actors(
        nats_server.url, ENTITY, {"tool": lambda: ToolActor(config)},
        events=f"fed.evt.{ENTITY}.tool.>",
    ) as actors:
        yield ToolRig(actors.client, actors.client_nc, actors.keyring, config, actors.events)


@pytest.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[ToolRig]:
    async with tool_rig(nats_server, tmp_path) as rig:
        started = await rig.event("sandbox")
        assert started.data["shell"], started.data["reason"]
        assert started.data["missing_hardening"] == []  # bubblewrap 0.8 here
        yield rig


async def test_shell_runs_commands_in_the_workspace(rig: ToolRig) -> None:
    result = await rig.shell("echo hello; pwd; python3 -c 'print(6 * 7)'")
    assert result.ok, result
    assert result.output == "hello\n/workspace\n42\n"
    assert result.data["exit_code"] == 0 and not result.data["timed_out"]


async def test_shell_and_file_tools_share_the_workspace(rig: ToolRig) -> None:
    made = await rig.shell("mkdir -p pkg && printf 'a = 1\\nb = 2\\n' > pkg/mod.py")
    assert made.ok, made
    read = await rig.call("read_file", path="pkg/mod.py")
    assert read.ok and read.output == "     1\ta = 1\n     2\tb = 2"
    # What the daemon writes, the sandboxed shell can edit (it is handed to the sandbox uid).
    wrote = await rig.call("write_file", path="lib/util.py", content="x = 1\n")
    assert wrote.ok, wrote
    edited = await rig.shell("echo 'y = 2' >> lib/util.py && cat lib/util.py")
    assert edited.ok, edited
    assert edited.output == "x = 1\ny = 2\n"
    if AS_ROOT:
        info = (rig.workspace / "lib/util.py").stat()
        assert (info.st_uid, info.st_gid) == (SANDBOX.uid, SANDBOX.gid)
    listing = await rig.call("list_dir", path=".")
    assert "pkg/" in listing.output and "lib/" in listing.output
    found = await rig.call("grep", pattern="y = 2")
    assert found.output == "lib/util.py:2: y = 2"
    assert (await rig.call("glob", pattern="**/*.py")).output == "lib/util.py\npkg/mod.py"


async def test_non_zero_exit_is_reported(rig: ToolRig) -> None:
    result = await rig.shell("echo partial; exit 3")
    assert not result.ok
    assert result.error == "exit code 3"
    assert result.output == "partial\n" and result.data["exit_code"] == 3


async def test_long_output_is_cut_with_a_notice(rig: ToolRig) -> None:
    result = await rig.shell("seq 1 100000")
    assert result.ok
    assert result.output.startswith("1\n2\n3\n") and result.output.endswith("99999\n100000\n")
    cut = result.data["cut_bytes"]
    assert cut == len("".join(f"{i}\n" for i in range(1, 100001))) - SANDBOX.output_limit
    assert f"[... {cut} bytes of output cut here" in result.output
    assert len(result.output) < SANDBOX.output_limit + 200


async def test_str_replace_must_be_unique_and_read_ranges(rig: ToolRig) -> None:
    await rig.call("write_file", path="m.py", content="a = 1\nb = 2\na = 1\n")
    twice = await rig.call("str_replace", path="m.py", old="a = 1", new="a = 5")
    assert not twice.ok and "occurs 2 times" in twice.error
    missing = await rig.call("str_replace", path="m.py", old="zzz", new="a = 5")
    assert not missing.ok and "not found" in missing.error
    once = await rig.call("str_replace", path="m.py", old="b = 2\na = 1", new="b = 2\na = 7")
    assert once.ok and once.data["line"] == 2
    ranged = await rig.call("read_file", path="m.py", start_line=2, end_line=3)
    assert ranged.output == "     2\tb = 2\n     3\ta = 7"


async def test_bad_calls_are_refusals_not_crashes(rig: ToolRig) -> None:
    unknown = await rig.call("launch_rockets")
    assert not unknown.ok and "unknown tool" in unknown.error
    missing = await rig.call("read_file")
    assert not missing.ok and "missing argument 'path'" in missing.error
    mistyped = await rig.call("read_file", path="x", start_line="one")
    assert not mistyped.ok and "must be a integer" in mistyped.error
    extra = await rig.call("shell", command="true", sudo=True)
    assert not extra.ok and "unknown argument 'sudo'" in extra.error
    absent = await rig.call("read_file", path="nope.txt")
    assert not absent.ok and "no such file" in absent.error
    assert (await rig.shell("true")).ok  # still serving, never restarted


async def test_specs_are_openai_function_schemas(rig: ToolRig) -> None:
    env = await rig.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/tool", ToolSpecsGet(), 5)
    specs = env.message
    assert isinstance(specs, ToolSpecs)
    names = [spec["function"]["name"] for spec in specs.tools]
    assert names == list(TOOL_NAMES) == ["shell", "read_file", "write_file", "str_replace",
                                         "list_dir", "glob", "grep"]
    for spec in specs.tools:
        assert spec["type"] == "function"
        params = spec["function"]["parameters"]
        assert params["type"] == "object" and set(params["required"]) <= set(params["properties"])
        assert spec["function"]["description"]
    read = next(s["function"] for s in specs.tools if s["function"]["name"] == "read_file")
    assert read["parameters"]["properties"]["start_line"]["type"] == "integer"


async def test_every_call_is_audited_without_contents(rig: ToolRig) -> None:
    secret = "MOONSHOT_API_KEY=sk-test-audit-0123456789"
    content = f"keep this private {secret}\n"
    await rig.call("write_file", path="notes.txt", content=content)
    wrote = await rig.event("call")
    assert wrote.actor == "tool"
    assert {k: wrote.data[k] for k in ("tool", "caller", "ok")} == {
        "tool": "write_file", "caller": "test", "ok": True}
    assert isinstance(wrote.data["duration_ms"], int)
    assert wrote.data["summary"] == f"write notes.txt ({len(content)} bytes)"

    await rig.shell(f"echo {secret} > /dev/null")
    ran = await rig.event("call")
    assert ran.data["tool"] == "shell" and ran.data["ok"]
    assert ran.data["summary"].startswith("$ echo MOONSHOT_API_KEY=***")
    assert "sk-test" not in ran.data["summary"]

    await rig.shell("cat > notes2.txt <<EOF\nprivate line one\nprivate line two\nEOF")
    heredoc = await rig.event("call")
    assert heredoc.data["summary"] == "$ cat > notes2.txt <<EOF [+3 more lines]"

    await rig.shell("sudo id")
    refused = await rig.event("call")
    assert not refused.data["ok"] and "sudo" in refused.data["summary"]


@pytest.mark.parametrize("workspace", ["."])
async def test_a_workspace_holding_the_data_dir_refuses_everything(
    nats_server: NatsServer, tmp_path: Path, workspace: str,
) -> None:
    async with tool_rig(nats_server, tmp_path, workspace=workspace) as rig:
        started = await rig.event("sandbox")
        assert not started.data["available"] and "contains the data dir" in started.data["reason"]
        for tool, args in [("read_file", {"path": "keys/entity.key"}),
                           ("list_dir", {"path": "."}), ("shell", {"command": "ls"})]:
            result = await rig.call(tool, **args)
            assert not result.ok and "contains the data dir" in result.error


@pytest.mark.skipif(not AS_ROOT, reason="the uid-0 refusal applies when the daemon is root")
async def test_shell_fails_closed_and_file_tools_still_work(nats_server: NatsServer,
                                                            tmp_path: Path) -> None:
    unsafe = dataclasses.replace(SANDBOX, uid=0, gid=0)
    async with tool_rig(nats_server, tmp_path, sandbox=unsafe) as rig:
        started = await rig.event("sandbox")
        assert started.data["available"] and not started.data["shell"]
        result = await rig.shell("id")
        assert not result.ok
        assert result.error.startswith("the shell tool is unavailable: sandbox.uid and "
                                       "sandbox.gid must not be 0")
        assert "file tools still work" in result.error
        assert (await rig.call("write_file", path="a.txt", content="still works\n")).ok
        assert (await rig.call("read_file", path="a.txt")).output == "     1\tstill works"


async def test_programs_in_network_commands_get_the_network(nats_server: NatsServer,
                                                            tmp_path: Path) -> None:
    """The network of its own (tests/test_sandbox_network.py): the host's outward
    address stands for the network."""
    from tests.test_sandbox_network import outward_address
    outward = outward_address()
    if outward is None:
        pytest.skip("this host has no address but loopback to stand for the network")
    listener = socket.create_server((outward, 0))
    connect = (f"python3 -c \"import socket; socket.create_connection(('{outward}', "
               f"{listener.getsockname()[1]}), timeout=2); print('connected')\"")
    allowed = dataclasses.replace(SANDBOX, network_commands=("python3",))
    async with tool_rig(nats_server, tmp_path, sandbox=allowed) as rig:
        result = await rig.shell(connect)
        assert result.ok and result.output == "connected\n" and result.data["network"]
        # Anything else on the same command line takes the network away again.
        mixed = await rig.shell(f"cat /dev/null; {connect}")
        assert not mixed.ok and not mixed.data["network"]
        assert "connected" not in mixed.output
    listener.close()




def test_sandbox_package_public_surface() -> None:
    import actors.sandbox as sandbox

    assert sorted(sandbox.__all__) == sorted([
        "TOOL_NAMES", "WORKSPACE_MOUNT", "BadArguments", "Classification", "CommandRefused",
        "FileLimits", "FileTools", "PathRefused", "SandboxUnavailable", "Shell", "ShellResult",
        "ToolError", "Confinement", "check_args", "classify", "prepare", "tool_specs",
    ])
    assert all(hasattr(sandbox, name) for name in sandbox.__all__)
