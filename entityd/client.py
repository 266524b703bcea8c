"""A signed client of one entity, as entityctl uses it: connect, ask an actor, close."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from pathlib import Path
from types import TracebackType
from typing import Any
from urllib.parse import urlsplit

import nats.errors
from nacl.signing import SigningKey

from protocol import Envelope, Event, Keyring, ProtocolError, subjects

from . import bus, identity, localauth
from .config import Config
from .eventlog import EventReader, KeySource
from .transport import Transport, wait_closed

CTL_ACTOR = "ctl"
PROBE_S = 1.0  # a local server answers a TCP connect at once; a down one refuses at once


class EntityDown(ConnectionError):
    """Nothing listens at the entity's NATS URL: the entity is not running. Kept beside
    the client (a ConnectionError, not an EntitydError): only entityctl meets it."""


class EntityClient:
    """Speaks as `<entity>/ctl`, signing with the entity's own key or an operator key."""

    def __init__(self, config: Config, key_file: Path | None = None, *,
                 follows: bool = False) -> None:
        """`follows`: the connection comes back when the daemon restarts (a watch)."""
        self.config = config
        self.follows = follows
        path = key_file or identity.key_path(config.data_dir)
        self.key: SigningKey = identity.read_key(path)
        self.entity_public = identity.read_public(config.data_dir)
        self.url = config.nats.url or f"nats://{config.nats.host}:{config.nats.port}"
        self.shown_url = bus.shown_url(self.url)  # without a login in it, for messages
        self._transport: Transport | None = None

    def _token(self) -> str | None:
        """The local login of the entity's embedded server (made by its first start)."""
        if not self.config.embedded_nats or self.config.nats.config:
            return None
        if not localauth.token_path(self.config.data_dir).exists():
            return None  # a daemon older than the login, or never started
        return localauth.read(self.config.data_dir)

    async def _probe(self) -> None:
        """EntityDown within PROBE_S when nothing accepts a connection at the URL, rather
        than nats-py's retries for connect_timeout and a bare "timed out"."""
        where = urlsplit(self.url)
        if not where.hostname or where.scheme not in ("nats", "tls"):
            return
        try:
            async with asyncio.timeout(PROBE_S):
                _, writer = await asyncio.open_connection(where.hostname, where.port or 4222)
        except (OSError, TimeoutError):
            config = self.config.path or "DATA_DIR/entityd.toml"
            raise EntityDown(
                f"cannot reach {self.config.name}: its NATS server is not running at "
                f"{self.shown_url}; start the entity with `entityd run --config {config}` (or "
                f"`systemctl start entityd@{self.config.name}`)") from None
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()

    async def __aenter__(self) -> EntityClient:
        await self._probe()
        nc = await bus.connect(
            self.url,
            entity=self.config.name,
            client_name=f"entityctl-{self.config.name}",
            connect_timeout=self.config.nats.connect_timeout,
            retry_forever=False,
            token=self._token(),
            reconnect=self.follows,
        )
        keyring = Keyring()
        keyring.add(self.entity_public, self.config.name)
        self._transport = Transport(
            nc,
            entity=self.config.name,
            key=self.key,
            keyring=keyring,
            max_bytes=self.config.protocol.max_message_bytes,
        )
        return self

    def reconnects(self) -> int:
        """How often the connection came back after it was lost (a daemon's restart)."""
        assert self._transport is not None, "use `async with EntityClient(...)`"
        return int(self._transport.nc.stats.get("reconnects", 0))

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._transport is not None:
            await wait_closed(self._transport.nc, timeout=2.0)

    async def tell(self, actor: str, message: object) -> None:
        assert self._transport is not None, "use `async with EntityClient(...)`"
        await self._transport.tell(
            f"{self.config.name}/{CTL_ACTOR}", f"{self.config.name}/{actor}", message
        )

    @contextlib.asynccontextmanager
    async def events(self) -> AsyncIterator[AsyncIterator[Envelope]]:
        """Subscribe to the entity's signed events; yields an iterator of verified ones
        (Event records only: presence heartbeats are left out).

        The subscription is live when the block is entered, so nothing published after
        that is missed; forged or malformed events are skipped.
        """
        assert self._transport is not None, "use `async with EntityClient(...)`"
        transport = self._transport
        sub = await transport.nc.subscribe(subjects.event(self.config.name, "*", "*"))
        await bus.barrier(transport.nc)
        guard = transport.new_replay_guard()
        local = f"{self.config.name}/{CTL_ACTOR}"

        async def verified() -> AsyncIterator[Envelope]:
            async for msg in sub.messages:
                try:
                    env = transport.open(msg.data, subject=msg.subject, local=local,
                                         replay=guard)
                except ProtocolError:
                    continue
                if isinstance(env.message, Event):  # not the peer actor's heartbeats
                    yield env

        try:
            yield verified()
        finally:
            # Closed already when the entity died: there is nothing left to unsubscribe.
            with contextlib.suppress(nats.errors.ConnectionClosedError):
                await sub.unsubscribe()

    def event_reader(self, refresh: KeySource | None = None) -> EventReader:
        """The entity's EVENTS stream, verified with its key; `refresh` adds the keys
        of peers whose events it holds (entityctl asks the peer actor)."""
        assert self._transport is not None, "use `async with EntityClient(...)`"
        keyring = Keyring()
        keyring.add(self.entity_public, self.config.name)
        return EventReader(self._transport.nc.jetstream(), self.config.name, keyring,
                           max_bytes=self.config.protocol.max_message_bytes, refresh=refresh)

    async def ask(self, actor: str, message: object, timeout: float) -> Any:
        assert self._transport is not None, "use `async with EntityClient(...)`"
        env = await self._transport.ask(
            f"{self.config.name}/{CTL_ACTOR}", f"{self.config.name}/{actor}", message, timeout
        )
        return env.message
