"""Auto-accept (`[economy] auto_accept`): the operator's `accept_command`, run on a priced
delivery's branch before its escrow pays, in the sandbox, on a checkout of exactly that
branch's tree.

The checkout is DATA_DIR/accept-checkout, outside the workspace: the sandbox the command
runs in binds it as its /workspace and nothing of the entity's working tree or its
repository, so the delivered code can neither write into the agent's work nor leave a
file for the daemon's next commit; the directory is removed after every check. Git
writes the tree as a tar archive in the workspace's own sandbox (workspace.tree), and tar
unpacks it in the checkout's: the daemon itself never writes a file of the delivery.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

from entityd import Config, get_logger

from ..sandbox import Shell, ToolError
from ..workspace import GitError, Workspace

log = get_logger("actors.peer")

CHECKOUT = "accept-checkout"  # in DATA_DIR
UNPACK_TIMEOUT_S = 120.0
TAIL_CHARS = 2000
PREFIX = "auto-accept: "  # every note of a check begins so: the task was checked
PASSED, FAILED, TIMED_OUT, NOT_RUN = "passed", "failed", "timed_out", "not_run"


@dataclass(frozen=True)
class Verdict:
    outcome: str  # PASSED, FAILED, TIMED_OUT or NOT_RUN
    note: str  # for the operator, in `entityctl tasks`: never in an event
    exit_code: int | None = None

    @property
    def passed(self) -> bool:
        return self.outcome == PASSED


class Acceptance:
    def __init__(self, config: Config, workspace: Workspace) -> None:
        self.command = config.economy.accept_command
        self.workspace = workspace
        self.root = config.data_dir / CHECKOUT
        shell = workspace.shell  # the agent's confinement and limits, a longer timeout
        self.settings = dataclasses.replace(shell.settings,
                                            timeout=config.economy.accept_timeout)
        self.limits = shell.shared_limits

    async def check(self, branch: str) -> Verdict:
        """Run the accept command on a fresh checkout of `branch`; never raises for what
        the delivery, the sandbox or the disk did."""
        if not branch:
            return _not_run("the delivery holds no code to test")
        overlap = self._overlap()
        if overlap:
            return _not_run(overlap)
        try:
            tree = await self.workspace.tree(branch)
        except GitError as exc:
            return _not_run(f"{branch} could not be checked out: {exc}")
        try:
            _remove(self.root)  # a crash's leftover
            self.root.mkdir(mode=0o700)
            if self.workspace.owner is not None:  # as root: the sandbox uid writes in it
                os.chown(self.root, *self.workspace.owner)
            return await self._run(branch, tree)
        except (ToolError, OSError) as exc:
            return _not_run(f"the check could not run: {exc}")
        finally:
            try:
                _remove(self.root)
            except OSError as exc:
                log.warning("accept_checkout_left", path=str(self.root), error=str(exc))

    async def _run(self, branch: str, tree: bytes) -> Verdict:
        shell = Shell(self.settings, self.root, self.limits)
        if await shell.probe():
            return _not_run(f"the sandbox cannot start: {shell.unavailable}")
        unpacked = await shell.exec(["tar", "-x", "-f", "-", "--no-same-owner"], stdin=tree,
                                    timeout=UNPACK_TIMEOUT_S)
        if unpacked.timed_out:
            return _not_run(f"unpacking {branch} took longer than {UNPACK_TIMEOUT_S:g} s")
        if unpacked.exit_code != 0:
            said = unpacked.stderr.decode(errors="replace").strip()[-500:]
            return _not_run(f"unpacking {branch} failed (tar exited {unpacked.exit_code}): "
                            f"{said}")
        # exec leaves the mount point of its read-only .git placeholder; run makes its own.
        with contextlib.suppress(FileNotFoundError):
            (self.root / ".git").rmdir()
        # The delivery chooses every file the command sees, so it can always choose the
        # verdict (code that exits 0 when imported, a conftest.py for pytest): auto-accept
        # is for peers one trusts (README). PYTHONSAFEPATH only keeps a module it adds
        # beside the tests (unittest.py) from standing in for the standard library's
        # under `python3 -m`, the mistake that needs no intent.
        done = await shell.run(f"export PYTHONSAFEPATH=1\n{self.command}")
        ran = f"`{self.command}` on {branch}"
        if done.exit_code == 0:
            return Verdict(PASSED, f"{PREFIX}{ran} passed", 0)
        tail = done.output.strip()[-TAIL_CHARS:]
        said = f"Its output ended:\n{tail}" if tail else "It wrote nothing."
        if done.timed_out:
            return Verdict(TIMED_OUT, f"{PREFIX}{ran} was killed after {self.settings.timeout:g} "
                           f"s (economy.accept_timeout); {_WAITS}. {said}")
        return Verdict(FAILED, f"{PREFIX}{ran} exited {done.exit_code}; {_WAITS}. {said}",
                       done.exit_code)

    def _overlap(self) -> str:
        """Why the checkout may not go where it would: inside the workspace, or holding it."""
        root, workspace = self.root.resolve(), self.workspace.path.resolve()
        if root.is_relative_to(workspace) or workspace.is_relative_to(root):
            return (f"the checkout {root} and the workspace {workspace} would overlap; move "
                    "workspace.path out of the data dir's accept-checkout")
        return ""


_WAITS = "the escrow waits for `entityctl tasks accept|reject`"


def _not_run(why: str) -> Verdict:
    return Verdict(NOT_RUN, f"{PREFIX}the accept command did not run: {why}; {_WAITS}")


def _remove(root: Path) -> None:
    """Remove the checkout. The delivered code may have taken the write bit off a
    directory, which stops only a daemon that is not root: give it back first (never
    through a symlink; nothing runs in the checkout any more)."""
    if not os.path.lexists(root):
        return
    try:
        shutil.rmtree(root)
    except PermissionError:
        os.chmod(root, 0o700)
        for top, dirs, _ in os.walk(root):
            for name in dirs:
                path = os.path.join(top, name)
                if not os.path.islink(path):
                    os.chmod(path, 0o700)
        shutil.rmtree(root)
