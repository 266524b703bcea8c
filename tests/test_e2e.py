"""End-to-end encrypted payloads (protocol/e2e.py): encrypt then sign, verify then decrypt,
and every way a ciphertext can be wrong ends in BadPayload."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.signing import SigningKey

import protocol
from actors.peer.messages import Report, TaskUpdate
from protocol import BadPayload, Envelope, Keyring, ReplayGuard, Sealer

VECTOR = Path(protocol.__file__).parent / "vectors" / "valid_fed_command_encrypted.json"

SUBJECT = "fed.cmd.beta.alpha.report"
SECRET = "the launch code is 0000 and nobody must know"
MAX = protocol.MAX_WIRE_BYTES


@pytest.fixture
def alpha() -> SigningKey:
    return SigningKey.generate()


@pytest.fixture
def beta() -> SigningKey:
    return SigningKey.generate()


def receive(wire: bytes, sender: SigningKey, subject: str = SUBJECT) -> Envelope:
    """What beta's peer actor does with a wire from alpha: verify and check the body."""
    keyring = Keyring()
    keyring.add(bytes(sender.verify_key), "alpha")
    return protocol.open(wire, subject=subject, local="beta/peer", keyring=keyring,
                         replay=ReplayGuard())


def send_raw(sender: SigningKey, typ: str, ciphertext: bytes) -> Envelope:
    """An encrypted envelope from alpha to beta carrying exactly `ciphertext`."""
    wire, _ = protocol.seal(sender, src="alpha/peer", dst="beta/peer", subj=SUBJECT, typ=typ,
                            payload=ciphertext, enc=True)
    return receive(wire, sender)


def bad_payload(sealer: Sealer, envelope: Envelope) -> BadPayload:
    with pytest.raises(BadPayload) as caught:
        sealer.decrypt(envelope, MAX)
    assert caught.value.reason == "bad_payload"
    assert caught.value.subject == SUBJECT
    return caught.value


def test_round_trip_through_seal_and_open(alpha: SigningKey, beta: SigningKey) -> None:
    wire, msg_id = Sealer(alpha).seal(bytes(beta.verify_key), src="alpha/peer",
                                      dst="beta/peer", subj=SUBJECT, message=Report(SECRET))
    env = receive(wire, alpha)
    assert env.id == msg_id
    assert env.enc is True
    assert env.typ == "report"
    assert env.message is None  # open() leaves the ciphertext to the peer layer
    assert env.src == "alpha/peer" and env.kid == bytes(alpha.verify_key)
    assert Sealer(beta).decrypt(env, MAX) == Report(SECRET)


def test_round_trip_keeps_every_field_and_corr(alpha: SigningKey, beta: SigningKey) -> None:
    update = TaskUpdate("task-1", "completed", note=SECRET, patch=b"\x00diff\xff", commits=2)
    corr = protocol.new_id()
    wire, _ = Sealer(alpha).seal(bytes(beta.verify_key), src="alpha/peer", dst="beta/peer",
                                 subj="fed.cmd.beta.alpha.task_update", message=update,
                                 corr=corr)
    env = receive(wire, alpha, subject="fed.cmd.beta.alpha.task_update")
    assert env.corr == corr and env.typ == "task_update"
    assert Sealer(beta).decrypt(env, MAX) == update


def test_the_same_sealer_encrypts_afresh_each_time(alpha: SigningKey, beta: SigningKey) -> None:
    sealer = Sealer(alpha)
    _, first = sealer.encrypt(bytes(beta.verify_key), Report(SECRET))
    _, second = sealer.encrypt(bytes(beta.verify_key), Report(SECRET))
    assert first[:24] != second[:24]  # a new nonce per message
    assert first != second


def test_neither_wire_nor_body_holds_the_plaintext(alpha: SigningKey, beta: SigningKey) -> None:
    wire, _ = Sealer(alpha).seal(bytes(beta.verify_key), src="alpha/peer", dst="beta/peer",
                                 subj=SUBJECT, message=Report(SECRET))
    plain_payload = msgpack.packb({"text": SECRET}, use_bin_type=True)
    _, _, body, _ = msgpack.unpackb(wire)
    for data in (wire, body):
        assert SECRET.encode() not in data
        assert b"launch code" not in data
        assert plain_payload not in data
    fields = msgpack.unpackb(body)
    assert fields["enc"] is True and isinstance(fields["payload"], bytes)
    assert SECRET.encode() not in fields["payload"]
    # What an observer holding only the wire sees is the ciphertext, not a record.
    assert receive(wire, alpha).payload == fields["payload"]


def test_a_third_key_cannot_decrypt(alpha: SigningKey, beta: SigningKey) -> None:
    wire, _ = Sealer(alpha).seal(bytes(beta.verify_key), src="alpha/peer", dst="beta/peer",
                                 subj=SUBJECT, message=Report(SECRET))
    env = receive(wire, alpha)
    err = bad_payload(Sealer(SigningKey.generate()), env)
    assert "does not open" in err.detail
    assert SECRET not in str(err)
    assert Sealer(beta).decrypt(env, MAX) == Report(SECRET)  # the recipient still can


def test_payload_encrypted_for_someone_else_does_not_open(
    alpha: SigningKey, beta: SigningKey
) -> None:
    carol = SigningKey.generate()
    # Signed for beta's subject, but boxed for carol's key.
    wire, _ = Sealer(alpha).seal(bytes(carol.verify_key), src="alpha/peer", dst="beta/peer",
                                 subj=SUBJECT, message=Report(SECRET))
    bad_payload(Sealer(beta), receive(wire, alpha))


