"""Hostile tool input: missing, huge, deep and pathological arguments, and trees built to
hurt, get a result or an error observation; never a crash, a restart, or a stalled loop.

The file tools are tried directly, then the tool actor under a real runtime on a real
nats-server, beside a health actor that must answer within 100 ms during every call.
"""

from __future__ import annotations

import asyncio
import itertools
import os
import stat
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from actors.health import HealthActor
from actors.messages import ToolCall, ToolResult
from actors.sandbox import BadArguments, Confinement, FileLimits, FileTools, PathRefused, ToolError
from actors.sandbox.paths import prepare
from actors.tool import ToolActor
from entityd import identity
from entityd.config import Config, EntitySection
from entityd.supervisor import ActorState
from entityd.transport import Transport
from protocol import Ping, Pong, Status
from tests.helpers import NatsServer, running_actors
from tests.test_tool_actor import ENTITY, SANDBOX

DEEP = 1100  # levels: the absolute path is far over PATH_MAX (4096)
CHAIN = 1500  # symlinks, each naming the next: more than Python's recursion limit
LONG_LINE = 200_000
QUICK = 2.0  # seconds any one hostile call may take
# A health ask's worst latency during any one call: the reported freezes blocked every
# actor for seconds; 400 ms still catches any synchronous work of substance in the loop,
# and leaves room for what a busy 2-core CI machine and the Hypothesis thread's share of
# the GIL add (single asks of 128 ms were seen there with a 100 ms bound).
HEALTH_MS = 400
LIMITS = FileLimits(max_file_bytes=64 * 1024, output_limit=4000)

CATASTROPHIC_REGEXES = ["(a+)+$", "(a|aa)*c", "(a*)*b", "^(a|a?)+$", "(.*a){20}x",
                        "(a|a)*b", "(x+x+)+y"]
PATHOLOGICAL_GLOBS = ["a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
                      "**/a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*b",
                      "**/**/**/**/**/**/**/**/**/**/**/**/x",
                      "*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*/*",
                      "**/" * 1000 + "x"]


# ---- trees built to hurt -------------------------------------------------------------------


def deep_tree(top: Path, levels: int) -> None:
    """`levels` nested directories `d` under `top`, a file at the bottom; made through
    directory fds, since the path of the bottom is longer than any syscall takes."""
    top.mkdir(parents=True, exist_ok=True)
    fd = os.open(top, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(levels):
            os.mkdir("d", dir_fd=fd)
            child = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = child
        bottom = os.open("bottom.txt", os.O_WRONLY | os.O_CREAT, 0o644, dir_fd=fd)
        os.write(bottom, b"needle at the bottom\n")
        os.close(bottom)
    finally:
        os.close(fd)


def remove_tree(root: Path) -> None:
    """Remove everything below `root` without recursion or long paths: each directory is
    moved up to `root` before it is emptied. pytest's own clean-up recurses, and fails on
    the trees these tests build."""
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        moved = itertools.count()
        pending = os.listdir(top)
        while pending:
            name = pending.pop()
            if not stat.S_ISDIR(os.stat(name, dir_fd=top, follow_symlinks=False).st_mode):
                os.unlink(name, dir_fd=top)
                continue
            fd = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=top)
            try:
                for child in os.listdir(fd):
                    info = os.stat(child, dir_fd=fd, follow_symlinks=False)
                    if stat.S_ISDIR(info.st_mode):
                        up = f".removing-{next(moved)}"
                        os.rename(child, up, src_dir_fd=fd, dst_dir_fd=top)
                        pending.append(up)
                    else:
                        os.unlink(child, dir_fd=fd)
            finally:
                os.close(fd)
            os.rmdir(name, dir_fd=top)
    finally:
        os.close(top)


@pytest.fixture(autouse=True)
def removes_its_trees(tmp_path: Path) -> Iterator[None]:
    yield
    remove_tree(tmp_path)


