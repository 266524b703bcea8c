"""The daemon: wires config, identity, NATS and the runtime, and runs the actors an
assembly names until SIGTERM.

Which actors those are is the application's choice (entityd.app runs actors.assembly's),
so the runtime library never imports them."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Protocol

import nats.errors
from nats.aio.client import Client

from protocol import Keyring, Status

from . import bus, eventlog, federation, heap, identity, localauth
from .actor import Actor
from .config import Config
from .errors import ConfigError, DamagedFile, EntitydError, IdentityError, NatsServerError
from .logs import get
from .natsserver import EmbeddedNatsServer, shipped_config
from .runtime import Runtime
from .sdnotify import Notifier
from .storewatch import StoreWatch
from .supervisor import Supervision
from .transport import Transport, wait_closed

log = get("entityd.daemon")

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2  # a bad config, key or file of the data dir: fixed by an operator
LOCK_NAME = "entityd.lock"
SERVER_PROBE = "$JS.API.INFO"  # what the watchdog asks the server, which answers itself


def lock_data_dir(data_dir: Path) -> int:
    """Take DATA_DIR/entityd.lock for this process's life (flock; the kernel lets it go
    when the process dies), with our pid in it; the open descriptor is the lock.

    A second daemon on the same dir would share its key, databases and JetStream store,
    so it is refused here, before it starts anything, naming the first one's pid."""
    path = data_dir / LOCK_NAME
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise EntitydError(
            f"another entityd (pid {holder}) is running on {data_dir} (it holds {path}); "
            "stop it first, or give this one its own data dir"
        ) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
    return fd


def build_keyring(config: Config, own: identity.Identity) -> Keyring:
    keyring = Keyring()
    keyring.add(own.public_key, config.name, config.name)
    for name, key in config.operators.items():
        keyring.add(bytes.fromhex(key), config.name, f"operator:{name}")
    return keyring


def leaf_server_config(cfg: Config) -> tuple[str, dict[str, str]]:
    """Write DATA_DIR/nats/leaf.conf for joining the hub; the seed goes in the env only."""
    seed = Path(cfg.nats.hub_credentials) if cfg.nats.hub_credentials else (
        federation.seed_path(cfg.data_dir)
    )
    if not seed.exists():
        raise NatsServerError(
            f"nats.hub_url is set but there is no hub login key at {seed}: create it with "
            f"`entityd federation hub-user {cfg.name} --data-dir {cfg.data_dir}` and add "
            "the printed entry to the hub"
        )
    path = cfg.data_dir / "nats" / "leaf.conf"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(federation.render_leaf_conf(
        cfg.name, cfg.nats.hub_url, seed, domain=cfg.nats.domain, host=cfg.nats.host,
        port=cfg.nats.port, hub_ca_file=cfg.nats.hub_ca_file,
    ))
    return str(path), federation.leaf_env(seed)


class Assembly(Protocol):
    """Which actors a daemon runs, and what they share (a model client, the sandboxes'
    limits), built by the application from the config."""

    @property
    def sandbox(self) -> str:
        """How the sandboxes are confined, for the status."""
        ...

    def actors(self, status: Callable[[], Status],
               supervision: Supervision) -> Mapping[str, Callable[[], Actor]]:
        """The actor factories by name; `status` reports the daemon, `supervision` lets
        an actor restart others (restart_peer)."""
        ...

    async def aclose(self) -> None:
        """Release what the actors shared, once they are stopped."""
        ...


