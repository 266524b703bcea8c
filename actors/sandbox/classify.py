"""The command classifier: parse a shell command with bashlex and refuse the clearly
dangerous ones with a reason.

Every simple command is visited, inside pipelines, lists, subshells, compound commands,
functions, command and process substitutions, and the strings given to `bash -c` and
`eval`. This is a courtesy that tells the model early and clearly what will not work; the
sandbox is the boundary (anything can be spelled so that a parser misses it).
"""

from __future__ import annotations

import posixpath
from dataclasses import dataclass, field
from typing import Any

import bashlex

from .errors import CommandRefused

MAX_DEPTH = 4  # nested `bash -c` / `eval` strings parsed

PRIVILEGE = {
    "sudo": "sudo: commands run unprivileged in a sandbox; there is no root to become",
    "su": "su: commands run unprivileged in a sandbox; there is no other user to become",
    "doas": "doas: commands run unprivileged in a sandbox; there is no root to become",
    "pkexec": "pkexec: commands run unprivileged in a sandbox",
    "runuser": "runuser: commands run unprivileged in a sandbox",
    "mount": "mount: the sandbox's filesystem layout is fixed",
    "umount": "umount: the sandbox's filesystem layout is fixed",
    "nsenter": "nsenter: entering other namespaces is not allowed",
    "unshare": "unshare: creating namespaces is not allowed",
    "chroot": "chroot: changing the root is not allowed",
    "setpriv": "setpriv: changing privileges is not allowed",
    "capsh": "capsh: changing capabilities is not allowed",
    "bwrap": "bwrap: commands already run in the sandbox",
}
SHELLS = {"sh", "bash", "dash", "zsh", "ksh", "mksh", "fish", "csh", "tcsh", "ash", "busybox"}
INTERPRETERS = SHELLS | {"python", "python3", "perl", "ruby", "node", "php", "source", "."}
DOWNLOADERS = {"curl", "wget", "fetch", "aria2c", "http", "https"}
# Programs that run the rest of their arguments as a command.
WRAPPERS = {"env", "nice", "nohup", "time", "timeout", "stdbuf", "xargs", "command", "builtin",
            "exec", "setsid", "ionice", "chrt", "taskset", "watch", "flock", "unbuffer"}
WRAPPER_VALUE_OPTIONS = {"-n", "-u", "-s", "-k", "-c", "-p", "-i", "-o", "-e", "-E", "-L", "-P",
                         "-I", "-d", "-C", "-S", "--signal", "--kill-after", "--adjustment",
                         "--chdir", "--unset"}
# Programs that write to the paths among their arguments.
WRITERS = {"tee", "cp", "mv", "ln", "install", "dd", "touch", "truncate", "rsync", "sed",
           "chmod", "chown", "rm", "mkdir", "patch", "unzip", "tar"}
GIT_DENIED = {
    "push": "git push: publishing is the daemon's decision, not a tool call's",
    "config": "git config: repository configuration (hooks, fsmonitor, ...) is off limits",
    "remote": "git remote: remotes are configured by the operator",
}
RC_FILES = {".bashrc", ".bash_profile", ".bash_login", ".bash_logout", ".profile", ".zshrc",
            ".zshenv", ".zprofile", ".zlogin", ".kshrc", ".cshrc", ".tcshrc", ".envrc",
            "bash.bashrc", "environment"}
# `rm -r` targets that mean "everything".
RM_EVERYTHING = {"/", "/*", "/.", "~", "~/", "~/*", "$HOME", "${HOME}", "$HOME/", "$HOME/*",
                 "/workspace", "/workspace/", "/workspace/*", ".", "./", "..", "../", "../*"}
SYSTEM_DIRS = {"/bin", "/boot", "/dev", "/etc", "/home", "/lib", "/lib64", "/opt", "/proc",
               "/root", "/run", "/sbin", "/srv", "/sys", "/tmp", "/usr", "/var"}
WRITE_REDIRECTS = {">", ">>", ">|", "&>", "&>>", "<>"}
# Programs that need no network themselves, so they do not stop a command line whose
# other programs are allowed the network from getting it.
NEUTRAL = {"cd", "echo", "printf", "true", "false", "test", "[", ":", "export", "set", "pwd",
           "sleep", "exit"}


# Builtins that change the environment the programs after them run with.
ENVIRONMENT = {"export", "declare", "typeset", "readonly", "local", "alias", "shopt",
               "enable", "hash", "ulimit", "umask", "trap"}
# Redirections bash itself turns into network connections.
NET_DEVICES = ("/dev/tcp/", "/dev/udp/")


