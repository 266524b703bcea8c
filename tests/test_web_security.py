"""The entity's web page under attack (issue 12, Security): each attack as an attacker
would try it, against two real daemons (entity-a, entity-b) serving their pages on
loopback, a scripted model whose every answer is hostile HTML, and Debian's chromium.

Sessions, CSRF and same-origin checks, login links and the login secret, DNS rebinding
and remote clients (the front door at the ASGI level: a socket on 127.0.0.1 cannot receive
from outside), the headers every answer carries, untrusted text in a real browser, no
secret in any byte served, and hostile input that must get a JSON 4xx, never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import json
import re
import secrets
import threading
import time
from collections.abc import Callable, Iterator, MutableMapping
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast
from urllib.parse import quote, urlsplit

import pytest
from playwright.async_api import ConsoleMessage, Dialog, Page, expect
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from actors.llm.scripted import Reply, ScriptedLLMServer, ScriptedToolCall
from actors.messages import MemoryAdd
from actors.web import auth
from actors.web.api import Api
from actors.web.app import Pages, build
from actors.web.auth import LOGIN_TTL_S, MAX_PENDING_LINKS, LoginLinks, Sessions, load_secret
from actors.web.guard import Guard
from bench.harness import DaemonProc, child_env
from bench.ports import free_port
from bench.rig import READY, Member, edit, enable_web, make_entity
from entityd import config as config_mod
from entityd import identity, localauth
from entityd.client import EntityClient
from entityd.errors import ConfigError
from tests.helpers import NATS_SERVER, ServerProcess
from tests.web_helpers import Reply as HttpReply
from tests.web_helpers import Session, browser, log_in, login_link, request

pytestmark = pytest.mark.timeout(120)

# What a daemon's environment holds and no byte it serves may.
FAKE_KEYS = {"MOONSHOT_API_KEY": "sk-moonshot-FAKE-" + secrets.token_hex(12),
             "OPENAI_API_KEY": "sk-openai-FAKE-" + secrets.token_hex(12)}
SCRIPT = "<script>window.__pwned=1</script>"
IMG = '<img src=x onerror="window.__pwned=1">'
PAYLOAD = f"{SCRIPT} {IMG}"
XSS_FILE = "<img src=x onerror=alert(1)>.txt"
FILE_GOAL = "PUTFILE"  # a goal holding this makes the coder write XSS_FILE
EVIL = "http://evil.example"
BIG_CLAIM = str(100 * 2**20)  # a Content-Length claimed and never sent
SAMPLE_PARAMS = {"name": "entity-b", "sha": "abcd1234"}


# ---- the model: every answer is hostile HTML ------------------------------------------

def _text(message: dict[str, Any]) -> str:
    content = message.get("content")
    return content if isinstance(content, str) else json.dumps(content)


def model(request: dict[str, Any]) -> Reply:
    messages: list[dict[str, Any]] = request.get("messages") or []
    tools = {t["function"]["name"] for t in request.get("tools") or []}
    if not tools:
        return Reply(content="[]")  # lessons and reflections: nothing learnt
    if "write_file" in tools and "delegate_to_coder" not in tools:  # the coder
        if any(m.get("role") == "tool" for m in messages):
            return Reply(content=f"wrote {XSS_FILE}")
        return Reply(tool_calls=[ScriptedToolCall("write_file", {"path": XSS_FILE,
                                                                 "content": PAYLOAD + "\n"})])
    if messages and messages[-1].get("role") == "tool":
        return Reply(content=PAYLOAD)
    user = next((_text(m) for m in reversed(messages) if m.get("role") == "user"), "")
    if FILE_GOAL in user:
        return Reply(tool_calls=[ScriptedToolCall("delegate_to_coder",
                                                  {"goal": f"{FILE_GOAL}: write the file"})])
    return Reply(content=PAYLOAD)


@contextmanager
def scripted_model() -> Iterator[str]:
    """The scripted model on a loop of its own (the daemons outlive each test's loop)."""
    loop = asyncio.new_event_loop()
    thread = threading.Thread(target=loop.run_forever, name="scripted-model", daemon=True)
    thread.start()
    server = ScriptedLLMServer(model)
    try:
        asyncio.run_coroutine_threadsafe(server.start(), loop).result(10)
        yield server.base_url
    finally:
        with suppress(Exception):
            asyncio.run_coroutine_threadsafe(server.stop(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


# ---- two entities, each with its page --------------------------------------------------

@dataclass
class Site:
    """An entity's page: its daemon, URL and the Sessions of its real web.secret."""

    member: Member
    url: str
    sessions: Sessions

    @property
    def name(self) -> str:
        return self.member.name

    @property
    def data(self) -> Path:
        return self.member.data

    @property
    def port(self) -> int:
        return urlsplit(self.url).port or 0

    @property
    def origin(self) -> str:
        return self.url.rstrip("/")

    @property
    def host(self) -> str:
        return urlsplit(self.url).netloc

    def session(self, now: float | None = None) -> Session:
        """A session as a login gives one, minted with the real secret."""
        value = self.sessions.issue(now)
        return Session(self.url, f"{self.sessions.cookie}={value}", self.sessions.csrf(value))

    def posting(self, session: Session, **extra: str) -> dict[str, str]:
        """The headers of the page's own POST (cookie, CSRF token, Origin), then `extra`."""
        return {"Cookie": session.cookie, "X-CSRF-Token": session.csrf,
                "Content-Type": "application/json", "Origin": self.origin, **extra}

    def secrets(self) -> dict[str, str]:
        """Every secret of this entity's that a byte served might leak, by what it is."""
        seed = identity.key_path(self.data).read_text().strip()
        raw = bytes.fromhex(seed)
        return {
            "private key (hex)": seed, "private key (HEX)": seed.upper(),
            "private key (base64)": base64.b64encode(raw).decode(),
            "private key (urlsafe base64)": base64.urlsafe_b64encode(raw).decode().rstrip("="),
            "web.secret": (self.data / auth.SECRET_FILE).read_text().strip(),
            "NATS token": localauth.read(self.data),
            **{f"${k}": v for k, v in FAKE_KEYS.items()},
        }


@pytest.fixture(scope="module")
def sites(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Site]]:
    root = tmp_path_factory.mktemp("websec")
    with scripted_model() as base_url:
        members = []
        for name in ("entity-a", "entity-b"):
            port = free_port()
            config = make_entity(root, name, port=port)
            enable_web(config)
            edit(config, 'provider = "moonshot"', 'provider = "scripted"')
            edit(config, 'base_url = ""', f'base_url = "{base_url}"')
            members.append(Member(name, config, port, DaemonProc(
                config, root / f"{name}.log", env=child_env(**FAKE_KEYS))))
        try:
            for member in members:
                member.daemon.start()
            found = {}
            for member in members:
                member.daemon.wait_log(READY, 60)
                member.daemon.wait_log('"web_serving"', 20)
                found[member.name] = Site(member, page_url(member.daemon.log()), Sessions(
                    load_secret(member.data), 12.0, member.name))
            yield found
        finally:
            for member in members:
                member.daemon.signal_stop()
            codes = [m.daemon.wait_stopped(20) for m in members if m.daemon.proc]
    assert set(codes) <= {0}, "\n".join(m.daemon.log()[-2000:] for m in members)


def page_url(log: str) -> str:
    """The page's URL, as the web actor logs it once it serves."""
    for line in log.splitlines():
        if '"web_serving"' in line:
            return str(json.loads(line)["url"])
    raise AssertionError(f"no web_serving line in the daemon's log:\n{log[-2000:]}")


# ---- the routes, from the app's own table (a route added later is attacked too) ---------

def api_routes() -> list[tuple[str, str]]:
    """(method, path) of every route under /api/, path parameters filled in."""
    async def nothing(request: Request) -> Response:
        return Response()

    sessions = Sessions(b"unused", 1.0, "entity-a")
    guard = build(Api(cast(Any, None), 1.0), Pages(sessions, LoginLinks(), False), nothing,
                  loopback_only=True, port=1)
    app = cast(Guard, guard).app
    found = []
    for route in cast(Starlette, app).routes:
        if not isinstance(route, Route) or not route.path.startswith("/api/"):
            continue
        path = re.sub(r"\{(\w+)(?::(\w+))?\}",
                      lambda m: "1" if m.group(2) == "int" else SAMPLE_PARAMS.get(m.group(1), "x1"),
                      route.path)
        for method in sorted((route.methods or {"GET"}) - {"HEAD"}):
            found.append((method, path))
    assert ("GET", "/api/events") in found and ("POST", "/api/todo") in found, found
    return found


async def todo_texts(site: Site) -> list[str]:
    """The todo list as entityctl sees it (through the actors, not the page)."""
    items = await site.member.ctl_json("todo", "--all")
    return [item["text"] for item in items["items"]]


def error_of(reply: HttpReply) -> str:
    """The reason code of a JSON refusal; fails on anything else (a traceback, HTML)."""
    assert reply.headers.get("content-type", "").startswith("application/json"), \
        (reply.status, reply.headers, reply.text[:300])
    body = reply.json()
    assert isinstance(body, dict) and isinstance(body.get("error"), str) \
        and isinstance(body.get("message"), str), body
    assert "Traceback" not in reply.text
    return str(body["error"])


# ---- a raw reader of the event stream ---------------------------------------------------

@dataclass
class Stream:
    status: int
    headers: dict[str, str]
    events: list[dict[str, str]]
    body: bytes


def sse_events(data: bytes) -> list[dict[str, str]]:
    """The complete events in `data` (comments and the unfinished tail left out)."""
    events = []
    for block in data.decode("utf-8", "replace").split("\n\n")[:-1]:
        event: dict[str, str] = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                field, _, value = line.partition(": ")
                event[field] = value
        if event:
            events.append(event)
    return events


async def read_stream(site: Site, path: str, headers: dict[str, str],
                      until: Callable[[list[dict[str, str]]], bool],
                      timeout: float = 20.0) -> Stream:
    """GET `path` as EventSource does, reading the chunked stream until `until(events)`
    (a refusal, with its Content-Length, is read whole)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", site.port)
    try:
        head = [f"GET {path} HTTP/1.1", f"Host: {site.host}", "Accept: text/event-stream",
                *(f"{k}: {v}" for k, v in headers.items()), "", ""]
        writer.write("\r\n".join(head).encode("latin-1"))
        async with asyncio.timeout(timeout):
            status_line, *lines = (await reader.readuntil(b"\r\n\r\n")).decode(
                "latin-1").split("\r\n")
            got = {k.strip().lower(): v.strip()
                   for k, _, v in (line.partition(":") for line in lines if line)}
            status = int(status_line.split()[1])
            if got.get("transfer-encoding") != "chunked":
                body = await reader.readexactly(int(got.get("content-length", "0")))
                return Stream(status, got, [], body)
            data = b""
            while True:
                size = int((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    break
                data += await reader.readexactly(size)
                await reader.readexactly(2)
                if until(sse_events(data)):
                    break
            return Stream(status, got, sse_events(data), data)
    finally:
        writer.close()
        with suppress(OSError):
            await writer.wait_closed()


def todo_event(todo_id: int) -> Callable[[list[dict[str, str]]], bool]:
    """Until the stream has the todo_changed event of item `todo_id`."""
    def seen(events: list[dict[str, str]]) -> bool:
        return any(is_todo_event(e, todo_id) for e in events)
    return seen


def is_todo_event(event: dict[str, str], todo_id: int) -> bool:
    if event.get("event") != "evt":
        return False
    data = json.loads(event["data"])
    return bool(data["type"] == "todo_changed" and data["data"].get("id") == todo_id)


async def add_todo(session: Session, text: str) -> int:
    """A todo item added through the page; its id (the events name it by id only)."""
    added = await session.post("/api/todo", {"text": text})
    assert added.status == 200, added.text
    return int(added.json()["items"][0]["id"])


# ---- sessions ---------------------------------------------------------------------------

def bad_cookies(a: Site, b: Site) -> dict[str, str]:
    """Every cookie header that must not open a's page, by what it is."""
    name = a.sessions.cookie
    good = a.sessions.issue()
    expires, nonce, mac = good.split(".")
    b_value = b.sessions.issue()
    expired = a.sessions.issue(time.time() - 2 * a.sessions.lifetime)
    return {
        "none": "",
        "wrong": f"{name}=letmein",
        "forged (right shape, bad MAC)": f"{name}={expires}.{secrets.token_hex(16)}.{'0' * 64}",
        "tampered expiry": f"{name}={int(expires) + 10**6}.{nonce}.{mac}",
        "expired (real secret)": f"{name}={expired}",
        "b's cookie": f"{b.sessions.cookie}={b_value}",
        "b's cookie under a's name": f"{name}={b_value}",
        "a non-ASCII MAC": f'{name}="{expires}.{nonce}.\xe9"',
        "a cookie of another name": f"{name}x={good}",
    }


@pytest.mark.parametrize("attacked", ["entity-a", "entity-b"])
async def test_without_a_valid_session_every_api_route_and_the_stream_answer_401(
        sites: dict[str, Site], attacked: str) -> None:
    a = sites[attacked]
    b = next(s for s in sites.values() if s is not a)
    routes = api_routes()
    for what, cookie in bad_cookies(a, b).items():
        value = cookie.partition("=")[2].strip('"')
        headers = {"Cookie": cookie, "X-CSRF-Token": a.sessions.csrf(value),
                   "Content-Type": "application/json", "Origin": a.origin}
        for method, path in routes:
            body = b'{"text": "x", "status": "done", "peer": "entity-b"}' \
                if method == "POST" else None
            reply = await request(a.url, method, path, headers=headers, body=body)
            assert (reply.status, error_of(reply)) == (401, "no_session"), (what, method, path)
        page = await request(a.url, "GET", "/", headers={"Cookie": cookie})
        assert (page.status, page.headers.get("location")) == (303, "/login"), what
        assert "csrf" not in page.text
    # The control: a's own cookie opens each of those doors.
    own = a.session()
    assert (await own.get("/api/status")).json()["entity"] == a.name
    assert (await own.get("/")).status == 200


async def test_cross_site_posts_are_refused_and_change_nothing(
        sites: dict[str, Site]) -> None:
    a, b = sites["entity-a"], sites["entity-b"]
    session, other = a.session(), a.session()
    tag = secrets.token_hex(4)
    no_token = a.posting(session)
    del no_token["X-CSRF-Token"]
    attacks = {
        "no CSRF token": no_token,
        "a wrong token": a.posting(session, **{"X-CSRF-Token": "0" * 64}),
        "an empty token": a.posting(session, **{"X-CSRF-Token": ""}),
        "a non-ASCII token": a.posting(session, **{"X-CSRF-Token": "\xe9" * 64}),
        "another session's token": a.posting(session, **{"X-CSRF-Token": other.csrf}),
        "b's token for the same cookie": a.posting(session, **{
            "X-CSRF-Token": b.sessions.csrf(session.cookie.partition("=")[2])}),
        "the right token from another site": a.posting(session, Origin=EVIL),
        "the right token from Origin null": a.posting(session, Origin="null"),
        "the right token from Origin null, Sec-Fetch-Site same-site": a.posting(
            session, Origin="null", **{"Sec-Fetch-Site": "same-site"}),
        "the right token from Origin null, Sec-Fetch-Site none": a.posting(
            session, Origin="null", **{"Sec-Fetch-Site": "none"}),
        "the right token from another port of this host": a.posting(
            session, Origin=f"http://127.0.0.1:{b.port}"),
        "the right token, Sec-Fetch-Site cross-site": a.posting(
            session, **{"Sec-Fetch-Site": "cross-site"}),
        "the right token, Sec-Fetch-Site same-site (another port)": a.posting(
            session, **{"Sec-Fetch-Site": "same-site"}),
        "a simple form post (text/plain, no token)": {
            "Cookie": session.cookie, "Content-Type": "text/plain", "Origin": EVIL,
            "Sec-Fetch-Site": "cross-site"},
    }
    posts = [(path, body) for method, path in api_routes() if method == "POST"
             for body in [json.dumps({"text": f"csrf {tag} {path}", "status": "done",
                                      "peer": "entity-b"}).encode()]]
    for what, headers in attacks.items():
        for path, body in posts:
            reply = await request(a.url, "POST", path, headers=headers, body=body)
            assert reply.status == 403 and error_of(reply) in ("csrf", "cross_site"), \
                (what, path, reply.status, reply.text)
    assert not [t for t in await todo_texts(a) if tag in t]
    # The control: the page's own request, token and Origin right, is served.
    served = await request(a.url, "POST", "/api/todo", headers=a.posting(session),
                           body=json.dumps({"text": f"csrf {tag} served"}).encode())
    assert served.status == 200, served.text
    assert [t for t in await todo_texts(a) if tag in t] == [f"csrf {tag} served"]


# ---- logging in -------------------------------------------------------------------------

def set_cookie(reply: HttpReply) -> tuple[str, set[str]]:
    """(name=value, the lowercased attributes) of the reply's Set-Cookie."""
    value, *attributes = [part.strip() for part in reply.headers["set-cookie"].split(";")]
    return value, {a.lower() for a in attributes}


async def test_login_from_another_site_or_with_a_wrong_secret_is_refused(
        sites: dict[str, Site]) -> None:
    a, b = sites["entity-a"], sites["entity-b"]
    secret = a.secrets()["web.secret"]
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    tries = {
        "the right secret from another site": (secret, {"Origin": EVIL}),
        "the right secret, Sec-Fetch-Site cross-site": (secret, {"Sec-Fetch-Site": "cross-site"}),
        "the right secret from another port": (secret, {"Origin": f"http://127.0.0.1:{b.port}",
                                                         "Sec-Fetch-Site": "same-site"}),
        "the right secret from Origin null": (secret, {"Origin": "null"}),
        "the right secret from Origin null, same-site": (secret, {
            "Origin": "null", "Sec-Fetch-Site": "same-site"}),
        "the right secret, same-origin said, another Origin": (secret, {
            "Origin": EVIL, "Sec-Fetch-Site": "same-origin"}),
        "a wrong secret": ("0" * 64, {"Origin": a.origin}),
        "b's secret": (b.secrets()["web.secret"], {"Origin": a.origin}),
        "the secret's first half": (secret[:32], {"Origin": a.origin}),
        "no secret": ("", {"Origin": a.origin}),
    }
    for what, (offered, headers) in tries.items():
        reply = await request(a.url, "POST", "/login", headers={**form, **headers},
                              body=f"secret={quote(offered)}".encode())
        assert reply.status == 403, (what, reply.status)
        assert "set-cookie" not in reply.headers, what
    # The right secret from the page's own form logs in, and the cookie it gets works.
    reply = await request(a.url, "POST", "/login", headers={**form, "Origin": a.origin},
                          body=f"secret={quote(secret)}".encode())
    assert (reply.status, reply.headers["location"]) == (303, "/"), reply.text
    cookie, attributes = set_cookie(reply)
    assert {"httponly", "samesite=strict", "path=/"} <= attributes, attributes
    assert not [x for x in attributes if x.startswith("domain")], attributes
    status = await request(a.url, "GET", "/api/status", headers={"Cookie": cookie})
    assert status.json()["entity"] == a.name


async def test_a_login_link_works_once_and_only_on_its_own_page(
        sites: dict[str, Site]) -> None:
    a, b = sites["entity-a"], sites["entity-b"]
    url, link = await login_link(a.member)
    path = link[len(url) - 1:]
    first = await request(url, "GET", path)
    assert (first.status, first.headers["location"]) == (303, "/")
    cookie, attributes = set_cookie(first)
    assert {"httponly", "samesite=strict", "path=/"} <= attributes, attributes
    assert any(x.startswith("max-age=") and int(x[8:]) > 0 for x in attributes), attributes
    assert (await request(url, "GET", "/api/status", headers={"Cookie": cookie})).status == 200
    _, fresh = await login_link(a.member)
    fresh_path = fresh[len(url) - 1:]
    for what, site, token_path in [
            ("spent", a, path), ("a's link on b's page", b, fresh_path),
            ("made up", a, "/login?token=" + secrets.token_urlsafe(24)),
            ("blank", a, "/login?token=%20"), ("non-ASCII", a, "/login?token=%C3%A9")]:
        reply = await request(site.url, "GET", token_path)
        assert reply.status == 403 and "set-cookie" not in reply.headers, what
    # b's refusal spent nothing of a's: the fresh link still logs in on a's own page.
    assert (await request(url, "GET", fresh_path)).status == 303


def test_login_links_are_spent_once_and_expire() -> None:
    links = LoginLinks()
    start = 1_000_000.0
    token = links.mint(now=start)
    assert links.redeem(token, now=start + LOGIN_TTL_S - 1)
    assert not links.redeem(token, now=start + 1)  # spent
    late = links.mint(now=start)
    assert not links.redeem(late, now=start + LOGIN_TTL_S + 1)  # expired
    assert not links.redeem(late, now=start + 1)  # and gone
    assert not links.redeem("", now=start) and not links.redeem("\xe9", now=start)
    many = [links.mint(now=start) for _ in range(MAX_PENDING_LINKS + 1)]
    assert not links.redeem(many[0], now=start + 1)  # the oldest made room
    assert all(links.redeem(t, now=start + 1) for t in many[1:])


def test_session_cookies_check_their_mac_and_expiry() -> None:
    sessions = Sessions(b"k" * 64, 1.0, "entity-a")
    now = 2_000_000_000.0
    cookie = sessions.issue(now)
    assert sessions.valid(cookie, now + 10)
    assert not sessions.valid(cookie, now + 3601)  # an hour's session, expired
    expires, nonce, mac = cookie.split(".")
    assert not sessions.valid(f"{int(expires) + 3600}.{nonce}.{mac}", now)
    assert not Sessions(b"j" * 64, 1.0, "entity-a").valid(cookie, now)
    for hostile in ["", "..", f"{expires}.{nonce}.\xe9", f"\xb2.{nonce}.{mac}", "a.b.c.d",
                    f"{expires}.{nonce}.{mac}\x00", f"{expires}.{nonce}.{mac.upper()}"]:
        assert not sessions.valid(hostile, now), hostile  # and no exception
    for token in ["", "\xe9" * 64, sessions.csrf(cookie).upper(), sessions.csrf(cookie)[:-1]]:
        assert not sessions.csrf_ok(cookie, token), token
    assert sessions.csrf_ok(cookie, sessions.csrf(cookie))
    assert not sessions.secret_ok("\xe9") and sessions.secret_ok(" " + "k" * 64 + "\n")


# ---- where a request comes from ----------------------------------------------------------

async def test_dns_rebinding_hosts_are_refused_even_with_a_valid_cookie(
        sites: dict[str, Site]) -> None:
    a, b = sites["entity-a"], sites["entity-b"]
    session = a.session()
    hosts = [f"evil.example:{a.port}", "evil.example", f"127.0.0.1:{b.port}",
             f"localhost:{a.port + 1}", f"127.0.0.1.evil.example:{a.port}",
             f"evil.example:{a.port}@127.0.0.1", "", f"127.0.0.1:{a.port}:{a.port}",
             f"[::1]:{b.port}", f"0.0.0.0:{a.port}"]
    for host in hosts:
        origin = f"http://{host}"
        for method, path, body in [("GET", "/api/status", None), ("GET", "/", None),
                                   ("GET", "/login", None), ("GET", "/static/app.js", None),
                                   ("GET", "/api/events", None),
                                   ("POST", "/api/todo", b'{"text": "rebound"}')]:
            reply = await request(a.url, method, path, body=body, headers={
                **a.posting(session, Origin=origin), "Host": host})
            assert (reply.status, error_of(reply)) == (421, "wrong_host"), (host, path)
    assert "rebound" not in await todo_texts(a)
    for host in [f"127.0.0.1:{a.port}", f"localhost:{a.port}", f"[::1]:{a.port}"]:
        reply = await request(a.url, "GET", "/api/status",
                              headers={"Cookie": session.cookie, "Host": host})
        assert reply.status == 200, (host, reply.text)


Message = MutableMapping[str, Any]


async def asgi_call(guard: Guard, *, client: tuple[str, int] | None, path: str = "/api/status",
                    method: str = "GET", headers: list[tuple[bytes, bytes]] | None = None,
                    ) -> tuple[int, list[tuple[bytes, bytes]], bytes]:
    """One HTTP request through the guard as uvicorn would make it: (status, headers, body)."""
    scope: dict[str, Any] = {
        "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "scheme": "http",
        "method": method, "path": path, "raw_path": path.encode(), "query_string": b"",
        "root_path": "", "server": ("127.0.0.1", 8001), "client": client,
        "headers": [(b"host", b"127.0.0.1:8001"), *(headers or [])],
    }
    sent: list[Message] = []

    async def receive() -> Message:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Message) -> None:
        sent.append(message)

    await guard(scope, receive, send)
    start = next(m for m in sent if m["type"] == "http.response.start")
    body = b"".join(m.get("body", b"") for m in sent if m["type"] == "http.response.body")
    return start["status"], start["headers"], body


async def test_a_client_beyond_loopback_is_refused_at_the_front_door() -> None:
    sessions = Sessions(b"s" * 64, 1.0, "entity-a")
    value = sessions.issue()
    signed_in = [(b"cookie", f"{sessions.cookie}={value}".encode()),
                 (b"x-csrf-token", sessions.csrf(value).encode()),
                 (b"origin", b"http://127.0.0.1:8001")]
    reached: list[str] = []

    async def page(scope: Any, receive: Any, send: Any) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"the page"})

    guard = Guard(page, sessions, loopback_only=True, port=lambda: 8001)
    for client in [("10.1.2.3", 5555), ("192.168.1.20", 80), ("::ffff:10.1.2.3", 1),
                   ("2001:db8::1", 2), ("0.0.0.0", 3), ("localhost.evil.example", 4), None]:
        for method, path in [("GET", "/api/status"), ("GET", "/login"),
                             ("GET", "/static/app.js"), ("POST", "/api/todo"),
                             ("POST", "/login"), ("GET", "/")]:
            status, headers, body = await asgi_call(guard, client=client, method=method,
                                                    path=path, headers=signed_in)
            assert (status, json.loads(body)["error"]) == (403, "not_loopback"), (client, path)
            assert any(k == b"content-security-policy" for k, _ in headers)
    assert reached == []
    for client in [("127.0.0.1", 5555), ("127.9.9.9", 1), ("::1", 2)]:
        status, _, body = await asgi_call(guard, client=client, headers=signed_in)
        assert (status, body) == (200, b"the page"), client
    # Allowed beyond loopback (web.allow_remote): a remote client still needs a session.
    remote = Guard(page, sessions, loopback_only=False, port=lambda: 8001)
    status, _, body = await asgi_call(remote, client=("10.1.2.3", 5555))
    assert (status, json.loads(body)["error"]) == (401, "no_session")


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "example.com", "localhost.",
                                  "::ffff:127.0.0.1", ""])
