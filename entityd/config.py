"""Daemon configuration: a TOML file, then ENTITYD_<SECTION>_<KEY> environment overrides.

Each key is declared once, below, as a field of its section with its default, its doc and
its checks (entityd.schema); loading, the overrides, the errors (naming the key, what was
found and what is expected) and the starter file `entityd init` writes follow from that.
The checks that involve two keys are in _check_across.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import subjects

from . import a2a_settings, hublink, mcp_servers, schema
from .a2a_settings import A2ASettings
from .errors import ConfigError
from .mcp_servers import McpServer
from .schema import hex_key, key, one_of, positive, table, tcp_port, url_of, zero_or_more

CONFIG_NAME = "entityd.toml"
PEER_WORKSPACES = "peer-workspaces"  # under DATA_DIR: one workspace per delegating peer
PEER_PERMISSIONS = ("talk", "report", "delegate", "wake", "restart")
PINNING = ("first-sight", "config")
LLM_PROVIDERS = ("moonshot", "openrouter", "openai", "ollama", "custom", "scripted")
_PERMITTED = one_of(*PEER_PERMISSIONS)
_MIB = 1024 * 1024


def _entity_name(value: str) -> str | None:
    if not value:
        return "missing; set it to the entity's name, e.g. entity-a"
    if not subjects.valid_name(value):
        return f"{value!r} must be 1-32 of lowercase letters, digits and '-'"
    return None


@dataclass(frozen=True)
class EntitySection:
    """Who the entity is, and where it keeps its state."""

    name: str = key("", "1-32 of lowercase letters, digits and '-'", _entity_name,
                    starter='"{name}"')
    data_dir: str = key("", "Where the key, the embedded nats-server's JetStream store, the "
                        "memory and the workspace live.", starter='"{data_dir}"')


@dataclass(frozen=True)
class NatsSection:
    """The bus: an embedded nats-server, or an existing server at nats.url."""

    url: str = key("", "Empty: start an embedded nats-server on host:port. Set a URL to use "
                   "an existing server.",
                   url_of(("nats://", "tls://", "ws://", "wss://"), "a nats:// or tls:// URL"))
    host: str = key("127.0.0.1", "where the embedded server listens ...")
    port: int = key(4222, "... and its port", tcp_port, starter="{port}")
    server_binary: str = key("", "empty: the venv's nats-server, then PATH")
    config: str = key("", "empty: the shipped nats.conf, with a login added")
    connect_timeout: float = key(5.0, "seconds per connection attempt", positive)
    ready_timeout: float = key(20.0, "seconds to wait for the embedded server", positive)
    hub_url: str = key("", "Federation: run the embedded server as a leaf of this hub "
                       "(tls://hub.example.net:7422), logging in with the nkey seed from "
                       "`entityd federation hub-user` (see deploy/FEDERATION.md).")
    hub_credentials: str = key("", "empty: DATA_DIR/keys/hub.nk")
    hub_ca_file: str = key("", "the hub's CA (its ca.crt), pinned; empty: the system's roots")
    hub_insecure: bool = key(False, "true: allow a plain nats-leaf:// hub beyond loopback "
                             "(no TLS)")
    domain: str = key("", "JetStream domain; empty: the entity's name")


@dataclass(frozen=True)
class RuntimeSection:
    """The actors' runtime: asks, mailboxes, and restarts after a crash."""

    ask_timeout: float = key(5.0, "seconds an ask waits for its reply by default", positive)
    queue_size: int = key(1024, "mailbox bound of each actor; past it: overloaded", positive)
    restart_budget: int = key(5, "crashes of one actor allowed within restart_window ...",
                              positive)
    restart_window: float = key(60.0, "... seconds; past that the daemon exits non-zero",
                                positive)
    backoff_initial: float = key(0.1, "seconds before a restart, doubling per recent crash ...",
                                 positive)
    backoff_max: float = key(10.0, "... up to this", positive)
    drain_timeout: float = key(10.0, "seconds SIGTERM waits for queued work", positive)


