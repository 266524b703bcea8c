"""Confinement of file paths to the workspace: resolve, refuse escapes and protected files,
and open what is left without following a symlink planted after the check.

The daemon may run as root, so every open walks from the workspace root one component
at a time with O_NOFOLLOW: a directory swapped for a symlink between the check and the
open makes the open fail instead of reaching outside.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from fnmatch import fnmatchcase
from pathlib import Path

from .errors import PathRefused, ToolError
from .walk import Budget, walk

# Where the sandboxed shell sees the workspace; paths the model gives may use it.
WORKSPACE_MOUNT = "/workspace"

# Credentials by file name (compared in lower case).
KEY_PATTERNS = (
    "*.key", "*.pem", "*.p12", "*.pfx", "*.jks", "*.keystore", "*.kdbx",
    "id_rsa*", "id_dsa*", "id_ecdsa*", "id_ed25519*",
    ".netrc", ".pgpass", ".git-credentials",
)

Parts = tuple[str, ...]

MAX_PATH = 4096  # characters in a path a tool is given (the kernel's PATH_MAX)
PREPARE_DEPTH = 256  # prepare() hands over directories down to this depth


def protected_reason(parts: Sequence[str]) -> str | None:
    """Why a workspace-relative path is off limits to the tools, or None if it is not."""
    for part in parts:
        low = part.lower()
        if low == ".git":
            return "the .git directory is off limits (the daemon alone writes the repository)"
        if low.startswith(".env"):
            return "environment files (.env*) may hold secrets and are off limits"
    if parts and is_key_name(parts[-1]):
        return "key and credential files are off limits"
    return None


def is_key_name(name: str) -> bool:
    low = name.lower()
    return any(fnmatchcase(low, pattern) for pattern in KEY_PATTERNS)


def is_protected_name(name: str) -> bool:
    """A file name the tools refuse wherever it is (.env*, keys); .git is handled apart."""
    return name.lower().startswith(".env") or is_key_name(name)


def display(parts: Parts) -> str:
    return "/".join(printable(part) for part in parts) if parts else "."


def printable(name: str) -> str:
    """A file name as text a reply can carry: bytes that are not UTF-8 (which Python holds
    as lone surrogates) shown as \\xNN."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")
    return name


def shown_path(path: str, limit: int = 200) -> str:
    """`path` for a message, its middle cut when it is long."""
    if len(path) <= limit:
        return path
    return f"{path[:limit - 60]}...[{len(path)} characters]...{path[-40:]}"


