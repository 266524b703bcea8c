"""What peers ask of this entity: requests on fed.req.<self>.<peer>.<op> (ping, talk),
answered at once, and durable commands from the INBOX (report, wake, restart, command
results, delegation), each acknowledged only once handled.

Every envelope is first held to its sender's rate limit, before any verification work:
the sender is the subject's sender token, which the hub lets only that member publish
under, so a flooding member spends only its own allowance and is refused cheaply. Then it
is verified as in PROTOCOL.md and checked against the [trust] table. A refusal is counted
in the status by reason, logged and published as a `rejected` event (a few a second), and
answered (an `error` reply, at most one a second per peer for rate limits, or a
`command_result`), never silently dropped.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import nats.errors
from nats.aio.msg import Msg

import protocol
from entityd import Context, EntitydError, PeersSection, RemoteError, Supervision
from protocol import (
    Envelope,
    Error,
    NotTrusted,
    Ping,
    Pong,
    ProtocolError,
    RateLimited,
    UnknownKind,
    reasons,
    subjects,
)

from ..messages import Goal, MemoryAdd, MemoryRef, Wake, WakeResult
from ..recent import Recent
from .calls import PeerCalls
from .delegation import Delegation
from .link import FedLink, UnknownPeer
from .messages import (
    CommandResult,
    DeliverableGet,
    PeerReportIn,
    Report,
    Restart,
    Talk,
    TalkReply,
    TaskOffer,
    TaskUpdate,
)
from .outbox import Outbox
from .policy import RateLimiter, Trust
from .store import PeerStore
from .turns import Turns

REJECT_EVENTS_PER_SECOND = 10
RETRY_S = 2.0  # a command whose handling failed for a passing reason is offered again
MAX_SLOTS = 4096  # senders whose put-back commands are tracked (subject tokens)
REPORTS_REMEMBERED = 4096  # report ids the orchestrator was told of, the latest
MAX_DEFER_S = 600.0
# op (the subject's last token) -> the one kind it carries: the permission checked is the
# op's, so a kind on another op's subject would slip past it.
REQUESTS: dict[str, type] = {"ping": Ping, "talk": Talk, "fetch": DeliverableGet}
COMMANDS: dict[str, type] = {"report": Report, "wake": Wake, "restart": Restart,
                             "result": CommandResult, "delegate": TaskOffer, "task": TaskUpdate}


class Rejections:
    """Refused envelopes: logged and announced as `rejected` events, a few a second."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self._budget = (0.0, 0)

    async def note(self, exc: ProtocolError, subject: str, peer: str | None) -> None:
        """Count a refused envelope; log and announce it, at most a few a second."""
        self.ctx.federation.count_rejected(exc.reason)
        window, count = self._budget
        now = time.monotonic()
        if now - window >= 1.0:
            window, count = now, 0
        if count < REJECT_EVENTS_PER_SECOND:
            # The subject is the sender's choice (NATS takes ESC and the like in one):
            # what goes into the log and the event shows any such character escaped.
            subject = subject if subject.isprintable() else ascii(subject)
            self.ctx.log.warning("peer_envelope_rejected", reason=exc.reason, subject=subject,
                                 detail=exc.detail)
            await self.ctx.emit("rejected", reason=exc.reason, subject=subject,
                                peer=peer or "", detail=exc.detail[:300])
        self._budget = (window, count + 1)


