"""A receiver written from protocol/PROTOCOL.md alone (tests/independent/receiver.py) against
the conformance vectors and against what a live federation sends.

1. Every protocol/vectors/*.json (and kinds/*.json) step opens to its expected body or
   is refused with its expected reason code; the encrypted vector decrypts to its
   plaintext.
2. A live federation (a real hub and entityd daemons as its leaves, a scripted model) runs
   check, talk, report, wake, delegate (a patch comes back), restart and entityctl
   requests signed by the entity key and by an operator key, while an observer on the hub
   (`>`) and a client on each leaf (`loc.>`, `_l.>`) capture every message. Each envelope
   is fed once to every receiver that would receive it, each with its own replay cache,
   and must be accepted (and decrypted, and its plaintext match its kind, where it is
   encrypted for that receiver).
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
from collections import Counter, defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey
from nats.aio.msg import Msg

from actors.llm.scripted import ScriptedLLMServer
from bench.rig import ALL, Federation, Member, build, edit, running
from entityd.transport import _claimed_header  # the reference's 9.1, compared below
from tests.independent.receiver import (
    DEFAULT_MAX_BYTES,
    REASON_CODES,
    SPEC_PATH,
    DecodeError,
    Opened,
    Receiver,
    Rejected,
    answer_fits,
    answerable,
    as_json,
    check_route,
    decode,
    decrypt,
    read_hex_key,
    reply_fits,
    seal,
    sign_body,
    spec_v1,
)
from tests.peer_model import route
from tests.test_federation_security import OBSERVER_PASSWORD, add_observer, connect

ROOT = Path(__file__).resolve().parent.parent
VECTOR_DIR = ROOT / "protocol" / "vectors"
VECTOR_FILES = sorted(VECTOR_DIR.glob("*.json")) + sorted(VECTOR_DIR.glob("kinds/*.json"))


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def receiver_of(vector: dict[str, Any]) -> Receiver:
    keyring = {bytes.fromhex(e["public_key"]): e["entity"] for e in vector["keyring"]}
    return Receiver(keyring, vector["local"], max_bytes=vector["max_bytes"],
                    window_ms=vector["window_ms"], future_ms=vector["future_ms"])


def body_json(opened: Opened) -> dict[str, Any]:
    return {name: as_json(opened.body[name]) for name in opened.body}


def vector_id(path: Path) -> str:
    return path.relative_to(VECTOR_DIR).with_suffix("").as_posix()


def test_there_are_vectors() -> None:
    assert len(VECTOR_FILES) >= 20


@pytest.mark.parametrize("path", VECTOR_FILES, ids=vector_id)
def test_vector(path: Path) -> None:
    vector = load(path)
    receiver = receiver_of(vector)
    for index, step in enumerate(vector["steps"]):
        where = f"{path.name} step {index} ({step['note']})"
        wire = bytes.fromhex(step["wire"])
        expect = step["expect"]
        if "ok" not in expect:
            assert expect["error"] in REASON_CODES, where
            try:
                opened = receiver.open(wire, vector["subject"], vector["now_ms"])
            except Rejected as exc:
                assert exc.code == expect["error"], f"{where}: {exc}"
            else:
                raise AssertionError(f"{where}: accepted, expected {expect['error']}")
            continue
        try:
            opened = receiver.open(wire, vector["subject"], vector["now_ms"])
        except Rejected as exc:
            raise AssertionError(f"{where}: refused as {exc}") from None
        assert body_json(opened) == expect["ok"], where
        seed = bytes.fromhex(step.get("signer_seed", vector["signer_seed"]))
        assert opened.kid == bytes(SigningKey(seed).verify_key), where
        spec = spec_v1()
        if not opened.enc:
            if "record" in expect:  # section 14: the payload as the kind's record
                record = spec.record(opened.typ, opened.body["payload"])
                assert as_json(record) == expect["record"], where
            continue
        # Section 12: the receiving entity decrypts and checks the plaintext.
        encryption = step.get("encryption", vector.get("encryption"))
        assert encryption is not None, f"{where}: encrypted, but no recipient seed"
        assert opened.body["payload"][:24].hex() == encryption["nonce"], where
        try:
            plain = decrypt(opened, bytes.fromhex(encryption["recipient_seed"]))
        except Rejected as exc:
            assert exc.code == expect.get("record_error"), f"{where}: {exc}"
            continue
        assert "record_error" not in expect, f"{where}: decrypted to {plain}"
        if "record" in expect:
            assert as_json(spec.record(opened.typ, plain)) == expect["record"], where
        else:
            assert as_json(plain) == encryption["plaintext_payload"], where


def test_every_reason_code_is_exercised_by_a_vector() -> None:
    codes = {step["expect"]["error"] for path in VECTOR_FILES
             for step in load(path)["steps"] if "error" in step["expect"]}
    assert codes == set(REASON_CODES)


# ---- 2. live traffic -----------------------------------------------------------------------

A, B = "entity-a", "entity-b"
REPLY_FAMILIES = ("_i.", "_l.", "_INBOX.")
MAX_BYTES = 262_144  # the daemons' max_message_bytes, and the receivers' max_bytes
GRACE_MS = 3000  # a reply this soon after its tap subscribed may answer an unseen request


@dataclass
class Captured:
    """One NATS message as a tap got it: where, subject, reply, headers, data, when (ms)."""

    where: str
    subject: str
    reply: str
    headers: dict[str, str]
    data: bytes
    at_ms: int


@dataclass
class Tap:
    msgs: list[Captured] = field(default_factory=list)
    started: dict[str, int] = field(default_factory=dict)  # where: when it subscribed (ms)

    def cb(self, where: str) -> Callable[[Msg], Awaitable[None]]:
        self.started.setdefault(where, int(time.time() * 1000))
        async def add(msg: Msg) -> None:
            self.msgs.append(Captured(where, msg.subject, msg.reply or "",
                                      {str(k): str(v) for k, v in (msg.headers or {}).items()},
                                      bytes(msg.data), int(time.time() * 1000)))
        return add


@dataclass(frozen=True)
class Identity:
    """What a receiver of entity `name` knows: its own seed, every member's public key
    (pinned on first sight in the rig) and its own operators' keys."""

    name: str
    public: bytes
    seed: bytes
    operators: tuple[bytes, ...]


