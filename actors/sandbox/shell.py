"""The shell tool's runner: one bash command under bubblewrap, as an unprivileged uid, with
rlimits, a cleared environment, no network by default and a wall-clock timeout that kills
the whole sandbox.

As root, `setpriv` first switches to the sandbox uid (root inside bwrap would keep every
capability, and RLIMIT_NPROC does not bind uid 0); bwrap then builds a user, mount, pid,
network, ipc and uts namespace in which only the workspace is writable. bwrap opens the
workspace by path as that uid, and the workspace often sits below directories only root
may enter (a 0700 data dir), so as root the workspace is first bind-mounted at a
reachable place in a private mount namespace of the launcher (`unshare --mount`).

The daemon's own git runs here too (`exec(..., git=True)`): git on a tree the agent wrote
is code the agent chose (filters, drivers, nested repositories), so it gets the same
sandbox with `.git` writable but its config, hooks and info read-only.

Before each run the workspace is scanned (`scan.py`): files the tools refuse (.env*, keys)
cannot be read at any depth, and the run is killed when it grows the workspace past its
disk quota.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import os
import shutil
import signal
import time
import weakref
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from entityd import SandboxSection, get_logger

from . import netns
from .cgroup import CallCgroup, CallLimits, SharedLimits
from .errors import SandboxUnavailable, ToolError
from .paths import WORKSPACE_MOUNT
from .scan import Scan, scan

log = get_logger("actors.sandbox")

MiB = 1024 * 1024
HOST_PATH = "/usr/sbin:/usr/bin:/sbin:/bin"
# What bwrap and its helpers get: nothing of the daemon's environment.
HOST_ENV = {"PATH": HOST_PATH, "LANG": "C.UTF-8"}
SANDBOX_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "HOME": "/tmp",
    "TMPDIR": "/tmp",
    "LANG": "C.UTF-8",
    "TERM": "dumb",
    # git refuses a repository owned by another uid (.git stays the daemon's).
    "GIT_CONFIG_COUNT": "1",
    "GIT_CONFIG_KEY_0": "safe.directory",
    "GIT_CONFIG_VALUE_0": WORKSPACE_MOUNT,
}
SYSTEM_DIRS = ("bin", "sbin", "lib", "lib32", "lib64", "libx32")
# The parts of /etc that programs need to run (users, resolver, libraries, certificates,
# time zone, alternatives); nothing else of the host's /etc enters the sandbox.
ETC_ENTRIES = (
    "passwd", "group", "nsswitch.conf", "hosts", "host.conf", "resolv.conf", "gai.conf",
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "alternatives",
    "ssl/certs", "ssl/openssl.cnf", "ca-certificates", "ca-certificates.conf", "pki/tls/certs",
    "crypto-policies", "mime.types", "protocols", "services", "networks", "os-release",
    "debian_version", "magic", "magic.mime", "inputrc", "locale.alias", "gitconfig",
)
OPTIONAL = ("--disable-userns", "--size")
SHM_BYTES = 64 * MiB
# Run by root in the launcher's private mount namespace: cd into the workspace ($1) before
# covering /tmp, then bind it where the sandbox uid can reach it, then run the rest.
STAGED = "/tmp/workspace"
STAGE_SCRIPT = (
    'cd "$1" && mount -t tmpfs -o size=64k,mode=0755 entityd-stage /tmp && '
    f"mkdir {STAGED} && mount --no-canonicalize --bind . {STAGED} && "
    'shift && unset PWD OLDPWD && exec "$@"'
)
PROBE_TIMEOUT = 20.0
KILL_GRACE = 5.0
READ_CHUNK = 1 << 16
# bash's exit code for a command killed by SIGXFSZ (a file past RLIMIT_FSIZE).
FILE_TOO_LARGE_EXIT = 128 + 25
QUOTA_POLL = 0.1  # seconds between two looks at the workspace's disk use during a run,
QUOTA_POLL_SHARE = 4  # or this many times what one look took, for a large workspace
# What the daemon's git may write in .git; config, hooks and info stay read-only even then.
GIT_READ_ONLY = ("config", "hooks", "info")
EXEC_OUTPUT_LIMIT = 256 * MiB


@dataclass(frozen=True)
class ExecResult:
    exit_code: int | None  # None when the run was killed at the timeout
    stdout: bytes
    stderr: bytes
    timed_out: bool = False


# Per event loop and workspace: the lock sandboxes take while the workspace has no
# repository (Shell._git_placeholder).
_NO_REPO_LOCKS: weakref.WeakKeyDictionary[
    asyncio.AbstractEventLoop, dict[str, asyncio.Lock]] = weakref.WeakKeyDictionary()


def _no_repo_lock(workspace: str) -> asyncio.Lock:
    locks = _NO_REPO_LOCKS.setdefault(asyncio.get_running_loop(), {})
    return locks.setdefault(os.path.realpath(workspace), asyncio.Lock())


@dataclass(frozen=True)
class ShellResult:
    exit_code: int | None  # None when the run was killed at the timeout
    output: str  # stdout and stderr interleaved, cut in the middle past the output limit
    timed_out: bool
    cut_bytes: int
    duration: float
    over_quota: bool = False
    oom_killed: bool = False  # the call's memory total was reached; the kernel killed in it
    tasks_refused: bool = False  # the call's task total was reached; some forks failed


class Shell:
    """Runs commands in the sandbox once `probe()` has found that bwrap works here."""

    def __init__(self, settings: SandboxSection, workspace: Path | str,
                 limits: SharedLimits | None = None) -> None:
        self.settings = settings
        self.shared_limits = limits or SharedLimits(settings.memory_mb * MiB,
                                                    settings.max_processes)
        self.limits = CallLimits.rlimits_only("the sandbox has not been probed yet")
        self.workspace = os.path.realpath(workspace)
        self.as_root = os.geteuid() == 0
        self.bwrap = shutil.which("bwrap", path=HOST_PATH)
        self.prlimit = shutil.which("prlimit", path=HOST_PATH)
        self.setpriv = shutil.which("setpriv", path=HOST_PATH)
        self.unshare = shutil.which("unshare", path=HOST_PATH)
        # Where bwrap finds the workspace: staged by root, or the real path.
        self.source = STAGED if self.as_root else self.workspace
        self.unavailable: str | None = "the sandbox has not been probed yet"
        # Hardening options of newer bwrap (0.7: --size, 0.8: --disable-userns), used when
        # the installed one has them; `missing` names the ones it lacks.
        self.options: set[str] = set()
        self.missing: tuple[str, ...] = ()

    @property
    def sandbox_uid(self) -> int:
        return self.settings.uid if self.as_root else os.getuid()

    async def probe(self) -> str | None:
        """Check that a sandbox starts here; return (and keep) why not, or None."""
        self.unavailable = self._missing()
        if not self.unavailable:
            self.limits = await self.shared_limits.get()
            self.unavailable = await self._probe_run()
        if self.unavailable:
            log.warning("sandbox_unavailable", reason=self.unavailable)
        elif self.settings.network_commands and netns.find() is None:
            log.warning("sandbox_network_unavailable", reason=netns.MISSING,
                        programs=list(self.settings.network_commands))
        return self.unavailable

    def _missing(self) -> str | None:
        if not self.bwrap:
            return "bwrap is not installed (Debian package `bubblewrap`)"
        if not self.prlimit:
            return "prlimit is not installed (util-linux), so no rlimits could be set"
        if self.as_root and not (self.setpriv and self.unshare):
            return ("setpriv or unshare is not installed (util-linux): root could not drop to "
                    "the sandbox uid")
        if self.as_root and (self.settings.uid == 0 or self.settings.gid == 0):
            return "sandbox.uid and sandbox.gid must not be 0 (root in bwrap keeps capabilities)"
        if not os.path.isdir(self.workspace):
            return f"the workspace {self.workspace} is not a directory"
        return None

    async def _probe_run(self) -> str | None:
        assert self.bwrap
        try:
            helper = await asyncio.create_subprocess_exec(
                self.bwrap, "--help", stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=HOST_ENV,
            )
            async with asyncio.timeout(PROBE_TIMEOUT):
                usage, _ = await helper.communicate()
        except (OSError, TimeoutError) as exc:
            return f"could not run `bwrap --help`: {exc}"
        text = usage.decode(errors="replace")
        self.options = {option for option in OPTIONAL if option in text}
        self.missing = tuple(sorted(set(OPTIONAL) - self.options))
        if self.missing:
            log.warning("sandbox_bwrap_old", missing=self.missing)
        # In a call's cgroup too: the trial proves that the limits compose with bwrap.
        async with self._git_placeholder():
            try:
                async with self.limits.call() as cgroup:
                    done = await self._exec(cgroup, self.argv("id -u"), None, PROBE_TIMEOUT)
            except (OSError, ToolError) as exc:
                return f"could not start bwrap: {exc}"
        if done.timed_out:
            return f"a trial sandbox did not finish within {PROBE_TIMEOUT:g} s"
        if done.exit_code != 0:
            detail = done.stderr.decode(errors="replace").strip()[-500:] or "no error output"
            return f"bwrap could not start a sandbox (exit {done.exit_code}): {detail}"
        inside = done.stdout.decode(errors="replace").strip()
        if inside != str(self.sandbox_uid):
            return f"the trial sandbox ran as uid {inside!r}, expected {self.sandbox_uid}"
        return None

    def argv(self, command: str, *, network: bool = False,
             found: Scan | None = None, relay: netns.Relay | None = None) -> list[str]:
        """The full command line of a shell command (bash -c). No file may grow past the
        room left in the workspace's quota (RLIMIT_FSIZE; the quota is polled during the
        run, and a quick call could otherwise write far past it before the first look):
        over quota, no file may grow at all, and only removing files helps."""
        room = None if found is None else self.room(found)
        return self.program_argv(["/bin/bash", "--noprofile", "--norc", "-c", command],
                                 network=network, found=found, fsize=room, relay=relay)

    def room(self, found: Scan) -> int:
        """Bytes the workspace may still grow by, as `found` saw it."""
        return max(0, self.settings.workspace_mb * MiB - found.bytes)

    def program_argv(self, program: Sequence[str], *, network: bool = False,
                     found: Scan | None = None, git: bool = False,
                     env: Mapping[str, str] | None = None,
                     fsize: int | None = None,
                     relay: netns.Relay | None = None) -> list[str]:
        """prlimit, then (as root) the staging of the workspace and setpriv, then bwrap,
        then `program`; no file larger than file_size_mb (or `fsize`, if smaller). With
        `network`, the sandbox's own network, which `relay` (netns.Relay) serves."""
        if network and relay is None:
            raise ToolError(netns.MISSING)
        assert self.bwrap and self.prlimit
        s = self.settings
        largest = s.file_size_mb * MiB if fsize is None else min(fsize, s.file_size_mb * MiB)
        argv = [
            self.prlimit, f"--cpu={s.cpu_seconds}", f"--as={s.memory_mb * MiB}",
            f"--fsize={largest}", f"--nproc={s.max_processes}",
            f"--nofile={s.max_open_files}", "--core=0", "--",
        ]
        if self.as_root:
            assert self.setpriv and self.unshare
            argv += [self.unshare, "--mount", "--propagation", "private", "--",
                     "/bin/sh", "-c", STAGE_SCRIPT, "entityd-stage", self.workspace]
            argv += [self.setpriv, f"--reuid={s.uid}", f"--regid={s.gid}", "--clear-groups",
                     "--no-new-privs", "--"]
        argv += [self.bwrap, *self.bwrap_args(network=network, found=found, git=git, env=env),
                 *(relay.bwrap_args() if relay is not None else []), "--", *program]
        return argv

    def bwrap_args(self, *, network: bool, found: Scan | None = None, git: bool = False,
                   env: Mapping[str, str] | None = None) -> list[str]:
        # --as-pid-1: no init of bwrap's own in the sandbox. That init is never waited for
        # (bwrap takes the exit code from an eventfd), so each run would leave a zombie of
        # the sandbox uid until the host's init reaps it, counted against RLIMIT_NPROC.
        args = ["--unshare-all", "--unshare-user", "--die-with-parent", "--new-session",
                "--as-pid-1", "--hostname", "sandbox"]
        if "--disable-userns" in self.options:
            args.append("--disable-userns")
        # With `network`, the network namespace stays the sandbox's own (--unshare-all):
        # netns.Relay connects it to the network, never to the host's loopback.
        args += ["--ro-bind", "/usr", "/usr"]
        for name in SYSTEM_DIRS:
            path = "/" + name
            if os.path.islink(path):
                args += ["--symlink", os.readlink(path), path]
            elif os.path.isdir(path):
                args += ["--ro-bind", path, path]
        etc = [f"/etc/{entry}" for entry in ETC_ENTRIES]
        etc += sorted(glob.glob("/etc/python3*"))
        for path in etc:
            args += ["--ro-bind-try", path, path]
        sized = "--size" in self.options
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(SHM_BYTES)] if sized else []
        args += ["--tmpfs", "/dev/shm"]
        args += ["--size", str(self.settings.memory_mb * MiB)] if sized else []
        args += ["--tmpfs", "/tmp", "--bind", self.source, WORKSPACE_MOUNT]
        args += self._git_writable_args() if git else self._git_args()
        args += self._masks(found)
        args += ["--remount-ro", "/", "--chdir", WORKSPACE_MOUNT, "--clearenv"]
        for key, value in {**SANDBOX_ENV, **(env or {})}.items():
            args += ["--setenv", key, value]
        return args

    def _git_args(self) -> list[str]:
        """.git read-only; with no repository yet, an empty read-only placeholder, so a
        command cannot plant one whose hooks or config the daemon would later run."""
        dest = f"{WORKSPACE_MOUNT}/.git"
        if os.path.lexists(os.path.join(self.workspace, ".git")):
            return ["--ro-bind", f"{self.source}/.git", dest]
        return ["--tmpfs", dest, "--remount-ro", dest]

    def _git_writable_args(self) -> list[str]:
        """For the daemon's git: objects, refs and index writable; what decides which
        programs git runs (config, hooks, info/attributes) read-only."""
        args: list[str] = []
        git_dir = os.path.join(self.workspace, ".git")
        if not os.path.lexists(git_dir):
            return args  # `git init` makes it
        if os.path.islink(git_dir) or not os.path.isdir(git_dir):
            raise ToolError(f"{git_dir} is not a directory (a gitfile or a symlink); the "
                            "daemon only uses a repository of its own")
        for name in GIT_READ_ONLY:
            path = os.path.join(git_dir, name)
            if os.path.islink(path):
                raise ToolError(f"{path} is a symlink; the daemon refuses a repository "
                                "whose config, hooks or info point elsewhere")
            if os.path.lexists(path):
                args += ["--ro-bind", f"{self.source}/.git/{name}",
                         f"{WORKSPACE_MOUNT}/.git/{name}"]
        return args

    @contextlib.asynccontextmanager
    async def _git_placeholder(self) -> AsyncIterator[None]:
        """Remove the empty mount point bwrap leaves for the .git placeholder, so the host
        shows no repository that is not one (the daemon creates the real one).

        While the workspace has no repository, sandboxes start one at a time (per
        workspace, across the actors that share it): another one starting meanwhile
        would take the placeholder's mount point for a repository and bind it, and find
        it gone when bwrap starts. Build the command line inside this block."""
        lock = _no_repo_lock(self.workspace)
        await lock.acquire()
        if self._has_git_dir():  # a repository: it stays, so others may start beside
            lock.release()
            yield
            return
        try:
            yield
        finally:
            try:
                self._drop_placeholder()
            finally:
                lock.release()

    def _has_git_dir(self) -> bool:
        return os.path.lexists(os.path.join(self.workspace, ".git"))

    def _drop_placeholder(self) -> None:
        with contextlib.suppress(OSError):  # not empty: the daemon made a repository
            os.rmdir(os.path.join(self.workspace, ".git"))

    @staticmethod
    def _masks(found: Scan | None) -> list[str]:
        """Protected files (.env*, keys) cannot be opened (/dev/null on a nodev mount),
        protected and unchecked directories show empty and read-only, at any depth."""
        if found is None:
            return []
        args: list[str] = []
        for rel in found.protected_files:
            args += ["--ro-bind", "/dev/null", f"{WORKSPACE_MOUNT}/{rel}"]
        for rel in found.hidden_dirs:
            dest = f"{WORKSPACE_MOUNT}/{rel}"
            args += ["--tmpfs", dest, "--remount-ro", dest]
        return args

    async def scan(self) -> Scan:
        """The workspace as it is now; a walk that could not finish refuses the run."""
        try:
            found = await asyncio.to_thread(scan, self.workspace)
        except OSError as exc:
            raise ToolError(f"the workspace could not be read: {exc.strerror}") from None
        if not found.complete:
            raise ToolError(f"{found.reason}; the run was refused (an operator can remove "
                            "files from the workspace)")
        return found

    async def run(self, command: str, *, network: bool = False) -> ShellResult:
        if self.unavailable:
            raise SandboxUnavailable(self.unavailable)
        started = time.monotonic()
        found = await self.scan()
        capture = _Capture(self.settings.output_limit)
        relay = None
        if network:
            binary = netns.find()
            if binary is None:
                raise ToolError(netns.MISSING)
            relay = netns.Relay(binary)
        try:
            async with self._git_placeholder():
                async with self.limits.call() as cgroup:
                    proc = await asyncio.create_subprocess_exec(
                        *cgroup.prefix,
                        *self.argv(command, network=network, found=found, relay=relay),
                        stdin=asyncio.subprocess.DEVNULL, stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.STDOUT, env=HOST_ENV,
                        start_new_session=True, pass_fds=relay.fds if relay else (),
                    )
                    if relay is not None:
                        await self._relayed(proc, relay, cgroup)
                    timed_out, over_quota = await self._supervise(proc, capture, found.bytes)
        finally:
            if relay is not None:
                await relay.close()
        usage = cgroup.usage()
        output, cut = capture.text()
        s = self.settings
        room = self.room(found)
        grew_unseen = not over_quota and await self._grew_past_quota(found.bytes)
        if grew_unseen:
            # Done before a look saw it (a quick call, or many small files): told, and
            # the next call starts over quota (no file may grow in it).
            over_quota = True
            output += (f"\n[the workspace grew past its disk quota of {s.workspace_mb} MiB "
                       "in this call: remove files to make room]\n")
        if room == 0 and not over_quota:
            output += (f"\n[the workspace is over its disk quota of {s.workspace_mb} MiB "
                       "(sandbox.workspace_mb; peer_workspace_mb for a peer's), so no file "
                       "could grow in this call: remove files to make room]\n")
        elif room < s.file_size_mb * MiB and proc.returncode == FILE_TOO_LARGE_EXIT:
            output += (f"\n[no file in this call may grow past {room} bytes, the room left "
                       f"in the workspace's disk quota of {s.workspace_mb} MiB: remove "
                       "files to make room]\n")
        elif over_quota and not grew_unseen:
            output += (f"\n[killed: the workspace grew past its disk quota of "
                       f"{s.workspace_mb} MiB (sandbox.workspace_mb; peer_workspace_mb for "
                       "a peer's); remove files to make room]\n")
        if usage.oom_kills:
            output += (f"\n[the call's memory limit was reached (sandbox.memory_mb = "
                       f"{s.memory_mb} MiB for all its processes together): the kernel "
                       "killed a process of this call]\n")
        if usage.refused_forks:
            output += (f"\n[the call's process limit was reached (sandbox.max_processes = "
                       f"{s.max_processes} tasks together, the sandbox's own included): "
                       "some forks failed]\n")
        return ShellResult(
            exit_code=None if timed_out else proc.returncode,
            output=output,
            timed_out=timed_out,
            cut_bytes=cut,
            duration=time.monotonic() - started,
            over_quota=over_quota,
            oom_killed=usage.oom_kills > 0,
            tasks_refused=usage.refused_forks > 0,
        )

    @staticmethod
    async def _relayed(proc: asyncio.subprocess.Process, relay: netns.Relay,
                       cgroup: CallCgroup) -> None:
        """The sandbox's network up before its command runs; the run killed if not."""
        relay.spawned()
        try:
            await relay.connect(cgroup.prefix, HOST_ENV)
        except BaseException as exc:
            _kill(proc)
            said = b""
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_GRACE):
                    if proc.stdout is not None:
                        said = await proc.stdout.read(READ_CHUNK)
                    await proc.wait()
            if isinstance(exc, ToolError) and said.strip():
                last = said.decode(errors="replace").strip().splitlines()[-3:]
                raise ToolError(f"{exc} ({' | '.join(last)[:500]})") from None
            raise

    async def _supervise(self, proc: asyncio.subprocess.Process, capture: _Capture,
                         start_bytes: int) -> tuple[bool, bool]:
        """Collect the output until the run ends, killing it at the timeout or the disk
        quota; (timed out, over quota)."""
        timed_out = False
        try:
            async with asyncio.TaskGroup() as tasks:
                quota = tasks.create_task(self._watch_quota(proc, start_bytes))
                try:
                    async with asyncio.timeout(self.settings.timeout):
                        await _pump(proc, capture)
                except TimeoutError:
                    timed_out = True
                    _kill(proc)
                    try:
                        async with asyncio.timeout(KILL_GRACE):
                            await _pump(proc, capture)
                    except TimeoutError:
                        log.error("sandbox_kill_unconfirmed", pid=proc.pid)
                finally:
                    quota.cancel()
        except asyncio.CancelledError:
            _kill(proc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_GRACE):
                    await proc.wait()
            raise
        return timed_out, not quota.cancelled() and quota.result()

    async def _grew_past_quota(self, start: int) -> bool:
        """One look after a run: whether it left the workspace past the quota, larger
        than it found it."""
        try:
            found = await asyncio.to_thread(scan, self.workspace)
        except OSError:
            return False
        return found.bytes > self.settings.workspace_mb * MiB and found.bytes > start

    async def _watch_quota(self, proc: asyncio.subprocess.Process, start: int) -> bool:
        """Kill the run once it has grown the workspace past the quota; a run that only
        shrinks an over-full workspace (cleaning up) is left alone."""
        quota = self.settings.workspace_mb * MiB
        pause = QUOTA_POLL
        while proc.returncode is None:
            await asyncio.sleep(pause)
            began = time.monotonic()
            try:
                found = await asyncio.to_thread(scan, self.workspace)
            except OSError:
                continue
            pause = max(QUOTA_POLL, QUOTA_POLL_SHARE * (time.monotonic() - began))
            if found.bytes > quota and found.bytes > start:
                _kill(proc)
                log.warning("sandbox_quota_kill", bytes=found.bytes, quota=quota)
                return True
        return False

    async def exec(self, program: Sequence[str], *, stdin: bytes | None = None,
                   git: bool = False, env: Mapping[str, str] | None = None,
                   timeout: float | None = None, found: Scan | None = None) -> ExecResult:
        """Run `program` (no shell) in the sandbox, stdout and stderr apart; for the
        daemon's own work on the workspace (git), not the agent's commands. `found`: a
        scan of the workspace as it still is, else it is scanned now."""
        if self.unavailable:
            raise SandboxUnavailable(self.unavailable)
        found = found or await self.scan()
        async with self._git_placeholder():
            argv = self.program_argv(program, found=found, git=git, env=env)
            async with self.limits.call() as cgroup:
                return await self._exec(cgroup, argv, stdin, timeout)

    async def _exec(self, cgroup: CallCgroup, argv: list[str], stdin: bytes | None,
                    timeout: float | None) -> ExecResult:
        proc = await asyncio.create_subprocess_exec(
            *cgroup.prefix, *argv,
            stdin=asyncio.subprocess.DEVNULL if stdin is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=HOST_ENV,
            start_new_session=True,
        )
        try:
            async with asyncio.timeout(timeout or self.settings.timeout):
                out, err = await _communicate(proc, stdin)
        except TimeoutError:
            _kill(proc)
            await proc.wait()
            return ExecResult(None, b"", b"", timed_out=True)
        except BaseException:
            _kill(proc)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(KILL_GRACE):
                    await proc.wait()
            raise
        return ExecResult(proc.returncode, out, err)


