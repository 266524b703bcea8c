"""The workspace's commits and their diffs, as the entity's page asks for them
(`commits_get`, `commit_diff_get`): asked of a real coder actor through a real nats-server,
answered by git in real bwrap on a real workspace.

The history is the agent's text: hostile file names and subjects come back intact as text
and never break the parse; a sha is hex or refused before git sees it; nothing the file
tools refuse shows in a diff, even from a commit made before the daemon; and a query is
answered while the coder is in the middle of a coding turn.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from actors.coder import CoderActor
from actors.commits import DIFF_LIMIT
from actors.llm.budget import TokenBudget
from actors.llm.client import Completion
from actors.messages import (
    CodeResult,
    CodeTask,
    CommitDiff,
    CommitDiffGet,
    Commits,
    CommitsGet,
    FileChange,
)
from actors.workspace import Workspace
from actors.workspaces import Workspaces
from entityd.config import Config, EntitySection, WorkspaceSection
from entityd.errors import RemoteError
from tests.helpers import NatsServer, RunningActors, running_actors
from tests.test_tool_actor import SANDBOX

pytestmark = pytest.mark.timeout(120)

ENTITY = "entity-a"
ASK_TIMEOUT = 30.0
XSS = "<img src=x onerror=alert(1)>.txt"
NEWLINE = "two\nlines.txt"
LATIN1 = b"caf\xe9.txt"  # not UTF-8


class Gate:
    """An LLM stand-in that holds each coding turn until released, then says it is done."""

    def __init__(self) -> None:
        self.entered = asyncio.Event()
        self.release = asyncio.Event()

    async def generate(self, messages: list[dict[str, Any]],
                       tools: list[dict[str, Any]] | None = None) -> Completion:
        self.entered.set()
        await self.release.wait()
        return Completion("done")


class Source:
    """The daemon's LLMSource over the gate, with a budget that is never spent."""

    def __init__(self, llm: Gate) -> None:
        self.llm = llm
        self._budget = TokenBudget(10**9)

    def __call__(self, payer: str = "") -> Gate:
        return self.llm

    def budget(self, payer: str = "") -> TokenBudget:
        return self._budget


@dataclass
class Rig:
    actors: RunningActors
    workspace: Workspace
    gate: Gate

    async def ask(self, message: object, timeout: float = ASK_TIMEOUT) -> Any:
        env = await self.actors.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/coder", message,
                                           timeout)
        return env.message

    async def commits(self, limit: int = 30, before: str = "") -> Commits:
        answer = await self.ask(CommitsGet(limit, before))
        assert isinstance(answer, Commits), answer
        return answer

    async def diff(self, sha: str) -> CommitDiff:
        answer = await self.ask(CommitDiffGet(sha))
        assert isinstance(answer, CommitDiff), answer
        return answer

    async def refused(self, message: object) -> RemoteError:
        with pytest.raises(RemoteError) as caught:
            await self.ask(message)
        return caught.value

    async def commit(self, message: str, files: dict[str | bytes, str | bytes]) -> str:
        """Write `files` into the workspace and commit them as the daemon does."""
        _write(self.workspace.path, files)
        made = await self.workspace.commit(message)
        assert made is not None
        return made.sha


def _write(root: Path, files: dict[str | bytes, str | bytes]) -> None:
    for name, content in files.items():
        path = os.path.join(os.fsencode(root), os.fsencode(name))
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "wb") as f:
            f.write(content.encode() if isinstance(content, str) else content)


@asynccontextmanager
async def coder_rig(nats_server: NatsServer, root: Path) -> AsyncIterator[Rig]:
    workspaces = Workspaces(Config(entity=EntitySection(name=ENTITY, data_dir=str(root.parent)),
                                   sandbox=SANDBOX, workspace=WorkspaceSection(path=str(root))))
    workspace = workspaces.own
    gate = Gate()
    llm = Source(gate)
    async with running_actors(nats_server.url, ENTITY,
                              {"coder": lambda: CoderActor(llm, workspaces, 5)}) as actors:
        await workspace.ensure()  # what the coder's on_start does, waited for here
        yield Rig(actors, workspace, gate)


