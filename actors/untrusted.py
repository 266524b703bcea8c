"""Parsing what an attacker may have written: the model's output (tool arguments, its
lessons), files the agent commits (services.toml), a remote server's answers.

Python's parsers recurse once per nesting level, so a small document of brackets
(`[[[...]]]`, a few kilobytes) raises RecursionError, which is no ValueError: a caller
that catches only the parser's own error would crash on it. Here it is that parser's own
error, saying the document is nested too deeply, like any other unreadable document.
"""

from __future__ import annotations

import json
import tomllib
from typing import Any

TOO_DEEP = "nested too deeply to read"


def json_loads(text: str | bytes) -> Any:
    """json.loads; json.JSONDecodeError for a document nested past the recursion limit."""
    try:
        return json.loads(text)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, "", 0) from None


def toml_loads(text: str) -> dict[str, Any]:
    """tomllib.loads; tomllib.TOMLDecodeError for a document nested past the limit."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError(TOO_DEEP) from None
