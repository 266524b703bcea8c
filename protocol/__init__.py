"""The entityd wire protocol: signed msgpack envelopes, replay protection, message kinds.

PROTOCOL.md in this package is the normative specification.
"""

from . import kinds, subjects
from .e2e import Sealer
from .envelope import (
    BROADCAST,
    DOMAIN,
    MAX_WIRE_BYTES,
    VERSION,
    Envelope,
    Verified,
    check_body,
    new_id,
    now_ms,
    open,
    seal,
    verify_signature,
)
from .errors import (
    REASON_CODES,
    BadPayload,
    BadSignature,
    Malformed,
    MalformedBody,
    ProtocolError,
    Replayed,
    StaleTimestamp,
    TooLarge,
    UnknownKey,
    UnknownKind,
    UnsupportedVersion,
    WrongDestination,
    WrongSender,
    WrongSubject,
)
from .keyring import KeyEntry, Keyring
from .kinds import Ack, ActorStatus, Error, Event, Ping, Pong, Status, StatusGet, kind
from .replay import ReplayGuard

__all__ = [
    "BROADCAST",
    "DOMAIN",
    "MAX_WIRE_BYTES",
    "REASON_CODES",
    "VERSION",
    "Ack",
    "ActorStatus",
    "BadPayload",
    "BadSignature",
    "Envelope",
    "Error",
    "Event",
    "KeyEntry",
    "Keyring",
    "Malformed",
    "MalformedBody",
    "Ping",
    "Pong",
    "ProtocolError",
    "ReplayGuard",
    "Replayed",
    "Sealer",
    "StaleTimestamp",
    "Status",
    "StatusGet",
    "TooLarge",
    "UnknownKey",
    "UnknownKind",
    "UnsupportedVersion",
    "Verified",
    "WrongDestination",
    "WrongSender",
    "WrongSubject",
    "check_body",
    "kind",
    "kinds",
    "new_id",
    "now_ms",
    "open",
    "seal",
    "subjects",
    "verify_signature",
]