@pytest.fixture
async def rig(nats_server: NatsServer, tmp_path: Path) -> AsyncIterator[Rig]:
    async with coder_rig(nats_server, tmp_path / "ws") as rig:
        yield rig


def host_git(repo: Path, *args: str, input: bytes | None = None, at: int = 0) -> str:
    """Host git on a repository the test itself made (not the agent's); `at`: the
    commit's time, so commits of one second still list in a known order."""
    dates = {"GIT_AUTHOR_DATE": f"{at} +0000", "GIT_COMMITTER_DATE": f"{at} +0000"}
    return subprocess.run(["git", "-c", "safe.directory=*", "-c", "user.name=o",
                           "-c", "user.email=o@x", *args], cwd=repo, input=input,
                          env={**os.environ, **(dates if at else {})},
                          capture_output=True, check=True).stdout.decode()


# ---- listing -----------------------------------------------------------------------------


async def test_commits_come_newest_first_with_their_stats(rig: Rig) -> None:
    first = await rig.commit("Add the app\n\nentityd task t-1",
                             {"app.py": "a = 1\nb = 2\n", "README": "hello\n"})
    second = await rig.commit("Change the app", {"app.py": "a = 1\nb = 3\nc = 4\n",
                                                 "logo.png": b"\x89PNG\0\0\x01"})
    listed = await rig.commits()

    assert [c.sha for c in listed.commits] == [second, first]
    assert not listed.more
    newest, oldest = listed.commits
    assert newest.parents == [first] and oldest.parents == []
    assert newest.author == oldest.author == ENTITY
    assert newest.subject == "Change the app" and oldest.subject == "Add the app"
    assert abs(newest.ts - time.time()) < 120
    # app.py: one line changed, one added; the binary file counts no lines.
    assert (newest.files_changed, newest.insertions, newest.deletions) == (2, 2, 1)
    assert (oldest.files_changed, oldest.insertions, oldest.deletions) == (2, 3, 0)


async def test_an_empty_repository_lists_no_commits(rig: Rig) -> None:
    assert await rig.workspace.head() is None
    listed = await rig.commits()
    assert listed.commits == [] and not listed.more
    assert (await rig.refused(CommitDiffGet("abcd"))).code == "not_found"
    assert (await rig.commits(before="abcd")).commits == []


async def test_pages_follow_each_other_with_before(rig: Rig) -> None:
    shas = [await rig.commit(f"Commit {i}", {"n.txt": f"{i}\n"}) for i in range(5)]
    newest_first = shas[::-1]

    page = await rig.commits(limit=2)
    assert [c.sha for c in page.commits] == newest_first[:2] and page.more
    page = await rig.commits(limit=2, before=page.commits[-1].sha)
    assert [c.sha for c in page.commits] == newest_first[2:4] and page.more
    # A prefix does, in any case.
    page = await rig.commits(limit=2, before=page.commits[-1].sha[:10].upper())
    assert [c.sha for c in page.commits] == newest_first[4:] and not page.more
    page = await rig.commits(limit=2, before=shas[0])
    assert page.commits == [] and not page.more

    # A commit made meanwhile does not shift the next page.
    await rig.commit("Commit 5", {"n.txt": "5\n"})
    page = await rig.commits(limit=3, before=newest_first[1])
    assert [c.sha for c in page.commits] == newest_first[2:5]

    missing = await rig.refused(CommitsGet(before="0" * 40))
    assert missing.code == "not_found" and "before" in missing.message


# ---- diffs -------------------------------------------------------------------------------


