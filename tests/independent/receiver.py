"""An entityd envelope receiver written from protocol/PROTOCOL.md alone.

Nothing here comes from the project's Python code: the msgpack decoding is done by hand
(section 3/4 rules), signatures and boxes use PyNaCl. See README.md next to this file for
what is implemented, section by section, and where the spec was unclear.

    receiver = Receiver(keyring={kid: "alpha", ...}, local="beta/peer")
    opened = receiver.open(wire, subject="fed.req.beta.alpha.ping", now_ms=now)
    plain = decrypt(opened, recipient_seed, kinds)   # section 12, when opened.enc

A rejection raises `Rejected` whose `code` is the reason code of section 9.
"""

from __future__ import annotations

import heapq
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import VerifyKey

# ---- constants (sections 5, 8) -----------------------------------------------------------

DOMAIN = b"entityd/v1/envelope\x00"
assert DOMAIN.hex() == "656e74697479642f76312f656e76656c6f706500"  # section 5, 20 bytes
DEFAULT_MAX_BYTES = 1_048_576
DEFAULT_WINDOW_MS = 90_000
DEFAULT_FUTURE_MS = 5_000
DEFAULT_CAPACITY = 100_000  # ids remembered per kid (section 8, "Capacity")
MAX_DEPTH = 400  # section 4: "A receiver MAY bound nesting depth"
UINT64_MAX = 2**64 - 1

# Section 9: the codes `open` can raise, in step order.
REASON_CODES = (
    "too_large", "malformed", "bad_version", "unknown_key", "bad_signature",
    "malformed_body", "wrong_subject", "wrong_sender", "wrong_destination",
    "stale_timestamp", "replayed", "unknown_kind", "bad_payload",
)
BODY_FIELDS = ("id", "src", "dst", "subj", "typ", "ts", "corr", "enc", "payload")
BROADCAST = "*"


class Rejected(Exception):
    """An envelope refused with a reason code of section 9."""

    def __init__(self, code: str, detail: str = "") -> None:
        assert code in REASON_CODES, code
        super().__init__(f"{code}: {detail}" if detail else code)
        self.code = code
        self.detail = detail


# ---- msgpack, by hand (sections 1, 3, 4) -------------------------------------------------


class DecodeError(ValueError):
    """The bytes are not exactly one msgpack value under the rules in force."""


@dataclass(frozen=True)
class Ext:
    """A msgpack extension value: opaque where a schema says `any` (section 4)."""

    code: int
    data: bytes


@dataclass(frozen=True)
class OtherKey:
    """A map key that is neither str nor bin (allowed inside a body: section 4 speaks of
    "any other key (of any type)", and vector reject_bad_payload has an int key in a
    payload map rejected at step 14, not at step 7). Two keys are equal when they have the
    same msgpack type family and the same value: 1, true and 1.0 are three keys."""

    canon: Any
    value: Any = field(compare=False, hash=False)


def _canon(value: Any) -> Any:
    """A hashable form of a decoded value that keeps the msgpack type apart."""
    if value is None:
        return ("nil",)
    if type(value) is bool:
        return ("bool", value)
    if type(value) is int:
        return ("int", value)
    if type(value) is float:
        return ("float", "nan") if math.isnan(value) else ("float", value)
    if type(value) is str:
        return ("str", value)
    if type(value) is bytes:
        return ("bin", value)
    if type(value) is list:
        return ("array", tuple(_canon(v) for v in value))
    if type(value) is dict:
        return ("map", tuple((_key_canon(k), _canon(v)) for k, v in value.items()))
    if type(value) is Ext:
        return ("ext", value.code, value.data)
    raise TypeError(type(value))


def _key_canon(key: Any) -> Any:
    if type(key) is OtherKey:
        return key.canon
    return _canon(key)


