"""An async client of Moltbook's API v1 over the standard library (http.client in a thread).

The key goes only to the origin (scheme, host, port) of the configured base URL, and only
over https (plain http only to a loopback test server). Redirects are handled here, not by
a library: one to the same origin is followed, one anywhere else is refused, since the
Authorization header would go along (Moltbook documents that the bare moltbook.com
redirects to www and drops it). A Location that URL parsers could read differently (a
userinfo, a backslash, anything but visible ASCII) or that does not parse is refused too:
the origin checked must be the one connected to, whoever reads the URL. A 429 is waited
out when Retry-After (seconds or a date) or the body's retry_after_seconds/minutes is
short enough, else it is an error saying when to retry (at most a day: a server asking
for forever gets a finite answer). Moltbook's JSON errors ({"success": false, "error":
..., "hint": ...}) become messages; the key is scrubbed from anything the server says.
"""

from __future__ import annotations

import asyncio
import email.utils
import http.client
import json
import math
import re
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlencode, urljoin, urlsplit

from ..untrusted import json_loads
from .errors import ApiError, KeyRefused, RateLimited, RedirectRefused, Unreachable
from .limits import RequestPacer

MAX_BODY = 4 * 1024 * 1024  # bytes of one answer
MAX_REDIRECTS = 3
RATE_LIMIT_RETRIES = 2  # 429s waited out per call, each up to max_wait seconds
DEFAULT_RETRY_AFTER = 60.0  # a 429 that does not say how long
MAX_RETRY_AFTER = 86400.0  # a longer (or infinite) wait asked for is reported as this
# A Location is followed only when it is plain: visible ASCII, no backslash (WHATWG reads
# it as a slash, urllib does not), no userinfo (what hides one host behind another).
PLAIN_LOCATION = re.compile(r"[\x21-\x7e]+")
LOOPBACK = frozenset({"127.0.0.1", "::1", "localhost"})
WWW_NOTE = ("Moltbook documents that its API must be called at https://www.moltbook.com "
            "(with www): the bare moltbook.com redirects and drops the Authorization "
            "header. Check [moltbook] base_url.")

Audit = Callable[[dict[str, Any]], Awaitable[None]]


@dataclass(frozen=True)
class Reply:
    status: int
    data: dict[str, Any]


@dataclass(frozen=True)
class _Raw:
    status: int
    headers: dict[str, str]
    body: bytes


def origin(url: str) -> tuple[str, str, int]:
    """(scheme, host, port) of `url`, the port made explicit."""
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    try:
        port = parts.port or (443 if scheme == "https" else 80)
    except ValueError:
        port = -1  # not a port: matches no base URL
    return scheme, (parts.hostname or "").lower(), port


def show(where: tuple[str, str, int]) -> str:
    scheme, host, port = where
    host = f"[{host}]" if ":" in host else host
    return f"{scheme}://{host}:{port}"


