"""The event loop every entityd program runs on: uvloop where it is installed (Linux and
macOS; a dependency of the package there), else asyncio's own.

uvloop runs nats-py's socket reads, the callbacks and the timers in C (measured with
`python -m bench.bus`: see bench/README.md). `ENTITYD_LOOP=asyncio` picks asyncio's own
loop, e.g. to rule the loop out when chasing a bug; any other value is refused by name.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from .errors import ConfigError

ENV = "ENTITYD_LOOP"
CHOICES = ("uvloop", "asyncio")
T = TypeVar("T")


def chosen() -> str:
    """The loop `run` uses: ENTITYD_LOOP's, or uvloop when it can be imported."""
    wanted = os.environ.get(ENV, "").strip().lower()
    if wanted and wanted not in CHOICES:
        raise ConfigError(ENV, f"{wanted!r} is not a loop: use one of {', '.join(CHOICES)} "
                          "(or unset it)")
    if wanted == "asyncio":
        return "asyncio"
    try:
        import uvloop  # noqa: F401
    except ImportError:
        if wanted == "uvloop":
            raise ConfigError(ENV, "uvloop is not installed: pip install uvloop, or unset "
                              "it") from None
        return "asyncio"
    return "uvloop"


def factory(name: str | None = None) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """The loop factory for asyncio.Runner: None means asyncio's own."""
    if (name or chosen()) == "asyncio":
        return None
    import uvloop

    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, T], *, loop: str | None = None) -> T:
    """asyncio.run(main) on the chosen loop."""
    try:
        make = factory(loop)
    except ConfigError:
        main.close()  # never awaited: no "coroutine was never awaited" warning
        raise
    with asyncio.Runner(loop_factory=make) as runner:
        return runner.run(main)
