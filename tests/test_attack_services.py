"""The services actor attacked from inside the sandbox: the agent writes services.toml and
the service's code, and the service, running in real bwrap as the sandbox uid, puts
whatever it likes where its socket should be, swaps it once it was found ready, and
answers the proxy as it likes; and from outside, a web page that rebinds its DNS name to
the preview port. The daemon must never connect to anything but a socket the sandbox
made, and a preview must never share the page's cookies or answer another site's name.

The rig is tests/test_services.py's: the services actor over a real nats-server, the
workspace's sandboxed git, real bwrap.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from actors.services import proxy
from actors.services.endpoint import SOCKET_NAME
from actors.services.manifest import ManifestError, parse
from actors.services.messages import ServiceLogs, ServiceLogsGet
from entityd.config import ServicesSection, WebSection
from tests.helpers import NatsServer, poll
from tests.test_attack_web_paths import serve_page
from tests.test_services import PREVIEW_HOST, SANDBOX_UID, Rig, aget, services_rig
from tests.web_helpers import browser

pytestmark = pytest.mark.timeout(90)

MANIFEST = '''\
[services.{name}]
command = ["python3", "app.py"]
ready = "/health"
restart = "never"
'''

# A service that serves on a socket of its own name, then does `ACT` to the socket's
# name: the proxy and the readiness check find whatever ACT left there.
SERVE_ELSEWHERE = '''\
import http.server, os, socketserver, stat, sys, threading

SOCK = os.environ["ENTITYD_SOCKET"]
REAL = "/workspace/real.sock"
HOST_SOCKET = {host_socket!r}

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        body = b"served by the sandbox"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        if self.path == "/health" and {swap_after_ready!r}:
            self.wfile.flush()
            swap()

    def address_string(self):
        return "proxy"

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

def put(kind):
    if kind == "fifo":
        os.mkfifo(SOCK)
    elif kind == "file":
        open(SOCK, "w").write("not a socket")
    elif kind == "dir":
        os.mkdir(SOCK)
    elif kind == "symlink":
        os.symlink(HOST_SOCKET, SOCK)
    elif kind == "symlink-to-own":
        os.symlink(REAL, SOCK)

swapped = []
def swap():
    if swapped:
        return
    swapped.append(1)
    os.rename(SOCK, "/workspace/was.sock")  # the socket stays open under another name
    put({swap_to!r})
    open("/workspace/swapped", "w").write("done")

server = Server({listen_at!r}, Handler)
if {initial!r}:
    put({initial!r})
print("serving", flush=True)
server.serve_forever()
'''


def service_app(*, host_socket: str = "", listen_at: str = "/workspace/real.sock",
                initial: str = "", swap_after_ready: bool = False, swap_to: str = "") -> str:
    return SERVE_ELSEWHERE.format(host_socket=host_socket, listen_at=listen_at,
                                  initial=initial, swap_after_ready=swap_after_ready,
                                  swap_to=swap_to)


@pytest.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with services_rig(nats_server, tmp_path / "rig") as made:
        yield made


class HostSocket:
    """A Unix socket of the host's (root's, in CI) that the sandbox cannot reach and the
    daemon could: every connection reaching it is counted."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.reached: list[bytes] = []
        self.server: asyncio.AbstractServer | None = None

    async def __aenter__(self) -> HostSocket:
        async def record(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            self.reached.append(await reader.read(100))
            writer.close()

        self.server = await asyncio.start_unix_server(record, str(self.path))
        return self

    async def __aexit__(self, *exc: object) -> None:
        assert self.server is not None
        self.server.close()


def raw_get(port: int, host: str, path: str = "/") -> tuple[int, str]:
    conn = http.client.HTTPConnection(PREVIEW_HOST, port, timeout=10)
    try:
        conn.putrequest("GET", path, skip_host=True)
        if host:
            conn.putheader("Host", host)
        conn.endheaders()
        response = conn.getresponse()
        return response.status, response.read().decode(errors="replace")
    finally:
        conn.close()


# ---- what the socket's name holds -----------------------------------------------------

@pytest.mark.parametrize("kind", ["fifo", "file", "dir"])
async def test_no_socket_at_the_sockets_name_is_no_readiness_and_no_hang(
        rig: Rig, kind: str) -> None:
    """A FIFO (whose open would block a reader), a file, a directory at the name: the
    readiness check says what is there and the service never becomes ready."""
    await rig.commit({"app.py": service_app(initial=kind),
                      "services.toml": MANIFEST.format(name="odd")})
    _, failed = await rig.event("service_failed", name="odd")
    assert f"/workspace/{SOCKET_NAME} is not a socket" in failed.data["reason"], \
        failed.data["reason"]
    assert not rig.seen("service_ready")


@pytest.mark.skipif(SANDBOX_UID == os.getuid(), reason="the service runs as this uid: "
                    "no socket of another uid can stand for the host's")
async def test_a_socket_of_another_uid_hard_linked_at_the_name_is_not_connected_to(
        rig: Rig, tmp_path: Path) -> None:
    """The sandbox can neither see nor (protected_hardlinks) link another uid's socket:
    the test plays that part, hard-linking a socket of its own (root's) at the name once
    the service started. The daemon checks the inode's owner, not the name."""
    async with HostSocket(tmp_path / "host.sock") as host:
        await rig.commit({"app.py": service_app(listen_at="/workspace/real.sock"),
                          "services.toml": MANIFEST.format(name="linked")})
        _, started = await rig.event("service_started", name="linked")
        directory = rig.config.data_dir / "services" / "linked" / started.data["revision"]
        os.link(host.path, directory / SOCKET_NAME)
        _, failed = await rig.event("service_failed", name="linked")
    assert host.reached == []
    assert f"belongs to uid {os.getuid()}, not the sandbox's" in failed.data["reason"]


@pytest.mark.parametrize("swap_to", ["symlink", "fifo", "symlink-to-own"])
async def test_a_socket_swapped_once_found_ready_is_never_followed(
        rig: Rig, tmp_path: Path, swap_to: str) -> None:
    """Ready on a real socket, then the name becomes a symlink to the host's socket (or a
    FIFO): each proxied connection opens the name again, checks the inode and connects
    through that inode, so the swap gains nothing (no window between check and use)."""
    async with HostSocket(tmp_path / "host.sock") as host:
        await rig.commit({"app.py": service_app(host_socket=str(host.path),
                                                listen_at=os.path.join("/workspace",
                                                                       SOCKET_NAME),
                                                swap_after_ready=True, swap_to=swap_to),
                          "services.toml": MANIFEST.format(name="swap")})
        _, ready = await rig.event("service_ready", name="swap")
        directory = rig.config.data_dir / "services" / "swap" / ready.data["revision"]
        await poll(lambda: (directory / "swapped").exists(), timeout=20,
                   what="the service to swap its socket")
        assert not stat.S_ISSOCK(os.lstat(directory / SOCKET_NAME).st_mode)
        port = (await rig.services())["swap"].port
        for _ in range(3):
            with pytest.raises((OSError, http.client.HTTPException)):
                await asyncio.to_thread(raw_get, port, f"{PREVIEW_HOST}:{port}")
    assert host.reached == []


# ---- the preview and the page's cookies ------------------------------------------------

def test_the_previews_listen_on_another_host_than_the_page() -> None:
    """Cookies ignore ports: a preview on the page's host would get the operator's session
    cookie (the page's is host-only, SameSite=Strict), and its answers could set one."""
    assert ServicesSection().host != WebSection().host
    assert ServicesSection().host == PREVIEW_HOST == "127.0.0.2"


async def test_a_dns_rebinding_site_gets_nothing_from_the_preview(rig: Rig) -> None:
    """A page at evil.example rebinding its name to the preview's address: the browser
    sends Host: evil.example (one origin per connection), which the proxy refuses before
    any byte reaches the service."""
    await rig.commit({"app.py": service_app(listen_at=os.path.join("/workspace",
                                                                   SOCKET_NAME)),
                      "services.toml": MANIFEST.format(name="rebound")})
    await rig.event("service_ready", name="rebound")
    port = (await rig.services())["rebound"].port
    for host in ["evil.example", f"evil.example:{port}", f"{PREVIEW_HOST}.nip.io:{port}",
                 f"{PREVIEW_HOST}:{port + 1}", f"LOCALHOST.evil:{port}", ""]:
        status, body = await asyncio.to_thread(raw_get, port, host)
        assert status == 421 and "served by the sandbox" not in body, (host, status, body)
    for host in [f"{PREVIEW_HOST}:{port}", f"localhost:{port}", f"127.0.0.1:{port}",
                 f"[::1]:{port}"]:
        assert await asyncio.to_thread(raw_get, port, host) == (200,
                                                                  "served by the sandbox")
    assert await aget(port) == (200, "served by the sandbox")


def raw_exchange(port: int, *chunks: bytes) -> bytes:
    with socket.create_connection((PREVIEW_HOST, port), timeout=10) as conn:
        for chunk in chunks:
            conn.sendall(chunk)
        answer = b""
        while data := conn.recv(65536):
            answer += data
        return answer


async def test_the_proxy_reads_a_whole_request_head_and_bounds_it(rig: Rig) -> None:
    """The Host check waits for the head's end (a head in pieces still passes, the
    service gets it byte for byte) and refuses one over 64 KiB before the service."""
    await rig.commit({"app.py": service_app(listen_at=os.path.join("/workspace",
                                                                   SOCKET_NAME)),
                      "services.toml": MANIFEST.format(name="heads")})
    await rig.event("service_ready", name="heads")
    port = (await rig.services())["heads"].port
    pieces = [b"GET /x HTTP/1.0\r\nHo", b"st: " + f"{PREVIEW_HOST}:{port}".encode(),
              b"\r\nX-A: 1\r\n", b"\r\n"]
    answer = await asyncio.to_thread(raw_exchange, port, *pieces)
    assert answer.startswith(b"HTTP/1.0 200") and answer.endswith(b"served by the sandbox")
    huge = (f"GET /huge-head HTTP/1.1\r\nHost: {PREVIEW_HOST}:{port}\r\nX-Big: ".encode()
            + b"a" * 70_000 + b"\r\n\r\n")
    try:
        answer = await asyncio.to_thread(raw_exchange, port, huge)
    except ConnectionResetError:
        pass  # closed with unread bytes of the head pending: the 431 may be lost to the RST
    else:
        assert answer.startswith(b"HTTP/1.1 431") and b"served by the sandbox" not in answer
    twice = (f"GET / HTTP/1.1\r\nHost: {PREVIEW_HOST}:{port}\r\n"
             f"Host: evil.example\r\n\r\n").encode()
    answer = await asyncio.to_thread(raw_exchange, port, twice)
    assert answer.startswith(b"HTTP/1.1 421")
    # The service logs each request line it gets (http.server): /x came, /huge-head never.
    # Its output reaches the daemon on its own time: wait for the line of a last request.
    await aget(port, "/last")

    async def logged() -> str:
        logs = await rig.ask(ServiceLogsGet("heads"))
        assert isinstance(logs, ServiceLogs)
        return logs.text if "/last" in logs.text else ""

    text = await poll(logged, timeout=20, what="the service's log line of /last")
    assert "/x" in text and "/huge-head" not in text


async def test_connections_that_send_no_request_give_their_slot_back(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    """A local process opening MAX_CONNECTIONS connections and sending nothing held every
    slot of the preview for 120 s each (the idle bound), again and again: a connection
    now has HEAD_S to send its first request's head, then its slot is free again."""
    monkeypatch.setattr(proxy, "MAX_CONNECTIONS", 4)
    monkeypatch.setattr(proxy, "HEAD_S", 1.0)
    await rig.commit({"app.py": service_app(listen_at=os.path.join("/workspace",
                                                                   SOCKET_NAME)),
                      "services.toml": MANIFEST.format(name="slots")})
    await rig.event("service_ready", name="slots")
    port = (await rig.services())["slots"].port
    silent = [socket.create_connection((PREVIEW_HOST, port)) for _ in range(4)]
    try:
        await asyncio.sleep(0.3)
        try:  # every slot held: the next is closed at once, unanswered
            refused = await asyncio.to_thread(raw_exchange, port, b"GET / HTTP/1.0\r\n",
                                              f"Host: {PREVIEW_HOST}:{port}\r\n\r\n".encode())
        except (ConnectionResetError, BrokenPipeError):
            refused = b""
        assert refused == b"", refused[:200]
        await asyncio.sleep(1.5)  # past HEAD_S: the silent ones were closed
        for conn in silent:
            conn.settimeout(2)
            assert conn.recv(1) == b""
        answer = await asyncio.to_thread(raw_exchange, port, b"GET / HTTP/1.0\r\n",
                                         f"Host: {PREVIEW_HOST}:{port}\r\n\r\n".encode())
        assert answer.startswith(b"HTTP/1.0 200"), answer[:200]
    finally:
        for conn in silent:
            conn.close()


# ---- services.toml ---------------------------------------------------------------------

@pytest.mark.parametrize("name", ["../x", "..", ".", "a/b", "A", "x\n", "\u00e9", "a b", "",
                                  "x" * 33, "\u0430", "a\x00", "a\\b", "-" * 33])
def test_a_service_name_outside_a_to_z_0_to_9_and_dash_is_refused(name: str) -> None:
    raw = f'[services.{json.dumps(name)}]\ncommand = ["true"]\nready = "/"\n'
    with pytest.raises(ManifestError) as refused:
        parse(raw.encode(), 8)
    assert any("a service name is 1-32 of a-z, 0-9 and -" in e
               for e in refused.value.errors), refused.value.errors


@pytest.mark.parametrize("ready", ["/health HTTP/1.0\r\nX-Injected: 1", "/a b", "health",
                                   "//evil.example/", "/\u00e9", "/" + "a" * 300])
def test_a_readiness_path_that_would_bend_the_request_line_is_refused(ready: str) -> None:
    raw = f'[services.web]\ncommand = ["true"]\nready = {json.dumps(ready)}\n'
    try:
        specs = parse(raw.encode(), 8)
    except ManifestError as refused:
        assert any("`ready`" in e or "not valid TOML" in e for e in refused.errors)
        return
    # Only "//evil.example/" parses: a path, sent as the request target over the socket
    # (the service is the only one to see it), never a URL the daemon would visit.
    assert ready == "//evil.example/" and specs["web"].ready == ready


def test_a_dotted_name_is_a_nested_table_and_refused() -> None:
    raw = b'[services.a.b]\ncommand = ["true"]\nready = "/"\n'
    with pytest.raises(ManifestError) as refused:
        parse(raw, 8)
    assert any("unknown key(s) 'b'" in e for e in refused.value.errors)


# A service whose page, opened in the operator's browser, tries to use the operator's
# session on the entity's page: it shows the Cookie header it got, sets the page's cookie
# name, and posts to the page's API from its own origin.
HOSTILE_PREVIEW = '''\
import http.server, os, socketserver

PAGE = {page!r}
COOKIE = {cookie!r}
SCRIPT = """
(async () => {{
  const page = "%s";
  try {{ await fetch(page + "api/status", {{credentials: "include", mode: "no-cors"}}); }}
  catch (e) {{}}
  try {{ await fetch(page + "api/todo", {{method: "POST", credentials: "include",
    mode: "no-cors", headers: {{"Content-Type": "text/plain"}},
    body: '{{"text": "from the preview"}}'}}); }} catch (e) {{}}
  document.title = "done";
}})();
""" % PAGE

class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        if self.path == "/health":
            body = b"ok"
            self.send_response(200)
        else:
            got = self.headers.get("Cookie") or "none"
            body = ("<!doctype html><pre id=cookie>" + got.replace("<", "&lt;") +
                    "</pre><script>" + SCRIPT + "</script>").encode()
            self.send_response(200)
            self.send_header("Content-Type", "text/html")
            self.send_header("Set-Cookie", COOKIE + "=forged; Path=/")
            self.send_header("Set-Cookie", COOKIE + "=forged2; Domain=127.0.0.1; Path=/")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def address_string(self):
        return "proxy"

class Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True

Server(os.environ["ENTITYD_SOCKET"], Handler).serve_forever()
'''


async def test_a_preview_in_the_operators_browser_gets_and_sets_none_of_the_pages_cookies(
        rig: Rig) -> None:
    async with serve_page() as page, browser() as chromium:
        await rig.commit({"app.py": HOSTILE_PREVIEW.format(page=page.url,
                                                           cookie=page.sessions.cookie),
                          "services.toml": MANIFEST.format(name="preview")})
        _, ready = await rig.event("service_ready", name="preview")
        context = await chromium.new_context()
        try:
            login = await context.request.get(f"{page.url}login?token={page.links.mint()}",
                                              max_redirects=0)
            assert login.status == 303
            [session] = await context.cookies(page.url)
            assert session["name"] == page.sessions.cookie
            tab = await context.new_page()
            await tab.goto(ready.data["url"])
            await tab.wait_for_function("document.title === 'done'")
            received = await tab.inner_text("#cookie")
            # The service got no cookie of the page's, and its page reached no handler of
            # the page's (no cookie went along: another site; and the POST is cross-site).
            assert page.sessions.cookie not in received and session["value"] not in received
            assert page.reached() == []
            # Its Set-Cookie stayed on its own host: the page's cookie is the one issued.
            assert await context.cookies(page.url) == [session]
            status = await context.request.get(f"{page.url}api/status")
            assert status.status == 200
            assert page.actors.asked == [f"{page.actors.entity}/health StatusGet"]
        finally:
            await context.close()
