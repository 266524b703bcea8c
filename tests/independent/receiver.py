"""An entityd envelope receiver written from protocol/PROTOCOL.md alone.

Nothing here comes from the project's Python code: the msgpack decoding is done by hand
(section 3/4 rules), signatures and boxes use PyNaCl; msgpack-python only encodes what
`seal` sends. See README.md next to this file for
what is implemented, section by section, and where the spec was unclear.

    receiver = Receiver(keyring={kid: "alpha", ...}, local="beta/peer")
    opened = receiver.open(wire, subject="fed.req.beta.alpha.ping", now_ms=now)
    plain = decrypt(opened, recipient_seed, kinds)   # section 12, when opened.enc

A rejection raises `Rejected` whose `code` is the reason code of section 9.
"""

from __future__ import annotations

import copy
import heapq
import math
import re
import struct
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgpack
from nacl import bindings
from nacl.exceptions import CryptoError
from nacl.public import Box, PrivateKey, PublicKey
from nacl.signing import SigningKey, VerifyKey
from nacl.utils import random as nacl_random

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
        assert code in REASON_CODES or code in ROUTE_CODES, code
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


class _Reader:
    def __init__(self, data: bytes, *, bin_keys: bool) -> None:
        self.data = data
        self.pos = 0
        self.key_types: tuple[type, ...] = (str, bytes) if bin_keys else (str,)

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
            if type(key) not in self.key_types:
                raise DecodeError(f"a map key that is a {type(key).__name__}")
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


def decode(data: bytes, *, bin_keys: bool = False) -> Any:
    """Exactly one msgpack value, nothing after it, every map key a str (section 4, *Map
    keys*: equal when the code points are) and none repeated, at any depth.

    `bin_keys`: the outer decoding of step 2 allows bin keys too ("a map key that is
    neither str nor bin" is what it refuses)."""
    reader = _Reader(data, bin_keys=bin_keys)
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

    family: str  # loc, evt, req, cmd, ledger, reply
    sender: str | None  # the sender token, if the family has one
    receiver: str | None  # the receiver token, if the family has one
    # the one dst of the subject: <entity>/<actor> on loc.<entity>.<actor>.<op>,
    # <entity>/ledger on ledger.<entity>
    loc_dst: str | None = None


def parse_subject(subject: str) -> SubjectForm | None:
    tokens = subject.split(".")
    if len(tokens) == 4 and tokens[0] == "loc":
        entity = tokens[1]
        return SubjectForm("loc", entity, entity, f"{entity}/{tokens[2]}")
    if len(tokens) == 5 and tokens[0] == "fed" and tokens[1] in ("evt", "req", "cmd"):
        if tokens[1] == "evt":
            return SubjectForm("evt", tokens[2], None)
        return SubjectForm(tokens[1], tokens[3], tokens[2])
    if len(tokens) == 2 and tokens[0] == "ledger":
        return SubjectForm("ledger", tokens[1], tokens[1], f"{tokens[1]}/ledger")
    if len(tokens) >= 3 and tokens[0] in ("_i", "_l"):
        return SubjectForm("reply", None, tokens[1])
    return None


# ---- payload schemas and routes (section 11, read from the spec) -------------------------
#
# Section 11.2/11.3 are generated, regular markdown: the receiver reads them from
# protocol/PROTOCOL.md rather than from a copy, so a kind added to the spec is a kind
# here. Anything in those sections this reader does not understand raises SpecError.

SPEC_PATH = Path(__file__).resolve().parents[2] / "protocol" / "PROTOCOL.md"

# A schema type: ("str",) ("bin",) ("int",) ("float",) ("bool",) ("any",)
# ("list", T) ("map", T) (keys are str) ("nil_or", T) ("record", Name)
TypeSpec = tuple[Any, ...]
_NO_DEFAULT = object()


class SpecError(ValueError):
    """Section 11 says something this reader cannot parse."""


@dataclass(frozen=True)
class FieldSpec:
    name: str
    type: TypeSpec
    required: bool
    default: Any = None  # the parsed default of an optional field


@dataclass(frozen=True)
class Route:
    """One line of a kind's *Travels* list.

    how: "loc" (to <entity>/<actor> on loc.<entity>.<actor>.<op>), "req" / "cmd" (on
    fed.req / fed.cmd .<dst>.<src>.<op> to <dst>/<actor>), "evt" (on
    fed.evt.<entity>.<actor>.<op>; "<actor>" / "<type>" are placeholders), "reply" (reply
    to the request kinds in `to`, or to any request when `to` is empty), "answer" (a
    durable command sent back as the answer to the commands in `to`)."""

    how: str
    actor: str = ""
    op: str = ""
    to: tuple[str, ...] = ()
    permission: str = ""


