"""A signed client of one entity, as entityctl uses it: connect, ask an actor, close."""

from __future__ import annotations

from pathlib import Path
from types import TracebackType
from typing import Any

from nacl.signing import SigningKey

from protocol import Keyring

from . import bus, identity
from .config import Config
from .transport import Transport, wait_closed

CTL_ACTOR = "ctl"


class EntityClient:
    """Speaks as `<entity>/ctl`, signing with the entity's own key or an operator key."""

    def __init__(self, config: Config, key_file: Path | None = None) -> None:
        self.config = config
        path = key_file or identity.key_path(config.data_dir)
        self.key: SigningKey = identity.read_key(path)
        self.entity_public = identity.read_public(config.data_dir)
        self.url = config.nats.url or f"nats://{config.nats.host}:{config.nats.port}"
        self._transport: Transport | None = None

    async def __aenter__(self) -> EntityClient:
        nc = await bus.connect(
            self.url,
            entity=self.config.name,
            client_name=f"entityctl-{self.config.name}",
            connect_timeout=self.config.nats.connect_timeout,
            retry_forever=False,
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

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._transport is not None:
            await wait_closed(self._transport.nc, timeout=2.0)

    async def ask(self, actor: str, message: object, timeout: float) -> Any:
        assert self._transport is not None, "use `async with EntityClient(...)`"
        env = await self._transport.ask(
            f"{self.config.name}/{CTL_ACTOR}", f"{self.config.name}/{actor}", message, timeout
        )
        return env.message
