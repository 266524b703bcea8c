"""Bounded walks of a directory tree the agent built: iterative (an explicit stack, never
Python recursion), by file descriptor, never following a symlink, and stopped by a budget
of entries, depth and time that says afterwards why it stopped, if it did.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


@dataclass
class Budget:
    """What one walk may spend, and afterwards what it left out (`cut`)."""

    max_entries: int  # directory entries read, in total
    max_depth: int  # directories below the top entered at most this deep
    seconds: float | None = None  # wall clock from the budget's creation
    entries: int = 0
    spent: str = ""  # why the walk stopped before the end ("" if it did not)
    not_entered: int = 0  # directories left out for their depth
    deadline: float = field(init=False)

    def __post_init__(self) -> None:
        self.deadline = (time.monotonic() + self.seconds) if self.seconds is not None else 0.0

    @property
    def cut(self) -> str:
        """What the walk did not see, for the model to read; "" when it saw everything."""
        notes = [self.spent] if self.spent else []
        if self.not_entered:
            notes.append(f"{self.not_entered} directories more than {self.max_depth} levels "
                         "deep not entered")
        return "; ".join(notes)

    def spend(self) -> bool:
        """Count one entry; False (and `spent` set) when the entries or the time are spent."""
        if self.spent:
            return False
        if self.entries >= self.max_entries:
            self.spent = f"stopped after reading {self.max_entries} directory entries"
            return False
        if self.out_of_time():
            return False
        self.entries += 1
        return True

    def out_of_time(self) -> bool:
        """True (and `spent` set, unless it already was) once the time is up."""
        if self.seconds is None or time.monotonic() <= self.deadline:
            return False
        self.spent = self.spent or f"stopped after {self.seconds:g} s"
        return True

    def too_deep(self, depth: int) -> bool:
        if depth <= self.max_depth:
            return False
        self.not_entered += 1
        return True


@dataclass
class Directory:
    """One directory of a walk: the caller may remove names from `dirs` to skip them."""

    rel: str  # its path below the top, ending in "/" ("" for the top itself)
    fd: int  # open while the caller looks at it
    depth: int  # 0 for the top
    dirs: list[str]  # sub-directories (never symlinks), sorted
    others: list[str]  # everything else: files, symlinks, sockets..., sorted


def walk(top: int, budget: Budget, keep_dir: Callable[[str], bool] = lambda name: True,
         rel: str = "") -> Iterator[Directory]:
    """Each directory at or below the directory fd `top`, in pre-order, names sorted:
    a directory is yielded before any directory below it. `top` stays the caller's."""
    first = _read(top, rel, 0, budget, keep_dir)
    # Frames: a directory and the sub-directories not yet entered (None until it is left
    # to the walk, so that the caller's edits to `dirs` count).
    stack: list[tuple[Directory, list[str] | None]] = [(first, None)]
    try:
        yield first
        while stack and not budget.spent:
            parent, pending = stack[-1]
            if pending is None:
                pending = sorted(parent.dirs, reverse=True)
                stack[-1] = (parent, pending)
            if not pending:
                stack.pop()
                if parent.fd != top:
                    os.close(parent.fd)
                continue
            name = pending.pop()
            if budget.too_deep(parent.depth + 1):
                continue
            try:
                fd = os.open(name, _DIR_FLAGS, dir_fd=parent.fd)
            except OSError:
                continue  # removed, or swapped for a symlink, since it was listed
            try:
                child = _read(fd, f"{parent.rel}{name}/", parent.depth + 1, budget, keep_dir)
            except BaseException:
                os.close(fd)
                raise
            stack.append((child, None))
            yield child
    finally:
        for frame, _pending in stack:
            if frame.fd != top:
                os.close(frame.fd)


def _read(fd: int, rel: str, depth: int, budget: Budget,
          keep_dir: Callable[[str], bool]) -> Directory:
    dirs: list[str] = []
    others: list[str] = []
    try:
        with os.scandir(fd) as listing:
            for entry in listing:
                if not budget.spend():
                    break
                try:
                    is_dir = entry.is_dir(follow_symlinks=False)
                except OSError:
                    is_dir = False
                if not is_dir:
                    others.append(entry.name)
                elif keep_dir(entry.name):
                    dirs.append(entry.name)
    except OSError:
        pass  # unreadable or gone: what was read counts, the rest is not there for us
    dirs.sort()
    others.sort()
    return Directory(rel, fd, depth, dirs, others)
