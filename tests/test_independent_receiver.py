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

import json
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

from tests.independent.receiver import (
    REASON_CODES,
    Opened,
    Receiver,
    Rejected,
    as_json,
    decrypt,
)

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
        if "ok" in expect:
            try:
                opened = receiver.open(wire, vector["subject"], vector["now_ms"])
            except Rejected as exc:
                raise AssertionError(f"{where}: refused as {exc}") from None
            assert body_json(opened) == expect["ok"], where
            seed = bytes.fromhex(step.get("signer_seed", vector["signer_seed"]))
            assert opened.kid == bytes(SigningKey(seed).verify_key), where
            encryption = vector.get("encryption")
            if opened.enc and encryption is not None:
                payload = opened.body["payload"]
                assert payload[:24].hex() == encryption["nonce"], where
                plain = decrypt(opened, bytes.fromhex(encryption["recipient_seed"]))
                assert as_json(plain) == encryption["plaintext_payload"], where
        else:
            assert expect["error"] in REASON_CODES, where
            try:
                opened = receiver.open(wire, vector["subject"], vector["now_ms"])
            except Rejected as exc:
                assert exc.code == expect["error"], f"{where}: {exc}"
            else:
                raise AssertionError(f"{where}: accepted, expected {expect['error']}")


def test_every_reason_code_is_exercised_by_a_vector() -> None:
    codes = {step["expect"]["error"] for path in VECTOR_FILES
             for step in load(path)["steps"] if "error" in step["expect"]}
    assert codes == set(REASON_CODES)