@dataclass(frozen=True)
class ProtocolSection:
    """What a signed message must be to be accepted."""

    replay_window: float = key(90.0, "how old (seconds) a message may be; replays in it are "
                               "refused", positive)
    replay_capacity: int = key(100_000, "ids remembered per sender key", positive)
    max_message_bytes: int = key(_MIB, "larger envelopes are refused before decoding",
                                 positive)


@dataclass(frozen=True)
class LogSection:
    """The daemon's log."""

    level: str = key("info", "debug, info, warning or error",
                     one_of("debug", "info", "warning", "error"))
    format: str = key("auto", "auto: JSON when not on a terminal, key=value on one",
                      one_of("auto", "json", "console"))


@dataclass(frozen=True)
class LlmSection:
    """The model the orchestrator and the coder talk to."""

    provider: str = key("moonshot", "moonshot | openrouter | openai | ollama | custom (set "
                        "base_url) | scripted (offline demo)", one_of(*LLM_PROVIDERS))
    model: str = key("", "empty: the provider's default (moonshot: kimi-k2.5)")
    base_url: str = key("", "empty: the provider's URL",
                        url_of(("http://", "https://"), "an http(s) URL"))
    api_key_env: str = key("", "empty: the provider's variable, e.g. MOONSHOT_API_KEY")
    api_key_file: str = key("", "or a 0600 file holding the key (never inside the workspace)")
    timeout: float = key(120.0, "seconds per call", positive)
    max_retries: int = key(4, "of a call answered 429 or 5xx, with backoff", zero_or_more())
    max_steps_per_turn: int = key(24, "model calls one turn may make", positive)
    max_tokens_per_hour: int = key(400_000, "the operator's turns' budget; peers never spend "
                                   "it", positive)
    temperature: float = key(0.6, "the model's sampling temperature")


@dataclass(frozen=True)
class SandboxSection:
    """The limits every shell command of the entity runs under."""

    uid: int = key(65534, "the unprivileged uid commands run as when entityd runs as root")
    gid: int = key(65534, "... and its gid")
    timeout: float = key(60.0, "wall-clock seconds; the whole process group is killed after",
                         positive)
    cpu_seconds: int = key(60, "CPU seconds of each process", positive)
    memory_mb: int = key(2048, "memory of the whole call (a cgroup where the host has one)",
                         positive)
    file_size_mb: int = key(64, "the largest file a process may write", positive)
    max_processes: int = key(256, "processes of the whole call", positive)
    max_open_files: int = key(512, "open files of each process", positive)
    output_limit: int = key(16_000, "characters of output kept; the rest is cut with a notice",
                            positive)
    network_commands: tuple[str, ...] = key((), 'program names allowed network access, e.g. '
                                            '["pip"]')
    workspace_mb: int = key(4096, "disk quota of the workspace; a call that grows it past this "
                            "is killed", positive)
    peer_workspace_mb: int = key(1024, "disk quota of each workspace a delegating peer's tasks "
                                 "work in (DATA_DIR/peer-workspaces/<peer>)", positive)


@dataclass(frozen=True)
class WorkspaceSection:
    """The entity's git workspace: the only place its tools may write."""

    path: str = key("", "empty: DATA_DIR/workspace")


@dataclass(frozen=True)
class MemorySection:
    """The entity's memory, history and todo list."""

    path: str = key("", "empty: DATA_DIR/memory.sqlite3")


@dataclass(frozen=True)
class AutonomySection:
    """Work without being asked."""

    enabled: bool = key(False, "wake by itself every `interval` seconds and work the todo list")
    interval: float = key(600.0, "seconds between wake-ups", positive)
    mission: str = key("", "what the entity works towards when left alone: with its todo "
                       "list empty, it plans the next items from this")
    max_turns: int = key(10, "turns it may start by itself per hour ...", positive)
    max_tokens: int = key(200_000, "... and tokens those turns may spend per hour; then it "
                          "waits for the next hour", positive)


