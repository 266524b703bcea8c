"""The memory store on real SQLite files: recall ranking, query safety, lesson merging,
supersession, todos, history, migrations and durability across SIGKILL."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
import textwrap
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from actors.memory_store import (
    LESSON_MERGE_JACCARD,
    SCHEMA_VERSION,
    InvalidInput,
    MemoryStore,
    NewMemory,
    NotFound,
    SchemaTooNew,
    jaccard,
    near_duplicates,
    query_terms,
)

DAY = 86400.0
ROOT = Path(__file__).resolve().parent.parent


class Clock:
    def __init__(self) -> None:
        self.now = 1_700_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[MemoryStore]:
    s = await MemoryStore.open(tmp_path / "memory.sqlite3", clock=clock)
    try:
        yield s
    finally:
        await s.close()


async def ids(store: MemoryStore, query: str, **kw: object) -> list[int]:
    return [r.memory.id for r in await store.recall(query, **kw)]  # type: ignore[arg-type]


# ---- file, pragmas, migrations -----------------------------------------------------------


async def test_file_is_wal_with_current_schema_and_reopens(tmp_path: Path) -> None:
    path = tmp_path / "sub" / "memory.sqlite3"
    store = await MemoryStore.open(path)
    await store.add_memory("fact", "The hub runs on kestrel")
    assert await store.schema_version() == SCHEMA_VERSION
    await store.close()
    await store.close()  # closing twice is harmless

    with sqlite3.connect(path) as db:
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    db.close()

    async with await MemoryStore.open(path) as again:
        assert [r.memory.text for r in await again.recall("kestrel")] == [
            "The hub runs on kestrel"
        ]


async def test_file_from_a_newer_entityd_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    with sqlite3.connect(path) as db:
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
    db.close()
    with pytest.raises(SchemaTooNew, match="schema version"):
        await MemoryStore.open(path)


# ---- recall ranking --------------------------------------------------------------------


async def test_relevant_recent_important_memory_outranks_old_irrelevant_one(
    store: MemoryStore, clock: Clock
) -> None:
    old = await store.add_memory("fact", "The deploy script lives in the tools folder", 0.1)
    await store.add_memory("fact", "Bob likes green tea", 0.5)
    clock.now += 400 * DAY
    fresh = await store.add_memory(
        "lesson", "Deploy the leaf node only after the hub certificate is renewed", 0.9
    )
    hits = await store.recall("how do I deploy the leaf node")
    assert [h.memory.id for h in hits] == [fresh.id, old.id]
    assert hits[0].score > hits[1].score
    assert hits[0].relevance == 1.0 and hits[0].recency == pytest.approx(1.0)
    assert hits[1].recency < 0.001  # 400 days at a 30-day half-life


async def test_recency_and_importance_break_ties_between_equal_matches(
    store: MemoryStore, clock: Clock
) -> None:
    older = await store.add_memory("episode", "Rotated the signing key", 0.5)
    clock.now += 60 * DAY
    newer = await store.add_memory("episode", "Rotated the signing key", 0.5)
    assert await ids(store, "signing key") == [newer.id, older.id]

    minor = await store.add_memory("episode", "Renamed the sandbox user", 0.2)
    major = await store.add_memory("episode", "Renamed the sandbox user", 0.8)
    assert await ids(store, "sandbox user") == [major.id, minor.id]


async def test_recall_counts_uses_and_honours_kinds_and_limit(
    store: MemoryStore, clock: Clock
) -> None:
    fact = await store.add_memory("fact", "The staging server is called gull")
    lesson = await store.add_memory("lesson", "Check the staging server before a release")
    await store.add_memory("episode", "Restarted the staging server twice")
    clock.now += 5.0

    assert await ids(store, "staging server", kinds=["lesson"]) == [lesson.id]
    assert set(await ids(store, "staging server", kinds=["fact", "lesson"])) == {
        fact.id, lesson.id,
    }
    assert len(await ids(store, "staging server", limit=2)) == 2
    assert await ids(store, "staging", limit=0) == []

    before = await store.get_memory(fact.id)
    hits = await store.recall("gull")
    assert hits[0].memory.uses == before.uses + 1
    after = await store.get_memory(fact.id)
    assert after.uses == before.uses + 1 and after.last_used_at == clock.now
    untouched = await store.recall("gull", touch=False)
    assert untouched[0].memory.uses == after.uses
    assert (await store.get_memory(fact.id)).uses == after.uses

    with pytest.raises(InvalidInput, match="unknown memory kind"):
        await store.recall("gull", kinds=["secret"])


async def test_recall_stems_words_and_ignores_stopwords(store: MemoryStore) -> None:
    ran = await store.add_memory("episode", "Running the integration tests took nine minutes")
    await store.add_memory("episode", "The cat sat on the mat")
    assert await ids(store, "how long do the integration test runs take") == [ran.id]
    assert await ids(store, "the") != []  # only stopwords: they are searched after all
    assert await ids(store, "") == []
    assert await ids(store, "  ?! ") == []


NASTY = [
    'a"b OR (',
    '"',
    '""',
    "(",
    ")",
    "*",
    "^",
    "NOT",
    "AND OR NOT NEAR",
    "NEAR(a b, 2)",
    "text : staging",
    "kind:lesson",
    "{text kind}: x",
    "- staging",
    "+ staging",
    'col:"unterminated',
    "staging*",
    "a AND",
    "OR OR OR",
    "\x00\x01\x02",
    "' OR 1=1 --",
    "; DROP TABLE memories; --",
    "emoji 🦀🔥 staging",
    "Ünïcödé ñame staging",
    "中文 搜索 staging",
    "e\u0301tude staging",  # a combining accent
    "\uff26\uff35\uff2c\uff2c staging",  # fullwidth letters
    "under_score staging",
    "rank MATCH bm25()",
    "staging " * 500,
]


@pytest.mark.parametrize("query", NASTY)
async def test_arbitrary_query_text_never_breaks_recall(store: MemoryStore, query: str) -> None:
    staging = await store.add_memory("fact", "The staging server is called gull")
    await store.add_memory("lesson", "Never trust a lesson without a test")
    hits = await store.recall(query, kinds=["fact", "lesson"])
    if "staging" in query.lower():
        assert staging.id in [h.memory.id for h in hits]
    await store.check_index()


@settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(query=st.text(max_size=80))
async def test_generated_query_text_never_breaks_recall(store: MemoryStore, query: str) -> None:
    await store.recall(query, touch=False)
    await store.recall(query, kinds=["lesson"], touch=False)
    assert len(query_terms(query)) <= 32


# ---- lessons: merging and superseding --------------------------------------------------


async def test_duplicate_and_near_duplicate_lessons_merge(store: MemoryStore, clock: Clock) -> None:
    first = await store.add_memory("lesson", "Always run the tests before committing.", 0.6)
    clock.now += 10.0
    same = await store.add_memory("lesson", "  always run the TESTS before committing  ", 0.4)
    assert same.id == first.id and same.merged
    near = await store.add_memory("lesson", "Always run tests before you commit", 0.7)
    assert near.id == first.id and near.merged

    merged = await store.get_memory(first.id)
    assert merged.uses == 2
    assert merged.importance == pytest.approx(0.75)  # the highest, 0.7, plus a small bump
    assert merged.updated_at == clock.now and merged.created_at == clock.now - 10.0
    assert await store.count_memories() == 1

    longer = await store.add_memory(
        "lesson", "Always run the tests before committing, even for one-line changes", 0.5
    )
    assert not longer.merged  # "even one line changes" is too much new content
    detail = await store.add_memory("lesson", "Always run all the tests before committing")
    assert detail.merged and detail.id == first.id
    assert (await store.get_memory(first.id)).text == "Always run all the tests before committing"
    await store.check_index()
    assert await ids(store, "all tests") == [first.id, longer.id]


async def test_lessons_that_differ_in_meaning_do_not_merge(store: MemoryStore) -> None:
    push = await store.add_memory("lesson", "Push to main after review")
    never = await store.add_memory("lesson", "Never push to main after review")
    assert not never.merged and never.id != push.id
    dont = await store.add_memory("lesson", "Don't push to main after review")
    assert not dont.merged and dont.id not in (push.id, never.id)
    other = await store.add_memory("lesson", "Run the linter before pushing to main")
    assert not other.merged
    assert await store.count_memories() == 4


def test_near_duplicate_rule() -> None:
    assert jaccard(frozenset("abcde"), frozenset("abcd")) == pytest.approx(0.8)
    assert LESSON_MERGE_JACCARD == 0.8
    assert near_duplicates("Push to main after review", "push to main after a review!")
    assert near_duplicates("Keep the tests fast", "Keep tests fast")
    assert not near_duplicates("Push to main after review", "Never push to main after review")
    assert not near_duplicates("Never push to main", "Don't push to main")
    assert not near_duplicates("Keep the tests fast", "Keep the build fast")


async def test_only_lessons_merge_nearly_and_only_facts_and_lessons_merge_at_all(
    store: MemoryStore,
) -> None:
    fact = await store.add_memory("fact", "The API port is 8080")
    assert (await store.add_memory("fact", "the api port is 8080!")).id == fact.id
    # One word changed in a fact is new information, not a duplicate.
    assert not (await store.add_memory("fact", "The API port is 9090")).merged
    episode = await store.add_memory("episode", "Deployed release 12")
    again = await store.add_memory("episode", "Deployed release 12")
    assert not again.merged and again.id != episode.id
    assert await store.count_memories() == 4


async def test_superseded_lesson_is_not_recalled_nor_merged_into(store: MemoryStore) -> None:
    old = await store.add_memory("lesson", "Restart the hub with systemctl restart nats")
    new = await store.add_memory("lesson", "Reload the hub with nats-server --signal reload")
    await store.supersede(old.id, new.id)
    assert (await store.get_memory(old.id)).superseded_by == new.id
    assert await ids(store, "hub") == [new.id]
    assert await store.count_memories() == 1
    assert await store.count_memories(include_superseded=True) == 2

    # The same text again is a new live lesson, not a merge into the superseded one.
    back = await store.add_memory("lesson", "Restart the hub with systemctl restart nats")
    assert not back.merged and back.id != old.id

    # Superseding the successor keeps the chain flat.
    newest = await store.add_memory("lesson", "Hub restarts go through entityctl now")
    await store.supersede(new.id, newest.id)
    assert (await store.get_memory(old.id)).superseded_by == newest.id
    await store.check_index()

    with pytest.raises(InvalidInput, match="itself"):
        await store.supersede(newest.id, newest.id)
    with pytest.raises(InvalidInput, match="superseded"):
        await store.supersede(back.id, old.id)
    with pytest.raises(NotFound):
        await store.supersede(999, newest.id)

    # Deleting a successor makes what it replaced live (and searchable) again.
    await store.delete_memory(newest.id)
    assert set(await ids(store, "hub")) == {old.id, new.id, back.id}
    await store.check_index()


async def test_bad_memories_are_refused(store: MemoryStore) -> None:
    with pytest.raises(InvalidInput, match="unknown memory kind 'secret'"):
        await store.add_memory("secret", "x")
    with pytest.raises(InvalidInput, match="empty"):
        await store.add_memory("fact", "   ")
    for importance in (-0.1, 1.5, float("nan")):
        with pytest.raises(InvalidInput, match="importance"):
            await store.add_memory("fact", "x", importance)
    with pytest.raises(NotFound):
        await store.get_memory(42)
    with pytest.raises(InvalidInput):
        await store.import_memories([NewMemory("fact", "fine"), NewMemory("nope", "bad")])
    assert await store.count_memories() == 0  # all or nothing


async def test_import_memories_is_searchable(store: MemoryStore) -> None:
    n = await store.import_memories(
        NewMemory("fact", f"Host number {i} is called node{i}") for i in range(500)
    )
    assert n == 500 and await store.count_memories() == 500
    assert [r.memory.text for r in await store.recall("node250")] == [
        "Host number 250 is called node250"
    ]
    await store.check_index()


async def test_bounded_pools_reach_an_old_memory_holding_every_word(
    tmp_path: Path, clock: Clock
) -> None:
    """The OR pool holds only the newest matches of any word; the AND pool (ranked on the
    store's second connection) still finds an old memory that holds all of them, and
    both see a memory the moment it is added."""
    store = await MemoryStore.open(tmp_path / "memory.sqlite3", clock=clock, scan_limit=5)
    try:
        old = (await store.add_memory("fact", "The kestrel hub rotates its falcon keys")).id
        await store.import_memories(
            NewMemory("fact", f"Kestrel note number {i}") for i in range(20)
        )
        await store.import_memories(
            NewMemory("fact", f"Falcon note number {i}", origin="peer:entity-b")
            for i in range(20)
        )
        hits = await ids(store, "kestrel falcon", limit=3)
        assert hits[0] == old
        assert old not in await ids(store, "kestrel falcon", origin="peer:entity-b")
        assert await ids(store, "kestrel falcon", origin="operator", limit=1) == [old]
        new = (await store.add_memory("fact", "Falcon and kestrel share a rack")).id
        assert set(await ids(store, "kestrel falcon", limit=2)) == {old, new}
    finally:
        await store.close()


async def test_a_kind_name_in_a_query_matches_text_not_the_kind(store: MemoryStore) -> None:
    await store.add_memory("lesson", "Always check the port first")
    await store.add_memory("reflection", "The reconnect backoff was too short")
    told = (await store.add_memory("fact", "The lessons and reflections are in the wiki")).id
    accented = (await store.add_memory("fact", "The lésson plan was late")).id
    await store.add_memory("episode", "Deployed the hub for alice")
    assert set(await ids(store, "lessons")) == {told, accented}
    assert await ids(store, "reflecting") == [told]
    assert await ids(store, "episodes") == []
    assert await ids(store, "facts deployed") == await ids(store, "deployed")


# ---- todos -----------------------------------------------------------------------------


async def test_todo_lifecycle_and_order(store: MemoryStore, clock: Clock) -> None:
    low = await store.add_todo("Tidy the README", priority=0)
    high = await store.add_todo("Fix the flaky replay test", priority=5)
    doing = await store.add_todo("Write the memory bench", priority=1)
    assert low.status == "open" and low.closed_at is None
    clock.now += 1.0
    await store.update_todo(doing.id, status="doing")
    assert [t.id for t in await store.list_todos()] == [doing.id, high.id, low.id]

    clock.now += 1.0
    done = await store.update_todo(high.id, status="done")
    assert done.closed_at == clock.now and done.updated_at == clock.now
    assert done.created_at == clock.now - 2.0
    await store.update_todo(low.id, status="dropped", text="Tidy the README later")
    assert [t.id for t in await store.list_todos()] == [doing.id]
    everything = await store.list_todos(include_done=True)
    assert [(t.id, t.status) for t in everything] == [
        (doing.id, "doing"), (high.id, "done"), (low.id, "dropped"),
    ]
    assert everything[2].text == "Tidy the README later"

    reopened = await store.update_todo(high.id, status="open", priority=9)
    assert reopened.closed_at is None and reopened.priority == 9
    assert (await store.get_todo(high.id)).status == "open"


async def test_bad_todos_are_refused(store: MemoryStore) -> None:
    todo = await store.add_todo("Something")
    with pytest.raises(InvalidInput, match="unknown todo status 'finished'"):
        await store.update_todo(todo.id, status="finished")
    with pytest.raises(InvalidInput, match="empty"):
        await store.update_todo(todo.id, text=" ")
    with pytest.raises(InvalidInput, match="empty"):
        await store.add_todo("")
    with pytest.raises(NotFound, match="no todo 77"):
        await store.update_todo(77, status="done")
    assert (await store.get_todo(todo.id)).status == "open"


# ---- conversation log ------------------------------------------------------------------


async def test_history_is_oldest_first_per_conversation_and_keeps_data(
    store: MemoryStore, clock: Clock
) -> None:
    for i in range(6):
        clock.now += 1.0
        await store.append_log("c1" if i % 2 == 0 else "c2", "user", f"message {i}", {"i": i})
    c1 = await store.history("c1")
    assert [e.content for e in c1] == ["message 0", "message 2", "message 4"]
    assert [e.data for e in c1] == [{"i": 0}, {"i": 2}, {"i": 4}]
    assert c1[0].created_at < c1[1].created_at
    assert [e.content for e in await store.history(limit=2)] == ["message 4", "message 5"]
    assert [e.content for e in await store.history("c2", limit=1)] == ["message 5"]
    assert await store.history("nobody") == []
    assert await store.history(limit=0) == []
    with pytest.raises(InvalidInput, match="not JSON"):
        await store.append_log("c1", "user", "x", {"bad": object()})
    with pytest.raises(InvalidInput, match="conversation"):
        await store.append_log("", "user", "x")


# ---- durability ------------------------------------------------------------------------

CHILD = textwrap.dedent(
    """
    import asyncio, sys, time
    from actors.memory_store import MemoryStore

    async def main(path):
        store = await MemoryStore.open(path)
        i = 0
        while True:
            kind = "lesson" if i % 3 == 0 else "fact"
            added = await store.add_memory(kind, f"durable {kind} number w{i} about topic{i % 7}")
            if i % 5 == 0:
                await store.add_todo(f"todo w{i}")
            await store.append_log("durability", "note", f"entry w{i}")
            print("committed", added.id, i, flush=True)
            i += 1

    asyncio.run(main(sys.argv[1]))
    """
)


def _write_until_killed(path: Path, writes: int) -> dict[int, int]:
    """Run the writer until it has reported `writes` commits, SIGKILL it, and return
    {write number: memory id} for every write it reported as committed."""
    child = subprocess.Popen(
        [sys.executable, "-c", CHILD, str(path)],
        stdout=subprocess.PIPE, text=True, cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    committed: dict[int, int] = {}
    try:
        assert child.stdout is not None
        while len(committed) < writes:
            line = child.stdout.readline()
            assert line, f"the writer exited early with {child.wait()}"
            _, reported_id, number = line.split()
            committed[int(number)] = int(reported_id)
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
        if child.stdout:
            child.stdout.close()
    assert child.returncode == -signal.SIGKILL
    return committed


async def test_every_committed_write_survives_sigkill(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    committed = await asyncio.to_thread(_write_until_killed, path, 300)
    async with await MemoryStore.open(path) as store:
        for i, memory_id in committed.items():
            memory = await store.get_memory(memory_id)
            assert memory.text.endswith(f"number w{i} about topic{i % 7}")
        last = max(committed)
        hits = await store.recall(f"w{last}")
        assert [h.memory.id for h in hits] == [committed[last]]
        todos = {t.text for t in await store.list_todos()}
        assert {f"todo w{i}" for i in committed if i % 5 == 0} <= todos
        logged = {e.content for e in await store.history("durability", limit=10_000)}
        assert {f"entry w{i}" for i in committed} <= logged
        await store.check_index()


async def test_concurrent_callers_share_one_store_safely(store: MemoryStore) -> None:
    async def add(i: int) -> int:
        return (await store.add_memory("fact", f"Concurrent fact {i} about orchid")).id

    async def todo(i: int) -> int:
        return (await store.add_todo(f"Concurrent todo {i}")).id

    added, _, todos = await asyncio.gather(
        asyncio.gather(*(add(i) for i in range(40))),
        asyncio.gather(*(store.recall("orchid") for _ in range(20))),
        asyncio.gather(*(todo(i) for i in range(20))),
    )
    assert len(set(added)) == 40 and len(set(todos)) == 20
    assert len(await store.recall("orchid", limit=100)) == 40
    await store.check_index()
