"""One federation for tests and benchmarks: a hub nats-server (or a hub cluster of three or
more, `build(hub_nodes=3)`) with a user per member, and per member either an `entityd run`
daemon whose embedded server is a leaf of the hub (`build`) or a bare leaf nats-server on
the embedded server's command line (`build_leaves`). What `Federation.start` started,
`Federation.stop` stops.

It lives in bench/ so that both may import it (see bench/ports.py).
"""

from __future__ import annotations

import asyncio
import json
import re
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nacl.signing import SigningKey

from actors.peer.messages import Peers, PeersGet
from bench.harness import (
    BIN,
    BenchError,
    DaemonProc,
    ReaderProc,
    ServerProcess,
    child_env,
    ctl,
    nats_server_binary,
)
from bench.ports import free_port
from entityd import config as config_mod
from entityd import federation, identity, localauth
from entityd.client import EntityClient
from entityd.natsserver import EmbeddedNatsServer

ALL = config_mod.PEER_PERMISSIONS  # what a member trusts every other with by default
Trust = Mapping[str, Mapping[str, Sequence[str]]]
READY = '"entityd_ready"'  # what `entityd run` logs once it serves
MINT_KEY = "mint.key"  # in the treasurer's dir: the key its mints are signed with
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0  # a daemon's drain, before it is killed
ASK_TIMEOUT_S = 10.0
# What a hub node logs once it knows its cluster's JetStream meta leader (or is it).
META_LEADER = re.compile(r"new (JetStream cluster )?metadata leader")
HUB_NAME = "entityd-hub"  # the hub's server name; a hub cluster's name, its nodes hub-1...


def make_entity(
    root: Path, name: str = "entity-a", *, nats_url: str = "", port: int | None = None,
    extra: str = "",
) -> Path:
    """An initialised data dir `root/name` with the starter config; returns its path."""
    data = root / name
    data.mkdir(parents=True, exist_ok=True)
    identity.create(data)
    text = config_mod.STARTER.format(name=name, data_dir=data, port=port or free_port())
    if nats_url:
        text = re.sub(r'(?m)^url = ""', f'url = "{nats_url}"', text, count=1)
    path = data / config_mod.CONFIG_NAME
    path.write_text(text + extra)
    return path


def enable_web(config: Path, port: int = 0) -> None:
    """Turn the member's web page on (port 0: any free one; `entityctl web` says which)."""
    edit(config, "\nenabled = false         # serve the page",
         "\nenabled = true          # serve the page")
    if port:
        edit(config, "port = 0                # its port", f"port = {port}  # its port")


def edited(text: str, old: str, new: str) -> str:
    """`text` with its first `old` replaced; BenchError if there is none (the starter
    config changed under whoever edits it)."""
    if old not in text:
        raise BenchError(f"no {old!r} to replace in the config")
    return text.replace(old, new, 1)


def edit(path: Path, old: str, new: str) -> None:
    """The file at `path` with its first `old` replaced (see edited)."""
    path.write_text(edited(path.read_text(), old, new))


@dataclass
class Member:
    """An entity run by `entityd run`, its embedded nats-server a leaf of the hub."""

    name: str
    config: Path
    port: int  # the client port of its embedded (leaf) nats-server
    daemon: DaemonProc
    _readies: int = field(default=0, init=False, repr=False)  # ready lines before start()

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
        # The log keeps an earlier run's ready line: ready() waits for one more.
        log = self.daemon.log_path
        self._readies = log.read_text(errors="replace").count(READY) if log.exists() else 0
        self.daemon.start()

    async def ready(self) -> None:
        """Until the daemon started last is ready (not an earlier run of it)."""
        await asyncio.to_thread(self.daemon.wait_log, READY, READY_TIMEOUT_S,
                                self._readies + 1)

    async def ctl(self, *args: str, timeout: float = 60.0) -> tuple[int, str, str]:
        """entityctl in a thread: the scripted model may be serving on this loop."""
        result = await asyncio.to_thread(ctl, self.config, *args, timeout=timeout)
        return result.returncode, result.stdout, result.stderr

    async def ctl_json(self, *args: str, timeout: float = 60.0) -> Any:
        code, out, err = await self.ctl(*args, "--json", timeout=timeout)
        if code != 0:
            raise BenchError(f"entityctl {' '.join(args)} exited {code}: {out}{err}")
        return json.loads(out)


