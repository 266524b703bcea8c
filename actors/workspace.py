"""The entity's git workspace, seen from the daemon: create it, commit finished work, ship
commits as patches, land a peer's patches on a branch and hand out a branch's tree (for
the accept command to test it elsewhere: actors/peer/acceptance.py).

Git on a tree the agent wrote runs code the agent chose (a nested repository's filters,
drivers and hooks, a gitfile, an include), so every git command here runs in the sandbox
(`Shell.exec(git=True)`): as the sandbox uid, with only the workspace mounted, a cleared
environment, no network, and `.git`'s config, hooks and info read-only. On top of that,
nothing the file tools refuse (`.env*`, key files) is ever staged, committed, shipped or
landed, and other repositories inside the workspace are never entered or recorded.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Iterable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

from entityd import SandboxSection

from .sandbox import Shell, ToolError
from .sandbox.cgroup import MiB, SharedLimits
from .sandbox.paths import KEY_PATTERNS, WORKSPACE_MOUNT, protected_reason
from .sandbox.scan import Scan

GIT_TIMEOUT_S = 120.0
IGNORED = ("__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/")
GITLINK = "160000"
DELETED = "000000"
# Config that comes with every git command, above anything a repository says.
SAFE_CONFIG = (
    ("safe.directory", "*"),
    ("safe.bareRepository", "explicit"),
    ("core.hooksPath", "/dev/null"),
    ("core.fsmonitor", "false"),
    ("core.pager", "cat"),
    ("core.sshCommand", "false"),
    ("core.untrackedCache", "false"),
    ("commit.gpgsign", "false"),
    ("diff.external", ""),
    ("diff.ignoreSubmodules", "all"),
    ("status.submoduleSummary", "false"),
    ("submodule.recurse", "false"),
    ("gc.auto", "0"),
    ("maintenance.auto", "false"),
)
# Protected names at any depth, as pathspecs git leaves out when staging.
PROTECTED_PATHSPECS = (":(exclude,glob,icase)**/.env*",
                       *(f":(exclude,glob,icase)**/{pattern}" for pattern in KEY_PATTERNS))
EXCLUDE = "\n".join((*IGNORED, "# never committed by entityd", ".env*", *KEY_PATTERNS)) + "\n"


# The scan a commit made, for the git runs it makes (a task's own, so a delegation's git
# beside it scans for itself).
_SCANNED: ContextVar[Scan | None] = ContextVar("workspace_scanned", default=None)


class GitError(Exception):
    pass


@dataclass(frozen=True)
class Commit:
    sha: str
    diffstat: str


@dataclass(frozen=True)
class Change:
    mode: str  # the new mode, GITLINK for a nested repository recorded as a submodule
    path: str

    def refusal(self) -> str | None:
        if self.mode == DELETED:
            return None  # taking a file out of the repository is always allowed
        if self.mode == GITLINK:
            return f"{self.path} is another repository (a gitlink)"
        reason = protected_reason(tuple(self.path.split("/")))
        return f"{self.path}: {reason}" if reason else None


class Workspace:
    def __init__(self, path: Path, entity: str, sandbox: SandboxSection,
                 limits: SharedLimits | None = None) -> None:
        self.path = Path(path)
        self.entity = entity
        as_root = os.geteuid() == 0
        self.owner = (sandbox.uid, sandbox.gid) if as_root else None
        self.shell = Shell(sandbox, self.path, limits)
        self._probed = False

    def _env(self) -> dict[str, str]:
        env = {
            "HOME": "/tmp",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_AUTHOR_NAME": self.entity,
            "GIT_AUTHOR_EMAIL": f"{self.entity}@entityd.invalid",
            "GIT_COMMITTER_NAME": "entityd",
            "GIT_COMMITTER_EMAIL": f"{self.entity}@entityd.invalid",
            "GIT_CONFIG_COUNT": str(len(SAFE_CONFIG)),
        }
        for i, (key, value) in enumerate(SAFE_CONFIG):
            env[f"GIT_CONFIG_KEY_{i}"] = key
            env[f"GIT_CONFIG_VALUE_{i}"] = value
        return env

    async def _sandbox(self) -> Shell:
        if not self._probed:
            self.path.mkdir(parents=True, exist_ok=True)
            self._give_root()
            if await self.shell.probe():
                raise GitError(f"git runs only in the sandbox, and it cannot start here: "
                               f"{self.shell.unavailable}")
            self._probed = True
        return self.shell

    async def run(self, program: Sequence[str], *, input: bytes | None = None,
                  check: bool = True) -> tuple[int, str]:
        """Run `program` (git, or sh for a few steps in one sandbox) in the workspace."""
        code, out = await self._exec(program, input=input, check=check)
        return code, out.decode(errors="replace")

    async def output(self, program: Sequence[str], *, input: bytes | None = None) -> bytes:
        """`run`'s standard output as git wrote it, for output framed by byte counts or
        holding file names that are not UTF-8; a failure raises GitError."""
        return (await self._exec(program, input=input))[1]

    async def _exec(self, program: Sequence[str], *, input: bytes | None = None,
                    check: bool = True) -> tuple[int, bytes]:
        """`run`, its standard output as bytes."""
        shell = await self._sandbox()
        try:
            done = await shell.exec(program, stdin=input, git=True, env=self._env(),
                                    timeout=GIT_TIMEOUT_S, found=_SCANNED.get())
        except ToolError as exc:
            raise GitError(str(exc)) from None
        name = program[1] if program[0] == "git" else program[0]
        if done.timed_out:
            raise GitError(f"git {name} took longer than {GIT_TIMEOUT_S:g} s")
        code = done.exit_code if done.exit_code is not None else -1
        if check and code != 0:
            detail = done.stderr.decode(errors="replace").strip()[-2000:]
            raise GitError(f"git {name} failed: {detail or f'exit code {code}'}")
        return code, done.stdout

    async def git(self, *args: str, check: bool = True, input: bytes | None = None) -> str:
        """Run git in the workspace, in the sandbox; its standard output."""
        return (await self.run(["git", *args], input=input, check=check))[1]

    async def ensure(self) -> None:
        """Create the workspace and its repository if missing."""
        await self._sandbox()
        git_dir = self.path / ".git"
        if git_dir.is_symlink() or (git_dir.exists() and not git_dir.is_dir()):
            raise GitError(f"{git_dir} is not a directory (a gitfile or a symlink); the daemon "
                           "only uses a repository of its own: move it away")
        if await asyncio.to_thread(_empty_dir, git_dir):
            # The mount point of the sandbox's stand-in for a missing repository, left by
            # a daemon killed during a run: no repository, so one is made.
            await asyncio.to_thread(git_dir.rmdir)
        if not git_dir.exists():
            await self.run(["/bin/sh", "-c", 'git init -q -b main && cat > .git/info/exclude'],
                           input=EXCLUDE.encode())

    async def commit(self, message: str) -> Commit | None:
        """Commit the workspace's work; None when nothing changed.

        Other repositories inside it, and the directories too deep to check, are left out;
        protected files are never staged, and are dropped from the index if an earlier
        commit holds them.
        """
        await self.ensure()
        found = await self.shell.scan()
        # One look at the tree serves every git run of this commit: nothing else writes
        # the workspace meanwhile (agent commands run only inside tool calls).
        scanned = _SCANNED.set(found)
        try:
            await self._check_history_size()
            return await self._commit(message, found)
        finally:
            _SCANNED.reset(scanned)

    async def _check_history_size(self) -> None:
        """The quota's scan leaves .git out (the agent cannot write it), but every commit
        adds to it what the tree holds: a tree filled, committed, emptied and filled again
        would grow the history without end. Past the quota, no more commits. git counts
        its objects (loose, packed, garbage) in one run, whatever their number."""
        counts = dict(line.partition(": ")[::2]
                      for line in (await self.git("count-objects", "-v")).splitlines())
        held = sum(int(counts.get(key, "0") or 0) for key in
                   ("size", "size-pack", "size-garbage")) * 1024
        limit = self.shell.settings.workspace_mb * MiB
        if held > limit:
            raise GitError(f"the repository (.git) holds {held // MiB} MiB, past the "
                           f"workspace's quota of {self.shell.settings.workspace_mb} MiB "
                           "(sandbox.workspace_mb, or peer_workspace_mb): nothing more is "
                           "committed until an operator makes room (e.g. a fresh history, "
                           "or a larger quota)")

    async def _commit(self, message: str, found: Scan) -> Commit | None:
        skipped = [f":(exclude,literal){path}" for path in (*found.nested_repos, *found.cut)]
        specs = [".", *skipped, *PROTECTED_PATHSPECS]
        await self.git("add", "-A", "--pathspec-from-file=-", "--pathspec-file-nul",
                       input=_nul(specs))
        await self._drop_refused()
        before = await self.head()
        if before is not None:
            code, _ = await self.run(["git", "diff", "--cached", "--quiet", "HEAD"], check=False)
            if code == 0:
                return None
        elif not (await self.git("ls-files", "-z")).strip("\0"):
            return None
        await self.git("commit", "-q", "--no-verify", "-m", message)
        sha = (await self.git("rev-parse", "HEAD")).strip()
        refused = await self.refusals([f"{before}..{sha}" if before else sha])
        if refused:
            # Only agent code inside git could have put it there: undo, and say so.
            if before:
                await self.git("update-ref", "HEAD", before)
            else:
                await self.git("update-ref", "-d", "HEAD")
            raise GitError(f"the commit was undone: {refused}")
        stat = await self.git("show", "--stat", "--format=", "HEAD")
        return Commit(sha, stat.strip())

    async def _drop_refused(self) -> None:
        entries = (await self.git("ls-files", "-s", "-z")).split("\0")
        drop = []
        for entry in entries:
            meta, _, path = entry.partition("\t")
            if path and Change(meta.split(" ")[0], path).refusal():
                drop.append(f":(literal){path}")
        if drop:
            await self.git("rm", "--cached", "-q", "-r", "--ignore-unmatch",
                           "--pathspec-from-file=-", "--pathspec-file-nul", input=_nul(drop))

    async def refusals(self, revisions: Sequence[str], *, walk: bool = True) -> str:
        """Why the commits in `revisions` may not be committed, shipped or landed: each
        change to a protected file or a gitlink; empty when there is none."""
        args = ["log", "--root", "--format=", "--raw", "--no-renames", "--no-abbrev", "-z",
                "--ignore-submodules=none"]  # diff.ignoreSubmodules=all would hide gitlinks
        if not walk:
            args.append("--no-walk=unsorted")
        out = await self.git(*args, *revisions, "--")
        reasons = [r for change in _changes(out) if (r := change.refusal())]
        return "; ".join(dict.fromkeys(reasons))[:2000]

    async def format_patch(self, commits: Sequence[str]) -> bytes:
        """The commits as `git format-patch` mail, refused if any touches a protected file."""
        if not commits:
            return b""
        refused = await self.refusals(commits, walk=False)
        if refused:
            raise GitError(f"not shipped: {refused}")
        # A commit that takes a protected file out would show its old content: left out.
        parts = [await self.git("format-patch", "-1", "--stdout", sha, "--", ".",
                                *PROTECTED_PATHSPECS) for sha in commits]
        return "".join(parts).encode()

    async def land(self, branch: str, patch: bytes) -> None:
        """Apply a peer's patch on a new `branch` off our HEAD, without touching our
        checkout: in a scratch clone in the sandbox's /tmp, pushed to a quarantine ref,
        checked, then named."""
        await self.ensure()
        base = await self.head()
        incoming = f"refs/entityd/incoming/{branch}"
        start = 'git checkout -q -b "$1" "$2"' if base else 'git checkout -q --orphan "$1"'
        script = (
            "set -e; git clone -q --shared --no-checkout "
            f"{WORKSPACE_MOUNT} /tmp/land; cd /tmp/land; {start}; "
            f"git am -q --3way; git push -q {WORKSPACE_MOUNT} \"HEAD:$3\""
        )
        try:
            await self.run(["/bin/sh", "-c", script, "land", branch, base or "", incoming],
                           input=patch)
            refused = await self.refusals([f"{base}..{incoming}" if base else incoming])
            if refused:
                raise GitError(f"refused: {refused}")
            await self.git("update-ref", f"refs/heads/{branch}", incoming)
        finally:
            await self.git("update-ref", "-d", incoming, check=False)

    async def tree(self, branch: str) -> bytes:
        """A checkout of `branch` as a tar archive: written by git from a scratch index
        into the sandbox's /tmp (the workspace's checkout and index are not touched),
        taken as it is by tar."""
        await self.ensure()
        script = ('set -e; export GIT_INDEX_FILE=/tmp/index; git read-tree "$1"; '
                  "mkdir /tmp/tree; git checkout-index -a -q --prefix=/tmp/tree/; "
                  "tar -C /tmp/tree -cf - .")
        return (await self._exec(["/bin/sh", "-c", script, "tree", f"refs/heads/{branch}"]))[1]

    async def secrets_in_history(self) -> list[str]:
        """Protected paths that some commit of the repository already holds."""
        if await self.head() is None:
            return []
        out = await self.git("rev-list", "--objects", "--all")
        found = []
        for line in out.splitlines():
            _, _, path = line.partition(" ")
            if path and protected_reason(tuple(path.split("/"))):
                found.append(path)
        return sorted(set(found))

    async def head(self) -> str | None:
        out = await self.git("rev-parse", "--verify", "-q", "HEAD", check=False)
        return out.strip() or None

    def _give_root(self) -> None:
        """The sandbox's uid must own the workspace directory (and the repository), since
        git runs as that uid."""
        if self.owner is None:
            return
        uid, gid = self.owner
        if (os.lstat(self.path).st_uid, os.lstat(self.path).st_gid) != self.owner:
            os.chown(self.path, uid, gid)
        git_dir = self.path / ".git"
        if git_dir.is_dir() and not git_dir.is_symlink() and git_dir.lstat().st_uid != uid:
            _chown_tree(git_dir, uid, gid)


def _empty_dir(path: Path) -> bool:
    try:
        return path.is_dir() and not path.is_symlink() and not any(path.iterdir())
    except OSError:
        return False


def _nul(items: Iterable[str]) -> bytes:
    return b"".join(item.encode() + b"\0" for item in items)


def _changes(raw: str) -> list[Change]:
    """Parse `git log --raw -z`: a header `:old new sha sha status` then the path."""
    tokens = raw.split("\0")
    changes = []
    i = 0
    while i < len(tokens):
        token = tokens[i].lstrip("\n")
        if token.startswith(":") and i + 1 < len(tokens):
            fields = token[1:].split(" ")
            changes.append(Change(fields[1] if len(fields) > 1 else "", tokens[i + 1]))
            i += 2
        else:
            i += 1
    return changes


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    """The repository the daemon made before git ran in the sandbox: give it to the sandbox
    uid. An explicit stack: the tree is ours, but nothing here recurses."""
    os.chown(root, uid, gid, follow_symlinks=False)
    stack = [str(root)]
    while stack:
        with os.scandir(stack.pop()) as entries:
            for entry in entries:
                os.chown(entry.path, uid, gid, follow_symlinks=False)
                if entry.is_dir(follow_symlinks=False):
                    stack.append(entry.path)


