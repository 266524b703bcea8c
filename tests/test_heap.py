"""The daemon gives freed heap back: RSS follows what it holds, not the most it held."""

from __future__ import annotations

import platform

import pytest

from entityd import heap


def _rss_kb() -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="malloc_trim is glibc's")
def test_trim_gives_back_pages_freed_in_the_middle_of_the_heap() -> None:
    assert heap.available()
    # 1,000-byte objects are malloc's, not pymalloc's. Keep one in 128 (one per ~128
    # KB): the heap's top stays pinned, so only a trim can give back the pages between.
    blocks = [bytes(1000) + bytes([i % 256]) for i in range(150_000)]
    kept = blocks[::128]
    del blocks
    before = _rss_kb()
    assert heap.trim()
    after = _rss_kb()
    assert before - after > 50_000, (before, after)  # of about 150 MB freed
    assert len(kept) == 1172