@dataclass
class Federation:
    """A hub, and its members: daemons (`members`, from build) or bare leaf servers
    (`leaves`, from build_leaves), all in `root`. The hub is one server or the nodes of a
    cluster (`nodes`, by server name; `hub` is then the first)."""

    root: Path
    hub: ServerProcess
    leaf_port: int  # the hub's leafnode port
    members: dict[str, Member] = field(default_factory=dict)
    leaves: dict[str, ServerProcess] = field(default_factory=dict)
    llm: Any = None  # the scripted model server, when a test keeps it here
    treasury: Path | None = None  # the treasurer's dir (hub login, mint.key), from build
    nodes: dict[str, ServerProcess] = field(default_factory=dict)  # every hub server
    reader: ReaderProc | None = None  # the hub's books reader: members read through it

    def __post_init__(self) -> None:
        self.nodes = self.nodes or {HUB_NAME: self.hub}

    def __getitem__(self, name: str) -> Member:
        return self.members[name]

    @property
    def hub_url(self) -> str:
        """The client URL of a hub node that is running (the first one, if several are)."""
        for node in self.nodes.values():
            if node.proc is not None and node.proc.poll() is None:
                return node.url
        raise BenchError("no hub node is running")

    def economy(self, command: str, *args: str) -> subprocess.CompletedProcess[str]:
        """`entityd economy COMMAND ARGS` on the hub as its treasurer (a mint signed with
        the treasury's mint key, which every member's [mint_keys] lists)."""
        if self.treasury is None:
            raise BenchError("this federation has no treasurer (build makes one)")
        key = ["--key", str(self.treasury / MINT_KEY)] if command == "mint" else []
        return subprocess.run(
            [str(BIN / "entityd"), "economy", command, *args, "--hub", self.hub_url,
             "--data-dir", str(self.treasury), *key],
            capture_output=True, text=True, timeout=60, env=child_env())

    def start(self) -> Federation:
        """The hub, then the leaves and daemons, until every daemon is ready; blocks (call
        it in a thread from a loop). If anything fails to start, all is stopped again."""
        try:
            for node in self.nodes.values():
                node.start()
            if len(self.nodes) > 1:
                self.wait_cluster()
            if self.reader is not None:
                self.reader.start([node.url for node in self.nodes.values()])
            for leaf in self.leaves.values():
                leaf.start()
            for member in self.members.values():
                member.start()
            for member in self.members.values():
                member.daemon.wait_log(READY, READY_TIMEOUT_S)
        except BaseException:
            self.stop()
            raise
        return self

    def wait_cluster(self, timeout: float = READY_TIMEOUT_S) -> None:
        """Until every running hub node knows the cluster's JetStream meta leader: before
        that, a stream cannot be made (the request goes unanswered), and nothing tells a
        client to wait."""
        deadline = time.monotonic() + timeout
        for name, node in self.nodes.items():
            while not META_LEADER.search(node.log.read_text(errors="replace")):
                if node.proc is None or node.proc.poll() is not None:
                    raise BenchError(f"hub node {name} is not running: "
                                     f"{node.log.read_text(errors='replace')[-800:]}")
                if time.monotonic() > deadline:
                    raise BenchError(f"hub node {name} knows no JetStream meta leader "
                                     f"after {timeout} s (see {node.log})")
                time.sleep(0.05)

    def stop(self) -> list[int]:
        """Every daemon, the leaves and the hub stopped; the daemons' exit codes (-9 for one
        killed). The daemons get SIGTERM at once and drain together, each killed if still
        running after STOP_TIMEOUT_S."""
        daemons = [m.daemon for m in self.members.values() if m.daemon.proc is not None]
        for daemon in daemons:
            daemon.signal_stop()
        codes = [daemon.wait_stopped(STOP_TIMEOUT_S) for daemon in daemons]
        for leaf in self.leaves.values():
            leaf.stop()
        if self.reader is not None:
            self.reader.stop()
        for node in self.nodes.values():
            node.stop()
        return codes

    async def discovered(self, timeout: float = 30.0) -> None:
        """Until each member's peer actor lists every other member as present."""
        deadline = time.monotonic() + timeout
        for member in self.members.values():
            others = set(self.members) - {member.name}
            async with EntityClient(config_mod.load(member.config)) as client:
                while True:
                    peers: Peers = await client.ask("peer", PeersGet(), ASK_TIMEOUT_S)
                    present = {p.name for p in peers.peers if p.present}
                    if present >= others:
                        break
                    if time.monotonic() > deadline:
                        raise BenchError(f"{member.name} sees only {sorted(present)} present "
                                         f"after {timeout} s, not all of {sorted(others)}")
                    await asyncio.sleep(0.1)


