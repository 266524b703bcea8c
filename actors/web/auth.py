"""Who may use the page: a login secret in the data dir, one-time login links, signed
session cookies and the CSRF token each session's state-changing requests carry.

Sessions are stateless (an HMAC under the secret over the session's expiry and id), so
a restarted web actor or daemon keeps its logged-in pages; rotating DATA_DIR/web.secret
logs every page out. A login link is good once, for LOGIN_TTL_S.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
import time
from pathlib import Path

SECRET_FILE = "web.secret"
COOKIE_PREFIX = "entityd_"  # + the entity: pages of two entities on one host differ by port only
CSRF_HEADER = "x-csrf-token"
LOGIN_TTL_S = 300.0
MAX_PENDING_LINKS = 16


def load_secret(data_dir: Path) -> bytes:
    """DATA_DIR/web.secret (made on first use, mode 0600): what signs sessions, and what a
    person with the data dir may paste into the login form."""
    path = data_dir / SECRET_FILE
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return text.encode()


class Sessions:
    """Issues and checks session cookies and their CSRF tokens."""

    def __init__(self, secret: bytes, hours: float, entity: str) -> None:
        self.cookie = COOKIE_PREFIX + entity.replace("-", "_")
        self._key = hashlib.sha256(b"entityd/web/session\x00" + secret).digest()
        self._secret = secret
        self.lifetime = hours * 3600.0

    def issue(self, now: float | None = None) -> str:
        expires = int((now or time.time()) + self.lifetime)
        body = f"{expires}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(b'session', body)}"

    def valid(self, cookie: str | None, now: float | None = None) -> bool:
        if not cookie or cookie.count(".") != 2:
            return False
        body, _, mac = cookie.rpartition(".")
        if not _same(mac, self._mac(b"session", body)):
            return False
        expires = body.split(".", 1)[0]
        return expires.isascii() and expires.isdigit() and int(expires) > (now or time.time())

    def csrf(self, cookie: str) -> str:
        return self._mac(b"csrf", cookie)

    def csrf_ok(self, cookie: str, token: str | None) -> bool:
        return bool(token) and _same(self.csrf(cookie), token or "")

    def secret_ok(self, offered: str) -> bool:
        return hmac.compare_digest(offered.strip().encode(), self._secret)

    def _mac(self, purpose: bytes, text: str) -> str:
        return hmac.new(self._key, purpose + b"\x00" + text.encode(), "sha256").hexdigest()


def _same(ours: str, theirs: str) -> bool:
    """Equal, in constant time. `theirs` comes from a request and may hold any character,
    which compare_digest refuses in a str (TypeError): compare the bytes."""
    return hmac.compare_digest(ours.encode("utf-8", "surrogatepass"),
                               theirs.encode("utf-8", "surrogatepass"))


class LoginLinks:
    """One-time login tokens: minted for `entityctl web`, each redeemed at most once; and
    the port the page got when web.port is 0.

    Held by the assembly, not the actor, so a link and the port survive a restart of the
    web actor: an open page reconnects to the same address.
    """

    def __init__(self) -> None:
        self._pending: dict[str, float] = {}
        self.port = 0  # the port bound first, kept for the next instance of the actor

    def mint(self, now: float | None = None) -> str:
        now = now or time.time()
        self._pending = {t: e for t, e in self._pending.items() if e > now}
        while len(self._pending) >= MAX_PENDING_LINKS:
            self._pending.pop(next(iter(self._pending)))
        token = secrets.token_urlsafe(24)
        self._pending[token] = now + LOGIN_TTL_S
        return token

    def redeem(self, token: str, now: float | None = None) -> bool:
        expires = self._pending.pop(token, None)
        return expires is not None and expires > (now or time.time())
