"""seal() and open(): the signed wire format, each check of open(), and the package surface."""

from __future__ import annotations

import time
import types
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey, VerifyKey

import actors.messages  # noqa: F401  (registers tool_call, a kind with args of type any)
import protocol
from protocol import (
    MAX_WIRE_BYTES,
    REASON_CODES,
    ActorStatus,
    BadPayload,
    BadSignature,
    Envelope,
    Event,
    Keyring,
    Malformed,
    MalformedBody,
    Ping,
    ProtocolError,
    Replayed,
    ReplayGuard,
    StaleTimestamp,
    Status,
    TooLarge,
    UnknownKey,
    UnknownKind,
    WrongDestination,
    WrongSender,
    WrongSubject,
    seal,
    subjects,
)

NOW = 1_767_225_600_000
ALPHA = SigningKey(b"\x01" * 32)
BETA = SigningKey(b"\x02" * 32)
MALLORY = SigningKey(b"\x03" * 32)
REQ = subjects.request("beta", "alpha", "ping")


def trusted() -> Keyring:
    keyring = Keyring()
    keyring.add(bytes(ALPHA.verify_key), "alpha")
    keyring.add(bytes(BETA.verify_key), "beta", label="operator:beta")
    return keyring


def ping(key: SigningKey = ALPHA, **overrides: Any) -> bytes:
    """A valid ping from alpha/peer to beta/peer on REQ, sealed at NOW."""
    args: dict[str, Any] = {
        "src": "alpha/peer",
        "dst": "beta/peer",
        "subj": REQ,
        "message": Ping(),
        "ts": NOW,
    }
    args.update(overrides)
    wire, _ = seal(key, **args)
    return wire


def receive(
    wire: bytes,
    *,
    subject: str = REQ,
    local: str = "beta/peer",
    keyring: Keyring | None = None,
    replay: ReplayGuard | None = None,
    now: int = NOW,
    max_bytes: int = MAX_WIRE_BYTES,
) -> Envelope:
    return protocol.open(
        wire,
        subject=subject,
        local=local,
        keyring=keyring if keyring is not None else trusted(),
        replay=replay if replay is not None else ReplayGuard(),
        now=now,
        max_bytes=max_bytes,
    )


def test_seal_then_open_returns_the_typed_message_and_its_context() -> None:
    status = Status(
        entity="beta",
        public_key=bytes(BETA.verify_key).hex(),
        uptime_s=3.5,
        nats_server="nats://127.0.0.1:4222",
        actors=[ActorStatus("coder", "running", 1)],
        rejected={"bad_signature": 2},
    )
    inbox = "_i.alpha.Zb3kq9WbT6x.1"
    request_id = protocol.new_id()
    wire, msg_id = seal(
        BETA,
        src="beta/health",
        dst="alpha/peer",
        subj=inbox,
        message=status,
        corr=request_id,
        ts=NOW - 5,
    )
    envelope = receive(wire, subject=inbox, local="alpha/peer")
    assert envelope.id == msg_id and len(msg_id) == 16
    assert (envelope.src, envelope.dst, envelope.subj) == ("beta/health", "alpha/peer", inbox)
    assert (envelope.typ, envelope.ts, envelope.corr, envelope.enc) == (
        "status",
        NOW - 5,
        request_id,
        False,
    )
    assert envelope.message == status
    assert envelope.kid == bytes(BETA.verify_key)
    assert envelope.signer == "operator:beta"
    assert envelope.src_entity == "beta"


def test_wire_is_the_outer_array_over_the_exact_signed_body() -> None:
    wire = ping()
    version, kid, body, sig = msgpack.unpackb(wire)
    assert version == protocol.VERSION == 1
    assert kid == bytes(ALPHA.verify_key)
    assert protocol.DOMAIN == b"entityd/v1/envelope\x00"
    VerifyKey(kid).verify(b"entityd/v1/envelope\x00" + body, sig)
    fields = msgpack.unpackb(body)
    assert set(fields) == {"id", "src", "dst", "subj", "typ", "ts", "corr", "enc", "payload"}
    assert (fields["typ"], fields["payload"], fields["subj"]) == ("ping", {}, REQ)


