"""One bounded walk of the workspace before (and during) a sandboxed run: what must be
masked, which directories are other repositories, and how much disk it uses.

The daemon reads the tree the agent built, so the walk is iterative, holds at most
`max_depth` directory fds, never follows a symlink and stops after `max_entries`
entries. What it could not look into is reported, never guessed: a directory below the
depth bound is `cut` (the sandbox hides it and git leaves it out), and a walk that hit the
entry bound is not `complete` (callers refuse to run rather than run unchecked).
"""

from __future__ import annotations

import os
import stat
from dataclasses import dataclass

from .paths import is_protected_name

MAX_ENTRIES = 1_000_000
# What an entry costs at least, empty or not: it takes an inode, and a quota that counted
# blocks only let millions of empty files through (the file system's inodes run out for
# the ledger and every workspace beside it).
ENTRY_COST = 4096
MAX_DEPTH = 128
MAX_CUT = 256
# A directory holding all three is a git directory (a bare repository, or the target of a
# gitfile): git would run what its config says if someone entered it.
BARE = {"HEAD": 1, "objects": 2, "refs": 4}
BARE_ALL = 7
_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass(frozen=True)
class Scan:
    protected_files: tuple[str, ...]  # workspace-relative: .env*, keys (masked, never staged)
    protected_dirs: tuple[str, ...]  # .env* directories: everything below is protected
    nested_repos: tuple[str, ...]  # directories below the root holding a .git entry, and
    #                                bare repositories (HEAD, objects and refs)
    cut: tuple[str, ...]  # directories at the depth bound, not looked into
    bytes: int  # disk used (allocated blocks, ENTRY_COST at least each), the top .git excepted
    entries: int
    complete: bool  # False when the entry bound stopped the walk
    reason: str = ""  # why it is not complete

    @property
    def hidden_dirs(self) -> tuple[str, ...]:
        """Directories the sandbox must not show: protected ones and unchecked ones."""
        return self.protected_dirs + self.cut


def scan(root: str, *, max_entries: int = MAX_ENTRIES, max_depth: int = MAX_DEPTH,
         max_cut: int = MAX_CUT) -> Scan:
    """Walk `root` (the workspace; its own .git is skipped)."""
    files: list[str] = []
    dirs: list[str] = []
    nested: list[str] = []
    cut: list[str] = []
    used = 0
    entries = 0
    reason = ""
    root_fd = os.open(root, _DIR_FLAGS)
    stack: list[_Frame] = []
    try:
        stack.append(_Frame(root_fd, "", os.scandir(root_fd)))
    except OSError:
        os.close(root_fd)
        raise
    try:
        while stack and not reason:
            frame = stack[-1]
            fd, rel = frame.fd, frame.rel
            try:
                entry = next(frame.listing, None)
            except OSError:  # the directory went away or cannot be read: nothing in it counts
                entry = None
            if entry is None:
                stack.pop().close()
                if rel and frame.bare_marks == BARE_ALL:
                    nested.append(rel)
                continue
            entries += 1
            if entries > max_entries:
                reason = (f"the workspace has more than {max_entries} files and directories; "
                          "the sandbox could not check all of them for secrets")
                break
            name = entry.name
            path = f"{rel}/{name}" if rel else name
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue
            used += max(info.st_blocks * 512, ENTRY_COST)
            if name in BARE:
                frame.bare_marks |= BARE[name]
            if name.lower() == ".git":
                if rel:  # a repository of the agent's, inside ours: never entered
                    nested.append(rel)
                continue
            if stat.S_ISDIR(info.st_mode):
                if name.lower().startswith(".env"):
                    dirs.append(path)
                    continue
                if len(stack) > max_depth:
                    cut.append(path)
                    if len(cut) > max_cut:
                        reason = (f"the workspace has more than {max_cut} directories deeper "
                                  f"than {max_depth} levels")
                    continue
                try:
                    child = os.open(name, _DIR_FLAGS, dir_fd=fd)
                except OSError:
                    continue  # swapped for a symlink or removed meanwhile: not a directory now
                try:
                    stack.append(_Frame(child, path, os.scandir(child)))
                except OSError:
                    os.close(child)
            elif stat.S_ISREG(info.st_mode) and is_protected_name(name):
                files.append(path)
    finally:
        while stack:
            stack.pop().close()
    return Scan(tuple(files), tuple(dirs), tuple(dict.fromkeys(nested)), tuple(cut), used,
                entries, not reason, reason)


class _Frame:
    """A directory being listed: its fd, its path, and which marks of a bare repository
    (HEAD, objects, refs) it holds."""

    __slots__ = ("bare_marks", "fd", "listing", "rel")

    def __init__(self, fd: int, rel: str, listing: os._ScandirIterator[str]) -> None:
        self.fd = fd
        self.rel = rel
        self.listing = listing
        self.bare_marks = 0

    def close(self) -> None:
        self.listing.close()
        os.close(self.fd)