def test_the_config_refuses_a_page_beyond_loopback_unless_allowed(host: str) -> None:
    tries: list[tuple[dict[str, Any], dict[str, str]]] = [
        ({"entity": {"name": "entity-a"}, "web": {"enabled": True, "host": host}}, {}),
        ({"entity": {"name": "entity-a"}},
         {"ENTITYD_WEB_ENABLED": "true", "ENTITYD_WEB_HOST": host}),
    ]
    for raw, environ in tries:
        with pytest.raises(ConfigError) as refused:
            config_mod.from_mapping(raw, environ=environ)
        assert refused.value.key == "web.host" and "web.allow_remote" in str(refused.value)
    if host:
        allowed = config_mod.from_mapping({"entity": {"name": "entity-a"}, "web": {
            "enabled": True, "host": host, "allow_remote": True}})
        assert allowed.web.host == host
    assert config_mod.from_mapping({"entity": {"name": "entity-a"}, "web": {
        "enabled": True, "host": "127.0.0.1"}}).web.host == "127.0.0.1"


# ---- what every answer carries -----------------------------------------------------------

def assert_hardened(headers: dict[str, str], what: str) -> None:
    csp = {d.split()[0]: d.split()[1:] for d in
           headers.get("content-security-policy", "").split(";") if d.strip()}
    assert csp.get("default-src") == ["'none'"], (what, headers)
    assert csp.get("script-src") == ["'self'"], (what, csp)  # no inline, no eval
    assert csp.get("frame-ancestors") == ["'none'"] and csp.get("base-uri") == ["'none'"], what
    assert csp.get("form-action") == ["'self'"] and csp.get("connect-src") == ["'self'"], what
    assert headers.get("x-content-type-options") == "nosniff", what
    assert headers.get("x-frame-options") == "DENY", what
    assert headers.get("referrer-policy") == "no-referrer", what
    assert headers.get("cross-origin-resource-policy") == "same-origin", what
    assert headers.get("cache-control") == "no-store", what
    assert "access-control-allow-origin" not in headers, what


