"""The services the entity writes, run for real: committed through the workspace's
sandboxed git (as the coder commits), run in real bwrap as the sandbox uid, proxied to a
loopback port, watched through a real nats-server.

A broken commit leaves the old revision answering and says why; a fixed one switches
with no failed request under a client polling the whole time; SIGKILL is a death the
service comes back from, until its budget is spent; the service reaches no network, no
data dir, no daemon; and the daemon's stop leaves no process behind.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import signal
import socket
import threading
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

import protocol
from actors.sandbox.cgroup import CallLimits
from actors.services.actor import ServicesActor
from actors.services.messages import (
    NO_SUCH_SERVICE,
    ServiceInfo,
    ServiceLogs,
    ServiceLogsGet,
    ServiceRestart,
    ServiceResult,
    Services,
    ServicesGet,
)
from actors.workspace import Workspace
from entityd import EntitydError, identity
from entityd.config import Config, EntitySection, SandboxSection, ServicesSection
from protocol import Event, ReplayGuard
from tests.helpers import NatsServer, RunningActors, poll, running_actors

pytestmark = pytest.mark.timeout(90)
PREVIEW_HOST = ServicesSection().host  # where the previews listen by default

ENTITY = "entity-a"
ASK_TIMEOUT = 30.0
SANDBOX = SandboxSection(timeout=30.0, cpu_seconds=60, memory_mb=1024, max_processes=128)
# Who the service runs as: the sandbox uid when the daemon is root, else the daemon's own
# (in a user namespace), as the shipped unit runs it.
SANDBOX_UID = SANDBOX.uid if os.geteuid() == 0 else os.getuid()
SERVICES = ServicesSection(ready_timeout=3.0, restart_budget=2, restart_window=60.0,
                           log_bytes=4096)

# A service as the entity would write it: the standard library, HTTP on $ENTITYD_SOCKET.
APP = '''\
import http.server, json, os, socket, socketserver, sys

VERSION = {version!r}
HEALTHY = {healthy!r}
PROBE = {probe!r}


def probe():
    found = {{"uid": os.getuid(), "env": sorted(os.environ)}}
    for name, port in PROBE.get("ports", {{}}).items():
        try:
            socket.create_connection(("127.0.0.1", port), timeout=2).close()
            found[name] = "connected"
        except OSError as exc:
            found[name] = type(exc).__name__
    for path in PROBE.get("paths", []):
        try:
            with open(path, "rb") as f:
                f.read(1)
            found[path] = "read"
        except OSError as exc:
            found[path] = type(exc).__name__
    try:
        socket.create_connection(("1.1.1.1", 53), timeout=2).close()
        found["internet"] = "connected"
    except OSError as exc:
        found["internet"] = type(exc).__name__
    return found


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            code, body = (200, b"ok") if HEALTHY else (500, b"broken")
        elif self.path == "/probe":
            code, body = 200, json.dumps(probe()).encode()
        else:
            code, body = 200, f"{{VERSION}} {{self.path}}".encode()
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "proxy"


class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


if not HEALTHY:
    print("broken on purpose: /health answers 500", file=sys.stderr)
print(VERSION, "listening on", os.environ["ENTITYD_SOCKET"], flush=True)
Server(os.environ["ENTITYD_SOCKET"], Handler).serve_forever()
'''

MANIFEST = '''\
[services.{name}]
command = ["python3", "app.py"]
ready = "/health"
restart = "{restart}"
files = ["app.py"]
'''


def app(version: str, *, healthy: bool = True, probe: dict[str, Any] | None = None) -> str:
    return APP.format(version=version, healthy=healthy, probe=probe or {})


@dataclass
class Rig:
    actors: RunningActors
    workspace: Workspace
    config: Config
    events: list[Event] = field(default_factory=list)
    arrived: asyncio.Event = field(default_factory=asyncio.Event)

    async def ask(self, message: object, timeout: float = ASK_TIMEOUT) -> Any:
        env = await self.actors.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/services", message,
                                           timeout)
        return env.message

    async def services(self) -> dict[str, ServiceInfo]:
        answer = await self.ask(ServicesGet())
        assert isinstance(answer, Services)
        return {s.name: s for s in answer.services}

    async def commit(self, files: dict[str, str], message: str = "work") -> str:
        """Write `files` into the workspace and commit them as the coder does."""
        for name, text in files.items():
            path = self.workspace.path / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(text)
        made = await self.workspace.commit(message)
        assert made is not None
        return made.sha

    async def event(self, typ: str, timeout: float = 20.0, after: int = 0,
                    **match: Any) -> tuple[int, Event]:
        """The first event of type `typ` (from index `after`) whose data holds `match`."""
        async with asyncio.timeout(timeout):
            while True:
                for index in range(after, len(self.events)):
                    event = self.events[index]
                    if event.type == typ and all(event.data.get(k) == v
                                                 for k, v in match.items()):
                        return index, event
                self.arrived.clear()
                await self.arrived.wait()

    def seen(self, typ: str, after: int = 0) -> list[Event]:
        return [e for e in self.events[after:] if e.type == typ]


@asynccontextmanager
async def services_rig(nats_server: NatsServer, root: Path,
                       services: ServicesSection = SERVICES) -> AsyncIterator[Rig]:
    data = root / ENTITY
    data.mkdir(parents=True)
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)), sandbox=SANDBOX,
                    services=services)
    workspace = Workspace(config.workspace_dir, ENTITY, SANDBOX)
    await workspace.ensure()
    async with running_actors(nats_server.url, ENTITY,
                              {"services": lambda: ServicesActor(config, workspace)},
                              events=f"fed.evt.{ENTITY}.services.>") as actors:
        rig = Rig(actors, workspace, config)
        guard = ReplayGuard()

        async def collect() -> None:
            assert actors.events is not None
            async for msg in actors.events.messages:
                env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                    keyring=actors.keyring, replay=guard)
                rig.events.append(env.message)
                rig.arrived.set()

        async with asyncio.TaskGroup() as tasks:
            collector = tasks.create_task(collect())
            try:
                yield rig
            finally:
                collector.cancel()


def get(port: int, path: str = "/", timeout: float = 5.0) -> tuple[int, str]:
    """One request through the proxy, on a fresh connection."""
    conn = http.client.HTTPConnection(PREVIEW_HOST, port, timeout=timeout)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


async def aget(port: int, path: str = "/") -> tuple[int, str]:
    return await asyncio.to_thread(get, port, path)


class Poller:
    """A client polling through the proxy the whole time, in a thread of its own: every
    answer counted, every failure (refused, reset, not 200) kept with what it was."""

    def __init__(self, port: int) -> None:
        self.port = port
        self.requests = 0
        self.failures: list[str] = []
        self.bodies: list[str] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.requests += 1
            try:
                status, body = get(self.port)
            except OSError as exc:
                self.failures.append(repr(exc))
                continue
            if status != 200:
                self.failures.append(f"{status} {body}")
            elif not self.bodies or self.bodies[-1] != body:
                self.bodies.append(body)

    async def __aenter__(self) -> Poller:
        self._thread.start()
        return self

    async def __aexit__(self, *_: object) -> None:
        # Joined off the loop: the proxy the last request goes through runs on it.
        self._stop.set()
        await asyncio.to_thread(self._thread.join, 10)


def children(pid: int) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            if int(stat[stat.rfind(")") + 2:].split()[1]) == pid:
                found.append(int(entry))
    return found


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


def processes_of(marker: str) -> list[str]:
    """The live processes whose command line or working directory mentions `marker`."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ")
            state = Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if state != "Z" and marker.encode() in cmdline:
            found.append(f"{entry}: {cmdline.decode(errors='replace')[:200]}")
    return found


