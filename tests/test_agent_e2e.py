"""End to end: `entityctl ask` against a running daemon, driven by a scripted LLM server.

The model is the scripted OpenAI-compatible server on loopback (not a model): it plays
the orchestrator delegating to the coder, the coder writing a file and its test and
running the test in the real sandbox, and the lessons the orchestrator asks for.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import subprocess
from pathlib import Path

import pytest

from actors.llm import Reply, ScriptedLLMServer, ScriptedToolCall
from bench.rig import edit
from entityd import config as config_mod
from entityd.client import EntityClient
from tests.helpers import BIN, DaemonProc, child_env, make_entity
from tests.peer_model import CALC, TEST_CALC

pytestmark = pytest.mark.timeout(120)

LESSON = "Run python3 -m unittest in this workspace to test Python code."



def make_entity_config(tmp_path: Path, name: str, base_url: str) -> Path:
    config = make_entity(tmp_path, name)
    edit(config, 'provider = "moonshot"', 'provider = "scripted"')
    edit(config, 'base_url = ""', f'base_url = "{base_url}"')
    edit(config, "timeout = 60.0 ", "timeout = 30.0 ")
    return config


async def entityctl(config: Path, *args: str, timeout: float = 90) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        str(BIN / "entityctl"), "--config", str(config), *args,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, env=child_env(),
    )
    async with asyncio.timeout(timeout):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


def git(workspace: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", f"safe.directory={workspace}", *args], cwd=workspace,
        capture_output=True, text=True, check=True,
    ).stdout


async def test_ask_drives_coder_to_write_test_and_commit(tmp_path: Path) -> None:
    script = [
        Reply(tool_calls=[ScriptedToolCall("delegate_to_coder", {
            "goal": "Write add(a, b) in calc.py with a unittest in test_calc.py and run it",
        })]),
        Reply(tool_calls=[ScriptedToolCall("write_file", {"path": "calc.py", "content": CALC})]),
        Reply(tool_calls=[ScriptedToolCall("write_file",
                                           {"path": "test_calc.py", "content": TEST_CALC})]),
        Reply(tool_calls=[ScriptedToolCall("shell",
                                           {"command": "python3 -m unittest -v test_calc"})]),
        Reply(content="Added add() in calc.py and its test; python3 -m unittest: OK"),
        Reply(content="Done: calc.add exists, its test passes, and the work is committed."),
        Reply(content=json.dumps([LESSON])),
    ]
    async with ScriptedLLMServer(script) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            code, out, err = await entityctl(
                config, "ask", "Write a function add(a, b) in calc.py and test it"
            )
            assert code == 0, err + daemon.log()[-3000:]
            assert "its test passes" in out
            assert "[coder] step" in err  # progress was streamed
            commit = next((line.split()[1] for line in out.splitlines()
                           if line.startswith("commit ")), None)
            assert commit, f"no commit line in:\n{out}\n{err}\n{daemon.log()[-6000:]}"

            assert "2 files changed" in out  # what changed comes back with the answer
            workspace = config.parent / "workspace"
            assert (workspace / "calc.py").read_text() == CALC
            assert (workspace / "test_calc.py").read_text() == TEST_CALC
            assert git(workspace, "rev-parse", "HEAD").strip() == commit
            message = git(workspace, "log", "-1", "--format=%B")
            assert message.startswith("Write add(a, b) in calc.py")
            assert "entityd task" in message
            assert set(git(workspace, "show", "--name-only", "--format=", "HEAD").split()) == {
                "calc.py", "test_calc.py",
            }

            # The test really ran in the sandbox: its output went back to the model.
            observation = next(
                m["content"] for r in llm.requests if r.body
                for m in r.body["messages"] if m.get("role") == "tool"
                and "Ran 1 test" in str(m.get("content"))
            )
            assert "OK" in observation

            code, out, err = await entityctl(config, "memory", "search", "unittest")
            assert code == 0, err
            assert LESSON in out
            code, out, err = await entityctl(config, "history")
            assert "Write a function add(a, b)" in out and "its test passes" in out
        finally:
            code = await asyncio.to_thread(daemon.terminate)
    assert code == 0, daemon.log()[-2000:]


async def test_memory_survives_sigkill_and_is_recalled_and_lessons_merge(
    tmp_path: Path,
) -> None:
    fact = "The staging server is called gull"
    lesson = "Keep facts short and name the thing they are about."
    script = [
        # first daemon: remember a fact, answer, draw a lesson
        Reply(tool_calls=[ScriptedToolCall("remember", {"text": fact, "kind": "fact"})]),
        Reply(content="Noted."),
        Reply(content=json.dumps([lesson])),
        # second daemon, after SIGKILL: answer from recalled memory, the same lesson again
        Reply(content="It is called gull."),
        Reply(content=json.dumps([lesson + " "])),
    ]
    async with ScriptedLLMServer(script) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            code, out, err = await entityctl(config, "ask", f"Remember: {fact}.")
            assert code == 0, err
        finally:
            await asyncio.to_thread(daemon.kill)  # SIGKILL: no drain, no clean close

        daemon = DaemonProc(config, tmp_path / "entityd-2.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            code, out, err = await entityctl(config, "ask", "What is the staging server called?")
            assert code == 0, err + daemon.log()[-2000:]
            assert "gull" in out
            first_call = llm.requests[3].body["messages"]
            task = next(m["content"] for m in first_call if m["role"] == "user")
            assert "<memory>" in task and fact in task

            code, out, err = await entityctl(config, "--timeout", "10", "memory", "search",
                                             "facts short", "--json")
            assert code == 0, err
            lessons = [h for h in json.loads(out)["hits"] if h["kind"] == "lesson"]
            assert len(lessons) == 1, lessons
            assert lessons[0]["text"].strip() == lesson
        finally:
            code = await asyncio.to_thread(daemon.terminate)
    assert code == 0


async def test_autonomy_works_the_todo_list_until_its_budget_is_spent(tmp_path: Path) -> None:
    script = [
        Reply(tool_calls=[ScriptedToolCall("todo_update", {"id": 1, "status": "done"})]),
        Reply(content="Finished: the changelog is written."),
        Reply(content="[]"),
    ]
    async with ScriptedLLMServer(script) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        for old, new in (("enabled = false", "enabled = true"),
                         ("interval = 600.0", "interval = 0.3"),
                         ("max_turns = 10", "max_turns = 1")):
            edit(config, old, new)  # each in [autonomy]: the starter's only such keys
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        seen: list[tuple[str, dict[str, object]]] = []
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            async with EntityClient(config_mod.load(config)) as client:
                async with client.events() as events:
                    code, out, err = await entityctl(config, "todo", "--add",
                                                     "Write the changelog")
                    assert code == 0, err
                    assert "Write the changelog" in out
                    async with asyncio.timeout(60):
                        async for event in events:
                            seen.append((event.message.type, event.message.data))
                            if event.message.type == "autonomy_budget_spent":
                                break
            code, out, err = await entityctl(config, "todo", "--all", "--json")
            items = json.loads(out)["items"]
        finally:
            await asyncio.to_thread(daemon.terminate)
        asked = len(llm.requests)
    types = [t for t, _ in seen]
    started = next(d for t, d in seen if t == "turn_started")
    assert str(started["source"]).startswith("wake:autonomy")
    answer = next(d for t, d in seen if t == "answer")
    assert answer["ok"] is True and "changelog" in str(answer["text"])
    assert types.index("answer") < types.index("autonomy_budget_spent")
    assert [(i["text"], i["status"]) for i in items] == [("Write the changelog", "done")]
    assert asked == 3  # one turn of two calls plus the lessons; then it stopped waking


async def test_step_budget_ends_a_runaway_turn_with_an_event(tmp_path: Path) -> None:
    def always_a_tool_call(request: dict[str, object]) -> Reply:
        return Reply(tool_calls=[ScriptedToolCall("todo_list", {})])

    async with ScriptedLLMServer(always_a_tool_call) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        edit(config, "max_steps_per_turn = 24", "max_steps_per_turn = 3")
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            code, out, err = await entityctl(config, "ask", "Loop forever")
        finally:
            await asyncio.to_thread(daemon.terminate)
    assert code == 5, err
    assert "all 3 steps" in out
    assert "[orchestrator] budget_exhausted" in err


async def test_task_returns_at_once_and_the_answer_follows(tmp_path: Path) -> None:
    script = [Reply(content="Hello from the entity.", delay=0.5), Reply(content="[]")]
    async with ScriptedLLMServer(script) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            async with EntityClient(config_mod.load(config)) as client:
                async with client.events() as events:
                    code, out, err = await entityctl(config, "task", "Say hello")
                    assert code == 0, err
                    task_id = out.split()[1]
                    assert out.startswith(f"task {task_id} queued")
                    async with asyncio.timeout(30):
                        async for event in events:
                            data = event.message.data
                            if event.message.type == "answer" and data["task_id"] == task_id:
                                break
            assert data["text"] == "Hello from the entity."
        finally:
            await asyncio.to_thread(daemon.terminate)


async def test_autonomy_waits_while_the_model_budget_is_spent(tmp_path: Path) -> None:
    """A turn started with the model budget spent would fail at its first call: autonomy
    says so once (autonomy_paused) and starts nothing until the budget frees up."""
    script = [
        Reply(content="Looked at the list.", usage={"prompt_tokens": 900,
                                                    "completion_tokens": 100}),
        Reply(content="[]"),
    ]
    async with ScriptedLLMServer(script) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        for old, new in (("enabled = false", "enabled = true"),
                         ("interval = 600.0", "interval = 0.3"),
                         ("max_tokens_per_hour = 400000", "max_tokens_per_hour = 500")):
            edit(config, old, new)
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        seen: list[tuple[str, dict[str, object]]] = []
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            async with EntityClient(config_mod.load(config)) as client:
                async with client.events() as events:
                    code, _, err = await entityctl(config, "todo", "--add", "Tidy the notes")
                    assert code == 0, err
                    async with asyncio.timeout(60):
                        async for event in events:
                            seen.append((event.message.type, event.message.data))
                            if event.message.type == "autonomy_paused":
                                break
                    asked = len(llm.requests)
                    # Ten ticks later: nothing more was started, and the pause was said once.
                    with contextlib.suppress(TimeoutError):
                        async with asyncio.timeout(3.0):
                            async for event in events:
                                seen.append((event.message.type, event.message.data))
        finally:
            await asyncio.to_thread(daemon.terminate)
        assert len(llm.requests) == asked
    types = [t for t, _ in seen]
    assert types.count("turn_started") == 1 and types.count("autonomy_paused") == 1
    paused = next(d for t, d in seen if t == "autonomy_paused")
    assert paused["reason"] == "model_budget_spent" and paused["limit"] == 500
    assert 0 < int(str(paused["resumes_in_s"])) <= 3600