@dataclass(frozen=True)
class PeersSection:
    """The federation: presence, the peer tools, delegation (see README, "Peers")."""

    heartbeat_interval: float = key(5.0, "seconds between presence heartbeats", positive)
    alive_window: float = key(0.0, "seconds a heartbeat counts as presence; 0: 3 intervals",
                              zero_or_more("auto"))
    pinning: str = key("first-sight", "pin a peer's key the first time it is seen, or "
                       '"config": only [peer_keys]', one_of(*PINNING))
    capabilities: tuple[str, ...] = key(("chat", "code"), "what this entity offers for "
                                        "delegated tasks")
    default_trust: tuple[str, ...] = key(("talk", "report"), "what peers not listed in [trust] "
                                         "may do", _PERMITTED)
    rate_per_minute: int = key(120, "requests and commands accepted per peer per minute ...",
                               positive)
    rate_burst: int = key(30, "... with bursts up to this many", positive)
    ping_timeout: float = key(3.0, "how long check_peer_alive waits for the pong", positive)
    talk_timeout: float = key(600.0, "how long talk_to_peer waits for the peer's answer",
                              positive)
    command_timeout: float = key(15.0, "how long wake and restart wait for the peer's result",
                                 positive)
    delegation_timeout: float = key(3600.0, "the default deadline of a delegated task",
                                    positive)
    # What one peer's turns (its talks, delegated tasks and wakes) may spend of the model,
    # apart from the operator's llm.max_tokens_per_hour.
    max_tokens_per_hour: int = key(40_000, "what each peer's turns may spend, never the "
                                   "operator's budget", positive)
    max_text_chars: int = key(16_000, "the longest talk or report text taken from a peer",
                              positive)
    inbox_per_sender: int = key(32, "commands a peer may keep waiting here, per operation; "
                                "more are refused", positive)
    inbox_max_bytes: int = key(512 * _MIB, "the INBOX's total size; full, every sender is "
                               "refused", positive)
    deliverables_max_bytes: int = key(512 * _MIB, "the store of deliverables kept for "
                                      "delegators ...", positive)
    deliverables_per_peer_bytes: int = key(128 * _MIB, "... what one delegator's may take of "
                                           "it ...", positive)
    deliverables_ttl: float = key(7 * 24 * 3600.0, "... and how long one is kept (seconds)",
                                  positive)

    @property
    def window(self) -> float:
        """Seconds since the last heartbeat within which a peer counts as present."""
        return self.alive_window or 3 * self.heartbeat_interval


@dataclass(frozen=True)
class EconomySection:
    """The ledger: this entity's account on the LEDGER stream (README, "The economy")."""

    hub_domain: str = key("fed_hub", "in a federation, the hub's JetStream domain, where "
                          "the LEDGER stream lives (the one `entityd federation hub-conf` "
                          "renders)")
    append_timeout: float = key(10.0, "seconds to wait for the LEDGER stream to store an "
                                "entry or answer a read", positive)
    auto_accept: bool = key(False, "true: pay a priced delivery once accept_command passes on "
                            "it, with no `entityctl tasks accept`")
    accept_command: str = key("", 'must exit 0 on the delivered branch (sandboxed), e.g. '
                              '"python3 -m unittest"')
    accept_timeout: float = key(600.0, "seconds accept_command may run; past them the operator "
                                "decides", positive)


@dataclass(frozen=True)
class EventsSection:
    """The EVENTS stream: what the entity's events (and its peers', as it sees them) are
    kept as, for `entityctl watch --since` and the web page to resume from."""

    max_age: float = key(7 * 24 * 3600.0, "seconds an event is kept", positive)
    max_bytes: int = key(256 * _MIB, "the stream's total size; full, the oldest go first",
                         positive)
    peers: bool = key(True, "also keep the federation's events this entity's server sees "
                      "(its peers'); only with the embedded server")


def _web_port(value: int) -> str | None:
    return None if value == 0 else tcp_port(value)


