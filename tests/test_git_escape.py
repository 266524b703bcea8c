"""The daemon's git against a hostile agent: every way git can run configured code, planted
through the real sandboxed shell, followed by a daemon commit and a delegation's patch round
trip (format-patch here, land there). The planted program leaves a marker wherever it can
and tries to copy the entity's key: nothing of it may show, on the host or in the
workspace. And nothing the file tools refuse (.env*, keys) ever enters git.

Real bwrap, real git; as root (CI) and as the unprivileged user (tests/run's second run).
"""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

import pytest

from actors.llm import Reply, ScriptedLLMServer, ScriptedToolCall
from actors.sandbox import Shell
from actors.workspace import GitError, Workspace
from tests.helpers import DaemonProc, make_entity
from tests.test_agent_e2e import entityctl, git, make_entity_config
from tests.test_tool_actor import SANDBOX

pytestmark = pytest.mark.timeout(120)

EVIL = """#!/bin/sh
touch /workspace/PWNED-{name} {host}/host-{name} 2>/dev/null
cat {key} > /workspace/stolen-{name} 2>/dev/null
cat {key} > {host}/stolen-{name} 2>/dev/null
cat
"""

# A nested repository with a commit checked out: the old daemon recorded it as a gitlink,
# and `git status` then entered it with its own config. `$C` commits in it.
# The same size and a new mtime make git hash file.txt again, through the filter.
NESTED = ("git init -q sub && cd sub && echo data > file.txt && git add file.txt && $C; "
          "touch -d 2001-01-01 file.txt && echo new > new.txt")
# Each plants, through the agent's own shell, git config that runs evil.sh ($E: by a path
# relative to the nested repository, so it runs wherever git runs it, host or sandbox).
ATTACKS = {
    "nested-filter": f"""
        {NESTED}
        git config filter.x.clean $E && git config filter.x.smudge $E
        git config filter.x.required true && git config filter.y.process $E
        echo '* filter=x' > .gitattributes
        cd .. && echo '* filter=x' > .gitattributes
    """,
    "nested-fsmonitor-and-hooks": f"""
        {NESTED}
        git config core.fsmonitor $E && git config core.hooksPath /workspace/hooks
        for h in pre-commit post-commit post-checkout post-index-change reference-transaction; do
            mkdir -p /workspace/hooks .git/hooks
            cp $E /workspace/hooks/$h; cp $E .git/hooks/$h
        done
    """,
    "gitfile": """
        git init -q --separate-git-dir /workspace/.hidden-gitdir sub && cd sub
        echo data > file.txt && git add file.txt && $C && touch -d 2001-01-01 file.txt
        git config filter.x.clean $E && git config core.fsmonitor $E
        echo '* filter=x' > .gitattributes && echo 'gitdir: ../.hidden-gitdir' > .git && cd ..
        echo 'gitdir: /workspace/.hidden-gitdir' > other.git && mkdir d2 && cp other.git d2/.git
    """,
    "include": f"""
        E=../../../evil.sh
        git config -f evil.config filter.x.clean $E
        git config -f evil.config core.fsmonitor $E
        mkdir -p a/b && cd a/b && {NESTED}
        git config include.path ../../../../evil.config
        git config includeIf.gitdir:/.path ../../../../evil.config
        echo '* filter=x' > .gitattributes
    """,
    "diff-drivers-and-aliases": f"""
        {NESTED}
        git config diff.evil.textconv $E
        git config diff.external $E
        git config alias.status "!$E" && git config alias.add "!$E"
        git config core.pager $E && git config core.editor $E
        echo '* diff=evil' > .gitattributes
        cd .. && echo '* diff=evil' > .gitattributes
    """,
    "submodule": f"""
        {NESTED}
        git config core.fsmonitor /workspace/evil.sh && cd ..
        git config -f .gitmodules submodule.sub.path sub
        git config -f .gitmodules submodule.sub.url ./sub
        git config -f .gitmodules submodule.sub.fetchRecurseSubmodules true
    """,
}


def host_git(repo: Path, *args: str, input: bytes | None = None) -> str:
    """Host git on a repository the test itself made (not the agent's)."""
    return subprocess.run(["git", "-c", "safe.directory=*", *args], cwd=repo, input=input,
                          capture_output=True, check=True).stdout.decode()


