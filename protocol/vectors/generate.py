"""Writes the envelope v1 test vectors (the JSON files beside this script), deterministically.

Run `python -m protocol.vectors.generate`. The envelopes are built here from msgpack and
PyNaCl directly, following PROTOCOL.md rather than calling `protocol.seal`, so that the
vectors check the implementation instead of restating it. Fixed seeds, ids, timestamps
and nonces, and Ed25519's deterministic signatures, make the output identical on every run.
"""

from __future__ import annotations

import hashlib
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import msgpack
from nacl.public import Box
from nacl.signing import SigningKey

HERE = Path(__file__).resolve().parent
DOMAIN = b"entityd/v1/envelope\x00"
NOW_MS = 1_767_225_600_000  # 2026-01-01T00:00:00Z
WINDOW_MS = 90_000
FUTURE_MS = 5_000
MAX_BYTES = 1024 * 1024


def _key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(b"entityd/v1 test vector key " + name.encode()).digest())


ALPHA = _key("alpha")
BETA = _key("beta")
GAMMA = _key("gamma")
MALLORY = _key("mallory")  # trusted by no receiver in these vectors

KEY_ENTITY = {ALPHA: "alpha", BETA: "beta", GAMMA: "gamma"}


def msg_id(tag: str) -> bytes:
    return hashlib.sha256(b"entityd/v1 test vector id " + tag.encode()).digest()[:16]


def pack(value: Any) -> bytes:
    return msgpack.packb(value, use_bin_type=True)


def pack_pairs(pairs: list[tuple[Any, Any]]) -> bytes:
    """A msgpack map written pair by pair, so it can repeat a key; values may be Raw."""
    out = msgpack.Packer(use_bin_type=True).pack_map_header(len(pairs))
    for key, value in pairs:
        out += pack(key) + (value.encoded if isinstance(value, Raw) else pack(value))
    return out


class Raw:
    """A value already encoded, written as is: a map given as its pairs keeps repeated
    keys and keys Python's dict would merge (1, True and 1.0 are one dict key)."""

    def __init__(self, encoded: bytes) -> None:
        self.encoded = encoded

    @classmethod
    def map(cls, pairs: list[tuple[Any, Any]]) -> Raw:
        return cls(pack_pairs(pairs))


def with_payload(body: dict[str, Any], payload: bytes) -> bytes:
    """The body map with `payload` as the already encoded value of its payload field."""
    return pack_pairs([(k, Raw(payload) if k == "payload" else v) for k, v in body.items()])


def pk(key: SigningKey) -> bytes:
    return bytes(key.verify_key)


def sign(key: SigningKey, body: bytes, domain: bytes = DOMAIN) -> bytes:
    return key.sign(domain + body).signature


def fields(**values: Any) -> dict[str, Any]:
    """Body fields in the order seal() writes them; `values` must name all nine."""
    order = ("id", "src", "dst", "subj", "typ", "ts", "corr", "enc", "payload")
    missing = [name for name in order if name not in values]
    assert not missing, missing
    return {name: values[name] for name in order}


def wire(
    key: SigningKey,
    body: bytes,
    *,
    version: Any = 1,
    kid: Any = None,
    sig: Any = None,
) -> bytes:
    kid = pk(key) if kid is None else kid
    sig = sign(key, body) if sig is None else sig
    return pack([version, kid, body, sig])


def as_json(value: Any) -> Any:
    """Body values as JSON: bin as lowercase hex, everything else as is."""
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, list):
        return [as_json(v) for v in value]
    if isinstance(value, dict):
        return {k: as_json(v) for k, v in value.items()}
    return value


def ok(
    wire_bytes: bytes, body: dict[str, Any], note: str, signer: SigningKey | None = None
) -> dict[str, Any]:
    """An accepted step; `signer` only when it is not the vector's signer."""
    step = {"note": note, "wire": wire_bytes.hex(), "expect": {"ok": as_json(body)}}
    return step if signer is None else {"signer_seed": bytes(signer).hex(), **step}


def error(wire_bytes: bytes, reason: str, note: str) -> dict[str, Any]:
    return {"note": note, "wire": wire_bytes.hex(), "expect": {"error": reason}}


def vector(
    name: str,
    description: str,
    *,
    signer: SigningKey,
    keyring: list[SigningKey],
    subject: str,
    local: str,
    steps: list[dict[str, Any]],
    max_bytes: int = MAX_BYTES,
    **extra: Any,
) -> dict[str, Any]:
    return {
        "name": name,
        "description": description,
        "signer_seed": bytes(signer).hex(),
        "keyring": [{"public_key": pk(k).hex(), "entity": KEY_ENTITY[k]} for k in keyring],
        "subject": subject,
        "local": local,
        "now_ms": NOW_MS,
        "window_ms": WINDOW_MS,
        "future_ms": FUTURE_MS,
        "max_bytes": max_bytes,
        **extra,
        "steps": steps,
    }


