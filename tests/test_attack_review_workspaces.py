"""Attack review of the per-peer workspaces (75906ba, a3180b5), as a hostile federation
peer (or a hostile model in its task) would try them: through the tool actor on a real
nats-server, the real bubblewrap sandbox and the daemon's own git. A test marked xfail
is a hole still open (it passes once fixed); the others are attacks that held."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import shutil
import signal
import sys
import textwrap
from pathlib import Path

import pytest

from actors.messages import Goal, ToolCall, ToolResult
from actors.sandbox import prepare
from actors.sandbox.scan import scan
from actors.turn_scope import TurnScope
from actors.workspace import GitError
from actors.workspaces import Workspaces
from entityd import ConfigError, identity
from entityd.config import Config, EntitySection, WorkspaceSection, from_mapping, load
from tests.helpers import NatsServer
from tests.test_tool_actor import ASK_TIMEOUT, ENTITY, SANDBOX, ToolRig, tool_rig

pytestmark = pytest.mark.timeout(120)
MiB = 1024 * 1024
AS_ROOT = os.geteuid() == 0
PEER = "peer-a"


async def call(rig: ToolRig, workspace: str, tool: str, **args: object) -> ToolResult:
    """A tool call as a peer's turn makes it (the orchestrator names the peer's workspace;
    the model chooses the tool and its arguments)."""
    env = await rig.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/tool",
                               ToolCall(tool, dict(args), "orchestrator", True, workspace),
                               ASK_TIMEOUT)
    assert isinstance(env.message, ToolResult)
    return env.message


# ---- disk: one quota per peer workspace, and what it does not count -------------------------

async def test_a_peer_fills_the_disk_past_its_quota_with_quick_calls(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Attack: a peer's task runs a few calls that each fallocate a file of file_size_mb
    in a millisecond: each ends before the quota's first look (0.1 s after it starts), a
    call that starts over quota is only killed if a look sees it grow, and nothing looks
    after the run. Five calls put 320 MiB into a workspace with an 8 MiB quota (a look
    that catches one mostly comes after its blocks are taken); repeated, one peer fills the disk
    that the ledger, JetStream and every other workspace share."""
    sandbox = dataclasses.replace(SANDBOX, timeout=30.0, peer_workspace_mb=8, file_size_mb=64)
    async with tool_rig(nats_server, tmp_path, sandbox=sandbox) as rig:
        await rig.event("sandbox")
        root = rig.config.workspace_of(PEER)
        try:
            for n in range(5):
                await call(rig, PEER, "shell", command=f"fallocate -l 64M f{n}; echo filled")
            used = scan(str(root)).bytes
        finally:
            for n in range(5):
                (root / f"f{n}").unlink(missing_ok=True)
    # What the README allows: the quota, plus what one call writes before it is seen.
    assert used <= 8 * MiB + 64 * MiB, f"{used / MiB:.0f} MiB in a workspace of 8 MiB"