def committed_by_hand(root: Path, files: dict[str, str]) -> None:
    """A repository with `files` committed by a person (as an older entityd might
    have), before the daemon ever saw it."""
    root.mkdir()
    host_git(root, "init", "-q", "-b", "main")
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    host_git(root, "add", "-A")
    host_git(root, "-c", "user.name=o", "-c", "user.email=o@x", "commit", "-qm", "old")


@pytest.fixture
def key(tmp_path: Path) -> Path:
    keys = tmp_path / "data" / "keys"
    keys.mkdir(parents=True)
    path = keys / "entity.key"
    path.write_bytes(b"SECRET-KEY-BYTES")
    path.chmod(0o600)
    return path


async def agent(workspace: Workspace, command: str) -> str:
    shell = Shell(SANDBOX, workspace.path)
    assert await shell.probe() is None
    result = await shell.run(command)
    assert result.exit_code == 0, result.output
    return result.output


def assert_nothing_ran(tmp_path: Path, *workspaces: Path) -> None:
    left = [p.name for p in tmp_path.iterdir() if p.name.startswith(("host-", "stolen-"))]
    for ws in workspaces:
        left += [str(p) for p in ws.rglob("*")
                 if p.name.startswith(("PWNED", "stolen-")) and p.stat().st_size]
    assert left == [], f"agent code ran: {left}"


@pytest.mark.parametrize("attack", sorted(ATTACKS))
async def test_configured_code_never_runs_on_commit_or_delegation(
        tmp_path: Path, key: Path, attack: str) -> None:
    ws = Workspace(tmp_path / "ws", "entity-b", SANDBOX)
    await ws.ensure()
    (ws.path / "base.txt").write_text("base\n")
    assert await ws.commit("base") is not None
    evil = EVIL.format(name=attack, host=tmp_path, key=key)
    await agent(ws, f"cat > evil.sh <<'EOF'\n{evil}EOF\nchmod +x evil.sh\n"
                    f"C='git -c user.name=a -c user.email=a@b commit -qm x'; E=../evil.sh\n"
                    f"{ATTACKS[attack]}")
    # The agent's own git may run its program while planting, in its sandbox: that is
    # the agent's right; the marker and the copy it made show what the key looked like.
    planted = [p for p in ws.path.iterdir() if p.name.startswith(("PWNED-", "stolen-"))]
    assert all(b"SECRET" not in p.read_bytes() for p in planted)
    for p in planted:
        p.unlink()
    (ws.path / "work.py").write_text("x = 1\n")

    commit = await ws.commit(f"work under {attack}")
    assert commit is not None
    files = host_git(ws.path, "ls-tree", "-r", "--name-only", "HEAD").split()
    assert "work.py" in files
    assert not [f for f in files if f.startswith(("sub/", "a/b/sub/", "d2/", ".hidden"))], files
    assert "160000" not in host_git(ws.path, "ls-tree", "-r", "HEAD")  # no gitlink recorded
    assert_nothing_ran(tmp_path, ws.path)

    # The delegation round trip: the delegate ships the commit, the delegator lands it.
    patch = await ws.format_patch([commit.sha])
    assert b"work.py" in patch
    delegator = Workspace(tmp_path / "delegator", "entity-a", SANDBOX)
    await delegator.ensure()
    await delegator.land("delegated/t1", patch)
    landed = host_git(delegator.path, "ls-tree", "-r", "--name-only", "delegated/t1").split()
    assert "work.py" in landed
    # A second commit on the delegate (git status/add again, with everything in place).
    (ws.path / "more.py").write_text("y = 2\n")
    assert await ws.commit("more") is not None
    assert_nothing_ran(tmp_path, ws.path, delegator.path)
    assert key.read_bytes() == b"SECRET-KEY-BYTES"  # noqa: ASYNC240 (a tiny file)


