"""The Unix socket a service listens on, as the daemon reaches it: the socket the sandbox
made, and nothing a symlink there points to.

The revision directory is the sandbox's to write, so the name could be swapped for a
symlink to any socket of the host (a container runtime's, systemd's) that the daemon, as
root, may connect to. So the name is opened with O_PATH | O_NOFOLLOW, the inode checked
(a socket, owned by the sandbox uid), and the connection made through that very inode
(`/proc/self/fd/N`), which also keeps the address short whatever the data dir's path.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import stat
from pathlib import Path

from ..sandbox import WORKSPACE_MOUNT

SOCKET_NAME = ".entityd.sock"
SOCKET_ENV = "ENTITYD_SOCKET"
SOCKET_PATH = f"{WORKSPACE_MOUNT}/{SOCKET_NAME}"  # where the service sees it
READY_ATTEMPT_S = 2.0  # one readiness request, connection included
STATUS_LINE_MAX = 1024
READ_REST = 64 * 1024


class NotASocket(ConnectionRefusedError):
    """The service's socket name holds something else than a socket the sandbox made."""


async def connect(directory: Path, uid: int) -> tuple[asyncio.StreamReader,
                                                     asyncio.StreamWriter]:
    """Connect to the socket in `directory` (a revision's), made by `uid`."""
    try:
        fd = os.open(directory / SOCKET_NAME, os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC)
    except FileNotFoundError:
        raise ConnectionRefusedError(f"no socket at {SOCKET_PATH} yet") from None
    try:
        info = os.fstat(fd)
        if not stat.S_ISSOCK(info.st_mode):
            raise NotASocket(f"{SOCKET_PATH} is not a socket")
        if info.st_uid != uid:
            raise NotASocket(f"{SOCKET_PATH} belongs to uid {info.st_uid}, not the sandbox's")
        return await asyncio.open_unix_connection(f"/proc/self/fd/{fd}")
    finally:
        os.close(fd)


def remove_stale(directory: Path) -> None:
    """Remove whatever holds the socket's name, before a process of the revision starts
    (the last one's socket, or a file the snapshot brought)."""
    path = directory / SOCKET_NAME
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
    except IsADirectoryError:
        shutil.rmtree(path, ignore_errors=True)


async def check_ready(directory: Path, uid: int, ready: str) -> str | None:
    """GET `ready` over the socket once: None when it answers 200, else what it did."""
    try:
        async with asyncio.timeout(READY_ATTEMPT_S):
            reader, writer = await connect(directory, uid)
            try:
                writer.write(f"GET {ready} HTTP/1.0\r\nHost: localhost\r\n"
                             "Connection: close\r\n\r\n".encode())
                await writer.drain()
                line = await reader.readuntil(b"\n")
                # The rest is read to its end, not cut off: a server writing to a
                # closed connection would fill its own log with the errors.
                with contextlib.suppress(OSError):
                    rest = READ_REST
                    while rest > 0 and (chunk := await reader.read(rest)):
                        rest -= len(chunk)
            finally:
                writer.close()
                with contextlib.suppress(OSError):
                    await writer.wait_closed()
    except NotASocket as exc:
        return str(exc)
    except ConnectionRefusedError as exc:
        return str(exc) or "the socket refused the connection"
    except TimeoutError:
        return f"no answer to GET {ready} within {READY_ATTEMPT_S:g} s"
    except asyncio.LimitOverrunError:
        return f"GET {ready}: the status line is too long"
    except asyncio.IncompleteReadError:
        return f"GET {ready}: the connection closed before a status line"
    except OSError as exc:
        return f"GET {ready}: {exc.strerror or exc}"
    parts = line[:STATUS_LINE_MAX].decode("latin-1").split()
    if len(parts) >= 2 and parts[0].startswith("HTTP/") and parts[1] == "200":
        return None
    return f"GET {ready} answered {line[:120].decode('latin-1').strip()!r}"
