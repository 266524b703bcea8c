"""The page's front door attacked by path, method, Host, Origin and token tricks: the
real routes (actors/web/app.py's `build`) behind the real guard, served by real uvicorn on
loopback, reached with a plain HTTP client that sends every byte as the test wrote it.

Behind the page, the entity's actors are a recorder: every message an API handler would
send to an actor is noted (and answered with {}), and so is every call of the A2A routes,
so "reached" means a handler ran, whatever the status said.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from actors.a2a.card import CARD_PATH, RPC_PATH
from actors.web.api import Api
from actors.web.app import Pages, build
from actors.web.auth import LOGIN_TTL_S, LoginLinks, Sessions
from actors.web.guard import Guard, is_loopback
from actors.web.server import WebServer, bind
from tests.web_helpers import Reply, request

pytestmark = pytest.mark.timeout(60)

ENTITY = "entity-a"


class Recorder:
    """The `ctx` the API asks through: records each ask and answers {}."""

    entity = ENTITY

    def __init__(self) -> None:
        self.asked: list[str] = []

    async def ask(self, dst: str, message: object, timeout: float | None = None) -> Any:
        self.asked.append(f"{dst} {type(message).__name__}")
        return {}


@dataclass
class Page:
    url: str
    port: int
    sessions: Sessions
    links: LoginLinks
    actors: Recorder
    a2a: list[str] = field(default_factory=list)  # "METHOD path" of each A2A call served

    def reached(self) -> list[str]:
        return self.actors.asked + self.a2a

    def signed_in(self, cookie: str | None = None) -> dict[str, str]:
        value = cookie or self.sessions.issue()
        return {"Cookie": f"{self.sessions.cookie}={value}",
                "X-CSRF-Token": self.sessions.csrf(value),
                "Content-Type": "application/json", "Origin": self.url.rstrip("/")}

    async def send(self, method: str, path: str, headers: dict[str, str] | None = None,
                   body: bytes | None = None) -> Reply:
        if body is None and method not in ("GET", "HEAD", "OPTIONS", "TRACE"):
            body = b"{}"
        return await request(self.url, method, path, headers=headers, body=body)


@asynccontextmanager
async def serve_page(host: str = "127.0.0.1", services_host: str = "") -> AsyncIterator[Page]:
    """The page's real routes and guard under real uvicorn on `host` (reached through
    127.0.0.1), its actors a Recorder, its A2A routes stubs that note each call."""
    sessions = Sessions(b"attack-secret-" * 4, 1.0, ENTITY)
    links = LoginLinks()
    actors = Recorder()
    a2a: list[str] = []

    async def a2a_route(request: Request) -> Response:
        a2a.append(f"{request.method} {request.url.path}")
        return JSONResponse({"a2a": True})

    async def events(request: Request) -> Response:
        actors.asked.append("events stream")
        return Response("")

    routes = [Route(CARD_PATH, a2a_route, methods=["GET"]),
              Route(RPC_PATH, a2a_route, methods=["POST"])]
    sock = bind(host, 0)
    port = sock.getsockname()[1]
    app = build(Api(actors, 5.0), Pages(sessions, links, secure=False),  # type: ignore[arg-type]
                events, loopback_only=is_loopback(host), port=port, a2a=routes,
                services_host=services_host)
    server = WebServer(app, sock)
    task = asyncio.create_task(server.serve())
    try:
        yield Page(f"http://127.0.0.1:{port}/", port, sessions, links, actors, a2a)
    finally:
        server.stop()
        await asyncio.wait({task}, timeout=10)
        task.cancel()


@pytest.fixture
async def page() -> AsyncIterator[Page]:
    async with serve_page() as served:
        yield served


def error_of(reply: Reply) -> str:
    try:
        return str(reply.json().get("error"))
    except ValueError:
        return f"(not JSON: {reply.status} {reply.text[:80]!r})"


# ---- paths: nothing but the exempt ones passes without a session -----------------------

# Each names an API route (or the A2A one) in a way some parser might read as another.
TRICKS = [
    "/api/status/", "//api/status", "/API/status", "/%61pi/status", "/api/%73tatus",
    "/api//status", "/./api/status", "/api/./status", "/api/status;a2a", "/api/status%00",
    "/a2a/", "//a2a", "/A2A", "/a2a.", "/a2a;x", "/a2a%20", "/a2a/../api/status",
    "/a2a%2F..%2Fapi%2Fstatus", "/a2a/%2e%2e/api/status", "/a2a;/../api/status",
    "/a2a/api/status", "/.well-known/agent-card.json/..",
    "/.well-known/agent-card.json/../../api/status", "/.well-known/agent-card.json/",
    "/.well-known/./agent-card.json", "/.WELL-KNOWN/agent-card.json",
    "/login/../api/status", "/login%2F..%2Fapi%2Fstatus", "/login/api/status",
    "/loginapi/status", "/logout/../api/status", "/static/../api/status",
    "/static/%2e%2e/api/status", "/static/..%2Fapi%2Fstatus", "/static/../../../etc/passwd",
    "/favicon.ico/../api/status", "/favicon.icoapi/status",
    "/api/status?x=/a2a", "/api/status#/a2a", "/api/events/", "/api/events;x",
    "*", "http://127.0.0.1:{port}/api/status", "http://evil.example/a2a/../api/status",
]


@pytest.mark.parametrize("method", ["GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE"])
async def test_no_path_trick_reaches_a_handler_without_a_session(page: Page,
                                                                 method: str) -> None:
    passed = []
    for trick in TRICKS:
        path = trick.format(port=page.port)
        reply = await page.send(method, path)
        if reply.status < 400 or page.actors.asked:
            passed.append((path, reply.status, page.actors.asked[:]))
        page.actors.asked.clear()
    assert passed == []
    assert page.a2a == []


async def test_a_percent_encoded_a2a_path_is_the_a2a_path_for_guard_and_router_alike(
        page: Page) -> None:
    """uvicorn decodes the path once, and the guard and the router both read that: no
    spelling reaches a route the guard did not check as that route."""
    assert (await page.send("POST", "/%612a")).status == 200
    assert (await page.send("GET", "/.well-known/agent%2Dcard.json")).status == 200
    assert page.a2a == [f"POST {RPC_PATH}", f"GET {CARD_PATH}"]
    assert page.actors.asked == []


async def test_every_api_route_needs_a_session_whatever_the_method(page: Page) -> None:
    paths = ["/", "/api/status", "/api/goal", "/api/memory", "/api/todo", "/api/todo/1",
             "/api/usage", "/api/peers", "/api/peers/entity-b/check", "/api/talk",
             "/api/tasks", "/api/ledger", "/api/commits", "/api/commits/abcd", "/api/services",
             "/api/events"]
    for path in paths:
        for method in ("GET", "POST", "HEAD", "OPTIONS", "PUT", "DELETE", "PATCH", "TRACE"):
            reply = await page.send(method, path)
            if path == "/":  # to the login, whatever the method
                assert (reply.status, reply.headers["location"]) == (303, "/login")
            elif method == "HEAD":  # no body to say why
                assert reply.status == 401, path
            else:
                assert (reply.status, error_of(reply)) == (401, "no_session"), (method, path)
    assert page.reached() == []


async def test_the_exempt_a2a_paths_serve_a2a_only_and_still_bound_the_body(page: Page) -> None:
    assert (await page.send("POST", RPC_PATH)).status == 200
    assert (await page.send("GET", CARD_PATH)).status == 200
    assert page.a2a == [f"POST {RPC_PATH}", f"GET {CARD_PATH}"]
    for method, path in [("GET", RPC_PATH), ("POST", CARD_PATH), ("PUT", RPC_PATH),
                         ("DELETE", CARD_PATH)]:
        reply = await page.send(method, path)
        assert (reply.status, error_of(reply)) == (405, "method_not_allowed"), (method, path)
    chunked = await request(page.url, "POST", RPC_PATH, headers={
        "Transfer-Encoding": "chunked"}, body=None)
    assert (chunked.status, error_of(chunked)) == (411, "length_required")
    huge = await request(page.url, "POST", RPC_PATH, headers={"Content-Length": str(2**30)})
    assert (huge.status, error_of(huge)) == (413, "too_large")
    # A session cookie changes nothing there, and the page's API is not behind it.
    assert page.actors.asked == []


async def test_the_guard_exempts_exact_paths_not_prefixes() -> None:
    """Behind the guard, an app that answers every path: what passes without a session
    is what the guard exempts, whatever routes the page has today."""
    sessions = Sessions(b"attack-secret-" * 4, 1.0, ENTITY)
    served: list[str] = []

    async def anything(scope: Any, receive: Any, send: Any) -> None:
        served.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"served"})

    sock = bind("127.0.0.1", 0)
    port = sock.getsockname()[1]
    server = WebServer(Guard(anything, sessions, loopback_only=True, port=lambda: port), sock)
    task = asyncio.create_task(server.serve())
    url = f"http://127.0.0.1:{port}/"
    try:
        open_paths = ["/login", "/static/app.js", "/static/a/b.css", "/favicon.ico",
                      RPC_PATH, CARD_PATH]
        for path in open_paths:
            assert (await request(url, "GET", path)).status == 200, path
        closed = ["/loginx", "/login/", "/login/../api/status", "/login.json", "/logins",
                  "/favicon.ico/x", "/favicon.icox", "/static", "/staticx", "/a2a/",
                  "/a2ax", "/a2a/x", CARD_PATH + "x", CARD_PATH + "/", "/logout/x",
                  "/logoutx"]
        for path in closed:
            reply = await request(url, "GET", path)
            assert (reply.status, error_of(reply)) == (401, "no_session"), path
        assert served == open_paths
    finally:
        server.stop()
        await asyncio.wait({task}, timeout=10)
        task.cancel()


# ---- Host: DNS rebinding onto a loopback page -------------------------------------------

async def test_a_host_naming_anything_but_this_loopback_page_is_refused(page: Page) -> None:
    p = page.port
    hosts = ["evil.example", f"evil.example:{p}", f"LOCALHOST:{p}", f"localhost.:{p}",
             f"127.0.0.1.:{p}", f"[::ffff:127.0.0.1]:{p}", f"127.1:{p}", f"2130706433:{p}",
             f"0x7f000001:{p}", f"127.0.0.1:0{p}", f"127.0.0.1:+{p}",
             f"user@127.0.0.1:{p}", f"127.0.0.1:{p}@evil.example", f"127.0.0.1:{p}/x",
             f"[::1]:{p}:{p}", f"[::1]x:{p}", "", f"127.0.0.1:{p + 1}",
             f"localhost.evil.example:{p}", f"127.0.0.1.nip.io:{p}"]
    session = page.signed_in()
    for host in hosts:
        for method, path in [("GET", "/api/status"), ("POST", "/api/todo"), ("GET", "/login"),
                             ("POST", RPC_PATH), ("GET", CARD_PATH)]:
            reply = await page.send(method, path, headers={**session, "Host": host})
            assert (reply.status, error_of(reply)) == (421, "wrong_host"), (host, path)
    assert page.reached() == []


async def test_a_page_on_every_address_serves_nothing_on_or_for_the_services_address() -> None:
    """web.host = "0.0.0.0" (allow_remote) listens on the services' 127.0.0.2 too: a login
    there would give the browser a cookie for 127.0.0.2, sent to every port of it, the
    services' previews (code the entity wrote) among them. Nothing is served there."""
    async with serve_page("0.0.0.0", services_host="127.0.0.2") as page:
        p = page.port
        session = page.signed_in()
        services_url = f"http://127.0.0.2:{p}/"
        for method, path in [("GET", "/login"), ("GET", f"/login?token={page.links.mint()}"),
                             ("GET", "/api/status"), ("POST", "/api/todo"), ("GET", "/"),
                             ("GET", "/static/app.js"), ("POST", RPC_PATH), ("GET", CARD_PATH)]:
            body = b"{}" if method == "POST" else None
            # Reached on the services' address, whatever Host it names.
            for host in (f"127.0.0.2:{p}", f"127.0.0.1:{p}", "evil.example"):
                reply = await request(services_url, method, path, body=body,
                                      headers={**session, "Host": host})
                assert (reply.status, error_of(reply)) == (421, "wrong_host"), (host, path)
                assert "set-cookie" not in reply.headers
            # Reached elsewhere, naming the services' address however spelled.
            for host in (f"127.0.0.2:{p}", "127.0.0.2", f"[::ffff:127.0.0.2]:{p}",
                         f"[::ffff:7f00:2]:{p}"):
                reply = await page.send(method, path, headers={**session, "Host": host})
                assert (reply.status, error_of(reply)) == (421, "wrong_host"), (host, path)
                assert "set-cookie" not in reply.headers
        assert page.reached() == []
        # The page itself still answers on its other addresses.
        assert (await page.send("GET", "/login")).status == 200
        assert (await page.send("GET", "/api/status", headers=session)).status == 200