def test_open_verifies_the_body_bytes_as_received_without_re_encoding() -> None:
    fields = msgpack.unpackb(msgpack.unpackb(ping())[2])
    # ts as a uint64 and the fields in reverse order: valid msgpack that seal() never writes
    body = b"\x89" + b"".join(
        msgpack.packb(k) + (b"\xcf" + v.to_bytes(8, "big") if k == "ts" else msgpack.packb(v))
        for k, v in reversed(list(fields.items()))
    )
    assert msgpack.unpackb(body) == fields
    sig = ALPHA.sign(protocol.DOMAIN + body).signature
    envelope = receive(msgpack.packb([1, bytes(ALPHA.verify_key), body, sig]))
    assert envelope.ts == NOW and envelope.message == Ping()


@pytest.mark.parametrize("mask", [0x01, 0x80, 0xFF])
def test_every_single_byte_change_is_rejected(mask: int) -> None:
    wire = ping(
        message=Event(type="commit", actor="coder", data={"files": 3}),
        subj="fed.evt.alpha.coder.commit",
        src="alpha/coder",
        dst="*",
    )
    receive(wire, subject="fed.evt.alpha.coder.commit", local="beta")
    for position in range(len(wire)):
        changed = bytearray(wire)
        changed[position] ^= mask
        with pytest.raises(ProtocolError) as info:
            receive(bytes(changed), subject="fed.evt.alpha.coder.commit", local="beta")
        assert info.value.reason in REASON_CODES
        # a deliberate check rejected it, not open()'s catch-all for unexpected exceptions
        assert info.value.__cause__ is None, (position, info.value)


def test_a_replay_inside_the_window_is_rejected() -> None:
    guard = ReplayGuard()
    wire = ping()
    receive(wire, replay=guard)
    with pytest.raises(Replayed) as info:
        receive(wire, replay=guard, now=NOW + 60_000)
    assert info.value.reason == "replayed"


@pytest.mark.parametrize("offset", [-90_001, 5_001, 90_000, -3_600_000, 3_600_000])
def test_timestamps_outside_the_default_window_are_stale(offset: int) -> None:
    with pytest.raises(StaleTimestamp) as info:
        receive(ping(ts=NOW + offset))
    assert info.value.reason == "stale_timestamp"


@pytest.mark.parametrize("offset", [-90_000, 5_000])
def test_the_default_window_is_90_seconds_behind_and_5_ahead_inclusive(offset: int) -> None:
    assert receive(ping(ts=NOW + offset)).ts == NOW + offset


def test_an_id_counts_as_seen_only_once_the_envelope_passed_every_check() -> None:
    guard = ReplayGuard()
    msg_id = b"\x07" * 16
    with pytest.raises(BadPayload):
        receive(ping(message=None, typ="error", payload={"code": 1}, msg_id=msg_id),
                replay=guard)
    with pytest.raises(WrongDestination):
        receive(ping(dst="beta/coder", msg_id=msg_id), replay=guard)
    assert len(guard) == 0
    receive(ping(msg_id=msg_id), replay=guard)
    with pytest.raises(Replayed):
        receive(ping(msg_id=msg_id), replay=guard)


def test_replays_are_checked_per_sender_key() -> None:
    """A sender that overflows its own replay cache raises only its own floor: another
    key's messages are still accepted, and its replays still caught."""
    keyring = trusted()
    gamma = SigningKey(b"\x04" * 32)
    keyring.add(bytes(gamma.verify_key), "gamma")
    subject = subjects.request("beta", "gamma", "ping")
    guard = ReplayGuard(capacity=50)
    first = ping()
    receive(first, replay=guard, keyring=keyring)
    refused = 0
    for _ in range(200):  # gamma floods, dated as far ahead as it may
        wire = ping(gamma, src="gamma/peer", subj=subject, ts=NOW + 5_000)
        try:
            receive(wire, subject=subject, replay=guard, keyring=keyring)
        except StaleTimestamp:
            refused += 1
    assert refused == 200 - 51
    assert receive(ping(ts=NOW + 1), replay=guard, keyring=keyring).src == "alpha/peer"
    with pytest.raises(Replayed):
        receive(first, replay=guard, keyring=keyring, now=NOW + 2)
    assert guard.senders() == 2


