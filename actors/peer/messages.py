"""The message kinds of the federation: what entities send each other, and what the
orchestrator and entityctl ask of their own peer actor."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import kind

# ---- between entities (fed.evt / fed.req / fed.cmd) ------------------------------------


@kind("heartbeat")
@dataclass(frozen=True, slots=True)
class Heartbeat:
    """Presence, on fed.evt.<entity>.peer.heartbeat every peers.heartbeat_interval."""

    capabilities: list[str]
    interval: float
    started_at: float
    busy: bool = False


@kind("talk")
@dataclass(frozen=True, slots=True)
class Talk:
    text: str
    conversation: str = ""


@kind("talk_reply")
@dataclass(frozen=True, slots=True)
class TalkReply:
    ok: bool
    text: str
    task_id: str = ""


@kind("report")
@dataclass(frozen=True, slots=True)
class Report:
    text: str


@kind("restart")
@dataclass(frozen=True, slots=True)
class Restart:
    actor: str = ""  # empty: every actor


@kind("command_result")
@dataclass(frozen=True, slots=True)
class CommandResult:
    """The answer to a durable command (wake, restart), itself durable; corr is its id."""

    ok: bool
    code: str  # done | noop | not_trusted | rate_limited | unknown_actor | failed
    text: str


@kind("task_offer")
@dataclass(frozen=True, slots=True)
class TaskOffer:
    task_id: str
    title: str
    description: str
    deliverables: str = ""
    deadline: float = 0.0  # epoch seconds; 0: none
    capabilities: list[str] = field(default_factory=list)
    # Paid work: the delegator's hold (its entry id on the delegator's chain) escrows at
    # least `price` for the delegate until the deadline; the delegate checks it first.
    price: int = 0
    hold: bytes = b""


@kind("task_update")
@dataclass(frozen=True, slots=True)
class TaskUpdate:
    """A step of a delegated task: from the delegate accepted, rejected, progress,
    completed, failed; from the delegator paid or unpaid once it settled the escrow. Unpaid
    before the delegate delivered (the task rejected, or its deadline passed), the task is
    withdrawn: the delegate stops its turn and answers failed. An unpaid task (price 0) is
    withdrawn by the delegator's withdrawn, with the same effect; a priced one only
    through its escrow."""

    task_id: str
    state: str
    note: str = ""
    patch: bytes = b""  # completed coding work: `git format-patch` output
    commits: int = 0
    # A patch too large for one envelope stays with the delegate, to be fetched:
    size: int = 0
    sha256: str = ""


@kind("deliverable_get")
@dataclass(frozen=True, slots=True)
class DeliverableGet:
    """A piece of a delegated task's deliverable kept by the delegate (fed.req fetch)."""

    task_id: str
    offset: int
    length: int


@kind("deliverable_chunk")
@dataclass(frozen=True, slots=True)
class DeliverableChunk:
    data: bytes


# ---- to the entity's own peer actor (loc.<entity>.peer.*) -------------------------------


@kind("peers_get")
@dataclass(frozen=True, slots=True)
class PeersGet:
    pass


@dataclass(frozen=True, slots=True)
class PeerInfo:
    name: str
    public_key: str
    pinned_by: str  # first-sight | config
    capabilities: list[str]
    first_seen: float
    last_seen: float  # 0: never heard
    present: bool
    trust: list[str]


@kind("peers")
@dataclass(frozen=True, slots=True)
class Peers:
    peers: list[PeerInfo]


@kind("peer_check")
@dataclass(frozen=True, slots=True)
class PeerCheck:
    peer: str


@kind("peer_check_result")
@dataclass(frozen=True, slots=True)
class PeerCheckResult:
    peer: str
    state: str  # alive | unresponsive | unknown
    latency_ms: float = 0.0
    last_seen_ago: float = -1.0  # seconds; -1: never
    detail: str = ""


@kind("peer_talk")
@dataclass(frozen=True, slots=True)
class PeerTalk:
    peer: str
    text: str
    conversation: str = ""
    timeout: float = 0.0  # 0: peers.talk_timeout


@kind("peer_report")
@dataclass(frozen=True, slots=True)
class PeerReport:
    peer: str
    text: str


@kind("peer_wake")
@dataclass(frozen=True, slots=True)
class PeerWake:
    peer: str
    reason: str = ""


@kind("peer_restart")
@dataclass(frozen=True, slots=True)
class PeerRestart:
    peer: str
    actor: str = ""


@kind("peer_delegate")
@dataclass(frozen=True, slots=True)
class PeerDelegate:
    peer: str
    title: str
    description: str
    deliverables: str = ""
    deadline_s: float = 0.0  # from now; 0: peers.delegation_timeout
    capabilities: list[str] = field(default_factory=list)
    price: int = 0  # escrowed from our balance until the delivery is accepted


@kind("task_settle")
@dataclass(frozen=True, slots=True)
class TaskSettle:
    """The delegator's verdict on a delivered task: accept (the escrow pays `amount`, or
    the whole price when 0) or reject (the escrow is voided, `reason` says why)."""

    task_id: str
    accept: bool
    amount: int = 0
    reason: str = ""


@kind("peer_outcome")
@dataclass(frozen=True, slots=True)
class PeerOutcome:
    """What a peer tool did, in words a model and a person can read."""

    peer: str
    ok: bool
    code: str  # e.g. delivered, queued, done, noop, not_trusted, timeout, unknown_peer
    text: str
    id: str = ""  # the envelope id or task id it concerns
    latency_ms: float = 0.0


@kind("tasks_get")
@dataclass(frozen=True, slots=True)
class TasksGet:
    pass


@dataclass(frozen=True, slots=True)
class TaskInfo:
    task_id: str
    direction: str  # out: we delegated it | in: a peer delegated it to us
    peer: str
    title: str
    state: str
    note: str
    branch: str
    created: float
    updated: float
    price: int = 0
    money: str = ""  # the escrow: held | posted | voided | expired ("" when unpaid)


@kind("tasks")
@dataclass(frozen=True, slots=True)
class Tasks:
    tasks: list[TaskInfo]


@kind("peer_report_in")
@dataclass(frozen=True, slots=True)
class PeerReportIn:
    """To the orchestrator: a peer reported something (already kept in memory)."""

    peer: str
    text: str
    id: str
    memory_id: int = 0
