"""The one error hierarchy of the envelope protocol; every rejection carries a reason code.

    ProtocolError                 (reason: str, subject: str | None)
    ├── TooLarge                  too_large
    ├── Malformed                 malformed          outer array unreadable or wrong shape
    ├── UnsupportedVersion        bad_version
    ├── UnknownKey                unknown_key
    ├── BadSignature              bad_signature
    ├── MalformedBody             malformed_body     body unreadable, duplicate keys, bad field
    ├── WrongSubject              wrong_subject
    ├── WrongSender               wrong_sender       src does not match the subject or the key
    ├── WrongDestination          wrong_destination
    ├── StaleTimestamp            stale_timestamp    ts outside the replay window
    ├── Replayed                  replayed           id already seen inside the window
    ├── UnknownKind               unknown_kind
    ├── BadPayload                bad_payload        payload does not match the kind's schema
    ├── UnexpectedKind            unexpected_kind    a kind the receiving actor does not take
    └── UnexpectedEncryption      unexpected_encryption  encrypted, to an actor that decrypts none

The last two are not `open`'s: the runtime raises them for an envelope that passed every
check, before the receiving actor's `handle` runs.
"""

from __future__ import annotations


class ProtocolError(Exception):
    """A received message was rejected; `reason` is the stable machine-readable code."""

    reason = "protocol_error"

    def __init__(self, detail: str, *, subject: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail
        self.subject = subject

    def __str__(self) -> str:
        where = f" on {self.subject}" if self.subject else ""
        return f"{self.reason}: {self.detail}{where}"


class TooLarge(ProtocolError):
    reason = "too_large"


class Malformed(ProtocolError):
    reason = "malformed"


class UnsupportedVersion(ProtocolError):
    reason = "bad_version"


class UnknownKey(ProtocolError):
    reason = "unknown_key"


class BadSignature(ProtocolError):
    reason = "bad_signature"


class MalformedBody(ProtocolError):
    reason = "malformed_body"


class WrongSubject(ProtocolError):
    reason = "wrong_subject"


class WrongSender(ProtocolError):
    reason = "wrong_sender"


class WrongDestination(ProtocolError):
    reason = "wrong_destination"


class StaleTimestamp(ProtocolError):
    reason = "stale_timestamp"


class Replayed(ProtocolError):
    reason = "replayed"


class UnknownKind(ProtocolError):
    reason = "unknown_kind"


class BadPayload(ProtocolError):
    reason = "bad_payload"


class UnexpectedKind(ProtocolError):
    """A well-formed envelope of a kind its receiving actor does not declare; the
    detail names the kinds it takes."""

    reason = "unexpected_kind"


class Overloaded(ProtocolError):
    """A receiver's queue for the message is full (an actor's mailbox, the peer actor's
    requests): refused at once rather than waited on."""

    reason = "overloaded"


class UnexpectedEncryption(ProtocolError):
    """An encrypted payload to an actor that decrypts nothing (every local mailbox:
    encryption is for the federation's subjects, which the peer actor opens)."""

    reason = "unexpected_encryption"


# The codes of `open` (PROTOCOL.md §6 and §9's table, each with its test vector); the
# runtime's refusals above come after it and have no vector.
REASON_CODES: tuple[str, ...] = tuple(
    cls.reason
    for cls in (
        TooLarge,
        Malformed,
        UnsupportedVersion,
        UnknownKey,
        BadSignature,
        MalformedBody,
        WrongSubject,
        WrongSender,
        WrongDestination,
        StaleTimestamp,
        Replayed,
        UnknownKind,
        BadPayload,
    )
)
