"""Attack review of the kill switch from outside: inputs a federation member or a page's
client controls that make an actor of another entity raise.

An exception escaping an actor is a crash; past `runtime.restart_budget` (5) crashes of one
actor within `runtime.restart_window` (60 s) the daemon exits. The earlier crashes review
(tests/test_attack_review_crashes.py) took the entity's own model and its provider; here
the attackers are a member of the federation (entity-b: its own key, its own hub login,
every field of what it publishes of its choosing) and a logged-in client of entity-a's
page. Each probe is sent to entity-a and answered, or handled (a report sent after it on
the same lane has been taken), and then no actor of entity-a has restarted.

Real daemons on a real hub and leaves (bench.rig), entityctl and the health actor for the
status, a raw NATS client on entity-b's hub login for the member's side.

No probe here restarted an actor (the INBOX's commands are caught per delivery as
`command_failed`; requests, heartbeats, events, ledger entries and the page's routes held).
Found, and fixed (a value of type any nests at most 32 levels: bad_payload, PROTOCOL.md
section 11; a sequence number is read only up to 2^63's digits):

- An event of a member's whose data nests 1,000 lists (msgpack reads it; json.dumps cannot)
  ends every stream of entity-a's page when it comes to it: RecursionError in
  actors/web/sse.py render (json.dumps), raised in the response's body; a page resuming
  from before it fails again, so the peers' feed is stuck at it for good.
- A Last-Event-ID (or ?after=) of more than 4300 digits: ValueError from int() in
  actors/web/sse.py _number (int_max_str_digits), a 500.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import os
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import msgpack
import nats
import pytest
import pytest_asyncio

import protocol
from actors.llm.scripted import Reply
from actors.messages import Wake
from actors.peer.messages import (
    CommandResult,
    DeliverableGet,
    Heartbeat,
    Report,
    Restart,
    Talk,
    TaskOffer,
    TaskUpdate,
)
from bench.rig import Federation, Member, enable_web
from entityd import config as config_mod
from entityd import federation, identity
from entityd.client import EntityClient
from protocol import Sealer, StatusGet
from protocol.ledger import GENESIS, Hold, Rate, Transfer, Void
from protocol.ledger.signed import seal_entry
from tests.helpers import funded, scripted_federation, task_by_id
from tests.peer_model import route
from tests.web_helpers import Session, log_in, request

pytestmark = [pytest.mark.timeout(240), pytest.mark.asyncio(loop_scope="module")]

A, B = "entity-a", "entity-b"
I63 = 2**63 - 1  # the largest signed 64-bit int (SQLite's largest)
U64 = 2**64 - 1  # the largest int msgpack carries
HUGE = 1.7e308  # finite: the schema takes it
HELD_TEXT = "HOLD"  # a delegated task whose turn (at the delegate) takes a minute


def model(request: dict[str, Any]) -> Reply:
    """A scripted model (not a model): a task delegated with HOLD in it keeps the delegate
    busy for a minute; any other delegated task is answered at once; the rest as
    tests/peer_model.py answers."""
    messages = request.get("messages") or []
    user = next((str(m.get("content")) for m in reversed(messages)
                 if m.get("role") == "user"), "")
    if request.get("tools") and "delegated a task to you" in user:
        if HELD_TEXT in user:
            return Reply(content="still at it", delay=30.0)
        return Reply(content="ok")
    return route(request)


def room_to_probe(fed: Federation) -> None:
    """Restarts are counted per probe, so a crash does not stop the daemon here; the peer's
    rate limit wide enough for every probe; entity-a's page on."""
    for member in fed.members.values():
        text = member.config.read_text()
        for old, new in (("restart_budget = 5 ", "restart_budget = 1000 "),
                         ("backoff_max = 10.0 ", "backoff_max = 0.2 "),
                         ("rate_per_minute = 120 ", "rate_per_minute = 100000 "),
                         ("rate_burst = 30 ", "rate_burst = 10000 ")):
            assert old in text, old
            text = text.replace(old, new, 1)
        member.config.write_text(text)
    enable_web(fed[A].config)


