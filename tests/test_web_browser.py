"""The web page in a real headless Chromium (issue 12), over two real daemons of one
federation with the scripted model: the one-time login, a goal's steps streaming into the
chat, talking to the peer, the todo list, a delegated task changing state live, and the
activity stream resuming exactly (compared with the EVENTS stream) after a reload and
after the web actor is restarted through the federation. Screenshots of each view are
saved under the test's temp dir (ENTITYD_DOCS_SCREENSHOT=1 also writes docs/web-page.png).
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
from collections.abc import AsyncIterator
from contextlib import AsyncExitStack, asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from playwright.async_api import Browser, Page, Route, expect

from actors.llm.scripted import Reply, ScriptedLLMServer
from actors.messages import MemoryAdd, MemoryRef, TodoAdd, TodoItems
from bench.ports import free_port
from bench.rig import Member, build, enable_web, running
from entityd import config as config_mod
from entityd.app.ctl_watch import add_peer_keys
from entityd.client import EntityClient
from tests.peer_model import route
from tests.web_helpers import browser, login_link

pytestmark = [pytest.mark.timeout(120), pytest.mark.asyncio(loop_scope="module")]

A, B = "entity-a", "entity-b"
REPO = Path(__file__).resolve().parent.parent
DOCS_SHOT_ENV = "ENTITYD_DOCS_SCREENSHOT"
WAIT_MS = 30_000  # for what a model's turn or a peer's work must happen first
ASK_S = 10.0
# The flood's pace (a load's shape, not a wait on anything) and its most rounds, each an
# event per entity: at most 1600 events, and the page keeps 2000.
FLOOD_GAP_S, FLOOD_MAX = 0.01, 800
ALLOWANCE = 500  # minted to entity-a
PRICE = 20  # what entity-a offers entity-b for the delegated task
PAUSE, PAUSE_S = "PAUSE", 0.5  # a goal whose answer the model takes a moment over
VIEWS = ("chat", "activity", "peers", "todo", "tasks", "ledger", "cost", "code")

expect.set_options(timeout=WAIT_MS)


@dataclass
class Pair:
    a: Member
    b: Member
    chromium: Browser
    clients: dict[str, EntityClient]


def model(request: dict[str, Any]) -> Reply:
    """peer_model's route (which reads what was asked, not the memory recalled for it:
    these tests share one federation, and a later turn recalls an earlier one's words).
    A goal saying PAUSE gets its final answer PAUSE_S after its last step."""
    messages = request.get("messages") or []
    reply = route(request)
    goal = next((str(m.get("content")) for m in messages if m.get("role") == "user"), "")
    if PAUSE in goal and request.get("tools") and reply.content and not reply.tool_calls:
        return dataclasses.replace(reply, delay=PAUSE_S)
    return reply


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def pair(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Pair]:
    """entity-a and entity-b, each with its page on a fixed port (a restarted web actor
    must come back where the open page reconnects), and one headless Chromium."""
    root = tmp_path_factory.mktemp("web-pair")
    async with ScriptedLLMServer(model) as llm:
        fed = build(root, [A, B], llm_url=llm.base_url)
        for member in fed.members.values():
            enable_web(member.config, free_port())
        async with running(fed), browser() as chromium, AsyncExitStack() as stack:
            await fed.discovered()
            for command in (["init"], ["mint", A, str(ALLOWANCE), "--memo", "allowance"]):
                done = await asyncio.to_thread(fed.economy, *command)
                assert done.returncode == 0, done.stdout + done.stderr
            clients = {name: await stack.enter_async_context(
                EntityClient(config_mod.load(m.config))) for name, m in fed.members.items()}
            yield Pair(fed[A], fed[B], chromium, clients)


@asynccontextmanager
async def logged_in(pair: Pair, member: Member, *, width: int = 1280,
                    height: int = 800) -> AsyncIterator[Page]:
    """A fresh browser (no cookie) logged in to `member`'s page with a one-time link,
    its activity stream live; no script error on it by the end."""
    context = await pair.chromium.new_context(viewport={"width": width, "height": height})
    errors: list[str] = []
    try:
        page = await context.new_page()
        page.on("pageerror", lambda exc: errors.append(str(exc)))
        _, link = await login_link(member)
        await page.goto(link)
        await expect(page.locator("#live")).to_have_text("live")
        await expect(page.locator("#entity")).to_have_text(member.name)
        yield page
    finally:
        await context.close()
    assert not errors, errors


async def show(page: Page, tab: str) -> None:
    await page.click(f"#tabs button[data-tab={tab}]")
    await expect(page.locator(f"section#{tab}")).to_be_visible()


async def send(page: Page, text: str, to: str = "") -> None:
    if to:
        await expect(page.locator(f"#talk-to option[value='{to}']")).to_be_attached()
    await page.select_option("#talk-to", to)
    await page.fill("#goal-text", text)
    await page.click("#goal-form button[type=submit]")


async def page_seqs(page: Page) -> list[int]:
    """The own events' sequence numbers in the page's list (its peers' are numbered in
    the feed: data-feed-seq)."""
    seqs: list[int] = await page.eval_on_selector_all(
        "#events li[data-seq]", "items => items.map((li) => Number(li.dataset.seq))")
    return seqs


async def stream_seqs(client: EntityClient, after: int, until: int) -> list[int]:
    """The sequence numbers of the verified events in the entity's own history above
    `after` up to `until`, as a reader of its own reads them."""
    reader = client.event_reader()
    await add_peer_keys(client, reader)
    reader.refresh = lambda: add_peer_keys(client, reader)
    seqs: list[int] = []
    async with reader.follow(after=after) as events:
        while not seqs or seqs[-1] < until:
            stored = await events.next(ASK_S)
            assert stored is not None, f"the stream ends before {until}: {seqs[-5:]}"
            seqs.append(stored.seq)
    assert seqs[-1] == until
    return seqs


async def assert_shows_the_feed_exactly(page: Page, client: EntityClient) -> None:
    """The peers' events the page lists (numbered in the feed, EVENTS) are the feed's,
    from where the page's view of it starts up to the last shown: none missing, none
    twice, in order."""
    start = int(str(await page.evaluate("sessionStorage.getItem('from')")).split(".")[1])
    shown: list[int] = await page.eval_on_selector_all(
        "#events li[data-feed-seq]", "items => items.map((li) => Number(li.dataset.feedSeq))")
    assert shown and shown == sorted(set(shown)), shown
    reader = client.event_reader()
    await add_peer_keys(client, reader)
    reader.refresh = lambda: add_peer_keys(client, reader)
    expected: list[int] = []
    async with reader.follow(after=start, feed=True) as events:
        while not expected or expected[-1] < shown[-1]:
            stored = await events.next(ASK_S)
            assert stored is not None, f"the feed ends before {shown[-1]}"
            if stored.entity != client.config.name:
                expected.append(stored.seq)
    assert shown == expected, (f"missing {sorted(set(expected) - set(shown))}, "
                               f"extra {sorted(set(shown) - set(expected))}")


async def mark(client: EntityClient, text: str) -> int:
    """A todo item added on the entity; the stream sequence of its todo_changed event."""
    reader = client.event_reader()
    before = await reader.last_seq()
    items: TodoItems = await client.ask("memory", TodoAdd(text), ASK_S)
    item = next(i for i in items.items if i.text == text)
    async with reader.follow(after=before) as events:
        while True:
            stored = await events.next(ASK_S)
            assert stored is not None, f"no todo_changed event for {text!r}"
            event = stored.envelope.message
            if (stored.entity == client.config.name and event.type == "todo_changed"
                    and event.data.get("id") == item.id and event.data.get("change") == "added"):
                return stored.seq


async def assert_shows_the_stream_exactly(page: Page, client: EntityClient, until: int) -> None:
    """Every event the page lists, from where its view starts up to `until`, is the
    stream's: none missing, none twice, in order."""
    await page.wait_for_selector(f'#events li[data-seq="{until}"]', state="attached")
    start = int(str(await page.evaluate("sessionStorage.getItem('from')")).split(".")[0])
    seqs = await page_seqs(page)
    assert len(seqs) == len(set(seqs)), "an event is shown twice"
    assert seqs == sorted(seqs), "events out of order"
    shown = [s for s in seqs if s <= until]
    expected = await stream_seqs(client, start, until)
    assert shown == expected, (f"missing {sorted(set(expected) - set(shown))}, "
                               f"extra {sorted(set(shown) - set(expected))}")