# ---- payloads ---------------------------------------------------------------------

STATUS = {
    "entity": "beta",
    "public_key": pk(BETA).hex(),
    "uptime_s": 12.5,
    "nats_server": "nats://127.0.0.1:4222",
    "actors": [
        {"name": "orchestrator", "state": "running", "restarts": 0},
        {"name": "coder", "state": "restarting", "restarts": 2},
    ],
    "started_at": 1767225587.5,
    "rejected": {"bad_signature": 1},
}
EVENT = {
    "type": "commit",
    "actor": "coder",
    "data": {"sha": "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "files": 3},
}

REQ = "fed.req.beta.alpha.ping"  # alpha asks beta


def req_body(tag: str, **changes: Any) -> dict[str, Any]:
    """A valid ping from alpha/peer to beta/peer on REQ."""
    base = fields(
        id=msg_id(tag),
        src="alpha/peer",
        dst="beta/peer",
        subj=REQ,
        typ="ping",
        ts=NOW_MS - 250,
        corr=None,
        enc=False,
        payload={},
    )
    base.update(changes)
    return base


def req_wire(tag: str, key: SigningKey = ALPHA, **changes: Any) -> bytes:
    return wire(key, pack(req_body(tag, **changes)))


# ---- valid envelopes ----------------------------------------------------------------


def valid_request_loc() -> dict[str, Any]:
    subject = "loc.alpha.health.status_get"
    body = fields(
        id=bytes.fromhex("0123456789abcdef0123456789abcdef"),
        src="alpha/orchestrator",
        dst="alpha/health",
        subj=subject,
        typ="status_get",
        ts=NOW_MS - 1500,
        corr=None,
        enc=False,
        payload={},
    )
    return vector(
        "valid_request_loc",
        "An entity-local request: alpha's orchestrator asks alpha's health actor for its "
        "status on its loc. mailbox. The worked example of PROTOCOL.md.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=subject,
        local="alpha/health",
        steps=[ok(wire(ALPHA, pack(body)), body, "status_get, 1.5 s old, accepted")],
    )


def valid_event() -> dict[str, Any]:
    subject = "fed.evt.alpha.coder.commit"
    body = fields(
        id=msg_id("event"),
        src="alpha/coder",
        dst="*",
        subj=subject,
        typ="event",
        ts=NOW_MS - 20,
        corr=None,
        enc=False,
        payload=EVENT,
    )
    return vector(
        "valid_event",
        "An event alpha's coder publishes for everyone on fed.evt, received by an "
        "observer entity beta; dst is '*'.",
        signer=ALPHA,
        keyring=[ALPHA, BETA],
        subject=subject,
        local="beta",
        steps=[ok(wire(ALPHA, pack(body)), body, "event with dst '*' accepted")],
    )


def valid_reply_inbox() -> dict[str, Any]:
    subject = "_i.alpha.Zb3kq9WbT6xVfNCw1sYJ2a.7"
    body = fields(
        id=msg_id("reply"),
        src="beta/health",
        dst="alpha/peer",
        subj=subject,
        typ="status",
        ts=NOW_MS + 800,
        corr=msg_id("status request"),
        enc=False,
        payload=STATUS,
    )
    return vector(
        "valid_reply_inbox",
        "beta's health actor answers a status_get of alpha's peer actor on alpha's reply "
        "inbox; corr is the id of the request. The receiver is the entity alpha as a "
        "whole (local 'alpha'), which accepts any of its actors as dst.",
        signer=BETA,
        keyring=[ALPHA, BETA],
        subject=subject,
        local="alpha",
        steps=[ok(wire(BETA, pack(body)), body, "status reply with corr, 0.8 s ahead, accepted")],
    )


def valid_fed_request() -> dict[str, Any]:
    body = req_body("fed request")
    return vector(
        "valid_fed_request",
        "A request between entities: alpha's peer actor pings beta's peer actor on "
        "fed.req.<dst>.<src>.<op>.",
        signer=ALPHA,
        keyring=[ALPHA, BETA],
        subject=REQ,
        local="beta/peer",
        steps=[ok(wire(ALPHA, pack(body)), body, "ping accepted")],
    )


def valid_payload_rules() -> dict[str, Any]:
    steps = []
    for tag, typ, payload, note in (
        ("unknown key", "ping", {"sent_by": "v2 client"}, "unknown payload keys are ignored"),
        (
            "int for float",
            "status",
            {k: v for k, v in STATUS.items() if k not in ("started_at", "rejected")}
            | {"uptime_s": 12},
            "an int is accepted where the schema says float; optional fields may be absent",
        ),
        (
            "nested unknown key",
            "status",
            STATUS | {"actors": [{"name": "tool", "state": "running", "restarts": 0, "pid": 7}]},
            "unknown keys inside nested records are ignored too",
        ),
        ("error", "error", {"code": "busy", "message": "try later"}, "an error payload"),
        (
            "distinct keys",
            "event",
            {"type": "t", "actor": "coder",
             "data": {"\u00e9": 1, "e\u0301": 2, "e": 3, "E": 4, "": 5}},
            "keys are equal only when their code points are: 'é' precomposed and decomposed, "
            "'e' and 'E' are four keys (no normalisation, no case folding); '' is a key",
        ),
    ):
        body = req_body(tag, typ=typ, payload=payload)
        steps.append(ok(wire(ALPHA, pack(body)), body, note))
    return vector(
        "valid_payload_rules",
        "Payload schema rules that a receiver must accept.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=steps,
    )


def valid_noncanonical_body() -> dict[str, Any]:
    """A body whose msgpack is valid but not what seal() would write: fields out of
    order, a uint64 for a small ts, str8 for short strings, map16 for an empty map.
    The signature covers these exact bytes, so a receiver must accept them unchanged."""
    values = req_body("noncanonical")

    def str8(text: str) -> bytes:
        raw = text.encode()
        return b"\xd9" + bytes([len(raw)]) + raw

    parts = [
        b"\x89",  # fixmap of 9
        pack("payload"),
        b"\xde\x00\x00",  # map16 holding nothing
        str8("ts"),
        b"\xcf" + values["ts"].to_bytes(8, "big"),
        pack("id"),
        pack(values["id"]),
        str8("src"),
        str8(values["src"]),
        pack("dst"),
        pack(values["dst"]),
        pack("subj"),
        pack(values["subj"]),
        pack("typ"),
        str8(values["typ"]),
        pack("corr"),
        pack(None),
        pack("enc"),
        pack(False),
    ]
    body_bytes = b"".join(parts)
    assert msgpack.unpackb(body_bytes) == values and body_bytes != pack(values)
    return vector(
        "valid_noncanonical_body",
        "A body encoded differently from the reference encoder (field order, integer and "
        "string widths). Receivers verify the bytes as received and never re-encode.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=[ok(wire(ALPHA, body_bytes), values, "non-canonical but valid body accepted")],
    )


def valid_fed_command_encrypted() -> dict[str, Any]:
    subject = "fed.cmd.beta.alpha.report"
    nonce = hashlib.sha256(b"entityd/v1 test vector nonce").digest()[:24]
    plaintext = {"type": "report", "actor": "peer", "data": {"done": 3, "failed": 0}}
    box = Box(ALPHA.to_curve25519_private_key(), BETA.verify_key.to_curve25519_public_key())
    ciphertext = bytes(box.encrypt(pack(plaintext), nonce))
    body = fields(
        id=msg_id("encrypted command"),
        src="alpha/peer",
        dst="beta/peer",
        subj=subject,
        typ="event",
        ts=NOW_MS - 3000,
        corr=None,
        enc=True,
        payload=ciphertext,
    )
    return vector(
        "valid_fed_command_encrypted",
        "A durable command with an end-to-end encrypted payload: the payload is "
        "nonce || crypto_box(msgpack(event payload)) from alpha to beta, with X25519 keys "
        "converted from their Ed25519 keys. open() returns the ciphertext; the peer layer "
        "decrypts it (recipient_seed is beta's) and then checks the event schema.",
        signer=ALPHA,
        keyring=[ALPHA, BETA],
        subject=subject,
        local="beta/peer",
        encryption={
            "recipient_seed": bytes(BETA).hex(),
            "nonce": nonce.hex(),
            "plaintext_payload": plaintext,
        },
        steps=[ok(wire(ALPHA, pack(body)), body, "encrypted event accepted, not decrypted")],
    )


# ---- one rejection per reason code ---------------------------------------------------


def reject_too_large() -> dict[str, Any]:
    limit = 512
    subject = "fed.evt.alpha.coder.commit"

    def event_wire(tag: str, size: int) -> tuple[bytes, dict[str, Any]]:
        # A msgpack length header widens at some sizes, so try two key lengths.
        for key in ("line", "lines"):
            for pad in range(size):
                body = fields(
                    id=msg_id(tag),
                    src="alpha/coder",
                    dst="*",
                    subj=subject,
                    typ="event",
                    ts=NOW_MS,
                    corr=None,
                    enc=False,
                    payload={"type": "log", "actor": "coder", "data": {key: "x" * pad}},
                )
                data = wire(ALPHA, pack(body))
                if len(data) == size:
                    return data, body
        raise AssertionError(f"no padding gives {size} bytes")

    at_limit, at_limit_body = event_wire("at limit", limit)
    over_limit, _ = event_wire("over limit", limit + 1)
    return vector(
        "reject_too_large",
        "The size limit (max_bytes, 512 here instead of the default 1 MiB) is checked on "
        "the raw bytes before anything is decoded.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=subject,
        local="beta",
        max_bytes=limit,
        steps=[
            ok(at_limit, at_limit_body, "exactly max_bytes: accepted"),
            error(over_limit, "too_large", "a valid envelope one byte over the limit"),
            error(b"\xc1" * 600, "too_large", "600 bytes of garbage: size is checked first"),
        ],
    )


def reject_malformed() -> dict[str, Any]:
    body = pack(req_body("malformed"))
    sig = sign(ALPHA, body)
    kid = pk(ALPHA)
    good = pack([1, kid, body, sig])
    steps = [
        error(b"", "malformed", "empty input"),
        error(b"\xc1", "malformed", "0xc1 is never valid msgpack"),
        error(good[:-1], "malformed", "truncated by one byte"),
        error(good + b"\x00", "malformed", "a trailing byte after the outer array"),
        error(pack([1, kid, body]), "malformed", "an array of 3"),
        error(pack([1, kid, body, sig, None]), "malformed", "an array of 5"),
        error(pack({"v": 1, "kid": kid, "body": body, "sig": sig}), "malformed", "a map"),
        error(pack(body), "malformed", "a bare body"),
        error(pack([1, kid[:31], body, sig]), "malformed", "kid of 31 bytes"),
        error(pack([1, kid.hex(), body, sig]), "malformed", "kid as str, not bin"),
        error(
            b"\x94\x01\xd9\x02\xff\xfe" + pack(body) + pack(sig),
            "malformed",
            "kid as str8 holding invalid UTF-8",
        ),
        error(pack([1, kid, body.decode("latin-1"), sig]), "malformed", "body as str"),
        error(pack([1, kid, None, sig]), "malformed", "body nil"),
        error(pack([1, kid, body, sig[:63]]), "malformed", "sig of 63 bytes"),
        error(pack([1, kid, body, sig + b"\x00"]), "malformed", "sig of 65 bytes"),
    ]
    return vector(
        "reject_malformed",
        "The outer value must be exactly one msgpack array [1, bin32, bin, bin64].",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=steps,
    )


def reject_bad_version() -> dict[str, Any]:
    body = pack(req_body("bad version"))
    sig = sign(ALPHA, body)
    kid = pk(ALPHA)
    steps = [
        error(pack([2, kid, body, sig]), "bad_version", "version 2"),
        error(pack([0, kid, body, sig]), "bad_version", "version 0"),
        error(pack([True, kid, body, sig]), "bad_version", "version true (a bool)"),
        error(pack([1.0, kid, body, sig]), "bad_version", "version 1.0 (a float)"),
        error(pack(["1", kid, body, sig]), "bad_version", "version '1' (a str)"),
        error(pack([2, b"short", body, sig]), "bad_version", "version is checked before kid"),
    ]
    return vector(
        "reject_bad_version",
        "Only the integer 1 is a version of this protocol.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=steps,
    )


def reject_unknown_key() -> dict[str, Any]:
    body = pack(req_body("unknown key"))
    return vector(
        "reject_unknown_key",
        "A well-formed envelope signed by a key the receiver does not trust (mallory); "
        "the receiver trusts alpha and beta.",
        signer=MALLORY,
        keyring=[ALPHA, BETA],
        subject=REQ,
        local="beta/peer",
        steps=[
            error(wire(MALLORY, body), "unknown_key", "signed by an untrusted key"),
            error(
                wire(ALPHA, body, kid=bytes(32)),
                "unknown_key",
                "kid of 32 zero bytes",
            ),
        ],
    )


def reject_bad_signature() -> dict[str, Any]:
    body = pack(req_body("bad signature"))
    sig = sign(ALPHA, body)
    other_body = pack(req_body("bad signature", ts=NOW_MS - 251))
    steps = [
        error(
            wire(ALPHA, body, sig=sig[:-1] + bytes([sig[-1] ^ 0x01])),
            "bad_signature",
            "last signature byte changed",
        ),
        error(
            wire(ALPHA, body, sig=sign(ALPHA, body, domain=b"")),
            "bad_signature",
            "signed without the domain prefix",
        ),
        error(
            wire(ALPHA, body, sig=sign(ALPHA, body, domain=b"entityd/v2/envelope\x00")),
            "bad_signature",
            "signed under another domain string",
        ),
        error(
            wire(ALPHA, body, sig=sign(BETA, body)),
            "bad_signature",
            "signed by beta (trusted) but carrying alpha's kid",
        ),
        error(
            wire(ALPHA, other_body, sig=sig),
            "bad_signature",
            "the body changed after signing (ts one ms earlier)",
        ),
        error(wire(ALPHA, body, sig=bytes(64)), "bad_signature", "a signature of zeros"),
    ]
    return vector(
        "reject_bad_signature",
        "The signature must verify over DOMAIN + body under the key named by kid.",
        signer=ALPHA,
        keyring=[ALPHA, BETA],
        subject=REQ,
        local="beta/peer",
        steps=steps,
    )


def reject_malformed_body() -> dict[str, Any]:
    def signed(body_bytes: bytes, note: str) -> dict[str, Any]:
        return error(wire(ALPHA, body_bytes), "malformed_body", note)

    def changed(tag: str, note: str, **changes: Any) -> dict[str, Any]:
        return signed(pack(req_body(tag, **changes)), note)

    duplicate = list(req_body("duplicate typ").items())
    duplicate.insert(5, ("typ", "status_get"))
    nested = req_body("duplicate nested key", typ="error")
    nested_pairs = [(k, v) for k, v in nested.items() if k != "payload"]
    nested_bytes = (
        b"\x89"
        + b"".join(pack(k) + pack(v) for k, v in nested_pairs)
        + pack("payload")
        + pack_pairs([("code", "busy"), ("message", "a"), ("code", "idle")])
    )
    missing = {k: v for k, v in req_body("missing corr").items() if k != "corr"}
    steps = [
        signed(pack_pairs(duplicate), "the key 'typ' twice ('ping', then 'status_get')"),
        signed(nested_bytes, "a duplicate key inside the payload map"),
        signed(pack(list(req_body("array").values())), "the body is an array, not a map"),
        signed(pack(missing), "no 'corr' field"),
        signed(pack(req_body("extra") | {"hops": 1}), "an unknown field 'hops'"),
        signed(pack(req_body("int key") | {1: 1}), "an unknown non-string key"),
        changed("payload int key", "a non-str key in the payload (an int), where unknown "
                "keys would be ignored", payload={1: "x"}),
        changed("rejected int key", "an int key in a field of type map[str, int]: refused "
                "when the body is decoded, before any schema", typ="status",
                payload=STATUS | {"rejected": {1: 3}}),
        signed(with_payload(req_body("payload bin key", typ="error"),
                            pack_pairs([("code", "busy"), ("message", "m"), (b"hops", 1)])),
               "a bin key in the payload: every key is a str, and bin 'hops' is none"),
        signed(with_payload(req_body("one true onepointzero", typ="event"), pack_pairs([
            ("type", "t"), ("actor", "coder"),
            ("data", Raw.map([(1, "int"), (True, "bool"), (1.0, "float")]))])),
               "keys 1, true and 1.0 in a map of type any: no key but a str is valid, so "
               "whether they would be equal never arises"),
        signed(with_payload(req_body("nested duplicate in any", typ="event"), pack_pairs([
            ("type", "t"), ("actor", "coder"), ("data", Raw.map([("n", 1), ("n", 2)]))])),
               "a duplicate key in a map nested in a value of type any"),
        signed(b"", "an empty body"),
        signed(b"\xc1", "a body that is not msgpack"),
        signed(pack(req_body("trailing")) + b"\xc0", "a trailing byte after the map"),
        changed("id 15", "id of 15 bytes", id=msg_id("id 15")[:15]),
        changed("id str", "id as str", id=msg_id("id str").hex()),
        changed("src bare", "src without an actor", src="alpha"),
        changed("src upper", "src with an upper-case letter", src="Alpha/peer"),
        changed("src star", "src '*'", src="*"),
        changed("src newline", "src with a trailing newline", src="alpha/peer\n"),
        changed("src slashes", "src with two slashes", src="alpha/peer/x"),
        changed("dst newline", "dst with a trailing newline", dst="beta/peer\n"),
        changed("dst empty actor", "dst with an empty actor", dst="beta/"),
        changed("dst long", "dst entity of 33 characters", dst="b" * 33 + "/peer"),
        changed("subj empty", "subj empty", subj=""),
        changed("typ empty", "typ empty", typ=""),
        changed("typ long", "typ of 65 characters", typ="p" * 65),
        changed("ts negative", "ts negative", ts=-1),
        changed("ts float", "ts as a float", ts=float(NOW_MS)),
        changed("ts bool", "ts true", ts=True),
        changed("ts str", "ts as a str", ts=str(NOW_MS)),
        changed("corr short", "corr of 8 bytes", corr=b"\x00" * 8),
        changed("corr str", "corr as str", corr="0" * 32),
        changed("enc int", "enc 1 (an int)", enc=1),
        changed("enc nil", "enc nil", enc=None),
        changed("enc map", "enc true with a map payload", enc=True),
    ]
    return vector(
        "reject_malformed_body",
        "Bodies that are properly signed by a trusted key but are not a valid body map: "
        "each step fails after the signature check, in body decoding.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=steps,
    )


def reject_wrong_subject() -> dict[str, Any]:
    return vector(
        "reject_wrong_subject",
        "subj must equal the subject the message arrived on.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=[
            error(
                req_wire("other op", subj="fed.req.beta.alpha.talk"),
                "wrong_subject",
                "signed for another op",
            ),
            error(
                req_wire("other family", subj="fed.cmd.beta.alpha.ping"),
                "wrong_subject",
                "signed for the cmd family",
            ),
        ],
    )