async def _communicate(proc: asyncio.subprocess.Process,
                       stdin: bytes | None) -> tuple[bytes, bytes]:
    """communicate(), but an output past EXEC_OUTPUT_LIMIT is an error, not a memory hog."""
    assert proc.stdout is not None and proc.stderr is not None

    async def feed() -> None:
        if stdin is not None and proc.stdin is not None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                proc.stdin.write(stdin)
                await proc.stdin.drain()
            proc.stdin.close()

    async def read(stream: asyncio.StreamReader) -> bytes:
        data = bytearray()
        while chunk := await stream.read(READ_CHUNK):
            data += chunk
            if len(data) > EXEC_OUTPUT_LIMIT:
                raise ToolError(f"the output passed {EXEC_OUTPUT_LIMIT // MiB} MiB")
        return bytes(data)

    try:
        async with asyncio.TaskGroup() as tasks:
            tasks.create_task(feed())
            out = tasks.create_task(read(proc.stdout))
            err = tasks.create_task(read(proc.stderr))
    except* ToolError as group:
        raise group.exceptions[0] from None
    await proc.wait()
    return out.result(), err.result()


async def _pump(proc: asyncio.subprocess.Process, capture: _Capture) -> None:
    assert proc.stdout is not None
    while chunk := await proc.stdout.read(READ_CHUNK):
        capture.add(chunk)
    await proc.wait()


def _kill(proc: asyncio.subprocess.Process) -> None:
    """SIGKILL the process group; bwrap's --die-with-parent and the pid namespace take
    every process inside down with it."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


class _Capture:
    """The first and last halves of the output limit, and how many bytes fell between."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.head_max = limit // 2
        self.tail_max = limit - self.head_max
        self.head = bytearray()
        self.tail = bytearray()
        self.total = 0

    def add(self, chunk: bytes) -> None:
        self.total += len(chunk)
        room = self.head_max - len(self.head)
        if room > 0:
            self.head += chunk[:room]
            chunk = chunk[room:]
        if chunk:
            self.tail += chunk
            if len(self.tail) > self.tail_max:
                del self.tail[: len(self.tail) - self.tail_max]

    def text(self) -> tuple[str, int]:
        cut = self.total - len(self.head) - len(self.tail)
        if cut <= 0:
            return (self.head + self.tail).decode(errors="replace"), 0
        notice = (f"\n[... {cut} bytes of output cut here: the output limit is {self.limit} "
                  f"characters, {self.total} bytes were written ...]\n")
        return self.head.decode(errors="replace") + notice + self.tail.decode(errors="replace"), cut