@pytest.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with services_rig(nats_server, tmp_path) as made:
        yield made


async def test_a_committed_service_answers_reloads_without_a_failed_request_and_keeps_the_last_good_one(  # noqa: E501
        rig: Rig) -> None:
    first = await rig.commit({"app.py": app("v1"),
                              "services.toml": MANIFEST.format(name="web", restart="always")})
    _, ready = await rig.event("service_ready", name="web")
    assert ready.data["commit"] == first
    info = (await rig.services())["web"]
    assert info.state == "running" and info.commit == first
    assert info.url == f"http://{PREVIEW_HOST}:{info.port}/"
    assert await aget(info.port, "/hello") == (200, "v1 /hello")
    v1_dir = rig.config.data_dir / "services" / "web" / info.revision
    assert (v1_dir / "app.py").read_text() == app("v1")

    async with Poller(info.port) as poller:
        # A commit that does not touch the service's files is no new revision.
        mark = len(rig.events)
        await rig.commit({"README.md": "notes\n"})
        await rig.event("services_applied", after=mark)
        assert not rig.seen("service_started", after=mark)

        # A commit that breaks it: the new revision never becomes ready, v1 keeps serving.
        mark = len(rig.events)
        broken = await rig.commit({"app.py": app("v2", healthy=False)})
        _, failed = await rig.event("service_failed", after=mark, name="web")
        assert failed.data["commit"] == broken
        assert "never became ready" in failed.data["reason"]
        assert "GET /health answered 'HTTP/1.0 500" in failed.data["reason"]
        assert "broken on purpose" in failed.data["output"]  # its own words, in the event
        assert failed.data["serving"] == info.revision
        assert await aget(info.port) == (200, "v1 /")
        after_broken = (await rig.services())["web"]
        assert (after_broken.state, after_broken.revision) == ("running", info.revision)
        assert "never became ready" in after_broken.last_error
        await poll(lambda: not (rig.config.data_dir / "services" / "web" /
                                failed.data["revision"]).exists(), timeout=10,
                   what="the failed revision's directory to go")

        # The fix: the new revision starts beside v1 and takes over once ready.
        mark = len(rig.events)
        fixed = await rig.commit({"app.py": app("v3")})
        _, switched = await rig.event("service_switched", after=mark, name="web")
        assert switched.data["previous"] == info.revision
        _, stopped = await rig.event("service_stopped", after=mark, name="web",
                                     revision=info.revision)
        assert stopped.data["reason"] == f"replaced by {switched.data['revision']}"
        await asyncio.sleep(0.5)  # the client keeps polling the new revision a little
    assert poller.failures == [], poller.failures[:5]
    assert poller.bodies == ["v1 /", "v3 /"]
    print(f"\nreload under a polling client: {poller.requests} requests, "
          f"{len(poller.failures)} failures")
    assert poller.requests > 50

    now = (await rig.services())["web"]
    assert (now.state, now.commit, now.port) == ("running", fixed, info.port)
    assert now.last_error == ""
    assert not v1_dir.exists()
    assert processes_of(str(v1_dir)) == []

    logs = await rig.ask(ServiceLogsGet("web"))
    assert isinstance(logs, ServiceLogs)
    assert logs.revision == now.revision
    # The newest log_bytes of its output: the polling pushed its first lines out.
    assert '"GET / HTTP/1.1" 200' in logs.text
    assert len(logs.text) == SERVICES.log_bytes and logs.cut > 0
    assert failed.data["revision"] in logs.revisions
    old_logs = await rig.ask(ServiceLogsGet("web", 100_000, failed.data["revision"]))
    assert "v2 listening on /workspace/.entityd.sock" in old_logs.text
    assert "broken on purpose" in old_logs.text
    assert len((await rig.ask(ServiceLogsGet("web", 10))).text) == 10

    # A services.toml that cannot be read changes nothing that runs, and says why.
    mark = len(rig.events)
    await rig.commit({"services.toml": "[services.web]\ncommand = 3\n"})
    _, invalid = await rig.event("services_invalid", after=mark)
    assert any("`command` is required" in e for e in invalid.data["errors"])
    assert any("`ready` is required" in e for e in invalid.data["errors"])
    assert await aget(info.port) == (200, "v3 /")
    listing = await rig.ask(ServicesGet())
    assert "`ready` is required" in listing.problem
    assert [s.state for s in listing.services] == ["running"]

    # Nor does a services.toml that is a directory.
    (rig.workspace.path / "services.toml").unlink()
    mark = len(rig.events)
    await rig.commit({"services.toml/x": "x\n"})
    _, invalid = await rig.event("services_invalid", after=mark)
    assert invalid.data["errors"] == ["services.toml is a directory, not a file"]
    assert await aget(info.port) == (200, "v3 /")
    (rig.workspace.path / "services.toml" / "x").unlink()
    (rig.workspace.path / "services.toml").rmdir()

    # Declared no more: stopped, its port closed.
    mark = len(rig.events)
    await rig.commit({"services.toml": "# nothing runs\n"})
    _, gone = await rig.event("service_stopped", after=mark, name="web")
    assert gone.data["reason"].startswith("no longer declared")
    assert await rig.services() == {}
    with pytest.raises(ConnectionRefusedError):
        await aget(info.port)