@dataclass(frozen=True)
class Classification:
    """An allowed command and the programs it runs (basenames, wrappers unwrapped).

    `unclear` names what in the command could run code other than the programs listed
    or reach the network without them (an assignment such as LD_PRELOAD in front of a
    program, a wrapper's options, bash's /dev/tcp): such a command runs, but without the
    network, whatever its programs."""

    programs: tuple[str, ...] = field(default_factory=tuple)
    unclear: str = ""

    def wants_network(self, allowed: tuple[str, ...]) -> bool:
        """True when every program is allowed the network (or needs none), one is, and
        nothing in the command is unclear."""
        needing = [p for p in self.programs if p not in NEUTRAL]
        return bool(needing) and not self.unclear and all(p in allowed for p in needing)


def classify(command: str) -> Classification:
    """Classify `command`; raise CommandRefused with the reason when it is refused."""
    programs: list[str] = []
    walker = _Walker(programs)
    walker.command_string(command, 0)
    return Classification(tuple(programs), walker.unclear)


class _Walker:
    def __init__(self, programs: list[str]) -> None:
        self.programs = programs
        self.unclear = ""

    def _unclear(self, why: str) -> None:
        self.unclear = self.unclear or why

    def command_string(self, text: str, depth: int) -> None:
        if depth > MAX_DEPTH:
            raise CommandRefused("shell strings nested too deeply to check")
        if not text.strip():
            return
        try:
            trees = bashlex.parse(text)
        except Exception as exc:  # bashlex raises several unrelated types, NotImplementedError too
            detail = str(exc) or type(exc).__name__
            raise CommandRefused(
                f"could not parse the command ({detail}); bashlex does not support "
                "[[ ]], case, $(( )) or `time` - rewrite it, or put it in a script and run "
                "`bash script.sh`"
            ) from None
        for tree in trees:
            self.node(tree, depth)

    def node(self, node: Any, depth: int) -> None:
        kind = node.kind
        if kind == "pipeline":
            self.pipeline([p for p in node.parts if p.kind != "pipe"], depth)
            return
        if kind == "command":
            self.simple(node, depth)
            return
        if kind == "redirect":
            self.redirect(node, depth)
        for child in _children(node):
            self.node(child, depth)

    def pipeline(self, stages: list[Any], depth: int) -> None:
        seen_download = False
        for stage in stages:
            words = _words(stage) if stage.kind == "command" else []
            program = _program(words)
            if seen_download and program in INTERPRETERS and _reads_stdin(program, words[1:]):
                raise CommandRefused(
                    "piping a download into a shell or interpreter (curl ... | sh) runs code "
                    "no one has read; download it to a file and read it first"
                )
            if program in DOWNLOADERS:
                seen_download = True
            self.node(stage, depth)

    def simple(self, node: Any, depth: int) -> None:
        for part in node.parts:
            if part.kind == "assignment":
                self._unclear(f"an assignment ({part.word.split('=', 1)[0]}=)")
            if part.kind == "redirect":
                self.redirect(part, depth)
            else:
                for sub in _substitutions(part):
                    self.node(sub, depth)
        words = _words(node)
        self.words(words, node, depth)

    def words(self, words: list[str], node: Any, depth: int) -> None:
        while words and "=" in words[0] and not words[0].startswith("="):
            self._unclear(f"an assignment ({words[0].split('=', 1)[0]}=) before a program")
            words = words[1:]  # leading assignments (bashlex keeps some as words)
        if not words:
            return
        program = _program(words)
        args = words[1:]
        if program in PRIVILEGE:
            raise CommandRefused(PRIVILEGE[program])
        if "/" in words[0]:
            self._unclear(f"a program named by its path ({words[0][:40]})")
        if program in ENVIRONMENT:
            self._unclear(f"{program} changes what later programs run with")
        if program in WRAPPERS:
            if args and (args[0].startswith("-") or "=" in args[0]):
                self._unclear(f"{program} with options or assignments")
            if not (program == "command" and {"-v", "-V"} & set(args)):
                self.words(_unwrap(args), node, depth)
            return
        self.programs.append(program)
        if program in INTERPRETERS:
            self.interpreter(program, args, node, depth)
        if program == "eval":
            self.command_string(" ".join(args), depth + 1)
        if program == "git":
            self.git(args)
        if program == "rm":
            self.rm(args)
        if program in WRITERS:
            self.writer(program, args)

    def interpreter(self, program: str, args: list[str], node: Any, depth: int) -> None:
        for sub in _substitutions(node):
            if _contains_download(sub):
                raise CommandRefused(
                    f"running a download with {program} (e.g. {program} <(curl ...)) runs code "
                    "no one has read; download it to a file and read it first"
                )
        if program not in SHELLS:
            return
        for i, arg in enumerate(args):
            if arg == "-c" or (arg.startswith("-") and not arg.startswith("--") and "c" in arg):
                if i + 1 < len(args):
                    self.command_string(args[i + 1], depth + 1)
                return

    def redirect(self, node: Any, depth: int) -> None:
        for sub in _substitutions(node):
            self.node(sub, depth)
        target = node.output
        if hasattr(target, "word") and target.word.startswith(NET_DEVICES):
            self._unclear(f"a redirection to {target.word.split('/')[2]} (bash's network)")
        if node.type not in WRITE_REDIRECTS or not hasattr(target, "word"):
            return
        reason = _write_target_reason(target.word)
        if reason:
            raise CommandRefused(f"redirection into {target.word}: {reason}")

    def git(self, args: list[str]) -> None:
        i = 0
        while i < len(args):
            arg = args[i]
            if arg == "-c" or arg.startswith("--config-env") or arg.startswith("-c"):
                raise CommandRefused("git -c: setting git configuration is off limits")
            if arg in ("-C", "--git-dir", "--work-tree", "--namespace", "--exec-path"):
                i += 2
                continue
            if arg.startswith("-"):
                i += 1
                continue
            if arg in GIT_DENIED:
                raise CommandRefused(GIT_DENIED[arg])
            return
        return

    def rm(self, args: list[str]) -> None:
        recursive = any(
            a in ("--recursive", "--no-preserve-root")
            or (a.startswith("-") and not a.startswith("--") and ("r" in a or "R" in a))
            for a in args
        )
        if not recursive:
            return
        for arg in args:
            if arg == "--no-preserve-root":
                raise CommandRefused("rm --no-preserve-root: refusing to delete everything")
            norm = arg.rstrip("/") or "/"
            if arg in RM_EVERYTHING or norm in RM_EVERYTHING or norm in SYSTEM_DIRS:
                raise CommandRefused(f"rm -r {arg}: refusing to delete everything")

    def writer(self, program: str, args: list[str]) -> None:
        if program == "sed" and not any(a.startswith("-i") or a == "--in-place" for a in args):
            return
        for arg in args:
            if arg.startswith("-") and "=" not in arg:
                continue
            value = arg.split("=", 1)[1] if arg.startswith(("of=", "--target")) else arg
            reason = _write_target_reason(value)
            if reason:
                raise CommandRefused(f"{program} writing {value}: {reason}")


