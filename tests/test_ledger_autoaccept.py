"""Auto-accept of a priced delivery (`[economy] auto_accept`): between two real daemons
(scripted models), a delivery whose tests pass is paid with no `tasks accept`, one whose
tests fail stays delivered and held for the operator, with the exit code in its note.
Then the attacks: delivered code run by the accept command cannot write into the
agent's working tree or leave anything the daemon's next commit would take."""

from __future__ import annotations

import dataclasses
import json
import os
from pathlib import Path
from typing import Any

import nats
import pytest

from actors.llm.scripted import Reply, ScriptedLLMServer, ScriptedToolCall
from actors.peer.acceptance import CHECKOUT, Acceptance
from actors.workspace import Workspace
from bench.rig import Member, build, edit, running
from entityd import config as config_mod
from protocol import subjects
from tests.helpers import money, poll, wait_state
from tests.peer_model import route
from tests.test_federation_security import unwrap
from tests.test_git_escape import host_git
from tests.test_ledger_escrow import a_funded, call, settles
from tests.test_tool_actor import SANDBOX

pytestmark = pytest.mark.timeout(240)
A, B = "entity-a", "entity-b"
BROKEN = [  # a delivery whose own test fails
    ScriptedToolCall("write_file", {"path": "sub.py", "content":
                                    "def sub(a, b):\n    return a + b\n"}),
    ScriptedToolCall("write_file", {"path": "test_sub.py", "content": (
        "import unittest\n\nfrom sub import sub\n\n\nclass SubTest(unittest.TestCase):\n"
        "    def test_sub(self):\n        self.assertEqual(sub(5, 3), 2)\n")}),
]


def coders(steps: dict[str, list[ScriptedToolCall]]) -> Any:
    """tests/peer_model.route, except that a task whose title holds one of `steps`'s
    words is coded with those steps instead of calc.py."""
    def script(request: dict[str, Any]) -> Reply:
        messages = request.get("messages") or []
        tools = {t["function"]["name"] for t in request.get("tools") or []}
        first = next((m.get("content") for m in messages if m.get("role") == "user"), "")
        word = next((w for w in steps if w in str(first)), None)
        orchestrator = "delegate_to_coder" in tools
        if word is None or not tools or (orchestrator and messages[-1].get("role") == "tool"):
            return route(request)
        if orchestrator:
            return Reply(tool_calls=[ScriptedToolCall("delegate_to_coder",
                                                      {"goal": f"{word}: write it"})])
        done = sum(1 for m in messages if m.get("role") == "tool")
        if done < len(steps[word]):
            return Reply(tool_calls=[steps[word][done]])
        return Reply(content=f"{word}: written")
    return script


def auto_accept(member: Member, command: str) -> None:
    edit(member.config, "auto_accept = false", "auto_accept = true")
    edit(member.config, 'accept_command = ""', f"accept_command = {json.dumps(command)}")


class Checked:
    """The task_checked events of entity-a's peer actor, as they arrive."""

    def __init__(self) -> None:
        self.seen: list[dict[str, Any]] = []
        self.nc: nats.NATS | None = None

    async def start(self, member: Member) -> None:
        async def add(msg: Any) -> None:
            self.seen.append(unwrap(msg.data).body["payload"]["data"])

        self.nc = await nats.connect(member.url, inbox_prefix=f"_i.{member.name}")
        await self.nc.subscribe(subjects.event(member.name, "peer", "task_checked"), cb=add)
        await self.nc.flush()

    async def of(self, task: str) -> dict[str, Any]:
        found = await poll(lambda: [e for e in self.seen if e["task_id"] == task],
                           timeout=120, what=f"task_checked for {task}")
        return dict(found[0])

    async def close(self) -> None:
        if self.nc is not None:
            await self.nc.close()


async def delegate(a: Member, title: str, price: int) -> str:
    code, out, err = await a.ctl("delegate", B, title, "--price", str(price))
    assert code == 0, out + err
    return out.split("offered task ")[1].split()[0]