@dataclass
class Verdict:
    msg: Captured
    entity: str
    local: str
    typ: str
    enc: bool
    code: str  # "ok" or a reason code
    detail: str = ""


def not_an_envelope(msg: Captured) -> str:
    """Why a captured message is no envelope of the spec, or ''."""
    if msg.subject.startswith("$"):
        return f"JetStream or system API ({'.'.join(msg.subject.split('.')[:2])})"
    if msg.subject == "ledger_get" or msg.subject.startswith("ledger_read."):
        # PROTOCOL.md section 10: reads of LEDGER (the hub's books reader, an older direct get)
        return f"JetStream direct get ({msg.subject})"
    if "Status" in msg.headers and not msg.data:
        return f"NATS status {msg.headers['Status']}"
    if msg.subject.startswith(REPLY_FAMILIES) and msg.data.startswith(b"{"):
        try:
            if isinstance(json.loads(msg.data), dict):
                return "JetStream API response (PubAck)"
        except ValueError:
            pass
    return ""


def stored_ms(ack_subject: str) -> int | None:
    """The stream's store time of a JetStream delivery, from its $JS.ACK reply subject:
    $JS.ACK.<stream>.<consumer>.<delivered>.<sseq>.<cseq>.<ns>.<pending> (or the form with
    domain and account hash before <stream>, and a token after <pending>)."""
    tokens = ack_subject.split(".")
    if tokens[:2] != ["$JS", "ACK"]:
        return None
    if len(tokens) == 9:
        return int(tokens[7]) // 1_000_000
    if len(tokens) >= 11:
        return int(tokens[9]) // 1_000_000
    return None


