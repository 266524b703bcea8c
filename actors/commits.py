"""The workspace's commits and their diffs, read for the entity's page (`commits_get`,
`commit_diff_get`, answered by the coder actor).

Git runs only through the workspace's sandboxed runner, on arguments the daemon builds: a
requested sha is hex or refused, so it can never be read as an option or a path. What git
prints is the agent's text (file names, messages, authors): it is parsed where git frames
it (NUL-separated, or by byte count), never by guessing at lines, and decoded with
replacement. Nothing the file tools refuse shows: such a path is listed as withheld and
its hunk is left out of the diff.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from protocol import reasons

from .messages import CommitDiff, CommitInfo, FileChange
from .sandbox.paths import protected_reason
from .workspace import PROTECTED_PATHSPECS, Workspace

# Bounds that keep an answer well below the envelope's 1 MiB, whatever the history holds.
MAX_LIMIT = 200  # commits in one page
DIFF_LIMIT = 200_000  # bytes of one commit's diff, in UTF-8
MAX_FILES = 1000  # files listed with a diff,
FILES_LIMIT = 200_000  # and bytes of their paths, in UTF-8
SUBJECT_LIMIT = 300  # characters of a subject
AUTHOR_LIMIT = 100  # characters of an author's name
MAX_PARENTS = 16
SHA = re.compile(r"[0-9a-f]{4,40}")
FULL_SHA = re.compile(rb"[0-9a-f]{40}")
# protected_reason as pathspecs: .env* and key names at any depth (what git never
# stages), and files below an .env* or .git directory, or a file named .git.
WITHHELD = (*PROTECTED_PATHSPECS, ":(exclude,glob,icase)**/.env*/**",
            ":(exclude,glob,icase)**/.git", ":(exclude,glob,icase)**/.git/**")
DIFF_OPTIONS = ("--no-color", "--no-ext-diff", "--no-textconv", "--no-renames", "-r",
                "--src-prefix=a/", "--dst-prefix=b/")
# `diff-tree "$@"`, its output cut at $1 bytes in the sandbox: git killed by the closed
# pipe (exit 141) is the cut, not a failure. UTF-8 names unquoted in the diff's headers.
CUT_DIFF = (
    'limit=$1; shift; (git -c core.quotePath=false diff-tree "$@"; echo $? > /tmp/rc) | '
    'head -c "$limit"; rc=$(cat /tmp/rc); [ "$rc" = 0 ] || [ "$rc" = 141 ] || exit "$rc"'
)
# A commit by its sha or prefix, printed in full when HEAD or a branch holds it.
ON_A_BRANCH = (
    'c=$(git rev-parse --verify --quiet --end-of-options "$1^{commit}") || exit 1; '
    'if git merge-base --is-ancestor "$c" HEAD || '
    '[ -n "$(git for-each-ref --count=1 --contains "$c" refs/heads/)" ]; then echo "$c"; fi'
)


class QueryRefused(Exception):
    """A query the history cannot answer as asked; `code` is its reason code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


@dataclass(frozen=True)
class _Commit:
    sha: str
    parents: list[str]
    author: str
    ts: int
    subject: str


async def commits(workspace: Workspace, limit: int = 30,
                  before: str = "") -> tuple[list[CommitInfo], bool]:
    """A page of HEAD's history, newest first, and whether older commits follow."""
    if not 1 <= limit <= MAX_LIMIT:
        raise QueryRefused(reasons.BAD_REQUEST,
                           f"limit must be from 1 to {MAX_LIMIT}, not {limit}")
    prefix = _sha(before, "before") if before else ""
    head = await workspace.head()
    if head is None:
        return [], False
    if not prefix:
        listed = await workspace.git("rev-list", f"--max-count={limit + 1}", head, "--")
        shas = listed.split()
    else:
        history = (await workspace.git("rev-list", head, "--")).split()
        at = [i for i, sha in enumerate(history) if sha.startswith(prefix)]
        if len(at) != 1:
            raise QueryRefused(reasons.NOT_FOUND, f"before {prefix} names "
                               f"{'more than one commit' if at else 'no commit'} of the "
                               "workspace's history")
        shas = history[at[0] + 1: at[0] + 2 + limit]
    page = await _read(workspace, shas[:limit])
    stats = await _numstats(workspace, page)
    infos = []
    for commit in page:
        files = stats.get(commit.sha, [])
        infos.append(CommitInfo(commit.sha, commit.parents, commit.author, commit.ts,
                                commit.subject, len(files), sum(f.insertions for f in files),
                                sum(f.deletions for f in files)))
    return infos, len(shas) > limit