class Flood:
    """Events from both entities (memories added), one after another, until stopped."""

    def __init__(self, pair: Pair) -> None:
        self.clients = pair.clients
        self.made = 0
        self.progress = asyncio.Condition()
        self.stopping = asyncio.Event()

    async def run(self) -> None:
        for n in range(FLOOD_MAX):
            if self.stopping.is_set():
                return
            for name, client in self.clients.items():
                ref: MemoryRef = await client.ask(
                    "memory", MemoryAdd("fact", f"{name} fact {n}"), ASK_S)
                assert ref.id
                async with self.progress:
                    self.made += 1
                    self.progress.notify_all()
            await asyncio.sleep(FLOOD_GAP_S)
        raise AssertionError(f"still flooding after {FLOOD_MAX} rounds")

    async def more(self, count: int) -> None:
        """Until `count` more events than now are made."""
        async with self.progress:
            target = self.made + count
            await self.progress.wait_for(lambda: self.made >= target)


# ---- the tests --------------------------------------------------------------------------


async def test_the_login_link_works_once_and_the_page_goes_live(pair: Pair) -> None:
    url, link = await login_link(pair.a)
    context = await pair.chromium.new_context()
    try:
        page = await context.new_page()
        await page.goto(link)
        assert page.url == url  # redirected to the page, the link out of the address bar
        await expect(page.locator("#entity")).to_have_text(A)
        await expect(page.locator("#live")).to_have_text("live")
        assert await page.title() == f"{A} · entityd"
        # The session cookie is out of the page's scripts' reach.
        assert await page.evaluate("document.cookie") == ""
        assert [c["httpOnly"] for c in await context.cookies()] == [True]
    finally:
        await context.close()

    context = await pair.chromium.new_context()
    try:
        page = await context.new_page()
        again = await page.goto(link)
        assert again is not None and again.status == 403
        await expect(page.locator("body")).to_contain_text("used or expired")
        assert await context.cookies() == []
        await page.goto(url)  # no session: the page sends the browser to the login
        assert page.url == url + "login"
    finally:
        await context.close()


