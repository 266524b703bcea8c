"""The signed envelope of protocol version 1: seal() signs exact bytes, open() verifies them.

    wire = msgpack [1, kid: bin(32), body: bin, sig: bin(64)]
    sig  = Ed25519(secret, DOMAIN + body)

PROTOCOL.md is the normative description; the order of checks in `open` follows it.
`open` is `verify_signature` (steps 1-6: pure, thread-safe, mostly Ed25519, which PyNaCl
runs without the GIL) followed by `check_body` (steps 7-14, which consult and update the
replay cache and so run on the receiver's own thread, in arrival order). A receiver under
load runs the first half on worker threads and the second on its event loop.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from dataclasses import dataclass
from typing import Any

import msgpack
from nacl.signing import SigningKey

from . import kinds, subjects
from .errors import (
    BadPayload,
    Malformed,
    MalformedBody,
    ProtocolError,
    TooLarge,
    UnknownKind,
    UnsupportedVersion,
    WrongDestination,
    WrongSender,
    WrongSubject,
)
from .keyring import KEY_BYTES, KeyEntry, Keyring
from .replay import ReplayGuard

VERSION = 1
DOMAIN = b"entityd/v1/envelope\x00"
ID_BYTES = 16
SIG_BYTES = 64
MAX_WIRE_BYTES = 1024 * 1024
BROADCAST = "*"

_BODY_FIELDS = ("id", "src", "dst", "subj", "typ", "ts", "corr", "enc", "payload")


@dataclass(frozen=True, slots=True)
class Envelope:
    """An opened envelope: the verified body fields, the signer, and the typed message.

    `message` is the kind's record; for an encrypted envelope (`enc`) it is None and
    `payload` holds the ciphertext for the peer layer to open.
    """

    id: bytes
    src: str
    dst: str
    subj: str
    typ: str
    ts: int
    corr: bytes | None
    enc: bool
    payload: Any
    message: Any
    kid: bytes
    signer: str

    @property
    def src_entity(self) -> str:
        return self.src.split("/", 1)[0]


@dataclass(frozen=True, slots=True)
class Verified:
    """A wire whose signature verified under a trusted key (steps 1-6 of PROTOCOL.md §6).

    `body` holds the signed bytes, not yet decoded: nothing in it is trusted to be well
    formed until `check_body` has run.
    """

    kid: bytes
    body: bytes
    signer: KeyEntry


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def new_id() -> bytes:
    return os.urandom(ID_BYTES)


def pack(value: Any, typ: str) -> bytes:
    """msgpack of `value`; BadPayload for what it cannot encode (no receiver could read
    such a message: the sender learns it here, as an error, not as a crash)."""
    try:
        return msgpack.packb(value, use_bin_type=True)
    except (OverflowError, UnicodeEncodeError, TypeError, ValueError, RecursionError) as exc:
        raise BadPayload(f"a {typ} cannot be encoded: {_unencodable(exc)}") from None


def encoded(message: object) -> tuple[str, Any]:
    """(kind, payload) of a registered record; BadPayload for lists and maps nested past
    what Python's recursion reaches (a record holding such a value of type any)."""
    typ = kinds.kind_name(message)
    try:
        return typ, kinds.encode(message)
    except RecursionError as exc:
        raise BadPayload(f"a {typ} cannot be encoded: {_unencodable(exc)}") from None


def _unencodable(exc: Exception) -> str:
    if isinstance(exc, OverflowError):
        return "an integer past 64 bits"
    if isinstance(exc, UnicodeEncodeError):
        return "a string that is not Unicode text (a lone surrogate)"
    if isinstance(exc, RecursionError):
        return "lists and maps nested too deeply"
    return f"{type(exc).__name__}: {exc}"[:200]


