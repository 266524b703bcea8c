"""What the web page's tests share: a plain HTTP client (every header under the test's
control, for the attacks), a logged-in session, and Debian's chromium under Playwright."""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import re
import shutil
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from playwright.async_api import Browser, async_playwright

from bench.rig import Member

CHROMIUM_ENV = "ENTITYD_CHROMIUM"


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8", "replace")


def _request(url: str, method: str, path: str, headers: dict[str, str],
             body: bytes | None, timeout: float) -> Reply:
    where = urlsplit(url)
    conn = http.client.HTTPConnection(where.hostname or "127.0.0.1", where.port,
                                      timeout=timeout)
    try:
        conn.putrequest(method, path, skip_host=True, skip_accept_encoding=True)
        headers = {"Host": where.netloc, **headers}
        for name, value in headers.items():
            if value is not None:
                conn.putheader(name, value)
        if body is not None:
            conn.putheader("Content-Length", str(len(body)))
        conn.endheaders(body)
        response = conn.getresponse()
        return Reply(response.status, {k.lower(): v for k, v in response.getheaders()},
                     response.read())
    finally:
        conn.close()


async def request(url: str, method: str, path: str, *, headers: dict[str, str] | None = None,
                  body: bytes | None = None, timeout: float = 30.0) -> Reply:
    """One HTTP request to the page at `url` (its base), headers exactly as given (Host
    defaults to the URL's)."""
    return await asyncio.to_thread(_request, url, method, path, headers or {}, body, timeout)


@dataclass
class Session:
    """A logged-in page: its base URL, session cookie and CSRF token."""

    url: str
    cookie: str
    csrf: str
    headers: dict[str, str] = field(default_factory=dict)

    async def get(self, path: str) -> Reply:
        return await request(self.url, "GET", path, headers={"Cookie": self.cookie})

    async def post(self, path: str, data: Any) -> Reply:
        return await request(self.url, "POST", path, body=json.dumps(data).encode(),
                             headers={"Cookie": self.cookie, "X-CSRF-Token": self.csrf,
                                      "Content-Type": "application/json",
                                      "Origin": self.url.rstrip("/")})


async def login_link(member: Member) -> tuple[str, str]:
    """(the page's URL, a one-time login link) as `entityctl web --json` gives them."""
    link = await member.ctl_json("web")
    return link["url"], link["login"]


async def log_in(member: Member) -> Session:
    url, login = await login_link(member)
    path = login[len(url) - 1:]
    reply = await request(url, "GET", path)
    assert reply.status == 303, reply.text
    cookie = reply.headers["set-cookie"].split(";", 1)[0]
    page = await request(url, "GET", "/", headers={"Cookie": cookie})
    match = re.search(r'<meta name="csrf" content="([0-9a-f]+)">', page.text)
    assert match, page.text[:500]
    return Session(url, cookie, match.group(1))


def chromium_path() -> str:
    """Debian's chromium (tests/run installs it as root), or $ENTITYD_CHROMIUM."""
    path = os.environ.get(CHROMIUM_ENV) or shutil.which("chromium")
    if not path:
        raise RuntimeError("no chromium: tests/run installs Debian's chromium as root; "
                           f"elsewhere set {CHROMIUM_ENV} to a Chromium binary")
    return path


@asynccontextmanager
async def browser() -> AsyncIterator[Browser]:
    """Headless Chromium (no sandbox of its own: root in CI has none to give it)."""
    async with async_playwright() as p:
        launched = await p.chromium.launch(executable_path=chromium_path(),
                                           args=["--no-sandbox"])
        try:
            yield launched
        finally:
            await launched.close()