class Judge:
    """Feeds captured messages to the receivers that would get them, in arrival order,
    each (entity, local) with its own Receiver and replay cache, each message once."""

    def __init__(self, identities: dict[str, Identity], started: dict[str, int]) -> None:
        self.identities = identities
        self.started = started
        self.before_taps = 0  # replies to requests sent before the taps subscribed
        self.receivers: dict[tuple[str, str], Receiver] = {}
        self.fed: dict[tuple[str, str], set[bytes]] = defaultdict(set)
        self.verdicts: list[Verdict] = []
        self.skipped: Counter[str] = Counter()
        self.publications: list[Captured] = []  # fed.cmd as published on the hub
        self.delivered_ids: set[str] = set()
        # reply subject: the request's id, src, dst, typ; a command's id: its op, src
        self.requests: dict[str, tuple[bytes, str, str, str]] = {}
        self.commands: dict[bytes, tuple[str, str]] = {}
        self.operator_signed: Counter[str] = Counter()
        self.replies: list[tuple[Captured, Opened]] = []
        self.answers: list[tuple[Captured, Opened]] = []
        self.decrypted: Counter[str] = Counter()
        self.reply_problems: list[str] = []

    def keyring(self, entity: str) -> dict[bytes, str]:
        ring = {ident.public: ident.name for ident in self.identities.values()}
        for operator in self.identities[entity].operators:
            ring[operator] = entity
        return ring

    def receiver(self, entity: str, local: str) -> Receiver:
        key = (entity, local)
        if key not in self.receivers:
            self.receivers[key] = Receiver(self.keyring(entity), local, max_bytes=MAX_BYTES)
        return self.receivers[key]

    def destinations(self, msg: Captured) -> list[tuple[str, str]]:
        """(entity, local) of every receiver of the message, by its subject (section 10)."""
        tokens = msg.subject.split(".")
        members = list(self.identities)
        if tokens[0] == "loc" and len(tokens) == 4:
            return [(tokens[1], f"{tokens[1]}/{tokens[2]}")]
        if tokens[:2] == ["fed", "evt"]:
            return [(name, name) for name in members]  # events are received by everyone
        if tokens[0] == "fed" and tokens[1] in ("req", "cmd") and len(tokens) == 5:
            return [(tokens[2], f"{tokens[2]}/peer")]  # the peer actor (vectors, section 12)
        if tokens[0] in ("_i", "_l") and len(tokens) >= 3:
            return [(tokens[1], tokens[1])]
        return [(name, name) for name in members]  # outside the layout: anyone refuses it

    def feed(self, msg: Captured) -> None:
        why = not_an_envelope(msg)
        if why:
            self.skipped[why] += 1
            return
        if msg.subject.startswith("fed.cmd.") and msg.where == "hub":
            # A publication into the receiver's INBOX stream: the receiver gets the
            # JetStream delivery (captured on its leaf), de-duplicated by Nats-Msg-Id.
            self.publications.append(msg)
            return
        now = msg.at_ms
        if msg.subject.startswith("fed.cmd."):
            now = stored_ms(msg.reply) or now  # section 12: ts against the store time
            self.delivered_ids.add(msg.headers.get("Nats-Msg-Id", ""))
        for entity, local in self.destinations(msg):
            if entity not in self.identities:
                self.verdicts.append(Verdict(msg, entity, local, "?", False, "no_receiver"))
                continue
            if msg.data in self.fed[(entity, local)]:
                continue  # each message once per receiver
            self.fed[(entity, local)].add(msg.data)
            self.verdicts.append(self.judge(msg, entity, local, now))

    def judge(self, msg: Captured, entity: str, local: str, now: int) -> Verdict:
        try:
            opened = self.receiver(entity, local).open(msg.data, msg.subject, now)
        except Rejected as exc:
            return Verdict(msg, entity, local, peek_typ(msg.data), False, exc.code, exc.detail)
        verdict = Verdict(msg, entity, local, opened.typ, opened.enc, "ok")
        if opened.kid in self.identities[entity].operators:
            self.operator_signed[opened.typ] += 1
        body = opened.body
        try:
            if opened.enc and body["dst"].split("/")[0] == entity:
                decrypt(opened, self.identities[entity].seed)
                self.decrypted[opened.typ] += 1
            check_route(opened, msg.subject)
        except Rejected as exc:
            verdict.code, verdict.detail = exc.code, exc.detail
            return verdict
        if msg.reply.startswith(REPLY_FAMILIES):
            self.requests[msg.reply] = (body["id"], body["src"], body["dst"], opened.typ)
        if msg.subject.startswith("fed.cmd."):
            self.commands[body["id"]] = (msg.subject.split(".")[4], body["src"])
            if body["corr"] is not None:
                self.answers.append((msg, opened))
        if msg.subject.startswith(("_i.", "_l.")):
            self.replies.append((msg, opened))
        return verdict

    def check_replies(self) -> None:
        """Once everything is fed: each subscription's callbacks run in their own task,
        so a reply may be captured before its request."""
        for msg, opened in self.replies:
            self.check_reply(msg, opened)
        for msg, opened in self.answers:
            self.check_answer(msg, opened)

    def check_reply(self, msg: Captured, opened: Opened) -> None:
        """Sections 7, 10 and 11: a reply answers the request sent with that reply subject:
        corr is its id, dst its src, the request's receiver signed it, and its kind is a
        reply to the request's kind."""
        body = opened.body
        request = self.requests.get(msg.subject)
        where = f"{body['typ']} on {msg.subject}"
        if request is None:
            if msg.at_ms < self.started[msg.where] + GRACE_MS:
                self.before_taps += 1  # a daemon's first requests, before the taps
                return
            self.reply_problems.append(f"{where}: no captured request has this reply subject")
            return
        id_, src, dst, typ = request
        if body["corr"] != id_:
            self.reply_problems.append(f"{where}: corr is not the request's id")
        if body["dst"] != src:
            self.reply_problems.append(f"{where}: dst {body['dst']} is not the requester {src}")
        if opened.entity != dst.split("/")[0]:
            self.reply_problems.append(f"{where}: signed by {opened.entity}, asked {dst}")
        if not reply_fits(spec_v1(), opened.typ, typ):
            self.reply_problems.append(f"{where}: section 11 has no {opened.typ} reply to {typ}")

    def check_answer(self, msg: Captured, opened: Opened) -> None:
        """Section 11: a durable command with corr is sent back as the answer to a command
        of the operations its kind lists, to that command's sender."""
        body = opened.body
        where = f"{body['typ']} on {msg.subject}"
        command = self.commands.get(body["corr"])
        if command is None:
            if msg.at_ms < self.started[msg.where] + GRACE_MS:
                self.before_taps += 1
                return
            self.reply_problems.append(f"{where}: corr names no captured command")
            return
        op, src = command
        if not answer_fits(spec_v1(), opened.typ, op):
            self.reply_problems.append(f"{where}: section 11 has no {opened.typ} answer to {op}")
        if body["dst"] != src:
            self.reply_problems.append(f"{where}: dst {body['dst']} is not the sender {src}")

    def undelivered(self) -> list[str]:
        """fed.cmd publications whose id no JetStream delivery carried."""
        problems = []
        for msg in self.publications:
            msg_id = msg.headers.get("Nats-Msg-Id", "")
            envelope_id = peek_id(msg.data)
            if msg_id != envelope_id:
                problems.append(f"{msg.subject}: Nats-Msg-Id {msg_id!r} is not the id "
                                f"{envelope_id}")
            if msg_id not in self.delivered_ids:
                problems.append(f"{msg.subject} {msg_id}: published, never delivered")
        return problems

    def table(self) -> str:
        per_kind: dict[str, Counter[str]] = defaultdict(Counter)
        for v in self.verdicts:
            family = v.msg.subject.split(".")[0]
            if family == "fed":
                family = ".".join(v.msg.subject.split(".")[:2])
            label = f"{v.typ}{' (enc)' if v.enc else ''}"
            per_kind[label]["total"] += 1
            per_kind[label]["ok" if v.code == "ok" else v.code] += 1
            per_kind[label][f"on {family}"] += 0
        lines = []
        for label, counts in sorted(per_kind.items()):
            refused = {k: n for k, n in counts.items()
                       if k not in ("total", "ok") and not k.startswith("on ")}
            families = ",".join(sorted(k[3:] for k in counts if k.startswith("on ")))
            lines.append(f"  {label:28} {counts['ok']:4}/{counts['total']:<4} [{families}]"
                         + (f"  refused {refused}" if refused else ""))
        return "\n".join(lines)