async def commit_diff(workspace: Workspace, sha: str) -> CommitDiff:
    """One commit on a branch of the workspace, its diff against its first parent."""
    prefix = _sha(sha, "sha")
    _, found = await workspace.run(["/bin/sh", "-c", ON_A_BRANCH, "resolve", prefix],
                                   check=False)
    full = found.strip()
    # A hex name can also be a ref's: only the commit it spells counts.
    if not (len(full) == 40 and full.startswith(prefix)):
        raise QueryRefused(reasons.NOT_FOUND,
                           f"{prefix} names no commit of the workspace's branches "
                           "(or more than one)")
    (commit,) = await _read(workspace, [full])
    files = (await _numstats(workspace, [commit]))[full]
    against = [commit.parents[0], full] if commit.parents else ["--root", full]
    out = await workspace.output(["/bin/sh", "-c", CUT_DIFF, "diff", str(DIFF_LIMIT + 1),
                                  "-p", "--no-commit-id", *DIFF_OPTIONS, *against, "--",
                                  *WITHHELD])
    diff, truncated = _bounded(out)
    listed, size = [], 0
    for change in files[:MAX_FILES]:
        size += len(change.path.encode())
        if size > FILES_LIMIT:
            break
        listed.append(change)
    return CommitDiff(full, commit.subject, diff, truncated, listed, len(files) - len(listed))


def _bounded(out: bytes) -> tuple[str, bool]:
    """The diff as text of at most DIFF_LIMIT bytes in UTF-8 (a byte that is not UTF-8
    takes three there), cut at a line end; and whether it was cut."""
    text = out.decode(errors="replace")
    encoded = text.encode()
    if len(encoded) <= DIFF_LIMIT:
        return text, False
    cut = encoded.rfind(b"\n", 0, DIFF_LIMIT)
    return encoded[: cut + 1 if cut >= 0 else DIFF_LIMIT].decode(errors="ignore"), True


def _sha(value: str, name: str) -> str:
    low = value.lower()
    if not SHA.fullmatch(low):
        shown = value if len(value) <= 60 else value[:60] + "..."
        raise QueryRefused(reasons.BAD_REQUEST,
                           f"{name} must be 4 to 40 hex digits (a commit's sha or a prefix "
                           f"of it), not {shown!r}")
    return low


async def _read(workspace: Workspace, shas: list[str]) -> list[_Commit]:
    """The commits `shas`, read whole: `cat-file --batch` frames each by its size."""
    if not shas:
        return []
    out = await workspace.output(["git", "cat-file", "--batch"],
                                 input="".join(f"{sha}\n" for sha in shas).encode())
    found, at = [], 0
    for sha in shas:
        end = out.index(b"\n", at)
        header = out[at:end].split(b" ")
        if len(header) != 3 or header[0] != sha.encode() or header[1] != b"commit":
            raise QueryRefused(reasons.NOT_FOUND, f"{sha} is not a commit of the workspace")
        size = int(header[2])
        found.append(_parse(sha, out[end + 1: end + 1 + size]))
        at = end + 1 + size + 1
    return found


def _parse(sha: str, raw: bytes) -> _Commit:
    headers, _, message = raw.partition(b"\n\n")
    parents, author, ts = [], "", 0
    for line in headers.split(b"\n"):
        if line.startswith(b"parent ") and FULL_SHA.fullmatch(line[7:]):
            parents.append(line[7:].decode())
        elif line.startswith(b"author ") and not author:
            # "author NAME <EMAIL> SECONDS ZONE": the name is what comes before " <".
            ident, _, when = line[7:].rpartition(b"> ")
            name = ident.rpartition(b" <")[0] if b" <" in ident else ident
            author = _cut(name.decode(errors="replace").strip(), AUTHOR_LIMIT)
            stamp = when.split(b" ")[0]
            ts = int(stamp) if stamp.isdigit() and len(stamp) <= 18 else 0
    subject = message.split(b"\n", 1)[0].decode(errors="replace").strip()
    return _Commit(sha, parents[:MAX_PARENTS], author, ts, _cut(subject, SUBJECT_LIMIT))


def _cut(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


async def _numstats(workspace: Workspace,
                    page: list[_Commit]) -> dict[str, list[FileChange]]:
    """Each commit's changed files against its first parent, from `diff-tree --numstat
    -z`: a commit's sha alone in a field, then one field `ADDED\\tDELETED\\tPATH` a file."""
    if not page:
        return {}
    lines = "".join(" ".join([c.sha, *c.parents[:1]]) + "\n" for c in page)
    out = await workspace.output(
        ["git", "diff-tree", "--stdin", "--always", "-z", "--numstat", "--root", *DIFF_OPTIONS],
        input=lines.encode())
    stats: dict[str, list[FileChange]] = {c.sha: [] for c in page}
    current: list[FileChange] | None = None
    for field in out.split(b"\0"):
        if not field:
            continue
        added, tab, rest = field.partition(b"\t")
        if not tab:
            current = stats.get(field.decode("ascii", errors="replace").strip())
            continue
        deleted, _, path = rest.partition(b"\t")
        if current is not None:
            current.append(_change(added, deleted, path))
    return stats


def _change(added: bytes, deleted: bytes, raw_path: bytes) -> FileChange:
    path = raw_path.decode(errors="replace")
    if protected_reason(tuple(raw_path.decode(errors="surrogateescape").split("/"))):
        return FileChange(path, 0, 0, withheld=True)
    if added == b"-" or deleted == b"-":
        return FileChange(path, 0, 0, binary=True)
    return FileChange(path, int(added) if added.isdigit() else 0,
                      int(deleted) if deleted.isdigit() else 0)
