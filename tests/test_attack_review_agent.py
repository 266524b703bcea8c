"""A hostile agent against the daemon: the model's output (tool names and arguments, the
text it answers with) and what it commits to its workspace (services.toml) are the
attacker's. Each test asserts the safe behaviour, so it fails while its hole is open.

Real runtime on a real nats-server, real bwrap, the workspace's sandboxed git, and the
real LLM client over the scripted server (not a model), as the rest of the suite.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import pytest

from actors.agent import AgentLoop, ObservationStep, Step, TaskStep
from actors.assembly import SharedLLM
from actors.coder import CoderActor
from actors.health import HealthActor
from actors.lessons import parse_lessons
from actors.llm import Reply, ScriptedLLMServer, ScriptedToolCall
from actors.messages import CodeResult, CodeTask, ToolCall, ToolResult
from actors.tool import ToolActor
from actors.workspaces import Workspaces
from entityd import identity
from entityd.config import Config, EntitySection, LlmSection
from entityd.supervisor import ActorState
from protocol import Ping, Pong, Status
from tests.helpers import NatsServer, running_actors
from tests.test_agent_loop import echo_toolbox, llm_for
from tests.test_services import Rig, services_rig
from tests.test_tool_actor import ENTITY, SANDBOX

pytestmark = pytest.mark.timeout(90)

# Past Python's recursion limit (1000) by far, and a few hundred KB of text: what one
# model reply carries easily.
DEEP = 100_000
# A health ask's worst latency while the daemon handles one hostile request; the stalls
# found here block every actor for seconds.
HEALTH_MS = 1000


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# ---- the classifier parses the command on the event loop -----------------------------------


@asynccontextmanager
async def tool_and_health(nats_server: NatsServer, root: Path) -> AsyncIterator[object]:
    data = root / ENTITY
    data.mkdir(parents=True)
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)), sandbox=SANDBOX)
    status = Status(entity=ENTITY, public_key="", uptime_s=0.0, nats_server="", actors=[])
    async with running_actors(
        nats_server.url, ENTITY,
        {"tool": lambda: ToolActor(config), "health": lambda: HealthActor(lambda: status)},
    ) as actors:
        yield actors


async def test_a_long_pipeline_is_not_parsed_on_the_daemons_event_loop(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    """bashlex is quadratic on a pipeline: a 60,000-character `a|a|...|a` (well under
    MAX_COMMAND) takes seconds to parse, and `classify` runs in `run_shell` on the loop
    every actor shares. Ending it with `sudo` makes the classifier refuse it, so nothing
    runs in the sandbox: the whole cost is the daemon's."""
    command = "a|" * 30_000 + "a; sudo true"
    async with tool_and_health(nats_server, tmp_path) as actors:
        client = actors.client  # type: ignore[attr-defined]
        loop = asyncio.get_running_loop()
        call = asyncio.ensure_future(client.ask(
            f"{ENTITY}/ctl", f"{ENTITY}/tool", ToolCall("shell", {"command": command},
                                                       caller="test"), 60))
        latencies: list[float] = []
        try:
            while True:
                started = loop.time()
                pong = await client.ask(f"{ENTITY}/ctl", f"{ENTITY}/health", Ping(), 30.0)
                latencies.append(loop.time() - started)
                assert isinstance(pong.message, Pong)
                if call.done():
                    break
                await asyncio.sleep(0.05)
            result = (await call).message
        finally:
            call.cancel()
        assert isinstance(result, ToolResult) and not result.ok
        worst = max(latencies) * 1000
        assert worst < HEALTH_MS, (
            f"every actor of the daemon stalled {worst:.0f} ms while the tool actor parsed "
            f"one {len(command)}-character command on the event loop")


# ---- model output nested past the recursion limit ------------------------------------------


async def test_tool_arguments_nested_past_the_recursion_limit_are_an_observation() -> None:
    """The model's tool-call arguments are parsed by json.loads in Toolbox.call, which
    catches JSONDecodeError only: a RecursionError ends the agent loop with an exception,
    which crashes the orchestrator or coder actor (supervisor: a Later's exception is a
    crash; past the restart budget the daemon exits)."""
    script = [
        Reply(tool_calls=[ScriptedToolCall("echo", '{"text": "hi", "x": '
                                           + nested(DEEP) + "}")]),
        Reply(content="done"),
    ]
    steps: list[Step] = []

    async def record(step: Step) -> None:
        steps.append(step)

    async with ScriptedLLMServer(script) as server:
        llm = await llm_for(server)
        try:
            loop = AgentLoop(llm, echo_toolbox([]), "system", 5, record)
            outcome = await loop.run(TaskStep("say hi"))
        finally:
            await llm.aclose()
    observations = [s for s in steps if isinstance(s, ObservationStep)]
    assert outcome.ok and len(observations) == 1 and not observations[0].ok


