"""entityd's runtime library: what an actor is, the context it talks through, its
config and its errors. Actors import these names from here and nothing else of
`entityd` (tests/test_layers.py holds it).

The application that runs a daemon from actors, and entityctl's commands, live in
`entityd.app`; the library never imports `actors` or `entityd.app`.
"""

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from protocol import Envelope, kind

    from .actor import Actor, Context, Later
    from .bus import unsubscribe
    from .config import (
        PEER_PERMISSIONS,
        AutonomySection,
        Config,
        LlmSection,
        PeersSection,
        SandboxSection,
        WebSection,
    )
    from .errors import (
        ActorDeadError,
        AskTimeout,
        ConfigError,
        DamagedFile,
        EntitydError,
        PeerUnavailable,
        RemoteError,
        Unsendable,
        disk_full,
    )
    from .eventlog import EventReader, StoredEvent
    from .federated import FederationAccess
    from .logs import configure as configure_logging
    from .logs import get as get_logger
    from .mcp_servers import McpServer
    from .supervisor import Supervision

# Where each name lives, loaded on first use: `import entityd` (which the commands'
# entry points do first) stays cheap, so Ctrl-C while entityd or entityctl start is one
# line, not a traceback.
_HOMES = {
    "Envelope": ("protocol", "Envelope"),
    "kind": ("protocol", "kind"),
    "Actor": (".actor", "Actor"),
    "Context": (".actor", "Context"),
    "Later": (".actor", "Later"),
    "unsubscribe": (".bus", "unsubscribe"),
    "PEER_PERMISSIONS": (".config", "PEER_PERMISSIONS"),
    "AutonomySection": (".config", "AutonomySection"),
    "Config": (".config", "Config"),
    "LlmSection": (".config", "LlmSection"),
    "PeersSection": (".config", "PeersSection"),
    "SandboxSection": (".config", "SandboxSection"),
    "WebSection": (".config", "WebSection"),
    "ActorDeadError": (".errors", "ActorDeadError"),
    "AskTimeout": (".errors", "AskTimeout"),
    "ConfigError": (".errors", "ConfigError"),
    "DamagedFile": (".errors", "DamagedFile"),
    "EntitydError": (".errors", "EntitydError"),
    "PeerUnavailable": (".errors", "PeerUnavailable"),
    "RemoteError": (".errors", "RemoteError"),
    "Unsendable": (".errors", "Unsendable"),
    "disk_full": (".errors", "disk_full"),
    "EventReader": (".eventlog", "EventReader"),
    "StoredEvent": (".eventlog", "StoredEvent"),
    "FederationAccess": (".federated", "FederationAccess"),
    "configure_logging": (".logs", "configure"),
    "get_logger": (".logs", "get"),
    "McpServer": (".mcp_servers", "McpServer"),
    "Supervision": (".supervisor", "Supervision"),
}


def __getattr__(name: str) -> Any:
    try:
        module, attribute = _HOMES[name]
    except KeyError:
        raise AttributeError(f"module 'entityd' has no attribute {name!r}") from None
    value = getattr(importlib.import_module(module, __name__), attribute)
    globals()[name] = value
    return value


__all__ = [
    "PEER_PERMISSIONS",
    "Actor",
    "ActorDeadError",
    "AskTimeout",
    "AutonomySection",
    "Config",
    "ConfigError",
    "Context",
    "DamagedFile",
    "EntitydError",
    "Envelope",
    "EventReader",
    "FederationAccess",
    "Later",
    "LlmSection",
    "McpServer",
    "PeerUnavailable",
    "PeersSection",
    "RemoteError",
    "SandboxSection",
    "StoredEvent",
    "Supervision",
    "Unsendable",
    "WebSection",
    "configure_logging",
    "disk_full",
    "get_logger",
    "kind",
    "unsubscribe",
]