async def test_a_goal_streams_its_steps_then_its_answer(pair: Pair) -> None:
    async with logged_in(pair, pair.a) as page, asyncio.TaskGroup() as group:
        # Watched from before the goal is sent: the new turn showing its steps but no
        # answer yet (the model pauses before it) is the proof that steps stream in.
        streamed = group.create_task(page.wait_for_function(
            """() => [...document.querySelectorAll('.turn')].some(
                 (t) => t.querySelectorAll('.steps li').length === 2
                        && !t.querySelector('.answer'))""",
            polling="raf", timeout=WAIT_MS))
        await send(page, f'{PAUSE}, then note it. CALL todo_add {{"text": "water the plants"}}')
        await streamed
        turn = page.locator(".turn").last
        await expect(turn.locator(".answer")).to_contain_text("done:")
        assert (await turn.get_attribute("id") or "").startswith("turn-web-")
        await expect(turn.locator(".you")).to_contain_text("water the plants")
        steps = await turn.locator(".steps li").all_inner_texts()
        # The model's call, then the tool's result, each a step as it happened.
        assert steps[0] == "→ todo_add", steps
        assert steps[1].startswith("todo_add: ") and "water the plants" in steps[1], steps
        await expect(turn.locator(".answer")).to_contain_text("water the plants")
        await expect(turn.locator(".answer .meta")).to_contain_text("steps")
    items = (await pair.a.ctl_json("todo"))["items"]
    assert any(i["text"] == "water the plants" for i in items), items


async def test_a_goal_whose_reply_comes_after_its_events_still_shows_them(
        pair: Pair) -> None:
    async with logged_in(pair, pair.a) as page:
        answers = "() => [...document.querySelectorAll('#events li b')]" \
                  ".filter((b) => b.textContent === 'answer').length"
        before = await page.evaluate(answers)

        async def late(route: Route) -> None:
            """The goal's reply held back until the whole turn has streamed in."""
            reply = await route.fetch()
            await page.wait_for_function(f"() => ({answers})() > {before}")
            await route.fulfill(response=reply)

        await page.route("**/api/goal", late)
        await send(page, 'Late. CALL todo_add {"text": "sweep the floor"}')
        turn = page.locator(".turn").last
        await expect(turn.locator(".answer")).to_contain_text("sweep the floor")
        await expect(turn.locator(".you")).to_have_text(
            'Late. CALL todo_add {"text": "sweep the floor"}')
        await expect(turn.locator(".steps li")).to_have_count(3)