def seal(
    key: SigningKey,
    *,
    src: str,
    dst: str,
    subj: str,
    message: object | None = None,
    typ: str | None = None,
    payload: Any = None,
    corr: bytes | None = None,
    enc: bool = False,
    msg_id: bytes | None = None,
    ts: int | None = None,
) -> tuple[bytes, bytes]:
    """Sign a message for `subj`; returns (wire bytes, envelope id).

    Pass a registered record as `message`, or a raw `typ` and `payload` (encrypted
    payloads, test vectors). BadPayload when the payload holds what msgpack cannot carry
    (an integer past 64 bits, a string that is no Unicode text: a lone surrogate).
    """
    if message is not None:
        typ, payload = encoded(message)
    if typ is None:
        raise TypeError("seal() needs a message record or a typ")
    msg_id = msg_id if msg_id is not None else new_id()
    body = pack({
        "id": msg_id,
        "src": src,
        "dst": dst,
        "subj": subj,
        "typ": typ,
        "ts": ts if ts is not None else now_ms(),
        "corr": corr,
        "enc": enc,
        "payload": payload,
    }, typ)
    sig = key.sign(DOMAIN + body).signature
    kid = bytes(key.verify_key)
    SELF_SIGNED.add(kid, body, sig)
    return _wire(kid, body, sig), msg_id


def _wire(kid: bytes, body: bytes, sig: bytes) -> bytes:
    """msgpack [VERSION, kid, body, sig] as msgpack.packb writes it, put together by hand
    (kid and sig have fixed lengths: only the body's bin header varies)."""
    size = len(body)
    if size < 0x100:
        header = b"\xc4" + size.to_bytes(1, "big")
    elif size < 0x10000:
        header = b"\xc5" + size.to_bytes(2, "big")
    else:
        header = b"\xc6" + size.to_bytes(4, "big")
    return b"".join((_WIRE_HEAD, kid, header, body, _SIG_HEAD, sig))


_WIRE_HEAD = bytes((0x94, VERSION, 0xC4, KEY_BYTES))  # fixarray 4, the version, bin8 32
_SIG_HEAD = bytes((0xC4, SIG_BYTES))


class SelfSigned:
    """The signatures this process made lately, so that it need not check them again.

    Most of what a daemon receives it sealed itself: its actors ask one another and
    hear one another's events through NATS, and a process running `entityctl`'s
    requests beside the daemon's actors (the benches) likewise. Step 6 on such a wire
    can only say "valid": the same key, over the same body, made this very signature.
    So `seal` remembers (signature -> key and the body, or past KEPT_BODY_MAX bytes a
    BLAKE2b-256 digest of it) for the last CAPACITY envelopes, and `verify_signature`
    takes a wire whose signature, key and body all match one remembered as verified
    without running Ed25519. Anything
    else, a single bit of the body or the key changed included, is verified as always;
    step 5 (the key ring) still runs first, so a key removed from the ring is refused
    even for what it signed here. Reading is lock-free (one dict lookup, safe beside a
    writer under the GIL), so worker threads may consult it.
    """

    CAPACITY = 4096
    # A body up to this size is kept whole and compared byte for byte; a longer one by
    # its digest. Whole bodies skip two BLAKE2b per envelope (one in `add`, one in
    # `made`) and bound the memory to CAPACITY times this (4 MiB).
    KEPT_BODY_MAX = 1024

    def __init__(self, capacity: int = CAPACITY) -> None:
        self.capacity = capacity
        # signature -> its mark (key, whether the body is kept whole, body or digest)
        self._made: dict[bytes, tuple[bytes, bool, bytes]] = {}
        # The signatures in the order made, a ring: the slot of the next one holds the
        # oldest, forgotten as it is overwritten.
        self._order: list[bytes | None] = [None] * capacity
        self._next = 0
        self._lock = threading.Lock()

    @classmethod
    def _mark(cls, kid: bytes, body: bytes) -> tuple[bytes, bool, bytes]:
        """What identifies a body signed with `kid`: the body itself, or its digest, with
        which of the two it is (a short body equal to a long one's digest is not it)."""
        if len(body) <= cls.KEPT_BODY_MAX:
            return kid, True, body
        return kid, False, hashlib.blake2b(body, digest_size=32).digest()

    def add(self, kid: bytes, body: bytes, sig: bytes) -> None:
        mark = self._mark(kid, body)
        with self._lock:
            slot = self._next
            oldest = self._order[slot]
            if oldest is not None:
                self._made.pop(oldest, None)
            self._order[slot] = sig
            self._next = (slot + 1) % self.capacity
            self._made[sig] = mark

    def made(self, kid: bytes, body: bytes, sig: bytes) -> bool:
        """Whether this process signed exactly `body` with `kid`'s key as `sig`."""
        mark = self._made.get(sig)
        return mark is not None and mark == self._mark(kid, body)

    def clear(self) -> None:
        with self._lock:
            self._made.clear()
            self._order = [None] * self.capacity
            self._next = 0


