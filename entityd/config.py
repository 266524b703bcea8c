"""Daemon configuration: a TOML file, then ENTITYD_<SECTION>_<KEY> environment overrides.

Every value is checked on load; a bad one raises ConfigError naming the key, what was
found and what is expected.
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from protocol import subjects

from . import hublink
from .errors import ConfigError

CONFIG_NAME = "entityd.toml"
HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
ENV_PREFIX = "ENTITYD_"


@dataclass(frozen=True)
class EntitySection:
    name: str = ""
    data_dir: str = ""


@dataclass(frozen=True)
class NatsSection:
    url: str = ""
    host: str = "127.0.0.1"
    port: int = 4222
    server_binary: str = ""
    config: str = ""
    connect_timeout: float = 5.0
    ready_timeout: float = 20.0
    hub_url: str = ""
    hub_credentials: str = ""
    hub_ca_file: str = ""
    hub_insecure: bool = False
    domain: str = ""


@dataclass(frozen=True)
class RuntimeSection:
    ask_timeout: float = 5.0
    queue_size: int = 1024
    restart_budget: int = 5
    restart_window: float = 60.0
    backoff_initial: float = 0.1
    backoff_max: float = 10.0
    drain_timeout: float = 10.0


@dataclass(frozen=True)
class ProtocolSection:
    replay_window: float = 90.0
    replay_capacity: int = 100_000
    max_message_bytes: int = 1024 * 1024


@dataclass(frozen=True)
class LogSection:
    level: str = "info"
    format: str = "auto"


@dataclass(frozen=True)
class LlmSection:
    provider: str = "moonshot"
    model: str = ""
    base_url: str = ""
    api_key_env: str = ""
    api_key_file: str = ""
    timeout: float = 120.0
    max_retries: int = 4
    max_steps_per_turn: int = 24
    max_tokens_per_hour: int = 400_000
    temperature: float = 0.6


@dataclass(frozen=True)
class SandboxSection:
    uid: int = 65534
    gid: int = 65534
    timeout: float = 60.0
    cpu_seconds: int = 60
    memory_mb: int = 2048
    file_size_mb: int = 64
    max_processes: int = 256
    max_open_files: int = 512
    output_limit: int = 16_000
    network_commands: tuple[str, ...] = ()
    workspace_mb: int = 4096  # disk the workspace may use; a call that grows it past is killed


@dataclass(frozen=True)
class WorkspaceSection:
    path: str = ""


@dataclass(frozen=True)
class MemorySection:
    path: str = ""


@dataclass(frozen=True)
class AutonomySection:
    enabled: bool = False
    interval: float = 600.0
    max_turns: int = 10
    max_tokens: int = 200_000


PEER_PERMISSIONS = ("talk", "report", "delegate", "wake", "restart")
PINNING = ("first-sight", "config")


@dataclass(frozen=True)
class PeersSection:
    heartbeat_interval: float = 5.0
    alive_window: float = 0.0  # 0: three heartbeat intervals
    pinning: str = "first-sight"
    capabilities: tuple[str, ...] = ("chat", "code")
    default_trust: tuple[str, ...] = ("talk", "report")
    rate_per_minute: int = 120
    rate_burst: int = 30
    ping_timeout: float = 3.0
    talk_timeout: float = 600.0
    command_timeout: float = 15.0
    delegation_timeout: float = 3600.0
    # What one peer's turns (its talks, delegated tasks and wakes) may spend of the model,
    # apart from the operator's llm.max_tokens_per_hour, and the longest talk or report
    # text accepted from a peer (characters); a longer one is refused with the reason.
    max_tokens_per_hour: int = 40_000
    max_text_chars: int = 16_000
    # What a peer may keep waiting in this entity's INBOX: commands per peer and operation
    # (more are refused to the sender, whose outbox retries), and the INBOX's total size.
    inbox_per_sender: int = 32
    inbox_max_bytes: int = 512 * 1024 * 1024
    # The object store of deliverables kept for delegators: its total size, what one
    # delegator's deliverables may take of it, and how long one is kept (seconds).
    deliverables_max_bytes: int = 512 * 1024 * 1024
    deliverables_per_peer_bytes: int = 128 * 1024 * 1024
    deliverables_ttl: float = 7 * 24 * 3600.0

    @property
    def window(self) -> float:
        """Seconds since the last heartbeat within which a peer counts as present."""
        return self.alive_window or 3 * self.heartbeat_interval


@dataclass(frozen=True)
class Config:
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
    operators: Mapping[str, str] = field(default_factory=dict)
    trust: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    peer_keys: Mapping[str, str] = field(default_factory=dict)
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

    @property
    def memory_path(self) -> Path:
        return _under(self.data_dir, self.memory.path, "memory.sqlite3")


def _under(data_dir: Path, configured: str, default: str) -> Path:
    path = Path(configured).expanduser() if configured else Path(default)
    return path if path.is_absolute() else data_dir / path


_SECTIONS: dict[str, type[Any]] = {
    "entity": EntitySection,
    "nats": NatsSection,
    "runtime": RuntimeSection,
    "protocol": ProtocolSection,
    "log": LogSection,
    "llm": LlmSection,
    "sandbox": SandboxSection,
    "workspace": WorkspaceSection,
    "memory": MemorySection,
    "autonomy": AutonomySection,
    "peers": PeersSection,
}
_TABLES = ("operators", "trust", "peer_keys")

_LEVELS = ("debug", "info", "warning", "error")
LLM_PROVIDERS = ("moonshot", "openrouter", "openai", "ollama", "custom", "scripted")
_FORMATS = ("auto", "json", "console")


def load(path: str | Path, environ: Mapping[str, str] | None = None) -> Config:
    """Read and check the config at `path`; environment overrides win over the file."""
    path = Path(path).expanduser().resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(str(path), "no such file; create one with `entityd init NAME`") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(str(path), f"not valid TOML: {exc}") from None
    return from_mapping(raw, environ=os.environ if environ is None else environ, path=path)


def from_mapping(
    raw: Mapping[str, Any], *, environ: Mapping[str, str] | None = None, path: Path | None = None
) -> Config:
    environ = environ or {}
    unknown = sorted(set(raw) - set(_SECTIONS) - set(_TABLES))
    if unknown:
        raise ConfigError(
            unknown[0], f"unknown section; known: {', '.join([*_SECTIONS, *_TABLES])}"
        )
    sections = {
        name: _section(name, cls, raw.get(name, {}), environ) for name, cls in _SECTIONS.items()
    }
    entity: EntitySection = sections["entity"]
    if not entity.name:
        raise ConfigError("entity.name", "missing; set it to the entity's name, e.g. entity-a")
    if not subjects.valid_name(entity.name):
        raise ConfigError(
            "entity.name", f"{entity.name!r} must be 1-32 of lowercase letters, digits and '-'"
        )
    base = path.parent if path else Path.cwd()
    data_dir = Path(entity.data_dir).expanduser() if entity.data_dir else base
    if not data_dir.is_absolute():
        data_dir = (base / data_dir).resolve()
    sections["entity"] = dataclasses.replace(entity, data_dir=str(data_dir))
    _check_values(sections)
    sections["nats"] = _hub_link(sections["nats"], base)
    operators = _hex_keys("operators", raw.get("operators", {}))
    peer_keys = _hex_keys("peer_keys", raw.get("peer_keys", {}))
    for name in peer_keys:
        if not subjects.valid_name(name):
            raise ConfigError(f"peer_keys.{name}", "not an entity name ([a-z0-9-]{1,32})")
    trust = _trust(raw.get("trust", {}))
    return Config(operators=operators, path=path, trust=trust, peer_keys=peer_keys, **sections)


def _section(name: str, cls: type[Any], raw: Any, environ: Mapping[str, str]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, "must be a table, e.g. [" + name + "]")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key; known keys: {', '.join(fields)}")
    values: dict[str, Any] = {}
    for key, f in fields.items():
        env_name = f"{ENV_PREFIX}{name.upper()}_{key.upper()}"
        if env_name in environ:
            values[key] = _from_env(f"{name}.{key} (from {env_name})", f.type, environ[env_name])
        elif key in raw:
            values[key] = _typed(f"{name}.{key}", f.type, raw[key])
    return cls(**values)


def _typed(key: str, type_name: Any, value: Any) -> Any:
    if str(type_name) == "tuple[str, ...]":
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(key, f"expected a list of strings, got {value!r}")
        return tuple(value)
    expected = {"str": str, "int": int, "float": float, "bool": bool}[str(type_name)]
    if expected is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if expected is int and isinstance(value, bool):
        raise ConfigError(key, f"expected an integer, got {value!r}")
    if not isinstance(value, expected):
        raise ConfigError(key, f"expected {_describe(expected)}, got {value!r}")
    return value


def _from_env(key: str, type_name: Any, text: str) -> Any:
    kind = str(type_name)
    if kind == "tuple[str, ...]":
        return tuple(item.strip() for item in text.split(",") if item.strip())
    try:
        if kind == "int":
            return int(text)
        if kind == "float":
            return float(text)
    except ValueError:
        raise ConfigError(key, f"expected {kind_name(kind)}, got {text!r}") from None
    if kind == "bool":
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ConfigError(key, f"expected true or false, got {text!r}")
    return text


def kind_name(kind: str) -> str:
    return {"int": "an integer", "float": "a number", "bool": "true or false"}.get(kind, "a string")


def _describe(expected: type) -> str:
    return kind_name(expected.__name__)


def _check_values(sections: dict[str, Any]) -> None:
    nats: NatsSection = sections["nats"]
    if nats.url and not nats.url.startswith(("nats://", "tls://", "ws://", "wss://")):
        raise ConfigError("nats.url", f"{nats.url!r} is not a nats:// or tls:// URL")
    if nats.hub_url and nats.url:
        raise ConfigError("nats.hub_url", "only the embedded server joins a hub; clear nats.url "
                          "or configure the leaf on the server nats.url points at")
    if not 0 < nats.port < 65536:
        raise ConfigError("nats.port", f"{nats.port} is not a TCP port (1-65535)")
    positive = [
        ("nats.connect_timeout", nats.connect_timeout),
        ("nats.ready_timeout", nats.ready_timeout),
    ]
    rt: RuntimeSection = sections["runtime"]
    positive += [
        ("runtime.ask_timeout", rt.ask_timeout),
        ("runtime.queue_size", rt.queue_size),
        ("runtime.restart_budget", rt.restart_budget),
        ("runtime.restart_window", rt.restart_window),
        ("runtime.backoff_initial", rt.backoff_initial),
        ("runtime.backoff_max", rt.backoff_max),
        ("runtime.drain_timeout", rt.drain_timeout),
    ]
    pr: ProtocolSection = sections["protocol"]
    positive += [
        ("protocol.replay_window", pr.replay_window),
        ("protocol.replay_capacity", pr.replay_capacity),
        ("protocol.max_message_bytes", pr.max_message_bytes),
    ]
    for key, value in positive:
        _check_positive(key, value)
    if rt.backoff_max < rt.backoff_initial:
        raise ConfigError("runtime.backoff_max", "must be at least runtime.backoff_initial")
    llm: LlmSection = sections["llm"]
    if llm.provider not in LLM_PROVIDERS:
        raise ConfigError(
            "llm.provider", f"{llm.provider!r} is not one of {', '.join(LLM_PROVIDERS)}"
        )
    if llm.provider in ("custom", "scripted") and not llm.base_url:
        raise ConfigError("llm.base_url", f"provider {llm.provider!r} needs the server's base_url")
    if llm.base_url and not llm.base_url.startswith(("http://", "https://")):
        raise ConfigError("llm.base_url", f"{llm.base_url!r} is not an http(s) URL")
    sandbox: SandboxSection = sections["sandbox"]
    autonomy: AutonomySection = sections["autonomy"]
    peers: PeersSection = sections["peers"]
    for key, value in [
        ("llm.timeout", llm.timeout),
        ("llm.max_steps_per_turn", llm.max_steps_per_turn),
        ("llm.max_tokens_per_hour", llm.max_tokens_per_hour),
        ("sandbox.timeout", sandbox.timeout),
        ("sandbox.cpu_seconds", sandbox.cpu_seconds),
        ("sandbox.memory_mb", sandbox.memory_mb),
        ("sandbox.file_size_mb", sandbox.file_size_mb),
        ("sandbox.max_processes", sandbox.max_processes),
        ("sandbox.max_open_files", sandbox.max_open_files),
        ("sandbox.output_limit", sandbox.output_limit),
        ("sandbox.workspace_mb", sandbox.workspace_mb),
        ("autonomy.interval", autonomy.interval),
        ("autonomy.max_turns", autonomy.max_turns),
        ("autonomy.max_tokens", autonomy.max_tokens),
        ("peers.heartbeat_interval", peers.heartbeat_interval),
        ("peers.rate_per_minute", peers.rate_per_minute),
        ("peers.rate_burst", peers.rate_burst),
        ("peers.ping_timeout", peers.ping_timeout),
        ("peers.talk_timeout", peers.talk_timeout),
        ("peers.command_timeout", peers.command_timeout),
        ("peers.delegation_timeout", peers.delegation_timeout),
        ("peers.max_tokens_per_hour", peers.max_tokens_per_hour),
        ("peers.max_text_chars", peers.max_text_chars),
        ("peers.inbox_per_sender", peers.inbox_per_sender),
        ("peers.inbox_max_bytes", peers.inbox_max_bytes),
        ("peers.deliverables_max_bytes", peers.deliverables_max_bytes),
        ("peers.deliverables_per_peer_bytes", peers.deliverables_per_peer_bytes),
        ("peers.deliverables_ttl", peers.deliverables_ttl),
    ]:
        _check_positive(key, value)
    if llm.max_retries < 0:
        raise ConfigError("llm.max_retries", f"must be 0 or more, got {llm.max_retries}")
    if not peers.alive_window >= 0:
        raise ConfigError("peers.alive_window",
                          f"must be 0 (auto) or more, got {peers.alive_window}")
    if 0 < peers.alive_window < peers.heartbeat_interval:
        raise ConfigError("peers.alive_window", "must be at least peers.heartbeat_interval "
                          "(or 0 for three intervals), or peers flicker between present "
                          "and absent")
    if peers.inbox_max_bytes < 2 * pr.max_message_bytes:
        raise ConfigError("peers.inbox_max_bytes", f"must be at least twice "
                          f"protocol.max_message_bytes ({2 * pr.max_message_bytes}), got "
                          f"{peers.inbox_max_bytes}")
    if peers.deliverables_per_peer_bytes > peers.deliverables_max_bytes:
        raise ConfigError("peers.deliverables_per_peer_bytes",
                          "must not exceed peers.deliverables_max_bytes")
    if peers.pinning not in PINNING:
        raise ConfigError("peers.pinning",
                          f"{peers.pinning!r} is not one of {', '.join(PINNING)}")
    bad = [p for p in peers.default_trust if p not in PEER_PERMISSIONS]
    if bad:
        raise ConfigError("peers.default_trust",
                          f"{bad[0]!r} is not one of {', '.join(PEER_PERMISSIONS)}")
    log: LogSection = sections["log"]
    if log.level not in _LEVELS:
        raise ConfigError("log.level", f"{log.level!r} is not one of {', '.join(_LEVELS)}")
    if log.format not in _FORMATS:
        raise ConfigError("log.format", f"{log.format!r} is not one of {', '.join(_FORMATS)}")


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


def _check_positive(key: str, value: float) -> None:
    if not value > 0:  # written so that NaN fails too
        raise ConfigError(key, f"must be greater than 0, got {value}")
    if math.isinf(value):
        raise ConfigError(key, "must be a finite number")


def _trust(raw: Any) -> dict[str, tuple[str, ...]]:
    if not isinstance(raw, dict):
        raise ConfigError("trust", 'must be a table of peer = ["talk", "report", ...]')
    result = {}
    for name, allowed in raw.items():
        where = f"trust.{name}"
        if name != "*" and not subjects.valid_name(name):
            raise ConfigError(where, 'not an entity name ([a-z0-9-]{1,32}) or "*"')
        if not isinstance(allowed, list) or not all(isinstance(p, str) for p in allowed):
            raise ConfigError(where, f"expected a list drawn from {', '.join(PEER_PERMISSIONS)}")
        bad = [p for p in allowed if p not in PEER_PERMISSIONS]
        if bad:
            raise ConfigError(where, f"{bad[0]!r} is not one of {', '.join(PEER_PERMISSIONS)}")
        result[name] = tuple(allowed)
    return result


def _hex_keys(table: str, raw: Any) -> dict[str, str]:
    if not isinstance(raw, dict):
        raise ConfigError(table, 'must be a table of name = "hex public key"')
    result = {}
    for name, key in raw.items():
        where = f"{table}.{name}"
        # fullmatch, not bytes.fromhex alone: that skips spaces and makes a short key.
        if not isinstance(key, str) or not HEX_KEY_RE.fullmatch(key):
            raise ConfigError(where, "expected a 64-character hex Ed25519 public key")
        result[name] = key.lower()
    return result


STARTER = """\
# entityd configuration for {name}. Every key can be overridden from the environment
# as ENTITYD_<SECTION>_<KEY>, e.g. ENTITYD_NATS_URL=nats://127.0.0.1:4222.