def peek_body(data: bytes) -> dict[Any, Any]:
    """The body of a wire without any check, for labels only ({} when it does not decode)."""
    try:
        outer = decode(data, bin_keys=True)
        body = decode(outer[2])
        return body if isinstance(body, dict) else {}
    except (DecodeError, IndexError, TypeError, KeyError):
        return {}


def peek_typ(data: bytes) -> str:
    typ = peek_body(data).get("typ")
    return typ if isinstance(typ, str) else "?"


def peek_id(data: bytes) -> str:
    id_ = peek_body(data).get("id")
    return id_.hex() if isinstance(id_, bytes) else "?"


@dataclass
class Probe:
    """An envelope sealed by tests/independent/receiver.seal, sent to a live daemon."""

    name: str
    member: str  # whose leaf it is published on and whose key signs it
    subject: str
    src: str
    dst: str
    typ: str
    payload: dict[Any, Any]
    encrypt: bool = False
    variant: str = ""  # stale, stranger, twice, duplicate_key
    predicted: str = ""  # what the spec-only receiver says: "ok" or a code
    expected: str = ""  # the answer that follows: a kind section 11 lists, "error <code>"
    answer: str = ""  # what the daemon answered: a kind, and an error's code


def _probe(name: str, typ: str = "ping", payload: dict[Any, Any] | None = None, *,
           op: str = "", src: str = f"{A}/peer", dst: str = f"{B}/peer", **kw: Any) -> Probe:
    """A federation request from entity-a to entity-b."""
    return Probe(name, A, f"fed.req.{B}.{A}.{op or typ}", src, dst, typ, payload or {}, **kw)


def _local(name: str, actor: str, typ: str, op: str = "", **kw: Any) -> Probe:
    """A local request on entity-b's leaf, signed by entity-b's key (as entityctl)."""
    return Probe(name, B, f"loc.{B}.{actor}.{op or typ}", f"{B}/ctl", f"{B}/{actor}", typ,
                 {}, **kw)