SELF_SIGNED = SelfSigned()


def _no_duplicates(pairs: list[tuple[Any, Any]]) -> dict[str, Any]:
    """A map of the body (or a decrypted payload), at any depth: its keys are str, all
    different (PROTOCOL.md §4). Only str keys, so that key equality is plain string
    equality: Python's dict would also take 1, True and 1.0 for one key, and b"a" and
    "a" for two."""
    result = dict(pairs)
    for key in result:
        if type(key) is not str:
            raise ValueError(f"a map key must be a str, not {type(key).__name__}")
    if len(result) != len(pairs):
        raise ValueError("duplicate map key")
    return result


def _unpack(data: bytes, *, max_bytes: int) -> Any:
    return msgpack.unpackb(
        data,
        raw=False,
        strict_map_key=False,
        object_pairs_hook=_no_duplicates,
        max_bin_len=max_bytes,
        max_str_len=max_bytes,
        max_array_len=max_bytes,
        max_map_len=max_bytes,
        max_ext_len=max_bytes,
    )


def _split_wire(wire: bytes, max_bytes: int) -> tuple[bytes, bytes, bytes]:
    try:
        outer = msgpack.unpackb(wire, raw=False, use_list=True, max_bin_len=max_bytes)
    except Exception as exc:
        raise Malformed(f"outer array does not decode: {exc}") from None
    if not isinstance(outer, list) or len(outer) != 4:
        raise Malformed("outer value must be an array of 4")
    version, kid, body, sig = outer
    if type(version) is not int or version != VERSION:
        raise UnsupportedVersion(f"version {version!r} is not {VERSION}")
    if not isinstance(kid, bytes) or len(kid) != KEY_BYTES:
        raise Malformed(f"kid must be {KEY_BYTES} bytes of bin")
    if not isinstance(body, bytes):
        raise Malformed("body must be bin")
    if not isinstance(sig, bytes) or len(sig) != SIG_BYTES:
        raise Malformed(f"sig must be {SIG_BYTES} bytes of bin")
    return kid, body, sig


def _decode_body(body: bytes, max_bytes: int) -> dict[str, Any]:
    try:
        fields = _unpack(body, max_bytes=max_bytes)
    except Exception as exc:
        raise MalformedBody(f"body does not decode: {exc}") from None
    if not isinstance(fields, dict):
        raise MalformedBody("body must be a map")
    if fields.keys() != _BODY_FIELD_SET:
        missing = [name for name in _BODY_FIELDS if name not in fields]
        if missing:
            raise MalformedBody(f"body lacks {', '.join(missing)}")
        extra = sorted(str(k) for k in fields if k not in _BODY_FIELD_SET)
        raise MalformedBody(f"body has unknown fields {', '.join(extra)}")
    bad = _bad_field(fields)
    if bad is not None:
        raise MalformedBody(f"field {bad!r} has a bad value: {fields[bad]!r:.80}")
    if fields["enc"] and not isinstance(fields["payload"], bytes):
        raise MalformedBody("an encrypted payload must be bin")
    return fields


_BODY_FIELD_SET = frozenset(_BODY_FIELDS)


