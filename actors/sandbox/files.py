"""The file tools: read, write, str_replace, list, glob and grep, confined to the workspace.

They run in the daemon (not in the sandbox) on paths, patterns and trees the agent chose,
so every path goes through `Confinement`, every walk is bounded (walk.py) and never follows a
symlink, and every pattern runs on RE2 (match.py). Each tool returns its text for the model
and a small data map; refusals and failures, whatever their cause, raise ToolError.
"""

from __future__ import annotations

import functools
import os
import stat
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Concatenate, ParamSpec

from .errors import BadArguments, ToolError
from .match import Glob, LineSearch, shown
from .paths import Confinement, Parts, display, is_protected_name, printable, shown_path
from .walk import Budget, walk

Result = tuple[str, dict[str, Any]]
P = ParamSpec("P")

# Directories a recursive glob or grep does not enter unless asked to by name.
SKIP_DIRS = frozenset({
    "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".tox", ".hypothesis",
})
BINARY_SNIFF = 8192
MAX_LINE_SHOWN = 300  # grep
MAX_LINE_READ = 2000  # read_file
LINE_PIECE = 8192  # bytes of one line read_file holds; the rest of a longer line is skipped


@dataclass(frozen=True)
class FileLimits:
    max_file_bytes: int  # largest file written, and largest read whole (sandbox.file_size_mb)
    output_limit: int  # characters of output returned to the model (sandbox.output_limit)
    max_entries: int = 1000  # list_dir and glob
    max_matches: int = 200  # grep
    max_grep_file_bytes: int = 2 * 1024 * 1024
    max_visited: int = 100_000  # directory entries one list, glob or grep reads
    max_depth: int = 64  # directory levels a glob or grep enters
    walk_seconds: float = 10.0  # one list, glob, grep or ranged read


def clip(text: str, limit: int, notes: list[str] | None = None) -> str:
    """`text` cut to `limit` characters, saying how much was cut, then `notes` (what the
    model must see however long the text is)."""
    if len(text) > limit:
        text = text[:limit] + f"\n[... {len(text) - limit} more characters cut at the output limit]"
    return "\n".join([text, *notes]) if notes else text


def _tool_errors(
    method: Callable[Concatenate[FileTools, P], Result],
) -> Callable[Concatenate[FileTools, P], Result]:
    """What the agent's arguments or its tree can make the OS or the walk raise, as a
    ToolError the model reads. Anything else is a bug of ours and is left to the caller."""
    @functools.wraps(method)
    def run(self: FileTools, *args: P.args, **kwargs: P.kwargs) -> Result:
        try:
            return method(self, *args, **kwargs)
        except ToolError:
            raise
        except OSError as exc:
            raise ToolError(f"{method.__name__} failed: {exc.strerror or exc}") from None
        except RecursionError:
            raise ToolError(f"{method.__name__} failed: the path or tree is nested too deeply"
                            ) from None
        except UnicodeError:  # a file name that is not UTF-8 where text was needed
            raise ToolError(f"{method.__name__} failed: a file name or text is not valid "
                            "UTF-8") from None
    return run