@dataclass(frozen=True)
class KindSpec:
    name: str
    fields: tuple[FieldSpec, ...]
    federation: str  # "local only", "encrypted" or "plain"
    routes: tuple[Route, ...]


def parse_type(text: str) -> TypeSpec:
    """Section 11's type grammar."""
    text = text.strip()
    if text.endswith(" or nil"):
        return ("nil_or", parse_type(text[: -len(" or nil")]))
    if text in ("str", "bin", "int", "float", "bool", "any"):
        return (text,)
    if text.startswith("list[") and text.endswith("]"):
        return ("list", parse_type(text[5:-1]))
    if text.startswith("map[str,") and text.endswith("]"):
        return ("map", parse_type(text[len("map[str,"):-1]))
    if re.fullmatch(r"[A-Z][A-Za-z0-9_]*", text):
        return ("record", text)
    raise SpecError(f"unknown schema type {text!r}")


def parse_default(text: str) -> Any:
    """Section 11: "A default is written as a msgpack value: "" the empty str, b"" the
    empty bin, [] the empty array, {} the empty map, nil, false, or a number"."""
    text = text.strip()
    if text == "required":
        return _NO_DEFAULT
    if not (text.startswith("`") and text.endswith("`")):
        raise SpecError(f"a default not in backticks: {text!r}")
    value = text[1:-1]
    literals: dict[str, Any] = {"nil": None, "false": False, "true": True, "[]": [],
                                "{}": {}, 'b""': b""}
    if value in literals:
        return literals[value]
    if len(value) >= 2 and value[0] == value[-1] == '"':
        return value[1:-1]
    if re.fullmatch(r"-?\d+", value):
        return int(value)
    if re.fullmatch(r"-?\d+\.\d*(e-?\d+)?", value):
        return float(value)
    raise SpecError(f"unknown default {text!r}")


def _table_rows(lines: list[str]) -> list[list[str]]:
    """The cells of a markdown table's body rows (header and rule skipped)."""
    rows = [line for line in lines if line.startswith("|")]
    cells = [[c.strip() for c in re.split(r"(?<!\\)\|", row)[1:-1]] for row in rows]
    return cells[2:]


def _fields(lines: list[str], where: str) -> tuple[FieldSpec, ...]:
    if any(line.startswith("No fields") for line in lines):
        return ()
    rows = _table_rows(lines)
    if not rows:
        raise SpecError(f"{where}: no field table and no 'No fields'")
    fields = []
    for row in rows:
        if len(row) != 4:
            raise SpecError(f"{where}: a field row of {len(row)} cells: {row}")
        name, type_text, default_text, _note = row
        match = re.fullmatch(r"`([a-z_][a-z0-9_]*)`", name)
        if not match:
            raise SpecError(f"{where}: field name {name!r}")
        default = parse_default(default_text)
        fields.append(FieldSpec(match.group(1), parse_type(type_text),
                                required=default is _NO_DEFAULT,
                                default=None if default is _NO_DEFAULT else default))
    return tuple(fields)


_KINDS_IN = r"((?:`[a-z_]+`(?:, )?)+)"
_ROUTES: list[tuple[str, str]] = [
    ("loc", r"to `<entity>/(?P<actor>[a-z0-9-]+)` on `loc\.<entity>\.(?P=actor)\."
            r"(?P<op>[a-z0-9_]+)` \(request or tell\)"),
    ("req", r"federation request on `fed\.req\.<dst>\.<src>\.(?P<op>[a-z0-9_]+)` to "
            r"`<dst>/(?P<actor>[a-z0-9-]+)`(?:; needs the `(?P<permission>[a-z]+)` permission)?"),
    ("cmd", r"durable command on `fed\.cmd\.<dst>\.<src>\.(?P<op>[a-z0-9_]+)` to "
            r"`<dst>/(?P<actor>[a-z0-9-]+)`(?:; needs the `(?P<permission>[a-z]+)` permission)?"),
    ("evt", r"event on `fed\.evt\.<entity>\.(?P<actor><actor>|[a-z0-9-]+)\."
            r"(?P<op><type>|[a-z0-9_]+)` \(`dst` `\*`\)"),
    ("reply", r"reply to " + _KINDS_IN),
    ("reply", r"reply to any request (?:whose handler returns nothing|that is refused or "
              r"fails \(section 9\))"),
    ("answer", r"sent back as the answer to the durable commands? " + _KINDS_IN),
    ("ledger", r"entry of the account's chain on `ledger\.<entity>` in the LEDGER stream, "
               r"`dst` `<entity>/ledger` \(section 16\)"),
]


