"""actors/private_file.py: the one way the daemon replaces a file it keeps for itself
(ledger checkpoints, the web's revoked sessions, MCP pins, Moltbook state)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from actors.private_file import replace_private


def test_a_file_is_replaced_whole_and_private(tmp_path: Path) -> None:
    path = tmp_path / "state" / "pins.json"
    replace_private(path, "first")
    replace_private(path, b"second")
    assert path.read_bytes() == b"second"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert os.listdir(path.parent) == ["pins.json"]  # no spare left behind


def test_a_failed_write_keeps_the_old_content(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "checkpoint"
    replace_private(path, b"old")

    def no_disk(fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_disk)
    with pytest.raises(OSError, match="No space"):
        replace_private(path, b"new")
    assert path.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["checkpoint"]
