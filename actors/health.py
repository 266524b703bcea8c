"""The health actor: answers `ping` and `status_get` for entityctl, peers and monitors."""

from __future__ import annotations

from collections.abc import Callable

from entityd import Actor
from protocol import Envelope, Ping, Pong, Status, StatusGet


class HealthActor(Actor):
    name = "health"
    accepts = (StatusGet, Ping)

    def __init__(self, status: Callable[[], Status]) -> None:
        self._status = status

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case StatusGet():
                return self._status()
            case Ping():
                return Pong()
            case _:
                raise TypeError(f"health does not handle {envelope.typ}")

