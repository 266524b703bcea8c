"""Federation security against a real hub and three real daemons (entity-a, entity-b and
entity-c, all members of one hub). entity-c plays the attacker: it holds its own Ed25519
key and its own hub user, and talks to its own leaf server with a raw NATS connection.
An observer on the hub with full rights captures the wire.

- the hub stops entity-c from publishing as entity-a (its permissions), while entity-c's
  own subjects still get through;
- entity-b refuses envelopes that claim entity-a but are signed by entity-c (wrong_sender)
  or carry entity-a's key with a bad signature (bad_signature), answers the reply inbox
  with a signed `error` and announces a `rejected` event;
- what crosses the hub between entities is ciphertext (talk, report, delegate), and
  entity-c cannot even subscribe to entity-b's requests and commands;
- a captured report or talk request republished byte for byte is refused as `replayed`,
  and the report is in entity-b's memory once;
- restart_peer from a peer without the "restart" right is refused (not_trusted), from a
  trusted one it restarts the actor.

- events (fed.evt.>, which every member may read) carry no content of talks and
  delegated tasks: a peer's turn is private.
"""

from __future__ import annotations

import asyncio
import secrets
import time
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nacl.signing import VerifyKey
from nats.aio.client import Client as NATS
from nats.aio.msg import Msg

import protocol
from actors.llm.scripted import ScriptedLLMServer
from actors.peer.messages import Heartbeat, Report, Restart, Talk
from bench.rig import ALL, Federation, Member, build, running
from entityd import federation, identity
from tests.helpers import poll
from tests.peer_model import route

pytestmark = pytest.mark.timeout(180)

A, B, C = "entity-a", "entity-b", "entity-c"
OBSERVER_PASSWORD = secrets.token_hex(16)


# ---- helpers ------------------------------------------------------------------------------


@dataclass
class Tap:
    """Every message a subscription got, in arrival order."""

    msgs: list[Msg] = field(default_factory=list)

    async def add(self, msg: Msg) -> None:
        self.msgs.append(msg)

    def on(self, subject: str) -> list[Msg]:
        return [m for m in self.msgs if m.subject == subject]

    def events(self, entity: str, actor: str, typ: str) -> list[dict[str, Any]]:
        """The `data` of every event `typ` of entity/actor seen (events are not encrypted)."""
        subject = protocol.subjects.event(entity, actor, typ)
        return [unwrap(m.data).body["payload"]["data"] for m in self.on(subject)]


@dataclass
class Wire:
    kid: bytes
    raw_body: bytes
    body: dict[str, Any]
    sig: bytes


def unwrap(data: bytes) -> Wire:
    """The outer array [1, kid, body, sig] and the decoded body map, no checks."""
    version, kid, raw_body, sig = msgpack.unpackb(data, raw=False)
    assert version == 1
    return Wire(kid, raw_body, msgpack.unpackb(raw_body, raw=False), sig)


def signed_by(data: bytes, public_key: bytes) -> dict[str, Any]:
    """The body of an envelope whose signature verifies under `public_key`."""
    wire = unwrap(data)
    assert wire.kid == public_key
    VerifyKey(public_key).verify(protocol.DOMAIN + wire.raw_body, wire.sig)
    return wire.body


async def restarts(member: Member, actor: str) -> int:
    status = await member.ctl_json("status")
    return int(next(a["restarts"] for a in status["actors"] if a["name"] == actor))


async def memories(member: Member, text: str) -> list[dict[str, Any]]:
    hits = await member.ctl_json("memory", "search", text)
    return [h for h in hits["hits"] if text in h["text"]]


async def connect(url: str, inbox_prefix: str, **auth: str) -> NATS:
    return await nats.connect(url, inbox_prefix=inbox_prefix, max_reconnect_attempts=-1,
                              **auth)


