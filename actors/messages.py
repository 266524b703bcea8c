"""The message kinds the entity's actors exchange (beyond protocol v1's own kinds).

Each is a typed record registered with `protocol.kind`; payload schemas follow from
the fields, as PROTOCOL.md section 11 describes.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from protocol import kind

# ---- tool actor ------------------------------------------------------------------------


@kind("tool_call")
@dataclass(frozen=True, slots=True)
class ToolCall:
    """Run one tool (shell, read_file, write_file, str_replace, list_dir, glob, grep)."""

    tool: str
    args: dict[str, Any] = field(default_factory=dict)
    caller: str = ""  # who asked, for the audit event (e.g. "coder", "orchestrator")
    private: bool = False  # a peer's turn: the audit's summary goes to the log only
    # Where it works: "" the entity's own workspace; a peer's name, the workspace of the
    # tasks that peer delegated here (Config.workspace_of).
    workspace: str = ""


@kind("tool_result")
@dataclass(frozen=True, slots=True)
class ToolResult:
    """`ok` false means the tool refused or failed; `error` says why, for the model to read."""

    ok: bool
    output: str = ""
    error: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@kind("tool_specs_get")
@dataclass(frozen=True, slots=True)
class ToolSpecsGet:
    """Ask the tool actor for its tools as OpenAI function schemas."""


@kind("tool_specs")
@dataclass(frozen=True, slots=True)
class ToolSpecs:
    tools: list[dict[str, Any]]


# ---- memory actor ----------------------------------------------------------------------

MEMORY_KINDS = ("fact", "lesson", "reflection", "episode")


@kind("memory_add")
@dataclass(frozen=True, slots=True)
class MemoryAdd:
    kind: str  # one of MEMORY_KINDS
    text: str
    importance: float = 0.5  # 0..1
    source: str = ""
    # Whose words it holds: "operator", "peer:<name>", or several comma-joined (a turn
    # that held several); a peer's turn recalls only its own (actors/memory_store/records.py).
    origin: str = "operator"


@kind("memory_ref")
@dataclass(frozen=True, slots=True)
class MemoryRef:
    id: int
    merged: bool = False  # true when an existing memory was updated instead of adding one


@kind("memory_search")
@dataclass(frozen=True, slots=True)
class MemorySearch:
    query: str
    limit: int = 10
    kinds: list[str] = field(default_factory=list)  # empty: all kinds
    origin: str = ""  # only memories of exactly this origin; empty: all


@dataclass(frozen=True, slots=True)
class MemoryHit:
    id: int
    kind: str
    text: str
    importance: float
    uses: int
    created_at: float
    score: float
    origin: str = "operator"


@kind("memory_hits")
@dataclass(frozen=True, slots=True)
class MemoryHits:
    hits: list[MemoryHit]


@kind("todo_add")
@dataclass(frozen=True, slots=True)
class TodoAdd:
    text: str
    priority: int = 0


@kind("todo_update")
@dataclass(frozen=True, slots=True)
class TodoUpdate:
    id: int
    status: str | None = None  # open | doing | done | dropped
    text: str | None = None


@kind("todo_list")
@dataclass(frozen=True, slots=True)
class TodoList:
    include_done: bool = False


@dataclass(frozen=True, slots=True)
class TodoItem:
    id: int
    text: str
    status: str
    priority: int
    created_at: float
    updated_at: float


@kind("todo_items")
@dataclass(frozen=True, slots=True)
class TodoItems:
    items: list[TodoItem]


@kind("log_append")
@dataclass(frozen=True, slots=True)
class LogAppend:
    """One entry of the conversation log (a goal, a step, an answer)."""

    conversation: str
    role: str
    content: str
    data: dict[str, Any] = field(default_factory=dict)


@kind("history_get")
@dataclass(frozen=True, slots=True)
class HistoryGet:
    conversation: str = ""  # empty: all conversations, newest last
    limit: int = 50


@dataclass(frozen=True, slots=True)
class HistoryEntry:
    id: int
    conversation: str
    role: str
    content: str
    created_at: float


@kind("history")
@dataclass(frozen=True, slots=True)
class History:
    entries: list[HistoryEntry]


# ---- orchestrator and coder ------------------------------------------------------------


@kind("goal")
@dataclass(frozen=True, slots=True)
class Goal:
    """Work for the orchestrator: from entityctl ask/task, an autonomy tick or a peer."""

    text: str
    task_id: str = ""  # empty: the orchestrator assigns one
    conversation: str = ""  # empty: a new conversation per task
    source: str = "ctl"  # ctl | autonomy | peer:<entity>
    # A peer's goal: its events carry no content (they cross the hub, where the peer's
    # encrypted words must not appear), and the outcome goes to `notify` as `turn_done`.
    private: bool = False
    notify: str = ""  # an actor address ("entity/actor") to tell when the turn ends


@kind("turn_done")
@dataclass(frozen=True, slots=True)
class TurnDone:
    """A turn's outcome, for the actor that asked to be told (Goal.notify)."""

    task_id: str
    ok: bool
    text: str
    stopped: str = ""
    commits: list[str] = field(default_factory=list)