@asynccontextmanager
async def running(fed: Federation) -> AsyncIterator[Federation]:
    """Started in a thread (the loop stays free for a scripted model serving on it); on the
    way out stopped, and every daemon must have exited 0."""
    try:
        await asyncio.to_thread(fed.start)
        yield fed
    finally:
        codes = await asyncio.to_thread(fed.stop)
        if set(codes) - {0}:
            logs = "\n".join(f"{m.name}: {m.daemon.log()[-2000:]}" for m in fed.members.values())
            raise BenchError(f"daemons exited with {codes}:\n{logs}")


def build(
    root: Path, names: Sequence[str], *, llm_url: str, trust: Trust | None = None,
    heartbeat: float = 0.5, extra: Mapping[str, str] | None = None,
    die_with_parent: bool = False, hub_nodes: int = 1,
) -> Federation:
    """Data dirs, configs and hub users for `names` as `entityd run` daemons (not started).

    `trust[receiver][sender]` lists what `sender` may ask of `receiver`; by default every
    member trusts every other with everything. `extra[name]` is appended to that member's
    config. With `die_with_parent`, the daemons and the hub get SIGTERM when the thread
    that started them ends: start them from one that outlives them. With `hub_nodes` of 3
    or more the hub is a cluster of that many nodes on loopback, and every leaf is given
    the leafnode URLs of all of them."""
    leaf_ports = [free_port() for _ in range(hub_nodes)]
    hub_url = ",".join(f"nats-leaf://127.0.0.1:{port}" for port in leaf_ports)
    treasury = root / federation.TREASURER
    treasury.mkdir(parents=True, exist_ok=True)
    mint_key = SigningKey.generate()
    identity.write_key(treasury / MINT_KEY, mint_key)
    members = {}
    for name in names:
        port = free_port()
        config = make_entity(root, name, port=port)
        granted = (trust or {}).get(name)
        if granted is None:
            granted = {other: ALL for other in names if other != name}
        lines = "".join(f"{peer} = {json.dumps(list(perms))}\n" for peer, perms in granted.items())
        text = config.read_text()
        for old, new in [
            ('hub_url = ""', f'hub_url = "{hub_url}"'),
            ('provider = "moonshot"', 'provider = "scripted"'),
            ('base_url = ""', f'base_url = "{llm_url}"'),
            ("heartbeat_interval = 5.0", f"heartbeat_interval = {heartbeat}"),
            ("command_timeout = 15.0", "command_timeout = 5.0"),
            ("[trust]\n", f"[trust]\n{lines}"),
            ("[mint_keys]\n", f'[mint_keys]\n{federation.TREASURER} = '
                               f'"{bytes(mint_key.verify_key).hex()}"\n'),
        ]:
            text = edited(text, old, new)
        config.write_text(text + (extra or {}).get(name, ""))
        daemon = DaemonProc(config, root / f"{name}.log", die_with_parent=die_with_parent)
        members[name] = Member(name, config, port, daemon)
    nodes = _hub(root, {name: m.data for name, m in members.items()}, leaf_ports,
                 die_with_parent=die_with_parent, treasury=treasury)
    return Federation(root, next(iter(nodes.values())), leaf_ports[0], members,
                      treasury=treasury, nodes=nodes,
                      reader=reader_proc(root, names, die_with_parent=die_with_parent))


def reader_proc(root: Path, names: Sequence[str], *, die_with_parent: bool = False
                ) -> ReaderProc:
    """The hub's books reader for `names`, its logins made in `root/books-reader` (as
    `_hub` makes them), its log `root/books-reader.log`."""
    return ReaderProc(root / federation.READER, names, root / f"{federation.READER}.log",
                      die_with_parent=die_with_parent)