class FileTools:
    def __init__(self, workspace: Confinement, limits: FileLimits) -> None:
        self.workspace = workspace
        self.limits = limits

    # ---- read ---------------------------------------------------------------------------

    @_tool_errors
    def read_file(self, path: str, start_line: int = 1, end_line: int | None = None) -> Result:
        if start_line < 1:
            raise BadArguments("start_line counts from 1")
        if end_line is not None and end_line < start_line:
            raise BadArguments("end_line must be at least start_line")
        parts = self.workspace.resolve(path)
        ranged = start_line > 1 or end_line is not None
        with self.workspace.open_file(parts) as fd:
            size = os.fstat(fd).st_size
            if size > self.limits.max_file_bytes and not ranged:
                raise ToolError(
                    f"{display(parts)} is {size} bytes, over the {self.limits.max_file_bytes}-byte "
                    "limit for reading a whole file; read a range with start_line and end_line"
                )
            with os.fdopen(os.dup(fd), "rb") as f:
                head = f.read(BINARY_SNIFF)
                if b"\x00" in head:
                    return f"{display(parts)}: binary file ({size} bytes), not shown", {
                        "bytes": size, "binary": True}
                f.seek(0)
                return self._numbered(parts, f, start_line, end_line, size)

    def _numbered(self, parts: Parts, f: Any, start: int, end: int | None, size: int) -> Result:
        limit = self.limits.output_limit
        deadline = time.monotonic() + self.limits.walk_seconds
        out: list[str] = []
        used = 0
        total = 0
        shown_last = 0
        for number, (raw, skipped) in enumerate(_lines(f), start=1):
            total = number
            if number < start:
                if number % 10_000 == 0 and time.monotonic() > deadline:
                    raise ToolError(f"{display(parts)}: no line {start} within "
                                    f"{self.limits.walk_seconds:g} s of reading (reached line "
                                    f"{number}); read a range nearer the start, or use grep")
                continue
            if end is not None and number > end:
                break
            line = raw.decode("utf-8", errors="replace")
            if skipped:
                line = (line[:MAX_LINE_READ] + f" [... line cut: it is {len(raw) + skipped} "
                        "bytes long]")
            elif len(line) > MAX_LINE_READ:
                line = line[:MAX_LINE_READ] + f" [... {len(line) - MAX_LINE_READ} characters cut]"
            entry = f"{number:>6}\t{line}"
            if used + len(entry) + 1 > limit and out:
                out.append(
                    f"[... output limit reached after line {shown_last}; "
                    f"continue with start_line={shown_last + 1}]"
                )
                return "\n".join(out), {"bytes": size, "first": start, "last": shown_last,
                                        "truncated": True}
            out.append(entry)
            used += len(entry) + 1
            shown_last = number
        if not out:
            if total == 0:
                return f"{display(parts)}: empty file", {"bytes": size, "lines": 0}
            raise ToolError(f"{display(parts)} has {total} lines; start_line {start} is past "
                            "the end")
        return "\n".join(out), {"bytes": size, "first": start, "last": shown_last,
                                "truncated": False}

    # ---- write --------------------------------------------------------------------------

    @_tool_errors
    def write_file(self, path: str, content: str) -> Result:
        data = content.encode("utf-8")
        self._check_size(path, len(data))
        parts = self.workspace.resolve(path)
        with self.workspace.open_file(parts, write=True) as fd:
            os.ftruncate(fd, 0)
            _write_all(fd, data)
        lines = content.count("\n") + (0 if content.endswith("\n") or not content else 1)
        return f"wrote {len(data)} bytes ({lines} lines) to {display(parts)}", {
            "bytes": len(data), "lines": lines}

    @_tool_errors
    def str_replace(self, path: str, old: str, new: str) -> Result:
        if not old:
            raise BadArguments("old must not be empty")
        if old == new:
            raise BadArguments("old and new are the same; nothing to replace")
        parts = self.workspace.resolve(path)
        where = display(parts)
        with self.workspace.open_file(parts, write=True) as fd:
            raw = _read_all(fd, self.limits.max_file_bytes)
            if raw is None:
                raise ToolError(f"{where} is {os.fstat(fd).st_size} bytes, over the "
                                f"{self.limits.max_file_bytes}-byte limit for editing")
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError:
                raise ToolError(f"{where} is not UTF-8 text; str_replace edits text") from None
            count = text.count(old)
            if count == 0:
                raise ToolError(f"old text not found in {where}; it must match exactly, "
                                "including whitespace and indentation (read the file first)")
            if count > 1:
                raise ToolError(f"old text occurs {count} times in {where}; include more "
                                "surrounding lines so that it matches exactly once")
            index = text.index(old)
            data = (text[:index] + new + text[index + len(old):]).encode("utf-8")
            self._check_size(path, len(data))
            os.lseek(fd, 0, os.SEEK_SET)
            os.ftruncate(fd, 0)
            _write_all(fd, data)
        line = text.count("\n", 0, index) + 1
        return f"replaced 1 occurrence in {where} at line {line}", {"line": line,
                                                                    "bytes": len(data)}

    def _check_size(self, path: str, size: int) -> None:
        if size > self.limits.max_file_bytes:
            raise ToolError(f"{shown_path(path)}: {size} bytes is over the "
                            f"{self.limits.max_file_bytes}-byte file size limit")

    # ---- list, glob, grep ---------------------------------------------------------------

    @_tool_errors
    def list_dir(self, path: str = ".") -> Result:
        parts = self.workspace.resolve(path)
        budget = self._budget()
        rows: list[str] = []
        with self.workspace.open_dir(parts) as fd, os.scandir(fd) as it:
            entries = []
            for entry in it:
                if not budget.spend():
                    break
                entries.append(entry)
            entries.sort(key=lambda e: e.name)
            for entry in entries[: self.limits.max_entries]:
                rows.append(_describe(entry, fd))
        notes = []
        if len(entries) > self.limits.max_entries:
            notes.append(f"[... {len(entries) - self.limits.max_entries} more entries not shown]")
        count = f"{len(entries)} entries"
        if budget.cut:
            notes.append(f"[... listing cut short: {budget.cut}]")
            count = f"at least {count}"
        header = f"{display(parts)}/ ({count})"
        return clip("\n".join([header, *rows]), self.limits.output_limit, notes), {
            "entries": len(entries), "complete": not budget.cut}

    @_tool_errors
    def glob(self, pattern: str) -> Result:
        pattern = _workspace_relative(pattern)
        glob = Glob(pattern)
        named = {part for part in pattern.split("/") if part in SKIP_DIRS}
        budget = self._budget()
        found: list[str] = []
        total = 0

        def record(path: str) -> None:
            nonlocal total
            total += 1
            if len(found) < self.limits.max_entries:
                found.append(printable(path))

        states_of = {"": glob.start}  # the glob's states in each directory yet to be read
        with self.workspace.open_dir(()) as top:
            for directory in walk(top, budget, _keep_dir(named)):
                states = states_of.pop(directory.rel)
                entered = []
                for name in directory.dirs:
                    after = glob.step(states, name)
                    if glob.matches(after):
                        record(f"{directory.rel}{name}/")
                    if glob.may_descend(after):
                        states_of[f"{directory.rel}{name}/"] = after
                        entered.append(name)
                directory.dirs[:] = entered
                for name in directory.others:
                    if not _hidden(name) and glob.matches(glob.step(states, name)):
                        record(directory.rel + name)
        found.sort()
        notes = []
        if total > len(found):
            notes.append(f"[... {total - len(found)} more matches not shown]")
        if budget.cut:
            notes.append(f"[... search cut short, matches may be missing: {budget.cut}]")
        data = {"matches": total, "complete": not budget.cut}
        if not found:
            return "\n".join([f"no paths match {shown(pattern)}", *notes]), data
        return clip("\n".join(found), self.limits.output_limit, notes), data

    @_tool_errors
    def grep(self, pattern: str, path: str = ".", regex: bool = False) -> Result:
        search = LineSearch(pattern, regex=regex)
        parts = self.workspace.resolve(path)
        budget = self._budget()
        matches: list[str] = []
        stopped = ""
        too_big = 0
        for where, fd in self._files(parts, budget):
            raw = _read_all(fd, self.limits.max_grep_file_bytes)
            if raw is None:
                too_big += 1
                continue
            if b"\x00" in raw[:BINARY_SNIFF]:
                continue
            for number, line in _matching_lines(raw, search):
                matches.append(f"{where}:{number}: {line}")
                if len(matches) >= self.limits.max_matches:
                    stopped = f"[... stopped after {len(matches)} matches]"
                    break
            if stopped:
                break
        notes = [stopped] if stopped else []
        if budget.cut:
            notes.append(f"[... search cut short, matches may be missing: {budget.cut}]")
        if too_big:
            notes.append(f"[... {too_big} files over {self.limits.max_grep_file_bytes} bytes "
                         "not searched]")
        data = {"matches": len(matches), "complete": not notes}
        if not matches:
            return "\n".join([f"no matches for {shown(pattern)} in {display(parts)}",
                              *notes]), data
        return clip("\n".join(matches), self.limits.output_limit, notes), data

    def _budget(self) -> Budget:
        return Budget(self.limits.max_visited, self.limits.max_depth, self.limits.walk_seconds)

    def _files(self, parts: Parts, budget: Budget) -> Iterator[tuple[str, int]]:
        """(display path, fd) of each regular, unprotected file at or under `parts`."""
        mode = self.workspace.mode(parts)
        if stat.S_ISREG(mode):
            with self.workspace.open_file(parts) as fd:
                yield display(parts), fd
            return
        if not stat.S_ISDIR(mode):
            raise ToolError(f"{display(parts)}: neither a regular file nor a directory")
        named = {part for part in parts if part in SKIP_DIRS}
        base = display(parts) + "/" if parts else ""
        with self.workspace.open_dir(parts) as top:
            for directory in walk(top, budget, _keep_dir(named), rel=base):
                for name in directory.others:
                    if _hidden(name):
                        continue
                    if budget.out_of_time():
                        return
                    try:
                        fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK
                                     | os.O_CLOEXEC, dir_fd=directory.fd)
                    except OSError:
                        continue
                    try:
                        if stat.S_ISREG(os.fstat(fd).st_mode):
                            yield printable(directory.rel + name), fd
                    finally:
                        os.close(fd)


