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
import contextlib
import time
from typing import Any

from nats.aio.msg import Msg
from nats.aio.subscription import Subscription

import protocol
from entityd import Actor, Config, Later, Supervision, disk_full
from protocol import Envelope, Overloaded, ProtocolError, subjects

from ..a2a import card
from ..a2a.messages import CardSign, CardSigned
from ..messages import TurnDone, Wake
from ..state_file import opened
from ..workspaces import Workspaces
from .calls import PeerCalls
from .delegation import Delegation
from .deliverable import Deliverables
from .inbound import COMMANDS, Inbound, Rejections
from .inbox import Inbox
from .lanes import Lanes
from .link import ACTOR, FedLink, inbox_stream
from .messages import (
    Heartbeat,
    PeerCheck,
    PeerCheckResult,
    PeerDelegate,
    PeerReport,
    PeerRestart,
    PeersGet,
    PeerTalk,
    PeerWake,
    Restart,
    Tasks,
    TaskSettle,
    TasksGet,
)
from .outbox import Outbox
from .policy import RateLimiter, Trust
from .store import PeerStore
from .turns import Turns

REQUEST_QUEUE = 256
CONCURRENT_REQUESTS = 16
EXPIRE_EVERY_S = 5.0
# A command whose handling raised (our bug, or the store or connection failing) is
# offered again this many times, a few seconds apart, then dropped with an error logged.
COMMAND_ATTEMPTS = 5
COMMAND_RETRY_S = 5.0
# Heartbeats a peer may send per heartbeat interval of ours (bursts up to BEATS_BURST),
# at least one a second: room for a peer that beats faster than we do, and a flood on a
# member's own heartbeat subject is dropped before any verification work.
BEATS_PER_INTERVAL = 4
BEATS_BURST = 10