def _children(node: Any) -> list[Any]:
    children: list[Any] = []
    for attr in ("parts", "list", "redirects"):
        value = getattr(node, attr, None)
        if isinstance(value, list):
            children.extend(v for v in value if hasattr(v, "kind"))
    command = getattr(node, "command", None)
    if command is not None and hasattr(command, "kind"):
        children.append(command)
    return children


def _words(node: Any) -> list[str]:
    return [p.word for p in getattr(node, "parts", []) if p.kind == "word"]


def _program(words: list[str]) -> str:
    for word in words:
        if "=" in word and not word.startswith("="):
            continue
        return posixpath.basename(word)
    return ""


def _unwrap(args: list[str]) -> list[str]:
    """The command a wrapper such as `env X=1 nice -n 5 timeout 9 cmd` runs (best effort)."""
    i = 0
    while i < len(args):
        arg = args[i]
        if arg == "--":
            i += 1
            break
        if arg.startswith("-"):
            i += 2 if arg in WRAPPER_VALUE_OPTIONS else 1
        elif "=" in arg or arg[:1].isdigit():  # env's assignments, timeout's duration
            i += 1
        else:
            break
    return args[i:]


def _substitutions(node: Any) -> list[Any]:
    """The commands inside $(...), `...` and <(...) anywhere below `node`."""
    found: list[Any] = []
    stack = [node] if node.kind in ("commandsubstitution", "processsubstitution") else []
    stack += list(getattr(node, "parts", []) or [])
    output = getattr(node, "output", None)
    if output is not None and hasattr(output, "kind"):
        stack.append(output)
    while stack:
        item = stack.pop()
        if item.kind in ("commandsubstitution", "processsubstitution"):
            found.append(item.command)
            continue
        stack.extend(p for p in getattr(item, "parts", []) or [] if hasattr(p, "kind"))
    return found


def _reads_stdin(program: str, args: list[str]) -> bool:
    """Whether an interpreter would run what is piped into it as code."""
    if program in SHELLS or program in ("source", "."):
        return True
    operands = [a for a in args if not a.startswith("-") or a == "-"]
    return not operands or operands[0] == "-"


def _contains_download(node: Any) -> bool:
    stack = [node]
    while stack:
        item = stack.pop()
        if item.kind == "command" and _program(_words(item)) in DOWNLOADERS:
            return True
        stack.extend(_children(item))
    return False


def _write_target_reason(target: str) -> str | None:
    parts = [p for p in target.replace("\\", "/").split("/") if p not in ("", ".")]
    if not parts:
        return None
    if ".git" in (p.lower() for p in parts[:-1]) or parts[-1].lower() == ".git":
        return "the .git directory is read-only (hooks and config are the daemon's)"
    if parts[-1] in RC_FILES:
        return "shell startup files are off limits"
    return None