def reject_wrong_subject_layout() -> dict[str, Any]:
    subject = "fed.ask.beta.alpha.ping"
    return vector(
        "reject_wrong_subject_layout",
        "A subject outside the entityd layout is rejected even when subj matches it.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=subject,
        local="beta/peer",
        steps=[error(req_wire("layout", subj=subject), "wrong_subject", "no family 'ask'")],
    )


def reject_wrong_sender_key() -> dict[str, Any]:
    subject = "fed.req.gamma.beta.ping"
    return vector(
        "reject_wrong_sender_key",
        "alpha's key signs a message whose src claims to be beta, on a subject whose "
        "sender token is beta: the key may only speak for alpha.",
        signer=ALPHA,
        keyring=[ALPHA, BETA, GAMMA],
        subject=subject,
        local="gamma/peer",
        steps=[
            error(
                req_wire("impersonation", src="beta/peer", dst="gamma/peer", subj=subject),
                "wrong_sender",
                "src entity is not the key's entity",
            ),
        ],
    )


def reject_wrong_sender_subject() -> dict[str, Any]:
    subject = "fed.req.gamma.beta.ping"
    return vector(
        "reject_wrong_sender_subject",
        "alpha signs as alpha but publishes on a request subject whose sender token names beta.",
        signer=ALPHA,
        keyring=[ALPHA, BETA, GAMMA],
        subject=subject,
        local="gamma/peer",
        steps=[
            error(
                req_wire("sender token", dst="gamma/peer", subj=subject),
                "wrong_sender",
                "src entity is not the subject's sender token",
            ),
        ],
    )