def add_observer(fed: Federation) -> None:
    """A hub user `observer` with full rights in the federation's account."""
    conf = fed.root / "hub.conf"
    text = conf.read_text()
    head = f"  {federation.HUB_ACCOUNT} {{\n    users = [\n"
    assert text.count(head) == 1, text[-800:]
    entry = f'      {{ user: "observer", password: "{OBSERVER_PASSWORD}" }}\n'
    conf.write_text(text.replace(head, head + entry))


@pytest.fixture
async def trio(tmp_path: Path) -> Any:
    # entity-b lets entity-a do everything but entity-c only talk and report.
    trust: dict[str, dict[str, Sequence[str]]] = {B: {A: ALL, C: ("talk", "report")}}
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B, C], llm_url=llm.base_url, trust=trust)
        fed.llm = llm
        add_observer(fed)
        async with running(fed):
            yield fed


# ---- the test -----------------------------------------------------------------------------


async def test_a_member_cannot_impersonate_forge_replay_eavesdrop_or_restart_unbidden(
    trio: Federation,
) -> None:
    a, b, c = trio[A], trio[B], trio[C]
    # The attacker has entity-c's secret key; everyone's public keys are public.
    c_key = identity.read_key(identity.key_path(c.data))
    a_pub, b_pub = identity.read_public(a.data), identity.read_public(b.data)
    await trio.discovered()

    # The observer sees everything that crosses the hub; the attacker is a client of
    # entity-c's own leaf (so it speaks with entity-c's hub user); `at_b` is a client of
    # entity-b's leaf and sees what reaches entity-b.
    observer = await connect(trio.hub.url, "_i.observer", user="observer",
                             password=OBSERVER_PASSWORD)
    attacker = await connect(c.url, f"_i.{C}")
    at_b = await connect(b.url, f"_i.{B}")
    try:
        on_hub = Tap()
        await observer.subscribe("fed.>", cb=on_hub.add)
        await observer.subscribe("_i.>", cb=on_hub.add)
        await observer.flush()
        b_events = Tap()
        await at_b.subscribe(f"fed.evt.{B}.>", cb=b_events.add)
        await at_b.flush()

        # ---- 1. entity-c cannot publish as entity-a: the hub refuses it ----------------
        forged_subjects = [f"fed.req.{B}.{A}.ping", f"fed.cmd.{B}.{A}.report",
                           f"fed.evt.{A}.peer.heartbeat"]
        own_subject = f"fed.evt.{C}.x.y"
        at_b_seen = Tap()
        for subject in [*forged_subjects, own_subject]:
            await at_b.subscribe(subject, cb=at_b_seen.add)
        await at_b.flush()

        async def own_message_arrives(tag: str) -> None:
            data = f"entity-c speaking as itself ({tag})".encode()

            async def arrived() -> bool:
                await attacker.publish(own_subject, data)
                await attacker.flush()
                await asyncio.sleep(0.05)
                return any(m.data == data for m in at_b_seen.on(own_subject))

            await poll(arrived, what=f"entity-c's own event ({tag}) reaching entity-b")

        await own_message_arrives("before")  # the route c -> hub -> b is live
        forged = {
            f"fed.req.{B}.{A}.ping": protocol.seal(
                c_key, src=f"{A}/peer", dst=f"{B}/peer", subj=f"fed.req.{B}.{A}.ping",
                message=protocol.Ping())[0],
            f"fed.cmd.{B}.{A}.report": protocol.seal(
                c_key, src=f"{A}/peer", dst=f"{B}/peer", subj=f"fed.cmd.{B}.{A}.report",
                message=Report("FORGED report in entity-a's name"))[0],
            f"fed.evt.{A}.peer.heartbeat": protocol.seal(
                c_key, src=f"{A}/peer", dst=protocol.BROADCAST,
                subj=f"fed.evt.{A}.peer.heartbeat",
                message=Heartbeat(["chat"], 0.5, time.time()))[0],
        }
        for subject, data in forged.items():
            await attacker.publish(subject, data, reply=f"_i.{C}.forged")
        await attacker.flush()
        # Published after the forgeries on the same connection and route: once it is at
        # entity-b, anything the hub had let through would be there before it.
        await own_message_arrives("after")
        arrived_at_b = {m.data for m in at_b_seen.msgs}
        crossed_hub = {m.data for m in on_hub.msgs}
        for subject, data in forged.items():
            assert data not in arrived_at_b, f"{subject} from entity-c reached entity-b"
            assert data not in crossed_hub, f"the hub accepted {subject} from entity-c"
        await poll(lambda: _true(at_b_seen.on(f"fed.evt.{A}.peer.heartbeat")),
                   what="entity-a's own heartbeats reaching entity-b on the same subject")

        # ---- 2. entity-c cannot forge entity-a's signature ------------------------------
        talk_subject = f"fed.req.{B}.{C}.talk"  # a subject entity-c may publish on
        wrong_key, wrong_key_id = protocol.seal(
            c_key, src=f"{A}/peer", dst=f"{B}/peer", subj=talk_subject,
            message=Talk("FORGED talk: entity-a says restart everything"))
        reply = await attacker.request(talk_subject, wrong_key, timeout=5.0)
        error = signed_by(reply.data, b_pub)
        assert error["typ"] == "error" and error["corr"] == wrong_key_id
        assert error["payload"]["code"] == "wrong_sender", error
        assert reply.subject.startswith(f"_i.{C}.")

        unsigned, bad_sig_id = protocol.seal(
            c_key, src=f"{A}/peer", dst=f"{B}/peer", subj=talk_subject,
            message=Talk("FORGED talk under entity-a's key"))
        outer = msgpack.unpackb(unsigned, raw=False)
        outer[1] = a_pub  # entity-a's kid over a body entity-c signed
        bad_signature = msgpack.packb(outer, use_bin_type=True)
        reply = await attacker.request(talk_subject, bad_signature, timeout=5.0)
        error = signed_by(reply.data, b_pub)
        assert error["typ"] == "error" and error["corr"] == bad_sig_id
        assert error["payload"]["code"] == "bad_signature", error

        async def rejected_talks() -> set[str]:
            return {e["reason"] for e in b_events.events(B, "peer", "rejected")
                    if e["subject"] == talk_subject}

        await poll(lambda: _superset(rejected_talks(), {"wrong_sender", "bad_signature"}),
                   what="entity-b's rejected events")
        assert not [e for e in b_events.events(B, "peer", "rejected")
                    if e["subject"] in forged], "a forgery of section 1 reached entity-b"
        assert not b_events.events(B, "orchestrator", "turn_started"), "a forgery got a turn"

        # ---- 3. observers see only ciphertext; entity-c cannot even subscribe -----------
        snooped = Tap()
        await attacker.subscribe(f"fed.cmd.{B}.>", cb=snooped.add)
        await attacker.subscribe(f"fed.req.{B}.>", cb=snooped.add)
        c_hears_b = Tap()
        await attacker.subscribe(f"fed.evt.{B}.peer.heartbeat", cb=c_hears_b.add)
        await attacker.flush()
        tag = secrets.token_hex(4)
        talk_text, report_text, task_text = (f"SECRET-{what}-{tag}"
                                             for what in ("TALK", "REPORT", "TASK"))
        first = len(on_hub.msgs)

        code, out, err = await a.ctl("talk", B, talk_text)
        assert code == 0, out + err
        assert f"echo: {talk_text}" in out
        sent = await a.ctl_json("report", B, report_text)
        assert sent["code"] == "delivered", sent
        found = await poll(lambda: memories(b, report_text), what="the report in memory")
        assert len(found) == 1
        offered = await a.ctl_json("delegate", B, task_text)
        assert offered["ok"] and offered["code"] == "offered", offered

        async def task_at_b() -> dict[str, Any] | None:
            tasks = await b.ctl_json("tasks")
            return next((t for t in tasks if t["task_id"] == offered["id"]), None)

        task = await poll(task_at_b, what="the delegated task at entity-b")
        assert task["direction"] == "in" and task["peer"] == A and task["title"] == task_text

        talk_subj, report_subj, task_subj = (f"fed.req.{B}.{A}.talk", f"fed.cmd.{B}.{A}.report",
                                             f"fed.cmd.{B}.{A}.delegate")
        await poll(lambda: _true(on_hub.on(task_subj)), what="the delegate on the hub")
        captured = on_hub.msgs[first:]
        markers = [m.encode() for m in (talk_text, report_text, task_text)]
        # Everything entities say to each other: requests, replies, commands. (Events
        # are checked by the next test.)
        peer_traffic = [m for m in captured if not m.subject.startswith("fed.evt.")]
        assert {m.subject.split(".")[0] for m in peer_traffic} == {"fed", "_i"}
        for msg in peer_traffic:
            for marker in markers:
                assert marker not in msg.data, f"{marker!r} in clear on {msg.subject}"
        for subject, typ in ((talk_subj, "talk"), (report_subj, "report"),
                             (task_subj, "task_offer")):
            # (The outbox may put one command twice, sealed afresh under one id: its
            # loop and the first attempt race; the INBOX keeps one by Nats-Msg-Id.)
            sightings = on_hub.on(subject)
            assert sightings and len({unwrap(m.data).body["id"] for m in sightings}) == 1
            for msg in sightings:
                body = signed_by(msg.data, a_pub)
                assert body["typ"] == typ and body["enc"] is True, body
                assert isinstance(body["payload"], bytes)
                assert body["src"] == f"{A}/peer" and body["dst"] == f"{B}/peer"
        replies = [m for m in captured if m.subject.startswith(f"_i.{A}.")]
        assert any(unwrap(m.data).body["typ"] == "talk_reply" and unwrap(m.data).body["enc"]
                   for m in replies), "the talk reply crossed the hub encrypted"
        assert snooped.msgs == [], [m.subject for m in snooped.msgs]
        assert c_hears_b.msgs, "entity-c's subscriptions were live"

        # ---- 4. a captured report (and talk) cannot be replayed -------------------------
        report = on_hub.on(report_subj)[0]
        assert unwrap(report.data).body["id"] == bytes.fromhex(sent["id"])
        await observer.publish(report_subj, report.data)  # plain: no Nats-Msg-Id
        ack = await observer.jetstream().publish(report_subj, report.data)  # nor here
        assert ack.stream == f"INBOX-{B}" and not ack.duplicate

        async def replays_refused() -> bool:
            return len([e for e in b_events.events(B, "peer", "rejected")
                        if e["subject"] == report_subj and e["reason"] == "replayed"]) >= 2

        await poll(replays_refused, what="two replayed reports refused")
        received = [e for e in b_events.events(B, "peer", "report_received")
                    if e["id"] == sent["id"]]
        assert len(received) == 1, received
        assert len(await memories(b, report_text)) == 1

        (talk,) = on_hub.on(talk_subj)
        reply = await observer.request(talk_subj, talk.data, timeout=5.0)
        error = signed_by(reply.data, b_pub)
        assert error["typ"] == "error" and error["payload"]["code"] == "replayed", error

        # ---- 5. restart_peer only from a peer trusted with "restart" --------------------
        assert await restarts(b, "memory") == 0
        code, out, err = await c.ctl("restart", B, "memory")
        assert code == 3, out + err
        assert "not_trusted" in out
        await poll(lambda: _true([e for e in b_events.events(B, "peer", "rejected")
                                  if e["reason"] == "not_trusted" and e["peer"] == C]),
                   what="entity-b's not_trusted event")
        assert await restarts(b, "memory") == 0
        # Nor by putting a restart on a subject it is trusted for: an op carries one kind.
        smuggled_subject = f"fed.cmd.{B}.{C}.report"
        smuggled, _ = protocol.seal(c_key, src=f"{C}/peer", dst=f"{B}/peer",
                                    subj=smuggled_subject, message=Restart("memory"))
        await attacker.jetstream().publish(smuggled_subject, smuggled, timeout=5.0)
        ping_subject = f"fed.req.{B}.{C}.ping"  # ping needs no permission; talk does
        smuggled_talk, _ = protocol.seal(c_key, src=f"{C}/peer", dst=f"{B}/peer",
                                         subj=ping_subject, message=Talk("a talk as a ping"))
        reply = await attacker.request(ping_subject, smuggled_talk, timeout=5.0)
        assert signed_by(reply.data, b_pub)["payload"]["code"] == "wrong_subject"
        await poll(lambda: _true([e for e in b_events.events(B, "peer", "rejected")
                                  if e["reason"] == "wrong_subject"
                                  and e["subject"] == smuggled_subject]),
                   what="entity-b's wrong_subject event for the smuggled restart")
        assert await restarts(b, "memory") == 0
        restarted = await a.ctl_json("restart", B, "memory")
        assert restarted["code"] == "done", restarted
        await poll(lambda: _equals(restarts(b, "memory"), 1), what="memory restarted once")
        # entity-c's command was handled before entity-a's (one INBOX, in order): had it
        # restarted anything, the count would be 2.
        assert await restarts(b, "memory") == 1
    finally:
        for nc in (observer, attacker, at_b):
            await nc.close()


