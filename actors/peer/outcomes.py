"""The codes of a PeerOutcome (what a peer tool did), each declared once with what it
means for whoever called the tool: done, refused by the peer, a peer we do not know, or
a peer we could not reach. entityctl's exit code is read from here.

A failed call may also carry a code the peer itself answered with (an `error` reply's
or a `command_result`'s, protocol.reasons), passed on as it came.
"""

from __future__ import annotations

import enum

from protocol import reasons


class Verdict(enum.StrEnum):
    DONE = "done"
    REFUSED = "refused"
    UNKNOWN = "unknown"
    UNREACHABLE = "unreachable"


OUTCOMES: dict[str, Verdict] = {}


def _outcome(code: str, verdict: Verdict) -> str:
    if code in OUTCOMES:
        raise ValueError(f"outcome code {code!r} declared twice")
    OUTCOMES[code] = verdict
    return code


ANSWERED = _outcome("answered", Verdict.DONE)  # talk: the peer's turn answered
DELIVERED = _outcome("delivered", Verdict.DONE)  # report: stored in the peer's INBOX
QUEUED = _outcome("queued", Verdict.DONE)  # report: in our outbox, sent when it can be
OFFERED = _outcome("offered", Verdict.DONE)  # delegate: the offer is on its way
SELF = _outcome("self", Verdict.REFUSED)  # the peer named is this entity
UNKNOWN_PEER = _outcome("unknown_peer", Verdict.UNKNOWN)  # not in the directory
UNREACHABLE = _outcome("unreachable", Verdict.UNREACHABLE)  # no route or no responder
NO_ANSWER = _outcome("no_answer", Verdict.UNREACHABLE)  # a command's result never came
BAD_REPLY = _outcome("bad_reply", Verdict.UNREACHABLE)  # a reply of the wrong kind

# The codes that mean the call was refused, the peer's or the ledger's (for paid
# delegation): the others, say `timeout` or `busy`, mean it could not be done now.
REFUSALS = frozenset({reasons.NOT_TRUSTED, reasons.RATE_LIMITED, reasons.TOO_LARGE,
                      reasons.UNKNOWN_ACTOR, reasons.FAILED, reasons.BAD_REQUEST,
                      reasons.NOT_FOUND, reasons.OVERDRAFT, reasons.CONFLICT,
                      reasons.HOLD_RESOLVED, reasons.HOLD_EXPIRED, reasons.UNKNOWN_HOLD,
                      reasons.BROKEN_CHAIN})


def verdict(ok: bool, code: str) -> Verdict:
    """What an outcome with `code` means for its caller."""
    if ok:
        return Verdict.DONE
    if code in OUTCOMES:
        return OUTCOMES[code]
    return Verdict.REFUSED if code in REFUSALS else Verdict.UNREACHABLE
