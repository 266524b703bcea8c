"""MCP through the tool actor and a real nats-server: a stdio server written here with the
`mcp` SDK (MCPServer), run in the sandbox; the allow list, the pins, and the sandbox's
walls as the server meets them (no data dir, no network).

The server runs under the host's /usr/bin/python3: the sandbox sees /usr, and the venv's
interpreter is a link into /root/.pyenv, which neither the sandbox mounts nor its uid may
enter. The venv's site-packages (0755, under /work) is mounted read-only (`read_only`) and
put on PYTHONPATH: the same CPython minor version, so its compiled dependencies load.
"""

from __future__ import annotations

import argparse
import asyncio
import atexit
import dataclasses
import functools
import json
import os
import re
import shutil
import sys
import sysconfig
import tempfile
import tomllib
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from actors.mcp import McpApprove, McpApproved, McpList, McpListing
from actors.messages import ToolCall, ToolResult, ToolSpecs, ToolSpecsGet
from actors.tool import ToolActor
from entityd import config as config_mod
from entityd import identity
from entityd.app import ctl_mcp
from entityd.config import Config, EntitySection
from entityd.errors import ConfigError
from entityd.mcp_servers import McpServer, servers
from entityd.transport import Transport
from tests.helpers import NatsServer, running_actors
from tests.test_tool_actor import SANDBOX

ENTITY = "entity-a"
ASK_TIMEOUT = 30.0
SITE = sysconfig.get_paths()["purelib"]
# Run as root, the sandbox's launcher covers /tmp with a private tmpfs (it stages the
# workspace there), so a venv under /tmp (a CI clone's) is out of the server's reach: the
# tests then hand the server a hard-linked copy of the venv's packages under /var/tmp.
HIDDEN_BY_THE_LAUNCHER = "/tmp/"
SYSTEM_PYTHON = "/usr/bin/python3"
LOG_LINE = re.compile(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d \[")
HOST_PYTHON_VERSION = (3, 11)  # Debian 12's python3
SERVER = '''
import os
import socket

try:
    from mcp.server.mcpserver import MCPServer
except ImportError:  # mcp 1
    from mcp.server.fastmcp import FastMCP as MCPServer

app = MCPServer("notes")
VARIANT = open("variant").read().strip() if os.path.exists("variant") else "1"

if VARIANT == "1":
    @app.tool()
    def echo(text: str) -> str:
        """Say the text back."""
        return "echo: " + text
else:
    @app.tool()
    def echo(text: str, times: int = 1) -> str:
        """Say the text back."""
        return "echo: " + text * times


@app.tool()
def reach(path: str, port: int) -> str:
    """Try to read a file and to connect to a local TCP port; say what happened."""
    said = []
    try:
        with open(path) as file:
            said.append("read: " + file.read())
    except OSError as exc:
        said.append(f"read failed: {type(exc).__name__}")
    try:
        socket.create_connection(("127.0.0.1", port), timeout=3).close()
        said.append("connected")
    except OSError as exc:
        said.append(f"connect failed: {type(exc).__name__}")
    return "; ".join(said)


@app.tool()
def secret() -> str:
    """Not on the allow list."""
    return "the secret"


app.run()
'''


@dataclasses.dataclass
class McpRig:
    client: Transport
    config: Config

    @property
    def server_dir(self) -> Path:
        return self.config.data_dir / "mcp" / "notes"

    async def ask(self, message: object, src: str = "ctl") -> Any:
        env = await self.client.ask(f"{ENTITY}/{src}", f"{ENTITY}/tool", message, ASK_TIMEOUT)
        return env.message

    async def call(self, tool: str, src: str = "orchestrator", **args: Any) -> ToolResult:
        result = await self.ask(ToolCall(tool, args, caller=src), src)
        assert isinstance(result, ToolResult)
        return result

    async def offered(self, src: str = "orchestrator") -> set[str]:
        specs = await self.ask(ToolSpecsGet(), src)
        assert isinstance(specs, ToolSpecs)
        return {s["function"]["name"] for s in specs.tools}


def mcp_table(text: str) -> dict[str, McpServer]:
    """The servers of a config file's text, as entityd's config reads them."""
    return servers(tomllib.loads(text)["mcp"])


@functools.cache
def server_site() -> str:
    """The venv's site-packages, where the sandboxed server can read it."""
    if not SITE.startswith(HIDDEN_BY_THE_LAUNCHER):
        return SITE
    linked = Path(tempfile.mkdtemp(prefix="entityd-test-mcp-site-", dir="/var/tmp"))
    os.chmod(linked, 0o755)
    shutil.copytree(SITE, linked / "site-packages", copy_function=_link_or_copy,
                    symlinks=True)
    atexit.register(shutil.rmtree, linked, True)
    return str(linked / "site-packages")


def _link_or_copy(source: str, target: str) -> None:
    try:
        os.link(source, target)
    except OSError:  # another filesystem
        shutil.copy2(source, target)


def server_config(allowed: list[str]) -> str:
    site = server_site()
    return (f"[mcp.servers.notes]\ncommand = [{json.dumps(SYSTEM_PYTHON)}, \"server.py\"]\n"
            f"allowed_tools = {json.dumps(allowed)}\nread_only = [{json.dumps(site)}]\n"
            f"env = {{ PYTHONPATH = {json.dumps(site)} }}\n")


@asynccontextmanager
async def mcp_rig(nats_server: NatsServer, root: Path) -> AsyncIterator[McpRig]:
    data = root / ENTITY
    data.mkdir(parents=True)
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)), sandbox=SANDBOX,
                    mcp=mcp_table(server_config(["echo", "reach"])))
    server_dir = data / "mcp" / "notes"
    server_dir.mkdir(parents=True)
    (server_dir / "server.py").write_text(SERVER)
    async with running_actors(nats_server.url, ENTITY, {"tool": lambda: ToolActor(config)},
                              events=f"fed.evt.{ENTITY}.tool.>") as actors:
        yield McpRig(actors.client, config)


