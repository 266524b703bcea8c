"""The federation: the peer actor, its directory and wire, the peer tools, delegation."""

from .actor import PeerActor
from .calls import Supervision
from .tools import PeerTools

__all__ = ["PeerActor", "PeerTools", "Supervision"]