class Daemon:
    def __init__(
        self,
        config: Config,
        assembly: Assembly,
        *,
        extra_actors: Mapping[str, Callable[[], Actor]] | None = None,
        notifier: Notifier | None = None,
        on_fatal: Callable[[], None] | None = None,
    ) -> None:
        """`extra_actors` run beside the assembly's (the runtime's tests). `on_fatal` is
        called once the daemon has given up (past the restart budget, or any error),
        before its cleanup: the process entry bounds how long that cleanup may take."""
        self.config = config
        self.assembly = assembly
        self.on_fatal = on_fatal
        self.extra_actors = dict(extra_actors or {})
        self._token: str | None = None  # the embedded server's local login
        self.notifier = notifier or Notifier()
        self.identity = identity.load(config.name, config.data_dir)
        self.started_at = time.time()
        self._started_mono = time.monotonic()
        self._stop = asyncio.Event()
        self.signalled = False  # a stop asked for by SIGTERM or SIGINT
        self.restart_for = ""  # why the daemon stopped to be started again, if it did
        self._server: EmbeddedNatsServer | None = None
        self._nc: Client | None = None
        self.runtime: Runtime | None = None

    def request_stop(self) -> None:
        self._stop.set()

    def _signalled(self) -> None:
        self.signalled = True
        self.request_stop()

    def request_restart(self, reason: str) -> None:
        """Stop as for SIGTERM, to be started again by the caller (`entityd run` does,
        in the same process, as systemd would): `restart_for` says why."""
        log.warning("entityd_restarting", entity=self.config.name, reason=reason)
        self.restart_for = reason
        self._stop.set()

    async def run(self) -> int:
        """Run until asked to stop; the process exit code. EntitydError, before anything
        starts, when another daemon runs on the same data dir."""
        lock = lock_data_dir(self.config.data_dir)
        try:
            loop = asyncio.get_running_loop()
            # Kept until the loop closes: a second SIGTERM during shutdown must not kill us.
            for sig in (signal.SIGTERM, signal.SIGINT):
                loop.add_signal_handler(sig, self._signalled)
            return await self._run()
        finally:
            os.close(lock)

    async def _run(self) -> int:
        cfg = self.config
        log.info("entityd_starting", entity=cfg.name, public_key=self.identity.public_hex,
                 loop=type(asyncio.get_running_loop()).__module__.split(".")[0])
        stopped = damaged = False
        try:
            await self._serve()
            stopped = True
        except* EntitydError as group:
            for exc in group.exceptions:
                log.error("entityd_failed", reason=str(exc))
                damaged = damaged or isinstance(exc, DamagedFile | IdentityError | ConfigError)
        finally:
            if not stopped and self.on_fatal is not None:
                self.on_fatal()  # also for a bug of ours, which goes on up
            await self._shutdown(drain=stopped)
        if not stopped:
            return EXIT_USAGE if damaged else EXIT_FAILED
        log.info("entityd_stopped", entity=cfg.name)
        return EXIT_OK

    async def _serve(self) -> None:
        cfg = self.config
        url = await self._start_server()
        self._nc = await bus.connect(
            url,
            entity=cfg.name,
            client_name=f"entityd-{cfg.name}",
            connect_timeout=cfg.nats.connect_timeout,
            token=self._token,
        )
        transport = Transport(
            self._nc,
            entity=cfg.name,
            key=self.identity.signing_key,
            keyring=build_keyring(cfg, self.identity),
            replay_window_ms=int(cfg.protocol.replay_window * 1000),
            replay_capacity=cfg.protocol.replay_capacity,
            max_bytes=cfg.protocol.max_message_bytes,
        )
        await eventlog.ensure(self._nc, cfg)  # before any actor emits its first event
        self.runtime = Runtime(transport, cfg.runtime)
        for name, factory in self._actors().items():
            self.runtime.add(name, factory)
        async with asyncio.TaskGroup() as tg:
            await self.runtime.start(tg)
            background = [
                tg.create_task(self._watch_server(), name="nats-server-watch"),
                tg.create_task(heap.trim_every(), name="heap-trim"),
            ]
            # Also without systemd: a server that stops answering is said in the log.
            background.append(tg.create_task(self._watchdog(), name="sd-watchdog"))
            if self._server is not None:
                watch = StoreWatch(self._server.dir / "jetstream", self._server.log_path,
                                   self.request_restart)
                background.append(tg.create_task(watch.run(), name="nats-store-watch"))
            self.notifier.ready(f"entity {cfg.name} serving")
            log.info("entityd_ready", entity=cfg.name, nats=bus.shown_url(url))
            await self._stop.wait()
            log.info("entityd_stopping", entity=cfg.name)
            if self.restart_for and not self.signalled:
                self.notifier.reloading()
            else:
                self.notifier.stopping()
            await self.runtime.stop()
            for task in background:
                task.cancel()

    def _actors(self) -> dict[str, Callable[[], Actor]]:
        assert self.runtime is not None
        return {**self.assembly.actors(self.status, self.runtime), **self.extra_actors}

    async def _start_server(self) -> str:
        cfg = self.config
        if not cfg.embedded_nats:
            return cfg.nats.url
        server_config, env = cfg.nats.config, dict[str, str]()
        if cfg.nats.hub_url:
            server_config, env = leaf_server_config(cfg)
        base = Path(server_config) if server_config else shipped_config()
        if base is not None and not cfg.nats.config:  # an operator's own config: as it is
            self._token = localauth.ensure(cfg.data_dir)
            server_config = str(localauth.server_config(base, cfg.data_dir))
            env = {**env, localauth.TOKEN_ENV: self._token}
        self._server = EmbeddedNatsServer(
            name=cfg.name,
            data_dir=cfg.data_dir,
            host=cfg.nats.host,
            port=cfg.nats.port,
            binary=cfg.nats.server_binary,
            config=server_config,
            ready_timeout=cfg.nats.ready_timeout,
            extra_env=env,
        )
        await self._server.start()
        return self._server.url

    async def _watch_server(self) -> None:
        if self._server is None:
            return
        code = await self._server.wait()
        if not self._stop.is_set():
            raise NatsServerError(f"the embedded nats-server exited unexpectedly (code {code})")

    async def _watchdog(self) -> None:
        """Tell systemd the daemon is alive, but only while its NATS server answers: a
        daemon whose server froze serves nothing, and systemd's WatchdogSec must see it.

        The round trip is a request the server itself answers (JetStream's account info;
        a server without JetStream answers "no responders", an answer too), not nats-py's
        flush: a flush that times out leaves its PONG's future cancelled, and the late
        PONG then breaks nats-py's read loop. No message of the daemon's own: every
        subject of the entityd layout carries envelopes only. Only the daemon's own
        (embedded) server is asked: an operator's server (nats.url) may not let this
        user ask its API, and a refusal must not starve the watchdog."""
        assert self._nc is not None
        interval = self.notifier.watchdog_interval or 10.0
        silent = False
        while True:
            answered = self._server is None or await _answers(self._nc, timeout=interval)
            if answered:
                self.notifier.watchdog()
                if silent:
                    log.info("nats_server_answers_again")
            elif not silent:
                log.error("nats_server_not_answering", timeout_s=interval,
                          effect="the systemd watchdog is not fed until it answers again")
            silent = not answered
            await asyncio.sleep(interval)

    async def _shutdown(self, drain: bool) -> None:
        """Close the LLM client, the connection and the embedded server. A daemon that
        gave up does not drain: the actors that would take what is pending are gone,
        and a drain would wait for them."""
        with contextlib.suppress(Exception):
            await self.assembly.aclose()
        if self.runtime is not None:
            self.runtime.transport.closing = True
        if self._nc is not None:
            with contextlib.suppress(Exception):
                if drain:
                    await wait_closed(self._nc, timeout=5.0)
                else:
                    async with asyncio.timeout(1.0):
                        await self._nc.close()
        if self._server is not None:
            # Past the budget there is little time left: a server slow to go is killed.
            await self._server.stop() if drain else await self._server.stop(timeout=1.5)

    @property
    def nats_server_pid(self) -> int | None:
        """The embedded nats-server's pid while it runs (read from any thread)."""
        server = self._server
        return server.pid if server is not None else None

    def status(self) -> Status:
        nc = self._nc
        url = bus.shown_url(nc.connected_url.geturl()) if nc and nc.connected_url else (
            "(disconnected)")
        runtime = self.runtime
        return Status(
            entity=self.config.name,
            public_key=self.identity.public_hex,
            uptime_s=round(time.monotonic() - self._started_mono, 3),
            nats_server=url + (" (embedded)" if self._server else ""),
            actors=runtime.actors() if runtime else [],
            started_at=self.started_at,
            rejected=dict(runtime.rejected) if runtime else {},
            sandbox=self.assembly.sandbox,
        )


async def _answers(nc: Client, *, timeout: float) -> bool:
    """Whether the server answered a request of its own API within `timeout`."""
    try:
        await nc.request(SERVER_PROBE, b"", timeout=timeout)
    except nats.errors.NoRespondersError:
        return True  # no JetStream there, but the server said so
    except (TimeoutError, nats.errors.Error):
        return False
    return True


__all__ = ["Daemon", "build_keyring"]