async def test_every_answer_carries_the_security_headers(sites: dict[str, Site]) -> None:
    a = sites["entity-a"]
    session = a.session()
    cases: dict[str, tuple[HttpReply, int, str]] = {
        "the page": (await session.get("/"), 200, "text/html"),
        "the login page": (await request(a.url, "GET", "/login"), 200, "text/html"),
        "JSON": (await session.get("/api/status"), 200, "application/json"),
        "the script": (await request(a.url, "GET", "/static/app.js"), 200, "text/javascript"),
        "the style": (await request(a.url, "GET", "/static/app.css"), 200, "text/css"),
        "a redirect to the login": (await request(a.url, "GET", "/"), 303, ""),
        "401": (await request(a.url, "GET", "/api/status"), 401, "application/json"),
        "403": (await request(a.url, "POST", "/api/todo", body=b"{}", headers={
            "Cookie": session.cookie}), 403, "application/json"),
        "421": (await request(a.url, "GET", "/api/status", headers={
            "Cookie": session.cookie, "Host": "evil.example"}), 421, "application/json"),
        "404": (await session.get("/api/no-such-thing"), 404, ""),
        "a refused login": (await request(a.url, "POST", "/login", body=b"secret=no", headers={
            "Origin": a.origin}), 403, "text/html"),
        "413": (await request(a.url, "POST", "/login", headers={"Content-Length": BIG_CLAIM}),
                413, "application/json"),
        "411": (await request(a.url, "POST", "/login", body=b"0\r\n\r\n", headers={
            "Transfer-Encoding": "chunked"}), 411, "application/json"),
    }
    for what, (reply, status, kind) in cases.items():
        assert reply.status == status, (what, reply.status, reply.text[:200])
        assert reply.headers.get("content-type", "").startswith(kind), (what, reply.headers)
        assert_hardened(reply.headers, what)
    stream = await read_stream(a, "/api/events", {"Cookie": session.cookie},
                               until=lambda events: bool(events))
    assert stream.status == 200 and stream.events[0]["event"] == "start"
    assert stream.headers["content-type"].startswith("text/event-stream")
    assert_hardened(stream.headers, "the event stream")
    refused = await read_stream(a, "/api/events", {}, until=lambda events: True)
    assert refused.status == 401
    assert_hardened(refused.headers, "the event stream refused")


