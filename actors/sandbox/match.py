"""Matching of agent-given patterns in time linear in the text: grep's regexes and the
components of a glob run on RE2 (no backtracking), never on Python's `re`, whose
backtracking takes time exponential in a pattern such as '(a|aa)*c'. RE2 releases the
GIL while it matches, so a long search in a worker thread leaves the event loop free.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import re2

from .errors import BadArguments

MAX_PATTERN = 4096  # characters in a grep or glob pattern
RE2_SYNTAX = ("patterns are RE2 syntax: Python's without backreferences (\\1) or lookaround "
              "((?=, (?!, (?<=, (?<!), which can take exponential time, and without verbose "
              "mode or inline comments")


def _options(*, literal: bool = False, lines: bool = False) -> Any:
    options = re2.Options()
    options.log_errors = False  # the reason goes to the model, not to stderr
    options.literal = literal
    options.never_nl = lines  # a match never spans two lines
    return options


def _compile(regex: str, options: Any, what: str, pattern: str) -> Any:
    try:
        return re2.compile(regex, options)
    except re2.error as exc:
        reason = exc.args[0] if exc.args else "invalid"
        if isinstance(reason, bytes):
            reason = reason.decode("utf-8", "replace")
        raise BadArguments(f"{what} {shown(pattern)} cannot be used: {reason}; {RE2_SYNTAX}"
                           ) from None
    finally:
        # re2.compile keeps the last 128 patterns, each with up to max_mem (8 MiB) of DFA
        # states: the agent's patterns would stay pinned there. Ours live as long as a call.
        re2.purge()


def _check_length(pattern: str, what: str) -> None:
    if len(pattern) > MAX_PATTERN:
        raise BadArguments(f"the {what} is {len(pattern)} characters; the limit is "
                           f"{MAX_PATTERN}")


def shown(text: str, limit: int = 120) -> str:
    """`text` quoted for a message, its middle cut when it is long."""
    if len(text) <= limit:
        return repr(text)
    return repr(text[: limit - 40]) + f" ...[{len(text)} characters]... " + repr(text[-20:])


class LineSearch:
    """grep's pattern: a literal string or an RE2 regex, matched within single lines
    (`^` and `$` at line ends) of a whole file's bytes at once."""

    def __init__(self, pattern: str, *, regex: bool) -> None:
        _check_length(pattern, "grep pattern")
        if regex:
            self._regexp = _compile("(?m)" + pattern, _options(lines=True),
                                    "the regular expression", pattern)
        else:
            self._regexp = _compile(pattern, _options(literal=True, lines=True), "the pattern",
                                    pattern)

    def lines(self, raw: bytes) -> Iterator[tuple[int, bytes]]:
        """(line number from 1, line without its newline) of each line that matches."""
        end = len(raw)
        pos = 0
        number = 1
        counted = 0
        while pos < end:
            found = self._regexp.search(raw, pos)
            if found is None:
                return
            start = found.start()
            if start == end and raw.endswith(b"\n"):
                return  # the empty "line" after the last newline is not a line
            line_start = raw.rfind(b"\n", 0, start) + 1
            line_end = raw.find(b"\n", start)
            if line_end == -1:
                line_end = end
            number += raw.count(b"\n", counted, line_start)
            counted = line_start
            yield number, raw[line_start:line_end]
            pos = line_end + 1


class Glob:
    """A workspace-relative glob matched one path component at a time, so that a walk
    can leave out every directory no match can lie under.

    `*` and `?` stay within one component, `**` alone as a component spans any number
    of them (none included), `[...]` is a character class (`[!...]` negated). A state is
    the set of pattern components that may come next.
    """

    def __init__(self, pattern: str) -> None:
        _check_length(pattern, "glob pattern")
        steps: list[Any] = []  # a compiled RE2 per component; None for "**"
        for segment in pattern.split("/"):
            if not segment or (segment == "**" and steps and steps[-1] is None):
                continue
            steps.append(None if segment == "**" else _compile(
                segment_regex(segment), _options(), "the glob pattern", pattern))
        if not steps:
            raise BadArguments(f"the glob pattern {shown(pattern)} names no path")
        self.steps = tuple(steps)
        self.start = self._closure({0})

    def _closure(self, states: set[int]) -> frozenset[int]:
        """`states` and every state after a "**" in it, which may match no component."""
        out = set(states)
        for i in sorted(states):
            while i < len(self.steps) and self.steps[i] is None:
                i += 1
                out.add(i)
        return frozenset(out)

    def step(self, states: frozenset[int], name: str) -> frozenset[int]:
        """The states after the component `name`."""
        raw = _utf8(name)
        out: set[int] = set()
        for i in states:
            if i == len(self.steps):
                continue
            step = self.steps[i]
            if step is None:
                out.add(i)
            elif step.fullmatch(raw) is not None:
                out.add(i + 1)
        return self._closure(out)

    def matches(self, states: frozenset[int]) -> bool:
        return len(self.steps) in states

    def may_descend(self, states: frozenset[int]) -> bool:
        """Whether anything below a directory in `states` can match."""
        return any(i < len(self.steps) for i in states)


def _utf8(name: str) -> bytes:
    """A file name as UTF-8, a byte that is not (held as a lone surrogate) as U+FFFD: one
    character, as `?` expects."""
    try:
        return name.encode("utf-8")
    except UnicodeEncodeError:
        return os.fsencode(name).decode("utf-8", "replace").encode("utf-8")


def segment_regex(segment: str) -> str:
    """The RE2 regex of one glob component (no "/" in it)."""
    out: list[str] = []
    i = 0
    n = len(segment)
    while i < n:
        c = segment[i]
        if c == "*":
            while i + 1 < n and segment[i + 1] == "*":
                i += 1
            out.append("[^/]*")
        elif c == "?":
            out.append("[^/]")
        elif c == "[":
            j = i + 1
            if j < n and segment[j] in "!^":
                j += 1
            if j < n and segment[j] == "]":  # a "]" first is a member, as in fnmatch
                j += 1
            close = segment.find("]", j)
            if close == -1:
                out.append(re2.escape(c))
            else:
                body = segment[i + 1:close]
                negate = body[:1] in ("!", "^")
                if negate:
                    body = body[1:]
                body = body.replace("\\", "\\\\").replace("[", "\\[").replace("]", "\\]")
                out.append("[" + ("^" if negate else "") + body + "]")
                i = close
        else:
            out.append(re2.escape(c))
        i += 1
    return "".join(out)