def reject_wrong_sender_event() -> dict[str, Any]:
    subject = "fed.evt.beta.coder.commit"
    body = fields(
        id=msg_id("foreign event"),
        src="alpha/coder",
        dst="*",
        subj=subject,
        typ="event",
        ts=NOW_MS,
        corr=None,
        enc=False,
        payload=EVENT,
    )
    return vector(
        "reject_wrong_sender_event",
        "Only <entity> may publish on fed.evt.<entity>.>: alpha publishes on beta's.",
        signer=ALPHA,
        keyring=[ALPHA, BETA],
        subject=subject,
        local="gamma",
        steps=[error(wire(ALPHA, pack(body)), "wrong_sender", "event on another's subject")],
    )


def reject_wrong_sender_local() -> dict[str, Any]:
    subject = "loc.beta.health.status_get"
    body = fields(
        id=msg_id("foreign local"),
        src="alpha/peer",
        dst="beta/health",
        subj=subject,
        typ="status_get",
        ts=NOW_MS,
        corr=None,
        enc=False,
        payload={},
    )
    return vector(
        "reject_wrong_sender_local",
        "loc.<entity>.> carries only <entity>'s own messages: alpha writes into beta's.",
        signer=ALPHA,
        keyring=[ALPHA, BETA],
        subject=subject,
        local="beta/health",
        steps=[error(wire(ALPHA, pack(body)), "wrong_sender", "another entity on loc.")],
    )


