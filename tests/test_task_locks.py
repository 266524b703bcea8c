"""One decision at a time per task (actors/peer/task_locks.py): the same task's decisions
wait for each other, different tasks' do not, and a lock no one holds is dropped (the
end to end race it closes: tests/test_attack_review_races.py)."""

from __future__ import annotations

import asyncio

from actors.peer.task_locks import TaskLocks


async def test_one_tasks_decisions_take_turns_and_others_go_on() -> None:
    locks = TaskLocks()
    order: list[str] = []
    first_in = asyncio.Event()

    async def decide(task: str, name: str, hold: float) -> None:
        async with locks.hold(task, "out", "entity-b"):
            order.append(f"{name} in")
            first_in.set()
            await asyncio.sleep(hold)
            order.append(f"{name} out")

    first = asyncio.create_task(decide("t1", "deliver", 0.2))
    await first_in.wait()
    await asyncio.gather(decide("t1", "reject", 0), decide("t2", "other", 0), first)
    assert order.index("other out") < order.index("deliver out")  # t2 did not wait
    assert order.index("deliver out") < order.index("reject in")  # t1's took turns
    assert len(locks) == 0  # nothing kept once no one holds or waits


async def test_a_decision_that_fails_lets_the_next_one_in() -> None:
    locks = TaskLocks()

    async def failing() -> None:
        async with locks.hold("t1", "in", "entity-a"):
            raise ValueError("the ledger said no")

    try:
        await failing()
    except ValueError:
        pass
    async with asyncio.timeout(1):
        async with locks.hold("t1", "in", "entity-a"):
            pass
    assert len(locks) == 0
