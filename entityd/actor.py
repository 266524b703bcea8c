"""The Actor base class and the context through which an actor talks to the rest."""

from __future__ import annotations

from collections.abc import Coroutine
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

from protocol import Envelope, Event, Keyring, ProtocolError, kinds
from protocol.errors import UnexpectedEncryption, UnexpectedKind

from .eventlog import EventReader
from .federated import FederationAccess

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
        self, transport: Transport, actor: str, ask_timeout: float, log: FilteringBoundLogger,
        *, federated: bool = False, reads_events: bool = False,
    ) -> None:
        self._transport = transport
        self.entity = transport.entity
        self.actor = actor
        self.address = f"{self.entity}/{actor}"
        self.ask_timeout = ask_timeout
        self.log = log
        self._federation: FederationAccess | None = None
        if federated:
            self._federation = FederationAccess(transport)
        self._events: EventReader | None = None
        if reads_events:
            keyring = Keyring()  # the entity's own key; the reader's owner adds peers'
            keyring.add(bytes(transport.key.verify_key), self.entity)
            self._events = EventReader(transport.nc.jetstream(), self.entity, keyring,
                                       max_bytes=transport.max_bytes)

    @property
    def federation(self) -> FederationAccess:
        """The federation handle, for an actor that declares `federated = True` (the
        peer actor, which speaks on federation subjects); other actors use ask, tell
        and emit."""
        if self._federation is None:
            raise PermissionError(f"actor {self.actor} is not federated: it has no "
                                  "federation handle")
        return self._federation

    @property
    def events(self) -> EventReader:
        """The EVENTS stream, read-only, for an actor that declares `reads_events = True`
        (the web page's)."""
        if self._events is None:
            raise PermissionError(f"actor {self.actor} does not read the EVENTS stream")
        return self._events

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
    """Subclass with a `name` and the kinds it `accepts`, then override `handle` (and
    on_start/on_stop if needed).

    `handle` gets each verified envelope of an accepted kind in arrival order and returns
    the reply record (or None: a request then gets an `ack`; or `Later(work)` for a slow
    reply). Any other kind, and any encrypted payload, is refused by the runtime before
    `handle` (a request gets an `error` saying why), so `handle` matches exactly the
    records of `accepts`. An exception from any method is a crash, a bug of ours: the
    supervisor calls `on_failure`, builds a fresh instance and restarts it.
    """

    name: ClassVar[str] = ""
    # The record classes of the kinds `handle` takes. None lets every kind through: for
    # the runtime's own tests; every actor the daemon runs declares its kinds.
    accepts: ClassVar[tuple[type[Any], ...] | None] = None
    # True for an actor that speaks on the federation's subjects: its context then
    # carries the federation handle (Context.federation).
    federated: ClassVar[bool] = False
    # True for an actor that reads the EVENTS stream back (Context.events).
    reads_events: ClassVar[bool] = False
    ctx: Context

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if "accepts" in cls.__dict__ and cls.accepts is not None:
            accepted_kinds(cls)  # a record that is not a registered kind fails here

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


_ACCEPTED: dict[type[Actor], frozenset[str] | None] = {}


def accepted_kinds(actor: type[Actor]) -> frozenset[str] | None:
    """The wire names of the kinds `actor` accepts; None when it takes every kind."""
    try:
        return _ACCEPTED[actor]
    except KeyError:
        pass
    accepted = None
    if actor.accepts is not None:
        names = {cls: name for name, cls in kinds.kinds().items()}
        unknown = [cls.__name__ for cls in actor.accepts if cls not in names]
        if unknown:
            raise TypeError(f"{actor.__name__}.accepts names {', '.join(unknown)}, which "
                            "are not registered message kinds")
        accepted = frozenset(names[cls] for cls in actor.accepts)
    _ACCEPTED[actor] = accepted
    return accepted


def refusal(actor: type[Actor], envelope: Envelope) -> ProtocolError | None:
    """Why `actor` must not get `envelope` (a verified one), or None if it may.

    No local mailbox decrypts: encrypted payloads are for the federation's subjects,
    which the peer actor opens itself.
    """
    accepted = accepted_kinds(actor)
    if accepted is not None and envelope.typ not in accepted:
        return UnexpectedKind(
            f"{actor.name} takes {', '.join(sorted(accepted))}; not {envelope.typ!r}",
            subject=envelope.subj)
    if envelope.enc:
        return UnexpectedEncryption(
            f"{actor.name} takes plain payloads only; this {envelope.typ!r} is encrypted",
            subject=envelope.subj)
    return None