async def test_a_nested_repository_is_left_out_and_said_so_nowhere_else(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", "entity-a", SANDBOX)
    await ws.ensure()
    await agent(ws, "mkdir -p lib/vendored && cd lib/vendored && git init -q && echo v > v.txt"
                    " && cd ../.. && echo m > lib/main.py")
    commit = await ws.commit("add lib")
    assert commit is not None
    assert host_git(ws.path, "ls-tree", "-r", "--name-only", "HEAD").split() == ["lib/main.py"]
    assert (ws.path / "lib" / "vendored" / "v.txt").exists()  # left alone, not lost


SECRETS = [".env", ".env.local", "app/.env", "app/config/.envrc", "deep/a/b/c/d/.env.prod",
           "id_rsa", "ssh/id_ed25519", "certs/server.key", "certs/tls.PEM", ".git-credentials",
           ".envs/prod/settings.txt"]


async def test_secrets_never_enter_git_at_any_depth(tmp_path: Path) -> None:
    ws = Workspace(tmp_path / "ws", "entity-a", SANDBOX)
    await ws.ensure()
    for rel in SECRETS:
        path = ws.path / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"TOP-SECRET {rel}\n")
    (ws.path / "app" / "main.py").write_text("print('hi')\n")
    commit = await ws.commit("app")
    assert commit is not None
    tree = host_git(ws.path, "ls-tree", "-r", "--name-only", "HEAD").split()
    assert tree == ["app/main.py"]
    patch = await ws.format_patch([commit.sha])
    assert b"TOP-SECRET" not in patch

    # Through the agent's shell: git history shows none, and the files cannot be read.
    out = await agent(ws, "git log --all -p | grep -c TOP-SECRET; "
                          "cat " + " ".join(SECRETS) + " 2>/dev/null | grep -c TOP-SECRET; true")
    assert out.split() == ["0", "0"], out
    assert await ws.secrets_in_history() == []


