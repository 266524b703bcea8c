"""Attack review of a full disk (ENOSPC) under a running entity.

entity-a's data dir (its SQLite files, the embedded nats-server's JetStream store, the
workspace, keys, web.revoked) is a 64 MiB tmpfs of its own; entity-b, the hub and every
log live beside it. A big file fills it, as a hostile agent, a peer's deliverables or
anything else on the machine can, and then entity-a is driven as people and peers drive
it: entityctl, a peer's talk and report, a payment, its web page; then the file goes
and entity-a must carry on by itself. Found:

- SQLite's "database or disk is full" (sqlite3.OperationalError) escapes the memory actor
  (`todo --add`) and the orchestrator (a goal: GoalStore.add in Orchestrator._accept,
  actors/orchestrator.py:184; a peer's talk too): each is a crash, so six requests within
  a minute, even a peer's talks, exit the daemon (restart_budget), and the user reads
  "actor_crashed: memory failed: OperationalError" instead of "the disk is full".
- The embedded nats-server does not get over ENOSPC: either it disables JetStream for
  good ("JetStream out of space, will be DISABLED"), or (also seen, run to run) the
  stream's file store keeps its write error and refuses every later store with "no space
  left on device" though the space is back. Either way INBOX and EVENTS take nothing until
  the daemon restarts: peers' reports and delegations wait in their outboxes (kept, not
  lost), the page's feed and `watch --since` are dead, and nothing in entityd notices
  (the peer actor logs `inbox_not_maintained` every 15 s, and that is all).
- SIGTERM while the disk is full exits 1 with a traceback: the ledger's checkpoint (a file
  "safe to delete") raises OSError from replace_private on stop, and the memory store's
  `PRAGMA optimize` on close raises OperationalError.
- A log out while the disk is full is said done, but web.revoked is not written (the
  OSError is swallowed): after a restart the cookie that was logged out is good again.

Fixed: the supervisor answers a request that met a full disk (an OSError ENOSPC/EDQUOT,
SQLite's FULL or IOERR, wherever wrapped: entityd.errors.disk_full) with `unavailable`
saying the disk is full, and the actor goes on (no crash, no restart budget spent); the
ledger's checkpoint is skipped with a warning when it cannot be written, `PRAGMA optimize`
on close is best effort; a log out that cannot be written ends the session in that run and
says so (503), written at the next request or at stop once there is room. The embedded
nats-server keeps a stream's write error until it restarts: the daemon watches its store's
disk (entityd.storewatch) and restarts itself once it met a full disk and has room again.

Held: reads, status, a payment (the LEDGER is on the hub) and the page's API while full;
a peer's report refused by the INBOX is kept in the peer's outbox and delivered after the
restart; every SQLite file passes integrity_check, `ledger verify` passes, the workspace
passes git fsck, and what was stored before the fill is all there after it.

Real daemons on a real hub and leaves (bench.rig), the scripted model server (not a
model), entityctl for every request. Root is needed to mount the tmpfs.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import subprocess
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import nats
import pytest
import pytest_asyncio

from actors.llm.scripted import ScriptedLLMServer
from actors.peer.link import inbox_stream
from actors.peer.messages import TaskOffer
from bench.rig import READY, Federation, Member, edit, enable_web
from tests.helpers import (
    DaemonProc,
    command_into_inbox,
    free_port,
    funded,
    poll,
    scripted_federation,
    stopped,
    task_by_id,
)
from tests.peer_model import route
from tests.test_agent_e2e import entityctl, make_entity_config
from tests.web_helpers import Session, log_in

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

A, B = "entity-a", "entity-b"
SIZE = "64m"
FILLER = "filler.bin"


def fill(path: Path) -> int:
    """Write zeros to `path` until the file system refuses more; bytes written."""
    written = 0
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            chunk = b"\0" * size
            while True:
                try:
                    written += out.write(chunk) or 0
                except OSError:
                    break
    return written


@contextlib.contextmanager
def tmpfs(where: Path) -> Iterator[Path]:
    """A tmpfs of SIZE mounted at `where` (made), unmounted after; skips without root."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs for the data dir needs root")
    where.mkdir(parents=True)
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE},mode=0755", "tmpfs",
                              str(where)], capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    try:
        yield where
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


