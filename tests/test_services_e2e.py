"""End to end: the entity writes a service and its services.toml itself (the coder, driven
by the scripted OpenAI-compatible server on loopback, which is not a model, writing through
the tool actor), the coder commits, and the services actor runs it: it answers through its
preview port, and the orchestrator's services tools list it, read its logs and restart it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from actors.assembly import SharedLLM
from actors.coder import CoderActor
from actors.llm import Reply, ScriptedLLMServer, ScriptedToolCall
from actors.messages import CodeResult, CodeTask
from actors.services.actor import ServicesActor
from actors.services.tools import ServicesTools
from actors.tool import ToolActor
from actors.workspaces import Workspaces
from entityd import identity
from entityd.config import Config, EntitySection, LlmSection
from tests.helpers import NatsServer, poll, running_actors
from tests.test_services import MANIFEST, SANDBOX, SERVICES, aget, app

pytestmark = pytest.mark.timeout(90)

ENTITY = "entity-a"


class ToolsContext:
    """What ServicesTools uses of an actor's Context (`entity`, `ask`), over the test's
    own signed connection."""

    def __init__(self, client: Any) -> None:
        self.client = client
        self.entity = ENTITY

    async def ask(self, dst: str, message: object, timeout: float | None = None) -> Any:
        env = await self.client.ask(f"{ENTITY}/ctl", dst, message, timeout or 10.0)
        return env.message


async def test_the_entity_writes_commits_and_serves_a_service(nats_server: NatsServer,
                                                              tmp_path: Path) -> None:
    script = [
        Reply(tool_calls=[ScriptedToolCall("write_file", {"path": "app.py",
                                                          "content": app("made by the coder")})]),
        Reply(tool_calls=[ScriptedToolCall("write_file", {
            "path": "services.toml", "content": MANIFEST.format(name="web", restart="always")})]),
        Reply(content="Wrote a small HTTP service and declared it in services.toml."),
    ]
    data = tmp_path / ENTITY
    data.mkdir()
    identity.create(data)
    async with ScriptedLLMServer(script) as server:
        config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)),
                        sandbox=SANDBOX, services=SERVICES,
                        llm=LlmSection(provider="scripted", base_url=server.base_url,
                                       max_retries=0))
        workspaces = Workspaces(config)
        workspace = workspaces.own
        llm = SharedLLM(config, environ={})
        actors = {
            "tool": lambda: ToolActor(config),
            "coder": lambda: CoderActor(llm, workspaces, 5),
            "services": lambda: ServicesActor(config, workspace),
        }
        try:
            async with running_actors(nats_server.url, ENTITY, actors) as running:
                env = await running.client.ask(
                    f"{ENTITY}/ctl", f"{ENTITY}/coder",
                    CodeTask("t1", "Write a small HTTP service and run it"), 60.0)
                result = env.message
                assert isinstance(result, CodeResult)
                assert result.ok and result.commit, result.summary
                assert "services.toml" in result.diffstat

                tools = {t.name: t for t in ServicesTools(
                    ToolsContext(running.client), 30.0).tools()}

                async def listed() -> str | None:
                    text = await tools["list_services"].run({})
                    return text if text.startswith("web: running") else None

                text = await poll(listed, timeout=30, what="the service to run")
                url = text.split("preview ", 1)[1].split(",", 1)[0]
                port = int(url.rstrip("/").rsplit(":", 1)[1])
                assert await aget(port, "/x") == (200, "made by the coder /x")

                logs = await tools["service_logs"].run({"name": "web", "bytes": 2000})
                assert "made by the coder listening on /workspace/.entityd.sock" in logs
                restarted = await tools["restart_service"].run({"name": "web"})
                assert restarted.startswith("web ") and "is ready" in restarted
                assert await aget(port, "/") == (200, "made by the coder /")
        finally:
            await llm.aclose()
