"""A service's preview port: a loopback TCP listener whose connections are forwarded byte
for byte, both ways, to the Unix socket of the revision serving at the moment each
connection arrives.

Which revision that is is read once per connection, with no await between the read and
the count (`Revision.enter`), so a switch is atomic for new connections while the ones
already open finish on the old revision, which is stopped only once they are done (or
after the service's drain time). Connections are bounded in number, in the time to send
the first request's head, in the time to reach the service and in idle time.

Each connection's first request head is read before anything reaches the service, and
its Host must name loopback (and this port, if it names one): a web page whose DNS name
was rebound to the preview's address gets 421, not the service's answers. A browser sends
one origin's requests on a connection, so the first Host speaks for all that follow.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import ipaddress
import socket
import time
from collections.abc import Callable

from entityd import get_logger

from . import endpoint
from .revision import Revision

log = get_logger("actors.services")

MAX_CONNECTIONS = 64  # open at once per service; more are closed at once
CONNECT_S = 5.0  # to reach the revision's socket
IDLE_S = 120.0  # with no byte either way, a connection is closed
# To send the first request's head: a connection holding a slot without a request (64 of
# them would keep every browser out) is closed sooner than an idle one. A browser opens
# a new connection for a request when its spare one was closed.
HEAD_S = 15.0
CHUNK = 1 << 16
BACKLOG = 128
MAX_HEAD = 1 << 16  # bytes of a request head (request line and headers)


class _Idle(Exception):
    pass


def listen(host: str, preferred: int = 0) -> socket.socket:
    """A listening socket on `host`, on `preferred` if it is free, else on any free port."""
    for port in ([preferred, 0] if preferred else [0]):
        sock = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET,
                             socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(BACKLOG)
            sock.setblocking(False)
            return sock
        except OSError as exc:
            sock.close()
            if port == 0 or exc.errno != errno.EADDRINUSE:
                raise
    raise AssertionError("unreachable")


class Proxy:
    def __init__(self, sock: socket.socket, target: Callable[[], Revision | None]) -> None:
        self.sock = sock
        self.port: int = sock.getsockname()[1]
        self.target = target  # the revision serving now, if any
        self.open = 0
        self.served = 0  # connections forwarded
        self.refused = 0  # connections closed at once: nothing serving, or too many

    async def serve(self) -> None:
        """Accept until cancelled; every connection's task is owned here."""
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.TaskGroup() as connections:
                while True:
                    try:
                        conn, _ = await loop.sock_accept(self.sock)
                    except OSError as exc:  # EMFILE and the like: wait, do not spin
                        log.warning("service_proxy_accept_failed", port=self.port,
                                    error=str(exc))
                        await asyncio.sleep(0.5)
                        continue
                    rev = self.target()
                    if rev is None or self.open >= MAX_CONNECTIONS:
                        self.refused += 1
                        conn.close()
                        continue
                    rev.enter()  # before any await: the switch cannot pass between
                    self.open += 1
                    connections.create_task(self._forward(conn, rev))
        finally:
            self.sock.close()

    def close(self) -> None:
        """Stop listening (idempotent; `serve` does it too when it ends)."""
        self.sock.close()

    async def _forward(self, conn: socket.socket, rev: Revision) -> None:
        try:
            client_r, client_w = await asyncio.open_connection(sock=conn, limit=MAX_HEAD)
            try:
                head = await self._head(client_r, client_w)
                if head is None:
                    self.refused += 1
                    return
                try:
                    async with asyncio.timeout(CONNECT_S):
                        up_r, up_w = await endpoint.connect(rev.directory, rev.uid)
                except (OSError, TimeoutError):
                    self.refused += 1
                    return
                self.served += 1
                try:
                    up_w.write(head)
                    await _splice(client_r, client_w, up_r, up_w)
                finally:
                    await _close(up_w)
            finally:
                await _close(client_w)
        finally:
            self.open -= 1
            rev.leave()


    async def _head(self, reader: asyncio.StreamReader,
                    writer: asyncio.StreamWriter) -> bytes | None:
        """The first request's head, if its Host is this preview's; else None, the client
        told why (unless it sent no head at all)."""
        try:
            async with asyncio.timeout(HEAD_S):
                head = await reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, TimeoutError, OSError):
            return None
        except asyncio.LimitOverrunError:
            await _refuse(writer, 431, "Request Header Fields Too Large",
                          f"a request head is at most {MAX_HEAD} bytes")
            return None
        problem = misdirected(head, self.port)
        if problem is not None:
            await _refuse(writer, 421, "Misdirected Request", problem)
            return None
        return head


def misdirected(head: bytes, port: int) -> str | None:
    """Why a request head is not for this preview (its Host names no loopback address,
    or another port), or None when it is."""
    hosts = [line.partition(b":")[2].strip() for line in head.split(b"\r\n")[1:]
             if line.partition(b":")[0].strip().lower() == b"host"]
    if len(hosts) != 1:
        return "a request needs one Host header"
    host = hosts[0].decode("latin-1")
    if host.startswith("["):
        name, _, rest = host[1:].partition("]")
        named_port = rest[1:] if rest.startswith(":") else rest
    else:
        name, _, named_port = host.partition(":")
    if not _loopback(name) or named_port not in ("", str(port)):
        return f"this preview answers only for a loopback Host, not {host[:80]!r}"
    return None


def _loopback(name: str) -> bool:
    if name == "localhost":
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


async def _refuse(writer: asyncio.StreamWriter, status: int, reason: str, why: str) -> None:
    body = f"{why}\n".encode()
    writer.write(f"HTTP/1.1 {status} {reason}\r\nContent-Type: text/plain; charset=utf-8\r\n"
                 f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    with contextlib.suppress(OSError):
        await writer.drain()


async def _splice(a_r: asyncio.StreamReader, a_w: asyncio.StreamWriter,
                  b_r: asyncio.StreamReader, b_w: asyncio.StreamWriter) -> None:
    """Copy both ways until both sides have finished sending (each end's EOF passed on
    to the other), a side fails, or nothing moved for IDLE_S."""
    moved = [time.monotonic()]

    async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(CHUNK):
            moved[0] = time.monotonic()
            writer.write(data)
            await writer.drain()
        if writer.can_write_eof():
            with contextlib.suppress(OSError):
                writer.write_eof()

    async def watch() -> None:
        while True:
            await asyncio.sleep(min(IDLE_S, 5.0))
            if time.monotonic() - moved[0] > IDLE_S:
                raise _Idle

    try:
        async with asyncio.TaskGroup() as tasks:
            idle = tasks.create_task(watch())
            pipes = [tasks.create_task(pipe(a_r, b_w)), tasks.create_task(pipe(b_r, a_w))]
            await asyncio.wait(pipes)
            idle.cancel()
    except* (OSError, _Idle):
        pass  # a reset, a broken pipe or an idle connection: both ends are closed


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError, TimeoutError):
        async with asyncio.timeout(1.0):
            await writer.wait_closed()