async def test_talking_to_the_peer_shows_its_answer(pair: Pair) -> None:
    async with logged_in(pair, pair.a) as page:
        await send(page, "how are you?", to=B)
        talk = page.locator("#conversation .talk")
        await expect(talk.locator(".you")).to_have_text(f"to {B}: how are you?")
        await expect(talk.locator(".answer")).to_have_text(f"{B}: echo: how are you?")


async def test_a_todo_added_and_done_on_the_page_is_in_the_store(pair: Pair) -> None:
    async with logged_in(pair, pair.a) as page:
        await show(page, "todo")
        await page.fill("#todo-text", "buy stamps")
        await page.click("#todo-form button[type=submit]")
        item = page.locator("#todo-items li", has_text="buy stamps")
        await expect(item).to_have_class("todo open")
        todo_id = int(await item.get_attribute("data-id") or "0")
        await item.get_by_role("button", name="done").click()
        await expect(item).to_have_class("todo done")
        await expect(item.get_by_role("button", name="done")).to_be_disabled()
    items = (await pair.a.ctl_json("todo", "--all"))["items"]
    stored = next(i for i in items if i["id"] == todo_id)
    assert (stored["text"], stored["status"]) == ("buy stamps", "done")


async def test_a_delegated_task_changes_state_on_the_open_page(pair: Pair) -> None:
    async with logged_in(pair, pair.a) as page:
        await show(page, "tasks")
        # Every state each task's row shows, as the page re-renders the table; and a
        # mark that a reload would wipe.
        await page.evaluate("""() => {
            window.stayed = true;
            window.states = {};
            const table = document.getElementById('task-table');
            new MutationObserver(() => {
              for (const row of table.querySelectorAll('tr')) {
                const cells = row.querySelectorAll('td');
                if (!cells.length) continue;
                const seen = (window.states[cells[0].textContent] ||= []);
                const state = row.querySelector('.state').textContent;
                if (seen[seen.length - 1] !== state) seen.push(state);
              }
            }).observe(table, {childList: true, subtree: true});
        }""")
        offer = await pair.a.ctl_json("delegate", B, "Write calc.add with a test",
                                      "--price", str(PRICE))
        assert offer["ok"], offer
        task = offer["id"]
        await page.wait_for_function(
            """(task) => ['delivered', 'completed', 'failed', 'rejected']
                 .includes((window.states[task] || []).at(-1))""",
            arg=task, timeout=WAIT_MS)
        states = await page.evaluate("(task) => window.states[task]", task)
        assert states[-1] == "delivered", states
        assert len(states) >= 2, f"no change seen, only {states}"
        assert await page.evaluate("window.stayed === true")  # not reloaded
        row = page.locator("#task-table tr", has_text=task)
        await expect(row.locator("td").nth(1)).to_have_text("to peer")
        await expect(row.locator("td").nth(2)).to_have_text(B)
        await expect(row.locator("td").nth(5)).to_have_text(f"{PRICE} (held)")
        # The escrow shows in the header's balance, live too.
        await expect(page.locator("#balance")).to_have_text(
            f"{ALLOWANCE - PRICE} available, {PRICE} held")


async def test_a_reload_mid_stream_loses_and_doubles_no_event(pair: Pair) -> None:
    async with logged_in(pair, pair.a) as page, asyncio.TaskGroup() as group:
        await show(page, "activity")
        flood = Flood(pair)
        flooding = group.create_task(flood.run())
        await page.wait_for_function(
            "() => document.querySelectorAll('#events li b').length >= 20")
        await page.reload()
        await expect(page.locator("#live")).to_have_text("live")
        await flood.more(20)  # the flood goes on after the page is back
        flood.stopping.set()
        await flooding
        until = await mark(pair.clients[A], "after the reload")
        await assert_shows_the_stream_exactly(page, pair.clients[A], until)
        await assert_shows_the_feed_exactly(page, pair.clients[A])
        seqs = await page_seqs(page)
        entities = set(await page.eval_on_selector_all(
            "#events li", "items => items.map((li) => li.dataset.entity)"))
        assert entities == {A, B}, entities  # the peer's events are there too
        assert len(seqs) > 2 * 20