def _route(line: str, where: str) -> Route:
    for how, pattern in _ROUTES:
        match = re.fullmatch(pattern, line)
        if match:
            groups = match.groupdict()
            kinds = tuple(re.findall(r"`([a-z_]+)`", match.group(1))) if (
                how in ("reply", "answer") and match.groups()) else ()
            return Route(how, groups.get("actor") or "", groups.get("op") or "", kinds,
                         groups.get("permission") or "")
    raise SpecError(f"{where}: a Travels line this reader does not know: {line!r}")


def _between(text: str, start: str, end: str) -> str:
    try:
        return text[text.index(start) + len(start): text.index(end)]
    except ValueError as exc:
        raise SpecError(f"no {start!r} ... {end!r} in the spec") from exc


@dataclass
class Spec:
    """Section 11 as a receiver needs it: each kind's fields, how its payload crosses the
    federation, where it travels; the records."""

    kinds: dict[str, KindSpec]
    records: dict[str, tuple[FieldSpec, ...]]
    index: dict[str, str]  # 11.1: kind -> federation payload, to check 11.2 against

    @classmethod
    def parse(cls, markdown: str) -> Spec:
        index_text = _between(markdown, "### 11.1 Index", "### 11.2 Kinds")
        index = {}
        for row in _table_rows(index_text.splitlines()):
            match = re.fullmatch(r"\[`([a-z_]+)`\]\(#kind-[a-z-]+\)", row[0])
            if not match:
                raise SpecError(f"11.1: index row {row}")
            index[match.group(1)] = row[2]
        kinds_text = _between(markdown, "### 11.2 Kinds", "### 11.3 Records")
        kinds = {}
        for chunk in re.split(r"(?m)^#### ", kinds_text)[1:]:
            head, *lines = chunk.splitlines()
            match = re.fullmatch(r"`([a-z_]+)`", head.strip())
            if not match:
                raise SpecError(f"11.2: a kind heading {head!r}")
            name = match.group(1)
            federation = ""
            routes = []
            travels = False
            for line in lines:
                found = re.fullmatch(r"Federation payload: (local only|encrypted|plain)\.",
                                     line.strip())
                if found:
                    federation = found.group(1)
                elif line.strip() == "Travels:":
                    travels = True
                elif travels and line.startswith("- "):
                    routes.append(_route(line[2:].strip(), name))
            if not federation:
                raise SpecError(f"11.2: {name} says nothing of its federation payload")
            kinds[name] = KindSpec(name, _fields(lines, name), federation, tuple(routes))
        records_text = markdown[markdown.index("### 11.3 Records"):]
        records_text = records_text[:records_text.index("\n## ")]
        records = {}
        for chunk in re.split(r"(?m)^#### ", records_text)[1:]:
            head, *lines = chunk.splitlines()
            records[head.strip()] = _fields(lines, head.strip())
        spec = cls(kinds, records, index)
        spec.check_references()
        return spec

    def check_references(self) -> None:
        for kind in self.kinds.values():
            for spec in kind.fields:
                self._check_type(spec.type, kind.name)
            for route in kind.routes:
                for other in route.to:
                    # "reply to `x`" names kinds; "the answer to the durable command `x`"
                    # names a fed.cmd operation (`delegate` is no kind: task_offer is).
                    if route.how == "reply" and other not in self.kinds:
                        raise SpecError(f"{kind.name} is a reply to unknown kind {other}")
                    if route.how == "answer" and other not in self.command_ops():
                        raise SpecError(f"{kind.name} answers unknown command {other}")
        for name, fields in self.records.items():
            for spec in fields:
                self._check_type(spec.type, name)

    def command_ops(self) -> dict[str, str]:
        """fed.cmd operation -> the kind it carries."""
        return {r.op: k.name for k in self.kinds.values() for r in k.routes if r.how == "cmd"}

    def request_ops(self) -> dict[str, str]:
        """fed.req operation -> the kind it carries."""
        return {r.op: k.name for k in self.kinds.values() for r in k.routes if r.how == "req"}

    def _check_type(self, spec: TypeSpec, where: str) -> None:
        if spec[0] == "record" and spec[1] not in self.records:
            raise SpecError(f"{where}: unknown record {spec[1]}")
        if spec[0] in ("list", "map", "nil_or"):
            self._check_type(spec[1], where)

    # -- schema rules (section 11) --

    def check_payload(self, typ: str, payload: Any) -> None:
        """Raises Rejected('bad_payload') unless `payload` matches the kind's schema."""
        problem = self._record(payload, self.kinds[typ].fields, typ)
        if problem:
            raise Rejected("bad_payload", problem)

    def _record(self, value: Any, fields: tuple[FieldSpec, ...], where: str) -> str:
        if type(value) is not dict:
            return f"{where} is not a map but a {type(value).__name__}"
        for spec in fields:
            if spec.name not in value:
                if spec.required:
                    return f"{where} lacks {spec.name!r}"
                continue
            problem = self.value_problem(value[spec.name], spec.type,
                                         f"{where}.{spec.name}")
            if problem:
                return problem
        return ""

    def record(self, typ: str, payload: Any) -> dict[str, Any]:
        """The decoded message record of a payload that matches its kind (section 6's
        result, section 14's `record`): the kind's fields only, defaults filled in, ints
        in float fields read as floats, recursively."""
        return self._as_record(payload, self.kinds[typ].fields)

    def _as_record(self, value: dict[str, Any], fields: tuple[FieldSpec, ...]
                   ) -> dict[str, Any]:
        result = {}
        for spec in fields:
            if spec.name in value:
                result[spec.name] = self._as_value(value[spec.name], spec.type)
            else:
                result[spec.name] = copy.deepcopy(spec.default)
        return result

    def _as_value(self, value: Any, spec: TypeSpec) -> Any:
        kind = spec[0]
        if kind == "float":
            return float(value)
        if kind == "nil_or":
            return None if value is None else self._as_value(value, spec[1])
        if kind == "list":
            return [self._as_value(v, spec[1]) for v in value]
        if kind == "map":
            return {k: self._as_value(v, spec[1]) for k, v in value.items()}
        if kind == "record":
            return self._as_record(value, self.records[spec[1]])
        return value

    def value_problem(self, value: Any, spec: TypeSpec, where: str) -> str:
        """'' when `value` is of schema type `spec`, else why not (section 11, Types)."""
        kind = spec[0]
        if kind == "any":
            return ""
        if kind == "nil_or":
            return "" if value is None else self.value_problem(value, spec[1], where)
        if kind == "list":
            if type(value) is not list:
                return f"{where} is not an array but a {type(value).__name__}"
            for i, item in enumerate(value):
                problem = self.value_problem(item, spec[1], f"{where}[{i}]")
                if problem:
                    return problem
            return ""
        if kind == "map":
            if type(value) is not dict:
                return f"{where} is not a map but a {type(value).__name__}"
            for key, item in value.items():  # keys are str: decode saw to it
                problem = self.value_problem(item, spec[1], f"{where}[{key!r}]")
                if problem:
                    return problem
            return ""
        if kind == "record":
            return self._record(value, self.records[spec[1]], where)
        accepted = {"str": (str,), "bin": (bytes,), "int": (int,), "float": (int, float),
                    "bool": (bool,)}[kind]
        if type(value) in accepted:  # type(): a bool is no int, an int no bool
            # Section 11's types: a float is finite (a NaN or an infinity is bad_payload).
            if kind == "float" and isinstance(value, float) and not math.isfinite(value):
                return f"{where} is not a finite number but {value!r}"
            return ""
        return f"{where} is not a {kind} but a {type(value).__name__}"


