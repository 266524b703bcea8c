"""The services tools as the orchestrator's model sees them: list the services the
workspace declares, read one's output, restart one. Each asks the entity's services
actor; the services themselves are declared by committing services.toml."""

from __future__ import annotations

from typing import Any

from entityd import Context, EntitydError

from ..agent.toolbox import Tool, ToolFailed, integer, schema
from .messages import (
    LOGS_DEFAULT,
    LOGS_MAX,
    ServiceInfo,
    ServiceLogs,
    ServiceLogsGet,
    ServiceRestart,
    ServiceResult,
    Services,
    ServicesGet,
)

DECLARE = ('Declare a service by committing services.toml: [services.NAME] with command '
           '(argv list or sh string), ready (an HTTP path answered 200 once it serves), '
           'restart ("always", "on-failure" or "never") and optionally files (globs whose '
           'change reloads it). It must serve HTTP on the Unix socket named by '
           '$ENTITYD_SOCKET; it has no network.')
# How long restart_service waits for its answer: the services actor answers within
# services.ready_timeout (default 30 s) and a margin; past this the model is told the
# restart may still be going on.
RESTART_WAIT_S = 60.0


def render_service(info: ServiceInfo) -> str:
    line = f"{info.name}: {info.state}"
    if info.revision:
        line += f", revision {info.revision}"
    if info.pending:
        line += f", {info.pending} starting"
    if info.url:
        line += f", preview {info.url}"
    line += f", {info.restarts} restart(s)"
    if info.last_error:
        line += f"\n  last error: {info.last_error[:1500]}"
    return line


def render_services(answer: Services) -> str:
    lines = [render_service(info) for info in answer.services]
    if not lines:
        lines = [f"no services are declared. {DECLARE}"]
    if answer.problem:
        lines.append(f"problem: {answer.problem}")
    return "\n".join(lines)


class ServicesTools:
    def __init__(self, ctx: Context, timeout: float = RESTART_WAIT_S) -> None:
        self.ctx = ctx
        self.timeout = timeout  # for a restart, which waits for the new revision's readiness

    async def _ask(self, message: object, timeout: float) -> Any:
        try:
            return await self.ctx.ask(f"{self.ctx.entity}/services", message, timeout)
        except EntitydError as exc:
            raise ToolFailed(str(exc)) from None

    def tools(self) -> list[Tool]:
        name = {"name": "the service's name in services.toml"}
        return [
            Tool("list_services", "The services your workspace's services.toml declares: "
                 "state, the revision serving, its preview URL, restarts, last error. "
                 + DECLARE, schema({}), self.list_services),
            Tool("service_logs", "The newest output (stdout and stderr) of one of your "
                 "services.", schema(name, {"bytes": f"how much, default {LOGS_DEFAULT}"},
                                     types={"bytes": "integer"}), self.service_logs),
            Tool("restart_service", "Start a fresh revision of a service beside the one "
                 "serving and switch to it once ready (its restart budget starts again). "
                 "A commit that changes its files reloads it by itself.", schema(name),
                 self.restart_service),
        ]

    async def list_services(self, args: dict[str, Any]) -> str:
        answer: Services = await self._ask(ServicesGet(), 10.0)
        return render_services(answer)

    async def service_logs(self, args: dict[str, Any]) -> str:
        size = integer(args.get("bytes", LOGS_DEFAULT), "bytes")
        answer = await self._ask(ServiceLogsGet(str(args["name"]),
                                                max(1, min(size, LOGS_MAX))), 10.0)
        if isinstance(answer, ServiceResult):
            raise ToolFailed(answer.text)
        assert isinstance(answer, ServiceLogs)
        if not answer.revision:
            return f"{answer.name} has no output yet"
        cut = f"[{answer.cut} earlier bytes not shown]\n" if answer.cut else ""
        return f"{answer.name} {answer.revision}:\n{cut}{answer.text}"

    async def restart_service(self, args: dict[str, Any]) -> str:
        result: ServiceResult = await self._ask(ServiceRestart(str(args["name"])),
                                                self.timeout)
        if not result.ok:
            raise ToolFailed(result.text)
        return result.text