@dataclass(frozen=True)
class WebSection:
    """The entity's web page (README, "The web page"): loopback only unless allowed."""

    enabled: bool = key(False, "serve the page; `entityctl web` prints its login link")
    host: str = key("127.0.0.1", "where it listens; beyond loopback needs web.allow_remote")
    port: int = key(0, "its port; 0 picks a free one (`entityctl web` says which)", _web_port)
    allow_remote: bool = key(False, "true lets web.host be a non-loopback address: put TLS "
                             "(a reverse proxy) in front, the login travels in the clear")
    session_hours: float = key(12.0, "how long a login lasts", positive)


DM_POLICIES = ("off", "approve", "allow")


@dataclass(frozen=True)
class MoltbookSection:
    """Moltbook, the AI agents' social network, through its API (README, "Moltbook")."""

    base_url: str = key("https://www.moltbook.com/api/v1", "its API; keep the www (the bare "
                        "host redirects and drops the key)",
                        url_of(("https://", "http://"), "an http(s) URL"))
    api_key_env: str = key("MOLTBOOK_API_KEY", "the variable holding the agent's key ...")
    api_key_file: str = key("", "... or a 0600 file holding it (default: DATA_DIR/keys/"
                            "moltbook.key, where `entityctl moltbook register` keeps it)")
    dms: str = key("off", 'direct messages: "off", "approve" (the operator approves each '
                   'with `entityctl moltbook approve ID`) or "allow"; DMs count as public',
                   one_of(*DM_POLICIES))
    requests_per_minute: int = key(100, "calls per minute (Moltbook's limit)", positive)
    post_interval: float = key(1800.0, "seconds between posts (Moltbook's: 30 min)", positive)
    comment_interval: float = key(20.0, "seconds between comments (Moltbook's: 20 s)",
                                  positive)
    comments_per_day: int = key(50, "comments per day (Moltbook's limit)", positive)
    timeout: float = key(30.0, "seconds per call", positive)


@dataclass(frozen=True)
class ServicesSection:
    """The services the entity writes and declares in its workspace (README, "Services")."""

    enabled: bool = key(True, "run the services the workspace's services.toml declares")
    file: str = key("services.toml", "where in the workspace they are declared")
    host: str = key("127.0.0.2", "where each service's preview port listens (loopback; not "
                    "127.0.0.1, whose cookies, the web page's login among them, it would get)")
    ready_timeout: float = key(30.0, "seconds a new revision has to become ready", positive)
    restart_budget: int = key(5, "restarts of one service within restart_window ...", positive)
    restart_window: float = key(300.0, "... seconds; past them it stays stopped, said in an "
                                "event", positive)
    max_services: int = key(8, "services one workspace may declare", positive)
    log_bytes: int = key(256 * 1024, "the output kept per service (the newest)", positive)


def _peer_name(name: str) -> str | None:
    if not subjects.valid_name(name):
        return "not an entity name ([a-z0-9-]{1,32})"
    if name.startswith("a2a-"):  # actors/peer/link.py: the A2A clients' turns are a2a-<name>
        return "no peer's name: a2a-<client> names an A2A client's turns"
    return None


def _peer_or_everyone(name: str) -> str | None:
    problem = None if name == "*" else _peer_name(name)
    return problem and f'{problem} or "*"'


def _price_pair(value: Any) -> str | None:
    if (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
                    for v in value)):
        return None
    return "expected [input, output]: two numbers >= 0, US dollars per million tokens"


def _permissions(value: Any) -> str | None:
    if not isinstance(value, list) or not all(isinstance(p, str) for p in value):
        return f"expected a list drawn from {', '.join(PEER_PERMISSIONS)}"
    return _PERMITTED(tuple(value))


