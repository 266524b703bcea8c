"""Every reason code of the protocol, each declared once: the code, and what PROTOCOL.md
says of it.

A code is what a receiver counts in a `status`'s `rejected`, what an `error` reply
carries, or what a `command_result` says. The code uses the constants below (never a
literal); PROTOCOL.md's tables of section 9 are rendered from this registry by
`python -m actors.spec --write`, and tests/test_protocol_spec.py fails when they differ
or when a literal code appears in the code.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Reason:
    code: str
    counted: str  # whether (or when) the refusal is added to `rejected`
    answered: str  # whether (or when) a request gets an `error` with this code
    when: str


@dataclass(frozen=True)
class ResultCode:
    code: str
    ok: bool
    when: str


REASONS: dict[str, Reason] = {}
RESULT_CODES: dict[str, ResultCode] = {}


def _reason(code: str, when: str, *, counted: str = "yes", answered: str = "yes") -> str:
    if code in REASONS:
        raise ValueError(f"reason code {code!r} declared twice")
    REASONS[code] = Reason(code, counted, answered, when)
    return code


def _result(code: str, ok: bool, when: str) -> str:
    if code in RESULT_CODES:
        raise ValueError(f"command result code {code!r} declared twice")
    RESULT_CODES[code] = ResultCode(code, ok, when)
    return code


# ---- open's codes (section 6), each with its rejection vector ------------------------

TOO_LARGE = _reason(
    "too_large", "step 1; and a peer's `talk` or `report` whose text is longer than "
    "`peers.max_text_chars` (a report's refusal comes back as a `command_result`)")
MALFORMED = _reason("malformed", "steps 2 and 4")
BAD_VERSION = _reason("bad_version", "step 3")
UNKNOWN_KEY = _reason(
    "unknown_key", "step 5; and on a heartbeat subject, an envelope of another kind than "
    "`heartbeat` from a sender whose key is not pinned yet (only a heartbeat introduces "
    "a key)")
BAD_SIGNATURE = _reason("bad_signature", "step 6")
MALFORMED_BODY = _reason("malformed_body", "step 7")
WRONG_SUBJECT = _reason(
    "wrong_subject", "steps 8 and 10; and a federation request or command whose kind is "
    "not the one of its operation (the subject's last token: `fed.req.*.*.talk` carries "
    "`talk`, section 11)")
WRONG_SENDER = _reason(
    "wrong_sender", "steps 9 and 11; and a federation request or durable command signed "
    "by the receiving entity's own key, checked after the operation (an entity sends none "
    "to itself): a request is answered, not counted; a command is counted and dropped, "
    "never carried out")
WRONG_DESTINATION = _reason("wrong_destination", "step 12")
STALE_TIMESTAMP = _reason("stale_timestamp", "step 13")
REPLAYED = _reason(
    "replayed", "step 13; and a durable command whose id was handled already "
    "(acknowledged, not acted on again)")
UNKNOWN_KIND = _reason(
    "unknown_kind", "step 14; and a federation request or command on an operation the "
    "receiver does not have (a command is only counted)")
BAD_PAYLOAD = _reason(
    "bad_payload", "step 14; and an encrypted payload that does not decrypt, does not "
    "decode or does not match its schema (section 12)")

# ---- refusals after `open` ----------------------------------------------------------

UNEXPECTED_KIND = _reason(
    "unexpected_kind", "a kind the receiving actor does not take; the message names the "
    "kinds it does")
UNEXPECTED_ENCRYPTION = _reason(
    "unexpected_encryption", "an encrypted payload on a `loc` subject")
RATE_LIMITED = _reason(
    "rate_limited", "the sender (the subject's sender token) sent more than its "
    "allowance; refused before verification (section 8); retry later",
    answered="at most once a second per sender")
OVERLOADED = _reason(
    "overloaded", "the receiving actor's queue is full (for the peer actor: its queue of "
    "federation requests; answered, not counted); retry later")
NOT_TRUSTED = _reason(
    "not_trusted", "the peer lacks the permission the operation needs (`[trust]`); a "
    "command's refusal comes back as a `command_result`", counted="for commands")
NOT_A_DELIVERY = _reason(
    "not_a_delivery", "a message on the INBOX consumer's delivery subject that the INBOX "
    "stream did not deliver", answered="no")
STRAY_REPLY = _reason(
    "stray_reply", "a message on a reply inbox that answers no request in flight, or does "
    "not verify as its answer; the request keeps waiting", answered="no")

# ---- what an actor answers a request it took ----------------------------------------

ACTOR_CRASHED = _reason(
    "actor_crashed", "the handler failed on this request; the actor is being restarted",
    counted="no")
ACTOR_RESTARTED = _reason(
    "actor_restarted", "the actor was restarted or stopped before it answered this "
    "request", counted="no")
BAD_REQUEST = _reason(
    "bad_request", "the memory actor cannot do what was asked: a `limit` below 1, a "
    "`todo_update` that changes nothing, an unknown memory kind or todo status, an empty "
    "text, an importance outside 0..1, an unknown todo or memory id; the coder refuses a "
    "`commits_get` whose `limit` is outside 1..200, and a `before` or `sha` that is not 4 "
    "to 40 hex digits", counted="no")
BUSY = _reason(
    "busy", "the orchestrator's goal queue, or the queue of one peer's turns, is full; a "
    "deliverable cannot be read now; the coder has too many coding tasks waiting, or "
    "queries of the workspace's history running; retry later", counted="no")
BUDGET_EXHAUSTED = _reason(
    "budget_exhausted", "the token budget that would pay for the turn (the operator's or "
    "the peer's) is spent for this hour", counted="no")
NOT_FOUND = _reason(
    "not_found", "a `deliverable_get` for a deliverable the delegate does not keep "
    "(expired, or never made); a `commit_diff_get` whose `sha` names no commit on a branch "
    "of the workspace, or more than one; a `commits_get` whose `before` is not in HEAD's "
    "history; a `goal_cancel` of a goal that is neither queued nor running (unknown, "
    "answered already, or cancelled already: the message says which, when it is known)",
    counted="no")
NOT_ALLOWED = _reason(
    "not_allowed", "a `goal_cancel` to the orchestrator from an actor other than "
    "`<entity>/ctl` and the actor the goal notifies (its `notify`), a `turn_cancel` "
    "from any actor but the orchestrator; a `goal` given again with the task id "
    "of a goal cancelled lately", counted="no")
TIMEOUT = _reason(
    "timeout", "a peer's `talk` whose turn did not finish within `peers.talk_timeout`",
    counted="no")
UNAVAILABLE = _reason(
    "unavailable", "a peer's `talk` that the receiving entity's orchestrator could not "
    "take; a query of the workspace's history whose git could not run (no sandbox here, "
    "a broken repository)", counted="no")
UNKNOWN_OP = _reason(
    "unknown_op", "a federation request of the right kind for its operation that the "
    "receiver has no handler for (not sent by the reference, which checks operations "
    "first)", counted="no")

# ---- the ledger's refusals (section 16) ---------------------------------------------
# A chain's writer refuses the entry with them; a reader of the chain (`entityctl ledger
# verify`) reports the first entry that breaks a rule with its code.

BROKEN_CHAIN = _reason(
    "broken_chain", "a ledger entry out of its chain: its `seq` is not the next one, its "
    "`prev` is not the hash of the entry before it, or its `ts` is older than that "
    "entry's (an entry dropped, reordered, forked or forged)", counted="no")
WRONG_SIGNER = _reason(
    "wrong_signer", "a ledger entry signed by another key than the one its kind needs: the "
    "account's own key, an operator key for a `mint`", counted="no")
BAD_ENTRY = _reason(
    "bad_entry", "a ledger entry that breaks a rule of its own fields: an amount outside "
    "1..2^63-1 or a `post` over the amount held, a payee or peer that is the account "
    "itself or no entity name, a `mint` for another account or past the supply bound, a "
    "score outside 1..5, a hold expiring before it is made, an encrypted entry, another "
    "kind, `src`, or a `corr`", counted="no")
OVERDRAFT = _reason(
    "overdraft", "a `transfer` or `hold` for more than the account's available balance",
    counted="no")
UNKNOWN_HOLD = _reason(
    "unknown_hold", "a `post` or `void` naming no hold of the account's chain",
    counted="no")
HOLD_RESOLVED = _reason(
    "hold_resolved", "a `post` or `void` of a hold already posted or voided (a hold "
    "resolves at most once)", counted="no")
HOLD_EXPIRED = _reason(
    "hold_expired", "a `post` whose `ts` is past the hold's `expires_at`", counted="no")
CONFLICT = _reason(
    "conflict", "a ledger entry whose id the chain holds already with another body (an "
    "idempotency key reused)", counted="no")
NOT_SETTLED = _reason(
    "not_settled", "a `rate` of a peer with which the account has no settled escrow for "
    "that task", counted="no")
DUPLICATE_RATING = _reason(
    "duplicate_rating", "a second `rate` of the same peer for the same task", counted="no")

# ---- a `command_result`'s code (section 9.3) ----------------------------------------

DONE = _result("done", True, "the command was carried out")
NOOP = _result("noop", True, "a wake that started no turn (the entity was busy, say)")
_result("not_trusted", False, "the sender lacks the permission")
_result("too_large", False, "a report's text is longer than `peers.max_text_chars`")
UNKNOWN_ACTOR = _result("unknown_actor", False,
                        "a restart names an actor the receiver does not run")
FAILED = _result("failed", False, "the receiver could not carry it out (its orchestrator "
                 "did not answer)")


def reasons_table() -> str:
    """Section 9.2's table."""
    rows = ["| code | counted | answered | when |", "|---|---|---|---|"]
    rows += [f"| `{r.code}` | {r.counted} | {r.answered} | {r.when} |"
             for r in REASONS.values()]
    return "\n".join(rows)


def results_table() -> str:
    """Section 9.3's table."""
    rows = ["| code | ok | when |", "|---|---|---|"]
    rows += [f"| `{r.code}` | {str(r.ok).lower()} | {r.when} |"
             for r in RESULT_CODES.values()]
    return "\n".join(rows)
