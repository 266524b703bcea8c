"""The prompts that drive the loop (package data) against the tools the loop offers: every
tool a prompt or an autonomy goal tells the model to call is one that turn has, every
placeholder is filled, and the autonomy goals ask for the steps in the order the cycle
runs them (plan into the todo list; work an item; report; delegate; rate)."""

from __future__ import annotations

import re
from typing import Any

import pytest

from actors import prompts
from actors.ledger.tools import LedgerTools
from actors.messages import Goal, TodoItem, TodoItems
from actors.orchestrator import _plan_goal, _todo_goal
from actors.orchestrator_tools import OrchestratorTools
from actors.peer.tools import PeerTools
from actors.sandbox.specs import TOOL_NAMES
from actors.turn_scope import DELEGATED_PREFIX, PEER_SOURCE, TurnScope
from entityd import PeersSection

SNAKE = re.compile(r"`?\b([a-z]+(?:_[a-z]+)+)\b`?")
NOT_TOOLS = {"max_tokens", "entity_a"}  # snake_case words a prompt may say that are no tools


class _NoContext:
    """Tools are only built here, never run: nothing may reach for the context."""

    entity = "entity-a"

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"building the tools used ctx.{name}")


def offered(goal: Goal, grants: tuple[str, ...] = ("talk", "report")) -> set[str]:
    """The names of the tools the orchestrator's turn for `goal` shows its model, a
    peer's turn when the peer is granted `grants`."""
    scope = TurnScope.of(goal, lambda peer: grants)
    ctx: Any = _NoContext()
    operator = not scope.owner
    tools = [*OrchestratorTools(ctx, goal.task_id, scope).tools(),
             *PeerTools(ctx, PeersSection(), may_pay=operator).tools(),
             *(LedgerTools(ctx, 1.0).tools() if operator else [])]
    names = {tool.name for tool in scope.toolbox(tools)}
    return names | {name for name in TOOL_NAMES if scope.offered(name)}


def named_tools(text: str) -> list[str]:
    return [m for m in SNAKE.findall(text) if m not in NOT_TOOLS]


OPERATOR = Goal("tidy the README", task_id="t1", source="ctl")
PEER_TALK = Goal("hello", task_id="t2", source=PEER_SOURCE + "entity-b")
PEER_TASK = Goal("write calc.py", task_id=DELEGATED_PREFIX + "t4", source=PEER_SOURCE + "entity-b")


@pytest.mark.parametrize(("prompt", "goal", "values"), [
    ("orchestrator", OPERATOR, {"entity": "entity-a", "balance": "1000 available"}),
    ("peer", PEER_TASK, {"entity": "entity-a", "peer": "entity-b"}),
])
def test_every_tool_a_prompt_names_is_offered_to_its_turn(
        prompt: str, goal: Goal, values: dict[str, str]) -> None:
    text = prompts.load(prompt, **values)
    assert "{" not in text and "}" not in text, f"an unfilled placeholder in {prompt}.md"
    named = named_tools(text)
    assert named, f"{prompt}.md names no tool"
    missing = sorted(set(named) - offered(goal))
    assert not missing, f"{prompt}.md tells the model to call {missing}, which its turn lacks"


def test_a_peer_turn_is_not_told_of_tools_it_lacks() -> None:
    """The peer's prompt must not invite spending, and a peer's turn has no money tool
    whatever the peer is granted."""
    text = prompts.load("peer", entity="entity-a", peer="entity-b")
    everything = ("talk", "report", "delegate", "wake", "restart")
    for tool in ("delegate_to_peer", "pay_peer", "accept_delivery", "reject_delivery",
                 "rate_peer", "check_balance"):
        assert tool not in text
    for tool in ("pay_peer", "accept_delivery", "reject_delivery", "rate_peer"):
        assert tool not in offered(PEER_TALK, everything)
        assert tool not in offered(PEER_TASK, everything)
    # A talk turn is not offered the coder: the prompt's mention is for a delegated task.
    assert "delegate_to_coder" not in offered(PEER_TALK)


def test_the_autonomy_goals_name_offered_tools_in_the_cycle_s_order() -> None:
    mission = "build a platform where AIs trade"
    plan = _plan_goal(mission)
    assert named_tools(plan) == ["todo_add"]  # a plan is todo items, nothing else
    assert plan.index("todo_add") < plan.index("answer with the plan")

    todos = TodoItems([TodoItem(1, "write calc.py with its test", "open", 1, 0.0, 0.0)])
    work = _todo_goal(todos, mission, settled=["d-1 (entity-b)"])
    tools = named_tools(work)
    assert set(tools) <= offered(Goal(work, task_id="t3", source="wake:autonomy"))
    # Work it, then (for what a peer offers) find the peer and delegate, then report,
    # then rate what was paid.
    order = ["list_peers", "report_to_peer", "rate_peer"]
    assert [t for t in tools if t in order] == order
    assert "write calc.py with its test" in work
    assert "#1" in work or "1" in work


def test_the_coder_prompt_names_only_the_workspace_tools() -> None:
    text = prompts.load("coder", entity="entity-a")
    assert "{" not in text
    for word in named_tools(text):
        assert word in TOOL_NAMES, f"coder.md names {word}, which is no workspace tool"
