"""Memory store: insert rate and recall latency at 100,000 memories, on a real SQLite file.

`python -m bench.memory` fills a fresh store in a temporary directory with generated,
varied memories spread over a year (batched, 1,000 per transaction), times single adds
(one transaction each, with the duplicate-lesson check), then times recall over a few
hundred varied queries and prints p50/p99. It also ranks the same queries by every match
(no scan limit) and prints how close the bounded recall comes (`recall_quality_vs_exact`).
`--quick` uses 10,000 memories; `--n 1000000` a million.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import random
import shutil
import statistics
import tempfile
import time
from pathlib import Path

from actors.memory_store import (
    IMPORTANCE_WEIGHT,
    MEMORY_KINDS,
    RECENCY_WEIGHT,
    SCAN_LIMIT,
    MemoryStore,
    NewMemory,
)

BATCH = 1000

TOPICS = """nats jetstream leafnode hub cluster stream consumer subject inbox envelope
signature keyring replay timestamp msgpack payload sandbox bubblewrap namespace rlimit
workspace git commit branch merge rebase hook fsmonitor diff patch pytest fixture
coverage benchmark latency throughput sqlite index trigger migration wal checkpoint
vacuum schema query planner cache memory recall lesson todo orchestrator coder actor
supervisor backoff restart budget token model prompt provider moonshot openrouter
ollama kimi reasoning tool shell grep glob config systemd journald socket port tls
certificate nkey password permission directory peer delegation payment wallet
moltbook profile post comment feed upvote karma dht kademlia gossip heartbeat
presence timeout retry deadline queue backpressure drain shutdown signal sigterm
sigkill docker kernel cgroup filesystem symlink realpath permission-denied python
asyncio taskgroup coroutine thread pool executor pynacl ed25519 x25519 box nonce
compression encoding unicode tokenizer stemming ranking bm25 recency importance
embedding vector cosine duplicate overlap jaccard""".split()

VERBS = """check restart deploy configure verify measure profile tune benchmark refactor
rename delete archive migrate upgrade downgrade rollback monitor log trace debug
document review approve reject delegate pay ping wake report schedule cancel retry
compress encrypt decrypt sign validate parse serialise cache invalidate index search
rank summarise remember forget reopen close merge split rotate revoke pin""".split()

ADJECTIVES = """slow fast flaky stable broken healthy stale fresh large small noisy quiet
critical minor urgent optional expensive cheap remote local encrypted signed unsigned
durable volatile idle busy overloaded degraded missing duplicated corrupted""".split()

PEOPLE = """alice bob carol dave erin frank grace heidi ivan judy mallory niaj olivia
peggy rupert sybil trent victor walter entity-a entity-b entity-c kimi claude""".split()

TEMPLATES = {
    "fact": [
        "The {t1} for {p} runs on port {n} and uses {t2}",
        "{P} prefers {t1} over {t2} when the {t3} is {a}",
        "Our {t1} stores its {t2} under /var/lib/entityd/{t3}/{n}",
        "The {a} {t1} was fixed in commit {h} by {p}",
        "{P} said the {t1} budget is {n} tokens per hour",
        "Issue {n}: the {t1} drops {t2} messages after a {t3} restart",
    ],
    "lesson": [
        "Always {v} the {t1} before you {v2} the {t2}",
        "Never {v} a {a} {t1} without checking the {t2} first",
        "When the {t1} is {a}, {v} the {t2} instead of waiting on the {t3}",
        "A {a} {t1} usually means the {t2} needs a {t3}; {v} it early",
        "Keep {t1} and {t2} apart: mixing them made the {t3} {a}",
    ],
    "reflection": [
        "I spent too long on the {t1}; next time I will {v} the {t2} sooner",
        "The {t1} task went well because {p} had already {vd} the {t2}",
        "I keep forgetting that {t1} depends on {t2} and {t3}",
        "Working with {p} on the {t1} taught me to {v} {t2} first",
    ],
    "episode": [
        "Task {n}: {vd} the {t1} for {p}; the {t2} is now {a}",
        "{P} asked me to {v} the {t1}; I used {t2} and {t3} and it took {m} minutes",
        "Delegated the {t1} to {p}, who reported the {t2} was {a} after {m} steps",
        "Autonomy tick {n}: worked through the {t1} todo, {vd} {t2}, budget left {m}",
    ],
}

SYLLABLES = """ka lo mi ve tor zan rex quil bri dor fen gal hux ix jor kel lum mor nix
pax qua ros sul tam uv wex yor zim ast bel cor dax elm fyr""".split()


def _vocabulary(rng: random.Random) -> list[str]:
    """The topic words above (the common ones), then 3,000 made-up names of projects,
    hosts and modules: term frequencies then fall off like natural text's (Zipf)."""
    names: dict[str, None] = {}
    while len(names) < 3000:
        names["".join(rng.choices(SYLLABLES, k=rng.randint(2, 3)))] = None
    return TOPICS + list(names)


