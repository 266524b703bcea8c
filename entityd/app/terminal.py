"""What the command line writes reaches a terminal as text, never as its commands.

Much of what `entityctl` prints was chosen by someone else: a member's task title or
note, a member's own events under `watch --all`, a subject a member published on, a
peer's refusal. A terminal takes ESC, CSI and OSC sequences, a bare CR or a C1 control
as commands: they erase and rewrite lines (a forged "paid" line), set the window's
title or write the clipboard (OSC 52) that the operator's next paste runs; bidirectional
overrides reorder what is shown. So `entityctl` writes through `SafeText`: every such
character reaches the screen as a visible escape (`\\x1b`, `\\r`, `\\u202e`), whoever
wrote it. Newlines and tabs pass. `entityctl`'s own colours go out through `styled`,
their text made visible first.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, TextIO

from ..text import visible

__all__ = ["SafeText", "safe_output", "styled", "visible"]


class SafeText:
    """A text stream that writes `visible(s)` for every `write(s)`; anything else (flush,
    fileno, isatty, encoding) is the wrapped stream's."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def write(self, text: str) -> int:
        return self.stream.write(visible(text))

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def styled(self, text: str) -> int:
        """Write `text` as it is: only for escapes entityctl made itself around text that
        went through `visible`."""
        return self.stream.write(text)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def styled(text: str) -> None:
    """Write `text`, entityctl's own escapes in it kept, to standard output."""
    out = sys.stdout
    if isinstance(out, SafeText):
        out.styled(text)
    else:
        out.write(text)
    out.flush()


@contextmanager
def safe_output() -> Iterator[None]:
    """Standard output and error as SafeText while the block runs."""
    saved = sys.stdout, sys.stderr
    sys.stdout = SafeText(sys.stdout)
    sys.stderr = SafeText(sys.stderr)
    try:
        yield
    finally:
        sys.stdout, sys.stderr = saved