async def test_passing_tests_pay_by_themselves_and_failing_ones_wait_for_the_operator(
        tmp_path: Path) -> None:
    async with ScriptedLLMServer(coders({"BROKEN": BROKEN})) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        a, b = fed[A], fed[B]
        auto_accept(a, "python3 -m unittest")
        checked = Checked()
        async with running(fed):
            await a_funded(fed, 300)
            await checked.start(a)
            try:
                good = await delegate(a, "Write calc.add with a test", 100)
                assert await money(a) == (200, 100)
                await settles(a, "out", good, "posted")  # nobody ran `tasks accept`
                mine = (await wait_state(a, "out", ("delivered",), task_id=good))
                assert mine["note"] == (f"100 of 100 paid (auto-accept: `python3 -m unittest` "
                                        f"on delegated/{good} passed)"), mine
                assert await money(a) == (200, 0)
                await settles(b, "in", good, "posted")
                assert await money(b) == (100, 0)
                assert await checked.of(good) == {
                    "task_id": good, "peer": B, "branch": f"delegated/{good}",
                    "outcome": "passed", "exit_code": 0}

                bad = await delegate(a, "BROKEN sub with a test", 50)
                event = await checked.of(bad)
                # No output in the event: it crosses the hub.
                assert (event["outcome"], event["exit_code"]) == ("failed", 1), event
                assert set(event) == {"task_id", "peer", "branch", "outcome", "exit_code"}
                mine = await wait_state(a, "out", ("delivered",), task_id=bad)
                assert (mine["money"], mine["price"]) == ("held", 50), mine
                note = await poll(lambda: _note(a, bad, "auto-accept:"), what="the note")
                assert f"`python3 -m unittest` on delegated/{bad} exited 1" in note, note
                assert "AssertionError: 8 != 2" in note and "tasks accept|reject" in note
                assert "\n\nThe delegate's note: done: coder finished: BROKEN: written" in note
                assert await money(a) == (150, 50)
                theirs = await wait_state(b, "in", ("completed",), task_id=bad)
                assert theirs["money"] == "held", theirs

                # The operator decides.
                code, out, err = await a.ctl("tasks", "reject", bad, "--reason", "8 != 2")
                assert code == 0, out + err
                assert await money(a) == (200, 0)
                await settles(b, "in", bad, "voided")
                assert await money(b) == (100, 0)
                assert not (a.data / CHECKOUT).exists()
                for member in (a, b):
                    code, out, err = await member.ctl("ledger", "verify")
                    assert code == 0, out + err
            finally:
                await checked.close()


async def test_a_delivery_waiting_when_auto_accept_is_turned_on_is_checked_at_start(
        tmp_path: Path) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        a, b = fed[A], fed[B]
        async with running(fed):
            await a_funded(fed, 100)
            task = await delegate(a, "Write calc.add with a test", 30)
            mine = await wait_state(a, "out", ("delivered",), task_id=task)
            assert (mine["money"], mine["note"].startswith("auto-accept:")) == ("held", False)
            a.daemon.kill()  # as a crash mid-check would leave it: delivered, not checked
            auto_accept(a, "python3 -m unittest")
            a.start()
            await a.ready()
            await settles(a, "out", task, "posted")
            assert await money(a) == (70, 0)
            await settles(b, "in", task, "posted")
            assert await money(b) == (30, 0)


async def _note(member: Member, task: str, start: str) -> str | None:
    tasks = await member.ctl_json("tasks")
    note = next(t["note"] for t in tasks if t["task_id"] == task and t["direction"] == "out")
    return note if note.startswith(start) else None


def found(root: Path, pattern: str) -> list[str]:
    """What matches `pattern` anywhere under `root`, relative to it, sorted."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(pattern))


def attack(workspace: Path, data: Path) -> str:
    """A delivered test that tries to write where the delegator's agent works and where
    its daemon commits from; it passes, and marks the checkout (ran.txt) to show it ran."""
    targets = [workspace / "PWNED-abs.txt", workspace / ".git" / "PWNED-git",
               workspace / ".git" / "hooks" / "pre-commit", data / "PWNED-data.txt",
               Path("/workspace/../PWNED-up.txt"), Path("../PWNED-rel.txt"),
               Path("ws-link/PWNED-via-link.txt"),
               Path("/workspace/.git/PWNED-placeholder")]
    late = f"sleep 2; for d in {workspace} /workspace; do echo late > $d/PWNED-late.txt; done"
    return f"""import os
import subprocess
import unittest
from pathlib import Path


class Attack(unittest.TestCase):
    def test_everywhere(self):
        Path("ran.txt").write_text("ran")
        Path("PWNED-left-behind.txt").write_text("left")
        os.makedirs("pkg/__pycache__", exist_ok=True)
        for target in {[str(t) for t in targets]!r}:
            try:
                os.makedirs(os.path.dirname(target), exist_ok=True)
                Path(target).write_text("#!/bin/sh\\necho pwned\\n")
            except OSError:
                pass
        subprocess.Popen(["/bin/sh", "-c", {late!r}], start_new_session=True)