_VOCAB = _vocabulary(random.Random(0))
_VOCAB_CUM = list(itertools.accumulate(1.0 / (rank + 1) for rank in range(len(_VOCAB))))

QUERY_SHAPES = [
    "{t1}",
    "{t1} {t2}",
    "{v} {t1}",
    "how do I {v} the {t1}",
    "what did {p} say about the {t1} {t2}",
    "{a} {t1} {t2} {t3}",
    "why is the {t1} {a} after a {t2} restart",
    "{t1} OR ({t2} AND NOT \"{t3}",
    "port {n}",
    "{p}",
    "lessons about {t1} and {t2} when {ving}",
    "nothingmatches{n} zzz{n}",
]


def _fill(shape: str, rng: random.Random) -> str:
    person = rng.choice(PEOPLE)
    t1, t2, t3 = rng.choices(_VOCAB, cum_weights=_VOCAB_CUM, k=3)
    verb = rng.choice(VERBS)
    return shape.format(
        t1=t1, t2=t2, t3=t3,
        v=verb, v2=rng.choice(VERBS), vd=verb + ("d" if verb.endswith("e") else "ed"),
        ving=verb.removesuffix("e") + "ing", a=rng.choice(ADJECTIVES),
        p=person, P=person.capitalize(), n=rng.randint(1, 65535), m=rng.randint(1, 300),
        h=f"{rng.getrandbits(28):07x}",
    )


def generate(count: int, seed: int = 1) -> list[NewMemory]:
    rng = random.Random(seed)
    weights = [0.35, 0.2, 0.15, 0.3]  # fact, lesson, reflection, episode
    out = []
    for _ in range(count):
        kind = rng.choices(MEMORY_KINDS, weights)[0]
        text = _fill(rng.choice(TEMPLATES[kind]), rng)
        if rng.random() < 0.3:  # some memories are longer, two sentences
            text += ". " + _fill(rng.choice(TEMPLATES[rng.choice(MEMORY_KINDS)]), rng)
        out.append(NewMemory(kind, text, round(rng.random(), 2), source="bench"))
    return out


def queries(count: int, seed: int = 2) -> list[str]:
    rng = random.Random(seed)
    return [_fill(rng.choice(QUERY_SHAPES), rng) for _ in range(count)]


def _size_mb(directory: Path) -> float:
    return sum(p.stat().st_size for p in directory.iterdir()) / 1e6


def _percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _time_recall(
    store: MemoryStore, qs: list[str], *, kinds: tuple[str, ...] = (), touch: bool = True
) -> tuple[list[float], int]:
    samples, hits = [], 0
    for q in qs:
        start = time.perf_counter()
        found = await store.recall(q, limit=10, kinds=kinds, touch=touch)
        samples.append((time.perf_counter() - start) * 1000)
        hits += len(found)
    return samples, hits


async def _quality(
    bounded: MemoryStore, exact: MemoryStore, qs: list[str]
) -> tuple[float, float]:
    """How the bounded recall's top 10 compares with ranking every match, as two means over
    the queries: of (sum of scores, both on the exact run's BM25 scale) and of (sum of raw
    BM25). The score ratio can exceed 1: the exact path also re-scores only the 50 best by
    BM25, while the bounded pools lean to recent memories, which score higher."""
    scores, bm25s = [], []
    for q in qs:
        want = await exact.recall(q, limit=10, touch=False)
        if not want:
            continue
        got = await bounded.recall(q, limit=10, touch=False)
        best = max(r.bm25 for r in want)
        rescored = sum(
            r.bm25 / best + RECENCY_WEIGHT * r.recency + IMPORTANCE_WEIGHT * r.memory.importance
            for r in got
        )
        scores.append(rescored / sum(r.score for r in want))
        bm25s.append(sum(r.bm25 for r in got) / sum(r.bm25 for r in want))
    return statistics.fmean(scores), statistics.fmean(bm25s)


class _Clock:
    """Wall time shifted back by `behind` seconds, so a store can be filled over a year."""

    def __init__(self) -> None:
        self.behind = 0.0

    def __call__(self) -> float:
        return time.time() - self.behind


async def _fill_store(store: MemoryStore, clock: _Clock, count: int) -> float:
    """Fill `store` with `count` generated memories spread over a year; the insert rate."""
    memories = generate(count)
    year = 365 * 86400.0
    start = time.perf_counter()
    for i in range(0, count, BATCH):
        clock.behind = year * (1 - i / count)
        await store.import_memories(memories[i : i + BATCH])
    elapsed = time.perf_counter() - start
    clock.behind = 0.0
    print(f"memories: {count} ({BATCH} per transaction) in {elapsed:.2f} s")
    return count / elapsed


