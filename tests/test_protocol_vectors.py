"""The JSON test vectors in protocol/vectors: each step opens to its expected body or reason."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import msgpack
import pytest
from nacl.public import Box
from nacl.signing import SigningKey, VerifyKey

import protocol
from protocol import REASON_CODES, Envelope, Keyring, ProtocolError, ReplayGuard, kinds, subjects
from protocol.vectors import generate
from protocol.vectors.generate import as_json

PACKAGE_DIR = Path(protocol.__file__).parent
VECTOR_DIR = PACKAGE_DIR / "vectors"
VECTOR_FILES = sorted(VECTOR_DIR.glob("*.json"))

# Reasons that open() can only reach once the signature has verified.
PAST_SIGNATURE = {
    "malformed_body",
    "wrong_subject",
    "wrong_sender",
    "wrong_destination",
    "stale_timestamp",
    "replayed",
    "unknown_kind",
    "bad_payload",
}


def spec() -> str:
    return (PACKAGE_DIR / "PROTOCOL.md").read_text(encoding="utf-8")


def load(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text(encoding="utf-8"))


def keyring_of(vector: dict[str, Any]) -> Keyring:
    keyring = Keyring()
    for entry in vector["keyring"]:
        keyring.add(bytes.fromhex(entry["public_key"]), entry["entity"])
    return keyring


def body_of(envelope: Envelope) -> dict[str, Any]:
    names = ("id", "src", "dst", "subj", "typ", "ts", "corr", "enc", "payload")
    return {name: as_json(getattr(envelope, name)) for name in names}


def run_step(
    vector: dict[str, Any], step: dict[str, Any], keyring: Keyring, guard: ReplayGuard
) -> Envelope:
    return protocol.open(
        bytes.fromhex(step["wire"]),
        subject=vector["subject"],
        local=vector["local"],
        keyring=keyring,
        replay=guard,
        now=vector["now_ms"],
        max_bytes=vector["max_bytes"],
    )


def all_steps() -> list[tuple[str, dict[str, Any]]]:
    return [(path.stem, step) for path in VECTOR_FILES for step in load(path)["steps"]]


def test_vector_files_exist() -> None:
    assert len(VECTOR_FILES) >= 20


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_vector(path: Path) -> None:
    vector = load(path)
    keyring = keyring_of(vector)
    guard = ReplayGuard(window_ms=vector["window_ms"], future_ms=vector["future_ms"])
    for index, step in enumerate(vector["steps"]):
        where = f"step {index} ({step['note']})"
        expect = step["expect"]
        seed = step.get("signer_seed", vector["signer_seed"])
        signer_kid = bytes(SigningKey(bytes.fromhex(seed)).verify_key)
        if "ok" in expect:
            envelope = run_step(vector, step, keyring, guard)
            assert body_of(envelope) == expect["ok"], where
            assert envelope.kid == signer_kid, where
            if envelope.enc:
                assert envelope.message is None, where
            else:
                assert kinds.kind_name(envelope.message) == envelope.typ, where
        else:
            with pytest.raises(ProtocolError) as info:
                run_step(vector, step, keyring, guard)
            assert info.value.reason == expect["error"], f"{where}: {info.value}"
            assert info.value.subject == vector["subject"]


def test_every_reason_code_has_a_rejection_vector() -> None:
    tested = {step["expect"]["error"] for _, step in all_steps() if "error" in step["expect"]}
    assert tested == set(REASON_CODES)


def test_valid_vectors_cover_every_subject_family() -> None:
    families = set()
    for path in VECTOR_FILES:
        vector = load(path)
        if any("ok" in step["expect"] for step in vector["steps"]):
            route = subjects.route(vector["subject"])
            assert route is not None
            families.add(route.family)
    assert families == {"loc", "evt", "req", "cmd", "reply"}


def signed_body(step: dict[str, Any]) -> dict[str, Any]:
    _, _, body, _ = msgpack.unpackb(bytes.fromhex(step["wire"]))
    return msgpack.unpackb(body)


def test_stale_vectors_go_both_ways_past_the_window() -> None:
    vector = load(VECTOR_DIR / "reject_stale_timestamp.json")
    offsets = {
        signed_body(step)["ts"] - vector["now_ms"]
        for step in vector["steps"]
        if step["expect"] == {"error": "stale_timestamp"}
    }
    assert min(offsets) < -vector["window_ms"]
    assert max(offsets) > vector["window_ms"]


def test_wrong_sender_vectors_cover_the_key_and_the_subject() -> None:
    for name, key_matches_src in (
        ("reject_wrong_sender_key", False),
        ("reject_wrong_sender_subject", True),
    ):
        vector = load(VECTOR_DIR / f"{name}.json")
        step = vector["steps"][0]
        _, kid, _, _ = msgpack.unpackb(bytes.fromhex(step["wire"]))
        (key_entity,) = [k["entity"] for k in vector["keyring"] if k["public_key"] == kid.hex()]
        src_entity = signed_body(step)["src"].split("/")[0]
        route = subjects.route(vector["subject"])
        assert route is not None
        assert (src_entity == key_entity) is key_matches_src
        assert (src_entity == route.sender) is not key_matches_src


@pytest.mark.parametrize(
    ("name", "step"),
    [(n, s) for n, s in all_steps() if s["expect"].get("error") in PAST_SIGNATURE],
    ids=lambda v: v if isinstance(v, str) else "",
)
def test_rejections_past_the_signature_check_are_validly_signed(
    name: str, step: dict[str, Any]
) -> None:
    version, kid, body, sig = msgpack.unpackb(bytes.fromhex(step["wire"]))
    vector = load(VECTOR_DIR / f"{name}.json")
    assert version == 1
    assert kid.hex() in {entry["public_key"] for entry in vector["keyring"]}
    VerifyKey(kid).verify(protocol.DOMAIN + body, sig)


def test_replay_vector_accepts_first_then_rejects() -> None:
    steps = load(VECTOR_DIR / "reject_replayed.json")["steps"]
    assert "ok" in steps[0]["expect"]
    assert steps[1]["wire"] == steps[0]["wire"]
    assert steps[1]["expect"] == {"error": "replayed"}


def test_duplicate_key_body_vector_really_repeats_a_key() -> None:
    steps = load(VECTOR_DIR / "reject_malformed_body.json")["steps"]
    _, _, body, _ = msgpack.unpackb(bytes.fromhex(steps[0]["wire"]))
    pairs = msgpack.unpackb(body, object_pairs_hook=list)
    keys = [key for key, _ in pairs]
    assert len(keys) != len(set(keys))


def test_encrypted_vector_decrypts_to_a_valid_event() -> None:
    vector = load(VECTOR_DIR / "valid_fed_command_encrypted.json")
    envelope = run_step(vector, vector["steps"][0], keyring_of(vector), ReplayGuard())
    recipient = SigningKey(bytes.fromhex(vector["encryption"]["recipient_seed"]))
    sender = SigningKey(bytes.fromhex(vector["signer_seed"])).verify_key
    box = Box(recipient.to_curve25519_private_key(), sender.to_curve25519_public_key())
    assert envelope.payload[:24].hex() == vector["encryption"]["nonce"]
    plaintext = msgpack.unpackb(box.decrypt(envelope.payload))
    assert plaintext == vector["encryption"]["plaintext_payload"]
    event = kinds.decode(envelope.typ, plaintext)
    assert event == protocol.Event(type="report", actor="peer", data={"done": 3, "failed": 0})


def test_generator_output_equals_the_committed_files() -> None:
    committed = {path.name: path.read_text(encoding="utf-8") for path in VECTOR_FILES}
    assert generate.render() == committed


def test_generator_main_writes_every_file_and_drops_stale_ones(tmp_path: Path) -> None:
    (tmp_path / "reject_retired.json").write_text("{}", encoding="utf-8")
    assert generate.main(tmp_path) == 0
    written = {path.name: path.read_text(encoding="utf-8") for path in tmp_path.glob("*.json")}
    assert written == generate.render()


def test_spec_names_every_reason_code_and_kind() -> None:
    text = spec()
    for code in REASON_CODES:
        assert f"`{code}`" in text, code
    # Kinds that applications (and these tests) register elsewhere are not part of v1.
    for name, cls in kinds.kinds().items():
        if cls.__module__ == kinds.__name__:
            assert f"`{name}`" in text, name


def test_spec_worked_example_is_the_vector() -> None:
    step = load(VECTOR_DIR / "valid_request_loc.json")["steps"][0]
    _, kid, body, sig = msgpack.unpackb(bytes.fromhex(step["wire"]))
    flat = re.sub(r"\s", "", spec())
    for part in (step["wire"], kid.hex(), body.hex(), sig.hex()):
        assert part in flat


def test_spec_references_only_existing_vectors() -> None:
    referenced = set(re.findall(r"vectors/([a-z_]+\.json)", spec()))
    assert referenced
    assert referenced <= {path.name for path in VECTOR_FILES}


# Reasons verify_signature reports; every other reason comes from check_body.
BEFORE_BODY = {"too_large", "malformed", "bad_version", "unknown_key", "bad_signature"}


@pytest.mark.parametrize("path", VECTOR_FILES, ids=lambda p: p.stem)
def test_vector_through_verify_signature_then_check_body(path: Path) -> None:
    """The two halves of open() give open()'s results, each half its own steps."""
    vector = load(path)
    keyring = keyring_of(vector)
    guard = ReplayGuard(window_ms=vector["window_ms"], future_ms=vector["future_ms"])
    subject, max_bytes = vector["subject"], vector["max_bytes"]
    for index, step in enumerate(vector["steps"]):
        where = f"step {index} ({step['note']})"
        expect = step["expect"]
        try:
            verified = protocol.verify_signature(
                bytes.fromhex(step["wire"]), subject=subject, keyring=keyring, max_bytes=max_bytes
            )
        except ProtocolError as exc:
            assert expect.get("error") in BEFORE_BODY, f"{where}: {exc}"
            assert exc.reason == expect["error"], where
            assert exc.subject == subject, where
            continue
        assert expect.get("error") not in BEFORE_BODY, where
        try:
            envelope = protocol.check_body(
                verified,
                subject=subject,
                local=vector["local"],
                replay=guard,
                now=vector["now_ms"],
                max_bytes=max_bytes,
            )
        except ProtocolError as exc:
            assert exc.reason == expect.get("error"), f"{where}: {exc}"
            assert exc.subject == subject, where
            continue
        assert body_of(envelope) == expect["ok"], where


def test_key_vectors_really_hold_the_keys_they_name() -> None:
    """1, true and 1.0 are three keys of three types in the wire (a dict would merge
    them), and the distinct-keys vector's keys differ only as code points do."""
    steps = {s["note"]: s for s in load(VECTOR_DIR / "reject_malformed_body.json")["steps"]}
    (note,) = [n for n in steps if n.startswith("keys 1, true and 1.0")]
    _, _, body, _ = msgpack.unpackb(bytes.fromhex(steps[note]["wire"]))
    pairs = msgpack.unpackb(body, object_pairs_hook=list, strict_map_key=False)
    data = dict(dict(pairs)["payload"])["data"]
    assert [type(key) for key, _ in data] == [int, bool, float]
    valid = load(VECTOR_DIR / "valid_payload_rules.json")["steps"]
    (distinct,) = [s for s in valid if s["note"].startswith("keys are equal only")]
    keys = list(distinct["expect"]["ok"]["payload"]["data"])
    assert len(keys) == len(set(keys)) == 5
    assert "\u00e9" in keys and "e\u0301" in keys
