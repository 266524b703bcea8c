"""structlog setup: JSON lines for journald, key=value on a terminal."""

from __future__ import annotations

import logging
import sys
from collections.abc import MutableMapping
from typing import Any

import structlog

from .text import visible


def configure(level: str = "info", fmt: str = "auto") -> None:
    if fmt == "auto":
        fmt = "console" if sys.stderr.isatty() else "json"
    last: list[structlog.typing.Processor]
    if fmt == "json":  # JSON escapes every control character itself
        last = [structlog.processors.JSONRenderer()]
    else:
        # Log lines carry what peers and clients chose (a reason, a subject, a title):
        # on a terminal each string shows its control characters as escapes.
        last = [_visible_strings, structlog.dev.ConsoleRenderer(colors=False)]
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            *last,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(
            logging.getLevelNamesMapping()[level.upper()]
        ),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=False,
    )


def _visible_strings(_: Any, __: str, event: MutableMapping[str, Any]) -> dict[str, Any]:
    return {key: visible(value) if isinstance(value, str) else value
            for key, value in event.items()}


def get(name: str) -> structlog.typing.FilteringBoundLogger:
    return structlog.get_logger(name)