def test_lessons_nested_past_the_recursion_limit_are_no_lessons() -> None:
    """The same in the lessons the orchestrator asks the model for after every turn
    (actors/lessons.py parse_lessons, run in the orchestrator's turn)."""
    assert parse_lessons("Lessons: " + nested(DEEP)) == []


# ---- services.toml nested past the recursion limit ----------------------------------------


@pytest.fixture
async def services(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with services_rig(nats_server, tmp_path / "rig") as made:
        yield made


async def test_a_services_toml_nested_past_the_recursion_limit_is_invalid_not_a_crash(
    services: Rig,
) -> None:
    """tomllib recurses per nested array; manifest.parse catches only TOMLDecodeError and
    UnicodeDecodeError, so a committed services.toml of `x = [[[...]]]` (10 KB, under the
    64 KiB bound) crashes the services actor, and again after each restart (it applies
    HEAD anew): past the restart budget the daemon exits, and after systemd restarts it,
    again, until an operator rewrites the workspace's history."""
    rig = services
    supervised = rig.actors.runtime.supervisor.actors["services"]
    await rig.commit({"services.toml": "x = " + nested(5000) + "\n"})
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline and not rig.seen("services_invalid"):
        assert not supervised.crashes, "the services actor crashed on services.toml"
        await asyncio.sleep(0.1)
    assert (supervised.state, supervised.restarts, len(supervised.crashes)) == (
        ActorState.RUNNING, 0, 0)
    assert rig.seen("services_invalid")


# ---- one peer's private task, read in another peer's turn ----------------------------------


SECRET_GOAL = "PEERA-GOAL-7f3 build the private matcher"
SECRET_CODE = "PEERA-CODE-7f3"


async def seen_in_second_task(nats_server: NatsServer, tmp_path: Path, second: str
                              ) -> tuple[str, Config]:
    """Peer A's private task writes and commits its code; then a second private task, for
    the peer `second` (its model is the attacker), reads the history and files of its
    workspace with the shell: what that model was shown, and the config."""
    script = [
        Reply(tool_calls=[ScriptedToolCall("write_file", {
            "path": "matcher.py", "content": f"KEY_IDEA = '{SECRET_CODE}'\n"})]),
        Reply(content="done for a"),
        Reply(tool_calls=[ScriptedToolCall("shell", {
            "command": "git log -p --all | head -c 4000; cat .git/COMMIT_EDITMSG; "
                       "git reflog; grep -rI PEERA . | head; ls -a; ls -a ..; ls /"})]),
        Reply(content="done for the second"),
    ]
    data = tmp_path / ENTITY
    data.mkdir()
    identity.create(data)
    async with ScriptedLLMServer(script) as server:
        config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)),
                        sandbox=SANDBOX,
                        llm=LlmSection(provider="scripted", base_url=server.base_url,
                                       max_retries=0))
        workspaces = Workspaces(config)
        llm = SharedLLM(config, environ={})
        try:
            async with running_actors(nats_server.url, ENTITY, {
                "tool": lambda: ToolActor(config),
                "coder": lambda: CoderActor(llm, workspaces, 5),
            }) as running:
                for task in (CodeTask("dlg-peer-a.1", SECRET_GOAL, private=True,
                                      payer="peer-a", workspace="peer-a"),
                             CodeTask(f"dlg-{second}.2", "look around", private=True,
                                      payer=second, workspace=second)):
                    env = await running.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/coder",
                                                   task, 60.0)
                    assert isinstance(env.message, CodeResult) and env.message.ok, env.message
        finally:
            await llm.aclose()
        bodies = [r.body for r in server.requests if r.path.endswith("/chat/completions")]
    seen = "".join(m["content"] for m in bodies[3]["messages"] if m["role"] == "tool")
    return seen, config


async def test_a_peers_private_goal_never_reaches_the_workspace(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    """The coder committed a private task under its goal as the commit's subject, where
    the next task's shell reads it (`git log`, COMMIT_EDITMSG, the reflog): a peer's
    private words in the workspace, where the entity's page or a later model reads them."""
    seen, _ = await seen_in_second_task(nats_server, tmp_path, "peer-a")
    assert "matcher.py" in seen, seen[:1500]  # the shell did read the history
    assert "a private task" in seen, seen[:1500]
    assert "PEERA-GOAL" not in seen, (
        "a later model read peer A's private goal in the workspace:\n" + seen[:1500])


async def test_a_peers_private_work_is_not_readable_in_another_peers_task(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    """One workspace for every delegated task let peer B's model read what peer A's task
    had committed (`git log -p`, the files): each delegating peer's tasks now work in a
    workspace of their own, and nothing of A's is under B's /workspace, its parent or /."""
    seen, config = await seen_in_second_task(nats_server, tmp_path, "peer-b")
    assert "does not have any commits yet" in seen, seen[:1500]  # B's own, empty history
    assert SECRET_CODE not in seen and "matcher.py" not in seen, seen[:1500]
    assert SECRET_CODE in (config.workspace_of("peer-a") / "matcher.py").read_text()
    assert not (config.workspace_dir / "matcher.py").exists()  # not the entity's own either
