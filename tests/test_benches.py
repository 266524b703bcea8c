"""Benchmarks never rot: every bench runs `--quick` here, as a smoke.

A module of bench/ is a bench when it defines a top-level `main` (read from its source,
not imported); the libraries the benches and tests share (harness, ports, rig) define
none. Each bench has a `## bench.NAME` section in bench/README.md, and the result lines
that section documents in its fenced blocks (`ratio NAME: X`, or `NAME: X` where a bench
prints no ratio) must each appear in the quick run's output with a number in place of X.
Nothing here looks at what the numbers are: the figures stay in the benches.
"""

from __future__ import annotations

import ast
import re
import subprocess
import sys

import pytest

from tests.helpers import REPO, child_env

BENCH = REPO / "bench"
README = BENCH / "README.md"
RUN_TIMEOUT_S = 100.0  # a quick run takes a few seconds; this is for a hung one
STOP_GRACE_S = 20.0  # SIGTERM, then: a bench stops its servers and daemons and exits 130

HEADING = re.compile(r"^## ", re.M)
SECTION = re.compile(r"bench\.(\w+)\b")
FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
DOCUMENTED_LINE = re.compile(r"^((?:ratio )?\w+): X\b", re.M)
NUMBER = r"-?\d+(?:\.\d+)?"


def benches() -> list[str]:
    """The modules of bench/ with a top-level `main`, by name."""
    found = []
    for path in sorted(BENCH.glob("*.py")):
        tree = ast.parse(path.read_text(), str(path))
        if any(isinstance(node, ast.FunctionDef) and node.name == "main" for node in tree.body):
            found.append(path.stem)
    return found


def documented() -> dict[str, list[str]]:
    """Per `## bench.NAME` section of bench/README.md (up to the next `## ` heading), the
    result lines its fenced blocks show, e.g. `ratio rr_seq` or `recall_p50_ms`."""
    sections: dict[str, list[str]] = {}
    for section in HEADING.split(README.read_text())[1:]:
        if bench := SECTION.match(section):
            sections[bench[1]] = [line for block in FENCE.findall(section)
                                  for line in DOCUMENTED_LINE.findall(block)]
    return sections


def test_every_bench_is_documented_with_its_result_lines() -> None:
    sections = documented()
    assert sorted(sections) == benches(), (
        "bench/README.md's `## bench.NAME` sections and the bench modules differ"
    )
    undocumented = [name for name, lines in sections.items() if not lines]
    assert not undocumented, f"sections that document no result line: {undocumented}"


def run_quick(name: str) -> subprocess.CompletedProcess[str]:
    """`python -m bench.NAME --quick` from the repository; stopped with SIGTERM (then
    killed) if it hangs, so its servers and daemons go too."""
    proc = subprocess.Popen(
        [sys.executable, "-m", f"bench.{name}", "--quick"], cwd=REPO, env=child_env(),
        stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )
    try:
        out, err = proc.communicate(timeout=RUN_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.terminate()
        try:
            out, err = proc.communicate(timeout=STOP_GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
        pytest.fail(f"bench.{name} --quick still ran after {RUN_TIMEOUT_S} s:\n"
                    f"{out[-3000:]}\n{err[-3000:]}")
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


@pytest.mark.timeout(RUN_TIMEOUT_S + 2 * STOP_GRACE_S)
@pytest.mark.parametrize("name", benches())
def test_quick_run_completes_and_prints_its_result_lines(name: str) -> None:
    result = run_quick(name)
    assert result.returncode == 0, (
        f"bench.{name} --quick exited {result.returncode}:\n"
        f"{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    )
    for line in documented().get(name, []):
        printed = re.search(rf"^{re.escape(line)}: ({NUMBER})", result.stdout, re.M)
        assert printed is not None, f"bench.{name} did not print `{line}: X`:\n{result.stdout}"
