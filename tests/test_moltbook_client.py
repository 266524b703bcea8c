"""The Moltbook client, its pacing, its key and its limits' state, against
tests/moltbook_server.py (a local server following Moltbook's documented API; not Moltbook).

Times are asserted on the server's own record of when each request arrived."""

from __future__ import annotations

import asyncio
import email.utils
import os
import time
from datetime import timedelta
from pathlib import Path

import pytest

from actors.moltbook import (
    ApiError,
    KeyRefused,
    KeySource,
    NoKey,
    RateLimited,
    RedirectRefused,
    Unreachable,
)
from actors.moltbook.client import MoltbookClient
from actors.moltbook.limits import ActionLimits, RequestPacer
from actors.moltbook.state import StateFile
from entityd.config import Config, EntitySection, MoltbookSection
from tests.helpers import free_port
from tests.moltbook_server import MoltbookServer, Recorder, moltbook

KEY = "moltbook_sk_test_client_0123456789abcdef"
pytestmark = pytest.mark.timeout(60)


def client_of(server: MoltbookServer, key: str | None = KEY, **kwargs: object
              ) -> MoltbookClient:
    return MoltbookClient(server.base_url, key, **kwargs)  # type: ignore[arg-type]


def arrivals(server: MoltbookServer, prefix: str = "/home") -> list[float]:
    return [seen.at for seen in server.requests(prefix)]


async def test_a_burst_is_paced_and_never_sent_past_the_limit() -> None:
    limit, window = 3, 1.0
    with moltbook(KEY) as server:
        client = client_of(server, pacer=RequestPacer(limit, window))
        started = time.monotonic()
        replies = await asyncio.gather(*(client.call("GET", "/home", "GET /home")
                                         for _ in range(10)))
        took = time.monotonic() - started
        times = arrivals(server)
    assert all(reply.status == 200 for reply in replies)
    assert len(times) == 10
    # In any window, at most `limit` requests arrived: the (i + limit)th came a whole
    # window after the ith.
    for first, later in zip(times, times[limit:], strict=False):
        assert later - first >= window, times
    assert took >= 3 * window  # ten requests, three a window: paced, not refused
    assert times[:limit][-1] - times[0] < window / 2  # the first three went at once


async def test_pacing_reports_the_wait() -> None:
    pacer = RequestPacer(1, 0.3)
    async with pacer.slot() as first:
        pass
    async with pacer.slot() as second:
        pass
    assert first.waited < 0.05 and second.waited >= 0.25


async def test_429_with_retry_after_seconds_is_waited_out() -> None:
    with moltbook(KEY) as server:
        server.world.throttle = ["1"]
        reply = await client_of(server).call("GET", "/home", "GET /home")
        times = arrivals(server)
    assert reply.status == 200
    assert len(times) == 2 and times[1] - times[0] >= 1.0


async def test_429_with_retry_after_as_a_date_is_waited_out() -> None:
    with moltbook(KEY) as server:
        server.world.throttle = [email.utils.formatdate(time.time() + 2, usegmt=True)]
        reply = await client_of(server).call("GET", "/home", "GET /home")
        times = arrivals(server)
    assert reply.status == 200
    assert len(times) == 2 and times[1] - times[0] >= 0.9  # a date has whole seconds


async def test_429_longer_than_we_wait_is_an_error_saying_when() -> None:
    with moltbook(KEY) as server:
        server.world.throttle = ["600"]
        with pytest.raises(RateLimited) as raised:
            await client_of(server, max_wait=5.0).call("GET", "/home", "GET /home")
        assert len(arrivals(server)) == 1
    assert str(raised.value).startswith("Moltbook rate limited GET /home: retry after 600 s")
    assert raised.value.retry_after == 600


async def test_429_again_and_again_gives_up() -> None:
    with moltbook(KEY) as server:
        server.world.throttle = ["0", "0", "0", "0"]
        with pytest.raises(RateLimited):
            await client_of(server).call("GET", "/home", "GET /home")
        assert len(arrivals(server)) == 3  # the call and two retries


