"""Text that reaches a terminal as text, never as its commands (entityctl's output and
the daemon's log on a terminal; entityd/app/terminal.py says why)."""

from __future__ import annotations

import re

# C0 controls but tab and newline, DEL, C1 controls, the bidirectional marks, embeddings,
# overrides and isolates, and the line and paragraph separators.
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u2028-\u202e\u2066-\u2069]")


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    if code == 0x0D:
        return "\\r"
    return f"\\x{code:02x}" if code <= 0xFF else f"\\u{code:04x}"


def visible(text: str) -> str:
    """`text` with every character a terminal would act on shown as an escape."""
    return _UNSAFE.sub(_escape, text)
