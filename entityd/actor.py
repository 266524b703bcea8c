"""The Actor base class and the context through which an actor talks to the rest."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from protocol import Envelope, Event

if TYPE_CHECKING:
    from structlog.typing import FilteringBoundLogger

    from .transport import Transport


@dataclass(frozen=True)
class Later:
    """What `handle` returns for a reply that takes long: the reply is what `work`
    returns, and the actor takes its next message meanwhile (the work runs beside it
    and is waited for when the actor stops)."""

    work: Coroutine[Any, Any, object]


class Context:
    """What an actor may do: ask and tell other actors, emit events, log."""

    def __init__(
        self, transport: Transport, actor: str, ask_timeout: float, log: FilteringBoundLogger
    ) -> None:
        self._transport = transport
        self.entity = transport.entity
        self.actor = actor
        self.address = f"{self.entity}/{actor}"
        self.ask_timeout = ask_timeout
        self.log = log

    @property
    def transport(self) -> Transport:
        """The signed connection itself, for the peer actor, which speaks on federation
        subjects; other actors use ask, tell and emit."""
        return self._transport

    async def ask(self, dst: str, message: object, timeout: float | None = None) -> Any:
        """Send `message` to actor `dst` ("entity/actor") and return its reply's record."""
        env = await self._transport.ask(
            self.address, dst, message, self.ask_timeout if timeout is None else timeout
        )
        return env.message

    async def tell(self, dst: str, message: object) -> None:
        await self._transport.tell(self.address, dst, message)

    async def emit(self, typ: str, **data: Any) -> None:
        """Publish a signed event on fed.evt.<entity>.<actor>.<typ>."""
        await self._transport.publish_event(self.actor, typ, Event(typ, self.actor, data))


class Actor:
    """Subclass with a `name`, then override `handle` (and on_start/on_stop if needed).

    `handle` gets each verified envelope in arrival order and returns the reply record
    (or None: a request then gets an `ack`; or `Later(work)` for a slow reply). An
    exception from any method is a crash: the supervisor calls `on_failure`, builds a
    fresh instance and restarts it.
    """

    name: ClassVar[str] = ""
    ctx: Context

    async def on_start(self) -> None:
        """Called before the first message; the actor serves once it returns."""

    async def on_stop(self) -> None:
        """Called after the last message, when the actor is stopped on purpose."""

    async def on_failure(self, exc: BaseException) -> None:
        """Called on the crashed instance before it is replaced."""

    async def run(self) -> None:
        """Optional background work beside `handle` (e.g. a queue of long turns).

        It runs while the actor serves and is cancelled when the actor stops; an
        exception from it is a crash like one from `handle`.
        """

    async def handle(self, envelope: Envelope) -> object | None:
        raise NotImplementedError(f"actor {self.name} handles no messages")