def skip_without_host_python() -> None:
    """The server runs under the host's python3 with this venv's packages: same minor."""
    if sys.version_info[:2] != HOST_PYTHON_VERSION or not Path(SYSTEM_PYTHON).exists():
        pytest.skip(f"the venv's site-packages must match the host's {SYSTEM_PYTHON} "
                    f"({'.'.join(map(str, HOST_PYTHON_VERSION))})")


@pytest.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[McpRig]:
    skip_without_host_python()
    async with mcp_rig(nats_server, tmp_path) as rig:
        yield rig


async def test_a_new_server_is_offered_only_once_approved(rig: McpRig) -> None:
    assert not {n for n in await rig.offered() if n.startswith("mcp__")}
    refused = await rig.call("mcp__notes__echo", text="hi")
    assert not refused.ok
    assert refused.error == ("mcp.notes.echo has not been approved yet; the operator "
                             "approves it with `entityctl mcp approve notes`")

    approved = await rig.ask(McpApprove("notes"))
    assert isinstance(approved, McpApproved) and not approved.error, approved
    assert approved.pinned == ["echo", "reach"]  # the allowed ones; not `secret`
    pins = rig.config.data_dir / "mcp-pins.json"
    assert pins.stat().st_mode & 0o777 == 0o600

    assert {"mcp__notes__echo", "mcp__notes__reach"} <= await rig.offered()
    assert "mcp__notes__secret" not in await rig.offered()
    assert {"mcp__notes__echo", "mcp__notes__reach"} <= await rig.offered("coder")
    result = await rig.call("mcp__notes__echo", text="hello")
    assert result.ok, result
    assert result.output == "echo: hello"


async def test_a_tool_off_the_allow_list_is_refused(rig: McpRig) -> None:
    await rig.ask(McpApprove("notes"))
    result = await rig.call("mcp__notes__secret")
    assert not result.ok
    assert "not on the allow list (mcp.servers.notes.allowed_tools)" in result.error
    listing = await rig.ask(McpList())
    assert isinstance(listing, McpListing)
    (notes,) = listing.servers
    states = {t.name: t.state for t in notes.tools}
    assert states == {"echo": "pinned", "reach": "pinned", "secret": "not allowed"}


async def test_only_the_orchestrator_and_the_coder_may_call(rig: McpRig) -> None:
    await rig.ask(McpApprove("notes"))
    assert not {n for n in await rig.offered("memory") if n.startswith("mcp__")}
    result = await rig.call("mcp__notes__echo", src="memory", text="x")
    assert not result.ok and "not the memory actor" in result.error
    private = await rig.ask(ToolCall("mcp__notes__echo", {"text": "x"}, "orchestrator",
                                     private=True), "orchestrator")
    assert not private.ok and "holds a peer's words" in private.error
    refused = await rig.ask(McpApprove("notes"), "orchestrator")
    assert refused.error == "only entityctl approves MCP tools"