async def test_a_restarted_web_actor_is_reconnected_to_and_resumed(pair: Pair) -> None:
    async with logged_in(pair, pair.a) as page, asyncio.TaskGroup() as group:
        await show(page, "activity")
        await page.evaluate("""() => {
            window.stayed = true;
            window.badge = [];
            const live = document.getElementById('live');
            new MutationObserver(() => window.badge.push(live.textContent))
              .observe(live, {childList: true, characterData: true, subtree: true});
        }""")
        flood = Flood(pair)
        flooding = group.create_task(flood.run())
        await flood.more(10)
        code, out, err = await pair.b.ctl("restart", A, "web", "--json")
        assert code == 0, out + err
        await page.wait_for_function("() => window.badge.includes('reconnecting')")
        await page.wait_for_function("() => window.badge.at(-1) === 'live'",
                                     timeout=WAIT_MS)
        await flood.more(20)
        flood.stopping.set()
        await flooding
        until = await mark(pair.clients[A], "after the restart")
        await assert_shows_the_stream_exactly(page, pair.clients[A], until)
        await assert_shows_the_feed_exactly(page, pair.clients[A])
        assert await page.evaluate("window.stayed === true")  # resumed, not reloaded
        await expect(page.locator("#events li", has_text="restart_requested")).to_have_count(1)


async def test_screenshots_of_each_view_and_a_narrow_window(pair: Pair,
                                                            tmp_path: Path) -> None:
    async with logged_in(pair, pair.a) as page:
        await send(page, "what are you working on?", to=B)
        await expect(page.locator(".talk .answer").last).to_contain_text("echo:")
        await send(page, "Build the adder. CALL delegate_to_coder "
                         '{"goal": "Write add(a, b) in calc.py with a unittest and run it"}')
        answer = page.locator(".turn .answer").last
        await expect(answer.locator(".commits")).to_contain_text("commits: ")
        await expect(answer.locator(".stat")).to_contain_text("calc.py")
        await expect(answer).to_be_in_viewport()  # the chat follows the turn
        loaded = {  # what each view shows once its data is in
            "chat": "#conversation .turn .answer .meta",
            "activity": "#events li",
            "peers": "#peer-table td",
            "todo": "#todo-form",
            "tasks": "#task-table tr",
            "ledger": "#ledger-table td",
            "cost": "#cost-tasks td",
            "code": "#commits li.commit",
        }
        for view in VIEWS:
            await show(page, view)
            await expect(page.locator(loaded[view]).first).to_be_visible()
            if view == "todo":
                await page.fill("#todo-text", "write the release notes")
                await page.click("#todo-form button[type=submit]")
                await expect(page.locator("#todo-items li", has_text="release notes")
                             ).to_be_visible()
            if view == "code":  # the coder's commit, its diff beside it
                await page.locator("#commits li.commit").first.click()
                await expect(page.locator("#diff")).to_contain_text("+def add(a, b):")
            await page.screenshot(path=tmp_path / f"{view}.png")
            if view == "chat":
                shutil.copy(tmp_path / "chat.png", tmp_path / "web-page.png")
                if os.environ.get(DOCS_SHOT_ENV) == "1":
                    (REPO / "docs").mkdir(exist_ok=True)
                    shutil.copy(tmp_path / "chat.png", REPO / "docs" / "web-page.png")
    for view in VIEWS:
        assert (tmp_path / f"{view}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    async with logged_in(pair, pair.a, width=390, height=844) as page:
        width: Any = await page.evaluate("[document.body.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the body overflows: {width}"
        for view in VIEWS:  # every tab reachable (the bar scrolls sideways, not the page)
            await page.locator(f"#tabs button[data-tab={view}]").scroll_into_view_if_needed()
            await show(page, view)
        await show(page, "chat")
        for part in ("#goal-text", "#talk-to", "#goal-form button[type=submit]"):
            box = await page.locator(part).bounding_box()
            assert box and box["x"] >= 0 and box["x"] + box["width"] <= 390, (part, box)
        await send(page, "hello from a phone")
        await expect(page.locator(".turn .answer").last).to_contain_text("ok: hello from")
        await expect(page.locator(".turn .you").last).to_have_text("hello from a phone")
        width = await page.evaluate("[document.body.scrollWidth, window.innerWidth]")
        assert width[0] <= width[1], f"the body overflows: {width}"
        await page.screenshot(path=tmp_path / "narrow.png", full_page=True)