def test_a_message_signed_for_another_subject_is_rejected() -> None:
    with pytest.raises(WrongSubject) as info:
        receive(ping(), subject="fed.req.beta.alpha.talk")
    assert info.value.reason == "wrong_subject"
    assert info.value.subject == "fed.req.beta.alpha.talk"
    assert str(info.value).startswith("wrong_subject: ")
    assert str(info.value).endswith(" on fed.req.beta.alpha.talk")


def test_a_subject_outside_the_layout_is_rejected() -> None:
    with pytest.raises(WrongSubject):
        receive(ping(subj="beta.alpha.ping"), subject="beta.alpha.ping")


@pytest.mark.parametrize(
    ("dst", "local"),
    [
        ("beta/coder", "beta/peer"),  # another actor of the receiver
        ("gamma/peer", "beta"),  # another entity
        ("*", "beta/peer"),  # '*' is only for events
        ("gamma/peer", "gamma/peer"),  # the receiver, but not the subject's receiver token
    ],
)
def test_a_message_for_someone_else_is_rejected(dst: str, local: str) -> None:
    with pytest.raises(WrongDestination) as info:
        receive(ping(dst=dst), local=local)
    assert info.value.reason == "wrong_destination"


@pytest.mark.parametrize(
    "address",
    [
        {"src": "alpha/peer\n"},
        {"dst": "beta/peer\n"},
        {"src": "alpha"},
        {"src": "alpha/peer/x"},
        {"src": "alpha/Peer"},
        {"dst": "beta/" + "p" * 33},
        {"dst": "beta/pe.er"},
        {"src": "*"},
    ],
)
def test_addresses_must_be_exactly_entity_slash_actor(address: dict[str, str]) -> None:
    # received by the entity as a whole, which would take any actor name of beta
    with pytest.raises(MalformedBody):
        receive(ping(ALPHA, **address), local="beta")


def test_an_entity_wide_receiver_accepts_any_of_its_actors() -> None:
    assert receive(ping(dst="beta/coder"), local="beta").dst == "beta/coder"


def test_events_must_be_broadcast_and_broadcasts_must_be_events() -> None:
    evt = subjects.event("alpha", "coder", "commit")
    event = Event(type="commit", actor="coder")
    with pytest.raises(WrongDestination):
        receive(ping(subj=evt, message=event, dst="beta/peer"), subject=evt)
    envelope = receive(ping(subj=evt, message=event, dst="*"), subject=evt, local="gamma")
    assert envelope.message == event


@pytest.mark.parametrize(
    ("subject", "src"),
    [
        ("fed.req.beta.gamma.ping", "alpha/peer"),  # the subject names gamma as the sender
        ("fed.evt.beta.coder.commit", "alpha/coder"),  # only beta publishes beta's events
        ("loc.beta.peer.ping", "alpha/peer"),  # beta's local mailboxes are beta's
    ],
)
def test_a_sender_other_than_the_subject_names_is_rejected(subject: str, src: str) -> None:
    dst = "*" if ".evt." in subject else "beta/peer"
    message = Event(type="commit", actor="coder") if ".evt." in subject else Ping()
    wire = ping(subj=subject, src=src, dst=dst, message=message)
    with pytest.raises(WrongSender):
        receive(wire, subject=subject)


def test_a_key_speaks_only_for_its_own_entity() -> None:
    subject = "fed.req.alpha.beta.ping"
    with pytest.raises(WrongSender) as info:
        receive(
            ping(ALPHA, src="beta/peer", dst="alpha/peer", subj=subject),
            subject=subject,
            local="alpha/peer",
        )
    assert info.value.reason == "wrong_sender"


def test_an_unknown_key_is_rejected() -> None:
    with pytest.raises(UnknownKey) as info:
        receive(ping(MALLORY))
    assert info.value.reason == "unknown_key"