@dataclass(frozen=True)
class Config:
    """The whole configuration: its sections and tables, in the starter file's order."""

    entity: EntitySection
    nats: NatsSection = field(default_factory=NatsSection)
    runtime: RuntimeSection = field(default_factory=RuntimeSection)
    protocol: ProtocolSection = field(default_factory=ProtocolSection)
    log: LogSection = field(default_factory=LogSection)
    llm: LlmSection = field(default_factory=LlmSection)
    sandbox: SandboxSection = field(default_factory=SandboxSection)
    workspace: WorkspaceSection = field(default_factory=WorkspaceSection)
    memory: MemorySection = field(default_factory=MemorySection)
    autonomy: AutonomySection = field(default_factory=AutonomySection)
    peers: PeersSection = field(default_factory=PeersSection)
    economy: EconomySection = field(default_factory=EconomySection)
    events: EventsSection = field(default_factory=EventsSection)
    web: WebSection = field(default_factory=WebSection)
    moltbook: MoltbookSection = field(default_factory=MoltbookSection)
    services: ServicesSection = field(default_factory=ServicesSection)
    trust: Mapping[str, tuple[str, ...]] = table(
        'peer = ["talk", "report", ...]',
        f"What each peer may ask of this entity: {', '.join(PEER_PERMISSIONS)}.\n"
        '"*" applies to every peer not listed; absent, peers.default_trust does.\n'
        f"entity-b = {json.dumps(list(PEER_PERMISSIONS))}",
        _permissions, tuple, name_check=_peer_or_everyone)
    peer_keys: Mapping[str, str] = table(
        'name = "hex public key"',
        "Fix a peer's key instead of pinning it on first sight: name = \"hex public key\".",
        hex_key, str.lower, name_check=_peer_name)
    mint_keys: Mapping[str, str] = table(
        'name = "hex public key"',
        "The federation's operators who may mint: the ledger counts a mint entry signed\n"
        "by one of these keys (`entityd economy mint`), as name = \"hex public key\".",
        hex_key, str.lower)
    prices: Mapping[str, tuple[float, float]] = table(
        '"provider/model" = [input, output]',
        "What a model costs, in US dollars per million input and output tokens, as\n"
        '"provider/model" = [input, output]; these add to and override the shipped table\n'
        "(actors/llm/prices.toml). A model in neither is shown with its tokens, cost unknown.\n"
        '"openrouter/moonshotai/kimi-k2" = [0.6, 2.5]',
        _price_pair, lambda v: (float(v[0]), float(v[1])))
    operators: Mapping[str, str] = table(  # last: an entry appended to the file lands here
        'name = "hex public key"',
        'Extra keys allowed to drive this entity with entityctl, as name = "hex public key".\n'
        "Create one with `entityd keygen FILE`.",
        hex_key, str.lower)
    # [mcp.servers.NAME] tables: the MCP servers it runs (entityd/mcp_servers.py).
    mcp: Mapping[str, McpServer] = field(default_factory=dict)
    # [a2a]: its A2A clients' API keys and the A2A agents it may call (entityd/a2a_settings.py).
    a2a: A2ASettings = field(default_factory=A2ASettings)
    path: Path | None = None

    @property
    def name(self) -> str:
        return self.entity.name

    @property
    def data_dir(self) -> Path:
        return Path(self.entity.data_dir)

    @property
    def embedded_nats(self) -> bool:
        return not self.nats.url

    @property
    def workspace_dir(self) -> Path:
        """The entity's git workspace: the only place its tools may write."""
        return _under(self.data_dir, self.workspace.path, "workspace")

    def sandbox_of(self, peer: str = "") -> SandboxSection:
        """The sandbox settings of the workspace `workspace_of(peer)`: a peer's (or an A2A
        client's) has its own quota (sandbox.peer_workspace_mb) and no network for any
        program: a command let onto the network runs on the host's, loopback included
        (the entity's service previews, its web page), and so does whatever that program
        runs (a package's setup, a nested repository's git config)."""
        if not peer:
            return self.sandbox
        return dataclasses.replace(self.sandbox, workspace_mb=self.sandbox.peer_workspace_mb,
                                   network_commands=())

    def workspace_of(self, peer: str = "") -> Path:
        """Where a turn's tools work: the entity's own workspace (`peer` ""), or the one of
        the tasks `peer` delegated here (DATA_DIR/peer-workspaces/<peer>), so that no
        peer's task reads what another peer's, or the entity's own work, left behind."""
        if not peer:
            return self.workspace_dir
        if not subjects.NAME_RE.match(peer):
            raise ValueError(f"{peer[:40]!r} is not a peer's name ([a-z0-9-]{{1,32}})")
        problem = _peer_workspaces_problem(self.data_dir, self.workspace_dir)
        if problem:
            raise ValueError(f"{problem}; move workspace.path")
        return Path(os.path.abspath(self.data_dir / PEER_WORKSPACES / peer))

    @property
    def memory_path(self) -> Path:
        return _under(self.data_dir, self.memory.path, "memory.sqlite3")