PROBES = [
    # A spec-only sender, answered as section 11 says.
    _probe("ping"),
    _probe("talk, encrypted", "talk", {"text": "a spec-only sender says hi"}, encrypt=True),
    _local("ping to health", "health", "ping"),
    _probe("ping from another actor", src=f"{A}/health"),  # no rule names the actor
    # 11: "a receiver accepts either form of every kind that is not local only".
    _probe("talk in plain", "talk", {"text": "in plain"}),
    # The codes of open (section 6), answered (9.1, 9.2).
    _probe("stale ts", variant="stale"),
    _probe("unknown key", variant="stranger"),
    _probe("the same wire twice", variant="twice"),
    _probe("dst another actor", dst=f"{B}/health"),
    _probe("talk without text", "talk", {"conversation": "c"}),
    # 9.2: wrong_subject, unknown_kind, wrong_sender; 9.1: unexpected_kind,
    # unexpected_encryption.
    _probe("a kind not of its operation", "status_get", op="ping"),
    _probe("an operation no kind has", op="nope"),
    Probe("signed by the receiver's own key", B, f"fed.req.{B}.{B}.ping", f"{B}/peer",
          f"{B}/peer", "ping", {}),
    _local("ping to memory", "memory", "ping"),
    _local("encrypted on loc", "health", "status_get", encrypt=True),
    # 11: either form of a federation kind; 10: the loc operation is not interpreted;
    # 9.1: "decodes" is open's decoding, so a body open refuses for its keys is not
    # answered.
    _probe("a plain kind encrypted", encrypt=True),
    _local("loc op not the kind", "health", "status_get", op="hello"),
    _probe("an int key in the payload", payload={1: 2}),
    _probe("a duplicate key", variant="duplicate_key"),
]


def probe_wire(probe: Probe, identities: dict[str, Identity]) -> tuple[bytes, bytes]:
    signer = identities[probe.member]
    seed = SigningKey.generate().encode() if probe.variant == "stranger" else signer.seed
    ts = int(time.time() * 1000) - (100_000 if probe.variant == "stale" else 0)
    to = identities[probe.dst.split("/")[0]].public if probe.encrypt else None
    wire, id_ = seal(seed, src=probe.src, dst=probe.dst, subj=probe.subject, typ=probe.typ,
                     payload=probe.payload, ts_ms=ts, encrypt_to=to)
    if probe.variant == "duplicate_key":  # the body map once more with "typ" at its end
        body = decode(wire, bin_keys=True)[2]
        assert body[0] == 0x89
        body = b"\x8a" + body[1:] + b"\xa3typ" + b"\xa4ping"
        wire = sign_body(seed, body)
    return wire, id_


async def run_probes(fed: Federation, identities: dict[str, Identity]) -> list[Probe]:
    """Each probe sealed by the spec-only sender and requested on a reply inbox; what the
    spec-only receiver predicts (open, then the checks after open, then 9.1's rule for an
    answer) against what the daemon answers, opened by the spec-only receiver."""
    results = []
    clients = {name: await connect(fed[name].url, f"_i.{name}")
               for name in (A, B)}
    try:
        for template in PROBES:
            probe = replace(template)
            wire, id_ = probe_wire(probe, identities)
            judge = Judge(identities, {})
            ((entity, local),) = judge.destinations(Captured("", probe.subject, "", {}, b"", 0))
            receiver = judge.receiver(entity, local)
            for attempt in range(2 if probe.variant == "twice" else 1):
                try:
                    opened = receiver.open(wire, probe.subject, int(time.time() * 1000))
                    check_route(opened, probe.subject)
                    probe.predicted = "ok"
                except Rejected as exc:
                    probe.predicted = exc.code
                client = clients[probe.member]
                inbox = f"_i.{probe.member}.probe.{secrets.token_hex(16)}"
                if probe.predicted == "ok":
                    probe.expected = "a reply section 11 lists"
                elif answerable(wire, inbox):
                    probe.expected = f"error {probe.predicted}"
                else:
                    probe.expected = "no answer"
                sub = await client.subscribe(inbox, max_msgs=1)
                await client.publish(probe.subject, wire, reply=inbox)
                try:
                    msg = await sub.next_msg(timeout=2 if probe.expected == "no answer"
                                             else 10)
                except TimeoutError:
                    probe.answer = "no answer"
                    continue
                asker = judge.receiver(probe.member, probe.member)
                reply = asker.open(msg.data, msg.subject, int(time.time() * 1000))
                assert reply.body["corr"] == id_ and reply.body["dst"] == probe.src, probe
                signer = identities[probe.member]
                payload = decrypt(reply, signer.seed) if reply.enc else reply.body["payload"]
                probe.answer = reply.typ + (" (enc)" if reply.enc else "")
                if reply.typ == "error":
                    probe.answer += f" {payload['code']}"
                elif attempt == 0 and probe.predicted == "ok":
                    assert reply_fits(spec_v1(), reply.typ, probe.typ), probe
            results.append(probe)
    finally:
        for client in clients.values():
            await client.close()
    return results