class MoltbookClient:
    """One agent's calls to the API at `base_url`; `key` None for /agents/register."""

    def __init__(self, base_url: str, key: str | None, *, timeout: float = 30.0,
                 pacer: RequestPacer | None = None, max_wait: float = 60.0,
                 audit: Audit | None = None) -> None:
        self.base = base_url.rstrip("/")
        self.origin = origin(self.base)
        scheme, host, _ = self.origin
        if scheme not in ("https", "http") or not host:
            raise Unreachable(f"[moltbook] base_url {base_url!r} is not an http(s) URL")
        if key is not None and scheme == "http" and host not in LOOPBACK:
            raise KeyRefused(f"[moltbook] base_url {base_url} is plain http: the key is sent "
                             "only over https (http only to a loopback test server)")
        self._key = key
        self.timeout = timeout
        self.pacer = pacer
        self.max_wait = max_wait
        self.audit = audit
        self._ssl = ssl.create_default_context() if scheme == "https" else None

    async def call(self, method: str, path: str, endpoint: str, *,
                   query: Mapping[str, Any] | None = None,
                   body: Mapping[str, Any] | None = None) -> Reply:
        """`method` on `path` (under the base URL, its segments already quoted);
        `endpoint` names it in errors and audit events ("POST /posts/{id}/comments")."""
        url = self.base + path
        if query:
            url += "?" + urlencode({k: v for k, v in query.items() if v not in (None, "")})
        data = None if body is None else json.dumps(body).encode()
        limited = 0
        redirects = 0
        while True:
            raw = await self._send(method, url, data, endpoint)
            if raw.status in (301, 302, 303, 307, 308):
                redirects += 1
                url, method, data = self._redirect(raw, url, method, data, endpoint, redirects)
                continue
            if raw.status == 429:
                wait = retry_after(raw)
                limited += 1
                if wait <= self.max_wait and limited <= RATE_LIMIT_RETRIES:
                    await asyncio.sleep(wait)
                    continue
                raise RateLimited(f"Moltbook rate limited {endpoint}: retry after "
                                  f"{math.ceil(wait)} s{self._said(raw)}", wait)
            return self._reply(raw, endpoint)

    async def _send(self, method: str, url: str, data: bytes | None, endpoint: str) -> _Raw:
        headers = {"Accept": "application/json", "User-Agent": "entityd-moltbook"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        if self._key is not None and origin(url) == self.origin:
            headers["Authorization"] = f"Bearer {self._key}"
        started = time.monotonic()
        waited = 0.0
        status = 0
        try:
            if self.pacer is not None:
                async with self.pacer.slot() as slot:
                    raw = await asyncio.to_thread(self._exchange, method, url, data, headers)
                waited = slot.waited
            else:
                raw = await asyncio.to_thread(self._exchange, method, url, data, headers)
            status = raw.status
            return raw
        except TimeoutError:
            raise Unreachable(f"Moltbook did not answer {endpoint} within "
                              f"{self.timeout:g} s") from None
        except (OSError, http.client.HTTPException) as exc:
            raise Unreachable(f"cannot reach Moltbook at {show(self.origin)} for {endpoint}: "
                              f"{self._scrub(str(exc)) or type(exc).__name__}") from None
        finally:
            if self.audit is not None:
                await self.audit({"endpoint": endpoint, "status": status,
                                  "ms": round((time.monotonic() - started) * 1000),
                                  "paced_ms": round(waited * 1000)})

    def _exchange(self, method: str, url: str, data: bytes | None,
                  headers: dict[str, str]) -> _Raw:
        parts = urlsplit(url)
        host, port = parts.hostname or "", parts.port
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = http.client.HTTPSConnection(host, port or 443, timeout=self.timeout,
                                               context=self._ssl)
        else:
            conn = http.client.HTTPConnection(host, port or 80, timeout=self.timeout)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(method, target, body=data, headers=headers)
            response = conn.getresponse()
            body = response.read(MAX_BODY + 1)
            return _Raw(response.status, {k.lower(): v for k, v in response.getheaders()},
                        body)
        finally:
            conn.close()

    def _redirect(self, raw: _Raw, url: str, method: str, data: bytes | None,
                  endpoint: str, count: int) -> tuple[str, str, bytes | None]:
        location = raw.headers.get("location", "")
        if not location:
            raise ApiError(f"Moltbook answered {raw.status} to {endpoint} with no Location",
                           raw.status)
        target = _plain_target(url, location)
        if target is None:
            raise RedirectRefused(
                f"Moltbook redirected {endpoint} to a Location that is no plain URL "
                f"({self._scrub(location)[:80]!r}), not followed: the key goes only to "
                f"{show(self.origin)}. {WWW_NOTE}")
        if origin(target) != self.origin:
            raise RedirectRefused(
                f"Moltbook redirected {endpoint} to {show(origin(target))}, not followed: "
                f"the key goes only to {show(self.origin)}. {WWW_NOTE}")
        if count > MAX_REDIRECTS:
            raise ApiError(f"Moltbook redirected {endpoint} more than {MAX_REDIRECTS} times",
                           raw.status)
        if raw.status in (307, 308):
            return target, method, data
        if method in ("GET", "HEAD"):
            return target, method, None
        raise ApiError(f"Moltbook answered {raw.status} to {endpoint} (a {method}); "
                       "a redirect that would turn it into a GET is not followed", raw.status)

    def _reply(self, raw: _Raw, endpoint: str) -> Reply:
        if len(raw.body) > MAX_BODY:
            raise Unreachable(f"Moltbook's answer to {endpoint} is over {MAX_BODY} bytes")
        text = self._scrub(raw.body.decode("utf-8", "replace"))
        try:
            parsed = _loads(text) if text.strip() else {}
        except ValueError:
            raise Unreachable(f"Moltbook answered {raw.status} to {endpoint} with something "
                              f"that is not JSON: {text[:120]!r}") from None
        data = parsed if isinstance(parsed, dict) else {"data": parsed}
        if raw.status in (401, 403) and self._key is not None:
            raise KeyRefused(f"Moltbook refused the key for {endpoint} ({raw.status})"
                             f"{_error_of(data)}; check the key in the daemon's "
                             "environment or key file ([moltbook] api_key_env/api_key_file)")
        if raw.status >= 400 or data.get("success") is False:
            raise ApiError(f"Moltbook answered {raw.status} to {endpoint}{_error_of(data)}",
                           raw.status)
        return Reply(raw.status, data)

    def _said(self, raw: _Raw) -> str:
        try:
            data = _loads(self._scrub(raw.body.decode("utf-8", "replace")))
        except ValueError:
            return ""
        return _error_of(data) if isinstance(data, dict) else ""

    def _scrub(self, text: str) -> str:
        return text.replace(self._key, "***") if self._key else text


def _loads(text: str | bytes) -> Any:
    """JSON from the server, or ValueError (nested too deeply among the ways)."""
    return json_loads(text)


def _plain_target(url: str, location: str) -> str | None:
    """`location` resolved against `url`, or None when it is not a plain URL (see
    PLAIN_LOCATION) or does not parse."""
    if not PLAIN_LOCATION.fullmatch(location) or "\\" in location:
        return None
    try:
        target = urljoin(url, location)
        parts = urlsplit(target)
        parts.port  # noqa: B018 (raises ValueError on a port that is not one)
    except ValueError:
        return None
    if "@" in parts.netloc:
        return None
    return target


def _error_of(data: dict[str, Any]) -> str:
    error = data.get("error") or data.get("message") or ""
    hint = data.get("hint") or ""
    text = f": {str(error)[:300]}" if error else ""
    return text + (f" (hint: {str(hint)[:300]})" if hint else "")


def retry_after(raw: _Raw) -> float:
    """Seconds a 429 asks to wait: Retry-After (seconds or an HTTP date), else the body's
    retry_after_seconds or retry_after_minutes (Moltbook's documented fields)."""
    wait = _asked_wait(raw)
    return min(wait, MAX_RETRY_AFTER) if math.isfinite(wait) else MAX_RETRY_AFTER


def _asked_wait(raw: _Raw) -> float:
    header = raw.headers.get("retry-after", "").strip()
    if header:
        try:
            return max(0.0, float(header))
        except ValueError:
            pass
        try:
            when = email.utils.parsedate_to_datetime(header)
        except (TypeError, ValueError):
            when = None
        if when is not None:
            return max(0.0, when.timestamp() - time.time())
    try:
        data = _loads(raw.body or b"{}")
    except ValueError:
        data = {}
    if isinstance(data, dict):
        for field, scale in (("retry_after_seconds", 1.0), ("retry_after_minutes", 60.0)):
            value = data.get(field)
            if isinstance(value, int | float) and not isinstance(value, bool) and value >= 0:
                # (NaN fails `>= 0`; an infinite or overflowing one is capped by the caller)
                return float(value) * scale
    return DEFAULT_RETRY_AFTER