[entity]
name = "{name}"
# Where the key, the embedded nats-server's JetStream store and later the memory live.
data_dir = "{data_dir}"

[nats]
# Empty: start an embedded nats-server on host:port. Set a URL to use an existing server.
url = ""
host = "127.0.0.1"
port = {port}
# Federation: run the embedded server as a leaf of this hub (tls://hub.example.net:7422),
# logging in with the nkey seed from `entityd federation hub-user` (see deploy/FEDERATION.md).
hub_url = ""
hub_credentials = ""    # empty: DATA_DIR/keys/hub.nk
hub_ca_file = ""        # the hub's CA (its ca.crt), pinned; empty: the system's roots
hub_insecure = false    # true: allow a plain nats-leaf:// hub beyond loopback (no TLS)
domain = ""             # JetStream domain; empty: the entity's name

[runtime]
ask_timeout = 5.0
queue_size = 1024
restart_budget = 5      # crashes of one actor allowed within restart_window ...
restart_window = 60.0   # ... seconds; past that the daemon exits non-zero
backoff_initial = 0.1
backoff_max = 10.0
drain_timeout = 10.0

[protocol]
replay_window = 90.0
max_message_bytes = 1048576

[llm]
# moonshot | openrouter | openai | ollama | custom (set base_url) | scripted (offline demo)
provider = "moonshot"
model = ""              # empty: the provider's default (moonshot: kimi-k2.5)
base_url = ""           # empty: the provider's URL
api_key_env = ""        # empty: the provider's variable, e.g. MOONSHOT_API_KEY
api_key_file = ""       # or a 0600 file holding the key (never inside the workspace)
timeout = 120.0
max_retries = 4
max_steps_per_turn = 24
max_tokens_per_hour = 400000