class PeerActor(Actor):
    name = ACTOR
    accepts = (PeersGet, TasksGet, TurnDone, PeerCheck, PeerTalk, PeerReport, PeerWake,
               PeerRestart, PeerDelegate, TaskSettle, CardSign)
    federated = True  # it speaks for the entity on the federation's subjects

    def __init__(self, config: Config, workspaces: Workspaces,
                 supervision: Supervision) -> None:
        self.config = config
        self.settings = config.peers
        self.workspaces = workspaces
        self.supervision = supervision
        self.trust = Trust(config.trust, config.peers.default_trust)
        self.limiter = RateLimiter.from_config(config.peers)
        self.beats = RateLimiter(
            max(60, round(60 * BEATS_PER_INTERVAL / config.peers.heartbeat_interval)),
            BEATS_BURST)
        self._requests: asyncio.Queue[Msg] = asyncio.Queue(REQUEST_QUEUE)
        self._subs: list[Subscription] = []
        self._started_at = time.time()
        self.store: PeerStore | None = None
        self._inbox: Inbox | None = None

    # ---- lifecycle --------------------------------------------------------------------

    async def on_start(self) -> None:
        ctx, fed = self.ctx, self.ctx.federation
        path = self.config.data_dir / "peers.sqlite3"
        self.store = store = await opened(path, lambda: PeerStore.open(path))
        self.link = link = FedLink(fed, store, pinning=self.settings.pinning)
        await link.load(self.config.peer_keys)
        self.rejections = Rejections(ctx)
        self.turns = Turns(ctx)
        self.outbox = Outbox(link, store, ctx.log)
        self.delegation = Delegation(
            ctx, self.config, store, self.turns, self.workspaces, self.trust, self.outbox.send,
            Deliverables(link, self.config.protocol.max_message_bytes, self.settings))
        self.calls = PeerCalls(ctx, self.settings, link=link, store=store,
                               outbox=self.outbox, trust=self.trust)
        self.inbound = Inbound(ctx, self.settings, link=link, store=store,
                               outbox=self.outbox, turns=self.turns,
                               delegation=self.delegation, calls=self.calls,
                               trust=self.trust, limiter=self.limiter,
                               supervision=self.supervision, rejections=self.rejections)
        await self._ensure_inbox()
        self._subs.append(await fed.subscribe(
            subjects.event("*", ACTOR, "heartbeat"), cb=self._on_heartbeat))
        self._subs.append(await fed.subscribe(
            subjects.request(ctx.entity, "*", "*"), cb=self._on_request))

    async def _ensure_inbox(self) -> None:
        """The INBOX stream with its limits (an older one's updated in place) and its
        consumer, which hands on only real deliveries (inbox.py)."""

        async def refuse(exc: ProtocolError, msg: Msg) -> None:
            await self.rejections.note(exc, msg.subject, None)

        inbox = Inbox(self.link.fed, self.link.js, stream=inbox_stream(self.ctx.entity),
                      entity=self.ctx.entity, ops=list(COMMANDS), settings=self.settings,
                      max_message_bytes=self.config.protocol.max_message_bytes,
                      log=self.ctx.log, refuse=refuse)
        await inbox.ensure()
        await inbox.subscribe()
        self._inbox = inbox

    async def on_stop(self) -> None:
        await self._close()

    async def on_failure(self, exc: BaseException) -> None:
        await self._close()

    async def _close(self) -> None:
        if hasattr(self, "link"):
            await self.link.close()
        # Unsubscribed, or the daemon's drain of the connection waits for them in vain.
        subs: list[Any] = list(self._subs)
        self._subs = []
        inbox, self._inbox = self._inbox, None
        if inbox is not None:
            await inbox.unsubscribe()
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
            if self._inbox is not None:
                tg.create_task(self._inbox.maintain())
            tg.create_task(self.delegation.run())
            tg.create_task(self._expire_tasks())
            await self.delegation.resume()
            limit = asyncio.Semaphore(CONCURRENT_REQUESTS)
            while True:
                msg = await self._requests.get()
                await limit.acquire()
                task = tg.create_task(self.inbound.serve_request(msg))
                task.add_done_callback(lambda _: limit.release())

    # ---- presence ---------------------------------------------------------------------

    async def _heartbeats(self) -> None:
        subject = subjects.event(self.ctx.entity, ACTOR, "heartbeat")
        beat = Heartbeat(list(self.settings.capabilities), self.settings.heartbeat_interval,
                         self._started_at)
        while True:
            wire, _ = self.link.fed.sign(src=self.link.address, dst=protocol.BROADCAST,
                                         subj=subject, message=beat)
            try:
                await self.link.fed.publish(subject, wire)
            except Exception as exc:  # the connection reconnects by itself
                self.ctx.log.warning("heartbeat_not_sent", error=repr(exc))
            await asyncio.sleep(self.settings.heartbeat_interval)

    async def _on_heartbeat(self, msg: Msg) -> None:
        route = subjects.route(msg.subject)
        if route is None or route.sender == self.ctx.entity or self.store is None:
            return
        if await self.inbound.throttled(msg, route.sender, self.beats):
            return
        try:
            env, beat, new = await self.link.open_heartbeat(msg)
        except ProtocolError as exc:
            await self.rejections.note(exc, msg.subject, route.sender)
            return
        if not isinstance(beat, Heartbeat):
            return
        await self.store.seen(env.src_entity, list(beat.capabilities), time.time())
        if new:
            self.ctx.log.info("peer_discovered", peer=env.src_entity, key=env.kid.hex())
            await self.ctx.emit("peer_discovered", peer=env.src_entity,
                                public_key=env.kid.hex(), pinned_by="first-sight")

    # ---- what peers send: requests (answered beside the actor) and the INBOX ----------

    async def _on_request(self, msg: Msg) -> None:
        route = subjects.route(msg.subject)
        if await self.inbound.throttled(msg, route.sender if route else None, self.limiter):
            return
        if msg.subject.endswith(".ping"):
            await self.inbound.serve_request(msg)  # at once: it is quick, and it is timed
            return
        try:
            self._requests.put_nowait(msg)
        except asyncio.QueueFull:
            await self.ctx.federation.refuse(msg, self.link.address, Overloaded(
                f"{REQUEST_QUEUE} peer requests are waiting"))

    async def _consume(self) -> None:
        """The INBOX's deliveries, in order per sender and senders side by side (lanes.py):
        one member's slow command (a delivery fetched and landed) holds up no other's."""
        inbox = self._inbox
        assert inbox is not None, "on_start subscribes the INBOX"
        await Lanes(self._serve_command).run(inbox.next, inbox.queued)

    async def _serve_command(self, msg: Msg) -> None:
        """One delivery: nothing a command does ends the actor. A failure while handling
        it (our bug, the store, the connection) is logged and the command offered again
        a few times, then dropped; but one that met a full disk is offered again for as
        long as the disk stays full (the sender was told its command is stored)."""
        try:
            await self.inbound.serve_command(msg)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            full = disk_full(exc)
            if full is not None:
                self.ctx.log.warning("command_deferred_disk_full", subject=msg.subject,
                                     error=full)
                with contextlib.suppress(Exception):
                    await msg.nak(delay=COMMAND_RETRY_S)
                return
            attempt = _attempt(msg)
            self.ctx.log.error("command_failed", subject=msg.subject, attempt=attempt,
                               error=f"{type(exc).__name__}: {exc}"[:500])
            with contextlib.suppress(Exception):
                if attempt < COMMAND_ATTEMPTS:
                    await msg.nak(delay=COMMAND_RETRY_S)
                else:
                    await msg.term()

    async def _expire_tasks(self) -> None:
        while True:
            await self.delegation.expire()
            await asyncio.sleep(EXPIRE_EVERY_S)

    # ---- the peer tools, for the orchestrator and entityctl (loc.<self>.peer.*) --------

    async def handle(self, envelope: Envelope) -> object | None:
        calls = self.calls
        match envelope.message:
            case PeersGet():
                return await calls.peers()
            case TasksGet():
                return Tasks(await self.delegation.infos())
            case TurnDone() as done:
                await self.turns.done(done)
                return None
            case PeerCheck(peer):
                unknown = calls.unusable(peer)
                if unknown is not None:
                    return PeerCheckResult(peer, "unknown", detail=unknown.text)
                return Later(calls.check(peer))
            case PeerTalk() as talk:
                return calls.unusable(talk.peer) or Later(calls.talk(talk))
            case PeerReport(peer, text):
                return calls.unusable(peer) or Later(calls.report(peer, text))
            case PeerWake(peer, reason):
                return calls.unusable(peer) or Later(
                    calls.command(peer, "wake", Wake(reason or "woken by a peer")))
            case PeerRestart(peer, actor):
                return calls.unusable(peer) or Later(calls.command(peer, "restart",
                                                                Restart(actor)))
            case PeerDelegate() as delegate:
                # Beside the mailbox: a priced offer waits for the ledger, which may ask
                # us for the peers' keys meanwhile.
                return calls.unusable(delegate.peer) or Later(self.delegation.offer(delegate))
            case TaskSettle() as verdict:
                return Later(self.delegation.settle(verdict))
            case CardSign(url):
                return self._card(url)
        raise TypeError(f"peer does not handle {envelope.typ}")

    def _card(self, url: str) -> CardSigned:
        """The entity's A2A agent card for `url`, built here from the config and signed:
        the asker picks the URL only, so no other bytes are ever signed this way."""
        fed = self.ctx.federation
        try:
            unsigned = card.build(self.config, url, fed.public_key)
        except ValueError as exc:
            return CardSigned("", str(exc))
        return CardSigned(card.to_json(card.sign(unsigned, self.ctx.entity, fed.public_key,
                                                 fed.sign_agent_card)))


def _attempt(msg: Msg) -> int:
    """How often the INBOX has delivered `msg` (1 if its metadata cannot be read)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:
        return 1
