"""The file tools on real files: confinement, protected files, limits and each tool's output."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from actors.sandbox import (
    BadArguments,
    Confinement,
    FileLimits,
    FileTools,
    PathRefused,
    ToolError,
)

AS_ROOT = os.geteuid() == 0
OWNER = (65534, 65534)


@pytest.fixture
def layout(tmp_path: Path) -> tuple[Path, Path]:
    """A workspace and, beside it, a secret the tools must never reach."""
    workspace = tmp_path / "workspace"
    workspace.mkdir()
    secret = tmp_path / "secret.txt"
    secret.write_text("outside secret\n")
    return workspace, secret


@pytest.fixture
def tools(layout: tuple[Path, Path]) -> FileTools:
    workspace, _ = layout
    return FileTools(Confinement(workspace, OWNER if AS_ROOT else None),
                     FileLimits(max_file_bytes=64 * 1024, output_limit=2000, max_entries=5,
                                max_matches=3))


def test_paths_outside_the_workspace_are_refused(tools: FileTools,
                                                 layout: tuple[Path, Path]) -> None:
    workspace, secret = layout
    for path in (str(secret), "../secret.txt", "a/../../secret.txt", "/etc/passwd",
                 "/workspace/../etc/passwd", ""):
        with pytest.raises(PathRefused):
            tools.read_file(path)
    with pytest.raises(PathRefused):
        tools.write_file("../evil.txt", "x")
    assert not (workspace.parent / "evil.txt").exists()


def test_symlinks_out_of_the_workspace_are_refused(tools: FileTools,
                                                   layout: tuple[Path, Path]) -> None:
    workspace, secret = layout
    (workspace / "root").symlink_to("/")
    (workspace / "up").symlink_to(secret.parent)
    (workspace / "leak.txt").symlink_to(secret)
    (workspace / "dangling").symlink_to(secret.parent / "created-by-tool.txt")
    for path in ("root/etc/passwd", "up/secret.txt", "leak.txt"):
        with pytest.raises(PathRefused):
            tools.read_file(path)
    for path in ("dangling", "up/new.txt", "root/tmp/new.txt"):
        with pytest.raises(PathRefused):
            tools.write_file(path, "x")
    assert not (secret.parent / "created-by-tool.txt").exists()
    with pytest.raises(PathRefused):
        tools.list_dir("up")
    with pytest.raises(PathRefused):
        tools.grep("outside", "up")
    # A walk never follows them either.
    assert tools.grep("outside secret")[1]["matches"] == 0
    assert "secret.txt" not in tools.glob("**/*.txt")[0]


def test_symlink_inside_the_workspace_is_followed(tools: FileTools,
                                                  layout: tuple[Path, Path]) -> None:
    workspace, _ = layout
    (workspace / "real.txt").write_text("inside\n")
    (workspace / "alias.txt").symlink_to("real.txt")
    assert "inside" in tools.read_file("alias.txt")[0]


def test_a_directory_swapped_for_a_symlink_is_not_followed(tools: FileTools,
                                                           layout: tuple[Path, Path]) -> None:
    workspace, secret = layout
    (workspace / "dir").mkdir()
    parts = tools.workspace.resolve("dir/secret.txt")
    # The check passed; now the directory becomes a symlink out before the open.
    (workspace / "dir").rmdir()
    (workspace / "dir").symlink_to(secret.parent)
    with pytest.raises(PathRefused), tools.workspace.open_file(parts):
        pass


@pytest.mark.parametrize("path", [
    ".env", ".env.local", "sub/.ENV", ".envrc", "server.key", "certs/tls.pem", "id_rsa",
    "id_ed25519.pub", ".git/config", ".git/hooks/pre-commit", "vendor/lib/.git/HEAD",
])
def test_protected_files_are_refused(tools: FileTools, layout: tuple[Path, Path],
                                     path: str) -> None:
    workspace, _ = layout
    target = workspace / path
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text("SECRET=sk-test-protected\n")
    with pytest.raises(PathRefused):
        tools.read_file(path)
    with pytest.raises(PathRefused):
        tools.write_file(path, "x")
    with pytest.raises(PathRefused):
        tools.str_replace(path, "SECRET", "x")
    assert target.read_text() == "SECRET=sk-test-protected\n"
    assert tools.grep("sk-test")[1]["matches"] == 0
    assert tools.glob("**")[0].count("sk-test") == 0


def test_read_with_line_numbers_and_ranges(tools: FileTools, layout: tuple[Path, Path]) -> None:
    workspace, _ = layout
    (workspace / "f.txt").write_text("".join(f"line {i}\n" for i in range(1, 11)))
    text, data = tools.read_file("f.txt", start_line=3, end_line=5)
    assert text == "     3\tline 3\n     4\tline 4\n     5\tline 5"
    assert data["first"] == 3 and data["last"] == 5
    assert tools.read_file("/workspace/f.txt", start_line=10)[0] == "    10\tline 10"
    with pytest.raises(ToolError, match="has 10 lines"):
        tools.read_file("f.txt", start_line=11)
    with pytest.raises(BadArguments):
        tools.read_file("f.txt", start_line=5, end_line=4)
    (workspace / "empty.txt").write_text("")
    assert "empty file" in tools.read_file("empty.txt")[0]


def test_long_reads_stop_at_the_output_limit_and_say_where_to_go_on(
    tools: FileTools, layout: tuple[Path, Path],
) -> None:
    workspace, _ = layout
    (workspace / "long.txt").write_text("".join(f"{'x' * 90} {i}\n" for i in range(1, 200)))
    text, data = tools.read_file("long.txt")
    assert data["truncated"] and len(text) <= 2000 + 200
    assert f"continue with start_line={data['last'] + 1}" in text
    (workspace / "big.bin").write_bytes(b"\x00" * 100)
    assert "binary file" in tools.read_file("big.bin")[0]
    (workspace / "huge.txt").write_text("y\n" * 40_000)  # over max_file_bytes
    with pytest.raises(ToolError, match="read a range"):
        tools.read_file("huge.txt")
    assert tools.read_file("huge.txt", start_line=2, end_line=2)[0] == "     2\ty"


def test_write_creates_parents_caps_size_and_hands_files_to_the_sandbox_uid(
    tools: FileTools, layout: tuple[Path, Path],
) -> None:
    workspace, _ = layout
    text, data = tools.write_file("a/b/c.py", "print('hi')\n")
    assert data == {"bytes": 12, "lines": 1} and "a/b/c.py" in text
    assert (workspace / "a/b/c.py").read_text() == "print('hi')\n"
    if AS_ROOT:
        for path in ("a", "a/b", "a/b/c.py"):
            info = (workspace / path).stat()
            assert (info.st_uid, info.st_gid) == OWNER
    with pytest.raises(ToolError, match="file size limit"):
        tools.write_file("big.txt", "z" * (64 * 1024 + 1))
    assert not (workspace / "big.txt").exists()
    tools.write_file("a/b/c.py", "short\n")
    assert (workspace / "a/b/c.py").read_text() == "short\n"


def test_write_refuses_fifos_and_hard_links(tools: FileTools, layout: tuple[Path, Path]) -> None:
    workspace, secret = layout
    os.mkfifo(workspace / "pipe")
    with pytest.raises(ToolError, match="not a regular file"):
        tools.read_file("pipe")  # and does not hang waiting for a writer
    os.link(secret, workspace / "hard.txt")
    with pytest.raises(ToolError, match="hard links"):
        tools.write_file("hard.txt", "overwritten")
    assert secret.read_text() == "outside secret\n"


def test_str_replace_must_match_exactly_once(tools: FileTools, layout: tuple[Path, Path]) -> None:
    workspace, _ = layout
    path = workspace / "m.py"
    path.write_text("a = 1\nb = 2\na = 1\n")
    with pytest.raises(ToolError, match="occurs 2 times"):
        tools.str_replace("m.py", "a = 1", "a = 3")
    with pytest.raises(ToolError, match="not found"):
        tools.str_replace("m.py", "c = 1", "c = 3")
    with pytest.raises(BadArguments):
        tools.str_replace("m.py", "", "x")
    assert path.read_text() == "a = 1\nb = 2\na = 1\n"
    text, data = tools.str_replace("m.py", "b = 2\na = 1", "b = 2\na = 9")
    assert data["line"] == 2 and "line 2" in text
    assert path.read_text() == "a = 1\nb = 2\na = 9\n"


def test_list_glob_and_grep(tools: FileTools, layout: tuple[Path, Path]) -> None:
    workspace, _ = layout
    (workspace / "src/pkg").mkdir(parents=True)
    (workspace / "src/pkg/mod.py").write_text("def f():\n    return 'needle'\n")
    (workspace / "src/top.py").write_text("needle = 1\n")
    (workspace / "node_modules/x").mkdir(parents=True)
    (workspace / "node_modules/x/i.py").write_text("needle\n")
    (workspace / ".git").mkdir()
    (workspace / ".git/config").write_text("needle\n")
    (workspace / "link").symlink_to("src")

    listing = tools.list_dir(".")[0]
    assert "src/" in listing and ".git/  (repository; off limits)" in listing
    assert "link@ -> src" in listing
    assert tools.glob("src/**/*.py")[0].splitlines() == ["src/pkg/mod.py", "src/top.py"]
    assert tools.glob("**/*.py")[1]["matches"] == 2  # node_modules skipped unless named
    assert tools.glob("node_modules/**/*.py")[0] == "node_modules/x/i.py"
    assert tools.glob("*/top.p?")[0] == "src/top.py"

    out, data = tools.grep("needle")
    assert data["matches"] == 2
    assert "src/pkg/mod.py:2:     return 'needle'" in out and "src/top.py:1: needle = 1" in out
    assert ".git" not in out and "node_modules" not in out
    assert tools.grep(r"ret\w+ '", "src/pkg/mod.py", regex=True)[1]["matches"] == 1
    assert tools.grep("ret\\w+", regex=False)[1]["matches"] == 0
    with pytest.raises(BadArguments):
        tools.grep("(", regex=True)
    with pytest.raises(BadArguments):
        tools.glob("../*")


def test_result_caps(tools: FileTools, layout: tuple[Path, Path]) -> None:
    workspace, _ = layout
    for i in range(8):
        (workspace / f"f{i}.txt").write_text("hit\nhit\n")
    assert "3 more entries not shown" in tools.list_dir()[0]
    out, data = tools.glob("*.txt")
    assert data["matches"] == 8 and "3 more matches not shown" in out
    out, data = tools.grep("hit")
    assert data["matches"] == 3 and not data["complete"] and "stopped after 3 matches" in out