@pytest.mark.parametrize("where", ["other port", "other host name", "other scheme"])
async def test_a_redirect_to_another_origin_does_not_carry_the_key(where: str) -> None:
    with moltbook(KEY) as server, Recorder() as other:
        target = {"other port": f"http://127.0.0.1:{other.port}/api/v1/home",
                  "other host name": f"http://localhost:{other.port}/api/v1/home",
                  "other scheme": f"https://127.0.0.1:{server.port}/api/v1/home"}[where]
        server.world.redirect["/api/v1/home"] = target
        with pytest.raises(RedirectRefused) as raised:
            await client_of(server).call("GET", "/home", "GET /home")
        message = str(raised.value)
        assert "www" in message and "not followed" in message
        assert KEY not in message
        # Nothing reached the other server, so no Authorization header either.
        assert not any("Authorization" in seen.headers for seen in other.seen)
        assert other.seen == []
        assert len(server.requests("/home")) == 1


async def test_a_redirect_within_the_origin_is_followed_with_the_key() -> None:
    with moltbook(KEY) as server:
        server.world.redirect["/api/v1/feed"] = "/api/v1/posts?sort=new"
        reply = await client_of(server).call("GET", "/feed", "GET /feed")
        seen = server.requests()
    assert reply.status == 200 and "posts" in reply.data
    assert [s.path for s in seen] == ["/api/v1/feed", "/api/v1/posts?sort=new"]
    assert all(s.headers.get("Authorization") == f"Bearer {KEY}" for s in seen)


async def test_moltbook_errors_become_messages() -> None:
    with moltbook(KEY) as server:
        with pytest.raises(ApiError) as raised:
            await client_of(server).call("GET", "/posts/nope", "GET /posts/{id}")
    assert str(raised.value) == "Moltbook answered 404 to GET /posts/{id}: Post not found"
    assert raised.value.status == 404


async def test_a_refused_key_is_a_clear_error_without_the_key() -> None:
    wrong = "moltbook_sk_wrong_key_987654321"
    with moltbook(KEY) as server:
        with pytest.raises(KeyRefused) as raised:
            await client_of(server, key=wrong).call("GET", "/agents/me", "GET /agents/me")
    message = str(raised.value)
    assert message.startswith("Moltbook refused the key for GET /agents/me (401): "
                              "Invalid API key (hint: Check your API key)")
    assert wrong not in message and "api_key_env" in message


async def test_the_key_is_scrubbed_from_whatever_moltbook_says() -> None:
    with moltbook(KEY, name=KEY) as server:  # an answer that holds the key
        reply = await client_of(server).call("GET", "/agents/me", "GET /agents/me")
    assert reply.data["agent"]["name"] == "***"
    assert KEY not in repr(reply)


async def test_no_answer_in_time_and_no_server_are_clear_errors() -> None:
    with moltbook(KEY) as server:
        server.world.delay = 2.0
        with pytest.raises(Unreachable) as slow:
            await client_of(server, timeout=0.3).call("GET", "/home", "GET /home")
    assert str(slow.value) == "Moltbook did not answer GET /home within 0.3 s"
    closed = MoltbookClient(f"http://127.0.0.1:{free_port()}/api/v1", KEY)
    with pytest.raises(Unreachable) as refused:
        await closed.call("GET", "/home", "GET /home")
    assert "cannot reach Moltbook at http://127.0.0.1:" in str(refused.value)


def test_the_key_goes_over_https_only_but_to_loopback() -> None:
    with pytest.raises(KeyRefused, match="only over https"):
        MoltbookClient("http://www.moltbook.com/api/v1", KEY)
    MoltbookClient("http://www.moltbook.com/api/v1", None)  # registering sends no key
    MoltbookClient("https://www.moltbook.com/api/v1", KEY)


async def test_every_request_is_audited_without_the_key() -> None:
    records: list[dict[str, object]] = []

    async def audit(record: dict[str, object]) -> None:
        records.append(record)

    with moltbook(KEY) as server:
        client = client_of(server, audit=audit)
        await client.call("GET", "/search", "GET /search", query={"q": "memory"})
        with pytest.raises(ApiError):
            await client.call("GET", "/posts/abc", "GET /posts/{id}")
    assert [(r["endpoint"], r["status"]) for r in records] == [
        ("GET /search", 200), ("GET /posts/{id}", 404)]
    assert KEY not in repr(records) and "memory" not in repr(records)


# ---- the key's sources --------------------------------------------------------------------