class Confinement:
    """The one directory the tools may touch; `owner` (uid, gid) gets what they create."""

    def __init__(self, root: Path | str, owner: tuple[int, int] | None = None) -> None:
        self.root = os.path.realpath(root)
        self.owner = owner

    def resolve(self, path: str) -> Parts:
        """The parts of `path` below the workspace after resolving symlinks.

        Relative paths start at the workspace; `/workspace/...` is the sandbox's name for
        it. Resolution follows symlinks through the deepest existing parent, then takes
        the tail, and refuses anything that lands outside or on a protected file.
        """
        if not path:
            raise PathRefused(repr(path), "empty path")
        if "\x00" in path:
            raise PathRefused(shown_path(repr(path)), "NUL byte in path")
        if len(path) > MAX_PATH:
            raise PathRefused(shown_path(path), f"the path is {len(path)} characters; the "
                              f"longest a tool takes is {MAX_PATH}")
        inner = path
        if path == WORKSPACE_MOUNT or path.startswith(WORKSPACE_MOUNT + "/"):
            inner = path[len(WORKSPACE_MOUNT):].lstrip("/") or "."
        try:
            real = os.path.realpath(os.path.join(self.root, inner))
        except (OSError, RecursionError) as exc:  # a link changed meanwhile; a long chain
            why = exc.strerror if isinstance(exc, OSError) else "too many symbolic links"
            raise PathRefused(shown_path(path), f"cannot be resolved: {why}") from None
        if real != self.root and not real.startswith(self.root + os.sep):
            raise PathRefused(shown_path(path),
                              "outside the workspace (tools may only touch the workspace)")
        rel = os.path.relpath(real, self.root)
        parts: Parts = () if rel == "." else tuple(rel.split(os.sep))
        reason = protected_reason(parts)
        if reason:
            raise PathRefused(shown_path(path), reason)
        return parts

    def mode(self, parts: Parts) -> int:
        """The st_mode of `parts` itself (a symlink is not followed)."""
        with self.open_dir(parts[:-1]) as parent:
            if not parts:
                return os.fstat(parent).st_mode
            try:
                return os.stat(parts[-1], dir_fd=parent, follow_symlinks=False).st_mode
            except OSError as exc:
                raise _failed(parts, exc) from None

    @contextmanager
    def open_dir(self, parts: Parts, *, create: bool = False) -> Iterator[int]:
        """An fd of the directory `parts`, walked from the root without following symlinks."""
        fd = os.open(self.root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            for i, name in enumerate(parts):
                created = False
                if create:
                    try:
                        os.mkdir(name, 0o755, dir_fd=fd)
                        created = True
                    except FileExistsError:
                        pass
                    except OSError as exc:
                        raise _failed(parts[: i + 1], exc) from None
                try:
                    child = os.open(
                        name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC,
                        dir_fd=fd,
                    )
                except OSError as exc:
                    if _is_symlink(name, fd):  # O_DIRECTORY|O_NOFOLLOW says ENOTDIR
                        exc.errno = errno.ELOOP
                    raise _failed(parts[: i + 1], exc) from None
                os.close(fd)
                fd = child
                if created:
                    self.give(fd)
            yield fd
        finally:
            os.close(fd)

    @contextmanager
    def open_file(self, parts: Parts, *, write: bool = False) -> Iterator[int]:
        """An fd of the regular file `parts` (created, with its parents, when writing)."""
        if not parts:
            raise ToolError(". is the workspace directory, not a file")
        flags = os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
        flags |= (os.O_RDWR | os.O_CREAT) if write else os.O_RDONLY
        with self.open_dir(parts[:-1], create=write) as parent:
            try:
                fd = os.open(parts[-1], flags, 0o644, dir_fd=parent)
            except OSError as exc:
                raise _failed(parts, exc) from None
        try:
            info = os.fstat(fd)
            if not stat.S_ISREG(info.st_mode):
                raise ToolError(f"{display(parts)}: not a regular file")
            if write and info.st_nlink > 1:
                raise ToolError(f"{display(parts)}: has {info.st_nlink} hard links; refusing to "
                                "write through one")
            if write:
                self.give(fd)
            yield fd
        finally:
            os.close(fd)

    def give(self, fd: int) -> None:
        """Hand what the daemon created to the sandbox uid, so the sandboxed shell can edit it."""
        if self.owner is not None:
            info = os.fstat(fd)
            if (info.st_uid, info.st_gid) != self.owner:
                os.fchown(fd, *self.owner)


def _is_symlink(name: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISLNK(os.stat(name, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _failed(parts: Parts, exc: OSError) -> ToolError:
    where = shown_path(display(parts))
    if exc.errno == errno.ELOOP:
        return PathRefused(where, "is a symlink that appeared while opening it; refusing to follow")
    if exc.errno == errno.ENOENT:
        return ToolError(f"{where}: no such file or directory")
    if exc.errno == errno.ENOTDIR:
        return ToolError(f"{where}: a parent is not a directory")
    if exc.errno == errno.ENAMETOOLONG:
        return ToolError(f"{where}: a name in it is longer than the file system allows "
                         "(255 bytes)")
    if exc.errno == errno.EISDIR:
        return ToolError(f"{where}: is a directory")
    return ToolError(f"{where}: {exc.strerror}")


def prepare(root: Path | str, owner: tuple[int, int] | None,
            max_depth: int = PREPARE_DEPTH) -> str:
    """Create the workspace if missing and hand it, all but .git, to `owner` (uid, gid).

    Returns what it left alone ("" when nothing): the agent may have built a tree too deep
    to walk whole, and what lies deeper is the sandbox's own making already.
    """
    os.makedirs(root, mode=0o755, exist_ok=True)
    if owner is None:
        return ""
    uid, gid = owner
    info = os.stat(root)
    if (info.st_uid, info.st_gid) != owner:
        os.chown(root, uid, gid)
    budget = Budget(max_entries=2**62, max_depth=max_depth)
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        for directory in walk(top, budget, keep_dir=lambda name: name.lower() != ".git"):
            for name in directory.dirs + directory.others:
                if name.lower() == ".git":
                    continue
                try:
                    entry = os.stat(name, dir_fd=directory.fd, follow_symlinks=False)
                    if (entry.st_uid, entry.st_gid) != owner:
                        os.chown(name, uid, gid, dir_fd=directory.fd, follow_symlinks=False)
                except FileNotFoundError:
                    continue  # removed since it was listed
    finally:
        os.close(top)
    return budget.cut