@pytest.mark.parametrize("keep", [0, 10, 24, 30, -1], ids=lambda k: f"keep{k}")
def test_truncated_ciphertext(alpha: SigningKey, beta: SigningKey, keep: int) -> None:
    typ, ciphertext = Sealer(alpha).encrypt(bytes(beta.verify_key), Report(SECRET))
    bad_payload(Sealer(beta), send_raw(alpha, typ, ciphertext[:keep]))


def test_flipped_ciphertext_bit(alpha: SigningKey, beta: SigningKey) -> None:
    typ, ciphertext = Sealer(alpha).encrypt(bytes(beta.verify_key), Report(SECRET))
    tampered = ciphertext[:-1] + bytes([ciphertext[-1] ^ 1])
    bad_payload(Sealer(beta), send_raw(alpha, typ, tampered))


@pytest.mark.parametrize(
    "plaintext",
    [b"\xc1", b"", b"\x92\x01", msgpack.packb({"text": "x"}) + b"\x00"],
    ids=["never-used-byte", "empty", "truncated-array", "trailing-bytes"],
)
def test_ciphertext_of_bytes_that_are_not_msgpack(
    alpha: SigningKey, beta: SigningKey, plaintext: bytes
) -> None:
    ciphertext = bytes(Sealer(alpha).box(bytes(beta.verify_key)).encrypt(plaintext))
    err = bad_payload(Sealer(beta), send_raw(alpha, "report", ciphertext))
    assert "does not decode" in err.detail


@pytest.mark.parametrize(
    "payload",
    [{"text": 5}, {}, {"note": "no text"}, ["text", SECRET], SECRET, None],
    ids=["wrong-type", "empty-map", "missing-field", "array", "string", "nil"],
)
def test_plaintext_not_matching_the_kind_schema(
    alpha: SigningKey, beta: SigningKey, payload: Any
) -> None:
    plaintext = msgpack.packb(payload, use_bin_type=True)
    ciphertext = bytes(Sealer(alpha).box(bytes(beta.verify_key)).encrypt(plaintext))
    bad_payload(Sealer(beta), send_raw(alpha, "report", ciphertext))


def test_plain_envelope_passes_through_decrypt(alpha: SigningKey, beta: SigningKey) -> None:
    wire, _ = protocol.seal(alpha, src="alpha/peer", dst="beta/peer", subj=SUBJECT,
                            message=Report("not secret"))
    env = receive(wire, alpha)
    assert env.enc is False
    # Whoever holds the Sealer, a plain message is the record open() already built.
    assert Sealer(beta).decrypt(env, MAX) is env.message
    assert Sealer(SigningKey.generate()).decrypt(env, MAX) == Report("not secret")


def test_boxes_are_cached_per_peer_key(alpha: SigningKey, beta: SigningKey) -> None:
    sealer = Sealer(alpha)
    beta_key = bytes(beta.verify_key)
    assert sealer.box(beta_key) is sealer.box(beta_key)
    assert sealer.box(beta_key) is not sealer.box(bytes(SigningKey.generate().verify_key))


# -- the committed test vector ----------------------------------------------------------------


def vector() -> dict[str, Any]:
    return json.loads(VECTOR.read_text(encoding="utf-8"))


def open_vector(data: dict[str, Any]) -> Envelope:
    keyring = Keyring()
    for entry in data["keyring"]:
        keyring.add(bytes.fromhex(entry["public_key"]), entry["entity"])
    return protocol.open(bytes.fromhex(data["steps"][0]["wire"]), subject=data["subject"],
                         local=data["local"], keyring=keyring,
                         replay=ReplayGuard(window_ms=data["window_ms"]), now=data["now_ms"],
                         max_bytes=data["max_bytes"])


def test_sealer_decrypts_the_encrypted_vector() -> None:
    data = vector()
    env = open_vector(data)
    recipient = Sealer(SigningKey(bytes.fromhex(data["encryption"]["recipient_seed"])))
    event = recipient.decrypt(env, data["max_bytes"])
    assert event == protocol.Event(type="report", actor="peer", data={"done": 3, "failed": 0})
    assert protocol.kinds.encode(event) == data["encryption"]["plaintext_payload"]


def test_sealer_encrypts_to_the_vector_ciphertext_given_its_nonce() -> None:
    """Sealer's key conversion and box agree byte for byte with the specification's."""
    data = vector()
    env = open_vector(data)
    sender = Sealer(SigningKey(bytes.fromhex(data["signer_seed"])))
    beta = next(bytes.fromhex(k["public_key"]) for k in data["keyring"] if k["entity"] == "beta")
    plaintext = msgpack.packb(
        protocol.kinds.encode(protocol.Event("report", "peer", {"done": 3, "failed": 0})),
        use_bin_type=True,
    )
    nonce = bytes.fromhex(data["encryption"]["nonce"])
    assert bytes(sender.box(beta).encrypt(plaintext, nonce)) == env.payload


def test_vector_does_not_open_for_anyone_but_the_recipient() -> None:
    data = vector()
    env = open_vector(data)
    with pytest.raises(BadPayload) as caught:
        Sealer(SigningKey.generate()).decrypt(env, data["max_bytes"])
    assert caught.value.subject == data["subject"]