_SPEC: Spec | None = None


def spec_v1() -> Spec:
    """Section 11 of protocol/PROTOCOL.md, parsed once."""
    global _SPEC
    if _SPEC is None:
        _SPEC = Spec.parse(SPEC_PATH.read_text(encoding="utf-8"))
    return _SPEC


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
        outer = decode(wire, bin_keys=True)
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
                 spec: Spec | None = None) -> None:
        assert is_address(local) or is_name(local), local
        self.keyring = dict(keyring)
        self.local = local
        self.max_bytes = max_bytes
        self.replay = ReplayCache(window_ms, future_ms, capacity)
        self.spec = spec or spec_v1()

    def open(self, wire: bytes, subject: str, now_ms: int) -> Opened:
        kid, raw_body = verify_signature(wire, self.keyring, self.max_bytes)
        return self.check_body(kid, raw_body, subject, now_ms)

    def check_body(self, kid: bytes, raw_body: bytes, subject: str, now_ms: int) -> Opened:
        """Steps 7 to 14, then remember the id."""
        # 7. Body decoding (every map key a str, none repeated, at any depth).
        try:
            decoded = decode(raw_body)
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
        if typ not in self.spec.kinds:
            raise Rejected("unknown_kind", repr(typ))
        if not body["enc"]:
            self.spec.check_payload(typ, body["payload"])
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
        if form.family in ("loc", "ledger") and dst != form.loc_dst:
            raise bad(f"dst {dst} is not {form.loc_dst} of the subject")


