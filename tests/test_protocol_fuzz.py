"""Fuzzing open(): whatever bytes arrive, the only outcome is an Envelope or a ProtocolError.

Each rejection must come from one of open()'s deliberate checks: open() also wraps any
unexpected exception as Malformed (chained with `from exc`), and that safety net firing
would mean a decoding path nobody wrote a check for, so the tests require `__cause__` to
be None.
"""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st
from nacl.signing import SigningKey

import protocol
from protocol import (
    REASON_CODES,
    ActorStatus,
    Envelope,
    Error,
    Event,
    Keyring,
    Ping,
    ProtocolError,
    ReplayGuard,
    Status,
    StatusGet,
    kinds,
)

NOW = 1_767_225_600_000
ALPHA = SigningKey(b"\x0a" * 32)
BETA = SigningKey(b"\x0b" * 32)
REQ = "fed.req.beta.alpha.talk"
FUZZ = settings(
    max_examples=2000,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)

KEYRING = Keyring()
KEYRING.add(bytes(ALPHA.verify_key), "alpha")
KEYRING.add(bytes(BETA.verify_key), "beta")


def sealed(subject: str, local: str, **args: Any) -> tuple[bytes, str, str]:
    wire, _ = protocol.seal(ALPHA, subj=subject, ts=NOW - 10, **args)
    return wire, subject, local


STATUS = Status(
    entity="alpha",
    public_key="00" * 32,
    uptime_s=1.5,
    nats_server="nats://127.0.0.1:4222",
    actors=[ActorStatus("coder", "running", 2)],
    rejected={"replayed": 1},
)
VALID = [
    sealed(REQ, "beta/peer", src="alpha/peer", dst="beta/peer", message=Ping()),
    sealed(REQ, "beta", src="alpha/peer", dst="beta/peer", message=STATUS, corr=b"\x01" * 16),
    sealed(REQ, "beta/peer", src="alpha/peer", dst="beta/peer", message=Error("busy", "later")),
    sealed(
        "loc.alpha.health.status_get",
        "alpha/health",
        src="alpha/orchestrator",
        dst="alpha/health",
        message=StatusGet(),
    ),
    sealed(
        "fed.evt.alpha.coder.commit",
        "beta",
        src="alpha/coder",
        dst="*",
        message=Event("commit", "coder", {"files": 3, "sha": "4b82"}),
    ),
    sealed(
        "fed.cmd.beta.alpha.report",
        "beta/peer",
        src="alpha/peer",
        dst="beta/peer",
        typ="event",
        payload=b"\x00" * 24 + b"\x99" * 40,
        enc=True,
    ),
    sealed("_i.alpha.inbox.1", "alpha", src="alpha/peer", dst="alpha/peer", message=Ping()),
]


def attempt(wire: bytes, subject: str = REQ, local: str = "beta/peer") -> Envelope | None:
    """open() the bytes; None when rejected by a deliberate check."""
    try:
        envelope = protocol.open(
            wire, subject=subject, local=local, keyring=KEYRING, replay=ReplayGuard(), now=NOW
        )
    except ProtocolError as exc:
        assert exc.reason in REASON_CODES
        assert exc.__cause__ is None, f"open()'s safety net caught: {exc}"
        return None
    return envelope


def fuzz(wire: bytes, subject: str = REQ, local: str = "beta/peer") -> Envelope | None:
    """attempt() inside a Hypothesis test, noting how deep each input reached;
    --hypothesis-show-statistics prints the tally of reason codes."""
    try:
        protocol.open(
            wire, subject=subject, local=local, keyring=KEYRING, replay=ReplayGuard(), now=NOW
        )
        event("accepted")
    except ProtocolError as exc:
        event(exc.reason)
    return attempt(wire, subject, local)


def test_every_valid_sample_opens() -> None:
    for wire, subject, local in VALID:
        assert attempt(wire, subject, local) is not None


@FUZZ
@given(st.binary(max_size=1024))
def test_random_bytes(data: bytes) -> None:
    assert fuzz(data) is None


# ---- mutated valid envelopes --------------------------------------------------------

mutation = st.one_of(
    st.tuples(st.just("flip"), st.integers(0, 10_000), st.integers(1, 255)),
    st.tuples(st.just("truncate"), st.integers(0, 10_000), st.just(0)),
    st.tuples(st.just("insert"), st.integers(0, 10_000), st.binary(min_size=1, max_size=8)),
    st.tuples(st.just("delete"), st.integers(0, 10_000), st.integers(1, 8)),
)


def mutate(wire: bytes, edits: list[tuple[str, int, Any]]) -> bytes:
    data = bytearray(wire)
    for op, position, arg in edits:
        at = position % (len(data) + 1)
        if op == "flip" and data:
            data[at % len(data)] ^= arg
        elif op == "truncate":
            del data[at:]
        elif op == "insert":
            data[at:at] = arg
        elif op == "delete":
            del data[at : at + arg]
    return bytes(data)


