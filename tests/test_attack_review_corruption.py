"""Attack review of damaged state on disk: what entity-a's daemon does at its next start
when a file it reads back was torn by a power cut, truncated, emptied, had bytes flipped,
became a directory, or came from another version of entityd.

entity-a (its page on) and entity-b run on a hub (bench.rig, the scripted model server,
not a model). entity-a's data dir, with a todo, a goal, a payment and a logged-in page,
is copied once while the daemon is stopped; each case puts that copy back, damages one
file, starts the daemon and reads what it does: its exit code, its log (stderr), and what
entityctl, the page and a raw NATS client get. The outcomes that are right: it starts and
rebuilds or ignores a cache, saying so; or it refuses to start with exit 2 and one line
naming the file and the fix, no traceback; or it serves what is intact and says what is
not. Found, each fixed where its class lives (each test failed before its fix):

- A damaged SQLite store (memory, goals or peers .sqlite3: a garbled header, a file torn
  in half, one written by a newer entityd, a directory in its place) crashed its actor in
  on_start, six tracebacks in the log, then exit 1: under systemd's Restart=on-failure a
  crash loop for ever, naming neither the file nor the fix; the same for DATA_DIR/services
  made a file and web.secret or web.revoked made a directory or not UTF-8. Now such a
  file is `DamagedFile` (entityd.errors: names the file and the fix), raised where the
  stores open (actors/state_file.py `opened`, for every SQLite store) and the page's and
  services' files are read; the supervisor does not restart an actor on it but stops the
  daemon, which exits 2 with the message (so do a bad key or config met after the start).
- A zero-length store was taken as a new one silently: it still opens (a power cut right
  after the file was made leaves one), but a warning names it (`state_file_was_empty`).
- keys/entity.key or keys/nats.token not UTF-8 or a directory, and entityd.toml with a byte
  that is not UTF-8: a traceback and exit 1; now exit 2 naming the file and the fix.
- keys/entity.key with one hex digit flipped (another valid key) started the daemon under
  a new identity, silently: the key is now checked against entity.pub (exit 2).
- keys/nats.token of zero length made nats-server take clients with no token at all: a
  token that is not 64 hex digits is made again at the start (a warning says so;
  entityctl refuses one with the fix).
- web.secret of zero length let anyone forge a session: a secret under 32 characters is
  refused (exit 2, the fix: delete it and the daemon makes one).
- ledger.checkpoint made a directory crash-looped the ledger actor: now it is not used
  (a warning) and the books are replayed.
- ledger.checkpoint with a balance changed was trusted (1,000,000 available where the
  LEDGER said 493, and a payment of 600 went onto the federation's LEDGER as an
  overdraft): the checkpoint now carries the digest of what it holds, and its books must
  pass their audit (they add up to the supply) before they are used, so a change with its
  digest made again is refused too (a consistent change of two balances with a new digest
  is not caught: whoever can write the data dir can read the key beside it).
- keys/hub.nk damaged: exit 2 now, and the message gives the fix.

Held: a zero-length keys/entity.key is refused with exit 2 naming the file, and neither
the key nor entity.pub is regenerated; an empty entityd.toml is refused with exit 2 naming
the missing key; a garbled, emptied or torn ledger.checkpoint is not used (its reason
logged) and the balance replayed from the LEDGER is right; a garbled web.revoked logs
every page out with a warning (`web_sessions_reset`) rather than letting a logged-out
cookie back in; a garbled INBOX stream's metadata is dropped by nats-server (a warning in
DATA_DIR/nats/nats-server.log only) and the INBOX made again takes a peer's report; a
WAL torn after a kill -9 leaves the store whole, with what was written before.

Not tried: a file the daemon's user cannot read (the tests run as root, which reads
everything); messages waiting in an INBOX whose stream metadata is damaged (nats-server
drops the stream with them; the daemon does not notice).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import os
import secrets
import shutil
import signal
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import msgpack
import pytest
import pytest_asyncio

from bench.rig import READY, Federation, Member, edit, enable_web
from tests.helpers import free_port, funded, money, poll, scripted_federation, stopped
from tests.peer_model import route
from tests.web_helpers import log_in, request

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

A, B = "entity-a", "entity-b"
STREAMS = Path("nats/jetstream/jetstream/$G/streams")
START_WITHIN_S = 30.0  # from `entityd run` to ready, or to its exit


def copied(source: Path, to: Path) -> None:
    """`source` copied to `to` with its modes and owners (the workspace is the sandbox's)."""
    subprocess.run(["cp", "-a", str(source), str(to)], check=True)


@dataclass
class Start:
    """What one start of entity-a's daemon on a damaged data dir did."""

    code: int | None  # its exit code; None: it is serving
    said: str  # its log (stderr) from this start on

    def refused(self, name: str) -> bool:
        """Exit 2, the file named, no traceback: outcome (b)."""
        return self.code == 2 and name in self.said and "Traceback" not in self.said

    def warned(self, name: str) -> bool:
        """Serving, with a warning or error line naming the file: outcome (a) or (c)."""
        return self.code is None and "Traceback" not in self.said and any(
            name in line and ('"warning"' in line or '"error"' in line)
            for line in self.said.splitlines())

    def brief(self) -> str:
        return f"exit {self.code}: {self.said[-1500:]}"


@dataclass
class Rig:
    fed: Federation
    pristine: Path  # entity-a's data dir as it was, copied while the daemon was stopped
    cookie: str  # a session of entity-a's page logged in before the copy
    web_url: str
    truth: tuple[int, int]  # entity-a's (available, held) on the LEDGER
    mark: int = 0  # the length of entity-a's log at its last start by `damaged`

    @property
    def a(self) -> Member:
        return self.fed[A]

    @property
    def b(self) -> Member:
        return self.fed[B]

    def running(self) -> bool:
        proc = self.a.daemon.proc
        return proc is not None and proc.poll() is None

    async def restore(self) -> None:
        """entity-a stopped, its data dir the pristine copy again (owners kept: cp -a)."""
        if self.running():
            await stopped(self.a)
        shutil.rmtree(self.a.data)
        await asyncio.to_thread(copied, self.pristine, self.a.data)

    async def damaged(self, damage: Callable[[Path], object]) -> Start:
        """entity-a started on the pristine data dir with `damage` done to it."""
        await self.restore()
        damage(self.a.data)
        daemon = self.a.daemon
        self.mark = mark = len(daemon.log())
        self.a.start()
        deadline = time.monotonic() + START_WITHIN_S
        while time.monotonic() < deadline:
            said = daemon.log()[mark:]
            assert daemon.proc is not None
            code = daemon.proc.poll()
            if code is not None:
                return Start(code, daemon.log()[mark:])
            if READY in said:
                return Start(None, said)
            await asyncio.sleep(0.1)
        raise AssertionError(f"entity-a neither ready nor exited: {daemon.log()[mark:][-2000:]}")

    def said(self) -> str:
        """entity-a's log since its last start by `damaged`."""
        return self.a.daemon.log()[self.mark:]


def prepare(fed: Federation) -> None:
    enable_web(fed[A].config, free_port())  # a fixed port: the page's URL outlives restarts
    # A crash loop ends in a second or two rather than in a minute: the same exit.
    edit(fed[A].config, "backoff_max = 10.0 ", "backoff_max = 0.2 ")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("corruption")
    async with scripted_federation(root, [A, B], route, prepare=prepare) as fed:
        await fed.discovered()
        await funded(fed, entity_a=500, entity_b=500)
        a = fed[A]
        assert (await a.ctl("todo", "--add", "stored before the damage"))[0] == 0
        code, out, err = await a.ctl("ask", "hello before the damage")
        assert code == 0, out + err
        code, out, err = await a.ctl("pay", B, "7")
        assert code == 0, out + err
        truth = await money(a)
        page = await log_in(a)
        assert await stopped(a) == 0
        pristine = root / "pristine"
        await asyncio.to_thread(copied, a.data, pristine)
        rig = Rig(fed, pristine, page.cookie, page.url, truth)
        try:
            yield rig
        finally:
            # The federation stops its members and wants exit 0 of each: entity-a whole.
            await rig.restore()
            a.start()
            await a.ready()


# ---- damage ---------------------------------------------------------------------------


def garbled(name: str, at: int = 0, size: int = 100) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        with open(data / name, "r+b") as out:
            out.seek(at)
            out.write(bytes(range(1, size + 1)))
    return damage


def cut(name: str, to: float) -> Callable[[Path], None]:
    """The file cut to `to` of its length (0: empty), as a torn write leaves it."""
    def damage(data: Path) -> None:
        path = data / name
        os.truncate(path, int(path.stat().st_size * to))
    return damage


def written(name: str, content: bytes) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        (data / name).write_bytes(content)
    return damage


def directory(name: str) -> Callable[[Path], None]:
    """A directory (0700, so no mode check catches it first) where the file was."""
    def damage(data: Path) -> None:
        path = data / name
        if path.is_dir():
            shutil.rmtree(path)
        path.unlink(missing_ok=True)
        path.mkdir(mode=0o700)
    return damage


def file_instead(name: str) -> Callable[[Path], None]:
    def damage(data: Path) -> None:
        shutil.rmtree(data / name)
        (data / name).write_text("not a directory\n")
    return damage


def newer_schema(data: Path) -> None:
    with contextlib.closing(sqlite3.connect(data / "memory.sqlite3")) as db:
        db.execute("PRAGMA user_version = 99")
        db.commit()


def flipped_key(data: Path) -> None:
    """One hex digit of the seed changed: still 32 bytes, another key."""
    path = data / "keys" / "entity.key"
    text = path.read_text()
    path.write_text(text[:10] + ("1" if text[10] != "1" else "2") + text[11:])


def richer_checkpoint(digest: bool) -> Callable[[Path], None]:
    """entity-a's available balance in the checkpoint made 1,000,000; the chain heads it
    names are left as they were, so it still matches the stream. With `digest`, the
    checkpoint's digest is made again to match (as a careful hand would): its books must
    still be refused, since they no longer add up."""
    def damage(data: Path) -> None:
        path = data / "ledger.checkpoint"
        outer = msgpack.unpackb(path.read_bytes(), raw=False)
        kept = msgpack.unpackb(outer["body"], raw=False)
        books = msgpack.unpackb(kept["books"], raw=False, strict_map_key=False)
        account = next(acc for acc in books["accounts"] if acc[0] == A)
        account[4] = 1_000_000  # available
        kept["books"] = msgpack.packb(books, use_bin_type=True)
        outer["body"] = msgpack.packb(kept, use_bin_type=True)
        if digest:
            outer["digest"] = hashlib.blake2b(outer["body"], digest_size=32,
                                              person=b"entityd-ckpt").digest()
        path.write_bytes(msgpack.packb(outer, use_bin_type=True))
    return damage


# ---- a damaged store: refused with a message, not a crash loop ---------------------------


@pytest.mark.parametrize(("name", "damage"), [
    ("memory.sqlite3", garbled("memory.sqlite3")),
    ("memory.sqlite3", cut("memory.sqlite3", 0.5)),
    ("memory.sqlite3", newer_schema),
    ("memory.sqlite3", directory("memory.sqlite3")),
    ("goals.sqlite3", garbled("goals.sqlite3")),
    ("peers.sqlite3", garbled("peers.sqlite3")),
], ids=["memory-garbled", "memory-torn", "memory-newer", "memory-a-directory",
        "goals-garbled", "peers-garbled"])
async def test_a_damaged_store_is_refused_naming_it(rig: Rig, name: str,
                                                     damage: Callable[[Path], None]) -> None:
    start = await rig.damaged(damage)
    assert start.refused(name), start.brief()


@pytest.mark.parametrize("name", ["memory.sqlite3", "goals.sqlite3", "peers.sqlite3"])
async def test_a_zero_length_store_is_not_silently_taken_as_a_new_one(rig: Rig,
                                                                      name: str) -> None:
    start = await rig.damaged(cut(name, 0))
    assert start.refused(name) or start.warned(name), start.brief()


@pytest.mark.parametrize(("name", "damage"), [
    ("services", file_instead("services")),
    ("web.secret", directory("web.secret")),
    ("web.secret", written("web.secret", b"\xff\xfe\n")),
    ("web.revoked", directory("web.revoked")),
], ids=["services-a-file", "web-secret-a-directory", "web-secret-not-utf8",
        "web-revoked-a-directory"])
async def test_a_path_of_the_wrong_kind_is_refused_naming_it(
        rig: Rig, name: str, damage: Callable[[Path], None]) -> None:
    start = await rig.damaged(damage)
    assert start.refused(name) or start.warned(name), start.brief()


# ---- keys and config ---------------------------------------------------------------------


async def test_an_empty_key_is_refused_and_not_made_again(rig: Rig) -> None:
    """Held: exit 2, one line naming the file; the key stays as it was (no new identity)."""
    public = (rig.pristine / "entity.pub").read_text()
    start = await rig.damaged(written("keys/entity.key", b""))
    assert start.refused("keys/entity.key"), start.brief()
    assert (rig.a.data / "keys" / "entity.key").read_bytes() == b""
    assert (rig.a.data / "entity.pub").read_text() == public


@pytest.mark.parametrize(("name", "damage"), [
    ("keys/entity.key", written("keys/entity.key", b"\xff\xfe not hex\n")),
    ("keys/entity.key", directory("keys/entity.key")),
    ("keys/nats.token", directory("keys/nats.token")),
], ids=["key-not-utf8", "key-a-directory", "token-a-directory"])
async def test_a_key_that_cannot_be_read_is_refused_naming_it(
        rig: Rig, name: str, damage: Callable[[Path], None]) -> None:
    start = await rig.damaged(damage)
    assert start.refused(name), start.brief()


async def test_a_local_token_that_is_no_token_is_made_again_and_said(rig: Rig) -> None:
    """The token is no identity (entityctl reads the file at each call): one that is not
    64 hex digits is replaced at the start, with a warning naming the file."""
    start = await rig.damaged(written("keys/nats.token", b"\xff\xfe\n"))
    assert start.warned("nats.token"), start.brief()
    code, out, err = await rig.a.ctl("status")
    assert code == 0, out + err


async def test_a_key_that_changed_is_refused(rig: Rig) -> None:
    start = await rig.damaged(flipped_key)
    if start.code is None:
        code, out, err = await rig.a.ctl("status")
        start.said += f"\nentityctl status: {code}: {out}{err}"
    assert start.refused("entity.key"), start.brief()


async def test_an_empty_local_token_does_not_open_the_local_bus(rig: Rig) -> None:
    start = await rig.damaged(written("keys/nats.token", b""))
    if start.code is not None:
        assert start.refused("keys/nats.token"), start.brief()
        return
    assert start.warned("nats.token"), start.brief()  # made again, and said so
    # A client with no token, in NATS's own words (a raw socket: nats-py leaves its
    # transport open when a login is refused).
    reader, writer = await asyncio.open_connection("127.0.0.1", rig.a.port)
    try:
        assert (await reader.readline()).startswith(b"INFO ")
        writer.write(b'CONNECT {"verbose":false,"pedantic":false}\r\nPING\r\n')
        await writer.drain()
        async with asyncio.timeout(5):
            answer = await reader.readline()
    finally:
        writer.close()
        await writer.wait_closed()
    assert answer.startswith(b"-ERR") and b"Authorization" in answer, answer


async def test_a_config_that_is_not_utf8_is_refused_naming_it(rig: Rig) -> None:
    def damage(data: Path) -> None:
        path = data / "entityd.toml"
        path.write_bytes(path.read_bytes() + b"\n# \xff\xfe\n")
    start = await rig.damaged(damage)
    assert start.refused("entityd.toml"), start.brief()


async def test_an_empty_config_is_refused_naming_the_key(rig: Rig) -> None:
    start = await rig.damaged(written("entityd.toml", b""))
    assert start.refused("entity.name"), start.brief()


async def test_a_damaged_hub_login_key_exits_2(rig: Rig) -> None:
    start = await rig.damaged(written("keys/hub.nk", b"garbage\n"))
    assert start.refused("hub.nk"), start.brief()


# ---- the page's files ---------------------------------------------------------------------


def forged_cookie(secret: bytes) -> str:
    """A session cookie of entity-a's page made with `secret` (actors/web/auth.py)."""
    key = hashlib.sha256(b"entityd/web/session\x00" + secret).digest()
    body = f"{int(time.time()) + 3600}.{secrets.token_hex(16)}"
    mac = hmac.new(key, b"session\x00" + body.encode(), "sha256").hexdigest()
    return f"entityd_{A.replace('-', '_')}={body}.{mac}"


async def test_an_empty_web_secret_lets_no_one_in(rig: Rig) -> None:
    start = await rig.damaged(written("web.secret", b""))
    if start.code is not None:
        assert start.refused("web.secret"), start.brief()
        return
    page = await request(rig.web_url, "GET", "/api/todo",
                         headers={"Cookie": forged_cookie(b"")})
    assert page.status in (401, 403), f"a forged cookie got {page.status}: {page.text[:200]}"


async def test_a_garbled_revocation_list_logs_every_page_out(rig: Rig) -> None:
    """Held: web.revoked unreadable, every session of its time is void (a warning says
    so), rather than a logged-out cookie let back in."""
    start = await rig.damaged(written("web.revoked", b"{torn"))
    assert start.code is None, start.brief()
    await poll(lambda: '"web_sessions_reset"' in rig.said(), timeout=10,
               what="web_sessions_reset")
    page = await request(rig.web_url, "GET", "/api/todo", headers={"Cookie": rig.cookie})
    assert page.status in (401, 403), page.status


# ---- the ledger's checkpoint (a cache) and the JetStream store ---------------------------


@pytest.mark.parametrize("damage", [
    garbled("ledger.checkpoint", 0, 50), cut("ledger.checkpoint", 0),
    cut("ledger.checkpoint", 0.5)], ids=["garbled", "empty", "torn"])
async def test_a_damaged_checkpoint_is_replayed_from_the_ledger(
        rig: Rig, damage: Callable[[Path], None]) -> None:
    start = await rig.damaged(damage)
    assert start.code is None, start.brief()
    assert await money(rig.a) == rig.truth
    said = rig.said()
    assert '"used": false' in said and "the checkpoint cannot be used" in said, said[-2000:]


async def test_a_checkpoint_that_is_a_directory_is_ignored(rig: Rig) -> None:
    start = await rig.damaged(directory("ledger.checkpoint"))
    assert start.warned("ledger.checkpoint"), start.brief()
    assert await money(rig.a) == rig.truth


async def test_a_garbled_inbox_stream_is_made_again_and_takes_a_report(rig: Rig) -> None:
    """Held: nats-server drops a stream whose metadata fails its checksum (a warning in
    DATA_DIR/nats/nats-server.log), the daemon makes the INBOX again, and a peer's report
    arrives."""
    start = await rig.damaged(garbled(str(STREAMS / f"INBOX-{A}" / "meta.inf"), 0, 20))
    assert start.code is None, start.brief()
    code, out, err = await rig.b.ctl("report", A, "report after the damage")
    assert code == 0, out + err

    async def remembered() -> bool:
        code, out, _ = await rig.a.ctl("memory", "search", "report after the damage")
        return code == 0 and "report after the damage" in out

    await poll(remembered, timeout=20, what="entity-b's report reaching entity-a")


async def test_a_wal_torn_after_a_kill_leaves_the_store_whole(rig: Rig) -> None:
    """Held: SQLite's WAL checksums drop a torn tail; what was written before is there."""
    await rig.restore()
    rig.a.start()
    await rig.a.ready()
    for n in range(20):
        assert (await rig.a.ctl("todo", "--add", f"in the wal {n}"))[0] == 0
    assert rig.a.daemon.proc is not None
    rig.a.daemon.proc.send_signal(signal.SIGKILL)
    await asyncio.to_thread(rig.a.daemon.proc.wait, 10)
    wal = rig.a.data / "memory.sqlite3-wal"
    assert wal.exists() and wal.stat().st_size > 0
    os.truncate(wal, wal.stat().st_size // 2)
    rig.a.start()
    await rig.a.ready()
    code, out, err = await rig.a.ctl("todo")
    assert code == 0 and "stored before the damage" in out, out + err
    with contextlib.closing(sqlite3.connect(
            f"file:{rig.a.data / 'memory.sqlite3'}?mode=ro", uri=True)) as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]


# Last: an overdraft let through (as it was, by hand) would make `ledger verify` say
# VIOLATED for the whole federation.
@pytest.mark.parametrize("digest", [False, True], ids=["digest-left", "digest-made-again"])
async def test_an_altered_checkpoint_changes_no_balance(rig: Rig, digest: bool) -> None:
    start = await rig.damaged(richer_checkpoint(digest))
    assert start.warned("ledger_checkpoint"), start.brief()
    assert start.code is None, start.brief()
    assert await money(rig.a) == rig.truth
    code, out, err = await rig.a.ctl("pay", B, str(rig.truth[0] + 100))
    assert code != 0, out + err
    code, out, err = await rig.a.ctl("ledger", "verify")
    assert code == 0, out + err