def reject_wrong_destination_local() -> dict[str, Any]:
    subject = "loc.alpha.health.status_get"

    def step(tag: str, dst: str, note: str) -> dict[str, Any]:
        body = fields(
            id=msg_id(tag),
            src="alpha/orchestrator",
            dst=dst,
            subj=subject,
            typ="status_get",
            ts=NOW_MS,
            corr=None,
            enc=False,
            payload={},
        )
        return error(wire(ALPHA, pack(body)), "wrong_destination", note)

    return vector(
        "reject_wrong_destination_local",
        "On loc.<entity>.<actor>.<op> dst must be exactly <entity>/<actor>, and the "
        "receiver alpha/health accepts only messages for itself.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=subject,
        local="alpha/health",
        steps=[
            step("loc other actor", "alpha/memory", "dst is another actor of alpha"),
            step("loc star", "*", "'*' outside fed.evt"),
            step("loc other entity", "beta/health", "dst is another entity"),
        ],
    )


def reject_wrong_destination_event() -> dict[str, Any]:
    subject = "fed.evt.alpha.coder.commit"
    body = fields(
        id=msg_id("addressed event"),
        src="alpha/coder",
        dst="beta/peer",
        subj=subject,
        typ="event",
        ts=NOW_MS,
        corr=None,
        enc=False,
        payload=EVENT,
    )
    return vector(
        "reject_wrong_destination_event",
        "An event's dst must be '*', even when it names the receiver.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=subject,
        local="beta/peer",
        steps=[error(wire(ALPHA, pack(body)), "wrong_destination", "event with dst beta/peer")],
    )


