"""Prompts as package data: load(name) returns the text of prompts/<name>.md."""

from __future__ import annotations

import functools
from importlib import resources


def load(name: str, **values: str) -> str:
    text = _read(name)
    return text.format(**values) if values else text


@functools.cache
def _read(name: str) -> str:
    return resources.files(__package__).joinpath(f"{name}.md").read_text(encoding="utf-8")
