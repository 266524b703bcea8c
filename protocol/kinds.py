"""Message kinds: one typed record per `typ`, with the payload schema its fields define.

A kind is a frozen dataclass registered under its wire name with `@kind("name")`. Its
payload on the wire is a msgpack map of the dataclass fields; `decode` checks each
field's type (str, int, float, bool, bytes, Any, list[T], dict[str, T], T | None and
nested kinds' records), fills defaults, and ignores keys it does not know.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import BadPayload, UnknownKind

T = TypeVar("T")

_REGISTRY: dict[str, type[Any]] = {}
_NAMES: dict[type[Any], str] = {}


def kind(name: str) -> Callable[[type[T]], type[T]]:
    """Register a dataclass as the record of message kind `name`."""

    def register(cls: type[T]) -> type[T]:
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass to be a message kind")
        if name in _REGISTRY and _REGISTRY[name] is not cls:
            raise ValueError(f"message kind {name!r} is already registered")
        _REGISTRY[name] = cls
        _NAMES[cls] = name
        return cls

    return register


def kind_name(record: object) -> str:
    try:
        return _NAMES[type(record)]
    except KeyError:
        raise TypeError(f"{type(record).__name__} is not a registered message kind") from None


def kinds() -> dict[str, type[Any]]:
    return dict(_REGISTRY)


def is_kind(name: str) -> bool:
    return name in _REGISTRY


# ---- encoding ------------------------------------------------------------------------

# Values that are their own wire form; exact types, so that subclasses (a StrEnum, a
# bool) still take the general path below.
_PLAIN_TYPES = frozenset({str, int, float, bool, bytes, type(None)})
_FIELD_NAMES: dict[type[Any], tuple[str, ...] | None] = {}


def encode(record: object) -> dict[str, Any]:
    """The wire payload (a plain map) of a record."""
    return _to_plain(record)


def _to_plain(value: Any) -> Any:
    cls = type(value)
    if cls in _PLAIN_TYPES:
        return value
    names = _field_names(cls)
    if names is not None:
        return {name: _to_plain(getattr(value, name)) for name in names}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def _field_names(cls: type[Any]) -> tuple[str, ...] | None:
    """A dataclass's field names, looked up once per class; None for other classes."""
    try:
        return _FIELD_NAMES[cls]
    except KeyError:
        pass
    names = None
    if dataclasses.is_dataclass(cls):
        names = tuple(f.name for f in dataclasses.fields(cls))
    _FIELD_NAMES[cls] = names
    return names


# ---- decoding ------------------------------------------------------------------------

# A compiled field type: returns the value to store, or raises BadPayload naming `where`.
Check = Callable[[Any, str], Any]


@dataclasses.dataclass(frozen=True, slots=True)
class _Field:
    name: str
    check: Check
    required: bool


# Each record's fields with their type checks, compiled on first use (not at
# registration: a hint may name a record defined later in its module).
_SCHEMAS: dict[type[Any], tuple[_Field, ...]] = {}


def decode(typ: str, payload: Any) -> Any:
    """Validate `payload` against the schema of kind `typ` and return its record."""
    cls = _REGISTRY.get(typ)
    if cls is None:
        raise UnknownKind(f"no message kind {typ!r}")
    return _build(cls, payload, typ)


def _build(cls: type[Any], payload: Any, where: str) -> Any:
    if not isinstance(payload, dict):
        raise BadPayload(f"{where}: expected a map, got {type(payload).__name__}")
    values = {}
    for field in _schema(cls):
        if field.name in payload:
            values[field.name] = field.check(payload[field.name], f"{where}.{field.name}")
        elif field.required:
            raise BadPayload(f"{where}: missing field {field.name!r}")
    return cls(**values)


def _schema(cls: type[Any]) -> tuple[_Field, ...]:
    schema = _SCHEMAS.get(cls)
    if schema is None:
        hints = typing.get_type_hints(cls)
        schema = tuple(
            _Field(
                field.name,
                _compile(hints[field.name]),
                field.default is dataclasses.MISSING
                and field.default_factory is dataclasses.MISSING,
            )
            for field in dataclasses.fields(cls)
        )
        _SCHEMAS[cls] = schema
    return schema


def _compile(hint: Any) -> Check:
    """The check for one type hint (the schema types of PROTOCOL.md §11)."""
    if hint is Any:
        return _any
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        return _union(typing.get_args(hint))
    if origin is list:
        (item_hint,) = typing.get_args(hint)
        return _list_of(_compile(item_hint))
    if origin is dict:
        key_hint, value_hint = typing.get_args(hint)
        return _dict_of(_compile(key_hint), _compile(value_hint))
    if dataclasses.is_dataclass(hint):
        return _record(hint)  # type: ignore[arg-type]
    if hint is float:
        return _float
    if hint is int:
        return _int
    if isinstance(hint, type):
        return _instance_of(hint)
    return _never(hint)