def reject_wrong_destination_request() -> dict[str, Any]:
    return vector(
        "reject_wrong_destination_request",
        "The receiver is the entity beta as a whole (local 'beta'): dst must name one of "
        "beta's actors, and '*' is not a destination for requests.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta",
        steps=[
            error(
                req_wire("dst gamma", dst="gamma/peer"),
                "wrong_destination",
                "dst is another entity",
            ),
            error(req_wire("dst star", dst="*"), "wrong_destination", "'*' on fed.req"),
        ],
    )


def reject_wrong_destination_subject() -> dict[str, Any]:
    return vector(
        "reject_wrong_destination_subject",
        "dst matches the receiver (gamma/peer) but not the subject's receiver token "
        "(beta): the message does not belong on this subject.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="gamma/peer",
        steps=[
            error(
                req_wire("dst subject", dst="gamma/peer"),
                "wrong_destination",
                "fed.req.beta... carrying a message for gamma",
            ),
        ],
    )


def reject_stale_timestamp() -> dict[str, Any]:
    steps = []
    for tag, ts, reason, note in (
        ("past", NOW_MS - WINDOW_MS - 1, "stale_timestamp", "1 ms older than the window"),
        ("ahead", NOW_MS + FUTURE_MS + 1, "stale_timestamp", "1 ms further ahead than future_ms"),
        (
            "ahead by the window",
            NOW_MS + WINDOW_MS,
            "stale_timestamp",
            "window_ms ahead: the window applies behind now only",
        ),
        ("future", NOW_MS + WINDOW_MS + 1, "stale_timestamp", "1 ms beyond the window ahead"),
        ("zero", 0, "stale_timestamp", "ts 0"),
        ("far future", 2**64 - 1, "stale_timestamp", "the largest uint64"),
        ("oldest", NOW_MS - WINDOW_MS, None, "exactly window_ms old: accepted"),
        ("newest", NOW_MS + FUTURE_MS, None, "exactly future_ms ahead: accepted"),
    ):
        body = req_body("stale " + tag, ts=ts)
        data = wire(ALPHA, pack(body))
        steps.append(ok(data, body, note) if reason is None else error(data, reason, note))
    return vector(
        "reject_stale_timestamp",
        "ts must be within [now_ms - window_ms, now_ms + future_ms], bounds included.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=steps,
    )