class Inbound:
    def __init__(self, ctx: Context, settings: PeersSection, *, link: FedLink,
                 store: PeerStore, outbox: Outbox, turns: Turns, delegation: Delegation,
                 calls: PeerCalls, trust: Trust, limiter: RateLimiter,
                 supervision: Supervision, rejections: Rejections) -> None:
        self.ctx = ctx
        self.settings = settings
        self.link = link
        self.store = store
        self.outbox = outbox
        self.turns = turns
        self.delegation = delegation
        self.calls = calls
        self.trust = trust
        self.limiter = limiter
        self.supervision = supervision
        self.rejections = rejections
        # Reports the orchestrator was told of, so that a redelivered one is not told
        # twice; bounded: a member reporting for days must not grow it forever.
        self._reports_told: Recent[bytes] = Recent(REPORTS_REMEMBERED)
        # A peer over its rate limit is told so at most once a second: answering every
        # message of a flood would cost a signature each.
        self._told_limited = RateLimiter(60, 1)
        # When each sender's next command over its rate limit is offered again: one
        # slot per command at the sender's rate, so a backlog waits its turn once
        # instead of coming back (and being put back) every fraction of a second.
        self._command_slots: dict[str, float] = {}

    async def throttled(self, msg: Msg, sender: str | None, limiter: RateLimiter) -> bool:
        """Whether `msg` is over its sender's rate limit, checked before any verification
        work; a refused one is counted and noted (reason `rate_limited`), and a request
        answered now and then. `sender` is the subject's sender token."""
        if sender is None:
            return False  # not a subject of the layout: verification refuses it
        wait = limiter.take(sender)
        if not wait:
            return False
        exc = RateLimited(f"{sender} sends too fast; retry in {wait:.1f} s",
                          subject=msg.subject)
        await self.rejections.note(exc, msg.subject, sender)
        if msg.reply and not self._told_limited.take(sender):
            await self.ctx.federation.refuse(msg, self.link.address, exc)
        return True

    async def serve_request(self, msg: Msg) -> None:
        route = subjects.route(msg.subject)
        try:
            env, record = self.link.open(msg, self.link.requests)
        except ProtocolError as exc:
            await self.rejections.note(exc, msg.subject, route.sender if route else None)
            await self.ctx.federation.refuse(msg, self.link.address, exc)
            return
        peer, op = env.src_entity, msg.subject.rsplit(".", 1)[-1]
        mismatch = _kind_mismatch(REQUESTS, op, record, env)
        if mismatch is not None:
            await self.rejections.note(mismatch, msg.subject, peer)
            await self.ctx.federation.refuse(msg, self.link.address, mismatch)
            return
        if not msg.reply:
            return
        answer: object = self._refusal(peer, op)
        if peer == self.ctx.entity:
            # Its own key on the federation subjects: there is no peer key to seal an
            # answer for, so a plain refusal, never silence.
            answer = Error(reasons.WRONG_SENDER, "an entity sends no federation request to itself")
        if answer is None:
            match record:
                case Ping():
                    answer = Pong()
                case Talk() as talk:
                    answer = await self._talked_to(peer, talk)
                case DeliverableGet() as get:
                    answer = await self._piece(peer, get)
                case _:
                    answer = Error(reasons.UNKNOWN_OP, f"{env.typ} is not a request a peer answers")
        try:
            await self.link.reply(env, msg.reply, answer)
        except (UnknownPeer, EntitydError, OSError) as exc:
            self.ctx.log.warning("peer_reply_lost", peer=peer, error=str(exc))

    async def _piece(self, peer: str, get: DeliverableGet) -> object:
        """A piece of a kept deliverable; the object store failing is a refusal the
        delegator reads (and retries), not a crash of this actor."""
        try:
            piece = await self.delegation.piece(peer, get)
        except (nats.errors.Error, OSError) as exc:
            self.ctx.log.warning("deliverable_piece_failed", peer=peer, error=repr(exc))
            return Error(reasons.BUSY, "the deliverable cannot be read now; fetch it again later")
        return piece or Error(reasons.NOT_FOUND, f"no deliverable of task {get.task_id} for {peer}")

    def _refusal(self, peer: str, op: str) -> Error | None:
        # (The rate limit was applied on arrival, before verification: PeerActor.)
        refused = self.trust.refusal(peer, op, self.ctx.entity)
        return None if refused is None else Error(reasons.NOT_TRUSTED, refused)

    async def _talked_to(self, peer: str, talk: Talk) -> TalkReply | Error:
        """A talk becomes a turn of the orchestrator run for `peer` (its scope: see
        actors/turn_scope.py), paid from the peer's token budget."""
        too_long = self._too_long(peer, "talk", talk.text)
        if too_long is not None:
            await self.rejections.note(protocol.TooLarge(too_long),
                                       subjects.request(self.ctx.entity, peer, "talk"), peer)
            return Error(reasons.TOO_LARGE, too_long)
        # The peer's conversations are its own: it cannot name one of the operator's, nor
        # (after a '.', which no peer name holds) one of another peer's.
        conversation = f"peer-{peer}" + (f".{talk.conversation[:64]}" if talk.conversation
                                         else "")
        goal = Goal(f"{peer} says to you: {talk.text}", f"talk-{protocol.new_id().hex()[:12]}",
                    conversation, f"peer:{peer}")
        try:
            answer = await self.turns.run(goal, self.settings.talk_timeout)
        except TimeoutError:
            return Error(reasons.TIMEOUT, f"{self.ctx.entity} did not finish its answer within "
                         f"{self.settings.talk_timeout:g} s")
        except RemoteError as exc:  # refused by the orchestrator: budget_exhausted, busy
            return Error(exc.code, exc.message)
        except EntitydError as exc:
            return Error(reasons.UNAVAILABLE, f"{self.ctx.entity}'s orchestrator: {exc}")
        return TalkReply(answer.ok, answer.text, goal.task_id)

    def _too_long(self, peer: str, what: str, text: str) -> str | None:
        limit = self.settings.max_text_chars
        if len(text) <= limit:
            return None
        return (f"{peer}'s {what} is {len(text)} characters; {self.ctx.entity} takes at most "
                f"{limit} (peers.max_text_chars)")

    async def serve_command(self, msg: Msg) -> None:
        route = subjects.route(msg.subject)
        wait = self.limiter.take(route.sender) if route and route.sender else 0.0
        if wait and route and route.sender:
            # Before any verification work; kept in the INBOX, offered again in its turn.
            await msg.nak(delay=self._command_slot(route.sender, wait))
            return
        stored_ms = int(msg.metadata.timestamp.timestamp() * 1000)
        try:
            # Freshness is judged against when the INBOX stored it; replays are caught
            # by id in the store (below), which outlives restarts and the window.
            fresh = self.ctx.federation.new_replay_guard()
            env, record = self.link.open(msg, fresh, now_ms=stored_ms)
        except ProtocolError as exc:
            await self.rejections.note(exc, msg.subject, route.sender if route else None)
            await msg.term()
            return
        peer, op = env.src_entity, msg.subject.rsplit(".", 1)[-1]
        mismatch = _kind_mismatch(COMMANDS, op, record, env)
        if mismatch is None and peer == self.ctx.entity:
            # Its own key on the federation subjects, as for requests (PROTOCOL.md §9.2):
            # there is no one to answer, so it is counted and dropped, never carried out.
            mismatch = protocol.WrongSender("an entity sends no durable command to itself",
                                            subject=msg.subject)
        if mismatch is not None:
            await self.rejections.note(mismatch, msg.subject, peer)
            await msg.term()
            return
        state = await self.store.inbound_state(env.id)
        if state == "done":
            await self.rejections.note(protocol.Replayed(
                f"command {env.id.hex()} from {peer} was handled already"), msg.subject, peer)
            await msg.ack()
            return
        if state is None:
            await self.store.set_inbound(env.id, peer, op, "received")
        try:
            after = await self._command(env, peer, op, record)
        except EntitydError as exc:  # e.g. the memory actor is restarting: try again soon
            self.ctx.log.warning("command_deferred", peer=peer, op=op, error=str(exc))
            await msg.nak(delay=RETRY_S)
            return
        await self.store.set_inbound(env.id, peer, op, "done")
        await msg.ack()
        if after is not None:
            after()

    def _command_slot(self, sender: str, wait: float) -> float:
        """Seconds until a command of `sender` refused by its rate limit comes back: after
        the ones of its commands already put back, one per its rate."""
        now = time.monotonic()
        if len(self._command_slots) >= MAX_SLOTS:
            self._command_slots = {p: t for p, t in self._command_slots.items() if t > now}
        slot = max(now + wait, self._command_slots.get(sender, 0.0))
        self._command_slots[sender] = slot + 60.0 / self.limiter.per_minute
        return min(slot - now, MAX_DEFER_S)

    async def _command(self, env: Envelope, peer: str, op: str, record: Any
                       ) -> Callable[[], Any] | None:
        """Carry out one command; returns what must run after it is acknowledged."""
        text = self.trust.refusal(peer, op, self.ctx.entity)
        if text is not None:
            await self.rejections.note(NotTrusted(text), env.subj, peer)
            if isinstance(record, TaskOffer):
                await self.delegation.on_offer(peer, record)  # records and answers the refusal
            else:
                await self.outbox.send(peer, "result",
                                       CommandResult(False, reasons.NOT_TRUSTED, text),
                                       corr=env.id)
            return None
        match record:
            case Report(text):
                await self._reported(env, peer, text)
            case Wake(reason):
                result = await self._woken(peer, reason)
                await self.outbox.send(peer, "result", result, corr=env.id)
            case Restart(actor):
                return await self._restart_requested(env, peer, actor)
            case CommandResult() as result:
                self.calls.answered(env, peer, result)
            case TaskOffer() as offer:
                await self.delegation.on_offer(peer, offer)
            case TaskUpdate() as update:
                await self.delegation.on_update(peer, update)
            case _:
                await self.rejections.note(UnknownKind(f"{env.typ} on {op}"), env.subj, peer)
        return None

    async def _reported(self, env: Envelope, peer: str, text: str) -> None:
        too_long = self._too_long(peer, "report", text)
        if too_long is not None:
            await self.rejections.note(protocol.TooLarge(too_long), env.subj, peer)
            await self.outbox.send(peer, "result",
                                   CommandResult(False, reasons.TOO_LARGE, too_long),
                                   corr=env.id)
            return
        # The envelope id in the text makes the memory exactly-once: a redelivered
        # report merges into the fact the first delivery stored. Its origin is the peer:
        # only the peer's own turns, and the operator's that ask for peers' words, see it.
        ref: MemoryRef = await self.ctx.ask(f"{self.ctx.entity}/memory", MemoryAdd(
            "fact", f"{peer} reported: {text} [report {env.id.hex()[:12]}]", 0.6,
            f"peer:{peer}", f"peer:{peer}"))
        if env.id not in self._reports_told:
            # Without the text: the orchestrator only says which peers reported.
            await self.ctx.tell(f"{self.ctx.entity}/orchestrator",
                                PeerReportIn(peer, "", env.id.hex(), ref.id))
            self._reports_told.add(env.id)
        await self.ctx.emit("report_received", peer=peer, id=env.id.hex(), memory_id=ref.id)

    async def _woken(self, peer: str, reason: str) -> CommandResult:
        # The reason is the peer's words: it goes to the local log, not into the turn
        # (which works the operator's todo list, on the peer's budget) nor its events.
        self.ctx.log.info("peer_wake", peer=peer, reason=reason[:self.settings.max_text_chars])
        try:
            result: WakeResult = await self.ctx.ask(
                f"{self.ctx.entity}/orchestrator", Wake(f"peer:{peer}"))
        except EntitydError as exc:
            return CommandResult(False, reasons.FAILED, f"the orchestrator did not answer: {exc}")
        await self.ctx.emit("woken", peer=peer, started=result.started, reason=result.reason)
        if result.started:
            return CommandResult(True, reasons.DONE, f"{self.ctx.entity} {result.reason} "
                                 f"(task {result.task_id})")
        return CommandResult(True, reasons.NOOP, f"{self.ctx.entity} did nothing: {result.reason}")

    async def _restart_requested(self, env: Envelope, peer: str, actor: str
                                 ) -> Callable[[], Any] | None:
        names = [actor] if actor else []
        running = [a.name for a in self.supervision.actors()]
        if actor and actor not in running:
            await self.outbox.send(peer, "result", CommandResult(
                False, reasons.UNKNOWN_ACTOR, f"{self.ctx.entity} runs no actor {actor!r} "
                f"(it runs {', '.join(running)})"), corr=env.id)
            return None
        which = actor or "all actors"
        await self.outbox.send(peer, "result", CommandResult(
            True, reasons.DONE, f"{self.ctx.entity} is restarting {which}"), corr=env.id)
        await self.ctx.emit("restart_requested", peer=peer, actor=which)
        reason = f"restart_peer from {peer}"
        # After the ack: restarting ourselves cancels whatever this instance was doing.
        return lambda: self.supervision.restart(names, reason)


def _kind_mismatch(ops: dict[str, type], op: str, record: Any, env: Envelope
                   ) -> ProtocolError | None:
    expected = ops.get(op)
    if expected is None:
        return UnknownKind(f"no peer operation {op!r}", subject=env.subj)
    if not isinstance(record, expected):
        return protocol.WrongSubject(f"{env.typ} does not belong on {op!r}", subject=env.subj)
    return None
