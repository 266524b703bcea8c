"""Task delegation between two real daemons: a coding task goes to entity-b, its commits
come back as a branch of entity-a's workspace where the test passes; SIGKILL of either
side mid-task and a restart still finish it."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path
from typing import Any

import pytest

from actors.llm.scripted import Reply, ScriptedLLMServer
from bench.rig import Federation, Member, build, edit, running
from tests.helpers import poll, task_of, wait_state
from tests.peer_model import BIG_LINES, CALC, TEST_CALC, route

pytestmark = pytest.mark.timeout(240)


def git(workspace: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", f"safe.directory={workspace}", *args], cwd=workspace,
                          capture_output=True, text=True, check=True).stdout


def check_branch(member: Member, branch: str, tmp: Path) -> None:
    """The deliverable is a branch beside the delegator's own work, and its test passes."""
    workspace = member.workspace
    assert git(workspace, "branch", "--list", branch).strip()
    checkout = tmp / f"{member.name}-review"
    checkout.mkdir()
    tree = subprocess.run(["git", "-c", f"safe.directory={workspace}", "archive", branch],
                          cwd=workspace, capture_output=True, check=True).stdout
    subprocess.run(["tar", "-x", "-C", str(checkout)], input=tree, check=True)
    assert (checkout / "calc.py").read_text() == CALC
    assert (checkout / "test_calc.py").read_text() == TEST_CALC
    result = subprocess.run(["python3", "-m", "unittest", "-v", "test_calc"], cwd=checkout,
                            capture_output=True, text=True)
    assert result.returncode == 0 and "Ran 1 test" in result.stderr, result.stderr
    assert not (workspace / "calc.py").exists()  # not merged into the checkout


async def start_pair(tmp_path: Path, llm: ScriptedLLMServer) -> Federation:
    fed = build(tmp_path, ["entity-a", "entity-b"], llm_url=llm.base_url)
    await asyncio.to_thread(fed.start)
    await fed.discovered()
    return fed


async def test_a_delegated_coding_task_comes_back_as_a_branch_whose_test_passes(
    tmp_path: Path,
) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = await start_pair(tmp_path, llm)
        try:
            a, b = fed["entity-a"], fed["entity-b"]
            code, out, err = await a.ctl("delegate", "entity-b", "Write calc.add with a test",
                                         "--deliverables", "calc.py and test_calc.py",
                                         "--capability", "code", "--wait", timeout=120)
            assert code == 0, out + err + b.daemon.log()[-3000:]
            assert "delivered on branch delegated/" in out
            mine = await task_of(a, "out")
            theirs = await task_of(b, "in")
            assert mine is not None and theirs is not None
            assert mine["task_id"] == theirs["task_id"]
            assert (mine["state"], theirs["state"]) == ("delivered", "completed")
            check_branch(a, mine["branch"], tmp_path)
            # entity-b's own commit is the source; entity-a got it with its author.
            assert "entity-b" in git(a.workspace, "log", "-1", "--format=%an", mine["branch"])

            # A peer without the capability refuses, and the refusal is recorded both ways.
            code, out, err = await a.ctl("delegate", "entity-b", "Fly a plane",
                                         "--capability", "pilot", "--wait")
            assert code == 3, out + err
            assert "rejected" in out and "lacks the capabilities pilot" in out
        finally:
            assert await asyncio.to_thread(fed.stop) == [0, 0]


async def test_sigkill_of_either_side_mid_task_still_finishes_it(tmp_path: Path) -> None:
    coder_steps: list[int] = []  # how many tool results each coder request carried

    def script(request: dict[str, Any]) -> Reply:
        tools = {t["function"]["name"] for t in request.get("tools") or []}
        if "write_file" in tools and "delegate_to_coder" not in tools:
            messages = request.get("messages") or []
            coder_steps.append(sum(1 for m in messages if m.get("role") == "tool"))
        return route(request, coder_delay=1.0)

    async with ScriptedLLMServer(script) as llm:
        fed = await start_pair(tmp_path, llm)
        try:
            a, b = fed["entity-a"], fed["entity-b"]

            # The delegate dies while its coder works: on restart it takes the task up again.
            code, out, err = await a.ctl("delegate", "entity-b", "Write calc.add with a test")
            assert code == 0, out + err
            await wait_state(b, "in", ("working",))
            # The coder has a step behind it and waits (1 s) for the model's next one.
            await poll(lambda: any(done >= 1 for done in coder_steps), timeout=90, every=0.05,
                       what="the coder's second request")
            b.daemon.kill()
            b.start()
            await b.ready()
            delivered = await wait_state(a, "out", ("delivered", "failed"), timeout=120)
            assert delivered["state"] == "delivered", delivered
            check_branch(a, delivered["branch"], tmp_path)
            first = await wait_state(b, "in", ("completed", "failed"))
            assert first["state"] == "completed", first

            # The delegator dies while the delegate works: the result waits for it. (A new
            # file: the calc files are already in entity-b's workspace, an empty deliverable.)
            code, out, err = await a.ctl("delegate", "entity-b", "BIG numbered lines")
            assert code == 0, out + err
            task_id = out.split("offered task ")[1].split()[0]
            a.daemon.kill()
            theirs = await wait_state(b, "in", ("completed", "failed"), task_id=task_id)
            assert theirs["state"] == "completed", theirs
            a.start()
            await a.ready()
            mine = await wait_state(a, "out", ("delivered", "failed"), timeout=60,
                                    task_id=task_id)
            assert mine["state"] == "delivered", mine
            assert mine["branch"] == f"delegated/{task_id}" != delivered["branch"]
            big = git(a.workspace, "show", f"{mine['branch']}:big.txt")
            assert big.splitlines() == [f"line {i}" for i in range(BIG_LINES)]
        finally:
            await asyncio.to_thread(fed.stop)


async def test_a_deliverable_too_large_for_one_message_is_fetched_in_pieces(
    tmp_path: Path,
) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, ["entity-a", "entity-b"], llm_url=llm.base_url)
        for member in fed.members.values():  # 256 KiB envelopes: the patch needs ~3 pieces
            edit(member.config, "max_message_bytes = 1048576", "max_message_bytes = 262144")
        async with running(fed):
            await fed.discovered()
            a, b = fed["entity-a"], fed["entity-b"]
            code, out, err = await a.ctl("delegate", "entity-b", "BIG numbered lines",
                                         "--wait", timeout=120)
            assert code == 0, out + err + b.daemon.log()[-3000:]
            mine = await task_of(a, "out")
            assert mine is not None and mine["state"] == "delivered"
            big = git(a.workspace, "show", f"{mine['branch']}:big.txt")
            assert big.splitlines() == [f"line {i}" for i in range(BIG_LINES)]
            assert len(big) > 262144  # it could not have come in one envelope
            assert '"deliverable_fetched"' in a.daemon.log()
