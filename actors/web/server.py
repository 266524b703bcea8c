"""uvicorn serving the page inside the daemon's loop, on a socket bound beforehand (so a
port in use fails the web actor's start with a clear error), without uvicorn's signal
handlers or logging setup: the daemon owns both."""

from __future__ import annotations

import asyncio
import contextlib
import errno
import socket
from collections.abc import Generator
from typing import Any

import uvicorn

from entityd import ConfigError

GRACE_S = 1  # open event streams are cut after this on stop


class _Server(uvicorn.Server):
    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield  # the daemon's SIGTERM handler stops the actor, which stops the server


def bind(host: str, port: int) -> socket.socket:
    """A listening socket at host:port (0: any free port), or ConfigError naming the key."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise ConfigError("web.port", f"{host}:{port} is in use by another program; "
                              "choose another port, or 0 for any free one") from None
        raise ConfigError("web.host", f"cannot listen on {host}:{port}: "
                          f"{exc.strerror}") from None
    sock.listen(128)
    sock.setblocking(False)
    return sock


class WebServer:
    def __init__(self, app: Any, sock: socket.socket) -> None:
        self.sock = sock
        config = uvicorn.Config(app, lifespan="off", log_config=None, access_log=False,
                                timeout_graceful_shutdown=GRACE_S, proxy_headers=False,
                                server_header=False, date_header=False)
        self._server = _Server(config)

    @property
    def port(self) -> int:
        return int(self.sock.getsockname()[1])

    async def serve(self) -> None:
        try:
            await self._server.serve(sockets=[self.sock])
        except asyncio.CancelledError:
            self._server.should_exit = self._server.force_exit = True
            for server in self._server.servers:
                server.close()
            for connection in list(self._server.server_state.connections):
                connection.shutdown()
            raise
        finally:
            self.sock.close()

    def stop(self) -> None:
        self._server.should_exit = True