def config_in(tmp_path: Path, **moltbook: object) -> Config:
    data = tmp_path / "entity-a"
    data.mkdir(exist_ok=True)
    return Config(entity=EntitySection(name="entity-a", data_dir=str(data)),
                  moltbook=MoltbookSection(**moltbook))  # type: ignore[arg-type]


def test_no_key_says_how_to_get_one(tmp_path: Path) -> None:
    source = KeySource.of(config_in(tmp_path))
    assert not source.configured({})
    with pytest.raises(NoKey) as raised:
        source.load({})
    message = str(raised.value)
    assert "$MOLTBOOK_API_KEY" in message and "entityctl moltbook register NAME" in message
    assert str(tmp_path / "entity-a" / "keys" / "moltbook.key") in message
    assert source.load({"MOLTBOOK_API_KEY": f" {KEY}\n"}) == KEY


def test_a_key_file_must_be_0600_and_outside_the_workspace(tmp_path: Path) -> None:
    source = KeySource.of(config_in(tmp_path))
    source.store(KEY)
    assert source.path.stat().st_mode & 0o777 == 0o600
    assert source.path.parent.stat().st_mode & 0o777 == 0o700
    assert source.load({}) == KEY
    os.chmod(source.path, 0o644)
    with pytest.raises(KeyRefused, match="chmod 600"):
        source.load({})
    with pytest.raises(Exception, match="already holds a key"):
        source.store("another")
    inside = KeySource.of(config_in(tmp_path, api_key_file="workspace/moltbook.key"))
    with pytest.raises(KeyRefused, match="lies in the workspace"):
        inside.store(KEY)
    with pytest.raises(KeyRefused, match="lies in the workspace"):
        (tmp_path / "entity-a" / "workspace").mkdir()
        (tmp_path / "entity-a" / "workspace" / "moltbook.key").write_text(KEY)
        inside.load({})


# ---- our limits' state ----------------------------------------------------------------------


def test_the_limits_survive_a_restart(tmp_path: Path) -> None:
    path = tmp_path / "moltbook.state"
    now = time.time()
    store = StateFile(path)
    store.state.account_created = now - 3 * 86400
    limits = ActionLimits(store, 1800, 20, 3)
    limits.record("post", now - 60)
    for ago in (30, 20, 10):
        limits.record("comment", now - ago)
    assert path.stat().st_mode & 0o777 == 0o600
    again = ActionLimits(StateFile(path), 1800, 20, 3)  # a restart
    assert again.post_wait(now) == pytest.approx(1740)
    wait, daily = again.comment_wait(now)
    assert daily and wait == pytest.approx(86400 - 30)
    assert "3 comments a day" in again.why_no_comment(now, wait, daily)
    assert "next post is allowed in 29 min" in again.why_no_post(now, again.post_wait(now))


def test_a_new_or_unknown_account_has_the_first_days_limits(tmp_path: Path) -> None:
    store = StateFile(tmp_path / "moltbook.state")
    limits = ActionLimits(store, 1800, 20, 50)
    now = time.time()
    unknown = limits.effective(now)
    assert unknown.new_account
    assert (unknown.post_interval, unknown.comment_interval, unknown.comments_per_day) == \
        (7200, 60, 20)  # exactly RULES.md's first-day limits
    store.state.account_created = now - timedelta(hours=23).total_seconds()
    assert limits.effective(now).new_account
    store.state.account_created = now - timedelta(hours=25).total_seconds()
    established = limits.effective(now)
    assert not established.new_account
    assert (established.post_interval, established.comment_interval,
            established.comments_per_day) == (1800, 20, 50)


def test_a_damaged_state_file_is_an_error_not_a_reset(tmp_path: Path) -> None:
    path = tmp_path / "moltbook.state"
    path.write_text("{not json")
    with pytest.raises(OSError, match="fix or remove it"):
        StateFile(path)


def test_the_package_public_surface() -> None:
    import actors.moltbook as moltbook

    assert sorted(moltbook.__all__) == sorted([
        "MODEL_TOOLS", "OPERATOR_TOOLS", "ApiError", "KeyRefused", "KeySource",
        "MoltbookError", "MoltbookTools", "NoKey", "RateLimited", "RedirectRefused",
        "Refused", "Unreachable"])
    assert all(hasattr(moltbook, name) for name in moltbook.__all__)
