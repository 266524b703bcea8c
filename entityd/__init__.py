"""entityd's runtime library: what an actor is, the context it talks through, its
config and its errors. Actors import these names from here and nothing else of
`entityd` (tests/test_layers.py holds it).

The application that runs a daemon from actors, and entityctl's commands, live in
`entityd.app`; the library never imports `actors` or `entityd.app`.
"""

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
    EntitydError,
    PeerUnavailable,
    RemoteError,
)
from .eventlog import EventReader, StoredEvent
from .federated import FederationAccess
from .logs import configure as configure_logging
from .logs import get as get_logger
from .supervisor import Supervision

__all__ = [
    "PEER_PERMISSIONS",
    "Actor",
    "ActorDeadError",
    "AskTimeout",
    "AutonomySection",
    "Config",
    "ConfigError",
    "Context",
    "EntitydError",
    "Envelope",
    "EventReader",
    "FederationAccess",
    "Later",
    "LlmSection",
    "PeerUnavailable",
    "PeersSection",
    "RemoteError",
    "SandboxSection",
    "StoredEvent",
    "Supervision",
    "WebSection",
    "configure_logging",
    "get_logger",
    "kind",
    "unsubscribe",
]