@dataclass
class Rig:
    fed: Federation
    client: EntityClient  # entity-a's, as entityctl's
    nc: nats.NATS  # entity-b's hub login, no daemon's rules
    sealer: Sealer  # entity-b's key
    a_key: bytes
    reports: asyncio.Queue[str]  # ids of the reports entity-a took (report_received)
    page: Session | None = None

    @property
    def a(self) -> Member:
        return self.fed[A]

    async def restarts(self) -> dict[str, int]:
        status = await self.client.ask("health", StatusGet(), 20.0)
        return {actor.name: actor.restarts for actor in status.actors}

    def seal(self, subject: str, record: object, *, dst: str = f"{A}/peer",
             corr: bytes | None = None) -> tuple[bytes, bytes]:
        return self.sealer.seal(self.a_key, src=f"{B}/peer", dst=dst, subj=subject,
                                message=record, corr=corr)

    async def ask(self, op: str, record: object) -> str:
        """A request of entity-b's to entity-a; what came back, in short."""
        wire, _ = self.seal(protocol.subjects.request(A, B, op), record)
        try:
            answer = await self.nc.request(protocol.subjects.request(A, B, op), wire,
                                           timeout=30)
        except (nats.errors.TimeoutError, nats.errors.NoRespondersError) as exc:
            return type(exc).__name__
        return _typ(answer.data)

    async def command(self, op: str, record: object, corr: bytes | None = None) -> None:
        """A command of entity-b's into entity-a's INBOX, then a report on the same lane:
        once entity-a took the report, it has handled the command (or put it back)."""
        for op_, rec in ((op, record), ("report", Report("the probe was sent"))):
            subject = protocol.subjects.command(A, B, op_)
            wire, msg_id = self.seal(subject, rec, corr=corr if op_ == op else None)
            await self.nc.jetstream().publish(subject, wire,
                                              headers={"Nats-Msg-Id": msg_id.hex()})
        sentinel = msg_id.hex()
        async with asyncio.timeout(60):
            while (await self.reports.get()) != sentinel:
                pass


def _typ(wire: bytes) -> str:
    _, _, body, _ = msgpack.unpackb(wire, raw=False)
    fields = msgpack.unpackb(body, raw=False)
    payload = fields["payload"]
    return f"{fields['typ']} {payload if isinstance(payload, dict) else ''}"[:300]


def _event_data(wire: bytes) -> dict[str, Any]:
    _, _, body, _ = msgpack.unpackb(wire, raw=False)
    payload = msgpack.unpackb(body, raw=False)["payload"]
    return dict(payload.get("data") or {})


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def rig(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Rig]:
    async with scripted_federation(tmp_path_factory.mktemp("outside"), [A, B], model,
                                   prepare=room_to_probe) as fed:
        await funded(fed, entity_a=1000)
        await fed.discovered()
        b = fed[B]
        nc = await nats.connect(b.url, inbox_prefix=f"_i.{B}")
        reports: asyncio.Queue[str] = asyncio.Queue()

        async def took(msg: Any) -> None:
            reports.put_nowait(str(_event_data(msg.data).get("id", "")))

        await nc.subscribe(protocol.subjects.event(A, "peer", "report_received"), cb=took)
        await nc.flush()
        try:
            async with EntityClient(config_mod.load(fed[A].config)) as client:
                yield Rig(fed, client, nc, Sealer(identity.load(B, b.data).signing_key),
                          identity.read_public(fed[A].data), reports)
        finally:
            await nc.close()


def crashes_in_log(member: Member, since: int) -> list[str]:
    lines = member.daemon.log().splitlines()[since:]
    return [json.loads(line).get("error", line)[:300] for line in lines
            if '"actor_crashed"' in line]


class Watch:
    """entity-a's restarts and crash lines between `start` and `check`."""

    def __init__(self, rig: Rig) -> None:
        self.rig = rig

    async def __aenter__(self) -> Watch:
        self.before = await self.rig.restarts()
        self.lines = len(self.rig.a.daemon.log().splitlines())
        return self

    async def __aexit__(self, *exc: object) -> None:
        if exc[0] is not None:
            return
        await asyncio.sleep(0.5)  # what a crash sets off reaches the supervisor
        after = await self.rig.restarts()
        grown = {name: n - self.before.get(name, 0) for name, n in after.items()
                 if n != self.before.get(name, 0)}
        assert not grown, (f"restarts {grown}; crashed: "
                           f"{crashes_in_log(self.rig.a, self.lines)}")


def near_now_ms() -> int:
    return int(time.time() * 1000)


# ---- requests: fed.req.<a>.<b>.<op> ----------------------------------------------------