def git_fsck(workspace: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "-c", f"safe.directory={workspace}", "fsck", "--strict"],
                          cwd=workspace, capture_output=True, text=True)


@dataclass
class Rig:
    fed: Federation
    mount: Path
    page: Session | None = None
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def a(self) -> Member:
        return self.fed[A]

    @property
    def b(self) -> Member:
        return self.fed[B]

    @contextlib.asynccontextmanager
    async def full(self) -> AsyncIterator[None]:
        """entity-a's disk full for the block's length. Its daemon sees it (asserted: it
        says so), and once the space is back it restarts by itself (asserted too: its
        JetStream store may have met the full disk), unless the block stopped it."""
        daemon = self.a.daemon
        saw, restarted, ready = (daemon.log().count(needle) for needle in (
            '"nats_store_disk_full"', '"entityd_restarting"', READY))
        filler = self.mount / FILLER
        assert fill(filler) > 0
        try:
            await asyncio.to_thread(daemon.wait_log, '"nats_store_disk_full"', 10, saw + 1)
            yield
        finally:
            filler.unlink(missing_ok=True)
        if daemon.proc is not None and daemon.proc.poll() is None:
            await asyncio.to_thread(daemon.wait_log, '"entityd_restarting"', 40,
                                    restarted + 1)
            await asyncio.to_thread(daemon.wait_log, READY, 60, ready + 1)

    async def restarts(self) -> dict[str, int]:
        status = await self.a.ctl_json("status", timeout=20)
        return {actor["name"]: actor["restarts"] for actor in status["actors"]}

    def log_since(self, mark: int) -> str:
        return self.a.daemon.log()[mark:]


def prepare(fed: Federation) -> None:
    """entity-a's page on; a restart budget wide enough that the crashes found here are
    counted, not fatal to the one daemon every case shares (the budget's kill is what a
    crash costs with the shipped 5 a minute)."""
    config = fed[A].config
    enable_web(config, free_port())  # the same after a restart: the session's URL
    edit(config, "restart_budget = 5 ", "restart_budget = 1000 ")
    edit(config, "backoff_max = 10.0 ", "backoff_max = 0.2 ")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    root = tmp_path_factory.mktemp("diskfull")
    with tmpfs(root / A) as mount:
        async with scripted_federation(root, [A, B], route, prepare=prepare) as fed:
            # Whatever a case leaves, the federation stops with room on the disk.
            with contextlib.ExitStack() as cleanup:
                cleanup.callback((mount / FILLER).unlink, missing_ok=True)
                await fed.discovered()
                await funded(fed, entity_a=500, entity_b=500)
                rig = Rig(fed, mount)
                # What is stored before the disk fills, to find intact after.
                assert (await rig.a.ctl("todo", "--add", "stored before the fill"))[0] == 0
                code, out, err = await rig.a.ctl("ask", "hello before the fill")
                assert code == 0, out + err
                code, out, err = await rig.a.ctl("pay", B, "7")
                assert code == 0, out + err
                rig.page = await log_in(rig.a)
                yield rig


# ---- while the disk is full: refused with a clear error, no actor crashes -------------


def refused_clearly(code: int, out: str, err: str) -> None:
    said = (out + err).lower()
    assert code != 0, out + err
    assert "traceback" not in said, said
    assert "disk" in said or "space" in said, said


async def test_a_todo_added_while_full_is_refused_and_crashes_nothing(rig: Rig) -> None:
    before = await rig.restarts()
    async with rig.full():
        code, out, err = await rig.a.ctl("todo", "--add", "while full")
        after = await rig.restarts()
    assert after["memory"] == before["memory"], f"memory restarted: {out}{err}"
    refused_clearly(code, out, err)


async def test_a_goal_while_full_is_refused_and_crashes_nothing(rig: Rig) -> None:
    before = await rig.restarts()
    async with rig.full():
        code, out, err = await rig.a.ctl("ask", "a goal while full")
        after = await rig.restarts()
    assert after["orchestrator"] == before["orchestrator"], f"crashed: {out}{err}"
    refused_clearly(code, out, err)


async def test_a_peers_talk_while_full_crashes_no_actor(rig: Rig) -> None:
    before = await rig.restarts()
    async with rig.full():
        _, out, err = await rig.b.ctl("talk", A, "hello while your disk is full")
        after = await rig.restarts()
    grown = {name: n - before[name] for name, n in after.items() if n != before[name]}
    assert not grown, f"entity-a's actors restarted {grown}: {out}{err}"
    assert "traceback" not in (out + err).lower()