async def test_sigkill_is_a_death_it_comes_back_from_until_its_budget_is_spent(
        rig: Rig) -> None:
    await rig.commit({"app.py": app("v1"),
                      "services.toml": MANIFEST.format(name="api", restart="on-failure")})
    await rig.event("service_ready", name="api")
    info = (await rig.services())["api"]

    def kill_service(info: ServiceInfo) -> None:
        (inside,) = children(info.pid)  # bwrap's child: the service, pid 1 of its sandbox
        assert b"app.py" in Path(f"/proc/{inside}/cmdline").read_bytes()
        assert f"Uid:\t{SANDBOX_UID}\t" in Path(f"/proc/{inside}/status").read_text()
        os.kill(inside, signal.SIGKILL)

    for restarts in (1, 2):
        mark = len(rig.events)
        kill_service(info)
        _, exited = await rig.event("service_exited", after=mark, name="api")
        assert "killed by SIGKILL" in exited.data["reason"]
        assert exited.data["restarts"] == restarts
        await rig.event("service_ready", after=mark, name="api", restarts=restarts)
        info = (await rig.services())["api"]
        assert (info.state, info.restarts) == ("running", restarts)
        assert await aget(info.port) == (200, "v1 /")

    # The budget (2 within the window) is spent: the third death leaves it stopped.
    mark = len(rig.events)
    kill_service(info)
    _, failed = await rig.event("service_failed", after=mark, name="api")
    assert "restarted 2 times within 60 s" in failed.data["reason"]
    assert "stays stopped" in failed.data["reason"]
    info = (await rig.services())["api"]
    assert (info.state, info.pid) == ("failed", 0)
    with pytest.raises((ConnectionResetError, ConnectionRefusedError,
                        http.client.RemoteDisconnected)):
        await aget(info.port)

    # Asked for, a restart starts a fresh revision with a fresh budget.
    result = await rig.ask(ServiceRestart("api"))
    assert isinstance(result, ServiceResult)
    assert (result.ok, result.code) == (True, "ready"), result.text
    info = (await rig.services())["api"]
    assert (info.state, info.revision) == ("running", result.revision)
    assert await aget(info.port) == (200, "v1 /")
    unknown = await rig.ask(ServiceRestart("nope"))
    assert (unknown.ok, unknown.code) == (False, NO_SUCH_SERVICE)
    assert "declared: api" in unknown.text