def _base_file(base: Path, count: int) -> Path:
    return base / f"memory-{count}.sqlite3"


async def run(
    count: int, n_queries: int, directory: Path, scan_limit: int, base: Path | None = None
) -> None:
    path = directory / "memory.sqlite3"
    clock = _Clock()
    filled = _base_file(base, count) if base else None
    if filled is not None and filled.exists():
        await asyncio.to_thread(shutil.copyfile, filled, path)
        print(f"memories: {count}, copied from {filled} (not filled: no insert rate)")
        insert_rate = None
        store = await MemoryStore.open(path, scan_limit=scan_limit, clock=clock)
    else:
        store = await MemoryStore.open(path, scan_limit=scan_limit, clock=clock)
        insert_rate = await _fill_store(store, clock, count)
        if filled is not None:
            await store.close()  # checkpoints the WAL into the file, so one file is the copy
            filled.parent.mkdir(parents=True, exist_ok=True)
            await asyncio.to_thread(shutil.copyfile, path, filled)
            store = await MemoryStore.open(path, scan_limit=scan_limit, clock=clock)
    try:

        singles = generate(1000, seed=3)
        start = time.perf_counter()
        merged = 0
        for m in singles:
            merged += (await store.add_memory(m.kind, m.text, m.importance)).merged
        single_rate = len(singles) / (time.perf_counter() - start)
        print(f"single adds: {len(singles)}, one transaction each, {merged} merged as duplicates")

        qs = queries(n_queries)
        await _time_recall(store, queries(50, seed=4))  # warm the page cache
        samples, hits = await _time_recall(store, qs)
        lessons, _ = await _time_recall(store, qs, kinds=("lesson",))
        readonly, _ = await _time_recall(store, qs, touch=False)
        size_mb = await asyncio.to_thread(_size_mb, directory)
        exact = await MemoryStore.open(path, scan_limit=10**9, clock=clock)
        try:
            exact_samples, _ = await _time_recall(exact, qs, touch=False)
            score_ratio, bm25_ratio = await _quality(store, exact, qs[:200])
        finally:
            await exact.close()

        print(f"recall: {len(qs)} queries, {hits / len(qs):.1f} hits per query on average")
        print(f"recall kinds=lesson p50/p99 ms: {_percentile(lessons, 0.5):.3f} / "
              f"{_percentile(lessons, 0.99):.3f}")
        print(f"recall without use-count write p50/p99 ms: {_percentile(readonly, 0.5):.3f} / "
              f"{_percentile(readonly, 0.99):.3f}")
        print(f"recall ranking every match (no scan limit) p50/p99 ms: "
              f"{_percentile(exact_samples, 0.5):.3f} / {_percentile(exact_samples, 0.99):.3f}")
        print(f"recall_quality_vs_exact: score {score_ratio:.3f}, bm25 {bm25_ratio:.3f} "
              f"(scan limit {store.scan_limit}; 1.0 = as good as ranking every match)")
        print(f"recall mean ms: {statistics.fmean(samples):.3f}; max ms: {max(samples):.3f}")
        print(f"files: {size_mb:.1f} MB")
        print(f"single_insert_rate: {single_rate:.0f}/s")
        if insert_rate is not None:
            print(f"insert_rate: {insert_rate:.0f}/s")
        print(f"recall_p50_ms: {_percentile(samples, 0.5):.3f}")
        print(f"recall_p99_ms: {_percentile(samples, 0.99):.3f}")
    finally:
        await store.close()


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.memory", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="10,000 memories, not 100,000")
    parser.add_argument("--n", type=int, default=0, metavar="N",
                        help="this many memories (e.g. 1000000); overrides --quick")
    parser.add_argument("--queries", type=int, default=400)
    parser.add_argument("--scan-limit", type=int, default=SCAN_LIMIT,
                        help="matches ranked per recall pool (the store's default: %(default)s)")
    parser.add_argument("--dir", type=Path, help="where to put the database (default: a temp dir)")
    parser.add_argument("--base", type=Path, metavar="DIR",
                        help="keep the filled store in DIR (memory-N.sqlite3) and, when it is "
                        "already there, start each run from a copy of it instead of filling "
                        "(no insert rate then)")
    args = parser.parse_args()
    count = args.n or (10_000 if args.quick else 100_000)
    if count < 1:
        parser.error("--n must be at least 1")
    if args.dir:
        args.dir.mkdir(parents=True, exist_ok=True)
        for leftover in args.dir.glob("memory.sqlite3*"):
            leftover.unlink()
        asyncio.run(run(count, args.queries, args.dir, args.scan_limit, args.base))
    else:
        with tempfile.TemporaryDirectory(prefix="bench-memory-") as tmp:
            asyncio.run(run(count, args.queries, Path(tmp), args.scan_limit, args.base))


if __name__ == "__main__":
    main()