def _peer_workspaces_problem(data_dir: Path, workspace: Path) -> str:
    """Why the entity's workspace may not be where it is, beside the peers' (lexically:
    neither may hold the other, or a shell of one could plant a link in the other)."""
    own = Path(os.path.abspath(workspace))
    peers = Path(os.path.abspath(data_dir / PEER_WORKSPACES))
    if own == peers or peers in own.parents or own in peers.parents:
        return (f"the entity's workspace {own} and {peers}, where the tasks peers delegate "
                "work, overlap (one holds the other)")
    return ""


def _under(data_dir: Path, configured: str, default: str) -> Path:
    path = Path(configured).expanduser() if configured else Path(default)
    return path if path.is_absolute() else data_dir / path


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the config at `path`; environment overrides win over the file."""
    path = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file; create one with `entityd init NAME`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigError(str(path), f"not UTF-8 text (byte {exc.start}); TOML files are "
                          "UTF-8: fix or remove that byte") from None
    except OSError as exc:
        raise ConfigError(str(path), f"cannot be read: {exc.strerror or exc}") from None
    return from_mapping(raw, environ=os.environ if environ is None else environ, path=path)


def from_mapping(
    raw: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, path: Path | None = None
) -> Config:
    mcp = mcp_servers.servers(raw.get("mcp", {}))
    a2a = a2a_settings.settings(raw.get("a2a", {}))
    parts = schema.parse(Config, {k: v for k, v in raw.items() if k not in ("mcp", "a2a")},
                         environ or {})
    entity: EntitySection = parts["entity"]
    base = path.parent if path else Path.cwd()
    data_dir = Path(entity.data_dir).expanduser() if entity.data_dir else base
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    parts["entity"] = dataclasses.replace(entity, data_dir=str(data_dir))
    _check_across(parts)
    mcp_servers.check_secrets(mcp, str(data_dir))
    parts["nats"] = _hub_link(parts["nats"], base)
    return Config(path=path, mcp=mcp, a2a=a2a, **parts)


def _check_across(parts: Mapping[str, Any]) -> None:
    """The checks that involve two keys, each naming the key to change."""
    nats: NatsSection = parts["nats"]
    runtime: RuntimeSection = parts["runtime"]
    llm: LlmSection = parts["llm"]
    peers: PeersSection = parts["peers"]
    economy: EconomySection = parts["economy"]
    least_inbox = 2 * parts["protocol"].max_message_bytes
    data_dir = Path(parts["entity"].data_dir)
    workspace = _under(data_dir, parts["workspace"].path, "workspace")
    beside_peers = _peer_workspaces_problem(data_dir, workspace)
    for where, wrong, problem in [
        ("workspace.path", beside_peers, f"{beside_peers}: give the workspace a path outside "
         f"DATA_DIR/{PEER_WORKSPACES} (the default is DATA_DIR/workspace)"),
        ("nats.hub_url", nats.hub_url and nats.url, "only the embedded server joins a hub; "
         "clear nats.url or configure the leaf on the server nats.url points at"),
        ("runtime.backoff_max", runtime.backoff_max < runtime.backoff_initial,
         "must be at least runtime.backoff_initial"),
        ("llm.base_url", llm.provider in ("custom", "scripted") and not llm.base_url,
         f"provider {llm.provider!r} needs the server's base_url"),
        ("peers.alive_window", 0 < peers.alive_window < peers.heartbeat_interval,
         "must be at least peers.heartbeat_interval (or 0 for three intervals), or peers "
         "flicker between present and absent"),
        ("peers.inbox_max_bytes", peers.inbox_max_bytes < least_inbox,
         f"must be at least twice protocol.max_message_bytes ({least_inbox}), got "
         f"{peers.inbox_max_bytes}"),
        ("peers.deliverables_per_peer_bytes",
         peers.deliverables_per_peer_bytes > peers.deliverables_max_bytes,
         "must not exceed peers.deliverables_max_bytes"),
        ("web.host", parts["web"].enabled and not parts["web"].allow_remote
         and not _loopback(parts["web"].host),
         f"{parts['web'].host!r} is not a loopback address: the page would be reachable "
         "from the network; set web.allow_remote = true behind TLS (a reverse proxy), or "
         'web.host = "127.0.0.1"'),
        ("services.host", not _ip_literal(parts["services"].host),
         f"{parts['services'].host!r} is a name: a browser sends a name's cookies to every "
         "port of it, and the page answers to loopback names (localhost) too, so a service "
         "could get the page's login; give an IP address (the default is \"127.0.0.2\")"),
        ("services.host", _same_host(parts["services"].host, parts["web"].host),
         "is web.host too: a service (code the entity wrote) would get the browser's cookies "
         "for the page, its login among them; keep services.host = \"127.0.0.2\""),
        ("services.host", not _loopback(parts["services"].host),
         f"{parts['services'].host!r} is not a loopback address: a service's preview is "
         'for this machine; set services.host = "127.0.0.1"'),
        ("economy.accept_command", economy.auto_accept and not economy.accept_command.strip(),
         "economy.auto_accept = true pays a delivery once this command passes on it, and it "
         'is empty: set it (e.g. accept_command = "python3 -m unittest") or set '
         "economy.auto_accept = false"),
    ]:
        if wrong:
            raise ConfigError(where, problem)


def _ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _same_host(one: str, other: str) -> bool:
    """Whether two hosts are one address (127.0.0.1 and 127.000.0.1 are not two)."""
    try:
        return ipaddress.ip_address(one) == ipaddress.ip_address(other)
    except ValueError:
        return one.lower() == other.lower()


def _loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _hub_link(nats: NatsSection, base: Path) -> NatsSection:
    """The leaf's link to the hub: TLS to any hub beyond loopback, pinning the CA file
    given (resolved against the config's directory), unless nats.hub_insecure."""
    if not nats.hub_url:
        return nats
    ca_file = nats.hub_ca_file
    if ca_file:
        path = Path(ca_file).expanduser()
        path = path if path.is_absolute() else (base / path).resolve()
        try:
            text = path.read_text(errors="replace")
        except FileNotFoundError:
            fix = "copy the hub's ca.crt (from `entityd federation hub-conf --tls-dir`) there"
            raise ConfigError("nats.hub_ca_file", f"{path} does not exist; {fix}") from None
        except OSError as exc:
            raise ConfigError("nats.hub_ca_file", f"cannot read {path}: {exc.strerror}") from None
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError("nats.hub_ca_file", f"{path} holds no PEM certificate; give the "
                              "hub's ca.crt")
        ca_file = str(path)
    hublink.hub_link(nats.hub_url, hub_ca_file=ca_file, hub_insecure=nats.hub_insecure)
    return dataclasses.replace(nats, hub_ca_file=ca_file)


STARTER = """\
# entityd configuration for {name}. Every key can be overridden from the environment
# as ENTITYD_<SECTION>_<KEY>, e.g. ENTITYD_NATS_URL=nats://127.0.0.1:4222.

""" + schema.starter(Config)