async def test_the_service_reaches_no_network_no_data_dir_no_daemon_and_no_secret(
        rig: Rig, nats_server: NatsServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MOLTBOOK_API_KEY", "moltbook-fake-key-for-the-test")
    listener = socket.create_server(("127.0.0.1", 0))
    key_files = sorted(str(p) for p in rig.config.data_dir.iterdir() if p.is_file())
    assert key_files
    probe = {"ports": {"listener": listener.getsockname()[1], "nats": nats_server.port},
             "paths": [*key_files, str(rig.config.workspace_dir / "services.toml"),
                       "/workspace/app.py"]}
    try:
        await rig.commit({"app.py": app("probe", probe=probe),
                          "services.toml": MANIFEST.format(name="probe", restart="always")})
        await rig.event("service_ready", name="probe")
        port = (await rig.services())["probe"].port
        status, body = await aget(port, "/probe")
    finally:
        listener.close()
    assert status == 200
    found = json.loads(body)
    assert found["uid"] == SANDBOX_UID
    assert found["listener"] == "ConnectionRefusedError"  # a port the host listens on
    assert found["nats"] == "ConnectionRefusedError"  # the daemon's bus
    assert found["internet"] in ("OSError", "TimeoutError")  # network unreachable
    for path in key_files:
        assert found[path] == "FileNotFoundError", path
    assert found[str(rig.config.workspace_dir / "services.toml")] == "FileNotFoundError"
    assert found["/workspace/app.py"] == "read"  # its own snapshot only
    assert "MOLTBOOK_API_KEY" not in found["env"]
    assert set(found["env"]) <= {"PATH", "HOME", "TMPDIR", "LANG", "TERM", "ENTITYD_SOCKET",
                                 "ENTITYD_SERVICE", "ENTITYD_REVISION", "PYTHONUNBUFFERED",
                                 "GIT_CONFIG_COUNT", "GIT_CONFIG_KEY_0", "GIT_CONFIG_VALUE_0",
                                 "PWD", "SHLVL", "_", "LC_CTYPE"}


async def test_a_symlink_in_place_of_the_socket_is_never_followed(
        rig: Rig, tmp_path: Path) -> None:
    # A socket of the host that the daemon (root) could reach and the sandbox cannot.
    host_socket = tmp_path / "host.sock"
    reached: list[bytes] = []

    async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        reached.append(await reader.read(100))
        writer.close()

    server = await asyncio.start_unix_server(record, str(host_socket))
    evil = (
        "import os, socketserver, http.server, time\n"
        "real = '/workspace/real.sock'\n"
        "class H(http.server.BaseHTTPRequestHandler):\n"
        "    def do_GET(self):\n"
        "        self.send_response(200); self.end_headers()\n"
        "    def address_string(self): return 'x'\n"
        "s = socketserver.UnixStreamServer(real, H)\n"
        f"os.symlink({str(host_socket)!r}, os.environ['ENTITYD_SOCKET'])\n"
        "print('symlinked', flush=True)\n"
        "s.serve_forever()\n"
    )
    try:
        await rig.commit({"app.py": evil,
                          "services.toml": MANIFEST.format(name="evil", restart="never")})
        _, failed = await rig.event("service_failed", name="evil")
    finally:
        server.close()
    assert reached == []  # the daemon never connected to the host's socket
    assert "/workspace/.entityd.sock is not a socket" in failed.data["reason"]


async def test_the_daemons_stop_stops_every_service(nats_server: NatsServer,
                                                    tmp_path: Path) -> None:
    from entityd.client import EntityClient
    from entityd.config import NatsSection
    from entityd.daemon import Daemon
    from tests.test_daemon import HealthOnly

    data = tmp_path / ENTITY
    data.mkdir()
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)),
                    nats=NatsSection(url=nats_server.url), sandbox=SANDBOX, services=SERVICES)
    workspace = Workspace(config.workspace_dir, ENTITY, SANDBOX)
    await workspace.ensure()
    two = MANIFEST.format(name="one", restart="always") + MANIFEST.format(name="two",
                                                                        restart="always")
    for name, text in {"app.py": app("v1"), "services.toml": two}.items():
        (workspace.path / name).write_text(text)
    assert await workspace.commit("two services")
    daemon = Daemon(config, HealthOnly(),
                    extra_actors={"services": lambda: ServicesActor(config, workspace)})
    running = asyncio.create_task(daemon.run())
    try:
        async with EntityClient(config) as client:
            async def both_running() -> Services | None:
                try:
                    answer: Services = await client.ask("services", ServicesGet(), 5.0)
                except EntitydError:  # the daemon is not serving yet
                    return None
                states = [s.state for s in answer.services]
                return answer if states == ["running", "running"] else None

            await poll(both_running, timeout=30, what="both services running")
            await _entityctl_services(client)  # it restarts `one`: a new revision
            answer = await poll(both_running, timeout=30, what="both services running")
        ports = [s.port for s in answer.services]
        for port in ports:
            assert await aget(port) == (200, "v1 /")
        marker = str(config.data_dir / "services")
        sandboxes = [s.pid for s in answer.services]
        inside = [pid for bwrap in sandboxes for pid in children(bwrap)]
        assert len(inside) == 2
    finally:
        daemon.request_stop()
        assert await asyncio.wait_for(running, 30) == 0
    assert [pid for pid in [*sandboxes, *inside] if alive(pid)] == []
    assert processes_of(marker) == []
    assert processes_of("app.py") == []
    assert sorted(p.name for p in (config.data_dir / "services").iterdir()) == ["ports.json"]
    for port in ports:
        with pytest.raises(ConnectionRefusedError):
            await aget(port)


