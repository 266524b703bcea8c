"""The tool actor's order: one workspace's calls one at a time in arrival order; different
workspaces apart, so that a peer's long command never holds up the entity's own tools
(nor another peer's). Through a real nats-server and the real bubblewrap sandbox."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path

import pytest

from actors.messages import ToolCall, ToolResult
from tests.helpers import NatsServer, poll
from tests.test_tool_actor import ENTITY, SANDBOX, ToolRig, tool_rig

pytestmark = pytest.mark.timeout(120)
PEER = "peer-a"
LONG_S = 8  # the peer's command: far longer than any short call takes here, even loaded
LONG = dataclasses.replace(SANDBOX, timeout=60.0)


async def call(rig: ToolRig, workspace: str, tool: str, **args: object) -> ToolResult:
    """A tool call as a turn makes it ("" the entity's own workspace, a peer's name the
    workspace of that peer's tasks)."""
    env = await rig.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/tool",
                               ToolCall(tool, dict(args), "orchestrator", bool(workspace),
                                        workspace), 90.0)
    assert isinstance(env.message, ToolResult)
    return env.message


async def started(marker: Path) -> None:
    await poll(marker.exists, timeout=30, every=0.05, what=f"{marker} made")


async def test_a_peers_long_command_does_not_hold_up_the_entitys_own_tools(
        nats_server: NatsServer, tmp_path: Path) -> None:
    async with tool_rig(nats_server, tmp_path, sandbox=LONG) as rig:
        await rig.event("sandbox")
        peer = rig.config.workspace_of(PEER)
        long = asyncio.ensure_future(call(
            rig, PEER, "shell", command=f"touch started; sleep {LONG_S}; echo done > one"))
        await started(peer / "started")
        # The entity's own: a shell call and a file call, while the peer's runs.
        own = await call(rig, "", "shell", command="echo mine")
        wrote = await call(rig, "", "write_file", path="own.txt", content="x\n")
        running = not (peer / "one").exists()
        # The same peer's next call waits for its first, in arrival order.
        after = await call(rig, PEER, "shell", command="cat one")
        first = await long
    assert own.ok and own.output == "mine\n", own
    assert wrote.ok, wrote
    assert running, f"the entity's own calls waited for the peer's {LONG_S} s command"
    assert first.ok and after.ok and after.output == "done\n", (first, after)


async def test_two_peers_long_commands_run_side_by_side(
        nats_server: NatsServer, tmp_path: Path) -> None:
    async with tool_rig(nats_server, tmp_path, sandbox=LONG) as rig:
        await rig.event("sandbox")
        a, b = rig.config.workspace_of(PEER), rig.config.workspace_of("peer-b")
        command = f"touch started; sleep {LONG_S}; echo done > one"
        first = asyncio.ensure_future(call(rig, PEER, "shell", command=command))
        await started(a / "started")
        second = asyncio.ensure_future(call(rig, "peer-b", "shell", command=command))
        await started(b / "started")
        side_by_side = not (a / "one").exists()
        results = await asyncio.gather(first, second)
    assert side_by_side, "peer-b's command waited for peer-a's"
    assert all(r.ok for r in results), results