async def test_reads_and_a_payment_while_full_are_served(rig: Rig) -> None:
    """Held: nothing of these writes to entity-a's disk (the LEDGER is on the hub)."""
    before = await rig.restarts()
    async with rig.full():
        for args in (("status",), ("todo",), ("history",), ("balance",), ("pay", B, "3")):
            code, out, err = await rig.a.ctl(*args)
            assert code == 0, f"{args}: {out}{err}"
        assert rig.page is not None
        page = await rig.page.get("/api/todo")
        assert page.status == 200, page.text
        after = await rig.restarts()
    assert after == before


async def test_a_report_sent_while_full_is_kept_by_the_sender(rig: Rig) -> None:
    """Held: the INBOX refuses it, and entity-b keeps it in its outbox and says so."""
    async with rig.full():
        code, out, err = await rig.b.ctl("report", A, "report sent while full")
        assert code == 0, out + err
        assert "kept and sent as soon as it can be" in out, out + err


async def remembers(member: Member, text: str) -> bool:
    code, out, _ = await member.ctl("memory", "search", text)
    return code == 0 and text in out


async def jetstream_answers(member: Member) -> bool:
    nc = await nats.connect(member.url, connect_timeout=3, allow_reconnect=False)
    try:
        await nc.jetstream(timeout=2).stream_info(inbox_stream(member.name))
        return True
    except Exception:
        return False
    finally:
        await nc.close()


async def test_the_inbox_and_events_come_back_once_the_space_is_freed(rig: Rig) -> None:
    """nats-server keeps a stream's write error for as long as it runs (every later store
    to the INBOX timed out with the space back, until someone restarted the daemon): the
    daemon now restarts by itself once the disk has room (`full()` waits for it), and the
    report entity-b kept reaches entity-a."""
    assert not (rig.mount / FILLER).exists()
    await poll(lambda: remembers(rig.a, "report sent while full"), timeout=15,
               what="the report sent while full reaching entity-a")


# ---- a stop while full, then a restart with the space back -----------------------------


async def test_a_stop_while_full_exits_cleanly(rig: Rig) -> None:
    assert rig.page is not None
    mark = len(rig.a.daemon.log())
    async with rig.full():
        logout = await rig.page.post("/logout", {})
        rig.notes["logout"] = str(logout.status)
        rig.notes["logout_says"] = logout.text
        rig.notes["after_logout"] = str((await rig.page.get("/api/status")).status)
        code = await stopped(rig.a)
    said = rig.log_since(mark)
    rig.a.start()
    await rig.a.ready()
    assert code == 0 and "Traceback" not in said, f"exit {code}: {said[-3000:]}"


async def test_everything_stored_is_intact_after_the_restart(rig: Rig) -> None:
    """Held: every SQLite file passes integrity_check, the ledger verifies, the workspace
    passes git fsck, what was stored before the fill is there, and the report sent while
    the disk was full reaches entity-a once it runs again (its JetStream with it)."""
    if rig.a.daemon.proc is None or rig.a.daemon.proc.poll() is not None:
        rig.a.start()
        await rig.a.ready()
    for db in sorted(rig.a.data.glob("*.sqlite3")):
        with contextlib.closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True)) as conn:
            assert conn.execute("PRAGMA integrity_check").fetchall() == [("ok",)], db
    code, out, err = await rig.a.ctl("ledger", "verify")
    assert code == 0, out + err
    fsck = await asyncio.to_thread(git_fsck, rig.a.workspace)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    assert "stored before the fill" in (await rig.a.ctl("todo"))[1]
    assert "hello before the fill" in (await rig.a.ctl("history"))[1]
    await poll(lambda: remembers(rig.a, "report sent while full"), timeout=40,
               what=lambda: "the report kept by entity-b reaching entity-a: "
               + rig.b.daemon.log()[-2000:])
    assert await jetstream_answers(rig.a)


