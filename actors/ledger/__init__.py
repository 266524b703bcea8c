"""The ledger actor (actor.py): this entity's account on the LEDGER stream; its messages
(messages.py), the stream (stream.py) and its view of the chains (chains.py).

Importing the package loads nothing: entityctl imports the messages alone."""