async def test_a_secret_committed_before_is_reported_and_dropped(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    committed_by_hand(root, {"app/.env": "TOP-SECRET old\n", "main.py": "x = 1\n"})
    ws = Workspace(root, "entity-a", SANDBOX)
    await ws.ensure()
    assert await ws.secrets_in_history() == ["app/.env"]

    (root / "main.py").write_text("x = 2\n")
    commit = await ws.commit("next")
    assert commit is not None
    assert host_git(root, "ls-tree", "-r", "--name-only", "HEAD").split() == ["main.py"]
    patch = await ws.format_patch([commit.sha])
    assert b"TOP-SECRET" not in patch  # the deletion is not shipped with its old content


async def test_a_peer_patch_adding_a_secret_or_a_gitlink_is_refused(tmp_path: Path) -> None:
    peer = tmp_path / "peer"
    peer.mkdir()
    host_git(peer, "init", "-q", "-b", "main")
    (peer / "ok.py").write_text("ok = 1\n")
    (peer / "conf").mkdir()
    (peer / "conf" / ".env").write_text("PLANTED\n")
    host_git(peer, "add", "-A")
    host_git(peer, "-c", "user.name=p", "-c", "user.email=p@x", "commit", "-qm", "evil")
    patch = host_git(peer, "format-patch", "--root", "--stdout", "HEAD").encode()

    ws = Workspace(tmp_path / "ws", "entity-a", SANDBOX)
    await ws.ensure()
    (ws.path / "mine.py").write_text("m = 1\n")
    assert await ws.commit("mine") is not None
    with pytest.raises(GitError, match=r"conf/\.env"):
        await ws.land("delegated/t9", patch)
    refs = host_git(ws.path, "for-each-ref", "--format=%(refname)")
    assert "delegated/t9" not in refs and "incoming" not in refs

    gitlink = (b"From 0000000000000000000000000000000000000000 Mon Sep 17 00:00:00 2001\n"
               b"From: p <p@x>\nDate: Mon, 1 Jan 2024 00:00:00 +0000\nSubject: [PATCH] sub\n\n"
               b"---\n"
               b"diff --git a/sub b/sub\nnew file mode 160000\nindex 0000000.."
               b"1111111111111111111111111111111111111111\n"
               b"--- /dev/null\n+++ b/sub\n@@ -0,0 +1 @@\n"
               b"+Subproject commit 1111111111111111111111111111111111111111\n")
    with pytest.raises(GitError):
        await ws.land("delegated/t10", gitlink)
    assert "delegated/t10" not in host_git(ws.path, "for-each-ref", "--format=%(refname)")


async def test_a_repository_that_is_not_a_directory_is_refused(tmp_path: Path) -> None:
    root = tmp_path / "ws"
    root.mkdir()
    (root / ".git").write_text(f"gitdir: {tmp_path}\n")
    ws = Workspace(root, "entity-a", SANDBOX)
    with pytest.raises(GitError, match="not a directory"):
        await ws.ensure()


async def test_through_a_real_daemon_the_agent_never_reaches_the_key(tmp_path: Path) -> None:
    """The reported escape, end to end: the coder's shell call plants a nested repository
    with a clean filter (the word `config` built from a variable, past the classifier), the
    daemon commits twice; the filter never runs outside the sandbox, and the key is never
    readable, not in the workspace nor through git."""
    key_copy = "../stolen-key"  # relative to the nested repository: the workspace's root
    evil = (f"touch PWNED; cat {tmp_path}/entity-a/keys/entity.key > {key_copy} 2>/dev/null; "
            f"touch {tmp_path}/host-marker 2>/dev/null; cat")
    plant = (
        f"c=con; f=fig; o=-c; printf '#!/bin/sh\\n%s\\n' '{evil}' > evil.sh && "
        "chmod +x evil.sh && git init -q sub && cd sub && echo data > file.txt && "
        "git add file.txt && git $o user.name=a $o user.email=a@b commit -qm x && "
        "git $c$f filter.x.clean ../evil.sh && echo '* filter=x' > .gitattributes && "
        "touch -d 2001-01-01 file.txt && echo planted"
    )
    script = [
        Reply(tool_calls=[ScriptedToolCall("delegate_to_coder", {"goal": "Write calc.py"})]),
        Reply(tool_calls=[ScriptedToolCall("shell", {"command": plant})]),
        Reply(tool_calls=[ScriptedToolCall("write_file", {"path": "calc.py",
                                                          "content": "x = 1\n"})]),
        Reply(content="Wrote calc.py"),
        Reply(content="Done."),
        Reply(content="[]"),
        Reply(tool_calls=[ScriptedToolCall("delegate_to_coder", {"goal": "Edit calc.py"})]),
        Reply(tool_calls=[ScriptedToolCall("shell", {
            "command": "echo 'y = 2' >> calc.py; ls; cat stolen-key sub/stolen-key; "
                       "git log --all -p | grep -c SECRET-NEVER; true"})]),
        Reply(content="Edited calc.py"),
        Reply(content="Done again."),
        Reply(content="[]"),
    ]
    async with ScriptedLLMServer(script) as llm:
        config = make_entity_config(tmp_path, "entity-a", llm.base_url)
        key = config.parent / "keys" / "entity.key"
        assert key.exists()
        daemon = DaemonProc(config, tmp_path / "entityd.log").start()
        try:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
            for goal in ("Write calc.py", "Edit calc.py"):
                code, _, err = await entityctl(config, "ask", goal)
                assert code == 0, err + daemon.log()[-3000:]
            workspace = config.parent / "workspace"
            files = git(workspace, "ls-tree", "-r", "--name-only", "HEAD").split()
            assert "calc.py" in files and not any(f.startswith("sub") for f in files), files
            secret = key.read_bytes()
            seen = [m["content"] for r in llm.requests if r.body
                    for m in r.body["messages"] if m.get("role") == "tool"]
            assert any("planted" in str(c) for c in seen), seen
            assert not any(secret.hex() in str(c) or "PRIVATE" in str(c) for c in seen)
            assert_nothing_ran(tmp_path, workspace)
            assert not (workspace / "PWNED").exists()
        finally:
            code = await asyncio.to_thread(daemon.terminate)
    assert code == 0, daemon.log()[-2000:]


def test_a_secret_already_in_the_history_is_reported_at_start(tmp_path: Path) -> None:
    """The daemon never commits one, but a person (or an older entityd) may have: the
    operator hears of it in the log and an event, by path, never by content."""
    config = make_entity(tmp_path, "entity-a")
    committed_by_hand(config.parent / "workspace", {
        "deploy/.env.production": "DB_PASSWORD=TOP-SECRET\n", "app.py": "print('app')\n"})
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        daemon.wait_log('"workspace_secrets_in_history"', timeout=40.0)
        line = next(json.loads(raw) for raw in daemon.log().splitlines()
                    if '"workspace_secrets_in_history"' in raw)
        assert line["paths"] == ["deploy/.env.production"] and line["count"] == 1
        assert "TOP-SECRET" not in daemon.log()
    finally:
        code = daemon.terminate()
    assert code == 0, daemon.log()[-2000:]