def test_a_removed_key_is_no_longer_trusted() -> None:
    keyring = trusted()
    keyring.remove(bytes(ALPHA.verify_key))
    with pytest.raises(UnknownKey):
        receive(ping(), keyring=keyring)


def test_the_keyring_binds_a_key_to_one_entity() -> None:
    keyring = trusted()
    with pytest.raises(ValueError):
        keyring.add(bytes(ALPHA.verify_key), "beta")
    with pytest.raises(ValueError):
        keyring.add(b"\x00" * 31, "alpha")


def test_a_signature_by_another_trusted_key_is_rejected() -> None:
    version, kid, body, _ = msgpack.unpackb(ping())
    forged = msgpack.packb([version, kid, body, BETA.sign(protocol.DOMAIN + body).signature])
    with pytest.raises(BadSignature):
        receive(forged)


def test_an_oversized_message_is_rejected_before_decoding() -> None:
    wire = ping()
    assert receive(wire, max_bytes=len(wire)).message == Ping()
    with pytest.raises(TooLarge) as info:
        receive(ping(), max_bytes=len(wire) - 1)
    assert info.value.reason == "too_large"
    with pytest.raises(TooLarge):
        receive(b"\xc1" * (MAX_WIRE_BYTES + 1))
    assert MAX_WIRE_BYTES == 1024 * 1024


def test_garbage_is_malformed() -> None:
    with pytest.raises(Malformed):
        receive(b"\xc1")


def test_a_duplicate_body_key_is_rejected_even_when_signed() -> None:
    fields = msgpack.unpackb(msgpack.unpackb(ping())[2])
    body = msgpack.Packer().pack_map_pairs([*fields.items(), ("dst", "beta/peer")])
    sig = ALPHA.sign(protocol.DOMAIN + body).signature
    with pytest.raises(MalformedBody):
        receive(msgpack.packb([1, bytes(ALPHA.verify_key), body, sig]))


def test_unknown_kinds_and_bad_payloads_are_rejected() -> None:
    with pytest.raises(UnknownKind):
        receive(ping(message=None, typ="launch", payload={}))
    with pytest.raises(BadPayload):
        receive(ping(message=None, typ="error", payload={"code": "busy"}))


def test_an_encrypted_payload_is_handed_over_unopened() -> None:
    envelope = receive(ping(message=None, typ="ping", payload=b"\x01" * 40, enc=True))
    assert envelope.enc is True
    assert envelope.payload == b"\x01" * 40
    assert envelope.message is None
    with pytest.raises(UnknownKind):
        receive(ping(message=None, typ="launch", payload=b"\x01" * 40, enc=True))
    with pytest.raises(MalformedBody):
        receive(ping(message=None, typ="ping", payload={}, enc=True))


@pytest.mark.parametrize(
    ("wire_args", "open_args", "first"),
    [
        ({"key": MALLORY, "ts": 0}, {}, UnknownKey),
        ({"subj": "fed.req.beta.alpha.talk", "dst": "gamma/peer"}, {}, WrongSubject),
        (
            {"src": "beta/peer", "subj": "fed.req.beta.gamma.ping"},
            {"subject": "fed.req.beta.gamma.ping"},
            WrongSender,
        ),
        ({"dst": "beta/coder", "ts": 0}, {}, WrongDestination),
        ({"ts": 0, "typ": "launch", "message": None}, {}, StaleTimestamp),
    ],
)
def test_the_first_failing_check_in_spec_order_is_reported(
    wire_args: dict[str, Any], open_args: dict[str, Any], first: type[ProtocolError]
) -> None:
    with pytest.raises(first):
        receive(ping(**wire_args), **open_args)


def test_seal_needs_a_registered_record_or_a_typ() -> None:
    with pytest.raises(TypeError):
        seal(ALPHA, src="alpha/peer", dst="beta/peer", subj=REQ)
    with pytest.raises(TypeError):
        seal(ALPHA, src="alpha/peer", dst="beta/peer", subj=REQ, message=ActorStatus("a", "b", 1))


