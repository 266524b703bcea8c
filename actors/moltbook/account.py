"""One entity's Moltbook account as the tools see it: its key, its limits' state (posts,
comments, verification failures, its age), the DMs waiting for approval, and the calls
that must keep them: publishing a post or comment (within the limits, answering its
verification challenge), sending a DM (by the policy), and the operator's own
(register, status, approve, reject, pending, reset)."""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict
from datetime import datetime
from typing import Any
from urllib.parse import quote

from entityd import Config

from .client import MoltbookClient, Reply
from .dms import DMS_FILE, PendingDM, PendingDMs
from .errors import ApiError, RateLimited, Refused, Unreachable
from .keys import KeySource
from .limits import COMMENT_WAIT_MAX, ActionLimits, RequestPacer
from .state import STATE_FILE, StateFile
from .verification import Verification, find_challenge

Audit = Callable[[dict[str, Any]], Awaitable[None]]
Answer = tuple[str, dict[str, Any]]  # the tool's output, and its data
AGE_RETRY_S = 600.0  # how often to ask /agents/me for the account's age while unknown


class Account:
    def __init__(self, config: Config, environ: Mapping[str, str] | None = None,
                 clock: Callable[[], float] = time.time) -> None:
        self.settings = config.moltbook
        self.keys = KeySource.of(config)
        self.environ = os.environ if environ is None else environ
        self.clock = clock
        self.pacer = RequestPacer(self.settings.requests_per_minute)
        self.pending = PendingDMs(config.data_dir / DMS_FILE)
        self._state_path = config.data_dir / STATE_FILE
        self._store: StateFile | None = None
        self._content = asyncio.Lock()  # one post or comment at a time: check, send, record
        self._age_asked = -math.inf

    @property
    def store(self) -> StateFile:
        if self._store is None:
            self._store = StateFile(self._state_path)
        return self._store

    def limits(self) -> ActionLimits:
        s = self.settings
        return ActionLimits(self.store, s.post_interval, s.comment_interval,
                            s.comments_per_day, self.clock)

    def client(self, audit: Audit, anonymous: bool = False) -> MoltbookClient:
        """A client with the key (NoKey or KeyRefused if there is none to use), or
        `anonymous` (registering)."""
        key = None if anonymous else self.keys.load(self.environ)
        return MoltbookClient(self.settings.base_url, key, timeout=self.settings.timeout,
                              pacer=self.pacer, audit=audit)

    async def publish(self, client: MoltbookClient, kind: str, path: str, endpoint: str,
                      body: dict[str, Any]) -> Answer:
        """Create a post or comment within the limits, and answer its challenge."""
        verification = Verification(self.store, self.clock)
        limits = self.limits()
        async with self._content:
            stopped = verification.refusal()
            if stopped:
                raise Refused(stopped)
            await self.learn_age(client)
            now = self.clock()
            if kind == "post":
                wait = limits.post_wait(now)
                if wait > 0:
                    raise Refused(limits.why_no_post(now, wait))
            else:
                wait, daily = limits.comment_wait(now)
                if daily or wait > COMMENT_WAIT_MAX:
                    raise Refused(limits.why_no_comment(now, wait, daily))
                if wait > 0:
                    await asyncio.sleep(wait)
            sent = self.clock()
            limits.record(kind, sent)
            refused = False
            try:
                reply = await client.call("POST", path, endpoint, body=body)
            except ApiError as exc:
                refused = 400 <= exc.status < 500  # certainly not made: it does not count
                raise
            finally:
                limits.settle(kind, sent, refused)
            made = reply.data.get(kind)
            ident = str((made if isinstance(made, dict) else reply.data).get("id") or "")
            challenge = find_challenge(reply.data, kind, self.clock())
            if challenge is None:
                return (f"{kind} {ident} published".strip(),
                        {"id": ident, "outcome": "published"})
            note = await verification.answer(client, challenge, kind)
            return f"{kind} {ident} created; {note}", {"id": ident, "outcome": "verified"}

    async def learn_age(self, client: MoltbookClient) -> None:
        """The account's creation time from /agents/me, once; until known, the account
        counts as new (its first day's stricter limits)."""
        state = self.store.state
        if state.account_created is not None or time.monotonic() - self._age_asked < AGE_RETRY_S:
            return
        self._age_asked = time.monotonic()
        try:
            reply = await client.call("GET", "/agents/me", "GET /agents/me")
        except (ApiError, Unreachable, RateLimited):
            return
        self.note_age(agent_of(reply.data))

    def note_age(self, agent: dict[str, Any]) -> None:
        created = timestamp(agent.get("created_at"))
        if created is not None and self.store.state.account_created != created:
            self.store.state.account_created = created
            self.store.save(self.clock())

    async def send_dm(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        policy = self.settings.dms
        if policy not in ("approve", "allow"):
            raise Refused('sending Moltbook DMs is off ([moltbook] dms = "off"); the '
                          'operator may set "approve" or "allow"')
        to, conversation = args.get("to", ""), args.get("conversation_id", "")
        if bool(to) == bool(conversation):
            raise Refused("moltbook_send_dm takes either to (a new chat request) or "
                          "conversation_id (an approved conversation)")
        message = args["message"]
        if to and not 10 <= len(message) <= 1000:
            raise Refused("a chat request's message is 10 to 1000 characters (Moltbook's rule)")
        if policy == "approve":
            item = self.pending.add(message, to, conversation,
                                    bool(args.get("needs_human_input")), self.clock())
            return (f"the DM to {item.recipient} is queued as {item.id}, not sent: the "
                    f"operator sends it with `entityctl moltbook approve {item.id}`",
                    {"id": item.id, "outcome": "queued"})
        await self.deliver(client, PendingDM("", message, to, conversation,
                                             bool(args.get("needs_human_input"))))
        return f"the DM to {to or 'conversation ' + conversation} is sent", {"outcome": "sent"}

    async def deliver(self, client: MoltbookClient, dm: PendingDM) -> Reply:
        await self.learn_age(client)
        if self.limits().new_account(self.clock()):
            raise Refused("Moltbook blocks DMs in an account's first 24 h (or while its age "
                          "is unknown: /agents/me did not say)")
        if dm.to:
            return await client.call("POST", "/agents/dm/request", "POST /agents/dm/request",
                                     body={"to": dm.to, "message": dm.message})
        conversation = segment(dm.conversation_id, "conversation_id")
        body: dict[str, Any] = {"message": dm.message}
        if dm.needs_human_input:
            body["needs_human_input"] = True
        return await client.call("POST", f"/agents/dm/conversations/{conversation}/send",
                                 "POST /agents/dm/conversations/{id}/send", body=body)

    async def approve(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        dm = self.pending.get(args["id"])
        if dm is None:
            raise Refused(f"no DM waits for approval as {args['id']!r} "
                          "(`entityctl moltbook pending` lists them)")
        if self.settings.dms not in ("approve", "allow"):
            raise Refused('sending Moltbook DMs is off ([moltbook] dms = "off")')
        await self.deliver(client, dm)
        self.pending.remove(dm.id)
        return f"sent DM {dm.id} to {dm.recipient}", {"id": dm.id, "outcome": "sent"}

    def pending_list(self, args: dict[str, Any]) -> Answer:
        items = self.pending.all()
        lines = []
        for dm in items:
            when = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(dm.created_at))
            human = ", asks for the human" if dm.needs_human_input else ""
            lines.append(f"{dm.id}  to {dm.recipient}  (queued {when}{human})\n"
                         f"    {dm.message}")
        return ("\n".join(lines) or "(no DM waits for approval)",
                {"pending": [asdict(dm) for dm in items], "outcome": f"{len(items)} pending"})

    def reject(self, args: dict[str, Any]) -> Answer:
        dm = self.pending.get(args["id"])
        if dm is None:
            raise Refused(f"no DM waits for approval as {args['id']!r}")
        self.pending.remove(dm.id)
        return f"dropped DM {dm.id} to {dm.recipient}", {"id": dm.id, "outcome": "dropped"}

    def reset(self, args: dict[str, Any]) -> Answer:
        before = Verification(self.store, self.clock).reset()
        return (f"verification failures in a row: {before} -> 0; posting and commenting "
                "resume", {"failures_before": before, "outcome": "reset"})

    async def register(self, client: MoltbookClient, args: dict[str, Any]) -> Answer:
        if self.keys.configured(self.environ):
            raise Refused(f"this entity already has a Moltbook key "
                          f"({self.keys.describe(self.environ)}); registering again would "
                          "make another agent")
        self.keys.refuse_in_workspace()
        reply = await client.call("POST", "/agents/register", "POST /agents/register", body={
            "name": args["name"], "description": args.get("description", "")})
        agent = agent_of(reply.data)
        key = agent.get("api_key")
        if not isinstance(key, str) or not key.strip():
            raise ApiError("Moltbook registered the agent but its answer holds no api_key",
                           reply.status)
        self.keys.store(key.strip())
        claim, code = str(agent.get("claim_url", "")), str(agent.get("verification_code", ""))
        text = (f"registered {args['name']} on Moltbook; its key is kept in {self.keys.path} "
                "(0600)\n"
                f"claim URL, for the entity's human: {claim}\n"
                f"verification code: {code}\n"
                "The human opens the claim URL, verifies their email and posts the "
                "verification tweet. Restart the entity so its orchestrator is offered the "
                "Moltbook tools.")
        return text, {"name": args["name"], "claim_url": claim, "verification_code": code,
                      "key_file": str(self.keys.path), "outcome": "registered"}

    async def status(self, audit: Audit) -> Answer:
        now = self.clock()
        local: dict[str, Any] = {
            "base_url": self.settings.base_url, "key": self.keys.describe(self.environ),
            "dms": self.settings.dms, "dms_pending": len(self.pending.all()),
            "verification_failures": self.store.state.failures,
            "verification_stopped": Verification(self.store, self.clock).refusal() or "",
            "last_verification_failure": self.store.state.last_failure,
        }
        client = self.client(audit)
        status = await client.call("GET", "/agents/status", "GET /agents/status")
        me = await client.call("GET", "/agents/me", "GET /agents/me")
        agent = agent_of(me.data)
        self.note_age(agent)
        limits = self.limits().describe(now)
        data = {**local, "claim_status": status.data.get("status", ""),
                "agent": {k: agent.get(k) for k in ("name", "karma", "follower_count",
                                                     "following_count", "created_at")},
                "limits": limits, "outcome": "ok"}
        return _status_text(data), data


def _status_text(data: dict[str, Any]) -> str:
    agent, limits = data["agent"], data["limits"]
    lines = [
        f"agent:        {agent.get('name')} ({data['claim_status'] or 'claim status unknown'})"
        f", karma {agent.get('karma')}",
        f"api:          {data['base_url']} (key from {data['key']})",
        f"account:      {'new: first-24 h limits' if limits['new_account'] else 'established'}"
        f" (created {agent.get('created_at') or 'unknown'})",
        f"posts:        1 per {limits['post_interval_s']:g} s; next allowed in "
        f"{limits['next_post_in_s']:g} s",
        f"comments:     {limits['comments_last_24h']} of {limits['comments_per_day']} in the "
        f"last 24 h, 1 per {limits['comment_interval_s']:g} s; next allowed in "
        f"{limits['next_comment_in_s']:g} s",
        f"verification: {data['verification_failures']} failure(s) in a row"
        + (f"; STOPPED: {data['verification_stopped']}" if data["verification_stopped"]
           else ""),
        f"DMs:          {data['dms']}; {data['dms_pending']} waiting for approval",
    ]
    return "\n".join(lines)


def segment(value: str, name: str) -> str:
    """`value` as one path segment: quoted, and never "." or ".." (a path of its own)."""
    if value.strip() in ("", ".", "..") or value != value.strip():
        raise Refused(f"{name} {value!r} is not an id or a name")
    return quote(value, safe="")


def agent_of(data: dict[str, Any]) -> dict[str, Any]:
    agent = data.get("agent")
    return agent if isinstance(agent, dict) else data


def timestamp(value: Any) -> float | None:
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, str):
        try:
            return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
        except ValueError:
            return None
    return None
