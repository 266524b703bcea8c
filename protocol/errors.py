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
    ├── UnexpectedEncryption      unexpected_encryption  encrypted, to an actor that decrypts none
    ├── Overloaded                overloaded         the receiver's queue is full
    ├── RateLimited               rate_limited       the sender sends faster than its allowance
    ├── NotTrusted                not_trusted        the peer lacks the operation's permission
    ├── NotADelivery              not_a_delivery     on the INBOX delivery subject, not from it
    └── StrayReply                stray_reply        on a reply inbox, answering nothing asked

Only the first thirteen are `open`'s: the runtime, and the peer actor on the federation's
subjects, raise the others for envelopes that passed `open` (or before it, for the rate).
The codes and what PROTOCOL.md says of each live in protocol.reasons.
"""

from __future__ import annotations

from . import reasons


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
    reason = reasons.TOO_LARGE


class Malformed(ProtocolError):
    reason = reasons.MALFORMED


class UnsupportedVersion(ProtocolError):
    reason = reasons.BAD_VERSION


class UnknownKey(ProtocolError):
    reason = reasons.UNKNOWN_KEY


class BadSignature(ProtocolError):
    reason = reasons.BAD_SIGNATURE


class MalformedBody(ProtocolError):
    reason = reasons.MALFORMED_BODY


class WrongSubject(ProtocolError):
    reason = reasons.WRONG_SUBJECT


class WrongSender(ProtocolError):
    reason = reasons.WRONG_SENDER


class WrongDestination(ProtocolError):
    reason = reasons.WRONG_DESTINATION


class StaleTimestamp(ProtocolError):
    reason = reasons.STALE_TIMESTAMP


class Replayed(ProtocolError):
    reason = reasons.REPLAYED


class UnknownKind(ProtocolError):
    reason = reasons.UNKNOWN_KIND


class BadPayload(ProtocolError):
    reason = reasons.BAD_PAYLOAD


class UnexpectedKind(ProtocolError):
    """A well-formed envelope of a kind its receiving actor does not declare; the
    detail names the kinds it takes."""

    reason = reasons.UNEXPECTED_KIND


class Overloaded(ProtocolError):
    """A receiver's queue for the message is full (an actor's mailbox, the peer actor's
    requests): refused at once rather than waited on."""

    reason = reasons.OVERLOADED


class UnexpectedEncryption(ProtocolError):
    """An encrypted payload to an actor that decrypts nothing (every local mailbox:
    encryption is for the federation's subjects, which the peer actor opens)."""

    reason = reasons.UNEXPECTED_ENCRYPTION


class RateLimited(ProtocolError):
    """Refused before verification: the subject's sender sends too fast (section 8)."""

    reason = reasons.RATE_LIMITED


class NotTrusted(ProtocolError):
    """A peer's request or command whose operation its trust does not grant."""

    reason = reasons.NOT_TRUSTED


class NotADelivery(ProtocolError):
    """A message on the INBOX consumer's delivery subject that the INBOX did not deliver."""

    reason = reasons.NOT_A_DELIVERY


class StrayReply(ProtocolError):
    """A message on a reply inbox that answers no request in flight."""

    reason = reasons.STRAY_REPLY

    def __init__(self, detail: str = "it answers no request in flight", *,
                 subject: str | None = None) -> None:
        super().__init__(detail, subject=subject)


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
