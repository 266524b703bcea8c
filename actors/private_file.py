"""Replacing a small file the daemon keeps for itself (checkpoints, pins, state), whole
and at once: a crash leaves the old content or the new, never part of either, and the file
is readable by the daemon's user only (0600)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def replace_private(path: Path, data: bytes | str) -> None:
    """Write `data` to a new 0600 file beside `path`, flush it to disk, and rename it over
    `path`; the directory is made (0700) if missing. Blocking: call it off the loop."""
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    fd, spare = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".new", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as out:  # mkstemp made it 0600
            out.write(data.encode() if isinstance(data, str) else data)
            out.flush()
            os.fsync(out.fileno())
        os.replace(spare, path)
    except BaseException:
        Path(spare).unlink(missing_ok=True)
        raise