# ---- untrusted text in a real browser ----------------------------------------------------

@dataclass
class Watch:
    """What a page did that it must not: dialogs, script errors, CSP refusals (each one an
    injection that only the CSP stopped)."""

    dialogs: list[str]
    console: list[str]
    errors: list[str]

    def assert_clean(self) -> None:
        assert self.dialogs == [], self.dialogs
        assert not [c for c in self.console if "Content Security Policy" in c], self.console
        assert self.errors == [], self.errors


async def open_logged_in(page: Page, site: Site) -> Watch:
    watch = Watch([], [], [])

    async def on_dialog(dialog: Dialog) -> None:
        watch.dialogs.append(dialog.message)
        await dialog.dismiss()

    def on_console(message: ConsoleMessage) -> None:
        watch.console.append(message.text)

    page.on("dialog", on_dialog)
    page.on("console", on_console)
    page.on("pageerror", lambda error: watch.errors.append(str(error)))
    _, link = await login_link(site.member)
    await page.goto(link)
    await expect(page.locator("#entity")).to_have_text(site.name)
    await expect(page.locator("#live")).to_have_text("live")
    return watch


async def assert_not_pwned(page: Page, watch: Watch) -> None:
    assert await page.evaluate("typeof window.__pwned") == "undefined"
    assert await page.locator("img").count() == 0  # no element made from the text
    assert await page.locator("script").count() == 1  # app.js, and nothing else
    watch.assert_clean()