def build_leaves(
    root: Path, names: Sequence[str], *, grants: Mapping[str, federation.Permissions] | None
    = None, tls: tuple[Path, Path] | None = None,
) -> Federation:
    """A hub and a bare leaf server per name, each with its hub credentials in `root/name`
    (not started). `grants` are hub permissions beyond a member's own; with `tls` (a
    certificate and its key) the hub's leafnode port speaks only TLS and the leaves pin
    that certificate."""
    leaf_port = free_port()
    hub = _hub(root, {name: root / name for name in names}, [leaf_port], grants=grants,
               tls=tls)[HUB_NAME]
    hub_url = f"{'tls' if tls else 'nats-leaf'}://127.0.0.1:{leaf_port}"
    leaves = {
        name: leaf_server(name, root / name, hub_url, federation.seed_path(root / name),
                          hub_ca_file=str(tls[0]) if tls else "")
        for name in names
    }
    return Federation(root, hub, leaf_port, leaves=leaves, reader=reader_proc(root, names))


def leaf_server(
    name: str, data_dir: Path, hub_url: str, seed: Path, *, hub_ca_file: str = "",
    env: Mapping[str, str] | None = None, rewrite: Callable[[str], str] = str,
) -> ServerProcess:
    """Entity `name`'s leaf without its daemon (not started): the leaf config entityd
    renders (`rewrite` may change it), on the command line entityd's embedded server runs,
    with the hub seed in its environment."""
    conf = data_dir / "nats" / "leaf.conf"
    conf.parent.mkdir(parents=True, exist_ok=True)
    conf.write_text(rewrite(federation.render_leaf_conf(name, hub_url, seed,
                                                        hub_ca_file=hub_ca_file)))
    embedded = EmbeddedNatsServer(name=name, data_dir=data_dir, port=free_port(),
                                  binary=nats_server_binary(), config=str(conf))
    return ServerProcess(embedded.command(), embedded.port, embedded.log_path,
                         child_env(**federation.leaf_env(seed), **(env or {})))


def _hub(
    root: Path, data_dirs: Mapping[str, Path], leaf_ports: Sequence[int], *,
    grants: Mapping[str, federation.Permissions] | None = None,
    tls: tuple[Path, Path] | None = None, die_with_parent: bool = False,
    treasury: Path | None = None,
) -> dict[str, ServerProcess]:
    """The hub (not started), by server name: one server (`root/hub.conf`), or with several
    leaf ports a cluster of as many nodes (`root/hub-1.conf`, ...) routed to each other on
    loopback. A user per member, its nkey made in the member's data dir, and the
    treasurer's, made in `treasury`."""
    users = [(name, federation.make_entity_credentials(name, data)[0])
             for name, data in data_dirs.items()]
    treasurer = (federation.make_entity_credentials(federation.TREASURER, treasury)[0]
                 if treasury else "")
    reader = federation.reader_credentials(root / federation.READER)
    cert, key = tls or ("", "")
    route_ports = [free_port() for _ in leaf_ports] if len(leaf_ports) > 1 else []
    routes = tuple(f"nats-route://127.0.0.1:{port}" for port in route_ports)
    nodes = {}
    for i, leaf_port in enumerate(leaf_ports, 1):
        name, cluster = HUB_NAME, None
        if route_ports:
            name = f"hub-{i}"
            cluster = federation.HubCluster(HUB_NAME, routes, port=route_ports[i - 1])
        stem = "hub" if cluster is None else name
        port = free_port()
        conf = root / f"{stem}.conf"
        conf.write_text(federation.render_hub_conf(
            users, store_dir=root / f"{stem}-store", port=port, leaf_host="127.0.0.1",
            leaf_port=leaf_port, server_name=name, tls_cert=str(cert), tls_key=str(key),
            grants=grants, treasurer=treasurer, reader=reader, cluster=cluster))
        nodes[name] = ServerProcess([nats_server_binary(), "-c", str(conf)], port,
                                    root / f"{stem}.log", child_env(),
                                    die_with_parent=die_with_parent)
    return nodes