class _Reader:
    def __init__(self, data: bytes, *, keys_str_or_bin: bool) -> None:
        self.data = data
        self.pos = 0
        self.keys_str_or_bin = keys_str_or_bin

    def take(self, n: int) -> bytes:
        end = self.pos + n
        if end > len(self.data):
            raise DecodeError("truncated")
        chunk = self.data[self.pos:end]
        self.pos = end
        return chunk

    def uint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big")

    def sint(self, n: int) -> int:
        return int.from_bytes(self.take(n), "big", signed=True)

    def text(self, n: int) -> str:
        try:
            return self.take(n).decode("utf-8", errors="strict")
        except UnicodeDecodeError as exc:
            raise DecodeError("str is not valid UTF-8") from exc

    def ext(self, n: int) -> Ext:
        code = self.sint(1)
        return Ext(code, self.take(n))

    def array(self, n: int, depth: int) -> list[Any]:
        if n > len(self.data) - self.pos:  # every element takes a byte at least
            raise DecodeError("array longer than the input")
        return [self.value(depth + 1) for _ in range(n)]

    def map(self, n: int, depth: int) -> dict[Any, Any]:
        if 2 * n > len(self.data) - self.pos:
            raise DecodeError("map longer than the input")
        result: dict[Any, Any] = {}
        for _ in range(n):
            key = self.value(depth + 1)
            if type(key) not in (str, bytes):
                if self.keys_str_or_bin:
                    raise DecodeError("a map key that is neither str nor bin")
                key = OtherKey(_canon(key), key)
            value = self.value(depth + 1)
            if key in result:
                raise DecodeError(f"duplicate map key {key!r}")
            result[key] = value
        return result

    def value(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise DecodeError("nested too deep")
        b = self.uint(1)
        if b <= 0x7F:
            return b
        if b >= 0xE0:
            return b - 0x100
        if b <= 0x8F:
            return self.map(b & 0x0F, depth)
        if b <= 0x9F:
            return self.array(b & 0x0F, depth)
        if b <= 0xBF:
            return self.text(b & 0x1F)
        if b == 0xC0:
            return None
        if b == 0xC1:
            raise DecodeError("reserved byte 0xc1")
        if b == 0xC2:
            return False
        if b == 0xC3:
            return True
        if b in (0xC4, 0xC5, 0xC6):
            return self.take(self.uint({0xC4: 1, 0xC5: 2, 0xC6: 4}[b]))
        if b in (0xC7, 0xC8, 0xC9):
            return self.ext(self.uint({0xC7: 1, 0xC8: 2, 0xC9: 4}[b]))
        if b == 0xCA:
            return float(struct.unpack(">f", self.take(4))[0])
        if b == 0xCB:
            return float(struct.unpack(">d", self.take(8))[0])
        if 0xCC <= b <= 0xCF:
            return self.uint(1 << (b - 0xCC))
        if 0xD0 <= b <= 0xD3:
            return self.sint(1 << (b - 0xD0))
        if 0xD4 <= b <= 0xD8:
            return self.ext(1 << (b - 0xD4))
        if b in (0xD9, 0xDA, 0xDB):
            return self.text(self.uint({0xD9: 1, 0xDA: 2, 0xDB: 4}[b]))
        if b in (0xDC, 0xDD):
            return self.array(self.uint(2 if b == 0xDC else 4), depth)
        # 0xde, 0xdf
        return self.map(self.uint(2 if b == 0xDE else 4), depth)


def decode(data: bytes, *, keys_str_or_bin: bool) -> Any:
    """Exactly one msgpack value, nothing after it; duplicate map keys refused anywhere.

    `keys_str_or_bin`: the outer decoding of step 2 also refuses any other map key."""
    reader = _Reader(data, keys_str_or_bin=keys_str_or_bin)
    if not data:
        raise DecodeError("empty input")
    value = reader.value(0)
    if reader.pos != len(data):
        raise DecodeError(f"{len(data) - reader.pos} bytes after the value")
    return value


# ---- names and subjects (sections 2, 10) -------------------------------------------------

_NAME = re.compile(r"[a-z0-9-]{1,32}")


def is_name(value: Any) -> bool:
    return type(value) is str and _NAME.fullmatch(value) is not None


def is_address(value: Any) -> bool:
    if type(value) is not str or value.count("/") != 1:
        return False
    entity, actor = value.split("/")
    return is_name(entity) and is_name(actor)


def entity_of(address: str) -> str:
    return address.split("/", 1)[0]


@dataclass(frozen=True)
class SubjectForm:
    """A subject of section 10's layout: its family and tokens."""

    family: str  # loc, evt, req, cmd, reply
    sender: str | None  # the sender token, if the family has one
    receiver: str | None  # the receiver token, if the family has one
    loc_dst: str | None = None  # on loc.<entity>.<actor>.<op>: <entity>/<actor>


def parse_subject(subject: str) -> SubjectForm | None:
    tokens = subject.split(".")
    if len(tokens) == 4 and tokens[0] == "loc":
        entity = tokens[1]
        return SubjectForm("loc", entity, entity, f"{entity}/{tokens[2]}")
    if len(tokens) == 5 and tokens[0] == "fed" and tokens[1] in ("evt", "req", "cmd"):
        if tokens[1] == "evt":
            return SubjectForm("evt", tokens[2], None)
        return SubjectForm(tokens[1], tokens[3], tokens[2])
    if len(tokens) >= 3 and tokens[0] in ("_i", "_l"):
        return SubjectForm("reply", None, tokens[1])
    return None


# ---- payload schemas (section 11) --------------------------------------------------------

# A schema type: ("str",) ("int",) ("float",) ("bool",) ("bin",) ("any",)
# ("list", T) ("map", T) (keys are str) ("record", Name) ("enum", (values...))
TypeSpec = tuple[Any, ...]


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: TypeSpec
    required: bool
    default: str | None = None


def _split_top(text: str, sep: str = ",") -> list[str]:
    """Split on `sep` outside brackets, braces and quotes."""
    parts, depth, quote, start = [], 0, "", 0
    for i, ch in enumerate(text):
        if quote:
            if ch == quote:
                quote = ""
        elif ch in "\"'`":
            quote = ch
        elif ch in "[({":
            depth += 1
        elif ch in "])}":
            depth -= 1
        elif ch == sep and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p.strip() for p in parts if p.strip()]