async def run_scenarios(tmp_path: Path) -> tuple[Tap, dict[str, Identity], list[Probe]]:
    """Two daemons on one hub; everything on the hub and on each leaf's loc/_l subjects."""
    operator = SigningKey.generate()
    operator_key = tmp_path / "alice.key"
    operator_key.write_text(bytes(operator).hex() + "\n")
    operator_key.chmod(0o600)
    tap = Tap()
    async with ScriptedLLMServer(route) as llm:
        # entity-a lets entity-b only report (a talk is refused); entity-b trusts entity-a
        # with everything. Envelopes of at most MAX_BYTES, so a BIG patch is fetched.
        fed = build(tmp_path / "fed", [A, B], llm_url=llm.base_url,
                    trust={A: {B: ("report",)}, B: {A: ALL}},
                    extra={A: f'alice = "{bytes(operator.verify_key).hex()}"\n'})
        for member in fed.members.values():
            edit(member.config, "max_message_bytes = 1048576",
                 f"max_message_bytes = {MAX_BYTES}")
        add_observer(fed)
        async with running(fed):
            observer = await connect(fed.hub.url, "_i.observer", user="observer",
                                     password=OBSERVER_PASSWORD)
            clients = [observer]
            try:
                await observer.subscribe(">", cb=tap.cb("hub"))
                await observer.flush()
                for member in fed.members.values():
                    leaf = await connect(member.url, f"_l.{member.name}")
                    clients.append(leaf)
                    await leaf.subscribe("loc.>", cb=tap.cb(f"leaf:{member.name}"))
                    await leaf.subscribe("_l.>", cb=tap.cb(f"leaf:{member.name}"))
                    await leaf.flush()
                await fed.discovered()
                a, b = fed[A], fed[B]
                # (member, entityctl arguments, the exit codes that are right)
                steps: list[tuple[Member, tuple[str, ...], tuple[int, ...]]] = [
                    (a, ("status",), (0,)),
                    (a, ("--key", str(operator_key), "status"), (0,)),  # an operator key
                    (a, ("memory", "search", "anything"), (0,)),
                    (a, ("memory", "search", "anything", "--limit", "0"), (3,)),  # error
                    (a, ("todo", "--add", "water the plants"), (0,)),
                    (a, ("history", "--limit", "5"), (0,)),
                    (a, ("check", B), (0,)),
                    (b, ("check", A), (0,)),
                    (a, ("talk", B, "hello, what is 6 times 7?"), (0,)),
                    (b, ("talk", A, "may I?"), (3,)),  # not_trusted: an error on _i
                    (a, ("report", B, "the build is green"), (0,)),
                    (a, ("wake", B, "--reason", "look at the todo list"), (0,)),
                    (a, ("restart", B, "memory"), (0,)),
                    (a, ("restart", B, "no-such-actor"), (3,)),  # unknown_actor
                    (a, ("ask", 'CALL todo_update {"id": 1, "status": "done"}'), (0,)),
                    (a, ("delegate", B, "Write calc.add with a test", "--wait"), (0,)),
                    # A patch larger than one envelope: fetched in pieces (fed.req fetch).
                    (a, ("delegate", B, "BIG numbered lines", "--wait"), (0,)),
                    (a, ("tasks",), (0,)),
                    (b, ("peers",), (0,)),
                ]
                for member, args, codes in steps:
                    code, out, err = await member.ctl(*args, timeout=60)
                    assert code in codes, f"{member.name}: entityctl {args}: {out}{err}"
                await asyncio.sleep(1.5)  # heartbeats, and what is in flight lands
            finally:
                for client in clients:
                    await client.close()
            identities = {}
            for member in fed.members.values():
                seed = read_hex_key((member.data / "keys" / "entity.key").read_text())
                public = read_hex_key((member.data / "entity.pub").read_text())
                operators = (bytes(operator.verify_key),) if member.name == A else ()
                identities[member.name] = Identity(member.name, public, seed, operators)
            probes = await run_probes(fed, identities)  # after the taps: not judged there
    return tap, identities, probes