# ---- a known leak ---------------------------------------------------------------------------


@pytest.fixture
async def pair_and_member(tmp_path: Path) -> Any:
    """entity-a and entity-b running; entity-c only a hub user (its credentials)."""
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B, C], llm_url=llm.base_url)
        fed.llm = llm
        del fed.members[C]
        async with running(fed):
            yield fed


async def test_other_members_read_no_peer_plaintext_in_events(
    pair_and_member: Federation,
) -> None:
    fed = pair_and_member
    await fed.discovered()
    a, b = fed[A], fed[B]
    # entity-c as the hub knows it: its own hub user, with a member's permissions.
    member = await connect(fed.hub.url, f"_i.{C}",
                           nkeys_seed=str(federation.seed_path(fed.root / C)))
    try:
        heard = Tap()
        await member.subscribe("fed.evt.>", cb=heard.add)
        await member.flush()
        await poll(lambda: _true(heard.on(f"fed.evt.{B}.peer.heartbeat")),
                   what="entity-b's heartbeat at entity-c")
        tag = secrets.token_hex(4)
        talk_text, task_text = f"SECRET-TALK-{tag}", f"SECRET-TASK-{tag}"
        code, out, err = await a.ctl("talk", B, talk_text)
        assert code == 0 and f"echo: {talk_text}" in out, out + err
        offered = await a.ctl_json("delegate", B, task_text)
        assert offered["ok"], offered

        async def accepted() -> bool:
            tasks = await b.ctl_json("tasks")
            return any(t["task_id"] == offered["id"] and t["state"] != "offered"
                       for t in tasks)

        async def completed() -> bool:
            tasks = await b.ctl_json("tasks")
            return any(t["task_id"] == offered["id"] and t["state"] == "completed"
                       for t in tasks)

        await poll(accepted, what="entity-b took the task")
        await poll(completed, timeout=60.0, what="entity-b finished the task")
        # A marker published before now would have arrived before entity-b's next beat.
        beats = len(heard.on(f"fed.evt.{B}.peer.heartbeat"))
        await poll(lambda: _true(len(heard.on(f"fed.evt.{B}.peer.heartbeat")) > beats),
                   what="one more heartbeat")
        # The markers, and what the delegated work touched (its files, its commands).
        secrets_of_b = (talk_text.encode(), task_text.encode(), b"calc.py", b"unittest")
        leaks = sorted({m.subject for m in heard.msgs
                        for marker in secrets_of_b if marker in m.data})
        assert leaks == [], f"entity-c reads peer plaintext on {leaks}"
        tool_calls = heard.on(f"fed.evt.{B}.tool.call")
        assert tool_calls, "entity-b's tool audit events are still published"
    finally:
        await member.close()


async def _superset(value: Awaitable[set[str]], expected: set[str]) -> bool:
    return (await value) >= expected


async def _true(value: Any) -> bool:
    return bool(value)


async def _equals(value: Awaitable[Any], expected: Any) -> bool:
    return bool(await value == expected)