def _bad_field(fields: dict[str, Any]) -> str | None:
    """The first field, in the table order of PROTOCOL.md §4, that breaks its constraint."""
    value = fields["id"]
    if not isinstance(value, bytes) or len(value) != ID_BYTES:
        return "id"
    if not _is_address(fields["src"]):
        return "src"
    value = fields["dst"]
    if value != BROADCAST and not _is_address(value):
        return "dst"
    value = fields["subj"]
    if not isinstance(value, str) or not 0 < len(value) <= 1024:
        return "subj"
    value = fields["typ"]
    if not isinstance(value, str) or not 0 < len(value) <= 64:
        return "typ"
    value = fields["ts"]
    if type(value) is not int or value < 0:
        return "ts"
    value = fields["corr"]
    if value is not None and (not isinstance(value, bytes) or len(value) != ID_BYTES):
        return "corr"
    if type(fields["enc"]) is not bool:
        return "enc"
    return None


# Receivers see the same few addresses and subjects again and again: remember what was
# worked out for them. Bounded by starting afresh when full (unique reply subjects would
# otherwise grow it forever); a lost entry only costs working it out again.
_CACHE_MAX = 4096
_ADDRESSES: dict[str, bool] = {}
_ROUTES: dict[str, subjects.Route | None] = {}


def _is_address(value: Any) -> bool:
    """Whether value is an address `entity/actor` (not the broadcast address)."""
    if not isinstance(value, str):
        return False
    valid = _ADDRESSES.get(value)
    if valid is None:
        entity, sep, actor = value.partition("/")
        valid = bool(sep) and subjects.valid_name(entity) and subjects.valid_name(actor)
        if len(_ADDRESSES) >= _CACHE_MAX:
            _ADDRESSES.clear()
        _ADDRESSES[value] = valid
    return valid


def _route(subject: str) -> subjects.Route | None:
    try:
        return _ROUTES[subject]
    except KeyError:
        pass
    route = subjects.route(subject)
    if len(_ROUTES) >= _CACHE_MAX:
        _ROUTES.clear()
    _ROUTES[subject] = route
    return route


def _matches(dst: str, local: str) -> bool:
    """`local` is the receiver: "entity/actor", or "entity" for any actor of it."""
    if "/" in local:
        return dst == local
    return dst.split("/", 1)[0] == local


def open(
    wire: bytes,
    *,
    subject: str,
    local: str,
    keyring: Keyring,
    replay: ReplayGuard,
    now: int | None = None,
    max_bytes: int = MAX_WIRE_BYTES,
) -> Envelope:
    """Verify and decode `wire` received on `subject` by `local`; raise ProtocolError."""
    verified = verify_signature(wire, subject=subject, keyring=keyring, max_bytes=max_bytes)
    return check_body(
        verified, subject=subject, local=local, replay=replay, now=now, max_bytes=max_bytes
    )


class _Stored(ReplayGuard):
    """The replay step of a stored event (section 6.1): history is not a replay."""

    def admit(self, msg_id: bytes, ts_ms: int, now_ms: int, *, sender: bytes) -> None:
        return None

    def remember(self, msg_id: bytes, ts_ms: int, *, sender: bytes) -> None:
        return None


def open_stored_event(
    wire: bytes, *, subject: str, keyring: Keyring, max_bytes: int = MAX_WIRE_BYTES
) -> Envelope:
    """Verify and decode an event read back from a stream (PROTOCOL.md section 6.1):
    every step of `open` but the replay step, and only on a `fed.evt.` subject."""
    route = _route(subject)
    if route is None or route.family != "evt":
        raise WrongSubject("only events are read back from a stream", subject=subject)
    verified = verify_signature(wire, subject=subject, keyring=keyring, max_bytes=max_bytes)
    return check_body(verified, subject=subject, local="*", replay=_Stored(),
                      max_bytes=max_bytes)


