"""Parsing what an attacker may have written: the model's output (tool arguments, its
lessons), files the agent commits (services.toml), a remote server's answers.

Python's parsers recurse once per nesting level, so a small document of brackets
(`[[[...]]]`, a few kilobytes) raises RecursionError, which is no ValueError: a caller
that catches only the parser's own error would crash on it. Here it is that parser's own
error, saying the document is nested too deeply, like any other unreadable document.

JSON also holds what nothing downstream can carry: an integer past 64 bits (msgpack and
SQLite stop there; past 4,300 digits Python's int() itself raises) and a string with a
lone surrogate (`"\\ud800"`: no Unicode character, so no UTF-8) are refused like a syntax
error.
"""

from __future__ import annotations

import json
import re
import tomllib
from typing import Any

TOO_DEEP = "nested too deeply to read"
INT_MIN, INT_MAX = -(2**63), 2**63 - 1
_DIGITS = 19  # of INT_MAX: a longer integer is past it before int() is asked
_SURROGATE = re.compile("[\ud800-\udfff]")


class _PastInt64(ValueError):
    pass


def _bounded_int(text: str) -> int:
    if len(text.lstrip("-")) > _DIGITS:
        raise _PastInt64(text[:24] + "...")
    value = int(text)
    if not INT_MIN <= value <= INT_MAX:
        raise _PastInt64(text)
    return value


def json_loads(text: str | bytes) -> Any:
    """json.loads; json.JSONDecodeError for a document nested past the recursion limit,
    holding an integer past 64 bits or a string with a lone surrogate."""
    try:
        value = json.loads(text, parse_int=_bounded_int)
    except RecursionError:
        raise json.JSONDecodeError(TOO_DEEP, "", 0) from None
    except _PastInt64 as exc:
        raise json.JSONDecodeError(f"the integer {exc} is past 64 bits (at most "
                                   f"{INT_MAX})", "", 0) from None
    if _has_surrogate(value):
        raise json.JSONDecodeError("a string holds a lone surrogate (\\ud800-\\udfff alone), "
                                   "which is no Unicode character", "", 0)
    return value


def text(value: str) -> str:
    """`value` with each lone surrogate (no Unicode character) made U+FFFD."""
    return _SURROGATE.sub("\ufffd", value)


def _has_surrogate(value: Any) -> bool:
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, str):
            if _SURROGATE.search(item):
                return True
        elif isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, dict):
            stack.extend(item)
            stack.extend(item.values())
    return False


def toml_loads(text: str) -> dict[str, Any]:
    """tomllib.loads; tomllib.TOMLDecodeError for a document nested past the limit."""
    try:
        return tomllib.loads(text)
    except RecursionError:
        raise tomllib.TOMLDecodeError(TOO_DEEP) from None
