"""The workspace's commits as the services see them: the HEAD commit, services.toml at a
commit, whether a service's files changed between two commits, and a commit's tree
exported into a revision directory of its own.

Everything that touches the repository is the Workspace's git, in the sandbox (DESIGN.md,
"The rule the sandbox rests on"); the tree comes out as a tar archive that is unpacked by
tar in a second sandbox over the revision directory, so the daemon never writes a path
the agent chose. Protected files (.env*, keys) are left out of the archive, as they are
out of every commit the daemon makes.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
from pathlib import Path

from entityd import SandboxSection

from ..sandbox import Shell, ToolError
from ..sandbox.cgroup import SharedLimits
from ..workspace import PROTECTED_PATHSPECS, GitError, Workspace
from .manifest import MAX_BYTES, ManifestError, ServiceSpec
from .revision import Output, Revision

HEX = frozenset("0123456789abcdef")


class ExportError(Exception):
    """A commit could not be made into a revision directory."""


class Snapshots:
    def __init__(self, workspace: Workspace, root: Path, sandbox: SandboxSection,
                 limits: SharedLimits | None = None) -> None:
        self.workspace = workspace
        self.root = root  # DATA_DIR/services
        self.sandbox = sandbox
        self.limits = limits or workspace.shell.shared_limits
        self._attempts: dict[str, int] = {}

    async def head(self) -> str | None:
        return await self.workspace.head()

    async def manifest(self, commit: str, path: str) -> bytes | None:
        """services.toml at `commit` (at most one byte past the size limit, so that an
        oversized file is refused, not read); None when the commit has none; a
        ManifestError when it is no file. The file is the agent's and need not be UTF-8:
        bytes, after a one-byte mark (1 a file, 2 something else, 0 nothing)."""
        script = ('if [ "$(git cat-file -t "$1" 2>/dev/null)" = blob ]; then printf 1; '
                  f'git cat-file blob "$1" | head -c {MAX_BYTES + 1}; '
                  'elif git cat-file -e "$1" 2>/dev/null; then printf 2; else printf 0; fi')
        out = await self.workspace.output(["/bin/sh", "-c", script, "manifest",
                                           f"{_sha(commit)}:{path}"])
        if out[:1] == b"2":
            raise ManifestError([f"{path} is a directory, not a file"])
        return out[1:] if out[:1] == b"1" else None

    async def changed(self, old: str, new: str, spec: ServiceSpec) -> bool:
        """Whether `spec`'s files differ between the two commits."""
        if old == new:
            return False
        code, _ = await self.workspace.run(
            ["git", "diff", "--quiet", "--no-ext-diff", "--no-textconv",
             "--ignore-submodules=all", _sha(old), _sha(new), "--", *spec.pathspecs()],
            check=False)
        if code not in (0, 1):
            raise GitError(f"git diff {old[:12]}..{new[:12]} failed (exit code {code})")
        return code == 1

    async def archive(self, commit: str) -> bytes:
        """The commit's tree as a tar archive, protected files left out."""
        return await self.workspace.output(
            ["git", "archive", "--format=tar", _sha(commit), "--", ".", *PROTECTED_PATHSPECS])

    async def export(self, name: str, commit: str, tar: bytes, spec: ServiceSpec,
                     log_bytes: int) -> Revision:
        """A fresh revision directory of service `name` holding the commit's tree, and
        its sandbox, probed."""
        attempt = self._attempts.get(name, 0) + 1
        self._attempts[name] = attempt
        rev_id = f"{commit[:12]}.{attempt}"
        directory = self.root / name / rev_id
        await asyncio.to_thread(self._fresh_dir, directory)
        shell = Shell(self.sandbox, directory, self.limits)
        problem = await shell.probe()
        if problem:
            raise ExportError(f"the sandbox cannot start here: {problem}")
        try:
            done = await shell.exec(["tar", "-x", "-f", "-", "--no-same-owner",
                                     "--delay-directory-restore"], stdin=tar)
        except ToolError as exc:
            raise ExportError(f"the snapshot could not be unpacked: {exc}") from None
        if done.exit_code != 0:
            detail = done.stderr.decode(errors="replace").strip()[-500:]
            raise ExportError(f"the snapshot could not be unpacked (tar exit code "
                              f"{done.exit_code}): {detail}")
        return Revision(name, spec, commit, rev_id, directory, shell, Output(log_bytes))

    def _fresh_dir(self, directory: Path) -> None:
        remove_tree(directory)
        directory.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        directory.mkdir(mode=0o755)
        if os.geteuid() == 0:
            os.chown(directory, self.sandbox.uid, self.sandbox.gid)

    def forget(self, name: str) -> None:
        """Remove every revision directory of service `name`."""
        remove_tree(self.root / name)


def remove_tree(path: Path) -> None:
    """rmtree without following symlinks (the tree is the sandbox's); what a service made
    unwritable is made writable first."""
    if not os.path.lexists(path):
        return

    def retry(function: object, name: str, _: object) -> None:
        if os.path.islink(name) or not os.path.isdir(name):
            return
        with contextlib.suppress(OSError):
            os.chmod(name, 0o700)
            shutil.rmtree(name, ignore_errors=True)

    shutil.rmtree(path, onerror=retry)


def _sha(commit: str) -> str:
    """A commit id git is given: hex only, so that nothing reads as an option or a path."""
    if not 4 <= len(commit) <= 64 or not set(commit) <= HEX:
        raise GitError(f"{commit[:80]!r} is not a commit id")
    return commit