def _keep_dir(named: set[str]) -> Callable[[str], bool]:
    """Which sub-directories a walk enters: never .git or a protected one, and a cache
    or virtualenv only when the pattern or the path names it."""
    def keep(name: str) -> bool:
        return not _hidden(name) and (name not in SKIP_DIRS or name in named)
    return keep


def _hidden(name: str) -> bool:
    """A name a walk never shows: .git (in any case) and protected files (.env*, keys)."""
    return name.lower() == ".git" or is_protected_name(name)


def _workspace_relative(pattern: str) -> str:
    if pattern.startswith("/workspace/"):
        pattern = pattern[len("/workspace/"):]
    elif pattern.startswith("./"):
        pattern = pattern[2:]
    if not pattern or pattern.startswith("/"):
        raise BadArguments("glob patterns are relative to the workspace, e.g. 'src/**/*.py'")
    if ".." in pattern.split("/"):
        raise BadArguments("glob patterns may not contain '..'")
    return pattern


def _describe(entry: os.DirEntry[str], dir_fd: int) -> str:
    name = printable(entry.name)
    try:
        is_link = entry.is_symlink()
        is_dir = not is_link and entry.is_dir(follow_symlinks=False)
    except OSError:
        return f"{name}  (gone)"
    if is_link:
        try:
            target = printable(os.readlink(entry.name, dir_fd=dir_fd))
        except OSError:
            target = "?"
        return f"{name}@ -> {target}"
    if is_dir:
        note = "  (repository; off limits)" if name.lower() == ".git" else ""
        return f"{name}/{note}"
    try:
        size = entry.stat(follow_symlinks=False).st_size
    except OSError:
        size = -1
    note = "  (protected)" if is_protected_name(name) else ""
    return f"{name}  ({size} bytes){note}"