async def test_model_output_todo_and_memory_render_as_text_in_a_browser(
        sites: dict[str, Site]) -> None:
    a = sites["entity-a"]
    session = a.session()
    tag = secrets.token_hex(4)
    todo = f"todo{tag} {PAYLOAD}"
    added = await session.post("/api/todo", {"text": todo})
    assert added.status == 200, added.text
    memory = f"zebra{tag} {PAYLOAD}"
    async with EntityClient(config_mod.load(a.member.config)) as client:
        await client.ask("memory", MemoryAdd("fact", memory), 10.0)

    async with browser() as chromium:
        context = await chromium.new_context()
        page = await context.new_page()
        watch = await open_logged_in(page, a)

        # A goal (itself hostile) whose answer, from the model, is hostile HTML.
        goal = f"goal{tag} repeat after me: {PAYLOAD}"
        await page.fill("#goal-text", goal)
        await page.click("#goal-form button[type=submit]")
        answer = page.locator("#conversation .answer p").first
        await expect(answer).to_have_text(PAYLOAD, timeout=30_000)
        await expect(page.locator("#conversation p.you").first).to_have_text(goal)

        await page.click("#tabs button[data-tab=todo]")
        await expect(page.locator("#todo-items li span", has_text=f"todo{tag}")).to_have_text(
            todo)

        await page.click("#tabs button[data-tab=memory]")
        await page.fill("#memory-q", f"zebra{tag}")
        await page.click("#memory-form button[type=submit]")
        await expect(page.locator("#memory-hits li", has_text=f"zebra{tag}")).to_contain_text(
            memory)

        await page.click("#tabs button[data-tab=activity]")
        await expect(page.locator("#events")).to_contain_text(SCRIPT)
        await assert_not_pwned(page, watch)
        await context.close()


