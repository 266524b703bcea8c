"""A federation for tests: a real hub nats-server and real entityd daemons whose embedded
servers are leaves of it, each with its own data dir, key, workspace and scripted model."""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entityd import federation, localauth
from tests.helpers import NATS_SERVER, DaemonProc, ServerProcess, ctl, free_port, make_entity

ALL = ("talk", "report", "delegate", "wake", "restart")


@dataclass
class Member:
    name: str
    config: Path
    port: int
    daemon: DaemonProc

    @property
    def data(self) -> Path:
        return self.config.parent

    @property
    def workspace(self) -> Path:
        return self.data / "workspace"

    @property
    def url(self) -> str:
        """The member's own leaf, logged in with its local token (as its daemon is)."""
        return f"nats://{localauth.read(self.data)}@127.0.0.1:{self.port}"

    def start(self) -> None:
        self.daemon.start()

    async def ready(self) -> None:
        await asyncio.to_thread(self.daemon.wait_log, '"entityd_ready"', 40.0)

    async def ctl(self, *args: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """entityctl in a thread: the scripted model may be serving on this loop."""
        result = await asyncio.to_thread(ctl, self.config, *args, timeout=timeout)
        return result.returncode, result.stdout, result.stderr

    async def ctl_json(self, *args: str, timeout: float = 60.0) -> Any:
        code, out, err = await self.ctl(*args, "--json", timeout=timeout)
        assert code == 0, f"entityctl {' '.join(args)} exited {code}: {out}{err}"
        return json.loads(out)


@dataclass
class Federation:
    root: Path
    hub: ServerProcess
    hub_port: int
    leaf_port: int
    members: dict[str, Member] = field(default_factory=dict)
    llm: Any = None  # the scripted model server, when a test keeps it here

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    async def start(self) -> None:
        self.hub.start()
        for member in self.members.values():
            member.start()
        for member in self.members.values():
            await member.ready()

    def stop(self) -> list[int]:
        codes = []
        for member in self.members.values():
            if member.daemon.proc is not None:
                try:
                    codes.append(member.daemon.terminate())
                except Exception:
                    member.daemon.kill()
                    codes.append(-9)
        self.hub.stop()
        return codes

    async def discovered(self, timeout: float = 20.0) -> None:
        """Wait until every member lists every other as present."""
        names = set(self.members)
        deadline = time.monotonic() + timeout
        for member in self.members.values():
            while True:
                peers = await member.ctl_json("peers")
                assert isinstance(peers, list)
                present = {p["name"] for p in peers if p["present"]}
                if present >= names - {member.name}:
                    break
                assert time.monotonic() < deadline, f"{member.name} sees only {present}"
                await asyncio.sleep(0.2)


@asynccontextmanager
async def running(fed: Federation) -> AsyncIterator[Federation]:
    """Start the federation; on the way out stop it and check every daemon exited 0."""
    try:
        await fed.start()
        yield fed
    finally:
        codes = await asyncio.to_thread(fed.stop)
        assert set(codes) <= {0}, [m.daemon.log()[-2000:] for m in fed.members.values()]


def build(
    root: Path, names: Sequence[str], *, llm_url: str, trust: dict[str, dict[str, Sequence[str]]]
    | None = None, heartbeat: float = 0.5, extra: dict[str, str] | None = None,
) -> Federation:
    """Hub config, data dirs, hub users and configs for `names` (not started).

    `trust[receiver][sender]` lists what `sender` may ask of `receiver`; by default every
    member trusts every other with everything."""
    leaf_port, hub_port = free_port(), free_port()
    users = []
    members = {}
    for name in names:
        config = make_entity(root, name)
        text = config.read_text()
        text = text.replace('hub_url = ""', f'hub_url = "nats-leaf://127.0.0.1:{leaf_port}"')
        text = text.replace('provider = "moonshot"', 'provider = "scripted"')
        text = text.replace('base_url = ""', f'base_url = "{llm_url}"', 1)
        text = text.replace("heartbeat_interval = 5.0", f"heartbeat_interval = {heartbeat}")
        text = text.replace("command_timeout = 15.0", "command_timeout = 5.0")
        granted = (trust or {}).get(name)
        if granted is None:
            granted = {other: ALL for other in names if other != name}
        lines = "".join(f'{peer} = {json.dumps(list(perms))}\n' for peer, perms in granted.items())
        text = text.replace("[trust]\n", f"[trust]\n{lines}")
        text += (extra or {}).get(name, "")
        config.write_text(text)
        public, _ = federation.make_entity_credentials(name, config.parent)
        users.append((name, public))
        port = int(re.search(r"(?m)^port = (\d+)", text).group(1))  # type: ignore[union-attr]
        members[name] = Member(name, config, port, DaemonProc(config, root / f"{name}.log"))
    hub_conf = root / "hub.conf"
    hub_conf.write_text(federation.render_hub_conf(
        users, store_dir=root / "hub-store", port=hub_port, leaf_host="127.0.0.1",
        leaf_port=leaf_port))
    hub = ServerProcess([NATS_SERVER, "-c", str(hub_conf)], hub_port, root / "hub.log")
    return Federation(root, hub, hub_port, leaf_port, members)