async def _entityctl_services(client: Any) -> None:
    """`entityctl services`, `services logs NAME` and `services restart NAME`, through
    their own module's parser and handlers (entityd/app/ctl_services.py)."""
    import argparse
    import io
    import sys

    from entityd.app import ctl_services

    parser = argparse.ArgumentParser()
    ctl_services.add_commands(parser.add_subparsers(dest="command"))

    async def run(*argv: str) -> tuple[int, str]:
        args = parser.parse_args(list(argv))
        args.timeout, args.timeout_given = 10.0, False
        out = io.StringIO()
        saved, sys.stdout = sys.stdout, out
        try:
            code = await args.run(client, args)
        finally:
            sys.stdout = saved
        return code, out.getvalue()

    code, text = await run("services", "--json")
    assert code == 0
    listed = json.loads(text)
    assert [s["name"] for s in listed["services"]] == ["one", "two"]
    code, text = await run("services")
    assert code == 0 and "one" in text and "running" in text and f"http://{PREVIEW_HOST}:" in text
    code, text = await run("services", "logs", "two")
    assert code == 0 and "v1 listening" in text
    code, text = await run("services", "restart", "one")
    assert code == 0 and text.startswith("ready: one ")
    code, text = await run("services", "restart", "three")
    assert code == 2 and "no service 'three'" in text