def hostile_workspace(root: Path) -> None:
    """Everything at once: a 1,100-level tree, long names, a long line, a name that is
    not UTF-8, a FIFO, a symlink loop and a symlink chain longer than the recursion limit."""
    deep_tree(root / "deep", DEEP)
    (root / ("a" * 200)).write_text("a" * 199 + "\n")
    (root / ("a" * 250 + ".py")).write_text("x = 1\n")
    (root / "long.txt").write_text("a" * LONG_LINE + "\n" + "a" * 30 + "b\n")
    fd = os.open(os.fsencode(root) + b"/bad-\xff.txt", os.O_WRONLY | os.O_CREAT, 0o644)
    os.write(fd, b"needle in a badly named file\n")
    os.close(fd)
    os.mkfifo(root / "fifo")
    (root / "loop").symlink_to("loop")
    for i in range(CHAIN):
        (root / f"l{i}").symlink_to(f"l{i + 1}")
    (root / f"l{CHAIN}").write_text("end of the chain\n")


@pytest.fixture(scope="module")
def hostile_root(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """One hostile workspace for the tests of the file tools (it takes a second or two to
    build); what they write into it changes nothing the others look at."""
    root = tmp_path_factory.mktemp("hostile")
    hostile_workspace(root)
    yield root
    remove_tree(root)


@pytest.fixture
def hostile(hostile_root: Path) -> FileTools:
    return FileTools(Confinement(hostile_root), LIMITS)


def timed(call: Callable[[], Any]) -> tuple[Any, float]:
    """What `call` returned or the ToolError it raised, and how long it took."""
    started = time.monotonic()
    try:
        result = call()
    except ToolError as exc:
        result = exc
    return result, time.monotonic() - started


# ---- the file tools, directly ----------------------------------------------------------------

HOSTILE_PATHS = [
    "nope.txt", "nope/deeper/still.txt", "x" * 5000, "y" * 300, "y" * 300 + "/z", "a\x00b",
    "deep/" + "d/" * DEEP + "bottom.txt", "deep/" + "d/" * 700, "/workspace/" + "z" * 4100,
    "fifo", "loop", "loop/x", "l0", "bad-\udcff.txt", "long.txt/x", ".", "/workspace",
    "../..", "/etc/passwd", ".env", ".git/config", "keys/entity.key", "w" * 300_000,
]


@pytest.mark.parametrize("path", HOSTILE_PATHS, ids=lambda p: repr(p[:24]))
def test_every_file_tool_answers_a_hostile_path(hostile: FileTools, path: str) -> None:
    calls: list[Callable[[], Any]] = [
        lambda: hostile.read_file(path),
        lambda: hostile.read_file(path, start_line=2, end_line=3),
        lambda: hostile.write_file(path, "x"),
        lambda: hostile.str_replace(path, "a", "b"),
        lambda: hostile.list_dir(path),
        lambda: hostile.grep("needle", path),
        lambda: hostile.glob(path.lstrip("/") or "x"),
    ]
    for call in calls:
        result, took = timed(call)  # anything but a result or a ToolError fails the test
        assert took < QUICK
        if isinstance(result, ToolError):
            assert len(str(result)) < 4500  # a 300,000-character path is not echoed whole
        else:
            text, data = result
            assert isinstance(text, str) and isinstance(data, dict)
            text.encode("utf-8")  # a reply can carry it


def test_the_errors_name_the_cause(hostile: FileTools) -> None:
    with pytest.raises(ToolError, match="absent: no such file or directory"):
        hostile.grep("needle", "absent")
    with pytest.raises(ToolError, match="longer than the file system allows"):
        hostile.grep("needle", "y" * 300)
    with pytest.raises(PathRefused, match="5000 characters; the longest a tool takes is 4096"):
        hostile.list_dir("x" * 5000)
    with pytest.raises(PathRefused, match="NUL byte"):
        hostile.read_file("a\x00b")
    with pytest.raises(PathRefused, match="cannot be resolved"):
        hostile.read_file("l0")  # the chain outruns realpath's recursion
    with pytest.raises(ToolError, match="not a regular file"):
        hostile.read_file("fifo")


def test_a_tree_1100_levels_deep_is_walked_to_a_bound(hostile: FileTools) -> None:
    for call in (lambda: hostile.glob("**/bottom.txt"), lambda: hostile.grep("bottom"),
                 lambda: hostile.grep("needle", "deep"), lambda: hostile.glob("deep/**")):
        (text, data), took = timed(call)
        assert took < QUICK
        assert data["complete"] is False
        assert f"more than {LIMITS.max_depth} levels deep not entered" in text
    # Paths into it still work as far as a path may reach (4,096 characters).
    listed, _ = hostile.list_dir("deep/" + "d/" * 1000)
    assert listed.endswith("d/ (1 entries)\nd/")
    wrote, _ = hostile.write_file("deep/" + "d/" * 1000 + "new.txt", "deep down\n")
    assert wrote.startswith("wrote 10 bytes")


def test_prepare_hands_over_a_deep_tree_without_recursing(tmp_path: Path) -> None:
    deep_tree(tmp_path / "ws" / "deep", DEEP)
    owner = (os.getuid(), os.getgid())
    left = prepare(tmp_path / "ws", owner, max_depth=300)
    assert left == "1 directories more than 300 levels deep not entered"
    assert prepare(tmp_path / "ws", owner, max_depth=2000) == ""


@pytest.mark.parametrize("pattern", PATHOLOGICAL_GLOBS, ids=lambda p: p[:30])
def test_pathological_globs_finish_quickly(hostile: FileTools, pattern: str) -> None:
    (text, data), took = timed(lambda: hostile.glob(pattern))
    assert took < QUICK, f"{pattern!r} took {took:.1f} s"
    if pattern.startswith("*/*"):  # 25 components: deep/d/.../d, 24 levels down
        assert text == "deep/" + "d/" * 24
    else:
        assert data["matches"] == 0 and text.startswith("no paths match")


def test_globs_that_match_long_names(hostile: FileTools) -> None:
    text, _ = hostile.glob("a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*a*.py")
    assert text == "a" * 250 + ".py"
    assert hostile.glob("*-?.txt")[0] == "bad-\\xff.txt"  # shown escaped, never raw


@pytest.mark.parametrize("pattern", CATASTROPHIC_REGEXES)
def test_catastrophic_regexes_run_in_linear_time(hostile: FileTools, pattern: str) -> None:
    (text, data), took = timed(lambda: hostile.grep(pattern, "long.txt", regex=True))
    assert took < QUICK, f"{pattern!r} took {took:.1f} s"
    assert isinstance(data["matches"], int)
    expected = {"(a+)+$": 2 - 1, "^(a|a?)+$": 1, "(x+x+)+y": 0}  # long.txt's lines: a..a, a..ab
    if pattern in expected:
        assert data["matches"] == expected[pattern], text


def test_regexes_re2_cannot_run_are_refused_saying_why(hostile: FileTools) -> None:
    for pattern, why in [("(a)\\1", "invalid escape sequence"),
                         ("a(?=b)", "invalid perl operator: (?="),
                         ("(?<!a)b", "invalid perl operator: (?<"),
                         ("(?x) a b", "invalid perl operator"),
                         ("a{1001}", "invalid repetition size"),
                         ("(", "missing )")]:
        with pytest.raises(BadArguments, match="RE2 syntax") as refused:
            hostile.grep(pattern, regex=True)
        assert why in str(refused.value)
        assert "backreferences" in str(refused.value) and "lookaround" in str(refused.value)
    with pytest.raises(BadArguments, match="5000 characters; the limit is 4096"):
        hostile.grep("a" * 5000)
    with pytest.raises(BadArguments, match="invalid character class range"):
        hostile.glob("[z-a]")


def test_grep_matches_within_single_lines(tmp_path: Path) -> None:
    tools = FileTools(Confinement(tmp_path), LIMITS)
    (tmp_path / "t.txt").write_bytes(b"alpha\r\nbeta\n\ngamma a\n\xffdelta\nlast")
    def lines(pattern: str, regex: bool = True) -> list[str]:
        text, _ = tools.grep(pattern, "t.txt", regex=regex)
        return [] if text.startswith("no matches") else text.splitlines()

    assert lines("^b") == ["t.txt:2: beta"]
    # "alpha\r" ends in \r; an undecodable byte is shown as U+FFFD
    assert lines("a$") == ["t.txt:2: beta", "t.txt:4: gamma a", "t.txt:5: \ufffddelta"]
    assert lines("a\\sb") == []  # never across a newline
    assert lines("^$") == ["t.txt:3: "]  # the empty line, not the end of the file
    assert lines("delta") == ["t.txt:5: \ufffddelta"]
    assert lines("last$") == ["t.txt:6: last"]  # the last line has no newline
    assert len(lines("", regex=False)) == 6
    assert lines("a.p", regex=False) == [] and lines("a.p") == ["t.txt:1: alpha"]
    assert lines("(?i)ALPHA|GAMMA") == ["t.txt:1: alpha", "t.txt:4: gamma a"]


def test_glob_components(tmp_path: Path) -> None:
    tools = FileTools(Confinement(tmp_path), LIMITS)
    for path in ("src/a/b/m.py", "src/n.py", "]x", "ab", "bb", "doc/x.md"):
        (tmp_path / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / path).write_text("")
    assert tools.glob("src/**")[0].splitlines() == [
        "src/", "src/a/", "src/a/b/", "src/a/b/m.py", "src/n.py"]
    assert tools.glob("src/**/*.py")[0].splitlines() == ["src/a/b/m.py", "src/n.py"]
    assert tools.glob("src/*/*/*.py")[0] == "src/a/b/m.py"
    assert tools.glob("**/b")[0] == "src/a/b/"
    assert tools.glob("[]]x")[0] == "]x"
    assert tools.glob("[!a]b")[0] == "bb"
    assert tools.glob("[")[0].startswith("no paths match")


def test_walks_stop_at_their_budget_and_say_so(tmp_path: Path) -> None:
    for i in range(50):
        (tmp_path / f"f{i:02}.txt").write_text("hit\n")
    tools = FileTools(Confinement(tmp_path), FileLimits(max_file_bytes=1024, output_limit=4000,
                                                      max_visited=10, max_matches=500))
    text, data = tools.glob("*.txt")
    assert data == {"matches": 10, "complete": False}
    assert "stopped after reading 10 directory entries" in text
    text, data = tools.list_dir(".")
    assert text.startswith("./ (at least 10 entries)") and not data["complete"]
    text, data = tools.grep("hit")
    assert data["matches"] == 10 and not data["complete"]
    late = FileTools(Confinement(tmp_path), FileLimits(max_file_bytes=1024, output_limit=4000,
                                                     walk_seconds=0))
    text, data = late.grep("hit")
    assert "stopped after 0 s" in text and not data["complete"]


def test_grep_says_which_files_it_did_not_search(tmp_path: Path) -> None:
    (tmp_path / "small.txt").write_text("hit\n")
    (tmp_path / "big.txt").write_text("hit\n" * 1000)
    (tmp_path / "binary.bin").write_bytes(b"hit\n\x00")
    tools = FileTools(Confinement(tmp_path), FileLimits(max_file_bytes=1024, output_limit=4000,
                                                      max_grep_file_bytes=100))
    text, data = tools.grep("hit")
    assert text == "small.txt:1: hit\n[... 1 files over 100 bytes not searched]"
    assert data == {"matches": 1, "complete": False}
    with pytest.raises(ToolError, match=r"big\.txt is 4000 bytes, over the 1024-byte limit"):
        tools.str_replace("big.txt", "hit", "miss")


def test_read_file_never_holds_a_huge_line(tmp_path: Path) -> None:
    (tmp_path / "big.txt").write_bytes(b"x" * (20 * 1024 * 1024) + b"\nsecond\n")
    tools = FileTools(Confinement(tmp_path), LIMITS)
    text, data = tools.read_file("big.txt", start_line=1, end_line=2)
    first, second = text.splitlines()
    assert first.endswith(f"[... line cut: it is {20 * 1024 * 1024} bytes long]")
    assert second == "     2\tsecond" and data["last"] == 2


# ---- the tool actor under a real runtime -----------------------------------------------------


@dataclass
class HostileRig:
    client: Transport
    actors: Any  # tests.helpers.RunningActors

    async def call_with_health(self, tool: str, args: dict[str, Any]) -> tuple[ToolResult,
                                                                                list[float]]:
        """The tool call's result, and how long each health ask took while it ran (at
        least one, sent together with the call)."""
        loop = asyncio.get_running_loop()
        call = asyncio.ensure_future(self.client.ask(
            f"{ENTITY}/ctl", f"{ENTITY}/tool", ToolCall(tool, args, caller="test"), 60))
        latencies = []
        try:
            while True:
                started = loop.time()
                pong = await self.client.ask(f"{ENTITY}/ctl", f"{ENTITY}/health", Ping(), 2.0)
                latencies.append(loop.time() - started)
                assert isinstance(pong.message, Pong)
                if call.done():
                    break
            result = (await call).message
        finally:
            call.cancel()
        assert isinstance(result, ToolResult)
        return result, latencies

    def tool_state(self) -> tuple[str, int, int]:
        child = self.actors.runtime.supervisor.actors["tool"]
        return child.state.value, child.restarts, len(child.crashes)


@asynccontextmanager
async def hostile_rig(nats_server: NatsServer, root: Path) -> AsyncIterator[HostileRig]:
    """The tool and health actors of one entity whose workspace holds a hostile tree from
    before the daemon starts (the tool actor hands the workspace over as it starts)."""
    data = root / ENTITY
    data.mkdir(parents=True)
    identity.create(data)
    config = Config(entity=EntitySection(name=ENTITY, data_dir=str(data)), sandbox=SANDBOX)
    hostile_workspace(config.workspace_dir)
    status = Status(entity=ENTITY, public_key="", uptime_s=0.0, nats_server="", actors=[])
    async with running_actors(
        nats_server.url, ENTITY,
        {"tool": lambda: ToolActor(config), "health": lambda: HealthActor(lambda: status)},
    ) as actors:
        rig = HostileRig(actors.client, actors)
        yield rig
        assert rig.tool_state() == (ActorState.RUNNING.value, 0, 0)


def check(result: ToolResult, latencies: list[float], what: str) -> None:
    assert result.ok or result.error, what
    assert "internal error" not in result.error, f"{what}: {result.error}"
    worst = max(latencies) * 1000
    assert worst < HEALTH_MS, f"{what}: a health ask took {worst:.0f} ms during the call"


# The calls of the issue: each crashed the tool actor or froze every actor.
REPORTED: list[tuple[str, dict[str, Any]]] = [
    ("grep", {"pattern": "x", "path": "nope"}),
    ("grep", {"pattern": "x", "path": "x" * 5000}),
    ("grep", {"pattern": "x", "path": "y" * 300}),
    ("list_dir", {"path": "z" * 300}),
    ("read_file", {"path": "y" * 300}),
    ("read_file", {"path": "l0"}),
    ("glob", {"pattern": "[]"}),
    ("glob", {"pattern": "**/bottom.txt"}),
    ("grep", {"pattern": "bottom"}),
    ("list_dir", {"path": "deep/" + "d/" * 1000}),
    *(("glob", {"pattern": pattern}) for pattern in PATHOLOGICAL_GLOBS),
    *(("grep", {"pattern": pattern, "regex": True}) for pattern in CATASTROPHIC_REGEXES),
    ("grep", {"pattern": "(a)\\1", "regex": True}),
    ("shell", {"command": "echo \x00 hi"}),
    ("read_file", {"path": "KEY" * 100_000}),  # quadratic in the audit's secret redaction
    ("x" * 100_000, {}),
]


async def test_the_calls_that_crashed_or_froze_the_daemon_are_answered(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    async with hostile_rig(nats_server, tmp_path) as rig:
        for tool, args in REPORTED:
            what = f"{tool[:20]} {str(args)[:60]}"
            started = time.monotonic()
            result, latencies = await rig.call_with_health(tool, args)
            check(result, latencies, what)
            assert time.monotonic() - started < QUICK + 1, what
        shell = await rig.call_with_health("shell", {"command": "echo still here"})
        assert shell[0].output == "still here\n"


# Hypothesis: any tool name, any argument map.
INTS = st.integers(min_value=-(2**63), max_value=2**63 - 1) | st.sampled_from([0, 1, 2, 10**9])
TEXT = st.text(st.characters(blacklist_categories=["Cs"]), max_size=40)
HUGE = st.sampled_from(["x" * 5000, "x" * 100_000, "x" * 300_000, "KEY" * 100_000])
HOSTILE = st.sampled_from([p for p in HOSTILE_PATHS if "\udcff" not in p])
PATHS = st.one_of(HOSTILE, HOSTILE, TEXT, HUGE)
NASTY = st.sampled_from(CATASTROPHIC_REGEXES + PATHOLOGICAL_GLOBS + [
    "(a)\\1", "a(?=b)", "(?x) a", "[", "(", "\\", "a{1001}", "[]", "[!]", "[z-a]", "*" * 4000,
    "**", "**/*", "/", "../*", "", "\x00", "deep/**/d/d/d/d/d/d/d/d", "a", "^a+$", "needle",
])
PATTERNS = st.one_of(NASTY, NASTY, NASTY, TEXT, HUGE)
VALUES = st.one_of(st.none(), st.booleans(), INTS, st.floats(), TEXT, st.binary(max_size=16),
                   st.lists(INTS, max_size=3), st.dictionaries(TEXT, INTS, max_size=2), PATHS,
                   PATTERNS)
COMMANDS = st.sampled_from(["true", "ls deep | head -c 100", "x" * 200_000, "echo \x00",
                            "cat " + "d/" * DEEP, "printf 'a%.0s' $(seq 1 1000) > made.txt"])
ARG_NAMES = ["path", "content", "old", "new", "start_line", "end_line", "pattern", "regex",
             "command"]


def tool_calls() -> st.SearchStrategy[tuple[str, dict[str, Any]]]:
    """Calls with each argument of the right type and a hostile value, and calls with
    any name and any argument map at all."""
    typed = st.one_of(
        st.tuples(st.just("read_file"), st.fixed_dictionaries(
            {"path": PATHS}, optional={"start_line": INTS, "end_line": INTS})),
        st.tuples(st.just("write_file"), st.fixed_dictionaries(
            {"path": PATHS, "content": TEXT | HUGE})),
        st.tuples(st.just("str_replace"), st.fixed_dictionaries(
            {"path": PATHS, "old": TEXT | HUGE, "new": TEXT})),
        st.tuples(st.just("list_dir"), st.fixed_dictionaries({}, optional={"path": PATHS})),
        st.tuples(st.just("glob"), st.fixed_dictionaries({"pattern": PATTERNS | PATHS})),
        st.tuples(st.just("grep"), st.fixed_dictionaries(
            {"pattern": PATTERNS}, optional={"path": PATHS, "regex": st.booleans()})),
        st.tuples(st.just("shell"), st.fixed_dictionaries({"command": COMMANDS})),
    )
    names = st.sampled_from(["read_file", "write_file", "str_replace", "list_dir", "glob",
                             "grep", "shell", "", "launch_rockets", "__init__", "_files",
                             "workspace"]) | TEXT | HUGE
    anything = st.tuples(names, st.dictionaries(st.sampled_from(ARG_NAMES) | TEXT, VALUES,
                                                max_size=4))
    return typed | anything


async def test_no_tool_call_crashes_restarts_or_stalls_the_daemon(
    nats_server: NatsServer, tmp_path: Path,
) -> None:
    async with hostile_rig(nats_server, tmp_path) as rig:
        loop = asyncio.get_running_loop()

        # Hypothesis runs in a worker thread and hands each call to this loop, which
        # serves the actors and times the health asks.
        @settings(max_examples=150, deadline=None, database=None,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
        @given(tool_calls())
        def one_call(call: tuple[str, dict[str, Any]]) -> None:
            tool, args = call
            result, latencies = asyncio.run_coroutine_threadsafe(
                rig.call_with_health(tool, args), loop).result(timeout=90)
            check(result, latencies, f"{tool[:20]} {str(args)[:80]}")
            event(f"{tool[:12]}: {'ok' if result.ok else result.error[:30]}")
            assert rig.tool_state() == (ActorState.RUNNING.value, 0, 0)

        await asyncio.to_thread(one_call)
