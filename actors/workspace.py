"""The entity's git workspace, seen from the daemon: create it and commit finished work.

Commits run outside the sandbox, so nothing the agent wrote may execute here: hooks
and fsmonitor are disabled on every git call, and git gets a minimal environment
(no API keys, no GIT_* variables from the daemon's).
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass
from pathlib import Path

GIT_TIMEOUT_S = 60.0
IGNORED = ("__pycache__/", "*.pyc", ".pytest_cache/", ".mypy_cache/", ".ruff_cache/")

_SAFE = (
    "-c", "core.hooksPath=/dev/null",
    "-c", "core.fsmonitor=false",
    "-c", "core.pager=cat",
    "-c", "commit.gpgsign=false",
    "-c", "diff.external=",
    "-c", "core.sshCommand=false",
)


class GitError(Exception):
    pass


@dataclass(frozen=True)
class Commit:
    sha: str
    diffstat: str


class Workspace:
    def __init__(self, path: Path, entity: str, owner: tuple[int, int] | None = None) -> None:
        self.path = path
        self.entity = entity
        self.owner = owner  # (uid, gid) the sandbox runs as, when the daemon is root

    def _env(self) -> dict[str, str]:
        return {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "HOME": str(self.path),
            "LANG": "C.UTF-8",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": "/dev/null",
            "GIT_AUTHOR_NAME": self.entity,
            "GIT_AUTHOR_EMAIL": f"{self.entity}@entityd.invalid",
            "GIT_COMMITTER_NAME": "entityd",
            "GIT_COMMITTER_EMAIL": f"{self.entity}@entityd.invalid",
        }

    async def git(self, *args: str, check: bool = True, cwd: Path | None = None,
                  input: bytes | None = None) -> str:
        """Run git in the workspace (or in `cwd`, a scratch clone of it)."""
        proc = await asyncio.create_subprocess_exec(
            # Both spellings: a clone of the workspace checks its .git dir by that name.
            "git", *_SAFE, "-c", f"safe.directory={self.path}",
            "-c", f"safe.directory={self.path / '.git'}", *args,
            cwd=cwd or self.path, env=self._env(),
            stdin=asyncio.subprocess.DEVNULL if input is None else asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )
        try:
            async with asyncio.timeout(GIT_TIMEOUT_S):
                out, err = await proc.communicate(input)
        except TimeoutError:
            proc.kill()
            await proc.wait()
            raise GitError(f"git {args[0]} took longer than {GIT_TIMEOUT_S:g} s") from None
        if check and proc.returncode != 0:
            raise GitError(f"git {' '.join(args)} failed: {err.decode(errors='replace').strip()}")
        return out.decode(errors="replace")

    async def ensure(self) -> None:
        """Create the workspace and its repository if missing."""
        self.path.mkdir(parents=True, exist_ok=True)
        if not (self.path / ".git").exists():
            await self.git("init", "-q", "-b", "main")
            # Build and test droppings are never part of the entity's work.
            exclude = self.path / ".git" / "info" / "exclude"
            exclude.parent.mkdir(parents=True, exist_ok=True)
            exclude.write_text("\n".join(IGNORED) + "\n")
        if self.owner is not None and os.geteuid() == 0:
            _chown_tree(self.path, *self.owner)

    async def commit(self, message: str) -> Commit | None:
        """Commit everything in the workspace; None when nothing changed."""
        await self.git("add", "-A")
        if not (await self.git("status", "--porcelain")).strip():
            return None
        await self.git("commit", "-q", "--no-verify", "-m", message)
        sha = (await self.git("rev-parse", "HEAD")).strip()
        stat = await self.git("show", "--stat", "--format=", "HEAD")
        self.chown_git()
        return Commit(sha, stat.strip())

    def chown_git(self) -> None:
        """Give what the daemon's git wrote in .git back to the sandbox's user."""
        if self.owner is not None and os.geteuid() == 0:
            _chown_tree(self.path / ".git", *self.owner)

    async def head(self) -> str | None:
        out = await self.git("rev-parse", "--verify", "-q", "HEAD", check=False)
        return out.strip() or None


def _chown_tree(root: Path, uid: int, gid: int) -> None:
    os.chown(root, uid, gid)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            os.chown(os.path.join(dirpath, name), uid, gid, follow_symlinks=False)