async def test_a_log_out_while_full_is_not_said_done(rig: Rig) -> None:
    """A log out while the disk is full ends the session in that run, but cannot be
    written (DATA_DIR/web.revoked), so a restart before the disk has room would undo it:
    the page says so (503) instead of saying it is done (it said 303, and the cookie was
    good again after the restart). With the space back, a log out holds as before."""
    assert rig.page is not None
    assert rig.notes.get("logout") == "503", rig.notes
    assert "the log out is not saved yet" in rig.notes.get("logout_says", ""), rig.notes
    assert rig.notes.get("after_logout") in ("401", "403"), rig.notes
    rig.page = await log_in(rig.a)
    assert (await rig.page.post("/logout", {})).status == 303
    page = await rig.page.get("/api/status")
    assert page.status in (401, 403), f"a logged-out cookie answered {page.status}"


async def test_six_requests_while_full_do_not_stop_the_daemon(tmp_path: Path) -> None:
    with tmpfs(tmp_path / A) as data:
        async with ScriptedLLMServer(route) as llm:
            config = make_entity_config(tmp_path, A, llm.base_url)
            daemon = DaemonProc(config, tmp_path / "entityd.log").start()
            try:
                await asyncio.to_thread(daemon.wait_log, '"entityd_ready"', 60)
                with contextlib.ExitStack() as room:
                    assert fill(data / FILLER) > 0
                    room.callback((data / FILLER).unlink, missing_ok=True)
                    for n in range(6):
                        await entityctl(config, "todo", "--add", f"item {n}", timeout=30)
                        if daemon.proc is not None and daemon.proc.poll() is not None:
                            break
                    with contextlib.suppress(Exception):
                        # what the supervisor does after the last crash
                        await asyncio.to_thread(daemon.wait_log, "restart_budget_exceeded", 3)
                alive = daemon.proc is not None and daemon.proc.poll() is None
                said = daemon.log()
                assert alive and "restart_budget_exceeded" not in said, (
                    "the daemon gave up: " + said[-1500:])
            finally:
                if daemon.proc is not None and daemon.proc.poll() is None:
                    daemon.signal_stop()
                    await asyncio.to_thread(daemon.wait_stopped, 20)


# ---- SQLite full while the INBOX still takes commands -----------------------------------


@contextlib.contextmanager
def bound(source: Path, where: Path) -> Iterator[None]:
    """`source` bind-mounted at `where` (made), unmounted after."""
    source.mkdir(parents=True, exist_ok=True)
    where.mkdir(parents=True, exist_ok=True)
    subprocess.run(["mount", "--bind", str(source), str(where)], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "-l", str(where)], check=False)


async def test_a_command_stored_while_only_sqlite_is_full_is_handled_once_there_is_room(
        tmp_path: Path) -> None:
    """entity-a's data dir is full but its JetStream store (DATA_DIR/nats) is elsewhere
    with room: the INBOX takes entity-b's offer (entity-b is told it is stored), but the
    peer actor cannot write it down. The peer actor gave a command up after five failed
    handlings (5 s apart), so a disk full for half a minute dropped an offer the sender
    had been told was stored; it must wait in the INBOX until there is room."""
    with tmpfs(tmp_path / A) as mount, contextlib.ExitStack() as stack:
        def store_elsewhere(fed: Federation) -> None:
            stack.enter_context(bound(tmp_path / "a-nats", mount / "nats"))

        async with scripted_federation(tmp_path, [A, B], route,
                                       prepare=store_elsewhere) as fed:
            await fed.discovered()
            a, b = fed[A], fed[B]
            filler = mount / FILLER
            try:
                assert fill(filler) > 0
                await command_into_inbox(b, a, "delegate", TaskOffer(
                    "while-full", "say hello", "say hello"))
                await poll(lambda: _deferred(a), timeout=20, what="entity-a deferring it")
                await asyncio.sleep(30)  # past five handlings 5 s apart
                dropped = [line[:300] for line in a.daemon.log().splitlines()
                           if '"command_failed"' in line and '"attempt": 5' in line]
            finally:
                filler.unlink(missing_ok=True)
            task = await poll(lambda: task_by_id(a, "in", "while-full"), timeout=30,
                              what="entity-a recording the offer once there is room")
            assert task["state"] in ("accepted", "working", "completed", "delivered"), task
            assert not dropped, dropped


async def _deferred(member: Member) -> bool:
    log = member.daemon.log()
    return '"command_deferred_disk_full"' in log or '"command_failed"' in log