REQUESTS: dict[str, tuple[str, object]] = {
    "ping": ("ping", protocol.Ping()),
    "talk_empty": ("talk", Talk("")),
    "talk_too_long": ("talk", Talk("x" * 16_001)),
    "talk_nul": ("talk", Talk("\x00hi\x00", "\x00")),
    "talk_conversation_long": ("talk", Talk("hi", "c" * 500_000)),
    "talk_conversation_dots": ("talk", Talk("hi", "../../..\u202e")),
    "fetch_negative": ("fetch", DeliverableGet("t1", -(2**63), -(2**63))),
    "fetch_huge": ("fetch", DeliverableGet("t1", U64, U64)),
    "fetch_empty_id": ("fetch", DeliverableGet("", 0, 0)),
    "fetch_long_id": ("fetch", DeliverableGet("t" * 500_000, I63, 1)),
    "talk_on_fetch": ("fetch", Talk("hi")),
}


@pytest.mark.parametrize("key", list(REQUESTS))
async def test_a_members_request_crashes_no_actor(rig: Rig, key: str) -> None:
    op, record = REQUESTS[key]
    async with Watch(rig):
        said = await rig.ask(op, record)
    assert "TimeoutError" not in said, said


# ---- commands into the INBOX: fed.cmd.<a>.<b>.<op> -------------------------------------

COMMANDS: dict[str, tuple[str, object]] = {
    "report_empty": ("report", Report("")),
    "report_too_long": ("report", Report("r" * 16_001)),
    "report_nul": ("report", Report("\x00" * 100)),
    "wake_long_reason": ("wake", Wake("w" * 500_000)),
    "restart_unknown_actor": ("restart", Restart("x" * 100_000)),
    "restart_nul_actor": ("restart", Restart("\x00")),
    "result_answering_nothing": ("result", CommandResult(True, "done", "r" * 500_000)),
    "result_odd_code": ("result", CommandResult(False, "\x00" * 10, "")),
    "update_unknown_task": ("task", TaskUpdate("nosuch", "completed", "n", b"x", U64, U64,
                                               "z")),
    "update_empty_id": ("task", TaskUpdate("", "", "")),
    "update_paid_unknown": ("task", TaskUpdate("nosuch", "paid")),
    "update_withdrawn_unknown": ("task", TaskUpdate("nosuch", "withdrawn", "w" * 100_000)),
    "offer_bad_id": ("delegate", TaskOffer("../x", "t", "d")),
    "offer_long_id": ("delegate", TaskOffer("i" * 100_000, "t", "d")),
    "offer_negative_price": ("delegate", TaskOffer("negprice", "t", "d", price=-(2**63))),
    "offer_u64_price": ("delegate", TaskOffer("u64price", "t", "d", deadline=time.time()
                                              + 600, price=U64, hold=os.urandom(16))),
    "offer_far_deadline": ("delegate", TaskOffer("fardeadline", "t PROBE", "d",
                                                 deadline=HUGE)),
    "offer_past_deadline": ("delegate", TaskOffer("pastdeadline", "t", "d", deadline=-HUGE)),
    "offer_tiny_deadline": ("delegate", TaskOffer("tinydeadline", "t", "d", deadline=5e-324)),
    "offer_priced_far_deadline": ("delegate", TaskOffer(
        "pricedfar", "t", "d", deadline=HUGE, price=1, hold=os.urandom(16))),
    "offer_priced_no_hold": ("delegate", TaskOffer(
        "pricednohold", "t", "d", deadline=time.time() + 600, price=1)),
    "offer_long_capability": ("delegate", TaskOffer("longcap", "t", "d",
                                                    capabilities=["c" * 100_000])),
    "offer_many_capabilities": ("delegate", TaskOffer("manycaps", "t", "d",
                                                      capabilities=[""] * 50_000)),
    "offer_empty_title": ("delegate", TaskOffer("emptytitle", "", "", "")),
}


@pytest.mark.parametrize("key", list(COMMANDS))
async def test_a_members_command_crashes_no_actor(rig: Rig, key: str) -> None:
    op, record = COMMANDS[key]
    async with Watch(rig):
        await rig.command(op, record, corr=os.urandom(16) if op == "result" else None)
        if op == "delegate" and isinstance(record, TaskOffer) and len(record.task_id) < 65:
            # The offer recorded, and its turn (if it was taken) run: a short one.
            await asyncio.sleep(1.0)


# ---- a TaskUpdate for a task entity-a delegated to entity-b, in each of its states ------

