"""Token use and estimated cost: one row per LLM call, summed per hour and model and per
task over a window. Bounded: rows older than USAGE_RETENTION_S are pruned as rows are
added (at the first insert after opening, then every PRUNE_EVERY inserts)."""

from __future__ import annotations

import sqlite3

from .database import Database
from .records import HourUsage, InvalidInput, TaskUsage, UsageCall, UsageWindow

HOUR_S = 3600
USAGE_RETENTION_S = 90 * 86_400
PRUNE_EVERY = 100
MAX_USAGE_HOURS = 2000  # hour rows per answer (the newest): it must fit one message
MAX_USAGE_TASKS = 200
# Lengths kept per field, so that an answer of the maxima above stays well under 1 MiB.
MAX_NAME = {"task_id": 128, "provider": 64, "model": 128, "payer": 64}
MAX_COUNT = 10**12  # tokens or micro-dollars of one call: far above any real one
MAX_TS_MS = 2**53

_SUMS = ("count(*) AS calls, sum(prompt_tokens) AS prompt_tokens,"
         " sum(completion_tokens) AS completion_tokens,"
         " coalesce(sum(cost_micros), 0) AS cost_micros,"
         " sum(cost_micros IS NULL) AS unknown_calls")


class UsageLog(Database):
    """The token use methods of MemoryStore."""

    _usage_inserts = 0  # since this store was opened, for pruning

    async def add_usage(self, call: UsageCall) -> int:
        """Store one call; prune old rows now and then. Returns the row's id."""
        _check(call)
        now_ms = int(self._clock() * 1000)
        ts = call.ts_ms or now_ms
        prune = self._usage_inserts % PRUNE_EVERY == 0
        self._usage_inserts += 1
        async with self._transaction() as db:
            cursor = await db.execute(
                "INSERT INTO llm_usage (ts, task_id, payer, provider, model, prompt_tokens,"
                " completion_tokens, cost_micros) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (ts, call.task_id, call.payer, call.provider, call.model, call.prompt_tokens,
                 call.completion_tokens, call.cost_micros),
            )
            assert cursor.lastrowid is not None
            if prune:
                await db.execute("DELETE FROM llm_usage WHERE ts < ?",
                                 (now_ms - USAGE_RETENTION_S * 1000,))
            return cursor.lastrowid

    async def usage(self, seconds: int, task_limit: int = 50) -> UsageWindow:
        """The calls from the start of the hour `seconds` ago until now: per hour and
        model (oldest first; the newest MAX_USAGE_HOURS rows) and per task (the
        `task_limit` with the latest calls, newest first)."""
        if seconds < 1:
            raise InvalidInput(f"the window must be at least 1 s, not {seconds}")
        if task_limit < 1:
            raise InvalidInput(f"task_limit must be at least 1, not {task_limit}")
        seconds = min(seconds, USAGE_RETENTION_S)
        since = (int(self._clock()) - seconds) // HOUR_S * HOUR_S
        hours = await self._db.execute_fetchall(
            f"SELECT (ts / {HOUR_S * 1000}) * {HOUR_S} AS hour, provider, model, {_SUMS}"
            " FROM llm_usage WHERE ts >= ? GROUP BY hour, provider, model"
            " ORDER BY hour DESC, provider DESC, model DESC LIMIT ?",
            (since * 1000, MAX_USAGE_HOURS),
        )
        tasks = await self._db.execute_fetchall(
            f"SELECT task_id, max(payer) AS payer, min(ts) AS first_ts, max(ts) AS last_ts,"
            f" {_SUMS} FROM llm_usage WHERE ts >= ? GROUP BY task_id"
            " ORDER BY last_ts DESC, max(id) DESC LIMIT ?",
            (since * 1000, min(task_limit, MAX_USAGE_TASKS)),
        )
        return UsageWindow(since, [_hour(r) for r in reversed(list(hours))],
                           [_task(r) for r in tasks])

    async def count_usage(self) -> int:
        row = await (await self._db.execute("SELECT count(*) FROM llm_usage")).fetchone()
        return int(row[0]) if row else 0


def _check(call: UsageCall) -> None:
    for name, limit in MAX_NAME.items():
        value = getattr(call, name)
        if len(value) > limit:
            raise InvalidInput(f"usage {name} is longer than {limit} characters")
    if not call.provider or not call.model:
        raise InvalidInput("usage names no provider or no model")
    for name in ("prompt_tokens", "completion_tokens", "cost_micros"):
        value = getattr(call, name)
        if value is not None and not 0 <= value <= MAX_COUNT:
            raise InvalidInput(f"usage {name} must be within 0..{MAX_COUNT}, not {value}")
    if not 0 <= call.ts_ms <= MAX_TS_MS:
        raise InvalidInput(f"usage ts must be within 0..{MAX_TS_MS} ms, not {call.ts_ms}")


def _hour(row: sqlite3.Row) -> HourUsage:
    return HourUsage(row["hour"], row["provider"], row["model"], row["calls"],
                     row["prompt_tokens"], row["completion_tokens"], row["cost_micros"],
                     row["unknown_calls"])


def _task(row: sqlite3.Row) -> TaskUsage:
    return TaskUsage(row["task_id"], row["payer"], row["first_ts"], row["last_ts"],
                     row["calls"], row["prompt_tokens"], row["completion_tokens"],
                     row["cost_micros"], row["unknown_calls"])