def _without_host(port: int, path: str, cookie: str) -> int:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        conn.putheader("Cookie", cookie)
        conn.endheaders()
        return conn.getresponse().status
    finally:
        conn.close()


async def test_a_request_without_a_host_header_is_refused(page: Page) -> None:
    status = await asyncio.to_thread(_without_host, page.port, "/api/status",
                                     page.signed_in()["Cookie"])
    assert status in (400, 421)
    assert page.reached() == []


# ---- state-changing requests: Origin, Sec-Fetch-Site, the token ----------------------------

async def test_a_post_from_anywhere_but_this_origin_or_without_this_sessions_token_is_refused(
        page: Page) -> None:
    own = page.url.rstrip("/")
    value = page.sessions.issue()
    other_value = page.sessions.issue()
    other_entity = Sessions(b"another-entity-secret" * 3, 1.0, ENTITY)
    foreign = other_entity.issue()
    good = page.signed_in(value)
    cases: list[tuple[str, dict[str, str], str]] = [
        ("Origin null", {**good, "Origin": "null"}, "cross_site"),
        ("Origin null, cross-site fetch", {**good, "Origin": "null",
                                           "Sec-Fetch-Site": "cross-site"}, "cross_site"),
        ("a service preview's origin", {**good, "Origin": "http://127.0.0.2:8080"},
         "cross_site"),
        ("another port", {**good, "Origin": f"http://127.0.0.1:{page.port + 1}"},
         "cross_site"),
        ("a suffix", {**good, "Origin": f"{own}.evil.example"}, "cross_site"),
        ("a trailing slash", {**good, "Origin": f"{own}/"}, "cross_site"),
        ("localhost for 127.0.0.1", {**good, "Origin": f"http://localhost:{page.port}"},
         "cross_site"),
        ("same-site is not same-origin", {**good, "Sec-Fetch-Site": "same-site"},
         "cross_site"),
        ("cross-site fetch", {**good, "Sec-Fetch-Site": "cross-site"}, "cross_site"),
        ("no token", {k: v for k, v in good.items() if k != "X-CSRF-Token"}, "csrf"),
        ("an empty token", {**good, "X-CSRF-Token": ""}, "csrf"),
        ("another session's token", {**good,
                                     "X-CSRF-Token": page.sessions.csrf(other_value)},
         "csrf"),
        ("the cookie as the token", {**good, "X-CSRF-Token": value}, "csrf"),
        ("a non-ASCII token", {**good, "X-CSRF-Token": "\u00e9" * 64}, "csrf"),
        ("another entity's session", {**good, **{
            "Cookie": f"{page.sessions.cookie}={foreign}",
            "X-CSRF-Token": other_entity.csrf(foreign)}}, "no_session"),
        ("an expired session", {**good, **{
            "Cookie": f"{page.sessions.cookie}={(old := page.sessions.issue(1.0))}",
            "X-CSRF-Token": page.sessions.csrf(old)}}, "no_session"),
    ]
    for what, headers, code in cases:
        for path in ("/api/todo", "/api/goal", "/logout"):
            if path == "/logout" and code == "csrf":
                continue  # logging out needs this origin only (actors/web/guard.py)
            reply = await page.send("POST", path, headers=headers,
                                    body=b'{"text": "forged"}')
            if path == "/logout" and code == "no_session":
                continue  # logging out needs no session
            assert (reply.status, error_of(reply)) == (403 if code != "no_session" else 401,
                                                       code), (what, path)
    assert page.reached() == []
    # The page's own request passes, with or without Sec-Fetch-Site: same-origin, and with
    # no Origin at all (no browser's cross-site request lacks it; the token still counts).
    for extra in ({}, {"Sec-Fetch-Site": "same-origin"}, {"Origin": ""}):
        headers = {k: v for k, v in {**good, **extra}.items() if v}
        reply = await page.send("POST", "/api/todo", headers=headers, body=b'{"text": "t"}')
        assert reply.status == 200, (extra, reply.text)
    assert page.actors.asked == [f"{ENTITY}/memory TodoAdd"] * 3