async def test_a_sigkilled_daemon_leaves_no_service_behind(tmp_path: Path) -> None:
    """The real process entry: bwrap dies with its parent, and takes the service along."""
    import sys

    from entityd import config as config_mod
    from tests.helpers import REPO, child_env, make_entity

    path = make_entity(tmp_path)
    config = config_mod.load(path, environ={})
    workspace = Workspace(config.workspace_dir, config.name, config.sandbox)
    await workspace.ensure()
    marker = f"marker-{os.getpid()}-{time.monotonic_ns()}"
    manifest = MANIFEST.format(name="web", restart="always").replace(
        '["python3", "app.py"]', f'["python3", "app.py", "{marker}"]')
    for name, text in {"app.py": app("v1"), "services.toml": manifest}.items():
        (workspace.path / name).write_text(text)
    assert await workspace.commit("a service")
    log = os.open(tmp_path / "entityd.log", os.O_WRONLY | os.O_CREAT, 0o600)
    try:
        daemon = await asyncio.create_subprocess_exec(
            sys.executable, str(REPO / "tests" / "services_entityd.py"), "run", "--config",
            str(path), stdout=log, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, env=child_env())
    finally:
        os.close(log)
    try:
        running = await poll(lambda: [p for p in processes_of(marker) if "bwrap" not in p],
                             timeout=30, what=lambda: "the service to start:\n" + (
                                 tmp_path / "entityd.log").read_text()[-3000:])
        assert len(running) == 1, running
    finally:
        daemon.kill()
        await asyncio.wait_for(daemon.wait(), 10)
    await poll(lambda: processes_of(marker) == [], timeout=10,
               what=lambda: f"the service to die with the daemon: {processes_of(marker)}")
    # The killed daemon's sandbox cgroups are swept by the next daemon's detection.
    limits = await asyncio.to_thread(CallLimits.detect, SANDBOX.memory_mb * 1024 * 1024,
                                     SANDBOX.max_processes)
    limits.close()