@pytest.mark.timeout(90)
async def test_a_spec_only_receiver_accepts_everything_a_live_federation_sends(
    tmp_path: Path,
) -> None:
    started = time.monotonic()
    tap, identities, probes = await run_scenarios(tmp_path)
    captured = tap.msgs
    for ident in identities.values():  # the seed in keys/entity.key is the key of entity.pub
        assert bytes(SigningKey(ident.seed).verify_key) == ident.public
    judge = Judge(identities, tap.started)
    for msg in sorted(captured, key=lambda m: m.at_ms):  # stable: arrival order
        judge.feed(msg)
    judge.check_replies()
    accepted = [v for v in judge.verdicts if v.code == "ok"]
    failures = [v for v in judge.verdicts if v.code != "ok"]
    report = (
        f"captured {len(captured)} messages in {time.monotonic() - started:.0f} s; "
        f"not envelopes: {dict(judge.skipped)}; fed.cmd publications on the hub "
        f"{len(judge.publications)} (received as their JetStream deliveries)\n"
        f"accepted {len(accepted)} of {len(judge.verdicts)} (envelope, receiver) pairs "
        f"({100 * len(accepted) / max(1, len(judge.verdicts)):.1f}%); decrypted "
        f"{sum(judge.decrypted.values())}; signed by an operator key "
        f"{dict(judge.operator_signed)}; replies to requests sent before the taps "
        f"{judge.before_taps}; per kind:\n" + judge.table())
    print(report)
    first = "\n".join(
        f"  {v.typ} on {v.msg.subject} (from {v.msg.where}) to {v.local}: {v.code} {v.detail}"
        for v in failures[:25])
    assert not failures, f"{report}\nfirst refusals:\n{first}"
    kinds = {v.typ for v in accepted}
    assert {"heartbeat", "event", "talk", "report", "task_offer", "ping", "pong"} <= kinds
    assert judge.reply_problems == [], judge.reply_problems[:10]
    assert judge.undelivered() == []
    refuses_what_it_should(judge, identities)
    print("probes (the spec-only sender to the live daemons):")
    for probe in probes:
        print(f"  {probe.name:34} receiver: {probe.predicted:22}"
              f" expects: {probe.expected:26} daemon: {probe.answer}")
    wrong = [p for p in probes if not (
        p.answer.replace(" (enc)", "") == p.expected or (
            p.expected.startswith("a reply") and not p.answer.startswith(("error", "no "))))]
    assert not wrong, wrong


def refuses_what_it_should(judge: Judge, identities: dict[str, Identity]) -> None:
    """Controls: the same receivers, fed captured envelopes a receiver must refuse."""
    talk = next(v for v in judge.verdicts if v.typ == "talk" and v.code == "ok")
    receiver = judge.receivers[(talk.entity, talk.local)]
    now = talk.msg.at_ms + 1000
    with pytest.raises(Rejected, match="replayed"):  # the cache is live
        receiver.open(talk.msg.data, talk.msg.subject, now)
    with pytest.raises(Rejected, match="wrong_destination"):  # not for entity-a's peer
        judge.receiver(A, f"{A}/peer").open(talk.msg.data, talk.msg.subject, now)
    with pytest.raises(Rejected, match="stale_timestamp"):  # 91 s later
        Receiver(judge.keyring(B), f"{B}/peer").open(talk.msg.data, talk.msg.subject,
                                                     now + 90_000)
    opened = Receiver(judge.keyring(B), f"{B}/peer").open(talk.msg.data, talk.msg.subject,
                                                          now)
    with pytest.raises(Rejected, match="bad_payload"):  # entity-a's seed opens no box to b
        decrypt(opened, identities[A].seed)
    beat = next(v.msg for v in judge.verdicts if v.typ == "heartbeat")
    fresh = Receiver(judge.keyring(B), B)
    other = beat.subject.replace(beat.subject.split(".")[2], "entity-c")
    with pytest.raises(Rejected, match="wrong_subject"):
        fresh.open(beat.data, other, beat.at_ms)
    forged = beat.data[:-1] + bytes([beat.data[-1] ^ 1])
    with pytest.raises(Rejected, match="bad_signature"):
        fresh.open(forged, beat.subject, beat.at_ms)
    with pytest.raises(Rejected, match="unknown_key"):  # a receiver that trusts no one
        Receiver({}, B).open(beat.data, beat.subject, beat.at_ms)