[sandbox]
uid = 65534             # the unprivileged uid commands run as when entityd runs as root
gid = 65534
timeout = 60.0          # wall-clock seconds; the whole process group is killed after
cpu_seconds = 60
memory_mb = 2048
file_size_mb = 64
max_processes = 256
max_open_files = 512
output_limit = 16000    # characters of output kept; the rest is cut with a notice
network_commands = []   # program names allowed network access, e.g. ["pip"]
workspace_mb = 4096     # disk quota of the workspace; a call that grows it past this is killed

[workspace]
path = ""               # empty: DATA_DIR/workspace

[memory]
path = ""               # empty: DATA_DIR/memory.sqlite3

[autonomy]
enabled = false         # wake by itself every `interval` seconds and work the todo list
interval = 600.0
max_turns = 10          # then stop until restarted or re-enabled
max_tokens = 200000

[peers]
# The federation: presence, the peer tools, delegation (see README, "Peers").
heartbeat_interval = 5.0
alive_window = 0.0      # seconds a heartbeat counts as presence; 0: 3 intervals
pinning = "first-sight" # pin a peer's key the first time it is seen, or "config": only [peer_keys]
capabilities = ["chat", "code"]   # what this entity offers for delegated tasks
default_trust = ["talk", "report"]  # what peers not listed in [trust] may do
rate_per_minute = 120   # requests and commands accepted per peer per minute ...
rate_burst = 30         # ... with bursts up to this many
ping_timeout = 3.0
talk_timeout = 600.0    # how long talk_to_peer waits for the peer's answer
command_timeout = 15.0  # how long wake and restart wait for the peer's result
delegation_timeout = 3600.0  # the default deadline of a delegated task
max_tokens_per_hour = 40000  # what each peer's turns may spend, never the operator's budget
max_text_chars = 16000  # the longest talk or report text taken from a peer
inbox_per_sender = 32   # commands a peer may keep waiting here, per operation; more are refused
inbox_max_bytes = 536870912  # the INBOX's total size; full, every sender is refused
deliverables_max_bytes = 536870912  # the store of deliverables kept for delegators ...
deliverables_per_peer_bytes = 134217728  # ... what one delegator's may take of it ...
deliverables_ttl = 604800.0  # ... and how long one is kept (seconds)

[trust]
# What each peer may ask of this entity: talk, report, delegate, wake, restart.
# "*" applies to every peer not listed; absent, peers.default_trust does.
# entity-b = ["talk", "report", "delegate", "wake", "restart"]

[peer_keys]
# Fix a peer's key instead of pinning it on first sight: name = "hex public key".

[log]
level = "info"
format = "auto"         # auto: JSON when not on a terminal, key=value on one

[operators]
# Extra keys allowed to drive this entity with entityctl, as name = "hex public key".
# Create one with `entityd keygen FILE`.
"""