async def test_a_commit_comes_with_its_diff_and_files(rig: Rig) -> None:
    await rig.commit("Start", {"app.py": "a = 1\nb = 2\n", "gone.txt": "bye\n"})
    (rig.workspace.path / "gone.txt").unlink()
    sha = await rig.commit("Change\n\nwith a body", {"app.py": "a = 1\nb = 3\n",
                                                     "blob.bin": b"\0\1\2\3"})
    diff = await rig.diff(sha[:7])

    assert diff.sha == sha and diff.subject == "Change" and not diff.truncated
    assert diff.diff.startswith("diff --git a/app.py b/app.py\nindex ")
    assert diff.files == [FileChange("app.py", 1, 1), FileChange("blob.bin", 0, 0, binary=True),
                          FileChange("gone.txt", 0, 1)]
    assert "diff --git a/app.py b/app.py\n" in diff.diff
    assert "-b = 2\n+b = 3\n" in diff.diff
    assert "Binary files /dev/null and b/blob.bin differ" in diff.diff
    assert "deleted file mode 100644" in diff.diff and "-bye\n" in diff.diff

    root = (await rig.commits()).commits[-1].sha
    first = await rig.diff(root)
    assert first.diff.startswith("diff --git a/app.py b/app.py\nnew file mode 100644\n")
    assert "+++ b/gone.txt\n@@ -0,0 +1 @@\n+bye\n" in first.diff
    assert [f.path for f in first.files] == ["app.py", "gone.txt"]


async def test_a_long_diff_is_cut_at_a_line_end(rig: Rig) -> None:
    lines = "".join(f"line {i:06d} of a long file\n" for i in range(20_000))  # 540 kB
    sha = await rig.commit("Long", {"long.txt": lines})
    diff = await rig.diff(sha)
    assert diff.truncated
    assert len(diff.diff.encode()) <= DIFF_LIMIT and diff.diff.endswith("\n")
    assert diff.diff.splitlines()[-1].startswith("+line ")
    assert diff.files == [FileChange("long.txt", 20_000, 0)] and diff.files_cut == 0

    # Text that is not UTF-8 grows threefold as text: the bound holds for what is sent.
    sha = await rig.commit("Latin", {"latin.txt": (b"\xe9" * 99 + b"\n") * 1500})  # 150 kB
    diff = await rig.diff(sha)
    assert diff.truncated and len(diff.diff.encode()) <= DIFF_LIMIT
    assert diff.diff.endswith("\ufffd\n")


async def test_a_commit_of_many_files_lists_the_first_thousand(rig: Rig) -> None:
    sha = await rig.commit("Many", {f"d/f{i:04d}.txt": f"{i}\n" for i in range(1100)})
    (listed,) = (await rig.commits()).commits
    assert (listed.files_changed, listed.insertions) == (1100, 1100)
    diff = await rig.diff(sha)
    assert [f.path for f in diff.files] == [f"d/f{i:04d}.txt" for i in range(1000)]
    assert diff.files_cut == 100 and diff.diff.startswith("diff --git a/d/f0000.txt ")


