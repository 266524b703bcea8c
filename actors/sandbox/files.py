"""The file tools: read, write, str_replace, list, glob and grep, confined to the workspace.

They run in the daemon (not in the sandbox), so every path goes through `Workspace`
and every walk is fd-based and never follows a symlink. Each tool returns its text for
the model and a small data map; refusals and failures raise ToolError.
"""

from __future__ import annotations

import os
import re
import stat
import time
from dataclasses import dataclass
from typing import Any

from .errors import BadArguments, ToolError
from .paths import Parts, Workspace, display, is_protected_name

Result = tuple[str, dict[str, Any]]

# Directories a recursive glob or grep does not enter unless asked to by name.
SKIP_DIRS = frozenset({
    "node_modules", ".venv", "venv", "__pycache__", ".mypy_cache", ".pytest_cache",
    ".ruff_cache", ".tox", ".hypothesis",
})
BINARY_SNIFF = 8192
MAX_LINE_SHOWN = 300  # grep
MAX_LINE_READ = 2000  # read_file


@dataclass(frozen=True)
class FileLimits:
    max_file_bytes: int  # largest file written, and largest read whole (sandbox.file_size_mb)
    output_limit: int  # characters of output returned to the model (sandbox.output_limit)
    max_entries: int = 1000  # list_dir and glob
    max_matches: int = 200  # grep
    max_grep_file_bytes: int = 2 * 1024 * 1024
    grep_seconds: float = 10.0


def clip(text: str, limit: int) -> str:
    """`text` cut to `limit` characters, saying how much was cut."""
    if len(text) <= limit:
        return text
    return text[:limit] + f"\n[... {len(text) - limit} more characters cut at the output limit]"


class FileTools:
    def __init__(self, workspace: Workspace, limits: FileLimits) -> None:
        self.workspace = workspace
        self.limits = limits

    # ---- read ---------------------------------------------------------------------------

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
        out: list[str] = []
        used = 0
        total = 0
        shown_last = 0
        for number, raw in enumerate(f, start=1):
            total = number
            if number < start:
                continue
            if end is not None and number > end:
                break
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            if len(line) > MAX_LINE_READ:
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

    def str_replace(self, path: str, old: str, new: str) -> Result:
        if not old:
            raise BadArguments("old must not be empty")
        if old == new:
            raise BadArguments("old and new are the same; nothing to replace")
        parts = self.workspace.resolve(path)
        where = display(parts)
        with self.workspace.open_file(parts, write=True) as fd:
            size = os.fstat(fd).st_size
            if size > self.limits.max_file_bytes:
                raise ToolError(f"{where} is {size} bytes, over the {self.limits.max_file_bytes}"
                                "-byte limit for editing")
            raw = _read_all(fd)
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
            raise ToolError(f"{path}: {size} bytes is over the {self.limits.max_file_bytes}-byte "
                            "file size limit")

    # ---- list, glob, grep ---------------------------------------------------------------

    def list_dir(self, path: str = ".") -> Result:
        parts = self.workspace.resolve(path)
        rows: list[str] = []
        with self.workspace.open_dir(parts) as fd, os.scandir(fd) as it:
            entries = sorted(it, key=lambda e: e.name)
            for entry in entries[: self.limits.max_entries]:
                rows.append(_describe(entry, fd))
        if len(entries) > self.limits.max_entries:
            rows.append(f"[... {len(entries) - self.limits.max_entries} more entries not shown]")
        header = f"{display(parts)}/ ({len(entries)} entries)"
        return clip("\n".join([header, *rows]), self.limits.output_limit), {
            "entries": len(entries)}

    def glob(self, pattern: str) -> Result:
        pattern = _workspace_relative(pattern)
        matcher = glob_regex(pattern)
        named = {part for part in pattern.split("/") if part in SKIP_DIRS}
        found: list[str] = []
        total = 0
        for rel, dirs, files in self._walk((), named):
            for name in dirs:
                path = f"{rel}{name}"
                if matcher.fullmatch(path) or matcher.fullmatch(path + "/"):
                    total += 1
                    if len(found) < self.limits.max_entries:
                        found.append(path + "/")
            for name in files:
                path = f"{rel}{name}"
                if matcher.fullmatch(path):
                    total += 1
                    if len(found) < self.limits.max_entries:
                        found.append(path)
        found.sort()
        if not found:
            return f"no paths match {pattern!r}", {"matches": 0}
        if total > len(found):
            found.append(f"[... {total - len(found)} more matches not shown]")
        return clip("\n".join(found), self.limits.output_limit), {"matches": total}

    def grep(self, pattern: str, path: str = ".", regex: bool = False) -> Result:
        try:
            compiled = re.compile(pattern if regex else re.escape(pattern))
        except re.error as exc:
            raise BadArguments(f"invalid regular expression {pattern!r}: {exc}") from None
        parts = self.workspace.resolve(path)
        matches: list[str] = []
        deadline = time.monotonic() + self.limits.grep_seconds
        stopped = ""
        for where, fd in self._files(parts):
            for number, line in _search(fd, compiled, self.limits.max_grep_file_bytes):
                matches.append(f"{where}:{number}: {line}")
                if len(matches) >= self.limits.max_matches:
                    stopped = f"[... stopped after {len(matches)} matches]"
                    break
            if stopped:
                break
            if time.monotonic() > deadline:
                stopped = f"[... stopped after {self.limits.grep_seconds:g} s of searching]"
                break
        if not matches:
            return f"no matches for {pattern!r} in {display(parts)}", {"matches": 0}
        if stopped:
            matches.append(stopped)
        return clip("\n".join(matches), self.limits.output_limit), {
            "matches": len(matches) - bool(stopped), "complete": not stopped}

    def _files(self, parts: Parts) -> Any:
        """(display path, fd) of each regular, unprotected file at or under `parts`."""
        with self.workspace.open_dir(parts[:-1]) as parent:
            info = os.stat(parts[-1], dir_fd=parent, follow_symlinks=False) if parts else None
        if info is not None and stat.S_ISREG(info.st_mode):
            with self.workspace.open_file(parts) as fd:
                yield display(parts), fd
            return
        named = {part for part in parts if part in SKIP_DIRS}
        for rel, _dirs, files, dir_fd in self._walk_fds(parts, named):
            for name in files:
                try:
                    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC,
                                 dir_fd=dir_fd)
                except OSError:
                    continue
                try:
                    if stat.S_ISREG(os.fstat(fd).st_mode):
                        yield f"{rel}{name}", fd
                finally:
                    os.close(fd)

    def _walk(self, parts: Parts, named: set[str]) -> Any:
        for rel, dirs, files, _fd in self._walk_fds(parts, named):
            yield rel, dirs, files

    def _walk_fds(self, parts: Parts, named: set[str]) -> Any:
        """os.fwalk below `parts`: fd-based, never following symlinks, pruning .git and
        protected names; yields (relative prefix ending in '/', dirs, files, dir fd)."""
        base = display(parts) + "/" if parts else ""
        with self.workspace.open_dir(parts) as top:
            for dirpath, dirnames, filenames, dir_fd in os.fwalk(".", dir_fd=top):
                dirnames[:] = sorted(
                    d for d in dirnames
                    if d.lower() != ".git" and not is_protected_name(d)
                    and (d not in SKIP_DIRS or d in named)
                )
                rel = base + ("" if dirpath == "." else dirpath[2:] + "/")
                files = sorted(f for f in filenames if not is_protected_name(f))
                # fwalk lists symlinks to directories among dirnames without entering them.
                links = [d for d in dirnames if stat.S_ISLNK(
                    os.stat(d, dir_fd=dir_fd, follow_symlinks=False).st_mode)]
                dirnames[:] = [d for d in dirnames if d not in links]
                yield rel, dirnames, sorted(files + links), dir_fd


