"""The federation: the peer actor (actor.py), its directory and wire, the peer tools,
delegation.

Nothing is imported here, so the message kinds (messages.py) load without the actor.
"""