# ---- after open: kinds per actor and routes (sections 9.1, 9.2, 11) ----------------------

# Section 9.1/9.2 codes of the checks after open (section 11, *Where kinds may go*).
ROUTE_CODES = ("unexpected_kind", "unexpected_encryption", "wrong_subject", "unknown_kind",
               "wrong_sender", "bad_entry")


def check_route(opened: Opened, subject: str, spec: Spec | None = None) -> None:
    """What the receiver checks after open and before the actor: section 11's *Where
    kinds may go, and the codes when they go elsewhere*, with section 9.1 (each actor
    takes the kinds its *Travels* `loc` lines declare; no encryption on `loc` or `_l`),
    section 10 (the operation table; the event tokens) and 9.2 (`wrong_sender` for a
    federation request or command under the receiver's own key, after the operation).
    Raises Rejected with a code of ROUTE_CODES."""
    spec = spec or spec_v1()
    form = parse_subject(subject)
    assert form is not None  # open checked the layout
    tokens = subject.split(".")
    typ, enc = opened.typ, opened.enc
    kind = spec.kinds[typ]
    family = form.family
    if family == "loc":
        if enc:
            raise Rejected("unexpected_encryption", f"{typ} encrypted on {subject}")
        actor = tokens[2]
        takes = sorted(k.name for k in spec.kinds.values()
                       if any(r.how == "loc" and r.actor == actor for r in k.routes))
        if typ not in takes:
            raise Rejected("unexpected_kind", f"{actor} takes {takes}, not {typ}")
        return  # section 10: the loc operation token is not interpreted
    if family in ("req", "cmd"):
        op = tokens[4]
        ops = spec.request_ops() if family == "req" else spec.command_ops()
        if op not in ops:
            raise Rejected("unknown_kind", f"no fed.{family} operation {op}")
        if ops[op] != typ:
            raise Rejected("wrong_subject", f"fed.{family} .{op} carries {ops[op]}, not {typ}")
        if opened.entity == form.receiver:
            raise Rejected("wrong_sender", f"{subject} signed by {opened.entity}'s own key")
        return  # either form of a federation kind (11: "either form")
    if family == "evt":
        if enc:
            raise Rejected("unexpected_encryption", f"{typ} encrypted on {subject}")
        actor, type_ = tokens[3], tokens[4]
        src_actor = str(opened.body["src"]).split("/", 1)[1]
        payload = opened.body["payload"]
        if typ == "event":
            fits = (src_actor == actor and payload.get("actor") == actor
                    and payload.get("type") == type_)
        else:
            fits = typ == "heartbeat" and src_actor == actor == "peer" and type_ == typ
        if not fits:
            raise Rejected("wrong_subject", f"{typ} from {opened.body['src']} on {subject}")
        return
    if family == "ledger":  # 11: only the entry kinds, plain (16.3 reads them further)
        if enc or not any(r.how == "ledger" for r in kind.routes):
            raise Rejected("bad_entry", f"{typ}{' encrypted' if enc else ''} on {subject}")
        return
    # reply inboxes
    if tokens[0] == "_l":
        if enc:
            raise Rejected("unexpected_encryption", f"{typ} encrypted on {subject}")
    elif kind.federation == "local only":
        raise Rejected("unexpected_kind", f"{typ} is local only, here on {subject}")
    if not any(r.how == "reply" for r in kind.routes):
        raise Rejected("unexpected_kind", f"{typ} is not a reply, here on {subject}")