async def test_hostile_file_names_come_back_intact_as_text(rig: Rig) -> None:
    before = await rig.commit("Before", {"ok.txt": "ok\n"})
    sha = await rig.commit("<b>names</b>", {XSS: "xss\n", NEWLINE: "nl\n", LATIN1: "latin\n",
                                            "tab\there.txt": "tab\n", "ok.txt": "ok\nmore\n",
                                            "--output=pwned": "opt\n"})
    listed = await rig.commits()
    assert [c.sha for c in listed.commits] == [sha, before]
    assert listed.commits[0].subject == "<b>names</b>"
    assert (listed.commits[0].files_changed, listed.commits[0].insertions) == (6, 6)

    diff = await rig.diff(sha)
    assert sorted(diff.files, key=lambda f: f.path) == sorted([
        FileChange(XSS, 1, 0), FileChange(NEWLINE, 1, 0), FileChange("caf\ufffd.txt", 1, 0),
        FileChange("tab\there.txt", 1, 0), FileChange("ok.txt", 1, 0),
        FileChange("--output=pwned", 1, 0)], key=lambda f: f.path)
    # In the diff itself git quotes what would break its lines; the page escapes the rest.
    assert f"diff --git a/{XSS} b/{XSS}\n" in diff.diff
    assert '+++ "b/two\\nlines.txt"\n' in diff.diff
    assert '+++ "b/tab\\there.txt"\n' in diff.diff
    assert "+xss\n" in diff.diff and "+nl\n" in diff.diff and "+latin\n" in diff.diff
    assert "diff --git a/--output=pwned b/--output=pwned\n" in diff.diff
    assert sorted(os.listdir(rig.workspace.path)) == sorted(
        [".git", "ok.txt", XSS, NEWLINE, "caf\udce9.txt", "tab\there.txt", "--output=pwned"])


async def test_an_odd_history_by_hand_parses(nats_server: NatsServer, tmp_path: Path) -> None:
    """A repository made before the daemon, by a person or a peer's patches: subjects and
    authors the agent chose, not UTF-8, a merge and an empty commit."""
    root = tmp_path / "ws"
    root.mkdir()
    host_git(root, "init", "-q", "-b", "main")
    (root / "a.txt").write_text("a\n")
    host_git(root, "add", "-A")
    tree = host_git(root, "write-tree").strip()
    # Written as it is: git's own commands would re-encode the message and refuse the name.
    raw = (f"tree {tree}\nauthor <script>alert(1)</script> <o@x> 1700000000 +0000\n"
           "committer o <o@x> 1700000000 +0000\n\n").encode()
    raw += b"\xff\xfe not UTF-8 <b>\n\nbody\n"
    made = host_git(root, "hash-object", "-t", "commit", "-w", "--stdin", "--literally",
                    input=raw).strip()
    host_git(root, "update-ref", "refs/heads/main", made)
    host_git(root, "checkout", "-q", "-b", "side")
    (root / "b.txt").write_text("b\n")
    host_git(root, "add", "-A")
    host_git(root, "commit", "-qm", "side", at=1_700_000_100)
    host_git(root, "checkout", "-q", "main")
    (root / "a.txt").write_text("a\nA\n")
    host_git(root, "commit", "-qam", "main", at=1_700_000_200)
    host_git(root, "merge", "-q", "--no-edit", "side", at=1_700_000_300)
    host_git(root, "commit", "-q", "--allow-empty", "-m", "empty", at=1_700_000_400)

    async with coder_rig(nats_server, root) as rig:
        listed = await rig.commits()
        empty, merge, main, side, first = listed.commits
        assert (empty.subject, empty.files_changed) == ("empty", 0)
        assert merge.parents == [main.sha, side.sha]
        assert (merge.files_changed, merge.insertions) == (1, 1)  # side's, against main
        assert first.subject == "\ufffd\ufffd not UTF-8 <b>" and first.ts == 1_700_000_000
        assert first.author == "<script>alert(1)</script>"
        merged = await rig.diff(merge.sha)
        assert merged.files == [FileChange("b.txt", 1, 0)] and "+b\n" in merged.diff
        assert (await rig.diff(empty.sha)).diff == ""


# ---- refusals ----------------------------------------------------------------------------