UPDATES: dict[str, TaskUpdate] = {
    "progress_long_note": TaskUpdate("", "progress", "n" * 500_000),
    "accepted": TaskUpdate("", "accepted", "", b"", U64, U64),
    "completed_junk_patch": TaskUpdate("", "completed", "done", b"\xff\x00" * 1000, U64),
    "completed_inline_and_kept": TaskUpdate("", "completed", "", b"From x", 1, 5, "00"),
    "completed_size_u64": TaskUpdate("", "completed", "", b"", 0, U64, "00" * 32),
    "completed_size_negative": TaskUpdate("", "completed", "", b"", 0, -(2**63), ""),
    "completed_size_small": TaskUpdate("", "completed", "", b"", 0, 1, "not hex"),
    "rejected": TaskUpdate("", "rejected", "\x00"),
    "failed": TaskUpdate("", "failed", "f" * 100_000),
    "delivered_from_delegate": TaskUpdate("", "delivered"),
    "paid_on_out_task": TaskUpdate("", "paid"),
    "withdrawn_on_out_task": TaskUpdate("", "withdrawn"),
    "odd_state": TaskUpdate("", "\u202e" * 1000),
}


async def delegated(rig: Rig, price: int = 0) -> str:
    args = ["delegate", B, f"{HELD_TEXT}: wait a minute"]
    if price:
        args += ["--price", str(price)]
    code, out, err = await rig.a.ctl(*args)
    assert code == 0, out + err
    return out.split("offered task ")[1].split()[0]


@pytest.mark.parametrize("key", list(UPDATES))
async def test_a_delegates_update_crashes_no_actor(rig: Rig, key: str) -> None:
    task_id = await delegated(rig)
    update = dataclasses.replace(UPDATES[key], task_id=task_id)
    async with Watch(rig):
        await rig.command("task", update)
        # ...and once more, the task now in whatever state the first put it.
        await rig.command("task", update)
        await asyncio.sleep(0.5)
        code, _, err = await rig.a.ctl("tasks")
        assert code == 0, err[-500:]


async def test_updates_for_a_priced_task_crash_no_actor(rig: Rig) -> None:
    """The same on a task whose escrow entity-a holds: the delegate's words on it."""
    task_id = await delegated(rig, price=10)
    async with Watch(rig):
        for state in ("accepted", "progress", "paid", "unpaid", "withdrawn", "completed",
                      "failed", "completed"):
            await rig.command("task", TaskUpdate(task_id, state, "", b"", U64, 0, ""))
        assert await task_by_id(rig.a, "out", task_id) is not None


# ---- presence and events: fed.evt.<b>.> -----------------------------------------------

BEATS: dict[str, Heartbeat] = {
    "interval_huge": Heartbeat([], HUGE, HUGE),
    "interval_negative": Heartbeat([], -HUGE, -HUGE),
    "interval_zero": Heartbeat(["x"], 0.0, 0.0),
    "capabilities_empty_strings": Heartbeat([""] * 10_000, 1.0, 1.0),
}


@pytest.mark.parametrize("key", list(BEATS))
async def test_a_members_heartbeat_crashes_no_actor(rig: Rig, key: str) -> None:
    subject = protocol.subjects.event(B, "peer", "heartbeat")
    async with Watch(rig):
        wire, _ = protocol.seal(rig.sealer.key, src=f"{B}/peer", dst=protocol.BROADCAST,
                                subj=subject, message=BEATS[key])
        await rig.nc.publish(subject, wire)
        await rig.nc.flush()
        await asyncio.sleep(1.0)
        code, out, err = await rig.a.ctl("peers", "--json")
        assert code == 0, err[-500:]
        code, out, err = await rig.a.ctl("check", B)
        assert code == 0 or "unresponsive" in out + err, out + err


def nested(depth: int) -> Any:
    value: Any = []
    for _ in range(depth):
        value = [value]
    return value


EVENTS: dict[str, dict[str, Any]] = {
    "ints_at_the_edges": {"a": U64, "b": -(2**63), "c": HUGE, "d": float("nan")},
    "bytes_and_maps": {"a": b"\x00" * 1000, "b": {"x": {"y": [b"", None, True]}}},
    "deep": {"a": nested(1000)},
    "ext_type": {"a": msgpack.ExtType(5, b"x"), "b": msgpack.Timestamp(2**33, 5)},
}