def glob_regex(pattern: str) -> re.Pattern[str]:
    """A regex for a workspace-relative glob: `*` and `?` stay within one path component,
    `**` spans any number of them, `[...]` is a character class."""
    segments = pattern.split("/")
    out: list[str] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        if segment == "**":
            out.append(".*" if last else "(?:[^/]+/)*")
            continue
        out.append(_segment_regex(segment))
        if not last:
            out.append("/")
    return re.compile("".join(out))


def _segment_regex(segment: str) -> str:
    out: list[str] = []
    i = 0
    while i < len(segment):
        c = segment[i]
        if c == "*":
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            close = segment.find("]", i + 2 if segment[i + 1:i + 2] in ("!", "^") else i + 1)
            if close == -1:
                out.append(re.escape(c))
            else:
                body = segment[i + 1:close]
                if body[:1] in ("!", "^"):
                    body = "^" + body[1:]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = close
        else:
            out.append(re.escape(c))
        i += 1
    return "".join(out)


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
    name = entry.name
    if entry.is_symlink():
        try:
            target = os.readlink(name, dir_fd=dir_fd)
        except OSError:
            target = "?"
        return f"{name}@ -> {target}"
    if entry.is_dir(follow_symlinks=False):
        note = "  (repository; off limits)" if name.lower() == ".git" else ""
        return f"{name}/{note}"
    try:
        size = entry.stat(follow_symlinks=False).st_size
    except OSError:
        size = -1
    note = "  (protected)" if is_protected_name(name) else ""
    return f"{name}  ({size} bytes){note}"


def _search(fd: int, compiled: re.Pattern[str], max_bytes: int) -> Any:
    if os.fstat(fd).st_size > max_bytes:
        return
    raw = _read_all(fd)
    if b"\x00" in raw[:BINARY_SNIFF]:
        return
    for number, line in enumerate(raw.decode("utf-8", errors="replace").splitlines(), start=1):
        if compiled.search(line):
            shown = line if len(line) <= MAX_LINE_SHOWN else line[:MAX_LINE_SHOWN] + " [...]"
            yield number, shown


def _read_all(fd: int) -> bytes:
    os.lseek(fd, 0, os.SEEK_SET)
    chunks = []
    while chunk := os.read(fd, 1 << 20):
        chunks.append(chunk)
    return b"".join(chunks)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]
