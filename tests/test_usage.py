"""Token use and cost (issue 12 part 3): prices from the shipped table under [prices], one
row per LLM call in memory's SQLite file, sums per hour and per task through the memory
actor, and a goal run by a real daemon on the scripted model leaving its calls there."""

from __future__ import annotations

import asyncio
import json
import sqlite3
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from actors.llm import Reply, ScriptedLLMServer
from actors.llm.cost import ModelCost, Price, PriceTable, price_table, shipped_prices
from actors.llm.messages import UsageAdd, UsageGet, UsageHour, UsageReport, UsageTask
from actors.llm.providers import PRESETS
from actors.memory import MemoryActor
from actors.memory_store import (
    MIGRATIONS,
    SCHEMA_VERSION,
    USAGE_RETENTION_S,
    HourUsage,
    InvalidInput,
    MemoryStore,
    TaskUsage,
    UsageCall,
)
from actors.messages import Goal, GoalAccepted, TodoItems, TodoList
from bench.rig import edit
from entityd import config as config_mod
from entityd.client import EntityClient
from entityd.config import LlmSection
from entityd.errors import RemoteError
from tests.helpers import DaemonProc, NatsServer, poll, running_actors
from tests.test_agent_e2e import make_entity_config

ENTITY = "entity-a"
HOUR = 3600
HOUR0 = 1_700_002_800  # the start of an hour (UTC)
MINI = ("openai", "gpt-4o-mini")


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# ---- prices ------------------------------------------------------------------------------


def test_the_shipped_table_prices_every_preset_default_model_but_custom() -> None:
    table = price_table()
    for name, preset in PRESETS.items():
        price = table.price_of(name, preset.default_model)
        assert (price is None) == (name == "custom"), name
    assert table.price_of("ollama", "any-local-model") == Price.of((0, 0))
    assert table.cost_micros("scripted", "scripted", 10**6, 10**6) == 0
    assert all("/" in name for name in shipped_prices())


def test_a_call_is_priced_in_micro_dollars_rounded_half_up() -> None:
    table = PriceTable({"openai/gpt-4o-mini": (0.15, 0.6)})
    # $0.15 and $0.60 per million tokens: 1000 in, 500 out = 150 + 300 micro-dollars.
    assert table.cost_micros(*MINI, 1000, 500) == 450
    assert table.cost_micros(*MINI, 10, 0) == 2  # 1.5 micro-dollars: half up
    assert table.cost_micros(*MINI, 3, 0) == 0  # 0.45
    assert table.cost_micros(*MINI, 0, 0) == 0
    with pytest.raises(ValueError, match="negative"):
        table.cost_micros(*MINI, -1, 0)


def test_config_prices_override_and_add_to_the_shipped_table() -> None:
    shipped = price_table()
    assert shipped.cost_micros(*MINI, 10**6, 10**6) == 750_000  # $0.15 + $0.60
    table = price_table({"openai/gpt-4o-mini": (1.0, 2.0),
                         "custom/my-model": (0.5, 0.5),
                         "ollama/big-model": (0.1, 0.2)})
    assert table.cost_micros(*MINI, 10**6, 10**6) == 3_000_000
    assert table.cost_micros("custom", "my-model", 2000, 2000) == 2000
    # A model's own line wins over its provider's "*"; the others still cost nothing.
    assert table.cost_micros("ollama", "big-model", 10**6, 0) == 100_000
    assert table.cost_micros("ollama", "llama3.1", 10**6, 10**6) == 0
    # The rest of the shipped table is still there.
    assert table.price_of("moonshot", "kimi-k2.5") == shipped.price_of("moonshot", "kimi-k2.5")


def test_an_unknown_model_costs_none_never_a_guess() -> None:
    table = price_table()
    assert table.price_of("openai", "gpt-99-ultra") is None
    assert table.cost_micros("openai", "gpt-99-ultra", 1000, 1000) is None
    assert table.cost_micros("custom", "gpt-4o-mini", 1000, 1000) is None  # other provider
    cost = ModelCost.of(LlmSection(provider="custom", base_url="http://127.0.0.1:1/v1",
                                   model="mystery"))
    assert (cost.provider, cost.model, cost.price) == ("custom", "mystery", None)
    assert cost.micros(1000, 1000) is None


def test_the_model_cost_of_settings_names_the_preset_default_model() -> None:
    cost = ModelCost.of(LlmSection(provider="moonshot"))
    assert (cost.provider, cost.model) == ("moonshot", "kimi-k2.5")
    assert cost.price is not None and cost.micros(1000, 1000) is not None
    assert ModelCost.of(LlmSection(provider="moonshot"),
                        {"moonshot/kimi-k2.5": (2.0, 4.0)}).micros(1000, 1000) == 6000


# ---- the store ---------------------------------------------------------------------------


@pytest.fixture
def clock() -> Clock:
    return Clock(HOUR0 + 1800)


@pytest.fixture
async def store(tmp_path: Path, clock: Clock) -> AsyncIterator[MemoryStore]:
    s = await MemoryStore.open(tmp_path / "memory.sqlite3", clock=clock)
    try:
        yield s
    finally:
        await s.close()


