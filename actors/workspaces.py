"""The entity's git workspaces: its own, and one for each peer whose delegated tasks work
here (`Config.workspace_of`: DATA_DIR/peer-workspaces/<peer>), each a repository of its
own. A peer's task reads and commits only in its peer's workspace, so it never sees the
entity's own work or another peer's, and its commits are shipped from there; what a peer
delivers to us still lands on a branch of our own workspace."""

from __future__ import annotations

import os
import stat
from pathlib import Path

from entityd import Config

from .sandbox.cgroup import SharedLimits
from .workspace import Workspace


class Workspaces:
    def __init__(self, config: Config, limits: SharedLimits | None = None) -> None:
        self.config = config
        self.limits = limits
        self.own = Workspace(config.workspace_dir, config.name, config.sandbox, limits)
        self._peers: dict[str, Workspace] = {}

    def of(self, peer: str = "") -> Workspace:
        """The workspace of `peer`'s tasks ("": the entity's own); ValueError for a name
        that cannot be a peer's."""
        if not peer:
            return self.own
        found = self._peers.get(peer)
        if found is None:
            found = Workspace(peer_root(self.config, peer), self.config.name,
                              self.config.sandbox_of(peer), self.limits)
            self._peers[peer] = found
        return found


def peer_root(config: Config, peer: str) -> Path:
    """The directory of `peer`'s tasks, checked: a name that is no peer's, a workspace
    configured beside it, or anything but a directory (or nothing yet) at its place raise
    ValueError. No agent can write in DATA_DIR/peer-workspaces (the entity's workspace may
    not hold it), so a link found there was put by someone else: refused, never followed.
    Blocking (a stat)."""
    given = config.workspace_of(peer)
    path = Path(os.path.realpath(given.parent)) / given.name  # as the confinement sees it
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return path
    if not stat.S_ISDIR(mode):
        raise ValueError(f"{path} is not a directory the daemon made (a link or a file): "
                         "an operator should look at it and remove it")
    return path