async def test_the_login_form_and_log_out_work_in_a_browser(sites: dict[str, Site]) -> None:
    """The page's two plain forms (no script, so no CSRF header), as a browser posts them:
    under Referrer-Policy no-referrer their Origin is "null", Sec-Fetch-Site same-origin."""
    a = sites["entity-a"]
    async with browser() as chromium:
        context = await chromium.new_context()
        page = await context.new_page()
        await page.goto(f"{a.url}login")
        await page.fill("#secret", "0" * 64)
        await page.click("form button[type=submit]")
        await expect(page.locator("#problem")).to_contain_text("not this entity's web secret")
        await page.fill("#secret", a.secrets()["web.secret"])
        await page.click("form button[type=submit]")
        await expect(page.locator("#entity")).to_have_text(a.name)
        assert [c for c in await context.cookies() if c["name"] == a.sessions.cookie]
        await page.click("#logout button")
        await page.wait_for_url(f"{a.url}login", timeout=10_000)
        assert not [c for c in await context.cookies() if c["name"] == a.sessions.cookie]
        await page.goto(a.url)
        await page.wait_for_url(f"{a.url}login", timeout=10_000)
        await context.close()


async def test_a_hostile_file_name_renders_as_text_in_the_code_tab(
        sites: dict[str, Site]) -> None:
    a = sites["entity-a"]
    session = a.session()
    if (await session.get("/api/commits")).status == 404:
        pytest.skip("no /api/commits yet (the Code tab is being added): nothing to attack")
    async with browser() as chromium:
        context = await chromium.new_context()
        page = await context.new_page()
        watch = await open_logged_in(page, a)
        await page.fill("#goal-text", f"{FILE_GOAL} a file with a hostile name")
        await page.click("#goal-form button[type=submit]")
        await expect(page.locator("#conversation .answer p").first).to_have_text(
            PAYLOAD, timeout=60_000)
        await expect(page.locator("#conversation .answer pre.stat").first).to_contain_text(
            XSS_FILE)

        commits = (await session.get("/api/commits")).json()["commits"]
        diffs = {c["sha"]: (await session.get(f"/api/commits/{c['sha']}")).json()
                 for c in commits}
        sha = next(sha for sha, d in diffs.items() if XSS_FILE in d["diff"])
        await page.click("#tabs button[data-tab=code]")
        await page.click(f"#commits li.commit[data-sha='{sha}']")
        await expect(page.locator("#diff")).to_contain_text(XSS_FILE)
        await expect(page.locator("#diff")).to_contain_text(f"+{PAYLOAD}")
        await assert_not_pwned(page, watch)
        await context.close()


# ---- nothing secret in any byte ----------------------------------------------------------