def call(task_id: str, ts: float, prompt: int, completion: int, cost: int | None,
         model: tuple[str, str] = MINI, payer: str = "") -> UsageCall:
    return UsageCall(task_id, *model, prompt, completion, cost, int(ts * 1000), payer)


async def test_calls_are_summed_per_hour_and_model_and_per_task(store: MemoryStore) -> None:
    await store.add_usage(call("t0", HOUR0 - 3 * 86400, 9, 9, 9))  # outside the windows
    await store.add_usage(call("t1", HOUR0 - HOUR + 60, 1000, 100, 210))
    await store.add_usage(call("t1", HOUR0 + 10, 2000, 200, 420))
    await store.add_usage(call("t2", HOUR0 + 20, 500, 50, None, ("custom", "x"), "entity-b"))
    await store.add_usage(UsageCall("t2", *MINI, 10, 1, 2, payer="entity-b"))  # ts: now

    window = await store.usage(2 * HOUR)  # from the start of the hour 2 h ago
    assert window.since == HOUR0 - 2 * HOUR
    assert window.hours == [
        HourUsage(HOUR0 - HOUR, *MINI, 1, 1000, 100, 210, 0),
        HourUsage(HOUR0, "custom", "x", 1, 500, 50, 0, 1),
        HourUsage(HOUR0, *MINI, 2, 2010, 201, 422, 0),
    ]
    now_ms = (HOUR0 + 1800) * 1000
    assert window.tasks == [  # the latest call first
        TaskUsage("t2", "entity-b", (HOUR0 + 20) * 1000, now_ms, 2, 510, 51, 2, 1),
        TaskUsage("t1", "", (HOUR0 - HOUR + 60) * 1000, (HOUR0 + 10) * 1000, 2, 3000, 300,
                  630, 0),
    ]

    recent = await store.usage(60)  # this hour only
    assert recent.since == HOUR0
    assert [h.hour for h in recent.hours] == [HOUR0, HOUR0]
    assert [(t.task_id, t.calls, t.cost_micros) for t in recent.tasks] == [
        ("t2", 2, 2), ("t1", 1, 420)]
    assert [t.task_id for t in (await store.usage(2 * HOUR, task_limit=1)).tasks] == ["t2"]
    assert [t.task_id for t in (await store.usage(10 * 86400)).tasks] == ["t2", "t1", "t0"]
    assert await store.usage(1) == await store.usage(60)  # whole hours


async def test_old_rows_are_pruned_as_rows_are_added(tmp_path: Path, clock: Clock) -> None:
    path = tmp_path / "memory.sqlite3"
    async with await MemoryStore.open(path, clock=clock) as store:
        for i in range(5):
            await store.add_usage(call(f"t{i}", clock.now - i * 86400, 10, 10, 10))
        assert await store.count_usage() == 5
    clock.now += USAGE_RETENTION_S - 2.5 * 86400  # t3 and t4 are past the retention
    async with await MemoryStore.open(path, clock=clock) as store:
        await store.add_usage(UsageCall("t5", *MINI, 1, 1, 1))
        assert await store.count_usage() == 4
        every = await store.usage(USAGE_RETENTION_S + 10 * 86400)  # capped at the retention
        assert [t.task_id for t in every.tasks] == ["t5", "t0", "t1", "t2"]


async def test_bad_usage_is_refused(store: MemoryStore) -> None:
    for bad in (UsageCall("t", "", "m", 1, 1, 1), UsageCall("t", "p", "", 1, 1, 1),
                UsageCall("t", "p", "m", -1, 1, 1), UsageCall("t", "p", "m", 1, 1, -1),
                UsageCall("t", "p", "m", 2**64, 1, 1), UsageCall("t", "p", "m", 1, 1, 1, -5),
                UsageCall("t" * 129, "p", "m", 1, 1, 1)):
        with pytest.raises(InvalidInput):
            await store.add_usage(bad)
    with pytest.raises(InvalidInput, match="window"):
        await store.usage(0)
    with pytest.raises(InvalidInput, match="task_limit"):
        await store.usage(60, task_limit=0)
    assert await store.count_usage() == 0


async def test_a_file_of_the_previous_schema_gains_the_usage_table(tmp_path: Path) -> None:
    path = tmp_path / "memory.sqlite3"
    with sqlite3.connect(path) as db:
        for number, script in enumerate(MIGRATIONS[:2], start=1):
            db.executescript(f"{script}\nPRAGMA user_version = {number};")
        db.execute("INSERT INTO todos (text, created_at, updated_at) VALUES ('kept', 1, 1)")
    db.close()
    async with await MemoryStore.open(path) as store:
        assert await store.schema_version() == SCHEMA_VERSION == 3
        assert [t.text for t in await store.list_todos()] == ["kept"]
        await store.add_usage(UsageCall("t1", *MINI, 1, 1, 1))
        assert await store.count_usage() == 1


# ---- through the memory actor --------------------------------------------------------------