def reject_replayed() -> dict[str, Any]:
    body = req_body("replayed")
    data = wire(ALPHA, pack(body))
    return vector(
        "reject_replayed",
        "Steps run in order against one replay cache: an id is accepted once inside the "
        "window, whatever else the envelope carries.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=[
            ok(data, body, "first delivery accepted"),
            error(data, "replayed", "the same bytes again"),
            error(
                req_wire("replayed", ts=NOW_MS - 100),
                "replayed",
                "the same id, freshly signed with another ts",
            ),
            error(
                req_wire("replayed", ts=NOW_MS + FUTURE_MS + 1),
                "stale_timestamp",
                "the same id dated past future_ms: the timestamp is checked first",
            ),
            error(
                req_wire("not consumed", dst="beta/coder"),
                "wrong_destination",
                "a new id, rejected at step 12: the id is not used up",
            ),
            error(
                req_wire("not consumed", typ="error", payload={"code": "x"}),
                "bad_payload",
                "the same id, rejected at step 14: still not used up",
            ),
            ok(
                req_wire("not consumed"),
                req_body("not consumed"),
                "the same id in an envelope that passes every check: accepted",
            ),
            error(req_wire("not consumed"), "replayed", "and now it is seen"),
        ],
    )


def reject_replayed_per_sender() -> dict[str, Any]:
    """Two trusted keys answer on a reply inbox (which names no sender) with the same id."""
    subject = "_i.alpha.Zb3kq9WbT6xVfNCw1sYJ2a.9"

    def reply(key: SigningKey, src: str) -> tuple[bytes, dict[str, Any]]:
        body = fields(
            id=msg_id("per sender"),
            src=src,
            dst="alpha/peer",
            subj=subject,
            typ="pong",
            ts=NOW_MS - 400,
            corr=msg_id("per sender ping"),
            enc=False,
            payload={},
        )
        return wire(key, pack(body)), body

    from_beta, beta_body = reply(BETA, "beta/peer")
    from_gamma, gamma_body = reply(GAMMA, "gamma/peer")
    return vector(
        "reject_replayed_per_sender",
        "The replay cache is kept per sender key: the same id signed by two keys is two "
        "messages, and each is accepted once.",
        signer=BETA,
        keyring=[ALPHA, BETA, GAMMA],
        subject=subject,
        local="alpha",
        steps=[
            ok(from_beta, beta_body, "beta's pong accepted"),
            ok(from_gamma, gamma_body, "gamma's pong, the same id: another sender", GAMMA),
            error(from_beta, "replayed", "beta's again"),
            error(from_gamma, "replayed", "gamma's again"),
        ],
    )


