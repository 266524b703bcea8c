"""Whose a turn is, and what that allows it: the tools it is offered, the memory it may
recall, the token budget it spends, and whether its events may carry any content.

A turn is the operator's (entityctl, autonomy, the todo list) or a peer's (its talk, its
delegated task). A wake a peer asked for runs the operator's todo list, as the operator's
turn, but on that peer's budget. A peer's turn is offered a conversation: `recall` and
`remember` over its own memories only, `check_peer_alive`, and each peer tool that acts
on another entity only when the peer holds that permission itself in [trust], exactly as
if it asked directly (and at most PEER_CALLS_PER_TURN calls that reach other entities);
a delegated task adds the coder and the workspace tools. It never gets the todo list,
the operator's memory, or (for a talk) the shell and files.

Words from a peer may ask for anything, and a model may obey them. So a turn that holds
words of anyone but its owner (an operator's turn once a tool brings a peer's words in:
recall with peers, talk_to_peer's answer, a wake or restart result, the notes of
delegated tasks) may from then on only read and answer: every tool that acts or sends
refuses, with the reason. Any turn holding a peer's words is private in every event
(events cross the hub) and stores what it learns under an origin naming every peer it
heard, so that those words are recalled only into turns entitled to them.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from .agent.toolbox import Tool, ToolFailed
from .memory_store import OPERATOR
from .messages import Goal

PEER_SOURCE = "peer:"  # Goal.source of a peer's turn: peer:<name>
WAKE_SOURCE = "wake:peer:"  # Goal.source of a wake a peer asked for: wake:peer:<name>
DELEGATED_PREFIX = "dlg-"  # the goal ids actors/peer/delegation.py gives delegated tasks
NAME = re.compile(r"[a-z0-9-]{1,32}")

# The tool actor's tools that work on the workspace (a delegated task's); a tool added
# there later is not offered to a peer's task until it is named here.
WORKSPACE_TOOLS = frozenset({"shell", "read_file", "write_file", "str_replace", "list_dir",
                             "glob", "grep"})
CONVERSATION_TOOLS = frozenset({"recall", "remember", "check_peer_alive"})
TASK_TOOLS = WORKSPACE_TOOLS | {"delegate_to_coder"}
# The peer tools that act on another entity, with the permission each needs. talk_to_peer
# is not among them: a talk relayed for a peer reads what the other entity keeps for us.
PEER_ACTIONS = {"report_to_peer": "report", "wake_up_peer": "wake",
                "restart_peer": "restart", "delegate_to_peer": "delegate"}
# What a turn that holds others' words may still do: read, remember (under their origin)
# and answer.
READ_ONLY_TOOLS = frozenset({"recall", "remember", "todo_list", "list_peers",
                             "check_peer_alive", "delegated_tasks", "read_file", "list_dir",
                             "glob", "grep", "check_balance", "peer_reputation",
                             "list_services", "service_logs"})
# Tools whose output holds the words of the peer named in their `peer` argument.
ANSWERED_BY_PEER = frozenset({"talk_to_peer", "wake_up_peer", "restart_peer"})
# A peer's turn may make this many calls that reach other entities (a ping, a report, a
# wake, ...): they go out in this entity's name, against the rate limits and INBOX
# shares other entities keep for it, so a peer must not be able to spend those in bulk.
PEER_CALLS_PER_TURN = 2
REACHES_PEERS = frozenset({"check_peer_alive", *PEER_ACTIONS})
_TASK_LINE = re.compile(r"(?m)^\S+ (?:to|from) ([a-z0-9-]{1,32}): ")


@dataclass
class TurnScope:
    owner: str = ""  # "": the operator's turn; else the peer's name
    kind: str = "operator"  # operator | talk | task
    grants: frozenset[str] = frozenset()  # a peer's permissions in [trust]
    payer: str = ""  # whose token budget: "": the operator's; else a peer's
    private_goal: bool = False  # Goal.private
    heard: set[str] = field(default_factory=set)  # peers whose words the turn holds
    peer_calls: int = 0  # calls of a peer's turn that reached other entities

    @classmethod
    def of(cls, goal: Goal, grants: Callable[[str], Iterable[str]]) -> TurnScope:
        """The scope of `goal`; `grants(peer)` is that peer's permissions in [trust]."""
        if goal.source.startswith(PEER_SOURCE):
            peer = goal.source.removeprefix(PEER_SOURCE)
            kind = "task" if goal.task_id.startswith(DELEGATED_PREFIX) else "talk"
            return cls(peer, kind, frozenset(grants(peer)), peer, True, {peer})
        return cls(payer=payer_of(goal), private_goal=goal.private)

    @property
    def private(self) -> bool:
        """Whether events must carry no content: the turn holds a peer's words."""
        return self.private_goal or bool(self.heard)

    @property
    def outsiders(self) -> set[str]:
        """The peers whose words the turn holds, other than its owner."""
        return self.heard - {self.owner}

    @property
    def origin(self) -> str:
        """The origin of what the turn writes to memory: everyone whose words it holds."""
        parts = {f"peer:{name}" for name in self.heard}
        if not self.owner:
            parts.add(OPERATOR)
        return ",".join(sorted(parts))

    def recall_origin(self, peers: bool = False) -> str:
        """The origin a recall is limited to: a peer's turn, its own; an operator's, its
        own unless it asks for what peers said too (then all: "")."""
        if self.owner:
            return f"peer:{self.owner}"
        return "" if peers else OPERATOR

    def hear(self, peers: Iterable[str]) -> None:
        self.heard.update(p for p in peers if NAME.fullmatch(p))

    def hear_origins(self, origins: Iterable[str]) -> None:
        """Hear the peers named by memory origins (see actors/memory_store/records.py)."""
        self.hear(part.removeprefix("peer:") for origin in origins
                  for part in origin.split(",") if part.startswith("peer:"))

    def offered(self, tool: str) -> bool:
        """Whether the turn's model is shown `tool` at all."""
        if not self.owner:
            return True
        if tool in CONVERSATION_TOOLS or PEER_ACTIONS.get(tool) in self.grants:
            return True
        return self.kind == "task" and tool in TASK_TOOLS

    def refusal(self, tool: str) -> str | None:
        """Why `tool` may not run now, or None."""
        if not self.offered(tool):
            return f"{tool} is not available in a turn run for {self.owner}"
        if self.owner and tool in REACHES_PEERS and self.peer_calls >= PEER_CALLS_PER_TURN:
            return (f"{tool} is refused: a turn run for {self.owner} may reach other "
                    f"entities {PEER_CALLS_PER_TURN} times, and it has")
        outsiders = self.outsiders
        if outsiders and tool not in READ_ONLY_TOOLS:
            return (f"{tool} is refused: this turn holds words of {', '.join(sorted(outsiders))}"
                    ", and a turn that does may read and answer but not act or send. Answer "
                    "with what you found; acting on it needs a new turn without those words.")
        return None

    def toolbox(self, tools: Iterable[Tool]) -> list[Tool]:
        """The tools offered to this turn, each checked when called and noting whose
        words its output brings in."""
        return [self._guarded(tool) for tool in tools if self.offered(tool.name)]

    def _guarded(self, tool: Tool) -> Tool:
        async def run(args: dict[str, Any]) -> str:
            refused = self.refusal(tool.name)
            if refused is not None:
                raise ToolFailed(refused)
            if tool.name in REACHES_PEERS:
                self.peer_calls += 1
            try:
                output = await tool.run(args)
            finally:
                if tool.name in ANSWERED_BY_PEER:
                    self.hear([str(args.get("peer", ""))])
            if tool.name == "delegated_tasks":  # titles and notes come from the peers
                self.hear(_TASK_LINE.findall(output))
            return output

        return dataclasses.replace(tool, run=run)


def payer_of(goal: Goal) -> str:
    """The peer whose token budget pays for `goal`'s turn; "" for the operator's."""
    for prefix in (PEER_SOURCE, WAKE_SOURCE):
        if goal.source.startswith(prefix):
            return goal.source.removeprefix(prefix)
    return ""


def either(public: Tool, private: Tool, scope: TurnScope) -> Tool:
    """One tool that runs as `private` once the turn is private, else as `public` (the
    tool actor keeps a private call's command and path out of its audit event)."""
    async def run(args: dict[str, Any]) -> str:
        return await (private if scope.private else public).run(args)

    return dataclasses.replace(public, run=run)
