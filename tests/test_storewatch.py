"""The store watch: when the embedded nats-server's store met a full disk and has room
again, it asks once for the restart that clears the server's stream write errors (the
daemon's side, end to end: tests/test_attack_review_diskfull.py). Real files on a real
small tmpfs (root mounts it; skipped, saying so, without root)."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from entityd import storewatch
from entityd.storewatch import LogTail, StoreWatch

SIZE_MIB = 16


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={SIZE_MIB}m", "tmpfs",
                           str(mount)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {done.stderr.strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def fill(path: Path) -> None:
    with open(path, "wb", buffering=0) as out:
        for size in (1 << 20, 1 << 12, 1):
            try:
                while True:
                    out.write(b"\0" * size)
            except OSError:
                pass


class Asked:
    def __init__(self) -> None:
        self.reasons: list[str] = []

    def __call__(self, reason: str) -> None:
        self.reasons.append(reason)


def watch(disk: Path, asked: Asked, settle: float = 0.0) -> StoreWatch:
    (disk / "jetstream").mkdir(exist_ok=True)
    return StoreWatch(disk / "jetstream", disk / "nats-server.log", asked, settle=settle)


def test_a_full_disk_then_room_asks_for_one_restart(small_disk: Path) -> None:
    asked = Asked()
    w = watch(small_disk, asked)
    assert not w.look() and not w.met_full  # room, never full: nothing to do
    fill(small_disk / "filler")
    assert storewatch.free_bytes(small_disk) == 0
    assert not w.look() and w.met_full and asked.reasons == []  # full: not yet
    (small_disk / "filler").unlink()
    assert w.look()
    assert len(asked.reasons) == 1 and "has room again" in asked.reasons[0]
    assert not w.look() and len(asked.reasons) == 1  # once per time it filled


def test_room_that_is_not_enough_waits(small_disk: Path) -> None:
    asked = Asked()
    w = watch(small_disk, asked)
    fill(small_disk / "filler")
    w.look()
    with open(small_disk / "filler", "r+b") as f:  # 2 MiB back: more than "full", too little
        f.truncate(os.path.getsize(small_disk / "filler") - (2 << 20))
    assert not w.look() and w.met_full and asked.reasons == []
    (small_disk / "filler").unlink()
    assert w.look() and len(asked.reasons) == 1


def test_the_servers_log_saying_the_disk_filled_counts_though_it_has_room(
        small_disk: Path) -> None:
    """A disk full between two looks: the server's log line says it (when it could be
    written), and the restart follows at once since there is room."""
    asked = Asked()
    log = small_disk / "nats-server.log"
    log.write_text("[1] [INF] Server is ready\n")
    w = watch(small_disk, asked)
    with log.open("a") as out:
        out.write("[4490] 2026/12/06 22:56:20.460716 [ERR] JetStream failed to store a msg "
                  "on stream '$G > INBOX': write /x/1.blk: no space left on device\n")
    assert not w.look() and w.met_full  # marked at this look; asked at the next
    assert w.look() and len(asked.reasons) == 1


@pytest.mark.parametrize("line", [
    # a client's name, a subject or a reason is what a client writes: never the store's
    '[7] 2026/12/06 22:56:20.46 [ERR] 127.0.0.1:5 - cid:9 - "no space left on device"',
    "[7] 2026/12/06 22:56:20.46 [INF] JetStream note: no space left on device",
    "[7] 2026/12/06 22:56:20.46 [ERR] Filestore [S] fine\nno space left on device",
])
def test_a_line_a_client_could_write_is_not_the_store_saying_so(
        small_disk: Path, line: str) -> None:
    asked = Asked()
    log = small_disk / "nats-server.log"
    log.write_text("")
    w = watch(small_disk, asked)
    log.write_text(line + "\n")
    assert not w.look() and not w.met_full and asked.reasons == []


def test_a_watch_just_started_waits_before_it_asks(small_disk: Path) -> None:
    asked = Asked()
    w = watch(small_disk, asked, settle=60.0)
    fill(small_disk / "filler")
    w.look()
    (small_disk / "filler").unlink()
    assert not w.look() and w.met_full and asked.reasons == []  # still marked: asks later


def test_the_log_tail_reads_what_is_new_once(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    log.write_bytes(b"old line: no space left on device\n")
    tail = LogTail(log)
    assert tail.new() == b""  # what was there before the watch is not news
    with log.open("ab") as out:
        out.write(b"new\n")
    assert tail.new() == b"new\n" and tail.new() == b""
    log.write_bytes(b"again\n")  # replaced by a shorter file: read from its start
    assert tail.new() == b"again\n"
    with log.open("ab") as out:  # a burst past the bound: only its last bytes are read
        out.write(b"x" * (storewatch.LOG_READ_MAX + 10))
    assert len(tail.new()) == storewatch.LOG_READ_MAX


def test_a_missing_log_or_store_is_no_error(tmp_path: Path) -> None:
    asked = Asked()
    w = StoreWatch(tmp_path / "gone" / "jetstream", tmp_path / "gone.log", asked)
    assert not w.look() and not w.met_full and asked.reasons == []
