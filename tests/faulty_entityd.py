"""`entityd` with two more actors that misbehave on request, for the tests of how the
process ends (tests/test_process_exit.py).

Run as `python tests/faulty_entityd.py run --config PATH`: the same process entry as
the `entityd` console script (entityd.app.cli.main) and the standard actors, plus
- `crasher`, which raises on every message: the stand-in for any handler bug an input
  can trigger, sent through NATS as an attacker or a bad peer would send it;
- `stuck`, which on `test_px_stick` starts blocking work in the default executor that
  never ends: the stand-in for a cleanup that hangs (asyncio.run waits for that
  executor's threads when it closes the loop).
"""

from __future__ import annotations

import asyncio
import dataclasses
import sys
import time
from collections.abc import Callable
from typing import Any

import protocol
from actors import assembly
from entityd import Actor
from entityd.app import cli
from protocol import Envelope


@protocol.kind("test_px_crash")
@dataclasses.dataclass(frozen=True)
class CrashMe:
    """Makes the crasher raise, as a handler bug would on a bad input."""


@protocol.kind("test_px_stick")
@dataclasses.dataclass(frozen=True)
class Stick:
    """Makes the stuck actor start a thread that outlives the event loop."""


class Crasher(Actor):
    name = "crasher"

    async def handle(self, envelope: Envelope) -> object | None:
        raise RuntimeError("crashed on purpose by a test_px_crash message")


class Stuck(Actor):
    name = "stuck"

    async def handle(self, envelope: Envelope) -> object | None:
        asyncio.get_running_loop().run_in_executor(None, time.sleep, 3600)
        return None


def with_faulty(standard: Callable[..., dict[str, Any]]) -> Callable[..., dict[str, Any]]:
    def actors(*args: Any, **kwargs: Any) -> dict[str, Any]:
        return {**standard(*args, **kwargs), Crasher.name: Crasher, Stuck.name: Stuck}

    return actors


if __name__ == "__main__":
    assembly.standard_actors = with_faulty(assembly.standard_actors)  # type: ignore[assignment]
    sys.exit(cli.main())