def reply_fits(spec: Spec, reply_typ: str, request_typ: str) -> bool:
    """Section 11's *Travels*: `reply_typ` is a reply to `request_typ` (or to any)."""
    return any(r.how == "reply" and (not r.to or request_typ in r.to)
               for r in spec.kinds[reply_typ].routes)


def answer_fits(spec: Spec, answer_typ: str, command_op: str) -> bool:
    """Section 11's *Travels*: `answer_typ` is sent back for the fed.cmd `command_op`."""
    return any(r.how == "answer" and command_op in r.to for r in spec.kinds[answer_typ].routes)


# ---- encrypted payloads (section 12) -----------------------------------------------------


def x25519_secret(seed: bytes) -> bytes:
    """The X25519 secret of an Ed25519 seed (crypto_sign_ed25519_sk_to_curve25519)."""
    _, secret = bindings.crypto_sign_seed_keypair(seed)
    return bytes(bindings.crypto_sign_ed25519_sk_to_curve25519(secret))


def x25519_public(ed25519_public: bytes) -> bytes:
    return bytes(bindings.crypto_sign_ed25519_pk_to_curve25519(ed25519_public))


def decrypt(opened: Opened, recipient_seed: bytes, spec: Spec | None = None) -> Any:
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
        value = decode(plaintext)
    except DecodeError as exc:
        raise Rejected("bad_payload", f"plaintext does not decode: {exc}") from exc
    (spec or spec_v1()).check_payload(opened.typ, value)
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


# ---- sending (sections 4, 5, 12), for probes ---------------------------------------------


def encrypt(sender_seed: bytes, recipient_public: bytes, payload: Any) -> bytes:
    """Section 12: nonce || crypto_box(msgpack(payload)) from the sender to the recipient."""
    nonce = nacl_random(24)
    box = Box(PrivateKey(x25519_secret(sender_seed)), PublicKey(x25519_public(recipient_public)))
    return nonce + box.encrypt(msgpack.packb(payload, use_bin_type=True), nonce).ciphertext


def seal(seed: bytes, *, src: str, dst: str, subj: str, typ: str, payload: Any,
         corr: bytes | None = None, ts_ms: int, encrypt_to: bytes | None = None
         ) -> tuple[bytes, bytes]:
    """A wire as section 3 lays it out and its id: the body map in the order of section 4,
    str for strings and bin for bytes, signed over DOMAIN || body (section 5). With
    `encrypt_to` (the recipient's Ed25519 public key) the payload is sealed (section 12)."""
    key = SigningKey(seed)
    id_ = nacl_random(16)
    enc = encrypt_to is not None
    if encrypt_to is not None:
        payload = encrypt(seed, encrypt_to, payload)
    body = msgpack.packb({"id": id_, "src": src, "dst": dst, "subj": subj, "typ": typ,
                          "ts": ts_ms, "corr": corr, "enc": enc, "payload": payload},
                         use_bin_type=True)
    sig = key.sign(DOMAIN + body).signature
    return msgpack.packb([1, bytes(key.verify_key), body, sig], use_bin_type=True), id_


def sign_body(seed: bytes, body: bytes) -> bytes:
    """A wire around body bytes as given (for probes that need a body seal() cannot make)."""
    key = SigningKey(seed)
    sig = key.sign(DOMAIN + body).signature
    return msgpack.packb([1, bytes(key.verify_key), body, sig], use_bin_type=True)


# ---- answering a refusal (section 9.1) ---------------------------------------------------


def answerable(wire: bytes, reply: str, max_bytes: int = DEFAULT_MAX_BYTES) -> bool:
    """Section 9.1: a refused message gets a signed `error` only when its reply subject is
    a reply inbox (`_i.` or `_l.`) and the wire, no longer than max_bytes, "decodes as
    msgpack to an array whose element 2 is a bin that decodes, with no trailing bytes, to
    a map whose `src` is a str that is an address (section 2) and whose `id` is a bin of
    16 bytes", where "decodes" is open's decoding: the wire as step 2, the body as step 7
    (section 4: every key a str, none repeated), so such a body is never answered."""
    if not reply.startswith(("_i.", "_l.")) or len(wire) > max_bytes:
        return False
    try:
        outer = decode(wire, bin_keys=True)
        if type(outer) is not list or len(outer) < 3 or type(outer[2]) is not bytes:
            return False
        body = decode(outer[2])
    except DecodeError:
        return False
    return (type(body) is dict and is_address(body.get("src"))
            and type(body.get("id")) is bytes and len(body["id"]) == 16)
