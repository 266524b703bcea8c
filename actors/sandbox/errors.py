"""Why a tool refused or failed; every message is written for the model to read.

    ToolError                 a tool call refused or failed; becomes ToolResult(ok=False)
    ├── BadArguments          unknown tool, missing or mistyped arguments
    ├── PathRefused           a path outside the workspace, or a protected file
    ├── CommandRefused        the classifier refused a shell command (reason says why)
    └── SandboxUnavailable    bwrap cannot run here; the shell is refused, file tools work
"""

from __future__ import annotations


class ToolError(Exception):
    """A refusal or failure the caller (the model) should read; never a bug of ours."""


class BadArguments(ToolError):
    pass


class PathRefused(ToolError):
    def __init__(self, path: str, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason


class CommandRefused(ToolError):
    def __init__(self, reason: str) -> None:
        super().__init__(f"command refused: {reason}")
        self.reason = reason


class SandboxUnavailable(ToolError):
    def __init__(self, reason: str) -> None:
        super().__init__(
            f"the shell tool is unavailable: {reason}; the file tools still work"
        )
        self.reason = reason