@kind("goal_cancel")
@dataclass(frozen=True, slots=True)
class GoalCancel:
    """Stop a goal of the orchestrator: one still queued never starts, a running turn stops
    where it is (its coding task and sandbox commands with it). Its answer event and its
    `turn_done` say `stopped` "cancelled", and the goal is answered: not run again after a
    restart. Only entityctl (`<entity>/ctl`) and the actor the goal notifies (Goal.notify)
    may cancel it; anyone else is refused with `not_allowed`, and a goal neither queued nor
    running with `not_found`."""

    task_id: str
    reason: str = ""  # why, for the answer (its first 300 characters are kept)


@kind("goal_cancelled")
@dataclass(frozen=True, slots=True)
class GoalCancelled:
    task_id: str
    was: str  # "queued": it never started; "running": its turn was stopped


@kind("turn_cancel")
@dataclass(frozen=True, slots=True)
class TurnCancel:
    """From the orchestrator, once a cancel stopped a goal's turn, to the coder and the tool
    actor: stop that goal's coding task (unless it is committing already) and kill the
    orchestrator's and the coder's shell command in flight. Refused with `not_allowed`
    from any other actor."""

    task_id: str


@kind("goal_accepted")
@dataclass(frozen=True, slots=True)
class GoalAccepted:
    task_id: str
    queued: int  # turns ahead of this one


@kind("wake")
@dataclass(frozen=True, slots=True)
class Wake:
    """Start a turn on the todo list if idle."""

    reason: str = ""


@kind("wake_result")
@dataclass(frozen=True, slots=True)
class WakeResult:
    started: bool
    reason: str
    task_id: str = ""


@kind("code_task")
@dataclass(frozen=True, slots=True)
class CodeTask:
    """Coding work for the coder actor, on the entity's git workspace (or a peer's)."""

    task_id: str
    goal: str
    context: str = ""
    private: bool = False  # no content in the coder's events (see Goal.private)
    payer: str = ""  # the peer whose token budget pays for it; empty: the operator's
    workspace: str = ""  # "" the entity's own; a peer's name: its delegated tasks' (ToolCall)


@kind("code_result")
@dataclass(frozen=True, slots=True)
class CodeResult:
    ok: bool
    summary: str
    commit: str = ""  # the daemon's commit of the work, if anything changed
    diffstat: str = ""
    steps: int = 0


# ---- the workspace's commits (answered by the coder, beside its coding turn) -----------


@kind("commits_get")
@dataclass(frozen=True, slots=True)
class CommitsGet:
    """The workspace's commits (HEAD's history), newest first; refused with `bad_request`
    for a `limit` outside 1..200 or a `before` that is not 4 to 40 hex digits."""

    limit: int = 30
    # Paging: the commits that come after this one (a full sha or a prefix) in HEAD's
    # history, as `commits` listed it; empty: from HEAD. Not in that history: `not_found`.
    before: str = ""


@dataclass(frozen=True, slots=True)
class CommitInfo:
    sha: str
    parents: list[str]  # the first 16
    author: str  # the author's name, as the commit has it (its first 100 characters)
    ts: int  # the author's time, unix seconds
    subject: str  # the message's first line (its first 300 characters)
    # Against the first parent (nothing for the root commit); a binary file counts no
    # lines, a withheld one (see FileChange) neither.
    files_changed: int
    insertions: int
    deletions: int


@kind("commits")
@dataclass(frozen=True, slots=True)
class Commits:
    commits: list[CommitInfo]
    more: bool = False  # older commits follow: ask again with `before` the last sha


@kind("commit_diff_get")
@dataclass(frozen=True, slots=True)
class CommitDiffGet:
    """One commit of the workspace's branches with its diff; refused with `bad_request`
    for a `sha` that is not 4 to 40 hex digits, `not_found` for one that names no commit
    on a branch (or more than one)."""

    sha: str


@dataclass(frozen=True, slots=True)
class FileChange:
    path: str  # as git has it; bytes that are not UTF-8 show as U+FFFD
    insertions: int
    deletions: int
    binary: bool = False  # git counts no lines of it
    # A path the file tools refuse (.env*, key files, .git): its change is listed, its
    # lines are not counted and its hunk is left out of the diff.
    withheld: bool = False


@kind("commit_diff")
@dataclass(frozen=True, slots=True)
class CommitDiff:
    sha: str
    subject: str
    diff: str  # the unified diff against the first parent, without withheld paths' hunks
    truncated: bool  # the diff was cut at a line end below 200,000 bytes (in UTF-8)
    files: list[FileChange]
    files_cut: int = 0  # files it changes past the first 1,000 (or 200,000 bytes of paths)
