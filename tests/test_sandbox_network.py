"""The network a command is let onto (sandbox.network_commands): a network of its own,
relayed by slirp4netns, that reaches the network but never the host's loopback (the
entity's page, its local NATS, the service previews, any local listener), with names
resolved through slirp4netns's resolver. Real bwrap, real slirp4netns, real sockets; as
root and (tests/run's second run) as the unprivileged user the shipped unit runs as."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import socket
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from actors.sandbox import Shell, ToolError, netns, prepare
from actors.sandbox.shell import ShellResult
from tests.test_tool_actor import SANDBOX

NET = dataclasses.replace(SANDBOX, timeout=20.0)


def outward_address() -> str | None:
    """The host's address on its way out (its default route), if it has one."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        try:
            probe.connect(("192.0.2.1", 9))  # TEST-NET-1: nothing is sent
        except OSError:
            return None
        address: str = probe.getsockname()[0]
    return None if address.startswith("127.") else address


class Listener:
    """A TCP server on `host` that answers each connection with its name, counting them."""

    def __init__(self, host: str, name: bytes) -> None:
        self.host, self.name = host, name
        self.connections = 0
        self.port = 0

    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        writer.write(self.name + b"\n")
        await writer.drain()
        writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[Listener]:
        server = await asyncio.start_server(self._serve, self.host, 0)
        self.port = server.sockets[0].getsockname()[1]
        async with server:
            yield self


@pytest.fixture
def workspace(tmp_path: Path) -> Iterator[Path]:
    ws = tmp_path / "ws"
    # As root the sandbox runs as sandbox.uid, which must own the workspace.
    prepare(ws, (NET.uid, NET.gid) if os.geteuid() == 0 else None)
    yield ws


async def shell(ws: Path) -> Shell:
    sandbox = Shell(NET, ws)
    assert await sandbox.probe() is None
    if netns.find() is None:
        pytest.fail("slirp4netns is not installed: tests/run installs it as root (Debian "
                    "package slirp4netns)")
    return sandbox


def fetch(host: str, port: int) -> str:
    return (f"python3 -c \"import socket; s = socket.create_connection(('{host}', {port}), "
            "timeout=3); print('GOT', s.recv(100).decode().strip())\"")


async def test_a_network_command_reaches_the_network_but_not_the_hosts_loopback(
        workspace: Path) -> None:
    outward = outward_address()
    if outward is None:
        pytest.skip("this host has no address but loopback to stand for the network")
    sandbox = await shell(workspace)
    loopback = Listener("127.0.0.1", b"LOOPBACK")
    services = Listener("127.0.0.2", b"PREVIEW")
    network = Listener(outward, b"NETWORK")
    async with loopback.running(), services.running(), network.running():
        reached = await sandbox.run(fetch(outward, network.port), network=True)
        on_loopback = await sandbox.run(
            f"{fetch('127.0.0.1', loopback.port)}; {fetch('127.0.0.2', services.port)}; "
            f"{fetch('10.0.2.2', loopback.port)}", network=True)
    assert reached.exit_code == 0 and "GOT NETWORK" in reached.output, reached
    assert "GOT" not in on_loopback.output, on_loopback
    assert (loopback.connections, services.connections, network.connections) == (0, 0, 1)


async def test_names_resolve_through_the_relays_resolver(workspace: Path) -> None:
    sandbox = await shell(workspace)
    run: ShellResult = await sandbox.run("cat /etc/resolv.conf; ip -4 route 2>/dev/null "
                                         "|| cat /proc/net/route", network=True)
    assert run.exit_code == 0, run
    assert run.output.startswith(f"nameserver {netns.DNS}\n"), run.output
    # And without the grant: no network at all, the host's resolv.conf as it is.
    alone = await sandbox.run("cat /proc/net/dev")
    assert "tap0" not in alone.output and "tap0" in (
        await sandbox.run("cat /proc/net/dev", network=True)).output


async def test_the_relay_ends_with_the_call(workspace: Path) -> None:
    sandbox = await shell(workspace)

    def relays() -> int:
        count = 0
        for proc in Path("/proc").iterdir():
            try:
                if proc.name.isdigit() and (proc / "comm").read_text().strip() == "slirp4netns":
                    count += 1
            except OSError:
                continue
        return count

    before = relays()
    run = await sandbox.run("sleep 0.2; echo done", network=True)
    assert run.exit_code == 0 and run.output == "done\n", run
    assert relays() == before


async def test_without_slirp4netns_a_network_command_is_refused_saying_what_to_install(
        workspace: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    sandbox = await shell(workspace)
    monkeypatch.setattr(netns, "BINARY", "slirp4netns-not-installed-here")
    with pytest.raises(ToolError, match="slirp4netns"):
        await sandbox.run("echo hi", network=True)
    assert (await sandbox.run("echo hi")).output == "hi\n"  # no grant: runs as ever