async def test_a_changed_schema_is_refused_until_approved(rig: McpRig) -> None:
    await rig.ask(McpApprove("notes"))
    assert (await rig.call("mcp__notes__echo", text="a")).ok
    (rig.server_dir / "variant").write_text("2")  # the next start serves another schema

    refused = await rig.call("mcp__notes__echo", text="a", times=2)
    assert not refused.ok
    assert refused.error.startswith("mcp.notes.echo is refused: its definition "
                                    "(description or input schema) changed")
    listing = await rig.ask(McpList())
    assert {t.name: t.state for t in listing.servers[0].tools}["echo"] == "changed"
    assert "mcp__notes__echo" not in await rig.offered()
    assert (await rig.call("mcp__notes__reach", path="/nonexistent", port=1)).ok

    approved = await rig.ask(McpApprove("notes"))
    assert approved.changed == ["echo"]
    result = await rig.call("mcp__notes__echo", text="a", times=2)
    assert result.ok and result.output == "echo: aa"


async def test_the_server_cannot_read_the_data_dir_or_reach_the_network(
        rig: McpRig) -> None:
    await rig.ask(McpApprove("notes"))
    secret = rig.config.data_dir / "secret.txt"
    secret.write_text("the operator's secret")
    # The key it would want most, and the server's own directory's parent.
    key = next(p for p in rig.config.data_dir.rglob("*") if p.is_file() and "key" in p.name)
    connected = asyncio.Event()

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        connected.set()
        writer.close()

    listener = await asyncio.start_server(accept, "127.0.0.1", 0)
    port = listener.sockets[0].getsockname()[1]
    async with listener:
        for path in (secret, key):
            result = await rig.call("mcp__notes__reach", path=str(path), port=port)
            assert result.ok, result
            assert result.output.startswith("read failed: ")
            assert "connect failed: " in result.output
        # Its own directory it sees, as /workspace: the test shows it can read at all.
        own = await rig.call("mcp__notes__reach", path="/workspace/server.py", port=port)
        assert own.output.startswith("read: \nimport os")
    assert not connected.is_set()


def test_the_config_is_checked_strictly() -> None:
    good = {"mcp": {"servers": {"notes": {"command": ["x"], "allowed_tools": ["a"]}}}}
    assert servers(good["mcp"])["notes"].allowed_tools == frozenset({"a"})
    cases = [
        ({"notes": {"command": "x", "allowed_tools": []}}, "mcp.servers.notes.command"),
        ({"notes": {"command": [], "allowed_tools": []}}, "mcp.servers.notes.command"),
        ({"notes": {"command": ["x"]}}, "mcp.servers.notes.allowed_tools"),
        ({"notes": {"command": ["x"], "allowed_tools": [1]}}, "mcp.servers.notes.allowed_tools"),
        ({"notes": {"command": ["x"], "allowed_tools": [], "cwd": "/"}}, "mcp.servers.notes.cwd"),
        ({"notes": {"command": ["x"], "allowed_tools": [], "read_only": ["rel"]}},
         "mcp.servers.notes.read_only"),
        # The sandbox has a /tmp of its own: a path there would never be seen.
        ({"notes": {"command": ["x"], "allowed_tools": [], "read_only": ["/tmp/venv"]}},
         "mcp.servers.notes.read_only"),
        ({"notes": {"command": ["x"], "allowed_tools": [], "read_only": ["/./tmp//x/"]}},
         "mcp.servers.notes.read_only"),
        ({"notes": {"command": ["x"], "allowed_tools": [], "env": {"A": 1}}},
         "mcp.servers.notes.env"),
        ({"no_tes": {"command": ["x"], "allowed_tools": []}}, "mcp.servers.no_tes"),
    ]
    for tables, key in cases:
        with pytest.raises(ConfigError) as raised:
            servers({"servers": tables})
        assert raised.value.key == key, (tables, raised.value)


@pytest.fixture
def var_tmp_path() -> Iterator[Path]:
    """A directory outside /tmp (a server's read_only path may not be under /tmp)."""
    with tempfile.TemporaryDirectory(dir="/var/tmp", prefix="entityd-test-") as made:
        yield Path(made)