async def test_no_secret_in_any_byte_served(sites: dict[str, Site]) -> None:
    for site in sites.values():
        session = site.session()
        todo_id = await add_todo(session, "a leak hunt")
        served: dict[str, bytes] = {}
        paths = [p for m, p in api_routes() if m == "GET" and p != "/api/events"]
        commits = (await session.get("/api/commits")).json().get("commits", [])
        paths += [f"/api/commits/{c['sha']}" for c in commits]
        paths += ["/", "/login", "/static/app.js", "/static/app.css", "/static/index.html",
                  "/static/login.html", "/favicon.ico", "/api/memory?q=leak", "/api/todo?all=1",
                  "/api/usage?hours=2160", "/api/ledger?limit=500"]
        for path in paths:
            reply = await session.get(path)
            assert reply.status < 500, (path, reply.text[:300])
            served[path] = json.dumps(reply.headers).encode() + reply.body
        stream = await read_stream(site, "/api/events", {"Cookie": session.cookie},
                                   until=todo_event(todo_id))
        served["/api/events"] = json.dumps(stream.headers).encode() + stream.body
        served["the daemon's log"] = site.member.daemon.log().encode()
        for what, secret in site.secrets().items():
            for where, data in served.items():
                assert secret.encode() not in data, f"{site.name}'s {what} in {where}"


async def test_a_nats_login_in_the_url_is_not_shown(tmp_path: Path) -> None:
    password = "nats-pass-" + secrets.token_hex(8)
    port = free_port()
    server = ServerProcess([NATS_SERVER, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd",
                            str(tmp_path / "store"), "--user", "op", "--pass", password],
                           port, tmp_path / "nats-server.log")
    server.start()
    config = make_entity(tmp_path, nats_url=f"nats://op:{password}@127.0.0.1:{port}")
    enable_web(config)
    member = Member("entity-a", config, port, DaemonProc(config, tmp_path / "entityd.log"))
    try:
        member.start()
        await member.ready()
        session = await log_in(member)
        status = await session.get("/api/status")
        assert status.status == 200
        assert password not in status.text, status.json()["nats_server"]
        assert password not in member.daemon.log()
    finally:
        member.daemon.signal_stop()
        assert member.daemon.wait_stopped(20) == 0
        server.stop()


# ---- hostile input ------------------------------------------------------------------------

def big_claim(path: str) -> tuple[str, str, dict[str, str], bytes | None]:
    return ("POST", path, {"Content-Length": BIG_CLAIM, "Content-Type": "application/json"},
            None)


HOSTILE: list[Any] = [
    pytest.param("POST", "/api/todo", {}, b"x" * 1_000_000, id="a 1 MB body"),
    pytest.param(*big_claim("/api/todo"), id="100 MB claimed, never sent"),
    pytest.param(*big_claim("/login"), id="100 MB claimed at the login, never sent"),
    pytest.param("POST", "/api/todo", {"Transfer-Encoding": "chunked"},
                 b"5\r\nhello\r\n0\r\n\r\n", id="a chunked body"),
    pytest.param("POST", "/login", {"Transfer-Encoding": "chunked"},
                 b"5\r\nhello\r\n0\r\n\r\n", id="a chunked body at the login"),
    pytest.param("GET", "/api/status", {"Content-Length": BIG_CLAIM}, None,
                 id="a GET claiming 100 MB"),
    pytest.param("POST", "/api/goal", {}, b"not json {", id="not JSON"),
    pytest.param("POST", "/api/todo", {}, b"\xff\xfe\x00", id="not UTF-8"),
    pytest.param("POST", "/api/todo", {}, b"[1, 2]", id="a JSON array"),
    pytest.param("POST", "/api/talk", {}, b'"words"', id="a JSON string"),
    pytest.param("POST", "/api/todo", {}, b"null", id="JSON null"),
    pytest.param("POST", "/api/todo", {}, b"[" * 60_000, id="deep JSON"),
    pytest.param("POST", "/api/todo", {}, b'{"text": "a\\ud800b"}', id="a lone surrogate"),
    pytest.param("POST", "/api/todo", {}, json.dumps({"text": "x" * 20_000}).encode(),
                 id="a 20,000-char todo"),
    pytest.param("POST", "/api/goal", {}, json.dumps({"text": "x" * 20_000}).encode(),
                 id="a 20,000-char goal"),
    pytest.param("POST", "/api/talk", {}, json.dumps({"peer": "entity-b",
                                                      "text": "x" * 20_000}).encode(),
                 id="20,000 chars to a peer"),
    pytest.param("POST", "/api/todo", {}, b'{"text": 7}', id="a number for text"),
    pytest.param("POST", "/api/todo/999999", {}, b'{"status": "done"}',
                 id="a todo id that does not exist"),
    pytest.param("POST", "/api/todo/1", {}, b'{"status": ["done"]}', id="a list for status"),
    pytest.param("POST", f"/api/todo/{10**30}", {}, b'{"status": "done"}',
                 id="a todo id past 64 bits"),
    pytest.param("POST", "/api/peers/a.b.>/check", {}, b"{}", id="peer a.b.> checked"),
    pytest.param("POST", "/api/peers/%2E%2E/check", {}, b"{}", id="peer .. checked"),
    pytest.param("POST", "/api/peers/..%2Fx/check", {}, b"{}", id="peer ../x checked"),
    pytest.param("POST", "/api/talk", {}, b'{"peer": "../x", "text": "hi"}', id="talk to ../x"),
    pytest.param("POST", "/api/talk", {}, b'{"peer": "a.b.>", "text": "hi"}',
                 id="talk to a.b.>"),
    pytest.param("POST", "/api/talk", {}, b'{"peer": ["entity-b"], "text": "hi"}',
                 id="talk to a list"),
    pytest.param("GET", "/api/memory?q=" + "x" * 600, {}, None, id="a 600-char query"),
    pytest.param("GET", "/api/memory", {}, None, id="no query"),
    pytest.param("GET", "/api/ledger?limit=-1", {}, None, id="a negative limit"),
    pytest.param("GET", f"/api/ledger?limit={10**30}", {}, None, id="a huge limit"),
    pytest.param("GET", "/api/usage?hours=abc", {}, None, id="hours not a number"),
    pytest.param("GET", "/api/ledger?limit=%C2%B2", {}, None, id="a superscript digit"),
]


@pytest.mark.parametrize(("method", "path", "extra", "body"), HOSTILE)
async def test_hostile_input_gets_a_json_4xx_and_the_page_keeps_serving(
        sites: dict[str, Site], method: str, path: str, extra: dict[str, str],
        body: bytes | None) -> None:
    a = sites["entity-a"]
    session = a.session()
    headers = {**a.posting(session), **extra} if method == "POST" else \
        {"Cookie": session.cookie, **extra}
    reply = await request(a.url, method, path, headers=headers, body=body, timeout=10.0)
    assert 400 <= reply.status < 500, (reply.status, reply.text[:300])
    error_of(reply)
    status = await session.get("/api/status")
    assert status.status == 200 and status.json()["entity"] == a.name