"""


async def test_delivered_code_cannot_reach_the_working_tree_or_the_next_commit(
        tmp_path: Path) -> None:
    workspace, data = tmp_path / A / "workspace", tmp_path / A
    steps = [
        ScriptedToolCall("write_file", {"path": "test_attack.py",
                                        "content": attack(workspace, data)}),
        ScriptedToolCall("shell", {"command": "python3 -c \"import os; "
                                   f"os.symlink('{workspace}', 'ws-link')\""}),
    ]
    async with ScriptedLLMServer(coders({"ATTACK": steps})) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        a, b = fed[A], fed[B]
        auto_accept(a, "python3 -m unittest && test -f ran.txt")
        async with running(fed):
            await a_funded(fed, 100)
            task = await delegate(a, "ATTACK tests", 40)
            await settles(a, "out", task, "posted")  # it ran, in the checkout, and passed
            assert await money(a) == (60, 0)
            listed = host_git(workspace, "ls-tree", f"delegated/{task}")
            assert "120000" in listed and "ws-link" in listed, listed  # the symlink came

            # The daemon's next commit, by the delegator's own coder.
            code, out, err = await a.ctl("ask", call(
                "delegate_to_coder", goal="Write add(a, b) in calc.py with a test"),
                timeout=120)
            assert code == 0, out + err
            committed = host_git(workspace, "ls-tree", "-r", "--name-only", "HEAD").split()
            assert committed == ["calc.py", "test_calc.py"], committed
            assert not (data / CHECKOUT).exists()
            assert sorted(p.name for p in (workspace / ".git" / "hooks").iterdir()
                          if not p.name.endswith(".sample")) == []
            assert found(tmp_path, "PWNED*") + found(tmp_path, "ran.txt") == []
            assert await money(b) == (40, 0)


PASSING = ("import unittest\n\n\nclass X(unittest.TestCase):\n"
           "    def test_x(self):\n        self.assertTrue(True)\n")


def _config(data: Path, command: str) -> config_mod.Config:
    return config_mod.from_mapping({
        "entity": {"name": A, "data_dir": str(data)},
        "economy": {"auto_accept": True, "accept_command": command, "accept_timeout": 20.0}})


async def _landed(tmp_path: Path, files: dict[str, str], links: dict[str, Path]) -> Workspace:
    """entity-a's workspace with entity-b's commit of `files` and `links` landed on
    delegated/t1 (the round trip of a delegation, without the daemons)."""
    theirs = Workspace(tmp_path / "b", B, SANDBOX)
    await theirs.ensure()
    for rel, text in files.items():
        (theirs.path / rel).write_text(text)
    for rel, target in links.items():
        (theirs.path / rel).symlink_to(target)
    commit = await theirs.commit("the delivery")
    assert commit is not None
    config = _config(tmp_path / A, "true")
    mine = Workspace(config.workspace_dir, A, SANDBOX)
    await mine.ensure()
    (mine.path / "mine.txt").write_text("the agent's own work\n")
    await mine.land("delegated/t1", await theirs.format_patch([commit.sha]))
    return mine


async def test_a_checkout_left_locked_and_a_link_out_change_nothing(tmp_path: Path) -> None:
    mine = await _landed(tmp_path, {"test_x.py": PASSING},
                         {"ws-link": tmp_path / A / "workspace"})
    before = found(mine.path, "*")
    command = ("echo pwned > ws-link/PWNED-link.txt; echo pwned > ../PWNED-up.txt; "
               "mkdir -p locked/deep && "
               "touch locked/deep/f && chmod 000 locked/deep locked && chmod 500 . && "
               "python3 -m unittest")
    verdict = await Acceptance(_config(tmp_path / A, command), mine).check("delegated/t1")
    assert verdict.passed, verdict
    assert not (tmp_path / A / CHECKOUT).exists()  # removed, locked directories and all
    assert found(mine.path, "*") == before
    commit = await mine.commit("the agent's work")
    assert commit is not None
    assert host_git(mine.path, "ls-tree", "-r", "--name-only", "HEAD").split() == ["mine.txt"]


async def test_no_sandbox_no_branch_and_a_timeout_are_notes(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    mine = await _landed(tmp_path, {"slow.py": "import time\ntime.sleep(60)\n"}, {})
    slow = Acceptance(_config(tmp_path / A, "python3 slow.py"), mine)
    slow.settings = dataclasses.replace(slow.settings, timeout=1.0)
    verdict = await slow.check("delegated/t1")
    assert (verdict.outcome, verdict.exit_code) == ("timed_out", None), verdict
    assert "was killed after 1 s (economy.accept_timeout)" in verdict.note

    missing = await Acceptance(_config(tmp_path / A, "true"), mine).check("delegated/none")
    assert missing.outcome == "not_run" and "could not be checked out" in missing.note

    monkeypatch.setattr("actors.sandbox.shell.shutil.which", lambda *_, **__: None)
    verdict = await Acceptance(_config(tmp_path / A, "true"), mine).check("delegated/t1")
    assert verdict.outcome == "not_run", verdict
    assert "the sandbox cannot start: bwrap is not installed" in verdict.note
    assert not (tmp_path / A / CHECKOUT).exists()
    assert sorted(os.listdir(mine.path)) == [".git", "mine.txt"]

