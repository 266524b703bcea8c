"""The web actor's message kinds: entityctl asks it for a login link."""

from __future__ import annotations

from dataclasses import dataclass

from protocol import kind


@kind("web_login")
@dataclass(frozen=True, slots=True)
class WebLogin:
    """A one-time login link for the page (`entityctl web`)."""


@kind("web_link")
@dataclass(frozen=True, slots=True)
class WebLink:
    url: str  # the page
    login: str  # the page's one-time login link; empty when the page is off
    expires_in: float  # seconds the login link is good for
    problem: str = ""  # why there is no page (e.g. its port is taken), when url is empty