def test_section_11_reads_as_one_consistent_table() -> None:
    """What the receiver reads from section 11 agrees with itself: the index and the
    kinds, each default a value of its field's type, each kind travelling somewhere, each
    federation operation carrying one kind."""
    spec = spec_v1()
    assert len(spec.kinds) == int(re.search(  # type: ignore[union-attr]
        r"Version 1 has these (\d+) kinds", SPEC_PATH.read_text(encoding="utf-8")).group(1))
    assert {k: v.federation for k, v in spec.kinds.items()} == spec.index
    fields = [(kind.name, f) for kind in spec.kinds.values() for f in kind.fields]
    fields += [(name, f) for name, record in spec.records.items() for f in record]
    for where, spec_field in fields:
        if not spec_field.required:
            problem = spec.value_problem(spec_field.default, spec_field.type,
                                         f"{where}.{spec_field.name}")
            assert spec_field.default is not None or spec_field.type[0] == "nil_or", where
            assert not problem, problem
    for kind in spec.kinds.values():
        assert kind.routes, f"{kind.name} travels nowhere"
        if kind.federation == "local only":
            assert all(r.how in ("loc", "reply") for r in kind.routes), kind
    for family in ("req", "cmd"):
        routes = [(r.op, k.name) for k in spec.kinds.values() for r in k.routes
                  if r.how == family]
        assert len({op for op, _ in routes}) == len(routes), routes  # one kind per op
    # Section 10's operation table says what Travels says.
    table = re.findall(r"^  \| `fed\.(req|cmd)` \| `([a-z_]+)` \| `([a-z_]+)` \|",
                       SPEC_PATH.read_text(encoding="utf-8"), re.M)
    assert {(f, op, k) for f, op, k in table} == (
        {("req", op, k) for op, k in spec.request_ops().items()}
        | {("cmd", op, k) for op, k in spec.command_ops().items()}), table


def _answered_by_the_daemon(wire: bytes) -> bool:
    return _claimed_header(wire, DEFAULT_MAX_BYTES) is not None


def test_the_daemon_answers_exactly_the_refusals_section_9_1_says() -> None:
    """9.1's "decodes" is open's decoding (section 4's keys); the reference's refuse()
    and the spec-only answerable() agree on every case, both ways."""
    seed = SigningKey.generate().encode()
    subj = "fed.req.beta.alpha.ping"
    good, _ = seal(seed, src="alpha/peer", dst="beta/peer", subj=subj, typ="ping",
                   payload={}, ts_ms=0)
    body = decode(good, bin_keys=True)[2]
    assert body[0] == 0x89
    cases = {
        "a good envelope": (good, True),
        "an int key in the payload": (seal(seed, src="alpha/peer", dst="beta/peer",
                                           subj=subj, typ="ping", payload={1: 2},
                                           ts_ms=0)[0], False),
        "a repeated key": (sign_body(seed, b"\x8a" + body[1:] + b"\xa3typ\xa4ping"), False),
        "trailing bytes in the body": (sign_body(seed, body + b"\xc0"), False),
        "a bad signature": (good[:-1] + bytes([good[-1] ^ 1]), True),
        "src not an address": (seal(seed, src="alpha", dst="beta/peer", subj=subj,
                                    typ="ping", payload={}, ts_ms=0)[0], False),
        "trailing bytes after the wire": (good + b"\xc0", False),
        "not msgpack": (b"\xc1", False),
    }
    for name, (wire, answered) in cases.items():
        assert answerable(wire, "_i.alpha.x.y") is answered, name
        assert _answered_by_the_daemon(wire) is answered, name
    assert not answerable(good, "fed.evt.alpha.peer.x")


def test_events_are_bound_to_their_subject_tokens() -> None:
    """Section 10, *Event tokens*: src's actor and the payload's actor and type."""
    seed = SigningKey.generate().encode()
    ring = {bytes(SigningKey(seed).verify_key): "alpha"}
    now = int(time.time() * 1000)

    def event(subj: str, src: str, data: dict[str, Any], typ: str = "event") -> None:
        wire, _ = seal(seed, src=src, dst="*", subj=subj, typ=typ, payload=data, ts_ms=now)
        check_route(Receiver(ring, "beta").open(wire, subj, now), subj)

    good = {"type": "turn_started", "actor": "orchestrator", "data": {}}
    event("fed.evt.alpha.orchestrator.turn_started", "alpha/orchestrator", good)
    for subj, src, data in (
        ("fed.evt.alpha.memory.turn_started", "alpha/orchestrator", good),
        ("fed.evt.alpha.orchestrator.turn_done", "alpha/orchestrator", good),
        ("fed.evt.alpha.orchestrator.turn_started", "alpha/memory", good),
        ("fed.evt.alpha.orchestrator.turn_started", "alpha/orchestrator",
         {**good, "actor": "memory"}),
    ):
        with pytest.raises(Rejected, match="wrong_subject"):
            event(subj, src, data)
    with pytest.raises(Rejected, match="wrong_subject"):
        event("fed.evt.alpha.health.heartbeat", "alpha/health",
              {"capabilities": [], "interval": 5, "started_at": 0}, "heartbeat")
