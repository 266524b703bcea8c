"""What the web actor asks of the peer actor about the A2A agent card, and its answer."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import kind


@kind("card_sign")
@dataclass(frozen=True, slots=True)
class CardSign:
    """The entity's agent card, signed with its key, for the A2A endpoint at `url`.

    The peer actor builds the card itself from the config (actors/a2a/card.py): the
    asker chooses only the URL, so this kind signs nothing else (no signing oracle)."""

    url: str


@kind("card_signed")
@dataclass(frozen=True, slots=True)
class CardSigned:
    card: str  # the card as JSON, its signature in it; "" when it could not be made
    problem: str = ""