def test_no_server_may_read_the_entitys_data_directory(var_tmp_path: Path) -> None:
    """The data directory holds the entity's key and tokens: a read_only path that is it,
    lies in it or holds it, through a symbolic link too, stops the start, naming the key;
    so does a link into /tmp, which the server would never see."""
    tmp_path = var_tmp_path
    data = tmp_path / "var" / "entity-a"
    data.mkdir(parents=True)
    (tmp_path / "link-to-data").symlink_to(data)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "link-to-tmp").symlink_to("/tmp")

    def load(read_only: list[str]) -> Config:
        text = (f'[entity]\nname = "entity-a"\ndata_dir = "{data}"\n'
                f'[mcp.servers.notes]\ncommand = ["x"]\nallowed_tools = []\n'
                f"read_only = {json.dumps(read_only)}\n")
        return config_mod.from_mapping(tomllib.loads(text), path=tmp_path / "entityd.toml")

    for bad in [str(data), f"{data}/", str(data / "identity"), str(tmp_path / "var"),
                str(tmp_path), "/", str(tmp_path / "link-to-data"),
                str(tmp_path / "link-to-data" / "nats"), str(tmp_path / "link-to-tmp")]:
        with pytest.raises(ConfigError) as raised:
            load([str(tmp_path / "elsewhere"), bad])
        assert raised.value.key == "mcp.servers.notes.read_only", bad
    sibling = tmp_path / "var" / "entity-a-tools"  # a name that starts like it
    assert load([str(tmp_path / "elsewhere"), str(sibling)]).mcp["notes"].read_only


class _RigClient:
    """What entityctl's commands use of EntityClient, over the rig's connection."""

    def __init__(self, rig: McpRig) -> None:
        self.rig = rig

    async def ask(self, actor: str, message: object, timeout: float) -> Any:
        assert actor == "tool"
        return await self.rig.ask(message)


async def entityctl_mcp(rig: McpRig, *argv: str) -> int:
    parser = argparse.ArgumentParser()
    ctl_mcp.add_commands(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["mcp", *argv])
    code: int = await args.run(_RigClient(rig), args)
    return code


def printed(capsys: pytest.CaptureFixture[str]) -> str:
    """What the command printed, without the actors' log lines (the same stdout here)."""
    return "".join(line for line in capsys.readouterr().out.splitlines(keepends=True)
                   if not LOG_LINE.match(line))


async def test_entityctl_mcp_list_and_approve(
        rig: McpRig, capsys: pytest.CaptureFixture[str]) -> None:
    assert await entityctl_mcp(rig, "list") == 0
    out = printed(capsys)
    assert out.startswith(f"notes: {SYSTEM_PYTHON} server.py\n")
    assert "  echo                     unapproved   as mcp__notes__echo\n" in out
    assert "  secret                   not allowed  as mcp__notes__secret\n" in out

    assert await entityctl_mcp(rig, "approve", "notes") == 0
    assert printed(capsys) == "notes: pinned echo, reach\n"
    assert await entityctl_mcp(rig, "list", "--json") == 0
    listing = json.loads(printed(capsys))
    assert {t["name"]: t["state"] for t in listing["servers"][0]["tools"]} == {
        "echo": "pinned", "reach": "pinned", "secret": "not allowed"}

    assert await entityctl_mcp(rig, "approve", "other") == 3
    assert "no MCP server 'other' is configured" in capsys.readouterr().err


def test_an_entity_config_file_carries_its_mcp_servers(tmp_path: Path) -> None:
    """[mcp.servers.NAME] in entityd.toml reaches Config.mcp; a mistake there stops the
    load naming the key, like any other key of the file."""
    data = tmp_path / ENTITY
    data.mkdir()
    path = data / "entityd.toml"
    starter = config_mod.STARTER.format(name=ENTITY, data_dir=data, port=4222)
    path.write_text(starter + "\n" + server_config(["echo"]))
    assert config_mod.load(path).mcp["notes"].allowed_tools == frozenset({"echo"})
    path.write_text(starter + '\n[mcp.servers.notes]\ncommand = ["x"]\n')
    with pytest.raises(ConfigError) as raised:
        config_mod.load(path)
    assert raised.value.key == "mcp.servers.notes.allowed_tools"