def _matching_lines(raw: bytes, search: LineSearch) -> Iterator[tuple[int, str]]:
    for number, line in search.lines(raw):
        head = line[: MAX_LINE_SHOWN * 4].decode("utf-8", errors="replace").rstrip("\r")
        if len(head) > MAX_LINE_SHOWN or len(line) > MAX_LINE_SHOWN * 4:
            head = head[:MAX_LINE_SHOWN] + " [...]"
        yield number, head


def _lines(f: Any) -> Iterator[tuple[bytes, int]]:
    """Each line of the binary file `f` without its newline, cut to LINE_PIECE bytes, and
    how many bytes were cut; a line of a gigabyte is skipped, never held."""
    while piece := f.readline(LINE_PIECE):
        if piece.endswith(b"\n"):
            yield piece[:-1], 0
            continue
        skipped = 0
        while rest := f.readline(1 << 20):
            if rest.endswith(b"\n"):
                skipped += len(rest) - 1
                break
            skipped += len(rest)
        yield piece, skipped


def _read_all(fd: int, limit: int) -> bytes | None:
    """The whole file, or None if it is over `limit` bytes (or grows over it meanwhile)."""
    if os.fstat(fd).st_size > limit:
        return None
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    left = limit + 1
    while left > 0 and (chunk := os.read(fd, min(left, 1 << 20))):
        chunks.append(chunk)
        left -= len(chunk)
    return None if left <= 0 else b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
