"""`entityd run` and `entityctl status` as a user runs them: real processes, real nats-server."""

from __future__ import annotations

import asyncio
import json
import os
import re
import signal
import time
from collections.abc import Callable
from pathlib import Path

import nats
import pytest

import protocol
from actors.health import HealthActor
from entityd import config as config_mod
from entityd import identity, localauth
from entityd.actor import Actor
from entityd.bus import barrier
from entityd.daemon import EXIT_FAILED, Daemon
from entityd.supervisor import Supervision
from protocol import Envelope, Keyring, ReplayGuard, Status
from tests.helpers import DaemonProc, NatsServer, ctl, make_entity

pytestmark = pytest.mark.timeout(90)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    status = Path(f"/proc/{pid}/status")
    return status.exists() and "State:\tZ" not in status.read_text()


def _embedded_pid(daemon: DaemonProc) -> int:
    match = re.search(r'"pid": (\d+), "url": "[^"]+", "event": "nats_server_ready"', daemon.log())
    assert match, daemon.log()
    return int(match.group(1))


def test_embedded_mode_serves_status_and_sigterm_leaves_nothing(tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        daemon.wait_log('"entityd_ready"')
        server_pid = _embedded_pid(daemon)
        assert _pid_alive(server_pid)

        text = ctl(config, "status")
        assert text.returncode == 0, text.stderr
        public = identity.read_public(config.parent).hex()
        assert "entity:      entity-a" in text.stdout
        assert public in text.stdout
        assert "(embedded)" in text.stdout
        assert re.search(r"health\s+running\s+restarts 0", text.stdout), text.stdout
        assert re.search(r"uptime:\s+\d\d:\d\d:\d\d", text.stdout)
        # Which limits hold the sandbox: per-call cgroups as root here, else why not.
        limits = r"cgroup v\d per call" if os.geteuid() == 0 else r"(cgroup v\d|rlimits only: )"
        assert re.search(r"sandbox:\s+" + limits, text.stdout), text.stdout

        as_json = ctl(config, "status", "--json")
        assert as_json.returncode == 0, as_json.stderr
        status = json.loads(as_json.stdout)
        assert status["entity"] == "entity-a"
        assert status["public_key"] == public
        assert status["nats_server"].startswith("nats://127.0.0.1:")
        assert status["uptime_s"] >= 0
        assert {a["name"]: (a["state"], a["restarts"]) for a in status["actors"]} == {
            name: ("running", 0)
            for name in ("health", "memory", "tool", "coder", "orchestrator", "peer",
                         "ledger", "services")
        }
        assert (config.parent / "nats" / "jetstream").is_dir()
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log()[-2000:]
    assert not _pid_alive(server_pid)
    assert '"entityd_stopped"' in daemon.log()


def test_sigkilled_daemon_takes_its_nats_server_down(tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    daemon.wait_log('"entityd_ready"')
    server_pid = _embedded_pid(daemon)
    daemon.kill()
    for _ in range(200):
        if not _pid_alive(server_pid):
            break
        time.sleep(0.05)
    assert not _pid_alive(server_pid)


def test_status_refuses_a_key_it_does_not_know_and_accepts_an_operator(tmp_path: Path) -> None:
    stranger_key = tmp_path / "stranger.key"
    operator_key = tmp_path / "operator.key"
    from nacl.signing import SigningKey

    identity.write_key(stranger_key, SigningKey.generate())
    operator = SigningKey.generate()
    identity.write_key(operator_key, operator)
    config = make_entity(
        tmp_path, extra=f'alice = "{bytes(operator.verify_key).hex()}"\n'
    )
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        daemon.wait_log('"entityd_ready"')
        refused = ctl(config, "--key", str(stranger_key), "status")
        assert refused.returncode == 3
        assert "unknown_key" in refused.stderr
        assert refused.stdout == ""

        allowed = ctl(config, "--key", str(operator_key), "status", "--json")
        assert allowed.returncode == 0, allowed.stderr
        status = json.loads(allowed.stdout)
        assert status["rejected"] == {"unknown_key": 1}
    finally:
        assert daemon.terminate() == 0


def test_status_with_an_exposed_key_file_is_refused_locally(tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    os.chmod(identity.key_path(config.parent), 0o644)
    result = ctl(config, "status")
    assert result.returncode == 2
    assert "chmod 600" in result.stderr


def test_status_without_a_daemon_says_it_cannot_reach_it(tmp_path: Path) -> None:
    config = make_entity(tmp_path)
    result = ctl(config, "--timeout", "2", "status")
    assert result.returncode == 4
    assert "cannot reach" in result.stderr


def test_daemon_survives_its_nats_server_being_killed(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "store").start()
    config = make_entity(tmp_path, nats_url=server.url)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        daemon.wait_log('"entityd_ready"')
        assert ctl(config, "status").returncode == 0
        server.kill()
        daemon.wait_log('"nats_disconnected"')
        assert ctl(config, "--timeout", "2", "status").returncode == 4
        server.start()
        daemon.wait_log('"nats_reconnected"')
        after = ctl(config, "status", "--json")
        assert after.returncode == 0, after.stderr + daemon.log()[-2000:]
        assert {a["state"] for a in json.loads(after.stdout)["actors"]} == {"running"}
    finally:
        code = daemon.terminate()
        server.stop()
    assert code == 0


async def test_runtime_events_are_signed_and_observable(tmp_path: Path) -> None:
    server = NatsServer(tmp_path / "store").start()
    config = make_entity(tmp_path, nats_url=server.url)
    observer = await nats.connect(server.url)
    events = await observer.subscribe("fed.evt.entity-a.runtime.>")
    await barrier(observer)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    keyring = Keyring()
    keyring.add(identity.read_public(config.parent), "entity-a")
    guard = ReplayGuard()
    seen: list[tuple[str, str]] = []
    try:
        async with asyncio.timeout(30):
            while ("actor_started", "health") not in seen:
                msg = await events.next_msg(timeout=30)
                env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                    keyring=keyring, replay=guard)
                assert msg.subject == f"fed.evt.entity-a.runtime.{env.message.type}"
                seen.append((env.message.type, env.message.data["actor"]))
        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        async with asyncio.timeout(30):
            while ("actor_stopped", "health") not in seen:
                msg = await events.next_msg(timeout=30)
                env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                    keyring=keyring, replay=guard)
                seen.append((env.message.type, env.message.data["actor"]))
        assert daemon.proc.wait(30) == 0  # type: ignore[union-attr]
    finally:
        daemon.kill()
        await observer.close()
        server.stop()


class CrashOnStart(Actor):
    name = "doomed"

    async def on_start(self) -> None:
        raise RuntimeError("cannot start")

    async def handle(self, envelope: Envelope) -> object | None:
        return None


class HealthOnly:
    """An assembly of the health actor alone: the runtime's own test."""

    sandbox = "none"

    def actors(self, status: Callable[[], Status],
               supervision: Supervision) -> dict[str, Callable[[], Actor]]:
        return {HealthActor.name: lambda: HealthActor(status)}

    async def aclose(self) -> None:
        pass


async def test_crash_loop_past_budget_makes_the_daemon_exit_non_zero(
    nats_server: NatsServer, tmp_path: Path
) -> None:
    config = make_entity(
        tmp_path, nats_url=nats_server.url,
    )
    cfg = config_mod.load(
        config,
        environ={"ENTITYD_RUNTIME_RESTART_BUDGET": "3", "ENTITYD_RUNTIME_BACKOFF_INITIAL": "0.01"},
    )
    daemon = Daemon(cfg, HealthOnly(), extra_actors={"doomed": CrashOnStart})
    async with asyncio.timeout(30):
        code = await daemon.run()
    assert code == EXIT_FAILED
    assert daemon.runtime is not None
    doomed = daemon.runtime.supervisor.actors["doomed"]
    assert doomed.state.value == "failed"
    assert doomed.restarts == 3


def test_daemon_tells_systemd_ready_watchdog_and_stopping(tmp_path: Path) -> None:
    import socket

    from tests.helpers import child_env

    address = str(tmp_path / "notify.sock")
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(address)
    sock.settimeout(20)
    config = make_entity(tmp_path)
    env = child_env(NOTIFY_SOCKET=address, WATCHDOG_USEC="200000")
    daemon = DaemonProc(config, tmp_path / "entityd.log", env=env).start()
    received: list[str] = []
    try:
        while not any(m.startswith("READY=1") for m in received):
            received.append(sock.recv(4096).decode())
        assert ctl(config, "status").returncode == 0  # READY means it serves
        watchdogs = 0
        while watchdogs < 2:
            message = sock.recv(4096).decode()
            received.append(message)
            watchdogs += message == "WATCHDOG=1"
        daemon.proc.send_signal(signal.SIGTERM)  # type: ignore[union-attr]
        while "STOPPING=1" not in received:
            received.append(sock.recv(4096).decode())
        assert daemon.proc.wait(30) == 0  # type: ignore[union-attr]
    finally:
        daemon.kill()
        sock.close()
    ready = next(m for m in received if m.startswith("READY=1"))
    assert "STATUS=entity entity-a serving" in ready


def _token_shown(token: str, server_pid: int, data: Path) -> list[str]:
    """Where the token shows beyond its own file: the server's command line (every
    local user can read it) and the config it was started with."""
    places = {"cmdline": Path(f"/proc/{server_pid}/cmdline"),
              "server.conf": data / "nats" / "server.conf"}
    return [name for name, path in places.items() if token in path.read_text()]


async def test_the_local_bus_takes_only_the_daemons_login(tmp_path: Path) -> None:
    """Every process of the host could reach the embedded server on loopback, and so
    could a sandboxed command let onto the network: only the token in the data dir
    (0600, never on a command line) logs in."""
    config = make_entity(tmp_path)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
        token = localauth.read(config.parent)  # refuses a file others could read
        port = config_mod.load(config).nats.port
        assert _token_shown(token, _embedded_pid(daemon), config.parent) == []

        async def login(url: str) -> str:
            nc = nats.NATS()
            try:
                await nc.connect(url, allow_reconnect=False, connect_timeout=2,
                                 max_reconnect_attempts=0)
            except Exception as exc:  # whatever nats-py says: refused
                return f"refused: {exc!r}"
            finally:
                await nc.close()
            return "in"

        assert (await login(f"nats://127.0.0.1:{port}")).startswith("refused")
        assert (await login(f"nats://wrong@127.0.0.1:{port}")).startswith("refused")
        assert await login(f"nats://{token}@127.0.0.1:{port}") == "in"
        status = await asyncio.to_thread(ctl, config, "status")
        assert status.returncode == 0  # entityctl logs in with it
    finally:
        code = await asyncio.to_thread(daemon.terminate)
    assert code == 0, daemon.log()[-2000:]