@pytest.mark.parametrize(("header", "query"), [
    pytest.param("-1", "", id="-1"), pytest.param("abc", "", id="abc"),
    pytest.param(str(10**30), "", id="10**30"), pytest.param("9" * 19, "", id="past 2**63"),
    pytest.param(" 5", "", id="a space"), pytest.param("", "-1", id="after=-1"),
    pytest.param("", "1e3", id="after=1e3"), pytest.param("", quote("0x10"), id="after=0x10"),
    pytest.param("\xb2", "", id="a superscript digit"),
    pytest.param("", quote("\u00b2"), id="after=superscript"),
])
async def test_a_hostile_last_event_id_gets_a_sane_stream(
        sites: dict[str, Site], header: str, query: str) -> None:
    a = sites["entity-a"]
    session = a.session()
    todo_id = await add_todo(session, "a hostile resume")
    headers = {"Cookie": session.cookie, **({"Last-Event-ID": header} if header else {})}
    path = f"/api/events?after={query}" if query else "/api/events"
    stream = await read_stream(a, path, headers, until=todo_event(todo_id))
    assert stream.status == 200, stream.body[:300]
    start, *events = stream.events
    assert start["event"] == "start"
    after = json.loads(start["data"])["after"]
    mine = next(e for e in events if is_todo_event(e, todo_id))
    assert isinstance(after, int) and 0 <= after < json.loads(mine["data"])["seq"]
    # Own events (numbered in the own history; the peers' in the feed, as `feed_seq`) in
    # order, none twice, none before; every id names the last own one sent (`OWN.FEED`).
    seqs = [json.loads(e["data"])["seq"] for e in events]
    own = [seq for seq in seqs if seq is not None]
    assert own == sorted(set(own)) and own[0] > after
    assert [int(e["id"].split(".")[0]) for e in events if json.loads(e["data"])["seq"]] == own
    assert (await session.get("/api/status")).status == 200


async def test_logging_out_needs_this_origin_not_a_token(sites: dict[str, Site]) -> None:
    """The page's Log out is a plain form (it cannot send the CSRF header): a POST from this
    origin logs out; from another site it is refused. Logged out, the session is over: a
    copy of its cookie (taken before) is refused too, and other sessions go on."""
    a = sites["entity-a"]
    session, other = a.session(), a.session()
    for headers in [{"Origin": EVIL}, {"Sec-Fetch-Site": "cross-site"}, {"Origin": "null"},
                    {"Origin": "null", "Sec-Fetch-Site": "same-site"},
                    {"Origin": f"http://127.0.0.1:{sites['entity-b'].port}"}]:
        refused = await request(a.url, "POST", "/logout",
                                headers={"Cookie": session.cookie, **headers}, body=b"")
        assert refused.status == 403 and "set-cookie" not in refused.headers, headers
        error_of(refused)
    out = await request(a.url, "POST", "/logout", body=b"", headers={
        "Cookie": session.cookie, "Origin": "null", "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/x-www-form-urlencoded"})
    assert (out.status, out.headers["location"]) == (303, "/login"), out.text
    value, attributes = set_cookie(out)
    assert value == f"{a.sessions.cookie}=\"\"" or value == f"{a.sessions.cookie}="
    assert "max-age=0" in attributes, attributes
    copied = await request(a.url, "GET", "/api/status", headers={"Cookie": session.cookie})
    assert (copied.status, error_of(copied)) == (401, "no_session")
    assert (await other.get("/api/status")).status == 200
    revoked = json.loads((a.data / auth.REVOKED_FILE).read_text())
    assert session.cookie.split("=", 1)[1].split(".")[1] in revoked
    assert (a.data / auth.REVOKED_FILE).stat().st_mode & 0o777 == 0o600


def test_a_logged_out_session_stays_out_after_a_restart(tmp_path: Path) -> None:
    """What was logged out is kept (until it would have expired): a new Sessions over the
    same files refuses it; a damaged file logs every session out rather than none."""
    secret, revoked = b"s" * 64, tmp_path / auth.REVOKED_FILE
    first = Sessions(secret, 12.0, "entity-a", revoked)
    gone, kept = first.issue(), first.issue()
    assert first.revoke(gone) and not first.valid(gone) and first.valid(kept)
    assert not first.revoke("1.2.3") and not first.revoke(None)
    again = Sessions(secret, 12.0, "entity-a", revoked)
    assert not again.valid(gone) and again.valid(kept) and not again.damaged
    # Expired entries leave the file at the next log out.
    later = time.time() + 13 * 3600
    late = again.issue(later)
    assert again.revoke(late, later)
    assert set(json.loads(revoked.read_text())) == {late.split(".")[1]}

    for damage in (b"{not json", b"[1, 2]", b'{"a": "b"}', b"\xff\xfe"):
        revoked.write_bytes(damage)
        reset = Sessions(secret, 12.0, "entity-a", revoked)
        assert reset.damaged and str(revoked) in reset.damaged
        assert not reset.valid(kept)  # issued before: out, with the one logged out
        fresh = reset.issue()
        assert reset.valid(fresh)
        assert Sessions(secret, 12.0, "entity-a", revoked).valid(fresh)  # rewritten whole
        assert not Sessions(secret, 12.0, "entity-a", revoked).valid(kept)


def test_past_the_revocation_list_bound_no_logged_out_session_comes_back(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only so many logged-out sessions are kept; the soonest to expire make room, and
    every cookie expiring by then is void with them (a few live ones logged out too)
    rather than a revoked one valid again."""
    monkeypatch.setattr(auth, "MAX_REVOKED", 3)
    sessions = Sessions(b"s" * 64, 12.0, "entity-a", tmp_path / auth.REVOKED_FILE)
    now = time.time()
    cookies = [sessions.issue(now + minutes * 60) for minutes in range(5)]
    for cookie in cookies:
        assert sessions.revoke(cookie, now)
    assert not any(sessions.valid(cookie, now) for cookie in cookies)
    again = Sessions(b"s" * 64, 12.0, "entity-a", tmp_path / auth.REVOKED_FILE)
    assert not any(again.valid(cookie, now) for cookie in cookies)
    assert again.valid(again.issue(now), now)