async def events_page_reads(session: Session) -> bytes:
    """What entity-a's page streams in the first few seconds from the start of its feed."""
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", int(session.url.rstrip("/").rsplit(":", 1)[1]))
    host = session.url.split("//", 1)[1].rstrip("/")
    writer.write(f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nCookie: {session.cookie}\r\n"
                 "Last-Event-ID: 0.0\r\n\r\n".encode())
    await writer.drain()
    got = b""
    try:
        async with asyncio.timeout(4):
            while chunk := await reader.read(65536):
                got += chunk
    except TimeoutError:
        pass
    writer.close()
    return got


def event_wire(rig: Rig, type_: str, data: dict[str, Any]) -> tuple[str, bytes]:
    """(subject, wire) of an event of entity-b's, signed with its key, packed by hand: any
    msgpack in `data` (protocol.seal would not pack all of it)."""
    subject = protocol.subjects.event(B, "probe", type_)
    body = msgpack.packb({
        "id": os.urandom(16), "src": f"{B}/probe", "dst": "*", "subj": subject,
        "typ": "event", "ts": near_now_ms(), "corr": None, "enc": False,
        "payload": {"type": type_, "actor": "probe", "data": data}})
    key = rig.sealer.key
    signature = key.sign(protocol.envelope.DOMAIN + body).signature
    return subject, msgpack.packb([1, bytes(key.verify_key), body, signature])


@pytest.mark.parametrize("key", list(EVENTS))
async def test_a_members_event_crashes_no_actor(rig: Rig, key: str) -> None:
    async with Watch(rig):
        await rig.nc.publish(*event_wire(rig, key, EVENTS[key]))
        await rig.nc.flush()
        await asyncio.sleep(1.0)


async def test_the_page_streams_past_a_members_deep_event(rig: Rig) -> None:
    session = rig.page = rig.page or await log_in(rig.a)
    await rig.nc.publish(*event_wire(rig, "deep2", {"a": nested(1000)}))
    await rig.nc.publish(*event_wire(rig, "after_deep", {}))
    await rig.nc.flush()
    await asyncio.sleep(1.0)
    streamed = await events_page_reads(session)
    assert b"after_deep" in streamed, streamed[-500:]


# ---- entity-b's own ledger chain, which entity-a reads -----------------------------------

ENTRIES: dict[str, tuple[object, int]] = {
    "transfer_u64": (Transfer(1, GENESIS, A, U64, "m"), near_now_ms()),
    "transfer_negative": (Transfer(1, GENESIS, A, -(2**63), ""), near_now_ms()),
    "hold_expires_u64": (Hold(1, GENESIS, A, 1, U64, "t"), near_now_ms()),
    "hold_expires_negative": (Hold(1, GENESIS, A, 1, -(2**63), "t"), near_now_ms()),
    "ts_u64": (Transfer(1, GENESIS, A, 1, ""), U64),
    "ts_negative": (Transfer(1, GENESIS, A, 1, ""), -(2**63)),
    "seq_u64": (Transfer(U64, GENESIS, A, 1, ""), near_now_ms()),
    "rate_u64": (Rate(1, GENESIS, A, "t", U64), near_now_ms()),
    "void_unknown": (Void(1, GENESIS, b"\x00" * 16, "r" * 1024), near_now_ms()),
}


@pytest.mark.parametrize("key", list(ENTRIES))
async def test_a_members_ledger_entry_crashes_no_actor(rig: Rig, key: str) -> None:
    record, ts = ENTRIES[key]
    b = rig.fed[B]
    wire = seal_entry(identity.load(B, b.data).signing_key, B, record,  # type: ignore[arg-type]
                      entry_id=os.urandom(16), ts=ts)
    js = rig.nc.jetstream(domain=federation.HUB_DOMAIN, timeout=10)
    async with Watch(rig):
        try:
            await js.publish(protocol.subjects.ledger(B), wire)
        except nats.js.errors.APIError:
            pass  # the stream refused it: fine
        code, out, err = await rig.a.ctl("balance", B)
        assert code == 0, out + err[-500:]
        code, out, err = await rig.a.ctl("balance")
        assert code == 0, out + err[-500:]


# ---- entity-a's page, logged in -------------------------------------------------------

