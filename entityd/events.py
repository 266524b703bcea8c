"""Signed runtime events on fed.evt.<entity>.runtime.<type>, for observers and peers."""

from __future__ import annotations

from typing import Any

from protocol import Event

from .errors import ActorDeadError
from .logs import get
from .transport import Transport

RUNTIME = "runtime"
log = get("entityd.events")


class RuntimeEvents:
    def __init__(self, transport: Transport) -> None:
        self.transport = transport

    async def emit(self, typ: str, **data: Any) -> None:
        """Publish an event; a closed connection only loses the event, never the caller."""
        log.info(typ, **data)
        try:
            await self.transport.publish_event(RUNTIME, typ, Event(typ, RUNTIME, data))
        except ActorDeadError:
            log.warning("event_lost", event_type=typ, reason="connection closed")