async def test_the_memory_actor_records_told_calls_and_answers_usage_get(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    now = time.time()
    this_hour = int(now) // HOUR * HOUR
    told = [
        UsageAdd("t1", *MINI, 1000, 100, 210, int((now - 2 * HOUR) * 1000)),
        UsageAdd("t1", *MINI, 2000, 200, 420, int(now * 1000)),
        UsageAdd("t2", "custom", "x", 500, 50, None, int(now * 1000), payer="entity-b"),
        UsageAdd("t3", "", "", -1, 0),  # refused: told, so nobody hears why
    ]
    factories: dict[str, Any] = {"memory": lambda: MemoryActor(tmp_path / "memory.sqlite3")}
    async with running_actors(nats_server.url, ENTITY, factories) as actors:
        async def ask(message: object) -> Any:
            env = await actors.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/memory", message, 5.0)
            return env.message

        for record in told:
            await actors.client.tell(f"{ENTITY}/ctl", f"{ENTITY}/memory", record)
        # Its mailbox keeps arrival order: once this is answered, the tells were handled.
        assert isinstance(await ask(TodoList()), TodoItems)

        report = await ask(UsageGet(since_s=3 * HOUR))
        assert isinstance(report, UsageReport)
        # (The hour may have turned since `now`.)
        assert report.since in (this_hour - 3 * HOUR, this_hour - 2 * HOUR)
        assert report.hours == [
            UsageHour(this_hour - 2 * HOUR, *MINI, 1, 1000, 100, 210, 0),
            UsageHour(this_hour, "custom", "x", 1, 500, 50, 0, 1),
            UsageHour(this_hour, *MINI, 1, 2000, 200, 420, 0),
        ]
        assert [(t.task_id, t.payer, t.calls, t.prompt_tokens, t.completion_tokens,
                 t.cost_micros, t.unknown_calls) for t in report.tasks] == [
            ("t2", "entity-b", 1, 500, 50, 0, 1),
            ("t1", "", 2, 3000, 300, 630, 0),
        ]
        assert isinstance(report.tasks[0], UsageTask)

        default = await ask(UsageGet())  # the last 24 hours
        assert (default.hours, default.tasks) == (report.hours, report.tasks)
        assert [h.hour for h in (await ask(UsageGet(since_s=60))).hours] == [this_hour] * 2
        with pytest.raises(RemoteError) as refused:
            await ask(UsageGet(since_s=0))
        assert refused.value.code == "bad_request"
        with pytest.raises(RemoteError) as refused:
            await ask(UsageAdd("t4", *MINI, -5, 0))
        assert refused.value.code == "bad_request"
        assert (await ask(UsageGet())).hours == report.hours  # still serving, nothing added


# ---- a goal on a real daemon --------------------------------------------------------------


async def test_a_goal_leaves_its_calls_with_their_tokens_and_cost(tmp_path: Path) -> None:
    turn = {"prompt_tokens": 1200, "completion_tokens": 30, "total_tokens": 1230}
    lessons = {"prompt_tokens": 300, "completion_tokens": 5, "total_tokens": 305}
    script = [Reply(content="Hello from the scripted model.", usage=turn),
              Reply(content=json.dumps([]), usage=lessons)]
    async with ScriptedLLMServer(script) as llm:
        config = make_entity_config(tmp_path, ENTITY, llm.base_url)
        # [prices] in the entity's config overrides the shipped "scripted/*" = [0, 0].
        edit(config, '# "openrouter/moonshotai/kimi-k2" = [0.6, 2.5]',
             '"scripted/scripted" = [1.5, 4.0]')
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            async with EntityClient(config_mod.load(config)) as client:
                accepted = await client.ask("orchestrator", Goal("say hello", "u1"), 10.0)
                assert isinstance(accepted, GoalAccepted) and accepted.task_id == "u1"

                async def recorded() -> UsageReport | None:
                    report: UsageReport = await client.ask("memory", UsageGet(), 10.0)
                    done = any(t.task_id == "u1" and t.calls == 2 for t in report.tasks)
                    return report if done else None

                report = await poll(recorded, timeout=30.0, every=0.1,
                                    what=lambda: "u1's two calls\n" + daemon.log()[-3000:])
        finally:
            code = await asyncio.to_thread(daemon.terminate)
    assert code == 0, daemon.log()[-2000:]
    # $1.5 and $4 per million tokens: 1200 x 1.5 + 30 x 4 for the turn's call, then
    # 300 x 1.5 + 5 x 4 for its lessons, in micro-dollars.
    cost = 1800 + 120 + 450 + 20
    assert [(t.task_id, t.payer, t.calls, t.prompt_tokens, t.completion_tokens, t.cost_micros,
             t.unknown_calls) for t in report.tasks] == [("u1", "", 2, 1500, 35, cost, 0)]
    assert [(h.provider, h.model, h.calls, h.prompt_tokens, h.completion_tokens,
             h.cost_micros) for h in report.hours] == [
        ("scripted", "scripted", 2, 1500, 35, cost)]