def parse_type(text: str) -> TypeSpec:
    text = text.strip().strip("`").strip()
    if text in ("str", "int", "float", "bool", "bin", "any"):
        return (text,)
    if text.startswith("list[") and text.endswith("]"):
        return ("list", parse_type(text[5:-1]))
    if text.startswith("map[") and text.endswith("]"):
        key, value = _split_top(text[4:-1])
        if key.strip() != "str":
            raise ValueError(f"map keys other than str: {text}")
        return ("map", parse_type(value))
    if re.fullmatch(r"[A-Z][A-Za-z0-9_]*", text):
        return ("record", text)
    raise ValueError(f"unknown schema type {text!r}")


def parse_fields(text: str) -> tuple[FieldSpec, ...]:
    """`name: type = default, ...` as the spec's kind table writes a kind's fields."""
    text = text.strip()
    if text in ("", "none", "(none)"):
        return ()
    fields = []
    for part in _split_top(text):
        name, _, rest = part.partition(":")
        type_text, eq, default = rest.partition("=")
        fields.append(FieldSpec(name.strip().strip("`"), parse_type(type_text),
                                required=not eq, default=default.strip() if eq else None))
    return tuple(fields)


@dataclass
class Schemas:
    """Kinds and records, each a tuple of fields."""

    kinds: dict[str, tuple[FieldSpec, ...]]
    records: dict[str, tuple[FieldSpec, ...]]

    @classmethod
    def from_text(cls, kinds: Mapping[str, str], records: Mapping[str, str]) -> Schemas:
        return cls({k: parse_fields(v) for k, v in kinds.items()},
                   {k: parse_fields(v) for k, v in records.items()})

    def check_payload(self, typ: str, payload: Any) -> None:
        """Section 11's schema rules; raises Rejected('bad_payload')."""
        problem = self._record(payload, self.kinds[typ], typ)
        if problem:
            raise Rejected("bad_payload", problem)

    def _record(self, value: Any, fields: tuple[FieldSpec, ...], where: str) -> str:
        if type(value) is not dict:
            return f"{where} is not a map"
        for spec in fields:
            if spec.name not in value:
                if spec.required:
                    return f"{where} lacks {spec.name!r}"
                continue
            item = value[spec.name]
            if item is None:
                return f"{where}.{spec.name} is nil"  # "nil is not a value of any v1 field"
            problem = self._value(item, spec.type, f"{where}.{spec.name}")
            if problem:
                return problem
        return ""

    def _value(self, value: Any, spec: TypeSpec, where: str) -> str:
        kind = spec[0]
        ok = True
        if kind == "any":
            return ""
        if kind == "str":
            ok = type(value) is str
        elif kind == "int":
            ok = type(value) is int
        elif kind == "float":
            ok = type(value) in (int, float)
        elif kind == "bool":
            ok = type(value) is bool
        elif kind == "bin":
            ok = type(value) is bytes
        elif kind == "list":
            if type(value) is not list:
                return f"{where} is not an array"
            for i, item in enumerate(value):
                problem = self._value(item, spec[1], f"{where}[{i}]")
                if problem:
                    return problem
            return ""
        elif kind == "map":
            if type(value) is not dict:
                return f"{where} is not a map"
            for key, item in value.items():
                if type(key) is not str:
                    return f"{where} has a key that is not a str: {key!r}"
                problem = self._value(item, spec[1], f"{where}[{key!r}]")
                if problem:
                    return problem
            return ""
        elif kind == "record":
            return self._record(value, self.records[spec[1]], where)
        else:
            raise AssertionError(spec)
        return "" if ok else f"{where} is not a {kind}: {type(value).__name__}"


