"""What the orchestrator, entityctl and the web page ask of the services actor, and its
answers. A revision is named `<commit, 12 hex>.<attempt>`: each start of a commit's
snapshot (a reload, a restart asked for) is a revision of its own."""

from __future__ import annotations

from dataclasses import dataclass, field

from protocol import kind

LOGS_DEFAULT = 16 * 1024  # bytes of output a logs request gets unless it asks otherwise
LOGS_MAX = 512 * 1024  # ... and at most (the reply must fit one message)


@kind("services_get")
@dataclass(frozen=True, slots=True)
class ServicesGet:
    """The services the workspace's services.toml declares, and how each is doing."""


@dataclass(frozen=True, slots=True)
class ServiceInfo:
    name: str
    # starting | running | restarting | failed (stays stopped) | stopped
    state: str
    revision: str  # the revision serving (or that last served); empty when none did
    commit: str  # its commit, 40 hex
    restarts: int  # restarts after a death, since the actor started
    url: str  # the loopback preview: http://HOST:PORT/
    port: int
    last_error: str = ""  # why it last died or a revision failed, with its last output
    pending: str = ""  # a revision starting beside the serving one, not yet ready
    pid: int = 0  # the serving revision's sandbox (bwrap) process; 0 when none runs


@kind("services")
@dataclass(frozen=True, slots=True)
class Services:
    enabled: bool  # services.enabled
    commit: str  # the workspace commit the declarations were last read from
    services: list[ServiceInfo] = field(default_factory=list)
    problem: str = ""  # why services.toml was not applied (the running ones stay as they are)


@kind("service_logs_get")
@dataclass(frozen=True, slots=True)
class ServiceLogsGet:
    name: str
    bytes: int = LOGS_DEFAULT  # the newest this many bytes (at most LOGS_MAX)
    revision: str = ""  # empty: the serving revision's, else the newest revision's


@kind("service_logs")
@dataclass(frozen=True, slots=True)
class ServiceLogs:
    """A service's output (stdout and stderr together), the newest part of it."""

    name: str
    revision: str
    text: str  # decoded as UTF-8, bad bytes replaced
    cut: int  # bytes of older output not in `text` (dropped or not asked for)
    revisions: list[str] = field(default_factory=list)  # whose output is kept, oldest first


@kind("service_restart")
@dataclass(frozen=True, slots=True)
class ServiceRestart:
    """Start a fresh revision of the service's latest commit beside the serving one and
    switch to it once ready; its restart budget starts again. Answered when it is ready
    or has failed."""

    name: str


NO_SUCH_SERVICE = "no_such_service"  # ServiceResult.code for a name services.toml lacks


@kind("service_result")
@dataclass(frozen=True, slots=True)
class ServiceResult:
    ok: bool
    code: str  # ready | no_such_service | not_ready | disabled | unavailable
    text: str
    revision: str = ""
