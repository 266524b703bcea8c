"""Who may use the page: a login secret in the data dir, one-time login links, signed
session cookies and the CSRF token each session's state-changing requests carry.

Sessions are an HMAC under the secret over the session's expiry and id, so a restarted
web actor or daemon keeps its logged-in pages; rotating DATA_DIR/web.secret logs every
page out. Logging out ends that one session for good, every copy of its cookie: its id
is kept in DATA_DIR/web.revoked until it would have expired. A login link is good once,
for LOGIN_TTL_S.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
import time
from pathlib import Path

from entityd import DamagedFile

from ..private_file import replace_private

SECRET_FILE = "web.secret"
MIN_SECRET_CHARS = 32
REVOKED_FILE = "web.revoked"  # {session id: when it would have expired}, JSON
MAX_REVOKED = 4096  # sessions logged out and not yet expired; past it, the floor rises
FLOOR = "*"  # in REVOKED_FILE: sessions expiring at or before this are all void
COOKIE_PREFIX = "entityd_"  # + the entity: pages of two entities on one host differ by port only
CSRF_HEADER = "x-csrf-token"
LOGIN_TTL_S = 300.0
MAX_PENDING_LINKS = 16


def load_secret(data_dir: Path) -> bytes:
    """DATA_DIR/web.secret (made on first use, mode 0600): what signs sessions, and what a
    person with the data dir may paste into the login form."""
    path = data_dir / SECRET_FILE
    fix = (f"delete it (the daemon makes a new one at its start) or write a random secret "
           f"of at least {MIN_SECRET_CHARS} characters in it")
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        text = secrets.token_hex(32)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.write(text + "\n")
    except (OSError, UnicodeDecodeError) as exc:
        problem = "not a file" if path.is_dir() else f"cannot be read ({exc})"
        raise DamagedFile(path, problem, fix) from None
    # An empty or short secret would sign sessions anyone could forge, and let anyone in.
    if len(text) < MIN_SECRET_CHARS:
        raise DamagedFile(path, f"holds {len(text)} characters, fewer than the "
                          f"{MIN_SECRET_CHARS} a secret needs", fix)
    if path.stat().st_mode & 0o077:
        os.chmod(path, 0o600)
    return text.encode()


class Sessions:
    """Issues and checks session cookies and their CSRF tokens; ends a session at its
    log out (kept in `revoked`, a file, when given)."""

    def __init__(self, secret: bytes, hours: float, entity: str,
                 revoked: Path | None = None) -> None:
        self.cookie = COOKIE_PREFIX + entity.replace("-", "_")
        self._key = hashlib.sha256(b"entityd/web/session\x00" + secret).digest()
        self._secret = secret
        self.lifetime = hours * 3600.0
        self._revoked_file = revoked
        self._unsaved = False  # a log out not yet written (the disk was full)
        self._revoked, self.damaged = _read_revoked(revoked)
        # Cookies expiring at or before this are void: every session of a time when what
        # was logged out cannot be read back (a damaged file) is logged out with them.
        self._floor = self._revoked.pop(FLOOR, 0)
        if self.damaged:
            self._floor = int(time.time() + self.lifetime)
            self._save()

    def issue(self, now: float | None = None) -> str:
        expires = max(int((now or time.time()) + self.lifetime), self._floor + 1)
        body = f"{expires}.{secrets.token_hex(16)}"
        return f"{body}.{self._mac(b'session', body)}"

    def valid(self, cookie: str | None, now: float | None = None) -> bool:
        return self._session(cookie, now) is not None

    def revoke(self, cookie: str | None, now: float | None = None) -> bool:
        """End a valid session for good, for every copy of its cookie (a log out)."""
        session = self._session(cookie, now)
        if session is None:
            return False
        expires, session_id = session
        moment = now or time.time()
        kept = {sid: until for sid, until in self._revoked.items() if until > moment}
        while len(kept) >= MAX_REVOKED:
            # Forgetting one would let it back in: void every cookie expiring by then.
            soonest = min(kept, key=kept.__getitem__)
            self._floor = max(self._floor, kept.pop(soonest))
        kept[session_id] = expires
        self._revoked = kept
        self._unsaved = True
        self.flush()
        return True

    @property
    def unsaved(self) -> bool:
        """A log out is not written yet (the disk was full): a restart now would undo it."""
        return self._unsaved

    def flush(self) -> bool:
        """Write the log outs not written yet; False while that fails (a full disk): they
        hold meanwhile, and are written at the next request or when the page stops, so a
        restart after the disk has room does not let a logged-out cookie back in."""
        if not self._unsaved:
            return True
        try:
            self._save()
        except OSError:
            return False
        self._unsaved = False
        return True

    def _save(self) -> None:
        if self._revoked_file is not None:
            floor = {FLOOR: self._floor} if self._floor else {}
            replace_private(self._revoked_file, json.dumps({**self._revoked, **floor}))

    def _session(self, cookie: str | None, now: float | None) -> tuple[int, str] | None:
        """A valid cookie's expiry and session id (None: not a live session of ours)."""
        if self._unsaved:
            self.flush()
        if not cookie or cookie.count(".") != 2:
            return None
        body, _, mac = cookie.rpartition(".")
        if not _same(mac, self._mac(b"session", body)):
            return None
        expires, _, session_id = body.partition(".")
        if not (expires.isascii() and expires.isdigit()
                and int(expires) > max(now or time.time(), self._floor)):
            return None
        if session_id in self._revoked:
            return None
        return int(expires), session_id

    def csrf(self, cookie: str) -> str:
        return self._mac(b"csrf", cookie)

    def csrf_ok(self, cookie: str, token: str | None) -> bool:
        return bool(token) and _same(self.csrf(cookie), token or "")

    def secret_ok(self, offered: str) -> bool:
        return hmac.compare_digest(offered.strip().encode(), self._secret)

    def _mac(self, purpose: bytes, text: str) -> str:
        return hmac.new(self._key, purpose + b"\x00" + text.encode(), "sha256").hexdigest()


def _read_revoked(path: Path | None) -> tuple[dict[str, int], str]:
    """The sessions logged out, from `path` (none when it is missing), and what is wrong
    with it when it cannot be read as written ('' when nothing is)."""
    if path is None:
        return {}, ""
    if path.is_dir():  # no log out could be written there either
        raise DamagedFile(path, "not a file", "remove it: the daemon then starts a new one "
                          "(every page logged in before is logged out)")
    try:
        revoked = json.loads(path.read_bytes())
        if not (isinstance(revoked, dict) and all(
                isinstance(k, str) and type(v) is int for k, v in revoked.items())):
            raise ValueError("not a JSON object of session ids and times")
    except FileNotFoundError:
        return {}, ""
    except (OSError, ValueError) as exc:  # UnicodeDecodeError is a ValueError
        return {}, f"{path} cannot be read ({exc})"
    return revoked, ""


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