# Section 11, transcribed: each kind's fields as the spec's table writes them.
KIND_FIELDS: dict[str, str] = {
    "ping": "",
    "pong": "",
    "ack": "",
    "error": "code: str, message: str",
    "status_get": "",
    "status": ('entity: str, public_key: str, uptime_s: float, nats_server: str, '
               'actors: list[ActorStatus], started_at: float = 0.0, '
               'rejected: map[str, int] = {}, sandbox: str = ""'),
    "event": "type: str, actor: str, data: map[str, any] = {}",
}
RECORD_FIELDS: dict[str, str] = {
    "ActorStatus": "name: str, state: str, restarts: int",
}
SCHEMAS = Schemas.from_text(KIND_FIELDS, RECORD_FIELDS)


# ---- replay (section 8) ------------------------------------------------------------------


class ReplayCache:
    """Section 8's reference algorithm: one bounded cache and floor per kid."""

    def __init__(self, window_ms: int = DEFAULT_WINDOW_MS, future_ms: int = DEFAULT_FUTURE_MS,
                 capacity: int = DEFAULT_CAPACITY) -> None:
        assert future_ms <= window_ms  # "it is never larger than the window"
        self.window_ms = window_ms
        self.future_ms = future_ms
        self.capacity = capacity
        self._ids: dict[bytes, dict[bytes, int]] = {}
        self._heap: dict[bytes, list[tuple[int, bytes]]] = {}  # (ts, id), smallest first
        self._floor: dict[bytes, int] = {}

    def admit(self, kid: bytes, id_: bytes, ts: int, now: int) -> None:
        if ts > now + self.future_ms:
            raise Rejected("stale_timestamp", f"ts {ts} is {ts - now} ms ahead")
        if ts < now - self.window_ms:
            raise Rejected("stale_timestamp", f"ts {ts} is {now - ts} ms old")
        if ts < self._floor.get(kid, 0):
            raise Rejected("stale_timestamp", f"ts {ts} is below the kid's floor")
        ids, heap = self._ids.get(kid), self._heap.get(kid)
        if ids is None or heap is None:
            return
        while heap and heap[0][0] < now - self.window_ms:
            _, old = heapq.heappop(heap)
            del ids[old]
        if id_ in ids:
            raise Rejected("replayed", f"id {id_.hex()} already accepted from this kid")

    def remember(self, kid: bytes, id_: bytes, ts: int) -> None:
        ids = self._ids.setdefault(kid, {})
        heap = self._heap.setdefault(kid, [])
        ids[id_] = ts
        heapq.heappush(heap, (ts, id_))
        if len(ids) > self.capacity:
            old_ts, old = heapq.heappop(heap)
            del ids[old]
            self._floor[kid] = max(self._floor.get(kid, 0), old_ts + 1)

    def remembered(self, kid: bytes) -> int:
        return len(self._ids.get(kid, {}))


# ---- the receiver (sections 6, 7, 13) ----------------------------------------------------


@dataclass(frozen=True)
class Opened:
    """An accepted envelope: the nine body fields, the kid and its entity (section 6)."""

    kid: bytes
    entity: str
    body: dict[str, Any]
    raw_body: bytes

    @property
    def enc(self) -> bool:
        return bool(self.body["enc"])

    @property
    def typ(self) -> str:
        return str(self.body["typ"])


