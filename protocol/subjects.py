"""The NATS subject layout: building subjects and reading who sent and who receives."""

from __future__ import annotations

import re
from dataclasses import dataclass

# \A and \Z, not ^ and $: "$" also matches before a trailing newline, so "peer\n" passed.
NAME_RE = re.compile(r"\A[a-z0-9-]{1,32}\Z")
TOKEN_RE = re.compile(r"\A[a-z0-9_-]{1,64}\Z")
# The actor of `dst` on a ledger subject: the chain's account's ledger.
LEDGER_ACTOR = "ledger"


def valid_name(name: str) -> bool:
    """An entity or actor name: 1-32 of lowercase letters, digits and '-'."""
    return bool(NAME_RE.match(name))


def local(entity: str, actor: str, op: str) -> str:
    return f"loc.{entity}.{actor}.{op}"


def event(entity: str, actor: str, typ: str) -> str:
    return f"fed.evt.{entity}.{actor}.{typ}"


def events_of(entity: str) -> str:
    """Every event of `entity` ("*": of every entity), as a subscription subject."""
    return f"fed.evt.{entity}.>"


def request(dst: str, src: str, op: str) -> str:
    return f"fed.req.{dst}.{src}.{op}"


def command(dst: str, src: str, op: str) -> str:
    return f"fed.cmd.{dst}.{src}.{op}"


# Where a federation's members read the LEDGER stream by direct gets: the hub's FED
# account imports the stream account's JetStream direct get under this subject
# (entityd/federation.py), so that an answer goes back to the asker and never onto a
# `ledger.>` subject the stream would take (deploy/FEDERATION.md). Not `ledger.*`: no
# entity name holds a '_'.
LEDGER_GET = "ledger_get"


def literal(subject: str) -> bool:
    """Whether `subject` names one subject (no wildcard token, no empty token)."""
    return all(token and token not in ("*", ">") for token in subject.split("."))


def ledger_read(entity: str) -> str:
    """Where an entity asks the hub's books reader for ledger entries (entityd/
    books_reader.py): only the entity itself may publish here, so the subject names the
    asker, whose reads the reader bounds."""
    return f"ledger_read.{entity}"


def ledger(account: str) -> str:
    """An account's chain of ledger entries in the LEDGER stream (PROTOCOL.md §16): only
    the account's ledger appends there, and every entity may read it."""
    return f"ledger.{account}"


def inbox_prefix(entity: str) -> str:
    """Where the replies to an entity's federation requests come: other members may
    publish here (to answer), so only a reply that verifies counts."""
    return f"_i.{entity}"


def local_inbox_prefix(entity: str) -> str:
    """Where the replies to an entity's local requests come (actor to actor, entityctl,
    its JetStream consumers): its leaf never forwards these to or from the hub."""
    return f"_l.{entity}"


@dataclass(frozen=True, slots=True)
class Route:
    """What a subject says about a message: its family, the sending entity and the receiver.

    `sender` is None where the subject does not name one (reply inboxes); `receiver` is
    None for events, which go to everyone.
    """

    family: str
    sender: str | None
    receiver: str | None
    actor: str | None = None

    def accepts(self, dst: str) -> bool:
        """Whether a message for `dst` belongs on this subject."""
        if self.receiver is None:
            return True
        entity, _, actor = dst.partition("/")
        if entity != self.receiver:
            return False
        return self.family not in ("loc", "ledger") or actor == self.actor


def route(subject: str) -> Route | None:
    """Parse a subject of the entityd layout; None when it is not one."""
    tokens = subject.split(".")
    head = tokens[0]
    if head == "loc" and len(tokens) == 4:
        _, entity, actor, _op = tokens
        return Route("loc", entity, entity, actor)
    if head == "fed" and len(tokens) == 5:
        _, family, first, second, _last = tokens
        if family == "evt":
            return Route("evt", first, None, second)
        if family in ("req", "cmd"):
            return Route(family, second, first)
        return None
    if head == "ledger" and len(tokens) == 2:
        return Route("ledger", tokens[1], tokens[1], LEDGER_ACTOR)
    if head in ("_i", "_l") and len(tokens) >= 3:
        return Route("reply", None, tokens[1])
    return None