def reject_unknown_kind() -> dict[str, Any]:
    return vector(
        "reject_unknown_kind",
        "typ must name a message kind of version 1, encrypted or not.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=[
            error(req_wire("kind launch", typ="launch"), "unknown_kind", "typ 'launch'"),
            error(req_wire("kind case", typ="Ping"), "unknown_kind", "kinds are case-sensitive"),
            error(
                req_wire("kind enc", typ="launch", enc=True, payload=b"\x00" * 40),
                "unknown_kind",
                "an encrypted payload of an unknown kind",
            ),
        ],
    )


def reject_bad_payload() -> dict[str, Any]:
    actor = {"name": "coder", "state": "running", "restarts": 1}

    def status(**changes: Any) -> dict[str, Any]:
        return STATUS | changes

    cases: list[tuple[str, str, Any, str]] = [
        ("status_get nil", "status_get", None, "a payload must be a map, not nil"),
        ("ping array", "ping", [], "a payload must be a map, not an array"),
        ("pong str", "pong", "", "a payload must be a map, not a str"),
        ("error missing", "error", {"code": "busy"}, "error without 'message'"),
        ("error int", "error", {"code": 7, "message": "x"}, "error code as an int"),
        ("status bool", "status", status(uptime_s=True), "uptime_s true: a bool is no number"),
        ("status str", "status", status(uptime_s="12.5"), "uptime_s as a str"),
        ("status nan", "status", status(uptime_s=float("nan")), "uptime_s NaN: no number"),
        ("status inf", "status", status(uptime_s=float("-inf")), "uptime_s -infinity"),
        ("status actors map", "status", status(actors={"coder": actor}), "actors as a map"),
        (
            "restarts float",
            "status",
            status(actors=[actor | {"restarts": 1.0}]),
            "restarts 1.0: a float is no int",
        ),
        (
            "restarts bool",
            "status",
            status(actors=[actor | {"restarts": True}]),
            "restarts true: a bool is no int",
        ),
        (
            "actor missing",
            "status",
            status(actors=[{"name": "coder", "restarts": 1}]),
            "an actor without 'state'",
        ),
        ("actor nil", "status", status(actors=[None]), "an actor that is nil"),
        (
            "rejected str",
            "status",
            status(rejected={"malformed": "3"}),
            "a rejected count as a str",
        ),
        (
            "status missing",
            "status",
            {k: v for k, v in STATUS.items() if k != "entity"},
            "status without 'entity'",
        ),
        ("event data", "event", EVENT | {"data": []}, "event data as an array"),
        ("event missing", "event", {"type": "commit"}, "event without 'actor'"),
    ]
    steps = [
        error(req_wire("payload " + tag, typ=typ, payload=payload), "bad_payload", note)
        for tag, typ, payload, note in cases
    ]
    return vector(
        "reject_bad_payload",
        "Payloads that do not match the schema of their kind.",
        signer=ALPHA,
        keyring=[ALPHA],
        subject=REQ,
        local="beta/peer",
        steps=steps,
    )


BUILDERS: tuple[Callable[[], dict[str, Any]], ...] = (
    valid_request_loc,
    valid_event,
    valid_reply_inbox,
    valid_fed_request,
    valid_payload_rules,
    valid_noncanonical_body,
    valid_fed_command_encrypted,
    reject_too_large,
    reject_malformed,
    reject_bad_version,
    reject_unknown_key,
    reject_bad_signature,
    reject_malformed_body,
    reject_wrong_subject,
    reject_wrong_subject_layout,
    reject_wrong_sender_key,
    reject_wrong_sender_subject,
    reject_wrong_sender_event,
    reject_wrong_sender_local,
    reject_wrong_destination_local,
    reject_wrong_destination_event,
    reject_wrong_destination_request,
    reject_wrong_destination_subject,
    reject_stale_timestamp,
    reject_replayed,
    reject_replayed_per_sender,
    reject_unknown_kind,
    reject_bad_payload,
)


def render() -> dict[str, str]:
    """File name -> file text of every vector."""
    files = {}
    for build in BUILDERS:
        data = build()
        files[f"{data['name']}.json"] = json.dumps(data, indent=2) + "\n"
    return files


def main(directory: Path = HERE) -> int:
    files = render()
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        (directory / name).write_text(text, encoding="utf-8")
    print(f"wrote {len(files)} vectors to {directory}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
