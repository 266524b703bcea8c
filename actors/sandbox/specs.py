"""The tools as OpenAI function schemas, and the check of a call's arguments against them."""

from __future__ import annotations

import copy
from typing import Any

from .errors import BadArguments


def _tool(name: str, description: str, properties: dict[str, Any],
          required: list[str]) -> dict[str, Any]:
    return {
        "type": "function",
        "function": {
            "name": name,
            "description": description,
            "parameters": {
                "type": "object",
                "properties": properties,
                "required": required,
                "additionalProperties": False,
            },
        },
    }


_PATH = {"type": "string", "description": "Path relative to the workspace (or under /workspace)."}

TOOL_SPECS: list[dict[str, Any]] = [
    _tool(
        "shell",
        "Run a bash command in a sandbox: the workspace is the current directory "
        "(/workspace) and the only writable place besides a private /tmp; .git is read-only; "
        "no network unless the program is allowed it; no secrets in the environment; "
        "limits on time, CPU, memory, file size and processes. Returns the combined "
        "stdout and stderr (long output is cut in the middle) and the exit code. Dangerous "
        "commands (sudo, mount, curl | sh, git push/config/remote, ...) are refused.",
        {"command": {"type": "string", "description": "The bash command line to run."}},
        ["command"],
    ),
    _tool(
        "read_file",
        "Read a text file of the workspace with line numbers, whole or a line range.",
        {
            "path": _PATH,
            "start_line": {"type": "integer", "minimum": 1,
                           "description": "First line to show (from 1). Default 1."},
            "end_line": {"type": "integer", "minimum": 1,
                         "description": "Last line to show. Default: the end of the file."},
        },
        ["path"],
    ),
    _tool(
        "write_file",
        "Create or overwrite a file of the workspace with the given content; parent "
        "directories are created.",
        {"path": _PATH, "content": {"type": "string", "description": "The whole new content."}},
        ["path", "content"],
    ),
    _tool(
        "str_replace",
        "Replace one exact occurrence of `old` by `new` in a file. `old` must match exactly "
        "once, including whitespace; add surrounding lines to make it unique.",
        {
            "path": _PATH,
            "old": {"type": "string", "description": "The exact text to replace."},
            "new": {"type": "string", "description": "The replacement text."},
        },
        ["path", "old", "new"],
    ),
    _tool(
        "list_dir",
        "List a directory of the workspace: sub-directories end in '/', files show their size.",
        {"path": {**_PATH, "description": "Directory relative to the workspace. Default '.'."}},
        [],
    ),
    _tool(
        "glob",
        "Find workspace paths matching a glob pattern such as 'src/**/*.py' ('**' spans "
        "directories). .git and caches like node_modules are skipped unless named.",
        {"pattern": {"type": "string", "description": "Glob relative to the workspace."}},
        ["pattern"],
    ),
    _tool(
        "grep",
        "Search the text files under a workspace path for a string (or a regular expression "
        "in RE2 syntax with regex=true: no backreferences or lookaround); prints "
        "path:line: text for each matching line.",
        {
            "pattern": {"type": "string", "description": "Text (or regex) to search for."},
            "path": {**_PATH, "description": "File or directory to search. Default '.'."},
            "regex": {"type": "boolean", "description": "Treat pattern as a regular expression. "
                      "Default false (plain text)."},
        },
        ["pattern"],
    ),
]

TOOL_NAMES = tuple(spec["function"]["name"] for spec in TOOL_SPECS)
_BY_NAME = {spec["function"]["name"]: spec["function"]["parameters"] for spec in TOOL_SPECS}
_TYPES: dict[str, tuple[type, ...]] = {"string": (str,), "integer": (int,), "boolean": (bool,)}


def tool_specs() -> list[dict[str, Any]]:
    """A fresh copy of the specs, safe for the caller to modify."""
    return copy.deepcopy(TOOL_SPECS)


def check_args(tool: str, args: dict[str, Any]) -> dict[str, Any]:
    """`args` checked against the tool's schema; BadArguments says what is wrong."""
    schema = _BY_NAME.get(tool)
    if schema is None:
        raise BadArguments(f"unknown tool {tool!r}; the tools are {', '.join(TOOL_NAMES)}")
    properties: dict[str, Any] = schema["properties"]
    unknown = sorted(set(args) - set(properties))
    if unknown:
        raise BadArguments(f"{tool}: unknown argument {unknown[0]!r}; it takes "
                           f"{', '.join(properties) or 'no arguments'}")
    missing = [name for name in schema["required"] if name not in args]
    if missing:
        raise BadArguments(f"{tool}: missing argument {missing[0]!r}")
    checked: dict[str, Any] = {}
    for name, value in args.items():
        prop = properties[name]
        expected = _TYPES[prop["type"]]
        if value is None and name not in schema["required"]:
            continue
        if not isinstance(value, expected) or (prop["type"] == "integer"
                                               and isinstance(value, bool)):
            raise BadArguments(f"{tool}: argument {name!r} must be a {prop['type']}, got "
                               f"{type(value).__name__}")
        if "minimum" in prop and value < prop["minimum"]:
            raise BadArguments(f"{tool}: argument {name!r} must be at least {prop['minimum']}")
        checked[name] = value
    return checked
