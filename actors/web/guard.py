"""The page's front door, in front of every route (pure ASGI, so event streams pass
through untouched): where a request may come from, who sent it, and the headers every
answer carries.

In order: nothing is served on, or for a Host naming, the address of the services'
previews (a page reachable there, as it is when bound to every address, would give the
browser a cookie for that host, which it then sends to every port of it: to code the
entity wrote); a page bound to loopback answers only loopback clients, and only for a
Host naming loopback (a DNS-rebinding site cannot borrow the browser); a request body must say
its length, at most MAX_BODY_BYTES, so nobody buffers an unbounded one (not even before
logging in); then every request but the login and the static files needs a valid session
cookie; then every state-changing request needs the session's CSRF token in X-CSRF-Token
and, when the browser says where it came from (Origin, Sec-Fetch-Site), this very origin.
Logging out needs only this origin: it changes nothing but the browser's own cookie
(sessions are stateless), and the page's plain form cannot send the token.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Awaitable, Callable, MutableMapping
from http.cookies import SimpleCookie
from typing import Any

from .auth import CSRF_HEADER, Sessions

Scope = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[MutableMapping[str, Any]]]
Send = Callable[[MutableMapping[str, Any]], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

CSP = ("default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
       "connect-src 'self'; form-action 'self'; frame-ancestors 'none'; base-uri 'none'")
SECURITY_HEADERS = [
    (b"content-security-policy", CSP.encode()),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"x-frame-options", b"DENY"),
    (b"cross-origin-opener-policy", b"same-origin"),
    (b"cross-origin-resource-policy", b"same-origin"),
    (b"cache-control", b"no-store"),
]
# Open to anyone (no session): these exact paths, and what lies under STATIC. Exact, not
# prefixes: "/login" must not open "/loginx" or "/login/../api/status" to a router (today's
# or a later one) that would serve them.
OPEN_PATHS = ("/login", "/favicon.ico")
STATIC = "/static/"
# A2A's card and endpoint (actors/a2a/server.py): no session, no CSRF token: its clients are
# programs that present an API key, which the endpoint checks itself. A browser cannot
# send that key cross-site (Authorization needs a CORS preflight no route answers).
A2A_PATHS = ("/a2a", "/.well-known/agent-card.json")
LOGOUT = "/logout"
SAFE_METHODS = ("GET", "HEAD")
MAX_BODY_BYTES = 2**20  # the API takes at most 64 KiB, the login form 4 KiB


def is_loopback(host: str) -> bool:
    host = host.strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def session_cookie(scope: Scope, name: str) -> str | None:
    for key, value in scope.get("headers", []):
        if key == b"cookie":
            jar: SimpleCookie = SimpleCookie()
            try:
                jar.load(value.decode("latin-1"))
            except Exception:  # a malformed Cookie header is no session
                return None
            morsel = jar.get(name)
            return morsel.value if morsel else None
    return None


def header(scope: Scope, name: bytes) -> str | None:
    for key, value in scope.get("headers", []):
        if key == name:
            return str(value.decode("latin-1"))
    return None


def ip_of(host: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    """The address `host` spells (an IPv4-mapped IPv6 address as its IPv4 one), or None
    for a name."""
    try:
        address = ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        return None
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


def host_name(host: str) -> str:
    """The name or address of a Host header, without its port."""
    if host.startswith("["):
        return host[: host.find("]") + 1] if "]" in host else host
    return host.rpartition(":")[0] if ":" in host else host


class Guard:
    def __init__(self, app: ASGIApp, sessions: Sessions, *, loopback_only: bool,
                 port: Callable[[], int], services_host: str = "") -> None:
        self.app = app
        self.sessions = sessions
        self.loopback_only = loopback_only
        self.port = port
        self.services_address = ip_of(services_host) if services_host else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            if scope["type"] == "lifespan":
                await self.app(scope, receive, send)
            return

        async def with_headers(message: MutableMapping[str, Any]) -> None:
            if message["type"] == "http.response.start":
                message["headers"] = [*message.get("headers", []), *SECURITY_HEADERS]
            await send(message)

        refusal = self.refusal(scope)
        if refusal is not None:
            status, code, text = refusal
            if code == "no_session" and scope.get("path") == "/":
                await with_headers({"type": "http.response.start", "status": 303,
                                    "headers": [(b"location", b"/login")]})
                await with_headers({"type": "http.response.body", "body": b""})
                return
            await _json(with_headers, status, {"error": code, "message": text})
            return
        await self.app(scope, receive, with_headers)

    def refusal(self, scope: Scope) -> tuple[int, str, str] | None:
        """(status, reason code, why) for a request that may not pass; None if it may."""
        host = header(scope, b"host") or ""
        if self._services_own(scope, host):
            return 421, "wrong_host", ("this address is the services' previews' (code the "
                                       "entity wrote), not the page's")
        client = scope.get("client") or ("", 0)
        if self.loopback_only and not is_loopback(client[0]):
            return 403, "not_loopback", "this page answers only on this machine"
        if self.loopback_only and not self._own_host(host):
            return 421, "wrong_host", f"this page is not served for Host {host[:80]!r}"
        if header(scope, b"transfer-encoding") is not None:
            return 411, "length_required", "send a request body with its Content-Length"
        length = header(scope, b"content-length") or "0"
        if not (length.isascii() and length.isdigit()) or int(length) > MAX_BODY_BYTES:
            return 413, "too_large", f"a request body is at most {MAX_BODY_BYTES} bytes"
        path: str = scope.get("path", "")
        method: str = scope.get("method", "GET")
        if path in A2A_PATHS:
            return None
        if path in OPEN_PATHS or path.startswith(STATIC) or path == LOGOUT:
            if method not in SAFE_METHODS and not self._same_origin(scope, host):
                return 403, "cross_site", "a request from another site is refused"
            return None
        cookie = session_cookie(scope, self.sessions.cookie)
        if not self.sessions.valid(cookie):
            return 401, "no_session", "log in with the link `entityctl web` prints"
        assert cookie is not None
        if method not in SAFE_METHODS:
            if not self.sessions.csrf_ok(cookie, header(scope, CSRF_HEADER.encode())):
                return 403, "csrf", "the request lacks this page's CSRF token"
            if not self._same_origin(scope, host):
                return 403, "cross_site", "a request from another site is refused"
        return None

    def _services_own(self, scope: Scope, host: str) -> bool:
        """Whether the request came in on, or names, the services' address."""
        if self.services_address is None:
            return False
        server = scope.get("server") or ("", 0)
        named = (ip_of(str(server[0])), ip_of(host_name(host)), ip_of(host))
        return self.services_address in named

    def _own_host(self, host: str) -> bool:
        name, _, port = host.rpartition(":") if not host.endswith("]") else (host, "", "")
        if not name:
            name, port = host, ""
        return is_loopback(name) and port in ("", str(self.port()))

    @staticmethod
    def _same_origin(scope: Scope, host: str) -> bool:
        fetch_site = header(scope, b"sec-fetch-site")
        if fetch_site is not None and fetch_site not in ("same-origin", "none"):
            return False
        origin = header(scope, b"origin")
        if origin is None:
            return True  # not a browser's cross-site request: browsers send Origin on POST
        if origin == "null":
            # The page's own forms (login, logout) post with Origin "null" under
            # Referrer-Policy: no-referrer; only the browser's Sec-Fetch-Site, which no
            # page can set, may vouch for them.
            return fetch_site == "same-origin"
        return origin in (f"http://{host}", f"https://{host}")


async def _json(send: Send, status: int, body: dict[str, str]) -> None:
    data = json.dumps(body).encode()
    await send({"type": "http.response.start", "status": status,
                "headers": [(b"content-type", b"application/json"),
                            (b"content-length", str(len(data)).encode())]})
    await send({"type": "http.response.body", "body": data})