async def test_a_sha_that_is_not_hex_is_refused_before_git_sees_it(
    rig: Rig, tmp_path: Path,
) -> None:
    sha = await rig.commit("One", {"a.txt": "a\n"})
    out = tmp_path / "x"
    for bad in (f"--output={out}", "--output=/tmp/x", "HEAD;rm -rf /", "HEAD", "main",
                sha + "0", sha[:3], "", "../../etc/passwd", "abc d", "ABCDEFG",
                "\uff11\uff12\uff13\uff14"):
        refused = await rig.refused(CommitDiffGet(bad))
        assert refused.code == "bad_request", (bad, refused)
        assert "4 to 40 hex digits" in refused.message
        if bad:  # an empty `before` asks for the first page
            paged = await rig.refused(CommitsGet(before=bad))
            assert paged.code == "bad_request", (bad, paged)
    assert not out.exists()
    for limit in (0, -1, 201):
        assert (await rig.refused(CommitsGet(limit))).code == "bad_request"

    unknown = await rig.refused(CommitDiffGet("0" * 40))
    assert unknown.code == "not_found"
    assert (await rig.diff(sha.upper())).sha == sha


async def test_a_commit_off_the_branches_is_not_shown(rig: Rig) -> None:
    await rig.commit("One", {"a.txt": "a\n"})
    tree = (await rig.workspace.git("rev-parse", "HEAD^{tree}")).strip()
    loose = (await rig.workspace.git("commit-tree", "-m", "dangling", tree)).strip()
    refused = await rig.refused(CommitDiffGet(loose))
    assert refused.code == "not_found"


async def test_protected_files_in_an_old_commit_are_withheld(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    """A commit from before the daemon that holds what the file tools refuse (it cannot
    make one): listed as withheld, its lines neither counted nor shown. The .git names go
    in by hand-made trees, as only a crafted history holds them."""
    root = tmp_path / "ws"
    root.mkdir()
    host_git(root, "init", "-q", "-b", "main")
    secrets = {".env": "TOP-SECRET 1\n", "conf/.ENV.local": "TOP-SECRET 2\n",
               ".env.d/db.conf": "TOP-SECRET 3\n", "deploy/id_rsa": "TOP-SECRET 4\n",
               "certs/Server.PEM": "TOP-SECRET 5\n", "ok.py": "ok = 1\n"}
    for rel, text in secrets.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    host_git(root, "add", "-A", "-f")
    blob = host_git(root, "hash-object", "-w", "--stdin", input=b"TOP-SECRET 6\n").strip()
    inner = host_git(root, "mktree", input=f"100644 blob {blob}\tconfig\n".encode()).strip()
    tree = host_git(root, "write-tree").strip()
    listing = host_git(root, "ls-tree", tree).encode()
    listing += f"040000 tree {inner}\t.GiT\n100644 blob {blob}\t.git\n".encode()
    crafted = host_git(root, "mktree", input=listing).strip()
    sha = host_git(root, "commit-tree", "-m", "secrets", crafted).strip()
    host_git(root, "update-ref", "refs/heads/main", sha)

    async with coder_rig(nats_server, root) as rig:
        (listed,) = (await rig.commits()).commits
        assert (listed.files_changed, listed.insertions) == (8, 1)
        diff = await rig.diff(sha)
        assert "TOP-SECRET" not in diff.diff
        assert "+ok = 1\n" in diff.diff
        withheld = sorted(f.path for f in diff.files if f.withheld)
        assert withheld == sorted([*[p for p in secrets if p != "ok.py"], ".git",
                                   ".GiT/config"])
        assert all((f.insertions, f.deletions) == (0, 0) for f in diff.files if f.withheld)


# ---- beside a coding turn ----------------------------------------------------------------


async def test_the_history_is_answered_while_the_coder_is_coding(rig: Rig) -> None:
    sha = await rig.commit("One", {"a.txt": "a\n"})
    task = asyncio.create_task(rig.ask(CodeTask("t-9", "write b.txt"), timeout=60.0))
    try:
        async with asyncio.timeout(30):
            await rig.gate.entered.wait()
        listed = await rig.commits()
        assert [c.sha for c in listed.commits] == [sha]
        assert (await rig.diff(sha)).sha == sha
        assert not task.done()  # the turn is still held by the model
    finally:
        rig.gate.release.set()
    result = await task
    assert isinstance(result, CodeResult) and result.ok, result

