"""The entity as an A2A agent (server, on the web actor's port) and as an A2A client."""

from .messages import CardSign, CardSigned

__all__ = ["CardSign", "CardSigned"]