# How deep lists and maps may nest in a value of type any (an event's data, say): what
# a receiver renders or walks (the web page's JSON, entityctl watch) recurses once a
# level, and msgpack alone reads about a thousand.
ANY_DEPTH = 32


def _any(value: Any, where: str) -> Any:
    if isinstance(value, list | dict):
        _within_depth(value, where)
    return value


def _within_depth(value: Any, where: str) -> None:
    """BadPayload when lists and maps nest in `value` past ANY_DEPTH levels (`value`
    itself the first)."""
    stack = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if level > ANY_DEPTH:
            raise BadPayload(f"{where}: lists and maps nested more than {ANY_DEPTH} levels "
                             "deep")
        children = item.values() if isinstance(item, dict) else item
        stack.extend((child, level + 1) for child in children
                     if isinstance(child, list | dict))


def _float(value: Any, where: str) -> Any:
    if isinstance(value, int | float) and not isinstance(value, bool):
        number = float(value)  # a msgpack int has at most 64 bits: never an overflow
        if not math.isfinite(number):
            # No field means "for ever" by an infinity, and a NaN compares false with
            # everything: a deadline of either slips past every check made with < or >.
            raise BadPayload(f"{where}: expected a finite float, got {number}")
        return number
    raise _mismatch("float", value, where)


def _int(value: Any, where: str) -> Any:
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    raise _mismatch("int", value, where)


def _instance_of(cls: type[Any]) -> Check:
    def check(value: Any, where: str) -> Any:
        if isinstance(value, cls):
            return value
        raise _mismatch(cls.__name__, value, where)

    return check


def _never(hint: Any) -> Check:
    def check(value: Any, where: str) -> Any:
        raise _mismatch(getattr(hint, "__name__", hint), value, where)

    return check


def _mismatch(expected: object, value: Any, where: str) -> BadPayload:
    return BadPayload(f"{where}: expected {expected}, got {type(value).__name__}")


def _union(options: tuple[Any, ...]) -> Check:
    nullable = type(None) in options
    checks = [_compile(option) for option in options if option is not type(None)]

    def check(value: Any, where: str) -> Any:
        if value is None and nullable:
            return None
        errors = []
        for option in checks:
            try:
                return option(value, where)
            except BadPayload as exc:
                errors.append(exc.detail)
        raise BadPayload("; ".join(errors))

    return check


def _list_of(item: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, list):
            raise BadPayload(f"{where}: expected a list, got {type(value).__name__}")
        if item is _any:
            _within_depth(value, where)
            return list(value)  # a copy, as below, without a `where` per element
        return [item(v, f"{where}[{i}]") for i, v in enumerate(value)]

    return check


def _dict_of(key: Check, item: Check) -> Check:
    def check(value: Any, where: str) -> Any:
        if not isinstance(value, dict):
            raise BadPayload(f"{where}: expected a map, got {type(value).__name__}")
        if item is _any:  # e.g. an event's data: only the keys have a type
            _within_depth(value, where)
            return {key(k, f"{where} key"): v for k, v in value.items()}
        return {key(k, f"{where} key"): item(v, f"{where}[{k!r}]") for k, v in value.items()}

    return check


def _record(cls: type[Any]) -> Check:
    def check(value: Any, where: str) -> Any:
        return _build(cls, value, where)

    return check


# ---- the kinds of protocol version 1 -------------------------------------------------


@kind("ping")
@dataclasses.dataclass(frozen=True, slots=True)
class Ping:
    """Liveness probe; answered with `pong`."""


@kind("pong")
@dataclasses.dataclass(frozen=True, slots=True)
class Pong:
    """Answer to `ping`."""


@kind("ack")
@dataclasses.dataclass(frozen=True, slots=True)
class Ack:
    """The reply to a request whose handler had nothing to return."""


@kind("error")
@dataclasses.dataclass(frozen=True, slots=True)
class Error:
    """A refusal or failure answering a request; `code` is a stable reason code."""

    code: str
    message: str


@kind("status_get")
@dataclasses.dataclass(frozen=True, slots=True)
class StatusGet:
    """Ask an entity's health actor for its status."""


@dataclasses.dataclass(frozen=True, slots=True)
class ActorStatus:
    """One actor of an entity, as its status reports it."""

    name: str
    state: str  # starting, running, restarting, stopping, stopped or failed
    restarts: int  # how often the supervisor restarted it since the daemon started


@kind("status")
@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    """An entity's status, the answer to `status_get`."""

    entity: str  # the entity's name
    public_key: str  # its Ed25519 public key, lowercase hex
    uptime_s: float  # seconds since the daemon started
    nats_server: str  # the URL of the NATS server it uses
    actors: list[ActorStatus]
    started_at: float = 0.0  # when the daemon started, Unix time in seconds (not ms)
    # envelopes refused since the daemon started, counted per reason code (PROTOCOL.md §9)
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)
    sandbox: str = ""  # the limits in force on the sandbox, once its first run has started


@kind("event")
@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """Something an entity did, published on fed.evt.<entity>.<actor>.<type>."""

    type: str
    actor: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