async def test_a_peer_spends_inodes_its_quota_does_not_count(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Attack: empty files take an inode each and no block, so 40,000 of them cost a
    1 MiB-per-thousand directory and nothing else: the quota (64 MiB here) never sees
    them. Unbounded (a 60 s call makes millions), they exhaust the inodes of the file
    system DATA_DIR lives on, for the ledger and every workspace. Counted at one 4 KiB
    block an inode, these are 160 MiB and the call is killed."""
    sandbox = dataclasses.replace(SANDBOX, timeout=30.0, peer_workspace_mb=64)
    async with tool_rig(nats_server, tmp_path, sandbox=sandbox) as rig:
        await rig.event("sandbox")
        result = await call(rig, PEER, "shell", command=(
            "for d in $(seq 40); do mkdir d$d && (cd d$d && seq 1000 | xargs touch) "
            "|| exit 3; done; echo made"))
        root = rig.config.workspace_of(PEER)
        found = scan(str(root))
        for made in root.glob("d*"):
            shutil.rmtree(made)
    assert found.entries < 16_384 or result.data.get("over_quota"), (
        f"{found.entries} inodes, {found.bytes / MiB:.1f} MiB counted: {result}")


# ---- the restart path --------------------------------------------------------------------

CRASHING_RUN = textwrap.dedent("""
    import asyncio, dataclasses, sys
    from pathlib import Path
    from actors.sandbox import Shell, prepare
    from tests.test_tool_actor import SANDBOX

    async def main() -> None:
        ws = Path(sys.argv[1])
        settings = dataclasses.replace(SANDBOX, timeout=60.0)
        shell = Shell(settings, ws)
        prepare(ws, (settings.uid, settings.gid) if shell.as_root else None)
        assert await shell.probe() is None
        print("running", flush=True)
        await shell.run("sleep 50")

    asyncio.run(main())
""")


async def test_a_crash_during_a_peer_tasks_first_shell_bricks_its_workspace(
        tmp_path: Path) -> None:
    """Attack (or plain bad luck): a peer's task starts with a long shell call. A peer's
    workspace has no repository until its first coding task (the tool actor makes it
    ready, not a repository), so the sandbox covers `.git` with a placeholder whose
    mount point bwrap makes on the host, removed after the run. The daemon is killed
    meanwhile (OOM, a deploy, power); the empty `.git` stays. After the restart the
    delegated task runs again (orchestrator._recover), `Workspace.ensure()` sees `.git`
    and does not `git init`, and every commit there fails ("not a git repository"), so
    that peer's deliveries fail until an operator finds and removes it."""
    data = tmp_path / ENTITY
    data.mkdir()
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)),
                    sandbox=dataclasses.replace(SANDBOX, timeout=30.0))
    root = config.workspace_of(PEER)
    root.mkdir(parents=True)
    daemon = await asyncio.create_subprocess_exec(
        sys.executable, "-c", CRASHING_RUN, str(root), cwd=Path(__file__).parent.parent,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    assert daemon.stdout is not None
    async with asyncio.timeout(30):
        while b"running" not in await daemon.stdout.readline():
            pass
        for _ in range(600):  # bwrap makes the placeholder's mount point as it starts
            if (root / ".git").exists():
                break
            await asyncio.sleep(0.05)
    daemon.send_signal(signal.SIGKILL)
    await daemon.wait()
    await asyncio.sleep(0.5)  # --die-with-parent takes the sandbox down
    assert (root / ".git").is_dir() and not any((root / ".git").iterdir())

    # The restarted daemon's coder, on the task run again.
    workspace = Workspaces(config).of(PEER)
    await workspace.ensure()
    (root / "work.py").write_text("print('done')\n")
    try:
        commit = await workspace.commit("a private task\n\nentityd task dlg-peer-a.1")
    except GitError as exc:
        pytest.fail(f"the peer's workspace cannot commit after the crash: {exc}")
    assert commit is not None


# ---- what a peer workspace may resolve to ----------------------------------------------------

@pytest.mark.skipif(not AS_ROOT, reason="the chown of the data dir needs a root daemon")
async def test_a_peer_workspace_planted_as_a_symlink_becomes_the_data_dir(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Attack: workspace.path = "peer-workspaces" is accepted (a3180b5 only refuses the
    entity's workspace at or below one peer's), so every peer's workspace is a directory
    of the entity's own, and the entity's own shell (any operator turn, a wake a peer
    asked for) can make `peer-a` a symlink to `..` before that peer's first task. The
    tool actor takes the realpath as the peer's workspace without checking it: DATA_DIR.
    Its first call chowns the whole data dir, keys included, to the sandbox's uid
    (prepare), and the peer's files and shell see the data dir (the goals, the memory,
    the ledger's store). Now: such a config is refused at load, naming the key; built
    anyway, the peer's workspace is refused; and a link at a peer's place in
    DATA_DIR/peer-workspaces is never followed. The key stays root's."""
    with pytest.raises(ConfigError, match=r"workspace\.path"):
        from_mapping({"entity": {"name": ENTITY, "data_dir": str(tmp_path)},
                      "workspace": {"path": "peer-workspaces"}})
    async with tool_rig(nats_server, tmp_path, workspace="peer-workspaces") as rig:
        started = await rig.event("sandbox")
        assert started.data["available"], started.data
        planted = await call(rig, "", "shell", command="ln -s .. peer-a && echo planted")
        assert planted.ok and planted.output == "planted\n", planted
        listed = await call(rig, PEER, "list_dir", path=".")
        key = os.stat(rig.data_dir / "keys" / "entity.key")
    assert (listed.ok, key.st_uid) == (False, 0), (
        f"the data dir listed as the peer's workspace: {listed.output[:300]!r}; the key's "
        f"owner now uid {key.st_uid}")


@pytest.mark.skipif(not AS_ROOT, reason="the chown of the data dir needs a root daemon")
async def test_a_link_at_a_peers_place_is_not_followed(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Whoever put it there (no agent can: no workspace holds DATA_DIR/peer-workspaces), a
    link at a peer's place is refused by the tool actor and the coder's git alike, never
    chowned, listed or mounted."""
    async with tool_rig(nats_server, tmp_path) as rig:
        await rig.event("sandbox")
        place = rig.config.workspace_of(PEER)
        place.parent.mkdir(parents=True, exist_ok=True)
        place.symlink_to(rig.data_dir)
        listed = await call(rig, PEER, "list_dir", path=".")
        key = os.stat(rig.data_dir / "keys" / "entity.key")
    assert not listed.ok and "not a directory the daemon made" in listed.error, listed
    assert key.st_uid == 0
    with pytest.raises(ValueError, match="not a directory the daemon made"):
        Workspaces(rig.config).of(PEER)


def test_the_own_workspace_may_not_hold_the_peer_workspaces(tmp_path: Path) -> None:
    """The entity's workspace inside a peer's is refused for that peer (a3180b5), as is
    one holding them all (above)."""
    inside = Config(entity=EntitySection(name=ENTITY, data_dir=str(tmp_path)),
                    workspace=WorkspaceSection(path="peer-workspaces/peer-a"))
    with pytest.raises(ValueError, match=r"move workspace\.path"):
        inside.workspace_of(PEER)


# ---- attacks that held ------------------------------------------------------------------------

async def test_links_planted_in_a_peer_workspace_are_not_followed_by_the_daemon(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Held: a peer's shell plants symlinks to the data dir's key (relative and absolute
    host paths) and to the entity's own workspace, and tries hard links to them. In the
    sandbox they name nothing (only the workspace is mounted; a hard link across the
    mount fails); the daemon's chown walk after a restart (prepare), the quota's scan,
    the commit's size walk and format_patch never follow them: the key keeps its owner,
    its bytes are counted nowhere, and the patch carries only the link text."""
    async with tool_rig(nats_server, tmp_path) as rig:
        await rig.event("sandbox")
        data = rig.data_dir
        key = data / "keys" / "entity.key"
        (rig.workspace / "own.txt").write_text("OWN-SECRET-9d2\n")
        secret = key.read_bytes()
        root = rig.config.workspace_of(PEER)
        result = await call(rig, PEER, "shell", command=(
            f"ln -s ../../keys/entity.key k1; ln -s {key} k2; ln -s {data} dd; "
            f"ln -s ../../workspace own; ln -s /proc/1/root r; "
            f"ln {key} h1 2>&1; ln ../../keys/entity.key h2 2>&1; cat own/own.txt 2>&1; "
            "cat dd/keys/entity.key 2>&1; echo end"))
        assert "OWN-SECRET" not in result.output and "end" in result.output, result
        for name in ("h1", "h2"):
            assert not (root / name).exists()
        read = await call(rig, PEER, "read_file", path="own/own.txt")
        assert not read.ok and "outside the workspace" in read.error
        owner = os.stat(key)
        # A restart: a fresh walk hands the peer's workspace to the sandbox's uid again.
        sandbox = rig.config.sandbox
        prepare(root, (sandbox.uid, sandbox.gid) if AS_ROOT else None)
        assert os.stat(key).st_uid == owner.st_uid
        assert scan(str(root)).bytes < 64 * 1024
        workspace = Workspaces(rig.config).of(PEER)
        await workspace.ensure()
        commit = await workspace.commit("a private task")
        assert commit is not None
        patch = await workspace.format_patch([commit.sha])
    assert secret not in patch and b"OWN-SECRET" not in patch
    assert b"../../keys/entity.key" in patch  # the link itself, as git records it


async def test_peer_workspaces_do_not_see_each_other_or_the_data_dir(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """Held: from a peer's shell the data dir, the other peer's workspace and the own
    workspace are nowhere in the sandbox (a search of the whole tree finds none of their
    files), and an A2A client's workspace is another directory from a peer's."""
    async with tool_rig(nats_server, tmp_path) as rig:
        await rig.event("sandbox")
        (rig.workspace / "own-mark-51").write_text("x")
        assert (await call(rig, "peer-b", "write_file", path="b-mark-51", content="b")).ok
        assert (await call(rig, "a2a-bob", "write_file", path="c-mark-51", content="c")).ok
        found = await call(rig, PEER, "shell", command=(
            "find / -xdev \\( -name '*-mark-51' -o -name entity.key -o -name entity.pub "
            "-o -name peer-workspaces \\) 2>/dev/null; ls -a /workspace; echo end"))
        assert found.output.strip().splitlines()[-1] == "end", found
        assert "mark-51" not in found.output and "entity." not in found.output, found.output
        assert "peer-workspaces" not in found.output, found.output
        config = rig.config
        assert config.workspace_of("a2a-bob") != config.workspace_of("bob")


def test_no_peer_may_be_named_like_an_a2a_clients_workspace(tmp_path: Path) -> None:
    """Held: a peer `a2a-bob` would share the workspace of A2A client `bob`; the config
    refuses the name (and the peer link refuses to pin or hear it)."""
    path = tmp_path / "entityd.toml"
    path.write_text(f'[entity]\nname = "{ENTITY}"\ndata_dir = "{tmp_path}"\n'
                    '[trust]\n"a2a-bob" = ["delegate"]\n')
    with pytest.raises(ConfigError, match="a2a"):
        load(path, environ={})


def test_whose_workspace_each_turn_works_in() -> None:
    """Held: a delegated task (and its restart, the same goal) works in its peer's
    workspace; a wake a peer asked for runs the operator's todo list in the entity's own
    workspace, on the peer's budget; an A2A client's task in a2a-<client>."""
    def scope(source: str, task: str = "t") -> TurnScope:
        return TurnScope.of(Goal("g", task_id=task, source=source), lambda peer: ())

    task = scope("peer:peer-a", "dlg-peer-a.7")
    assert (task.owner, task.kind, task.payer) == ("peer-a", "task", "peer-a")
    wake = scope("wake:peer:peer-a")
    assert (wake.owner, wake.payer, wake.heard) == ("", "peer-a", set())
    a2a = scope("peer:a2a-bob", "dlg-a2a-bob.1")
    assert (a2a.owner, a2a.kind) == ("a2a-bob", "task")


async def test_a_full_workspace_takes_no_more_writes_but_lets_files_go(
        nats_server: NatsServer, tmp_path: Path) -> None:
    """The file tools wrote past the quota unchecked (only the shell's runs were watched),
    and a call starting over quota could grow files until a look caught it. Now a write
    that does not fit is refused; over quota, no file may grow in a shell call (its
    RLIMIT_FSIZE is the room left, none), and removing files is what still works."""
    sandbox = dataclasses.replace(SANDBOX, timeout=10.0, peer_workspace_mb=1, file_size_mb=4)
    async with tool_rig(nats_server, tmp_path, sandbox=sandbox) as rig:
        await rig.event("sandbox")
        filled = await call(rig, PEER, "shell", command="head -c 700000 /dev/zero > a && echo ok")
        assert filled.ok, filled
        refused = await call(rig, PEER, "write_file", path="b.txt", content="x" * 400_000)
        assert not refused.ok and "no room for this write" in refused.error, refused
        # The shell's files may grow by the room left, and a call stopped there says so.
        stopped = await call(rig, PEER, "shell", command="head -c 400000 /dev/zero > b")
        assert not stopped.ok and "room left in the workspace's disk quota" in stopped.output
        # Past the quota by other means (here: the host), a call can only make room.
        root = rig.config.workspace_of(PEER)
        (root / "c").write_bytes(b"\0" * 600_000)
        grown = await call(rig, PEER, "shell", command="echo more >> a; echo $?")
        assert "over its disk quota" in grown.output
        assert (root / "a").stat().st_size == 700_000  # no byte more
        freed = await call(rig, PEER, "shell", command="rm a c && echo freed")
        assert freed.ok and "freed" in freed.output, freed
        written = await call(rig, PEER, "write_file", path="b.txt", content="x" * 400_000)
        assert written.ok, written
