"""The tool actor's machinery: the bubblewrap shell, workspace confinement, the file tools,
the command classifier and the tools' JSON schemas."""

from .classify import Classification, classify
from .errors import BadArguments, CommandRefused, PathRefused, SandboxUnavailable, ToolError
from .files import FileLimits, FileTools
from .paths import WORKSPACE_MOUNT, Confinement, prepare
from .shell import Shell, ShellResult
from .specs import TOOL_NAMES, check_args, tool_specs

__all__ = [
    "TOOL_NAMES",
    "WORKSPACE_MOUNT",
    "BadArguments",
    "Classification",
    "CommandRefused",
    "Confinement",
    "FileLimits",
    "FileTools",
    "PathRefused",
    "SandboxUnavailable",
    "Shell",
    "ShellResult",
    "ToolError",
    "check_args",
    "classify",
    "prepare",
    "tool_specs",
]
