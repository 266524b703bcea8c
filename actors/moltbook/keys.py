"""Where the entity's Moltbook key comes from: the variable [moltbook] api_key_env names
(MOLTBOOK_API_KEY) in the daemon's environment, else a 0600 file ([moltbook] api_key_file,
by default DATA_DIR/keys/moltbook.key, where registering keeps it). A key file inside the
workspace is refused: the entity's own tools could read it there."""

from __future__ import annotations

import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from entityd import Config

from .errors import KeyRefused, NoKey, Refused

KEY_FILE = "moltbook.key"


@dataclass(frozen=True)
class KeySource:
    """Where to look for the key; never the key itself."""

    env_var: str
    path: Path
    workspace: Path

    @classmethod
    def of(cls, config: Config) -> KeySource:
        settings = config.moltbook
        if settings.api_key_file:
            path = Path(settings.api_key_file).expanduser()
            path = path if path.is_absolute() else config.data_dir / path
        else:
            path = config.data_dir / "keys" / KEY_FILE
        return cls(settings.api_key_env, path, Path(os.path.realpath(config.workspace_dir)))

    def configured(self, environ: Mapping[str, str]) -> bool:
        """Whether a key is there to try (an unusable file still counts: its calls then
        say what is wrong with it)."""
        return bool(self.env_var and environ.get(self.env_var, "").strip()) or \
            os.path.lexists(self.path)

    def describe(self, environ: Mapping[str, str]) -> str:
        if self.env_var and environ.get(self.env_var, "").strip():
            return f"${self.env_var}"
        return f"file {self.path}" if os.path.lexists(self.path) else "none"

    def load(self, environ: Mapping[str, str]) -> str:
        if self.env_var:
            value = environ.get(self.env_var, "").strip()
            if value:
                return value
        if not os.path.lexists(self.path):
            raise NoKey(
                f"no Moltbook key: set ${self.env_var or 'MOLTBOOK_API_KEY'} in the daemon's "
                f"environment, or register with `entityctl moltbook register NAME`, which "
                f"keeps the key in {self.path}")
        return self._read_file()

    def _read_file(self) -> str:
        path = self.path
        self.refuse_in_workspace()
        try:
            info = path.stat()
        except OSError as exc:
            raise KeyRefused(f"the Moltbook key file {path}: {exc.strerror}") from None
        if not stat.S_ISREG(info.st_mode):
            raise KeyRefused(f"the Moltbook key file {path} is not a regular file")
        if info.st_mode & (stat.S_IRWXG | stat.S_IRWXO):
            raise KeyRefused(f"the Moltbook key file {path} is open to group or others "
                             f"(mode {stat.S_IMODE(info.st_mode):o}); run `chmod 600 {path}`")
        try:
            value = path.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise KeyRefused(f"cannot read the Moltbook key file {path}: {exc}") from None
        if not value or "\n" in value:
            raise KeyRefused(f"the Moltbook key file {path} must hold the key alone, on "
                             "one line")
        return value

    def refuse_in_workspace(self) -> None:
        for candidate in (self.path.absolute(), Path(os.path.realpath(self.path))):
            if candidate == self.workspace or self.workspace in candidate.parents:
                raise KeyRefused(f"the Moltbook key file {self.path} lies in the workspace "
                                 f"{self.workspace}, where the entity's tools can read it; "
                                 "keep it in the data dir's keys/")

    def store(self, key: str) -> None:
        """Keep a new key in the file (0600, in a 0700 directory); never overwrite one."""
        self.refuse_in_workspace()  # realpath resolves the parents, links or not
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                         0o600)
        except FileExistsError:
            raise Refused(f"{self.path} already holds a key; registering again would make "
                          "another agent (move the file away first to do so)") from None
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(key + "\n")