def test_seal_defaults_to_a_fresh_id_and_the_current_time() -> None:
    before = protocol.now_ms()
    first, first_id = seal(ALPHA, src="alpha/peer", dst="beta/peer", subj=REQ, message=Ping())
    _, second_id = seal(ALPHA, src="alpha/peer", dst="beta/peer", subj=REQ, message=Ping())
    assert first_id != second_id and len(second_id) == 16
    envelope = protocol.open(
        first, subject=REQ, local="beta/peer", keyring=trusted(), replay=ReplayGuard()
    )
    assert before <= envelope.ts <= protocol.now_ms()
    assert abs(protocol.now_ms() - time.time() * 1000) < 1000


def test_the_package_lists_exactly_its_public_names() -> None:
    listed = protocol.__all__
    assert len(listed) == len(set(listed))
    for name in listed:
        assert hasattr(protocol, name), name
    assert set(listed) >= {
        "BROADCAST",
        "DOMAIN",
        "MAX_WIRE_BYTES",
        "REASON_CODES",
        "VERSION",
        "Envelope",
        "Keyring",
        "KeyEntry",
        "ProtocolError",
        "ReplayGuard",
        "kind",
        "kinds",
        "new_id",
        "now_ms",
        "open",
        "seal",
        "subjects",
        "Ping",
        "Pong",
        "Error",
        "StatusGet",
        "Status",
        "ActorStatus",
        "Event",
    }
    # the submodules bound as attributes by importing them are not public, but these are
    exported = ("kinds", "subjects", "reasons", "ledger")
    public = {
        name
        for name, value in vars(protocol).items()
        if not name.startswith("_")
        and (not isinstance(value, types.ModuleType) or name in exported)
    }
    assert set(listed) == public
    for code_class in ProtocolError.__subclasses__():
        if code_class.__module__.startswith("protocol."):
            assert code_class.__name__ in listed
    star: dict[str, Any] = {}
    exec("from protocol import *", star)
    assert set(listed) <= set(star)


def nested(depth: int, shape: str = "lists") -> Any:
    """A leaf inside `depth` lists, maps, or lists and maps in turn."""
    value: Any = "leaf"
    for level in range(depth):
        as_map = shape == "maps" or (shape == "mixed" and level % 2 == 1)
        value = {"k": value} if as_map else [value]
    return value


@pytest.mark.parametrize("shape", ["lists", "maps", "mixed"])
@pytest.mark.parametrize(("typ", "record"), [
    ("event", lambda inner: {"type": "t", "actor": "a", "data": {"x": inner}}),
    ("tool_call", lambda inner: {"tool": "read_file", "args": {"x": inner}}),
])
def test_a_value_of_type_any_nests_at_most_32_levels(typ: str, record: Any,
                                                      shape: str) -> None:
    """An event's data or a tool call's args (maps of *any*) hold lists and maps 32
    levels deep, the map itself the first, however they alternate; one more is
    bad_payload, before anything renders or walks it. Width is not depth."""
    ok = protocol.kinds.decode(typ, record(nested(31, shape)))
    assert ok is not None
    protocol.kinds.decode(typ, record([nested(30, shape)] * 1000))
    with pytest.raises(protocol.BadPayload, match="nested more than 32 levels"):
        protocol.kinds.decode(typ, record(nested(32, shape)))


def test_what_msgpack_cannot_carry_is_bad_payload_to_its_sender() -> None:
    """seal() refuses, as BadPayload, an integer past 64 bits, a lone surrogate and lists
    nested past what msgpack writes; nothing is signed."""
    key = SigningKey.generate()
    for data, says in (({"n": 2**64}, "past 64 bits"), ({"s": "\ud800"}, "lone surrogate"),
                       ({"deep": nested(2000)}, "nested too deeply")):
        with pytest.raises(protocol.BadPayload, match=says):
            protocol.seal(key, src="entity-a/x", dst="*", subj="fed.evt.entity-a.x.t",
                          message=protocol.Event("t", "x", data))
