"""Message kinds: one typed record per `typ`, with the payload schema its fields define.

A kind is a frozen dataclass registered under its wire name with `@kind("name")`. Its
payload on the wire is a msgpack map of the dataclass fields; `decode` checks each
field's type (str, int, float, bool, bytes, Any, list[T], dict[str, T], T | None and
nested kinds' records), fills defaults, and ignores keys it does not know.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from typing import Any, TypeVar

from .errors import BadPayload, UnknownKind

T = TypeVar("T")

_REGISTRY: dict[str, type[Any]] = {}
_NAMES: dict[type[Any], str] = {}
_HINTS: dict[type[Any], dict[str, Any]] = {}


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


def encode(record: object) -> dict[str, Any]:
    """The wire payload (a plain map) of a record."""
    return _to_plain(record)


def _to_plain(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _to_plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, list | tuple):
        return [_to_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def decode(typ: str, payload: Any) -> Any:
    """Validate `payload` against the schema of kind `typ` and return its record."""
    cls = _REGISTRY.get(typ)
    if cls is None:
        raise UnknownKind(f"no message kind {typ!r}")
    return _build(cls, payload, typ)


def _hints(cls: type[Any]) -> dict[str, Any]:
    hints = _HINTS.get(cls)
    if hints is None:
        hints = typing.get_type_hints(cls)
        _HINTS[cls] = hints
    return hints


def _build(cls: type[Any], payload: Any, where: str) -> Any:
    if not isinstance(payload, dict):
        raise BadPayload(f"{where}: expected a map, got {type(payload).__name__}")
    hints = _hints(cls)
    values = {}
    for field in dataclasses.fields(cls):
        if field.name in payload:
            values[field.name] = _check(
                hints[field.name], payload[field.name], f"{where}.{field.name}"
            )
        elif (
            field.default is dataclasses.MISSING
            and field.default_factory is dataclasses.MISSING
        ):
            raise BadPayload(f"{where}: missing field {field.name!r}")
    return cls(**values)


def _check(hint: Any, value: Any, where: str) -> Any:
    if hint is Any:
        return value
    origin = typing.get_origin(hint)
    if origin in (types.UnionType, typing.Union):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _check(option, value, where)
            except BadPayload as exc:
                errors.append(exc.detail)
        raise BadPayload("; ".join(errors))
    if origin is list:
        if not isinstance(value, list):
            raise BadPayload(f"{where}: expected a list, got {type(value).__name__}")
        (item,) = typing.get_args(hint)
        return [_check(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin is dict:
        if not isinstance(value, dict):
            raise BadPayload(f"{where}: expected a map, got {type(value).__name__}")
        key_hint, value_hint = typing.get_args(hint)
        return {
            _check(key_hint, k, f"{where} key"): _check(value_hint, v, f"{where}[{k!r}]")
            for k, v in value.items()
        }
    if dataclasses.is_dataclass(hint):
        return _build(hint, value, where)  # type: ignore[arg-type]
    if hint is float:
        if isinstance(value, int | float) and not isinstance(value, bool):
            return float(value)
    elif hint is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
    elif isinstance(hint, type) and isinstance(value, hint):
        return value
    expected = getattr(hint, "__name__", hint)
    raise BadPayload(f"{where}: expected {expected}, got {type(value).__name__}")


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
    name: str
    state: str
    restarts: int


@kind("status")
@dataclasses.dataclass(frozen=True, slots=True)
class Status:
    entity: str
    public_key: str
    uptime_s: float
    nats_server: str
    actors: list[ActorStatus]
    started_at: float = 0.0
    rejected: dict[str, int] = dataclasses.field(default_factory=dict)


@kind("event")
@dataclasses.dataclass(frozen=True, slots=True)
class Event:
    """Something an entity did, published on fed.evt.<entity>.<actor>.<type>."""

    type: str
    actor: str
    data: dict[str, Any] = dataclasses.field(default_factory=dict)