# ---- the login link and the cookie ------------------------------------------------------

async def test_a_login_link_works_once_not_after_expiry_and_sets_a_strict_cookie(
        page: Page) -> None:
    token = page.links.mint()
    first = await page.send("GET", f"/login?token={token}")
    assert first.status == 303
    cookie = first.headers["set-cookie"]
    flags = {part.strip().lower() for part in cookie.split(";")[1:]}
    assert {"httponly", "samesite=strict", "path=/"} <= flags
    assert not any(f.startswith("domain") for f in flags)  # host-only: this host alone
    value = cookie.split(";", 1)[0].split("=", 1)[1]
    assert page.sessions.valid(value)
    again = await page.send("GET", f"/login?token={token}")
    assert again.status == 403 and "set-cookie" not in again.headers
    expired = page.links.mint(now=time.time() - LOGIN_TTL_S - 1)
    late = await page.send("GET", f"/login?token={expired}")
    assert late.status == 403 and "set-cookie" not in late.headers
    # A token of the right shape but never minted, and the form's POST with a token.
    for bad in (token[:-1] + ("A" if token[-1] != "A" else "B"), "", "%00", token + token):
        reply = await page.send("GET", f"/login?token={bad}")
        assert "set-cookie" not in reply.headers, bad
    posted = await page.send("POST", "/login", body=f"token={page.links.mint()}".encode(),
                             headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert posted.status == 403 and "set-cookie" not in posted.headers


async def test_a_login_from_another_site_is_refused_even_with_a_good_link(page: Page) -> None:
    """Login CSRF: another site logging the browser in to a session of its choosing needs
    a POST of the secret (refused cross-site) or a link (minted only by entityctl)."""
    headers = {"Content-Type": "application/x-www-form-urlencoded",
               "Origin": "http://evil.example"}
    reply = await page.send("POST", "/login", headers=headers, body=b"secret=x")
    assert (reply.status, error_of(reply)) == (403, "cross_site")


async def test_every_refusal_carries_the_security_headers(page: Page) -> None:
    for method, path, headers in [("GET", "/api/status", {}),
                                  ("GET", "/api/status", {"Host": "evil.example"}),
                                  ("POST", "/api/todo", page.signed_in() | {"Origin": "null"}),
                                  ("GET", "/a2a/../api/status", {})]:
        reply = await page.send(method, path, headers=headers)
        assert reply.status >= 400
        assert "frame-ancestors 'none'" in reply.headers["content-security-policy"], path
        assert reply.headers["x-content-type-options"] == "nosniff"
        assert json.loads(reply.body)["error"]