def verify_signature(wire: bytes, keyring: Mapping[bytes, str],
                     max_bytes: int = DEFAULT_MAX_BYTES) -> tuple[bytes, bytes]:
    """Steps 1 to 6: (kid, body bytes) of a wire whose signature verifies."""
    # 1. Size, before anything is decoded.
    if len(wire) > max_bytes:
        raise Rejected("too_large", f"{len(wire)} > {max_bytes} bytes")
    # 2. Outer decoding.
    try:
        outer = decode(wire, keys_str_or_bin=True)
    except DecodeError as exc:
        raise Rejected("malformed", str(exc)) from exc
    if type(outer) is not list or len(outer) != 4:
        raise Rejected("malformed", "not an array of 4")
    version, kid, body, sig = outer
    # 3. Version: only the int 1.
    if type(version) is not int or version != 1:
        raise Rejected("bad_version", repr(version))
    # 4. Shape.
    if type(kid) is not bytes or len(kid) != 32:
        raise Rejected("malformed", "kid is not a bin of 32 bytes")
    if type(body) is not bytes:
        raise Rejected("malformed", "body is not a bin")
    if type(sig) is not bytes or len(sig) != 64:
        raise Rejected("malformed", "sig is not a bin of 64 bytes")
    # 5. Key.
    if kid not in keyring:
        raise Rejected("unknown_key", kid.hex())
    # 6. Signature over DOMAIN || body, the body bytes as received.
    try:
        VerifyKey(kid).verify(DOMAIN + body, sig)
    except (CryptoError, ValueError, TypeError) as exc:
        raise Rejected("bad_signature", str(exc)) from exc
    return kid, body


def _check_body_fields(body: Any) -> dict[str, Any]:
    """Step 7's field constraints (section 4); raises Rejected('malformed_body')."""
    def bad(why: str) -> Rejected:
        return Rejected("malformed_body", why)

    if type(body) is not dict:
        raise bad("the body is not a map")
    keys = set(body)
    for key in keys:
        if type(key) is not str or key not in BODY_FIELDS:
            raise bad(f"unknown field {key!r}")
    missing = [name for name in BODY_FIELDS if name not in keys]
    if missing:
        raise bad(f"missing {missing}")
    if type(body["id"]) is not bytes or len(body["id"]) != 16:
        raise bad("id is not a bin of 16 bytes")
    if not is_address(body["src"]):
        raise bad(f"src {body['src']!r} is not an address")
    if not (body["dst"] == BROADCAST and type(body["dst"]) is str) and not is_address(
            body["dst"]):
        raise bad(f"dst {body['dst']!r} is not an address or *")
    if type(body["subj"]) is not str or not 1 <= len(body["subj"]) <= 1024:
        raise bad("subj is not a str of 1..1024 characters")
    if type(body["typ"]) is not str or not 1 <= len(body["typ"]) <= 64:
        raise bad("typ is not a str of 1..64 characters")
    if type(body["ts"]) is not int or not 0 <= body["ts"] <= UINT64_MAX:
        raise bad(f"ts {body['ts']!r} is not an int in 0..2^64-1")
    corr = body["corr"]
    if corr is not None and (type(corr) is not bytes or len(corr) != 16):
        raise bad("corr is neither nil nor a bin of 16 bytes")
    if type(body["enc"]) is not bool:
        raise bad("enc is not a bool")
    if body["enc"] and type(body["payload"]) is not bytes:
        raise bad("enc is true but the payload is not a bin")
    return body