@FUZZ
@given(st.sampled_from(VALID), st.lists(mutation, min_size=1, max_size=4))
def test_mutated_envelopes(sample: tuple[bytes, str, str], edits: list[Any]) -> None:
    wire, subject, local = sample
    changed = mutate(wire, edits)
    envelope = fuzz(changed, subject, local)
    if envelope is not None:
        # Only the outer array is unsigned: an edit can re-encode it (a wider length
        # header, say) but never change what was signed.
        original = attempt(wire, subject, local)
        assert original is not None
        assert envelope == original


# ---- structurally valid msgpack of the wrong shapes and types -------------------------

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=True),
    st.text(max_size=40),
    st.binary(max_size=70),
)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=5),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(-5, 5)), children, max_size=5),
    ),
    max_leaves=10,
)


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


@FUZZ
@given(
    st.one_of(
        values,
        st.lists(values, min_size=4, max_size=4),
        st.tuples(
            st.one_of(st.just(1), values),
            st.one_of(
                st.just(bytes(ALPHA.verify_key)), st.binary(min_size=32, max_size=32), values
            ),
            st.one_of(st.binary(max_size=200), values.map(pack), values),
            st.one_of(st.binary(min_size=64, max_size=64), values),
        ).map(list),
    )
)
def test_msgpack_of_wrong_shapes_and_types(value: Any) -> None:
    assert fuzz(pack(value)) is None


FIELD_VALUES = {
    "id": st.binary(min_size=16, max_size=16),
    "src": st.sampled_from(["alpha/peer", "alpha/coder"]),
    "dst": st.sampled_from(["beta/peer", "beta/coder", "*", "gamma/peer"]),
    "subj": st.just(REQ),
    "typ": st.sampled_from([*sorted(kinds.kinds()), "launch"]),
    "ts": st.integers(NOW - 100_000, NOW + 100_000),
    "corr": st.one_of(st.none(), st.binary(min_size=16, max_size=16)),
    "enc": st.sampled_from([False, False, False, True]),
}


def payload_for(typ: str) -> st.SearchStrategy[Any]:
    """Payloads shaped like the kind's map, with each field valid or arbitrary."""
    cls = kinds.kinds().get(typ)
    shaped: st.SearchStrategy[Any] = values
    if cls is not None:
        example = {
            "status": kinds.encode(STATUS),
            "event": {"type": "t", "actor": "a", "data": {"k": 1}},
            "error": {"code": "c", "message": "m"},
        }.get(typ, {})
        shaped = st.fixed_dictionaries(
            {},
            optional={name: st.one_of(st.just(value), values) for name, value in example.items()},
        )
    return st.one_of(shaped, shaped, shaped, values)


@st.composite
def signed_bodies(draw: st.DrawFn) -> bytes:
    """Bodies with up to two fields missing or of any type, the rest valid, signed."""
    how_many = draw(st.sampled_from([0, 0, 0, 0, 1, 2]))
    broken = draw(
        st.sets(st.sampled_from(sorted(FIELD_VALUES)), min_size=how_many, max_size=how_many)
    )
    body: dict[Any, Any] = {}
    for name, valid in FIELD_VALUES.items():
        if name not in broken:
            body[name] = draw(valid)
        elif draw(st.booleans()):
            body[name] = draw(values)
    typ = body.get("typ")
    if body.get("enc") is True:
        body["payload"] = draw(st.one_of(st.binary(max_size=80), values))
    else:
        body["payload"] = draw(payload_for(typ if isinstance(typ, str) else ""))
    if draw(st.sampled_from([False] * 9 + [True])):
        body[draw(st.one_of(st.text(max_size=6), st.integers(-5, 5)))] = draw(values)
    raw = pack(body)
    return pack([1, bytes(ALPHA.verify_key), raw, ALPHA.sign(protocol.DOMAIN + raw).signature])


@FUZZ
@given(signed_bodies())
def test_signed_bodies_with_arbitrary_fields(wire: bytes) -> None:
    """Validly signed, so every body, routing and payload check is reached."""
    envelope = fuzz(wire, local="beta")
    if envelope is not None:
        assert envelope.subj == REQ and envelope.src.startswith("alpha/")
        assert envelope.dst.startswith("beta/")
        assert abs(envelope.ts - NOW) <= 90_000
        if envelope.enc:
            assert isinstance(envelope.payload, bytes) and envelope.message is None
        else:
            assert kinds.kind_name(envelope.message) == envelope.typ


@pytest.mark.parametrize("depth", [100, 10_000, 200_000])
def test_deep_nesting_is_rejected(depth: int) -> None:
    assert attempt(b"\x91" * depth + b"\xc0") is None
    raw = b"\x91" * depth + b"\xc0"
    signature = ALPHA.sign(protocol.DOMAIN + raw).signature
    assert attempt(pack([1, bytes(ALPHA.verify_key), raw, signature])) is None
