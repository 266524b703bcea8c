"""The peers' keys as the peer actor pinned them, for a reader of stored events (the web
page, `entityctl watch --all`) to verify the peers' events with."""

from __future__ import annotations

from protocol import Keyring

from .messages import Peers


def pin(keyring: Keyring, peers: Peers) -> None:
    """Add each peer's pinned key to `keyring` (a key already there is left as it is)."""
    for peer in peers.peers:
        try:
            keyring.add(bytes.fromhex(peer.public_key), peer.name)
        except ValueError:  # already there for that peer, or a key that does not parse
            continue