POSTS: dict[str, tuple[str, bytes]] = {
    "goal_int_past_64_bits": ("/api/goal", b'{"text": "t", "n": 1' + b"0" * 30 + b"}"),
    "goal_digits": ("/api/goal", b'{"text": "t", "n": ' + b"1" * 5000 + b"}"),
    "goal_surrogate": ("/api/goal", b'{"text": "\\ud800"}'),
    "goal_text_a_list": ("/api/goal", b'{"text": ["a"]}'),
    "goal_huge_array": ("/api/goal", b'{"text": "t", "a": [' + b"0," * 100_000 + b"0]}"),
    "goal_not_an_object": ("/api/goal", b"[1, 2]"),
    "goal_float_edges": ("/api/goal", b'{"text": "t", "a": 1e999, "b": NaN}'),
    "todo_text_a_number": ("/api/todo", b'{"text": 18446744073709551616}'),
    "todo_update_i63": (f"/api/todo/{I63}", b'{"status": "done"}'),
    "todo_update_u64": (f"/api/todo/{U64}", b'{"status": "done"}'),
    "todo_update_status_map": ("/api/todo/1", b'{"status": {"a": 1}}'),
    "talk_peer_a_list": ("/api/talk", b'{"peer": ["entity-b"], "text": "t"}'),
    "talk_peer_surrogate": ("/api/talk", b'{"peer": "entity-b", "text": "\\udfff"}'),
    "peer_check_nul": ("/api/peers/%00/check", b"{}"),
}

GETS: list[str] = [
    "/api/memory?q=%22", "/api/memory?q=NEAR(", "/api/memory?q=*", "/api/memory?q=%00",
    "/api/memory?q=a%20AND&limit=99999999999999999999999", "/api/memory?q=x&limit=-1",
    "/api/memory?q=%ED%A0%80", "/api/usage?hours=99999999999999999999",
    "/api/usage?hours=0", "/api/ledger?limit=18446744073709551616", "/api/commits?before=%00",
    "/api/commits?before=" + "a" * 100_000, "/api/commits/%00", "/api/commits/" + "f" * 40,
    "/api/todo?all=%00", "/api/peers", "/api/tasks",
]

LAST_EVENT_IDS: list[Any] = [
    "-1", "99999999999999999999999999", "1.99999999999999999999999", "abc", "\u00b2", "0.-1",
    ".", "9223372036854775807.9223372036854775807",
    pytest.param("1" * 5000, id="5000_digits"),
]


@pytest.mark.parametrize("key", list(POSTS))
async def test_a_page_post_crashes_no_actor(rig: Rig, key: str) -> None:
    session = rig.page = rig.page or await log_in(rig.a)
    path, body = POSTS[key]
    async with Watch(rig):
        got = await request(session.url, "POST", path, body=body, headers={
            "Cookie": session.cookie, "X-CSRF-Token": session.csrf,
            "Content-Type": "application/json", "Origin": session.url.rstrip("/")},
            timeout=60)
    assert got.status < 500, (got.status, got.text[:500])


@pytest.mark.parametrize("path", GETS, ids=range(len(GETS)))
async def test_a_page_get_crashes_no_actor(rig: Rig, path: str) -> None:
    session = rig.page = rig.page or await log_in(rig.a)
    async with Watch(rig):
        got = await session.get(path)
    assert got.status < 500, (path[:80], got.status, got.text[:500])


@pytest.mark.parametrize("last", LAST_EVENT_IDS)
async def test_a_last_event_id_crashes_no_actor(rig: Rig, last: str) -> None:
    session = rig.page = rig.page or await log_in(rig.a)
    async with Watch(rig):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", int(session.url.rstrip("/").rsplit(":", 1)[1]))
        host = session.url.split("//", 1)[1].rstrip("/")
        writer.write(f"GET /api/events HTTP/1.1\r\nHost: {host}\r\nCookie: {session.cookie}"
                     f"\r\nLast-Event-ID: {last}\r\n\r\n".encode())
        await writer.drain()
        head = b""
        async with asyncio.timeout(10):
            while b"\r\n\r\n" not in head:
                chunk = await reader.read(4096)
                if not chunk:
                    break
                head += chunk
        writer.close()
    assert head.startswith(b"HTTP/1.1 200") or head.startswith(b"HTTP/1.1 4"), head[:300]


async def test_the_probes_left_entity_a_answering(rig: Rig) -> None:
    """After every probe: entity-a still answers its operator and its peer."""
    code, _, err = await rig.a.ctl("status")
    assert code == 0, err
    assert (await rig.ask("ping", protocol.Ping())).startswith("pong"), "no pong"