def verify_signature(
    wire: bytes, *, subject: str, keyring: Keyring, max_bytes: int = MAX_WIRE_BYTES
) -> Verified:
    """Steps 1-6 of `open`: size, outer array, version, shape, key, signature.

    Reads nothing but its arguments and writes nothing shared, so it may run on any
    thread; `subject` only names where the message came from in an error.
    """
    try:
        return _verify_signature(wire, keyring, max_bytes)
    except ProtocolError as exc:
        exc.subject = exc.subject or subject
        raise
    except Exception as exc:
        raise _unexpected(exc, subject) from exc


def check_body(
    verified: Verified,
    *,
    subject: str,
    local: str,
    replay: ReplayGuard,
    now: int | None = None,
    max_bytes: int = MAX_WIRE_BYTES,
) -> Envelope:
    """Steps 7-14 of `open` on a verified wire: body, bindings, destination, replay, kind;
    then the id is remembered for its sender key, once all of them passed.

    `replay` is not thread-safe and the order of replay checks is the order of arrival:
    call this on the thread that owns `replay`, one message after the other as received.
    """
    try:
        return _check_body(verified, subject, local, replay, now, max_bytes)
    except ProtocolError as exc:
        exc.subject = exc.subject or subject
        raise
    except Exception as exc:
        raise _unexpected(exc, subject) from exc


def _unexpected(exc: Exception, subject: str) -> Malformed:
    return Malformed(
        f"unexpected decoding failure: {type(exc).__name__}: {exc}", subject=subject
    )


def _verify_signature(wire: bytes, keyring: Keyring, max_bytes: int) -> Verified:
    if len(wire) > max_bytes:
        raise TooLarge(f"{len(wire)} bytes is over the limit of {max_bytes}")
    kid, body, sig = _split_wire(wire, max_bytes)
    if SELF_SIGNED.made(kid, body, sig):
        return Verified(kid, body, keyring.lookup(kid))  # step 5 still; 6 is known
    signer = keyring.verify(kid, DOMAIN + body, sig)
    return Verified(kid, body, signer)


def _check_body(
    verified: Verified,
    subject: str,
    local: str,
    replay: ReplayGuard,
    now: int | None,
    max_bytes: int,
) -> Envelope:
    fields = _decode_body(verified.body, max_bytes)
    if fields["subj"] != subject:
        raise WrongSubject(f"signed for {fields['subj']!r}")
    src_entity = fields["src"].split("/", 1)[0]
    signer = verified.signer
    if src_entity != signer.entity:
        raise WrongSender(f"src {fields['src']!r} but the key speaks for {signer.entity!r}")
    route = _route(subject)
    if route is None:
        raise WrongSubject("not a subject of the entityd layout")
    if route.sender is not None and route.sender != src_entity:
        raise WrongSender(f"src {fields['src']!r} may not publish on this subject")
    dst = fields["dst"]
    if dst == BROADCAST:
        if route.family != "evt":
            raise WrongDestination("'*' is only a destination for events")
    elif route.family == "evt":
        raise WrongDestination("an event's destination must be '*'")
    elif not _matches(dst, local) or not route.accepts(dst):
        raise WrongDestination(f"addressed to {dst!r}, this is {local!r} on {subject!r}")
    # Replays are checked per sender key, and the id counts as seen only once the
    # envelope has passed every check, step 14 included (PROTOCOL.md §6 and §8).
    replay.admit(fields["id"], fields["ts"], now if now is not None else now_ms(),
                 sender=verified.kid)
    message = None
    if not fields["enc"]:
        message = kinds.decode(fields["typ"], fields["payload"])
    elif not kinds.is_kind(fields["typ"]):
        raise UnknownKind(f"no message kind {fields['typ']!r}")
    replay.remember(fields["id"], fields["ts"], sender=verified.kid)
    return Envelope(
        id=fields["id"],
        src=fields["src"],
        dst=dst,
        subj=subject,
        typ=fields["typ"],
        ts=fields["ts"],
        corr=fields["corr"],
        enc=fields["enc"],
        payload=fields["payload"],
        message=message,
        kid=verified.kid,
        signer=signer.label,
    )
