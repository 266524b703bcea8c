"""The network a command let onto it gets (sandbox.network_commands): a network namespace
of its own, bwrap's, whose traffic slirp4netns relays through the host's stack as a
user-mode NAT, with the host's loopback out of reach (`--disable-host-loopback`). So a
program allowed to fetch packages reaches the network, but not the entity's page, its
local NATS, the service previews or any other listener on the host's loopback: 127.0.0.1
in the sandbox is the sandbox's own. Names resolve through slirp4netns's resolver
(10.0.2.3, which forwards to the host's): the sandbox's /etc/resolv.conf says so.

bwrap makes the sandbox with its namespace and waits (`--block-fd`) before it runs the
command: the daemon reads the sandbox's pid (`--info-fd`), starts slirp4netns in the
call's cgroup joined to the sandbox's user and network namespaces (`--configure`: tap0,
its address and route), waits until it says it is ready, and only then lets the command
run. slirp4netns ends with the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import json
import os
import shutil
from collections.abc import Mapping

from .errors import ToolError

BINARY = "slirp4netns"
DNS = "10.0.2.3"  # slirp4netns's resolver, in the sandbox's network
UP_WITHIN_S = 10.0
MTU = 65520
NS_GET_USERNS = 0xB701  # ioctl on a namespace's fd: the user namespace that owns it
MISSING = ("a command allowed the network (sandbox.network_commands) runs in a network "
           "of its own relayed by slirp4netns, which is not installed (Debian package "
           "`slirp4netns`): install it, or take the program out of network_commands")


def find() -> str | None:
    return shutil.which(BINARY)


class Relay:
    """One call's network: the pipes bwrap is handed (pass `fds` to the process that
    runs it) and the slirp4netns that serves the sandbox once it is made."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self._info_r, self._info_w = os.pipe()
        self._block_r, self._block_w = os.pipe()
        self._dns_r, dns_w = os.pipe()
        with os.fdopen(dns_w, "wb") as out:
            out.write(f"nameserver {DNS}\n".encode())
        for fd in (self._info_r, self._block_w):
            os.set_inheritable(fd, False)
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def fds(self) -> tuple[int, ...]:
        return (self._info_w, self._block_r, self._dns_r)

    def bwrap_args(self) -> list[str]:
        return ["--info-fd", str(self._info_w), "--block-fd",
                str(self._block_r), "--ro-bind-data", str(self._dns_r), "/etc/resolv.conf"]

    def spawned(self) -> None:
        """The process that runs bwrap has them: the daemon's copies of its ends go, so
        that the pid pipe ends when bwrap does."""
        for fd in self.fds:
            with contextlib.suppress(OSError):
                os.close(fd)

    async def connect(self, prefix: list[str], env: Mapping[str, str]) -> None:
        """Once bwrap made the sandbox: its network up, then the command let go. ToolError
        when it cannot be (bwrap failed first: its own error is in the run's output)."""
        try:
            async with asyncio.timeout(UP_WITHIN_S):
                pid = await _child_pid(self._info_r)
                ready_r, ready_w = os.pipe()
                # The user namespace that owns the sandbox's network, asked of the network
                # namespace itself: the sandbox's own process may already sit in a nested
                # one (bwrap's --disable-userns), from which the network cannot be joined.
                net = os.open(f"/proc/{pid}/ns/net", os.O_RDONLY | os.O_CLOEXEC)
                try:
                    user = fcntl.ioctl(net, NS_GET_USERNS)
                    try:
                        self._proc = await asyncio.create_subprocess_exec(
                            *prefix, self.binary, "--configure", f"--mtu={MTU}",
                            "--disable-host-loopback", "--enable-seccomp", "--ready-fd",
                            str(ready_w), f"--userns-path=/proc/self/fd/{user}",
                            "--netns-type=path", f"/proc/self/fd/{net}", "tap0",
                            pass_fds=(ready_w, user, net), stdin=asyncio.subprocess.DEVNULL,
                            stdout=asyncio.subprocess.DEVNULL,
                            stderr=asyncio.subprocess.PIPE, env=dict(env),
                            start_new_session=True)
                    finally:
                        os.close(user)
                finally:
                    os.close(net)
                    os.close(ready_w)
                try:
                    ready = await _read_some(ready_r)
                finally:
                    os.close(ready_r)
        except TimeoutError:
            raise ToolError(f"the sandbox's network was not up within {UP_WITHIN_S:g} s"
                            ) from None
        except OSError as exc:  # the sandbox ended first, or no namespace to ask
            raise ToolError(f"the sandbox's network could not be set up: {exc}") from None
        if ready != b"1":
            raise ToolError("the sandbox's network could not be set up: slirp4netns "
                            f"failed ({await self._said()})")
        try:
            os.write(self._block_w, b"1")
        except OSError:  # bwrap is gone: why is in its output
            raise ToolError("the sandbox ended before its network was up") from None

    async def _said(self) -> str:
        """What slirp4netns wrote on stderr, once it ended (cut short)."""
        proc = self._proc
        if proc is None or proc.stderr is None:
            return "no output"
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(2.0):
                text = (await proc.stderr.read(4096)).decode(errors="replace").strip()
                return " | ".join(text.splitlines()[-3:]) or "no output"
        return "no output"

    async def close(self) -> None:
        for fd in (self._info_r, self._block_w):
            with contextlib.suppress(OSError):
                os.close(fd)
        proc, self._proc = self._proc, None
        if proc is not None and proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.terminate()
            try:
                async with asyncio.timeout(2.0):
                    await proc.wait()
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    proc.kill()
                await proc.wait()


async def _child_pid(fd: int) -> int:
    """The sandbox's pid, from bwrap's info JSON on `fd`; ToolError if bwrap ended first."""
    data = b""
    while True:
        chunk = await _read_some(fd)
        if not chunk:
            raise ToolError("bwrap ended before the sandbox's network could be set up")
        data += chunk
        try:
            info = json.loads(data)
        except ValueError:
            continue  # not all of it yet
        pid = info.get("child-pid") if isinstance(info, dict) else None
        if type(pid) is not int or pid <= 0:
            raise ToolError("bwrap did not say the sandbox's pid")
        return pid


async def _read_some(fd: int) -> bytes:
    """What `fd` (a pipe) has now, waiting for it on the loop; b'' at its end."""
    os.set_blocking(fd, False)
    loop = asyncio.get_running_loop()
    while True:
        try:
            return os.read(fd, 4096)
        except BlockingIOError:
            await _readable(loop, fd)


async def _readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    readable: asyncio.Future[None] = loop.create_future()

    def ready() -> None:
        if not readable.done():
            readable.set_result(None)

    loop.add_reader(fd, ready)
    try:
        await readable
    finally:
        loop.remove_reader(fd)
