"""The Moltbook client attacked by a hostile Moltbook server (or whatever it redirects to):
the key must never leave for another origin, and nothing a server says may reach the
tool actor as an internal error instead of a refusal.

The hostile server is a local HTTP server answering what each test scripts (status,
headers, body; it is not Moltbook); the other host a redirect points to is
tests/moltbook_server.py's Recorder, which notes every request reaching it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from actors.messages import ToolCall, ToolResult
from actors.moltbook import (
    ApiError,
    MoltbookError,
    MoltbookTools,
    RateLimited,
    RedirectRefused,
    Unreachable,
)
from actors.moltbook.client import MAX_REDIRECTS, MoltbookClient
from entityd.config import Config, EntitySection, MoltbookSection
from tests.moltbook_server import Recorder

pytestmark = pytest.mark.timeout(60)

KEY = "moltbook_sk_attack_0123456789abcdef0123"


@dataclass
class Seen:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Answer:
    status: int
    headers: list[tuple[str, str]] = field(default_factory=list)
    body: bytes = b"{}"


class Hostile:
    """A server that answers each path as scripted (`script[path]`, else 200 {}), raw
    header bytes included, and records what it got."""

    def __init__(self) -> None:
        self.script: dict[str, Answer] = {}
        self.default = Answer(200)  # to any path not scripted
        self.seen: list[Seen] = []
        hostile = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                hostile.seen.append(Seen(self.command, self.path, dict(self.headers.items()),
                                         body))
                answer = hostile.script.get(self.path, hostile.default)
                # Written raw: a hostile server's bytes need not be what http.server allows.
                head = f"HTTP/1.1 {answer.status} X\r\n".encode()
                for name, value in [*answer.headers, ("Content-Length", str(len(answer.body))),
                                    ("Content-Type", "application/json")]:
                    head += name.encode() + b": " + value.encode("utf-8") + b"\r\n"
                self.wfile.write(head + b"\r\n" + answer.body)

            do_GET = do_POST = do_DELETE = _any

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.port = self.httpd.server_address[1]
        self.base_url = f"http://127.0.0.1:{self.port}/api/v1"
        self._thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)

    def redirect(self, path: str, location: str, status: int = 301) -> None:
        self.script[f"/api/v1{path}"] = Answer(status, [("Location", location)])

    def __enter__(self) -> Hostile:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


@contextmanager
def hostile_and_other() -> Iterator[tuple[Hostile, Recorder]]:
    with Hostile() as server, Recorder() as other:
        yield server, other


def client_of(server: Hostile) -> MoltbookClient:
    return MoltbookClient(server.base_url, KEY, max_wait=0.5)


def keyed(seen: list[Any]) -> list[str]:
    return [s.path for s in seen if KEY in json.dumps(s.headers)]


# ---- redirects that would take the key elsewhere -----------------------------------------

OTHER_ORIGINS = {
    # The other host hidden behind a userinfo that names ours.
    "userinfo naming us": "http://127.0.0.1:{base}@localhost:{other}/api/v1/home",
    "www userinfo": "http://www.moltbook.com@localhost:{other}/api/v1/home",
    "user and password": "http://user:pw@localhost:{other}/api/v1/home",
    "upper case host": "HTTP://LOCALHOST:{other}/api/v1/home",
    "scheme relative": "//localhost:{other}/api/v1/home",
    "another port": "http://127.0.0.1:{other}/api/v1/home",
    "the same host with a trailing dot": "http://127.0.0.1.:{base}/api/v1/home",
    "localhost for 127.0.0.1": "http://localhost:{base}/api/v1/home",
    "IPv4-mapped IPv6": "http://[::ffff:127.0.0.1]:{base}/api/v1/home",
    "a short IPv4": "http://127.1:{base}/api/v1/home",
    "a hex IPv4": "http://0x7f.0.0.1:{base}/api/v1/home",
    "https upgrade (another origin)": "https://127.0.0.1:{base}/api/v1/home",
    "two ports": "http://127.0.0.1:{base}:{other}/api/v1/home",
    "a port that is not a number": "http://127.0.0.1:{base}x/api/v1/home",
    "a Cyrillic o (IDN lookalike)": "http://l\u043ecalhost:{other}/api/v1/home",
    "punycode": "http://xn--lcalhost-9of:{other}/api/v1/home",
    "percent-encoded host": "http://%6c%6fcalhost:{other}/api/v1/home",
    "a fullwidth colon (NFKC)": "http://localhost\uff1a{other}/api/v1/home",
    "a fullwidth at sign (NFKC)": "http://127.0.0.1\uff20localhost:{other}/api/v1/home",
    "an unclosed IPv6 bracket": "http://[127.0.0.1:{other}/api/v1/home",
    "a backslash before userinfo": "http://localhost:{other}\\@127.0.0.1:{base}/api/v1/home",
    "a tab in the host": "http://local\thost:{other}/api/v1/home",
}


@pytest.mark.parametrize("case", sorted(OTHER_ORIGINS))
async def test_a_redirect_anywhere_but_our_origin_is_refused_and_nothing_reaches_it(
        case: str) -> None:
    with hostile_and_other() as (server, other):
        location = OTHER_ORIGINS[case].format(base=server.port, other=other.port)
        server.redirect("/home", location)
        with pytest.raises(RedirectRefused) as refused:
            await client_of(server).call("GET", "/home", "GET /home")
        assert KEY not in str(refused.value)
        assert "not followed" in str(refused.value)
        assert other.seen == []
        assert [s.path for s in server.seen] == ["/api/v1/home"]  # no second request at all


async def test_a_chain_that_leaves_on_its_last_hop_is_refused_there() -> None:
    with hostile_and_other() as (server, other):
        server.redirect("/home", "/api/v1/a")
        server.redirect("/a", f"http://127.0.0.1:{server.port}/api/v1/b", 302)
        server.redirect("/b", f"http://localhost:{other.port}/api/v1/home", 308)
        with pytest.raises(RedirectRefused):
            await client_of(server).call("GET", "/home", "GET /home")
        assert other.seen == []
        assert [s.path for s in server.seen] == ["/api/v1/home", "/api/v1/a", "/api/v1/b"]
        assert keyed(server.seen) == [s.path for s in server.seen]


async def test_a_307_with_the_body_goes_only_to_our_origin() -> None:
    with hostile_and_other() as (server, other):
        server.redirect("/posts", f"http://localhost:{other.port}/api/v1/posts", 307)
        with pytest.raises(RedirectRefused):
            await client_of(server).call("POST", "/posts", "POST /posts",
                                         body={"title": "secret draft"})
        assert other.seen == []
        # Within the origin, a 307 keeps the method, the body and the key.
        server.redirect("/posts", "/api/v1/posts2", 307)
        await client_of(server).call("POST", "/posts", "POST /posts", body={"title": "t"})
        last = server.seen[-1]
        assert (last.method, last.path, json.loads(last.body)) == ("POST", "/api/v1/posts2",
                                                                   {"title": "t"})
        assert last.headers["Authorization"] == f"Bearer {KEY}"


async def test_a_303_never_turns_a_post_into_a_get_and_a_loop_ends() -> None:
    with hostile_and_other() as (server, _):
        server.redirect("/posts", "/api/v1/elsewhere", 303)
        with pytest.raises(ApiError, match="not followed"):
            await client_of(server).call("POST", "/posts", "POST /posts", body={"a": 1})
        server.redirect("/loop", "/api/v1/loop", 302)
        with pytest.raises(ApiError, match="more than"):
            await client_of(server).call("GET", "/loop", "GET /loop")
        assert len([s for s in server.seen if s.path == "/api/v1/loop"]) == MAX_REDIRECTS + 1
        server.redirect("/nowhere", "")
        server.script["/api/v1/nowhere"] = Answer(302)
        with pytest.raises(ApiError, match="no Location"):
            await client_of(server).call("GET", "/nowhere", "GET /nowhere")


UNREADABLE_SAME_ORIGIN = {
    "a non-ASCII path": "/api/v1/caf\u00e9",
    "a space in the path": "/api/v1/a b",
    "a control character": "/api/v1/a\x0bb",
}


@pytest.mark.parametrize("case", sorted(UNREADABLE_SAME_ORIGIN))
async def test_a_location_that_is_no_clean_url_is_a_refusal_not_an_internal_error(
        case: str) -> None:
    with hostile_and_other() as (server, _):
        server.redirect("/home", UNREADABLE_SAME_ORIGIN[case])
        with pytest.raises(MoltbookError) as refused:
            await client_of(server).call("GET", "/home", "GET /home")
        assert isinstance(refused.value, RedirectRefused | Unreachable)
        assert KEY not in str(refused.value)


# ---- what a 429 may say ------------------------------------------------------------------

@pytest.mark.parametrize("retry_after", ["inf", "1e999", "-inf", "nan", "99999999999999",
                                         "Fri, 31 Dec 9999 23:59:59 GMT"])
async def test_a_429_asking_for_forever_is_an_error_with_a_finite_wait(
        retry_after: str) -> None:
    with hostile_and_other() as (server, _):
        server.script["/api/v1/home"] = Answer(429, [("Retry-After", retry_after)])
        with pytest.raises(RateLimited) as limited:
            await client_of(server).call("GET", "/home", "GET /home")
    assert math.isfinite(limited.value.retry_after)
    assert limited.value.retry_after >= 0


@pytest.mark.parametrize("body", [b'{"retry_after_seconds": Infinity}',
                                  b'{"retry_after_minutes": 1e308}',
                                  b'{"retry_after_seconds": NaN}'])
async def test_a_429_body_asking_for_forever_is_an_error_with_a_finite_wait(
        body: bytes) -> None:
    with hostile_and_other() as (server, _):
        server.script["/api/v1/home"] = Answer(429, body=body)
        with pytest.raises(RateLimited) as limited:
            await client_of(server).call("GET", "/home", "GET /home")
    assert math.isfinite(limited.value.retry_after)


async def test_a_location_holding_the_key_is_refused_without_repeating_it() -> None:
    with hostile_and_other() as (server, other):
        server.redirect("/home", f"http://localhost:{other.port}/steal?k={KEY}")
        with pytest.raises(RedirectRefused) as refused:
            await client_of(server).call("GET", "/home", "GET /home")
        server.redirect("/home", f"/api/v1/{KEY} x")
        with pytest.raises(RedirectRefused) as unreadable:
            await client_of(server).call("GET", "/home", "GET /home")
        assert other.seen == []
    assert KEY not in str(refused.value) and KEY not in str(unreadable.value)
    assert "no plain URL" in str(unreadable.value)


# ---- what a hostile server's answers may hold -------------------------------------------

HOSTILE_BODIES = [
    b"[" * 100_000, b'{"a":' * 50_000, b"null", b"5", b'"text"', b"[]", b"[[]]",
    b'{"posts": 5}', b'{"posts": [5, null, "x", {"id": null, "title": []}]}',
    b'{"post": null}', b'{"post": "x"}', b'{"post": {"verification": "x"}}',
    b'{"post": {"id": {"x": 1}, "verification": {"verification_code": 5, '
    b'"challenge_text": null, "expires_at": "never"}}}',
    b'{"verification_required": true, "verification": {"code": [], "challenge": {}}}',
    b'{"comment": {"verification": {"verification_code": "c", "challenge_text": '
    b'"' + b"A" * 100_000 + b'", "expires_at": 1e400}}}',
    b'{"agent": {"created_at": "not a date", "karma": "x"}}',
    b'{"agent": {"created_at": 1e400}}', b'{"agent": []}',
    b'{"data": {"a": {"b": []}}}', b'{"conversations": {"x": 1}}',
    b'{"success": false, "error": {"x": [1]}, "hint": 5}', b'{"results": [[]]}',
    b'{"error": NaN, "success": false}', b'{"comments": [{"replies": [{"replies": 5}]}]}',
    b'{"n": ' + b"1" * 5000 + b"}", b'{"status": 7}', b"\xff\xfe not utf-8",
]
TOOL_CALLS: list[tuple[str, dict[str, Any]]] = [
    ("moltbook_home", {}), ("moltbook_feed", {}), ("moltbook_search", {"query": "x"}),
    ("moltbook_read_post", {"post_id": "p1"}), ("moltbook_submolts", {}),
    ("moltbook_submolts", {"name": "general"}), ("moltbook_read_dms", {}),
    ("moltbook_read_dms", {"conversation_id": "c1"}),
    ("moltbook_post", {"title": "a title", "content": "some content", "submolt": "general"}),
    ("moltbook_comment", {"post_id": "p1", "content": "a comment here"}),
    ("moltbook_vote", {"post_id": "p1", "direction": "up"}),
    ("moltbook_follow", {"name": "someone"}), ("moltbook_join_submolt", {"name": "general"}),
]


@pytest.mark.parametrize("status", [200, 429, 500])
@pytest.mark.parametrize("body", HOSTILE_BODIES, ids=[str(i) for i in range(len(HOSTILE_BODIES))])
async def test_no_answer_of_a_hostile_server_is_an_internal_error_of_the_tools(
        tmp_path: Path, body: bytes, status: int) -> None:
    """Every tool, against a server answering `status` with `body` to everything: the
    tools answer with a result (a refusal or what they read), never an exception."""
    with Hostile() as server:
        server.default = Answer(status, [("Retry-After", "0")] if status == 429 else [],
                                body)
        data = tmp_path / "entity-a"
        data.mkdir()
        config = Config(entity=EntitySection(name="entity-a", data_dir=str(data)),
                        moltbook=MoltbookSection(base_url=server.base_url, timeout=10.0,
                                                 dms="allow"))
        tools = MoltbookTools(config, environ={"MOLTBOOK_API_KEY": KEY})
        events: list[dict[str, Any]] = []

        async def emit(typ: str, **data: Any) -> None:
            events.append(data)

        for tool, args in TOOL_CALLS:
            result = await tools.call(ToolCall(tool, args, "entity-a/orchestrator"),
                                      "entity-a/orchestrator", emit)
            assert isinstance(result, ToolResult), tool
            assert KEY not in json.dumps([result.output, result.error]), tool
