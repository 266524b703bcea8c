"""The Moltbook tools through the tool actor on a real nats-server, against
tests/moltbook_server.py (a local server following Moltbook's documented API; not Moltbook).

Each call is a signed tool_call as the orchestrator (or entityctl, or the coder) sends it;
the audit events are read off the bus as any observer reads them. The key is a known fake
value, looked for in every event and in the sandbox's environment."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import json
import os
import re
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import nats
import pytest

import protocol
from actors.messages import Goal, ToolCall, ToolResult, ToolSpecs, ToolSpecsGet
from actors.moltbook import MODEL_TOOLS
from actors.tool import ToolActor
from actors.turn_scope import TurnScope
from entityd import identity
from entityd.config import Config, EntitySection, MoltbookSection, RuntimeSection
from entityd.transport import Transport
from protocol import Keyring, ReplayGuard
from tests.helpers import NatsServer, running_actors
from tests.moltbook_server import MoltbookServer
from tests.test_tool_actor import SANDBOX

ENTITY = "entity-a"
KEY = "moltbook_sk_FAKE_key_for_tests_5f2c9d"
ENV = "ENTITYD_TEST_MOLTBOOK_KEY"
DM_TEXT = "a DM text that must never be in an event 7c1e"
pytestmark = pytest.mark.timeout(90)


@dataclasses.dataclass
class Rig:
    client: Transport
    server: MoltbookServer
    config: Config
    sub: Any  # the subscription to fed.evt.<entity>.tool.>
    keyring: Keyring
    raw: list[bytes] = dataclasses.field(default_factory=list)
    events: list[protocol.Event] = dataclasses.field(default_factory=list)
    guard: ReplayGuard = dataclasses.field(default_factory=ReplayGuard)

    async def call(self, tool: str, src: str = "orchestrator", private: bool = False,
                   **args: Any) -> ToolResult:
        env = await self.client.ask(f"{ENTITY}/{src}", f"{ENTITY}/tool",
                                    ToolCall(tool, args, src, private), 60)
        assert isinstance(env.message, ToolResult)
        return env.message

    async def ok(self, tool: str, src: str = "orchestrator", **args: Any) -> ToolResult:
        result = await self.call(tool, src, **args)
        assert result.ok, result.error
        return result

    async def names(self, src: str) -> list[str]:
        env = await self.client.ask(f"{ENTITY}/{src}", f"{ENTITY}/tool", ToolSpecsGet(), 10)
        assert isinstance(env.message, ToolSpecs)
        return [spec["function"]["name"] for spec in env.message.tools]

    async def drain(self) -> list[protocol.Event]:
        """Every event published so far, verified; their raw bytes kept in `raw`."""
        while True:
            try:
                msg = await self.sub.next_msg(timeout=0.3)
            except nats.errors.TimeoutError:
                return self.events
            self.raw.append(msg.data)
            env = protocol.open(msg.data, subject=msg.subject, local="observer",
                                keyring=self.keyring, replay=self.guard)
            self.events.append(env.message)


def settings(server: MoltbookServer, **overrides: Any) -> MoltbookSection:
    values: dict[str, Any] = {"base_url": server.base_url, "api_key_env": ENV,
                              "post_interval": 0.5, "comment_interval": 0.05,
                              "comments_per_day": 50, "timeout": 5.0}
    return MoltbookSection(**{**values, **overrides})


@asynccontextmanager
async def rig_of(nats_url: str, root: Path, server: MoltbookServer,
                 runtime: RuntimeSection | None = None, **overrides: Any
                 ) -> AsyncIterator[Rig]:
    data = root / ENTITY
    if not data.exists():
        data.mkdir(parents=True)
        identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)), sandbox=SANDBOX,
                    moltbook=settings(server, **overrides))
    async with running_actors(nats_url, ENTITY, {"tool": lambda: ToolActor(config)},
                              events=f"fed.evt.{ENTITY}.tool.>", settings=runtime) as actors:
        yield Rig(actors.client, server, config, actors.events, actors.keyring)


@pytest.fixture
def server() -> Iterator[MoltbookServer]:
    with MoltbookServer() as running:
        running.add_agent(KEY)
        yield running


@pytest.fixture
async def rig(nats_server: NatsServer, tmp_path: Path, server: MoltbookServer,
              monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[Rig]:
    monkeypatch.setenv(ENV, KEY)
    async with rig_of(nats_server.url, tmp_path, server, dms="allow") as made:
        yield made


def posts_made(server: MoltbookServer) -> int:
    return sum(1 for s in server.requests("/posts") if (s.method, s.path) == ("POST",
                                                                              "/api/v1/posts"))


def no_secrets_in(rig: Rig, *secrets: str) -> None:
    blob = b"".join(rig.raw)
    for secret in secrets:
        assert secret.encode() not in blob, f"{secret!r} is in an event"


# ---- who gets the tools ---------------------------------------------------------------------


async def test_the_orchestrator_alone_is_offered_the_tools_and_only_with_a_key(
        rig: Rig, monkeypatch: pytest.MonkeyPatch) -> None:
    orchestrator = await rig.names("orchestrator")
    assert orchestrator[:7] == ["shell", "read_file", "write_file", "str_replace", "list_dir",
                                "glob", "grep"]
    assert orchestrator[7:] == list(MODEL_TOOLS)
    assert len(MODEL_TOOLS) == 12
    for other in ("coder", "ctl", "web", "peer"):
        assert not any(name.startswith("moltbook") for name in await rig.names(other))
    monkeypatch.delenv(ENV)
    assert not any(name.startswith("moltbook") for name in await rig.names("orchestrator"))


async def test_the_coder_and_other_actors_are_refused(rig: Rig) -> None:
    for src in ("coder", "peer", "web"):
        refused = await rig.call("moltbook_home", src)
        assert not refused.ok
        assert refused.error == ("the Moltbook tools serve the orchestrator's operator turns "
                                 f"and entityctl, not the {src} actor")
    operator_only = await rig.call("moltbook_reset", "orchestrator")
    assert not operator_only.ok and "the operator's (entityctl moltbook)" in operator_only.error
    assert rig.server.requests() == []


def test_a_peer_turn_is_never_shown_moltbook_tools() -> None:
    for goal in (Goal("hi", source="peer:entity-b"),
                 Goal("work", task_id="dlg-1", source="peer:entity-b")):
        scope = TurnScope.of(goal, lambda peer: ("talk", "report", "delegate", "wake"))
        assert not any(scope.offered(tool) for tool in MODEL_TOOLS)
    operator = TurnScope.of(Goal("post something", source="autonomy"), lambda peer: ())
    assert all(operator.offered(tool) for tool in MODEL_TOOLS)
    operator.hear(["entity-b"])  # a peer's words came in: the turn may read, not act
    assert operator.refusal("moltbook_post") is not None


async def test_a_private_turn_may_read_but_not_publish(rig: Rig) -> None:
    for tool, args in (("moltbook_post", {"title": "t", "content": "c"}),
                       ("moltbook_comment", {"post_id": "p", "content": "c"}),
                       ("moltbook_vote", {"post_id": "p"}),
                       ("moltbook_follow", {"name": "x"}),
                       ("moltbook_join_submolt", {"name": "general"}),
                       ("moltbook_send_dm", {"to": "BensBot", "message": DM_TEXT})):
        refused = await rig.call(tool, private=True, **args)
        assert not refused.ok and "holds a peer's words" in refused.error, tool
    assert rig.server.requests() == []
    read = await rig.call("moltbook_home", private=True)
    assert read.ok
    events = await rig.drain()
    private = [e for e in events if e.type == "call" and e.data.get("private")]
    assert len(private) == 7 and not any("summary" in e.data for e in private)


# ---- every tool -----------------------------------------------------------------------------


async def test_every_tool_as_documented(rig: Rig) -> None:
    server = rig.server
    home = await rig.ok("moltbook_home")
    assert '"your_account"' in home.output and '"what_to_do_next"' in home.output

    posted = await rig.ok("moltbook_post", title="Hello Moltbook", content="first post here",
                          submolt="aithoughts")
    post_id = posted.data["id"]
    assert posted.output == (f"post {post_id} created; Moltbook's verification challenge was "
                             "answered; the post is published")
    assert server.world.posts[post_id]["verification_status"] == "verified"
    assert server.world.posts[post_id]["submolt"] == {"name": "aithoughts"}
    create = server.requests("/posts")[0]
    assert create.body == {"submolt": "aithoughts", "title": "Hello Moltbook",
                           "content": "first post here"}
    verify = server.requests("/verify")[0]
    assert verify.at - create.at < 5  # well within the documented 5 minutes
    assert re.fullmatch(r"-?\d+\.\d\d", verify.body["answer"])  # a string, two decimals

    feed = await rig.ok("moltbook_feed", sort="new", limit=5)
    assert f"- {post_id} 'Hello Moltbook' in m/aithoughts by entity-a" in feed.output
    assert server.requests("/feed")[-1].path == "/api/v1/feed?sort=new&limit=5"
    mine = await rig.ok("moltbook_feed", submolt="aithoughts")
    assert post_id in mine.output
    assert server.requests("/posts?")[-1].path == \
        "/api/v1/posts?sort=hot&limit=15&submolt=aithoughts"
    following = await rig.ok("moltbook_feed", following=True)
    assert following.ok and "filter=following" in server.requests("/feed")[-1].path

    found = await rig.ok("moltbook_search", query="first post", type="posts")
    assert f"post {post_id} 'Hello Moltbook' by entity-a similarity 0.80" in found.output
    assert server.requests("/search")[-1].path == \
        "/api/v1/search?q=first+post&type=posts&limit=10"

    commented = await rig.ok("moltbook_comment", post_id=post_id, content="a reply to it")
    comment_id = commented.data["id"]
    assert "the comment is published" in commented.output
    replied = await rig.ok("moltbook_comment", post_id=post_id, content="nested",
                           parent_id=comment_id)
    assert server.requests("/posts/")[-1].body == {"content": "nested", "parent_id": comment_id}
    assert replied.ok
    read = await rig.ok("moltbook_read_post", post_id=post_id, comment_sort="new")
    assert read.output.startswith(f"- {post_id} 'Hello Moltbook'")
    assert "first post here" in read.output and "a reply to it" in read.output
    assert "comments (2):" in read.output

    assert (await rig.ok("moltbook_vote", post_id=post_id)).output.startswith("upvoted")
    await rig.ok("moltbook_vote", post_id=post_id, direction="down")
    await rig.ok("moltbook_vote", comment_id=comment_id)
    assert (server.world.posts[post_id]["upvotes"],
            server.world.posts[post_id]["downvotes"]) == (1, 1)
    assert server.world.comments[post_id][0]["upvotes"] == 1
    no_down = await rig.call("moltbook_vote", comment_id=comment_id, direction="down")
    assert not no_down.ok and "upvotes of comments only" in no_down.error

    await rig.ok("moltbook_follow", name="ClawdClawderberg")
    assert server.world.follows == {"ClawdClawderberg"}
    await rig.ok("moltbook_follow", name="ClawdClawderberg", unfollow=True)
    assert server.world.follows == set()

    listed = await rig.ok("moltbook_submolts")
    assert "- m/general (General, 3 members): Everything" in listed.output
    one = await rig.ok("moltbook_submolts", name="aithoughts")
    assert '"display_name": "AI Thoughts"' in one.output
    await rig.ok("moltbook_join_submolt", name="general")
    assert server.world.subscriptions == {"general"}
    await rig.ok("moltbook_join_submolt", name="general", leave=True)
    assert server.world.subscriptions == set()

    server.world.conversations["c-1"] = {"with": "BensBot", "unread": 1, "messages": [
        {"from": "BensBot", "message": "hello from Ben"}]}
    inbox = await rig.ok("moltbook_read_dms")
    assert '"total_unread": 1' in inbox.output and '"conversation_id": "c-1"' in inbox.output
    talk = await rig.ok("moltbook_read_dms", conversation_id="c-1")
    assert "hello from Ben" in talk.output
    await rig.ok("moltbook_send_dm", conversation_id="c-1", message=DM_TEXT,
                 needs_human_input=True)
    assert server.world.conversations["c-1"]["messages"][-1] == {
        "from": "entity-a", "message": DM_TEXT, "needs_human_input": True}
    await rig.ok("moltbook_send_dm", to="BensBot", message=DM_TEXT)
    assert server.world.dm_requests == [{"to": "BensBot", "message": DM_TEXT}]

    # Every request went to the server with the key, and its audit names the endpoint.
    assert all(s.headers.get("Authorization") == f"Bearer {KEY}" for s in server.requests())
    events = await rig.drain()
    endpoints = {e.data["endpoint"] for e in events if e.type == "moltbook_request"}
    assert {"GET /home", "POST /posts", "POST /verify", "POST /posts/{id}/comments",
            "GET /posts/{id}", "POST /agents/dm/conversations/{id}/send",
            "POST /agents/dm/request"} <= endpoints
    calls = [e for e in events if e.type == "call" and e.data["tool"] == "moltbook_post"]
    assert calls[0].data["summary"] == ("moltbook_post: GET /agents/me 200; POST /posts 201; "
                                        "POST /verify 200 -> verified")
    no_secrets_in(rig, KEY, DM_TEXT, "hello from Ben")


async def test_bad_arguments_are_refusals(rig: Rig) -> None:
    cases: list[tuple[str, dict[str, Any], str]] = [
        ("moltbook_search", {}, "missing argument 'query'"),
        ("moltbook_search", {"query": "x" * 501}, "the limit is 500"),
        ("moltbook_feed", {"sort": "best"}, "must be one of hot, new, top, rising"),
        ("moltbook_feed", {"limit": 0}, "must be from 1 to 50"),
        ("moltbook_home", {"verbose": True}, "unknown argument 'verbose'"),
        ("moltbook_post", {"title": "t"}, "either content (a text post) or url"),
        ("moltbook_read_post", {"post_id": ".."}, "is not an id or a name"),
        ("moltbook_send_dm", {"message": "hi there friend"}, "either to"),
        ("moltbook_send_dm", {"to": "Ben", "message": "short"}, "10 to 1000 characters"),
    ]
    for tool, args, error in cases:
        result = await rig.call(tool, **args)
        assert not result.ok and error in result.error, (tool, result.error)
    slash = await rig.call("moltbook_read_post", post_id="../agents/me")
    assert not slash.ok and "404 to GET /posts/{id}" in slash.error  # quoted, one segment
    assert rig.server.requests()[-1].path == "/api/v1/posts/..%2Fagents%2Fme"


# ---- the limits -----------------------------------------------------------------------------


async def test_posts_and_comments_keep_the_limits(nats_server: NatsServer, tmp_path: Path,
                                                  server: MoltbookServer,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    server.world.challenge_every = False  # published at once (a trusted agent)
    async with rig_of(nats_server.url, tmp_path, server, post_interval=1.0,
                      comment_interval=0.4, comments_per_day=3) as rig:
        first = await rig.ok("moltbook_post", title="one", content="x")
        assert first.output.endswith("published")
        second = await rig.call("moltbook_post", title="two", content="x")
        assert not second.ok
        assert second.error.startswith("Moltbook allows one post per 1 s; the last was ")
        assert "the next post is allowed in 1 s" in second.error
        assert posts_made(server) == 1  # refused before anything was sent
        await asyncio.sleep(1.0)
        await rig.ok("moltbook_post", title="three", content="x")
        post_id = first.data["id"]
        for _ in range(3):  # the second and third wait out the interval
            await rig.ok("moltbook_comment", post_id=post_id, content="c")
        fourth = await rig.call("moltbook_comment", post_id=post_id, content="c")
        assert not fourth.ok and fourth.error.startswith(
            "Moltbook allows 3 comments a day and this entity made them within the last 24 h")
    comments = [s.at for s in server.requests(f"/posts/{post_id}/comments")]
    assert len(comments) == 3
    assert all(b - a >= 0.4 for a, b in itertools.pairwise(comments))
    # A restart resets nothing: the day's comments and the last post are on disk.
    async with rig_of(nats_server.url, tmp_path, server, post_interval=1000.0,
                      comment_interval=0.4, comments_per_day=3) as again:
        assert "next post is allowed in" in (await again.call(
            "moltbook_post", title="four", content="x")).error
        assert "3 comments a day" in (await again.call(
            "moltbook_comment", post_id=post_id, content="c")).error
    assert posts_made(server) == 2


async def test_a_new_account_has_the_first_days_limits_and_no_dms(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    with MoltbookServer() as server:
        server.add_agent(KEY, age=timedelta(hours=2))
        server.world.challenge_every = False
        async with rig_of(nats_server.url, tmp_path, server, post_interval=0.25,
                          dms="allow") as rig:
            await rig.ok("moltbook_post", title="one", content="x")
            await asyncio.sleep(0.4)  # past the configured 0.25 s, not past 4 x 0.25
            early = await rig.call("moltbook_post", title="two", content="x")
            assert not early.ok and "(stricter in an account's first 24 h)" in early.error
            dm = await rig.call("moltbook_send_dm", to="BensBot", message=DM_TEXT)
            assert not dm.ok and "blocks DMs in an account's first 24 h" in dm.error
            status = await rig.ok("moltbook_status", "ctl")
            assert "account:      new: first-24 h limits" in status.output
        assert server.world.dm_requests == [] and posts_made(server) == 1


async def test_the_tool_actor_paces_requests_per_minute(
        nats_server: NatsServer, tmp_path: Path, server: MoltbookServer,
        monkeypatch: pytest.MonkeyPatch) -> None:
    """requests_per_minute from the config: past it, a call waits (its request is not
    sent) instead of going out or failing; the wait is a minute, so it is cut short here."""
    monkeypatch.setenv(ENV, KEY)
    # (A stop waits drain_timeout for the call still waiting, then cuts it short.)
    quick_stop = RuntimeSection(backoff_initial=0.01, drain_timeout=0.5)
    async with rig_of(nats_server.url, tmp_path, server, quick_stop,
                      requests_per_minute=2) as rig:
        async with asyncio.TaskGroup() as tg:
            calls = [tg.create_task(rig.call("moltbook_home")) for _ in range(3)]
            await asyncio.sleep(1.5)
            assert len(server.requests("/home")) == 2
            assert [c.done() for c in calls].count(True) == 2
            calls[2].cancel()  # it would go a minute after the first answer
    assert all(c.result().ok for c in calls[:2])


async def test_429_through_the_tool_is_waited_out(rig: Rig) -> None:
    rig.server.world.throttle = ["1"]
    home = await rig.ok("moltbook_home")
    assert home.ok
    first, second = (s.at for s in rig.server.requests("/home"))
    assert second - first >= 1.0


# ---- verification ----------------------------------------------------------------------------


async def test_three_failed_challenges_stop_posting_until_the_operator_resets(
        rig: Rig) -> None:
    server = rig.server
    server.world.challenge_every = False
    post_id = (await rig.ok("moltbook_post", title="base", content="x")).data["id"]
    server.world.challenge_every = True
    server.world.wrong_answers = True  # our answers are refused, as a wrong one would be
    for count in (1, 2):
        failed = await rig.call("moltbook_comment", post_id=post_id, content=f"c{count}")
        assert not failed.ok
        assert failed.error.startswith("Moltbook's verification of the comment failed: "
                                       "Moltbook answered 400 to POST /verify: Incorrect answer")
        assert f"Failures in a row: {count}; after 3 this entity stops" in failed.error
    third = await rig.call("moltbook_comment", post_id=post_id, content="c3")
    assert "Failures in a row: 3. posting and commenting on Moltbook are stopped" in third.error
    assert "suspends an account after 10" in third.error
    assert "`entityctl moltbook reset`" in third.error
    for tool, args in (("moltbook_comment", {"post_id": post_id, "content": "c4"}),
                       ("moltbook_post", {"title": "t", "content": "x"})):
        stopped = await rig.call(tool, **args)
        assert not stopped.ok and stopped.error.startswith(
            "posting and commenting on Moltbook are stopped: 3 verification challenges "
            "failed in a row")
    assert len(server.requests(f"/posts/{post_id}/comments")) == 3  # nothing more was sent
    assert [right for _, right in server.world.verifications] == [False] * 3

    status = await rig.ok("moltbook_status", "ctl")
    assert "verification: 3 failure(s) in a row; STOPPED" in status.output
    assert status.data["verification_failures"] == 3
    reset = await rig.ok("moltbook_reset", "ctl")
    assert reset.output.startswith("verification failures in a row: 3 -> 0")
    server.world.wrong_answers = False
    answered = await rig.ok("moltbook_comment", post_id=post_id, content="c5")
    assert "the comment is published" in answered.output
    assert (await rig.ok("moltbook_status", "ctl")).data["verification_failures"] == 0


async def test_a_success_resets_the_count_and_an_expired_challenge_fails(rig: Rig) -> None:
    server = rig.server
    server.world.challenge_every = False
    post_id = (await rig.ok("moltbook_post", title="base", content="x")).data["id"]
    server.world.challenge_every = True
    server.world.challenge_ttl = -1  # expired before it could be answered
    expired = await rig.call("moltbook_comment", post_id=post_id, content="late")
    assert "the challenge expired before it could be answered" in expired.error
    assert server.requests("/verify") == []  # no answer is sent for it
    server.world.challenge_ttl = 300
    await rig.ok("moltbook_comment", post_id=post_id, content="in time")
    assert (await rig.ok("moltbook_status", "ctl")).data["verification_failures"] == 0


# ---- DMs --------------------------------------------------------------------------------------


async def test_dms_off_approve_and_allow(nats_server: NatsServer, tmp_path: Path,
                                         server: MoltbookServer,
                                         monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(ENV, KEY)
    async with rig_of(nats_server.url, tmp_path, server, dms="off") as rig:
        off = await rig.call("moltbook_send_dm", to="BensBot", message=DM_TEXT)
        assert not off.ok and 'sending Moltbook DMs is off ([moltbook] dms = "off")' in off.error
        raw = list(rig.raw)
    async with rig_of(nats_server.url, tmp_path, server, dms="approve") as rig:
        queued = await rig.ok("moltbook_send_dm", to="BensBot", message=DM_TEXT)
        dm_id = queued.data["id"]
        assert queued.output == (f"the DM to agent BensBot is queued as {dm_id}, not sent: "
                                 f"the operator sends it with `entityctl moltbook approve "
                                 f"{dm_id}`")
        other = (await rig.ok("moltbook_send_dm", to="Other", message=DM_TEXT + "!")).data["id"]
        assert server.world.dm_requests == []  # nothing goes before the operator says so
        pending = await rig.ok("moltbook_pending", "ctl")
        assert f"{dm_id}  to agent BensBot" in pending.output and DM_TEXT in pending.output
        assert len(pending.data["pending"]) == 2
        not_yours = await rig.call("moltbook_approve", "orchestrator", id=dm_id)
        assert not not_yours.ok
        approved = await rig.ok("moltbook_approve", "ctl", id=dm_id)
        assert approved.output == f"sent DM {dm_id} to agent BensBot"
        assert server.world.dm_requests == [{"to": "BensBot", "message": DM_TEXT}]
        dropped = await rig.ok("moltbook_reject", "ctl", id=other)
        assert dropped.output == f"dropped DM {other} to agent Other"
        assert (await rig.ok("moltbook_pending", "ctl")).output == "(no DM waits for approval)"
        again = await rig.call("moltbook_approve", "ctl", id=dm_id)
        assert not again.ok and "no DM waits for approval" in again.error
        await rig.drain()
        raw += rig.raw
    dms_file = tmp_path / ENTITY / "moltbook-dms.json"
    assert dms_file.stat().st_mode & 0o777 == 0o600
    blob = b"".join(raw)
    assert DM_TEXT.encode() not in blob and KEY.encode() not in blob


# ---- the key ----------------------------------------------------------------------------------


async def test_register_keeps_the_key_0600_and_never_shows_it(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with MoltbookServer() as server:
        async with rig_of(nats_server.url, tmp_path, server) as rig:
            assert "moltbook_home" not in await rig.names("orchestrator")
            missing = await rig.call("moltbook_home")
            assert not missing.ok and missing.error.startswith(
                f"no Moltbook key: set ${ENV} in the daemon's environment, or register with "
                "`entityctl moltbook register NAME`")
            not_yours = await rig.call("moltbook_register", "orchestrator", name="x")
            assert not not_yours.ok
            registered = await rig.ok("moltbook_register", "ctl", name="entity-a",
                                      description="builds tools")
            key_file = tmp_path / ENTITY / "keys" / "moltbook.key"
            key = key_file.read_text().strip()
            assert key.startswith("moltbook_") and key in server.world.agents
            assert key_file.stat().st_mode & 0o777 == 0o600
            assert "claim URL, for the entity's human: https://www.moltbook.com/claim/" \
                in registered.output
            assert "verification code: reef-X4B2" in registered.output
            assert key not in registered.output and key not in json.dumps(registered.data)
            assert server.requests("/agents/register")[0].headers.get("Authorization") is None
            # Now the key is there: the tools are offered and work with it.
            assert "moltbook_home" in await rig.names("orchestrator")
            await rig.ok("moltbook_home")
            twice = await rig.call("moltbook_register", "ctl", name="entity-a2")
            assert not twice.ok and "already has a Moltbook key" in twice.error
            # The sandbox can read neither the key's file nor the key from its environment.
            shown = await rig.call("shell", "ctl", command=f"cat {key_file}; env")
            assert key not in shown.output
            await rig.drain()
            no_secrets_in(rig, key)


async def test_register_refuses_a_key_file_in_the_workspace(
        nats_server: NatsServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(ENV, raising=False)
    with MoltbookServer() as server:
        async with rig_of(nats_server.url, tmp_path, server,
                          api_key_file="workspace/moltbook.key") as rig:
            refused = await rig.call("moltbook_register", "ctl", name="entity-a")
            assert not refused.ok and "lies in the workspace" in refused.error
        assert server.requests() == []  # refused before registering an agent for nothing


async def test_a_refused_key_is_a_clear_error(nats_server: NatsServer, tmp_path: Path,
                                              server: MoltbookServer,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    wrong = "moltbook_sk_FAKE_wrong_0000"
    monkeypatch.setenv(ENV, wrong)
    async with rig_of(nats_server.url, tmp_path, server) as rig:
        refused = await rig.call("moltbook_feed")
        assert not refused.ok and refused.error.startswith(
            "Moltbook refused the key for GET /feed (401): Invalid API key")
        status = await rig.call("moltbook_status", "ctl")
        assert not status.ok and "refused the key" in status.error
        await rig.drain()
        no_secrets_in(rig, wrong)


async def test_the_key_is_in_no_event_and_not_in_the_sandbox(rig: Rig) -> None:
    env = await rig.call("shell", "ctl", command="env")
    assert env.ok and "PATH=" in env.output
    assert KEY not in env.output and ENV not in env.output
    assert os.environ[ENV] == KEY  # the daemon's side has it
    await rig.ok("moltbook_home")
    await rig.ok("moltbook_post", title="t", content="c")
    await rig.ok("moltbook_status", "ctl")
    events = await rig.drain()
    assert {e.type for e in events} >= {"call", "moltbook_request"}
    no_secrets_in(rig, KEY)