class Receiver:
    """One receiver identity `local` (section 7) with its own replay cache (section 8)."""

    def __init__(self, keyring: Mapping[bytes, str], local: str, *,
                 max_bytes: int = DEFAULT_MAX_BYTES, window_ms: int = DEFAULT_WINDOW_MS,
                 future_ms: int = DEFAULT_FUTURE_MS, capacity: int = DEFAULT_CAPACITY,
                 schemas: Schemas = SCHEMAS) -> None:
        assert is_address(local) or is_name(local), local
        self.keyring = dict(keyring)
        self.local = local
        self.max_bytes = max_bytes
        self.replay = ReplayCache(window_ms, future_ms, capacity)
        self.schemas = schemas

    def open(self, wire: bytes, subject: str, now_ms: int) -> Opened:
        kid, raw_body = verify_signature(wire, self.keyring, self.max_bytes)
        return self.check_body(kid, raw_body, subject, now_ms)

    def check_body(self, kid: bytes, raw_body: bytes, subject: str, now_ms: int) -> Opened:
        """Steps 7 to 14, then remember the id."""
        # 7. Body decoding (map keys of any type; duplicates refused anywhere).
        try:
            decoded = decode(raw_body, keys_str_or_bin=False)
        except DecodeError as exc:
            raise Rejected("malformed_body", str(exc)) from exc
        body = _check_body_fields(decoded)
        src, dst, subj = body["src"], body["dst"], body["subj"]
        # 8. Subject binding.
        if subj != subject:
            raise Rejected("wrong_subject", f"subj {subj!r} arrived on {subject!r}")
        # 9. Key binding (section 13).
        key_entity = self.keyring[kid]
        if entity_of(src) != key_entity:
            raise Rejected("wrong_sender", f"src {src} signed by {key_entity}'s key")
        # 10. Subject layout.
        form = parse_subject(subject)
        if form is None:
            raise Rejected("wrong_subject", f"{subject!r} is outside the layout")
        # 11. Subject sender.
        if form.sender is not None and form.sender != entity_of(src):
            raise Rejected("wrong_sender", f"subject names {form.sender}, src is {src}")
        # 12. Destination (section 7).
        self._check_destination(form, dst)
        # 13. Replay: look up only.
        self.replay.admit(kid, body["id"], body["ts"], now_ms)
        # 14. Kind and payload.
        typ = body["typ"]
        if typ not in self.schemas.kinds:
            raise Rejected("unknown_kind", repr(typ))
        if not body["enc"]:
            self.schemas.check_payload(typ, body["payload"])
        self.replay.remember(kid, body["id"], body["ts"])
        return Opened(kid, key_entity, body, raw_body)

    def _check_destination(self, form: SubjectForm, dst: str) -> None:
        def bad(why: str) -> Rejected:
            return Rejected("wrong_destination", why)

        if form.family == "evt":
            if dst != BROADCAST:
                raise bad(f"an event's dst is {dst!r}, not *")
            return
        if dst == BROADCAST:
            raise bad(f"* on a {form.family} subject")
        if is_address(self.local):
            if dst != self.local:
                raise bad(f"dst {dst} is not {self.local}")
        elif entity_of(dst) != self.local:
            raise bad(f"dst {dst} is not one of {self.local}'s actors")
        if entity_of(dst) != form.receiver:
            raise bad(f"dst {dst} does not belong on a subject for {form.receiver}")
        if form.family == "loc" and dst != form.loc_dst:
            raise bad(f"dst {dst} is not {form.loc_dst} of the subject")


# ---- encrypted payloads (section 12) -----------------------------------------------------


def x25519_secret(seed: bytes) -> bytes:
    """The X25519 secret of an Ed25519 seed (crypto_sign_ed25519_sk_to_curve25519)."""
    _, secret = bindings.crypto_sign_seed_keypair(seed)
    return bytes(bindings.crypto_sign_ed25519_sk_to_curve25519(secret))


def x25519_public(ed25519_public: bytes) -> bytes:
    return bytes(bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public))


def decrypt(opened: Opened, recipient_seed: bytes, schemas: Schemas = SCHEMAS) -> Any:
    """Section 12: the plaintext payload of an accepted envelope with `enc` true, decoded
    under the body's rules and checked against its kind; else Rejected('bad_payload')."""
    assert opened.enc
    payload: bytes = opened.body["payload"]
    if len(payload) < 24 + 16:
        raise Rejected("bad_payload", "ciphertext shorter than nonce and tag")
    try:
        box = Box(PrivateKey(x25519_secret(recipient_seed)),
                  PublicKey(x25519_public(opened.kid)))
        plaintext = box.decrypt(payload[24:], payload[:24])
    except (CryptoError, ValueError, TypeError) as exc:
        raise Rejected("bad_payload", f"does not decrypt: {exc}") from exc
    try:
        value = decode(plaintext, keys_str_or_bin=False)
    except DecodeError as exc:
        raise Rejected("bad_payload", f"plaintext does not decode: {exc}") from exc
    schemas.check_payload(opened.typ, value)
    return value


# ---- helpers for tests -------------------------------------------------------------------


def read_hex_key(text: str) -> bytes:
    """A key file as the data dir keeps it (hex, maybe a newline), or raw bytes."""
    value = bytes.fromhex(text.strip())
    if len(value) != 32:
        raise ValueError(f"a key of {len(value)} bytes")
    return value


def as_json(value: Any) -> Any:
    """Section 14's JSON form of a body: bin as lowercase hex."""
    if type(value) is bytes:
        return value.hex()
    if type(value) is list:
        return [as_json(v) for v in value]
    if type(value) is dict:
        return {(k if type(k) is str else repr(k)): as_json(v) for k, v in value.items()}
    return value
