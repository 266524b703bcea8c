"""The peer actor: this entity's face to the federation.

It publishes presence heartbeats and keeps the directory of peers; answers requests
from peers on fed.req.<self>.* (ping, talk); consumes durable commands from its
JetStream INBOX on fed.cmd.<self>.> (report, wake, restart, command results and task
delegation), acknowledging each only once handled; and carries out the five peer tools
for its orchestrator and entityctl (loc.<self>.peer.*). Every inbound envelope is
verified as in PROTOCOL.md, checked against the trust policy and the peer's rate
limit, and a refusal is answered with a reason code, never silently dropped.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any, Protocol

import nats.errors
from nats.aio.msg import Msg
from nats.aio.subscription import Subscription
from nats.js.api import AckPolicy, ConsumerConfig, RetentionPolicy, StorageType, StreamConfig
from nats.js.client import JetStreamContext

import protocol
from entityd.actor import Actor, Later
from entityd.config import Config
from entityd.errors import AskTimeout, EntitydError, RemoteError
from protocol import (
    ActorStatus,
    Envelope,
    Error,
    Ping,
    Pong,
    ProtocolError,
    ReplayGuard,
    subjects,
)

from ..messages import Goal, MemoryAdd, MemoryRef, TurnDone, Wake, WakeResult
from ..workspace import Workspace
from .delegation import Delegation
from .link import ACTOR, FedLink, UnknownPeer, describe_failure, inbox_stream
from .messages import (
    CommandResult,
    Heartbeat,
    PeerCheck,
    PeerCheckResult,
    PeerDelegate,
    PeerInfo,
    PeerOutcome,
    PeerReport,
    PeerReportIn,
    PeerRestart,
    Peers,
    PeersGet,
    PeerTalk,
    PeerWake,
    Report,
    Restart,
    Talk,
    TalkReply,
    TaskOffer,
    Tasks,
    TasksGet,
    TaskUpdate,
)
from .outbox import Outbox
from .policy import RateLimiter, Trust
from .store import PeerStore
from .turns import Turns


class Supervision(Protocol):
    """What the peer actor may do to its own runtime (for restart_peer)."""

    def restart(self, names: list[str], reason: str) -> list[str]: ...

    def actors(self) -> list[ActorStatus]: ...


ASK_FAILURES = (EntitydError, ProtocolError, nats.errors.Error, UnknownPeer, TimeoutError)

REQUEST_QUEUE = 256
CONCURRENT_REQUESTS = 16
FETCH_BATCH = 16
ACK_WAIT_S = 60.0
RETRY_S = 2.0  # a command whose handling failed for a passing reason is offered again
REJECT_EVENTS_PER_SECOND = 10
# op -> the permission a peer needs for it (ping and results need none).
PERMISSION = {"talk": "talk", "report": "report", "wake": "wake", "restart": "restart",
              "delegate": "delegate"}


class PeerActor(Actor):
    name = ACTOR

    def __init__(self, config: Config, workspace: Workspace, supervision: Supervision) -> None:
        self.config = config
        self.settings = config.peers
        self.workspace = workspace
        self.supervision = supervision
        self.trust = Trust(config.trust, config.peers.default_trust)
        self.limiter = RateLimiter.from_config(config.peers)
        self._requests: asyncio.Queue[Msg] = asyncio.Queue(REQUEST_QUEUE)
        self._subs: list[Subscription] = []
        self._results: dict[bytes, asyncio.Future[CommandResult]] = {}
        self._reports_told: set[bytes] = set()
        self._started_at = time.time()
        self._reject_budget = (0.0, 0)
        self.store: PeerStore | None = None
        self._inbox: JetStreamContext.PullSubscription | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def on_start(self) -> None:
        transport = self.ctx.transport
        self.store = await PeerStore.open(self.config.data_dir / "peers.sqlite3")
        self.link = FedLink(transport, self.store, pinning=self.settings.pinning)
        await self.link.load(self.config.peer_keys)
        self.turns = Turns(self.ctx)
        self.outbox = Outbox(self.link, self.store, self.ctx.log)
        self.delegation = Delegation(self.ctx, self.config, self.store, self.turns,
                                     self.workspace, self.trust, self.outbox.send)
        await self._ensure_inbox()
        nc = transport.nc
        self._subs.append(await nc.subscribe(
            subjects.event("*", ACTOR, "heartbeat"), cb=self._on_heartbeat))
        self._subs.append(await nc.subscribe(
            subjects.request(self.ctx.entity, "*", "*"), cb=self._on_request))

    async def _ensure_inbox(self) -> None:
        js = self.link.js
        stream = inbox_stream(self.ctx.entity)
        await js.add_stream(StreamConfig(
            name=stream, subjects=[subjects.command(self.ctx.entity, "*", "*")],
            retention=RetentionPolicy.WORK_QUEUE, storage=StorageType.FILE,
            duplicate_window=120.0, max_msg_size=self.config.protocol.max_message_bytes * 2,
        ))
        self._inbox = await js.pull_subscribe(
            subjects.command(self.ctx.entity, "*", "*"), durable="peer", stream=stream,
            config=ConsumerConfig(ack_policy=AckPolicy.EXPLICIT, ack_wait=ACK_WAIT_S,
                                  max_ack_pending=1000))

    async def on_stop(self) -> None:
        await self._close()

    async def on_failure(self, exc: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        # Unsubscribed, or the daemon's drain of the connection waits for them in vain.
        subs: list[Any] = list(self._subs)
        self._subs = []
        if self._inbox is not None:
            subs.append(self._inbox)
            self._inbox = None
        for sub in subs:
            try:
                await sub.unsubscribe()
            except Exception:  # the connection may be gone already
                pass
        if hasattr(self, "turns"):
            self.turns.stop()
        if self.store is not None:
            await self.store.close()
            self.store = None

    async def run(self) -> None:
        async with asyncio.TaskGroup() as tg:
            tg.create_task(self._heartbeats())
            tg.create_task(self.outbox.run())
            tg.create_task(self._consume())
            tg.create_task(self.delegation.run())
            tg.create_task(self._expire_tasks())
            await self.delegation.resume()
            limit = asyncio.Semaphore(CONCURRENT_REQUESTS)
            while True:
                msg = await self._requests.get()
                await limit.acquire()
                task = tg.create_task(self._serve_request(msg))
                task.add_done_callback(lambda _: limit.release())

    # ---- presence ---------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        subject = subjects.event(self.ctx.entity, ACTOR, "heartbeat")
        beat = Heartbeat(list(self.settings.capabilities), self.settings.heartbeat_interval,
                         self._started_at)
        while True:
            wire, _ = protocol.seal(self.ctx.transport.key, src=self.link.address,
                                    dst=protocol.BROADCAST, subj=subject, message=beat)
            try:
                await self.link.nc.publish(subject, wire)
            except Exception as exc:  # the connection reconnects by itself
                self.ctx.log.warning("heartbeat_not_sent", error=repr(exc))
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _on_heartbeat(self, msg: Msg) -> None:
        route = subjects.route(msg.subject)
        if route is None or route.sender == self.ctx.entity or self.store is None:
            return
        try:
            env, beat, new = await self.link.open_heartbeat(msg)
        except ProtocolError as exc:
            await self._rejected(exc, msg.subject, route.sender)
            return
        if not isinstance(beat, Heartbeat):
            return
        await self.store.seen(env.src_entity, list(beat.capabilities), time.time())
        if new:
            self.ctx.log.info("peer_discovered", peer=env.src_entity, key=env.kid.hex())
            await self.ctx.emit("peer_discovered", peer=env.src_entity,
                                public_key=env.kid.hex(), pinned_by="first-sight")

    async def _rejected(self, exc: ProtocolError, subject: str, peer: str | None) -> None:
        """Log and announce a refused envelope, at most a few a second."""
        window, count = self._reject_budget
        now = time.monotonic()
        if now - window >= 1.0:
            window, count = now, 0
        if count < REJECT_EVENTS_PER_SECOND:
            self.ctx.log.warning("peer_envelope_rejected", reason=exc.reason, subject=subject,
                                 detail=exc.detail)
            await self.ctx.emit("rejected", reason=exc.reason, subject=subject,
                                peer=peer or "", detail=exc.detail[:300])
        self._reject_budget = (window, count + 1)

    # ---- requests from peers (fed.req.<self>.<peer>.<op>) -----------------------------

    async def _on_request(self, msg: Msg) -> None:
        try:
            self._requests.put_nowait(msg)
        except asyncio.QueueFull:
            await self.ctx.transport.refuse(msg, self.link.address, _Overloaded(
                f"{REQUEST_QUEUE} peer requests are waiting"))

    async def _serve_request(self, msg: Msg) -> None:
        route = subjects.route(msg.subject)
        try:
            env, record = self.link.open(msg, self.link.requests)
        except ProtocolError as exc:
            await self._rejected(exc, msg.subject, route.sender if route else None)
            await self.ctx.transport.refuse(msg, self.link.address, exc)
            return
        if not msg.reply:
            return
        peer = env.src_entity
        answer: object = self._refusal(peer, msg.subject.rsplit(".", 1)[-1])
        if answer is None:
            match record:
                case Ping():
                    answer = Pong()
                case Talk() as talk:
                    answer = await self._talked_to(peer, talk)
                case _:
                    answer = Error("unknown_op", f"{env.typ} is not a request a peer answers")
        try:
            await self.link.reply(env, msg.reply, answer)
        except (UnknownPeer, EntitydError, OSError) as exc:
            self.ctx.log.warning("peer_reply_lost", peer=peer, error=str(exc))

    def _refusal(self, peer: str, op: str) -> Error | None:
        wait = self.limiter.take(peer)
        if wait:
            return Error("rate_limited", f"{peer} sends too fast; retry in {wait:.1f} s")
        permission = PERMISSION.get(op)
        if permission and not self.trust.permits(peer, permission):
            return Error("not_trusted", f"{peer} may not {op} {self.ctx.entity} "
                         f"(trust: {', '.join(self.trust.allowed(peer)) or 'nothing'})")
        return None

    async def _talked_to(self, peer: str, talk: Talk) -> TalkReply | Error:
        conversation = talk.conversation or f"peer-{peer}"
        goal = Goal(f"{peer} says to you: {talk.text}", f"talk-{protocol.new_id().hex()[:12]}",
                    conversation, f"peer:{peer}")
        try:
            answer = await self.turns.run(goal, self.settings.talk_timeout)
        except TimeoutError:
            return Error("timeout", f"{self.ctx.entity} did not finish its answer within "
                         f"{self.settings.talk_timeout:g} s")
        except EntitydError as exc:
            return Error("unavailable", f"{self.ctx.entity}'s orchestrator: {exc}")
        return TalkReply(answer.ok, answer.text, goal.task_id)

    # ---- durable commands from peers (the INBOX) ---------------------------------------

    async def _consume(self) -> None:
        assert self._inbox is not None, "on_start subscribes the INBOX"
        while True:
            try:
                msgs = await self._inbox.fetch(FETCH_BATCH, timeout=1.0)
            except TimeoutError:
                continue
            except Exception as exc:  # e.g. disconnected: the consumer is durable
                self.ctx.log.warning("inbox_fetch_failed", error=repr(exc))
                await asyncio.sleep(1.0)
                continue
            for msg in msgs:
                await self._serve_command(msg)

    async def _serve_command(self, msg: Msg) -> None:
        assert self.store is not None
        route = subjects.route(msg.subject)
        stored_ms = int(msg.metadata.timestamp.timestamp() * 1000)
        try:
            # Freshness is judged against when the INBOX stored it; replays are caught
            # by id in the store (below), which outlives restarts and the window.
            env, record = self.link.open(msg, self._fresh_guard(), now_ms=stored_ms)
        except ProtocolError as exc:
            await self._rejected(exc, msg.subject, route.sender if route else None)
            await msg.term()
            return
        peer, op = env.src_entity, msg.subject.rsplit(".", 1)[-1]
        state = await self.store.inbound_state(env.id)
        if state == "done":
            await self._rejected(protocol.Replayed(
                f"command {env.id.hex()} from {peer} was handled already"), msg.subject, peer)
            await msg.ack()
            return
        if state is None:
            wait = self.limiter.take(peer)
            if wait:
                await msg.nak(delay=wait)  # kept in the INBOX, offered again later
                return
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

    def _fresh_guard(self) -> ReplayGuard:
        return self.ctx.transport.new_replay_guard()

    async def _command(self, env: Envelope, peer: str, op: str, record: Any
                       ) -> Callable[[], Any] | None:
        """Carry out one command; returns what must run after it is acknowledged."""
        permission = PERMISSION.get(op)
        if permission and not self.trust.permits(peer, permission):
            text = (f"{peer} may not {op} {self.ctx.entity} "
                    f"(trust: {', '.join(self.trust.allowed(peer)) or 'nothing'})")
            await self._rejected(_NotTrusted(text), env.subj, peer)
            if isinstance(record, TaskOffer):
                await self.delegation.on_offer(peer, record)  # records and answers the refusal
            else:
                await self.outbox.send(peer, "result", CommandResult(False, "not_trusted", text),
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
                self._answered(env, peer, result)
            case TaskOffer() as offer:
                await self.delegation.on_offer(peer, offer)
            case TaskUpdate() as update:
                await self.delegation.on_update(peer, update)
            case _:
                await self._rejected(_UnknownOp(f"{env.typ} on {op}"), env.subj, peer)
        return None

    async def _reported(self, env: Envelope, peer: str, text: str) -> None:
        # The envelope id in the text makes the memory exactly-once: a redelivered
        # report merges into the fact the first delivery stored.
        ref: MemoryRef = await self.ctx.ask(f"{self.ctx.entity}/memory", MemoryAdd(
            "fact", f"{peer} reported: {text} [report {env.id.hex()[:12]}]", 0.6,
            f"peer:{peer}"))
        if env.id not in self._reports_told:
            await self.ctx.tell(f"{self.ctx.entity}/orchestrator",
                                PeerReportIn(peer, text, env.id.hex(), ref.id))
            self._reports_told.add(env.id)
        await self.ctx.emit("report_received", peer=peer, id=env.id.hex(), memory_id=ref.id)

    async def _woken(self, peer: str, reason: str) -> CommandResult:
        try:
            result: WakeResult = await self.ctx.ask(
                f"{self.ctx.entity}/orchestrator", Wake(f"woken by {peer}: {reason}".strip()))
        except EntitydError as exc:
            return CommandResult(False, "failed", f"the orchestrator did not answer: {exc}")
        await self.ctx.emit("woken", peer=peer, started=result.started, reason=result.reason)
        if result.started:
            return CommandResult(True, "done", f"{self.ctx.entity} {result.reason} "
                                 f"(task {result.task_id})")
        return CommandResult(True, "noop", f"{self.ctx.entity} did nothing: {result.reason}")

    async def _restart_requested(self, env: Envelope, peer: str, actor: str
                                 ) -> Callable[[], Any] | None:
        names = [actor] if actor else []
        running = [a.name for a in self.supervision.actors()]
        if actor and actor not in running:
            await self.outbox.send(peer, "result", CommandResult(
                False, "unknown_actor", f"{self.ctx.entity} runs no actor {actor!r} "
                f"(it runs {', '.join(running)})"), corr=env.id)
            return None
        which = actor or "all actors"
        await self.outbox.send(peer, "result", CommandResult(
            True, "done", f"{self.ctx.entity} is restarting {which}"), corr=env.id)
        await self.ctx.emit("restart_requested", peer=peer, actor=which)
        reason = f"restart_peer from {peer}"
        # After the ack: restarting ourselves cancels whatever this instance was doing.
        return lambda: self.supervision.restart(names, reason)

    def _answered(self, env: Envelope, peer: str, result: CommandResult) -> None:
        future = self._results.pop(env.corr or b"", None)
        if future is not None and not future.done():
            future.set_result(result)
        self.ctx.log.info("command_result", peer=peer, ok=result.ok, code=result.code)

    # ---- the peer tools, for the orchestrator and entityctl (loc.<self>.peer.*) --------

    async def handle(self, envelope: Envelope) -> object | None:
        match envelope.message:
            case PeersGet():
                return await self._peers()
            case TasksGet():
                return Tasks(await self.delegation.infos())
            case TurnDone() as done:
                await self.turns.done(done)
                return None
            case PeerCheck(peer):
                return self._known(peer) or Later(self._check(peer))
            case PeerTalk() as talk:
                return self._known(talk.peer) or Later(self._talk(talk))
            case PeerReport(peer, text):
                return self._known(peer) or Later(self._report(peer, text))
            case PeerWake(peer, reason):
                return self._known(peer) or Later(
                    self._command_out(peer, "wake", Wake(reason or "woken by a peer")))
            case PeerRestart(peer, actor):
                return self._known(peer) or Later(self._command_out(peer, "restart",
                                                                    Restart(actor)))
            case PeerDelegate() as delegate:
                return self._known(delegate.peer) or await self.delegation.offer(delegate)
        raise TypeError(f"peer does not handle {envelope.typ}")

    def _known(self, peer: str) -> PeerOutcome | None:
        if peer == self.ctx.entity:
            return PeerOutcome(peer, False, "self", f"{peer} is this entity itself")
        if not self.link.known(peer):
            return PeerOutcome(peer, False, "unknown_peer",
                               f"{peer} is not in the directory: no heartbeat seen from it "
                               "and no key for it in [peer_keys]")
        return None

    async def _peers(self) -> Peers:
        assert self.store is not None
        now = time.time()
        return Peers([PeerInfo(p.name, p.public_key.hex(), p.pinned_by, p.capabilities,
                               p.first_seen, p.last_seen,
                               bool(p.last_seen) and now - p.last_seen <= self.settings.window,
                               list(self.trust.allowed(p.name)))
                      for p in await self.store.peers()])

    async def _check(self, peer: str) -> PeerCheckResult:
        assert self.store is not None
        row = await self.store.peer(peer)
        ago = time.time() - row.last_seen if row and row.last_seen else -1.0
        present = 0 <= ago <= self.settings.window
        heard = (f"last heartbeat {ago:.1f} s ago" if ago >= 0 else "no heartbeat heard yet")
        started = time.perf_counter()
        try:
            await self.link.ask(peer, "ping", Ping(), self.settings.ping_timeout)
        except ASK_FAILURES as exc:
            return PeerCheckResult(peer, "unresponsive", 0.0, round(ago, 3),
                                   f"no signed pong: {describe_failure(exc)}; {heard}")
        latency = (time.perf_counter() - started) * 1000
        note = "" if present else " (its heartbeats are late)"
        return PeerCheckResult(peer, "alive", round(latency, 3), round(ago, 3),
                               f"signed pong in {latency:.1f} ms; {heard}{note}")

    async def _talk(self, request: PeerTalk) -> PeerOutcome:
        timeout = request.timeout or self.settings.talk_timeout
        started = time.perf_counter()
        try:
            reply = await self.link.ask(request.peer, "talk",
                                        Talk(request.text, request.conversation), timeout)
        except RemoteError as exc:  # refused: not_trusted, rate_limited, timeout, ...
            return PeerOutcome(request.peer, False, exc.code, f"{request.peer} refused: "
                               f"{exc.message}")
        except AskTimeout:
            return PeerOutcome(request.peer, False, "timeout", f"{request.peer} did not answer "
                               f"within {timeout:g} s")
        except ASK_FAILURES as exc:
            return PeerOutcome(request.peer, False, "unreachable", f"{request.peer} cannot be "
                               f"reached: {describe_failure(exc)}")
        latency = (time.perf_counter() - started) * 1000
        if not isinstance(reply, TalkReply):
            return PeerOutcome(request.peer, False, "bad_reply", f"{request.peer} answered "
                               f"with {protocol.kinds.kind_name(reply)}, not talk_reply")
        return PeerOutcome(request.peer, reply.ok, "answered" if reply.ok else "failed",
                           reply.text, reply.task_id, round(latency, 3))

    async def _report(self, peer: str, text: str) -> PeerOutcome:
        row = await self.outbox.send(peer, "report", Report(text), now=True)
        landed = await self.outbox.try_now(row)
        if landed:
            return PeerOutcome(peer, True, "delivered", f"the report is in {peer}'s inbox",
                               row.id.hex())
        return PeerOutcome(peer, True, "queued", f"{peer}'s inbox cannot be reached now "
                           f"({self.outbox.last_error(row.id)}); the report is kept and "
                           "sent as soon as it can be", row.id.hex())

    async def _command_out(self, peer: str, op: str, message: object) -> PeerOutcome:
        row = await self.outbox.send(peer, op, message, now=True)
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._results[row.id] = future
        landed = await self.outbox.try_now(row)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.command_timeout):
                result = await future
        except TimeoutError:
            where = ("is in its inbox" if landed or await self.outbox.has_landed(row.id)
                     else "could not reach its inbox and stays queued here")
            return PeerOutcome(peer, False, "no_answer", f"{peer} did not answer the {op} "
                               f"within {self.settings.command_timeout:g} s; the command "
                               f"{where}. If {peer} is hung, its supervisor (systemd's "
                               "watchdog, or start-pair.sh) restarts it.", row.id.hex())
        finally:
            self._results.pop(row.id, None)
        latency = (time.perf_counter() - started) * 1000
        return PeerOutcome(peer, result.ok, result.code, result.text, row.id.hex(),
                           round(latency, 3))

    async def _expire_tasks(self) -> None:
        while True:
            await self.delegation.expire()
            await asyncio.sleep(5.0)


class _Overloaded(ProtocolError):
    reason = "overloaded"


class _NotTrusted(ProtocolError):
    reason = "not_trusted"


class _UnknownOp(ProtocolError):
    reason = "unknown_kind"
