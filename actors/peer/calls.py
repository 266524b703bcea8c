"""The peer tools from the caller's side: what check_peer_alive, talk_to_peer,
report_to_peer, wake_up_peer and restart_peer do, for the orchestrator and entityctl."""

from __future__ import annotations

import asyncio
import time

import nats.errors

import protocol
from entityd import AskTimeout, Context, EntitydError, PeersSection, RemoteError
from protocol import Envelope, Ping, ProtocolError, reasons

from . import outcomes
from .link import FedLink, UnknownPeer, describe_failure
from .messages import (
    CommandResult,
    PeerCheckResult,
    PeerInfo,
    PeerOutcome,
    Peers,
    PeerTalk,
    Report,
    Talk,
    TalkReply,
)
from .outbox import Outbox
from .policy import Trust
from .store import PeerStore

ASK_FAILURES = (EntitydError, ProtocolError, nats.errors.Error, UnknownPeer, TimeoutError)


class PeerCalls:
    def __init__(self, ctx: Context, settings: PeersSection, *, link: FedLink,
                 store: PeerStore, outbox: Outbox, trust: Trust) -> None:
        self.ctx = ctx
        self.settings = settings
        self.link = link
        self.store = store
        self.outbox = outbox
        self.trust = trust
        # Commands waiting for their result: id -> (the peer it went to, the future).
        self._results: dict[bytes, tuple[str, asyncio.Future[CommandResult]]] = {}

    def unusable(self, peer: str) -> PeerOutcome | None:
        """Why `peer` cannot be called (it is this entity, or not in the directory);
        None when it can."""
        if peer == self.ctx.entity:
            return PeerOutcome(peer, False, outcomes.SELF, f"{peer} is this entity itself")
        if not self.link.known(peer):
            return PeerOutcome(peer, False, outcomes.UNKNOWN_PEER,
                               f"{peer} is not in the directory: no heartbeat seen from it "
                               "and no key for it in [peer_keys]")
        return None

    async def peers(self) -> Peers:
        now = time.time()
        return Peers([PeerInfo(p.name, p.public_key.hex(), p.pinned_by, p.capabilities,
                               p.first_seen, p.last_seen,
                               bool(p.last_seen) and now - p.last_seen <= self.settings.window,
                               list(self.trust.allowed(p.name)))
                      for p in await self.store.peers()])

    async def check(self, peer: str) -> PeerCheckResult:
        last = self.store.last_seen(peer)
        ago = time.time() - last if last else -1.0
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

    async def talk(self, request: PeerTalk) -> PeerOutcome:
        timeout = request.timeout or self.settings.talk_timeout
        started = time.perf_counter()
        try:
            reply = await self.link.ask(request.peer, "talk",
                                        Talk(request.text, request.conversation), timeout)
        except RemoteError as exc:  # refused: not_trusted, rate_limited, timeout, ...
            return PeerOutcome(request.peer, False, exc.code, f"{request.peer} refused: "
                               f"{exc.message}")
        except AskTimeout:
            return PeerOutcome(request.peer, False, reasons.TIMEOUT,
                               f"{request.peer} did not answer within {timeout:g} s")
        except ASK_FAILURES as exc:
            return PeerOutcome(request.peer, False, outcomes.UNREACHABLE,
                               f"{request.peer} cannot be reached: {describe_failure(exc)}")
        latency = (time.perf_counter() - started) * 1000
        if not isinstance(reply, TalkReply):
            return PeerOutcome(request.peer, False, outcomes.BAD_REPLY, f"{request.peer} answered "
                               f"with {protocol.kinds.kind_name(reply)}, not talk_reply")
        code = outcomes.ANSWERED if reply.ok else reasons.FAILED
        return PeerOutcome(request.peer, reply.ok, code, reply.text, reply.task_id,
                           round(latency, 3))

    async def report(self, peer: str, text: str) -> PeerOutcome:
        row = await self.outbox.send(peer, "report", Report(text), now=True)
        landed = await self.outbox.try_now(row)
        if landed:
            return PeerOutcome(peer, True, outcomes.DELIVERED, f"the report is in {peer}'s inbox",
                               row.id.hex())
        return PeerOutcome(peer, True, outcomes.QUEUED, f"{peer}'s inbox cannot be reached now "
                           f"({self.outbox.last_error(row.id)}); the report is kept and "
                           "sent as soon as it can be", row.id.hex())

    async def command(self, peer: str, op: str, message: object) -> PeerOutcome:
        row = await self.outbox.send(peer, op, message, now=True)
        future: asyncio.Future[CommandResult] = asyncio.get_running_loop().create_future()
        self._results[row.id] = (peer, future)
        landed = await self.outbox.try_now(row)
        started = time.perf_counter()
        try:
            async with asyncio.timeout(self.settings.command_timeout):
                result = await future
        except TimeoutError:
            where = ("is in its inbox" if landed or await self.outbox.has_landed(row.id)
                     else "could not reach its inbox and stays queued here")
            return PeerOutcome(peer, False, outcomes.NO_ANSWER, f"{peer} did not answer the {op} "
                               f"within {self.settings.command_timeout:g} s; the command "
                               f"{where}. If {peer} is hung, its supervisor (systemd's "
                               "watchdog, or start-pair.sh) restarts it.", row.id.hex())
        finally:
            self._results.pop(row.id, None)
        latency = (time.perf_counter() - started) * 1000
        return PeerOutcome(peer, result.ok, result.code, result.text, row.id.hex(),
                           round(latency, 3))

    def answered(self, env: Envelope, peer: str, result: CommandResult) -> None:
        """A peer's result for a command we sent it (from another peer: ignored)."""
        waiting = self._results.get(env.corr or b"")
        if waiting is not None and waiting[0] == peer:
            del self._results[env.corr or b""]
            if not waiting[1].done():
                waiting[1].set_result(result)
        self.ctx.log.info("command_result", peer=peer, ok=result.ok, code=result.code)
