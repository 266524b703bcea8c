"""The MCP servers an entity runs: the `[mcp.servers.NAME]` tables of its config file
(Config.mcp), checked strictly; a mistake is a ConfigError naming the key
(`mcp.servers.NAME.KEY`) and stops the start.

    [mcp.servers.files]
    command = ["/usr/bin/python3", "server.py"]   # run in the server's own directory
    allowed_tools = ["read_note"]                 # the only tools the entity is offered
    read_only = ["/opt/venv/lib/python3.11/site-packages"]  # host paths it may read
    env = { PYTHONPATH = "/opt/venv/lib/python3.11/site-packages" }

No server is configured by default, and a server's tools are offered only once
`entityctl mcp approve NAME` has pinned their schemas.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from .errors import ConfigError

# No underscore: the model sees mcp__NAME__TOOL, split at the first "__" after the prefix.
SERVER_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,31}")
KEYS = frozenset({"command", "allowed_tools", "read_only", "env"})
ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")


@dataclass(frozen=True)
class McpServer:
    name: str
    command: tuple[str, ...]
    allowed_tools: frozenset[str]
    read_only: tuple[str, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)


def servers(mcp: Any) -> dict[str, McpServer]:
    """The servers of a config file's `[mcp]` table."""
    if not isinstance(mcp, Mapping):
        raise ConfigError("mcp", "must be a table")
    unknown = set(mcp) - {"servers"}
    if unknown:
        raise ConfigError(f"mcp.{sorted(unknown)[0]}", "unknown key (only mcp.servers)")
    tables = mcp.get("servers", {})
    if not isinstance(tables, Mapping):
        raise ConfigError("mcp.servers", "must be a table of [mcp.servers.NAME] tables")
    return {name: _server(name, table) for name, table in tables.items()}


def _server(name: str, table: Any) -> McpServer:
    where = f"mcp.servers.{name}"
    if not SERVER_NAME.fullmatch(name):
        raise ConfigError(where, "a server's name is 1-32 of a-z, 0-9 and -, starting "
                             "with a letter or digit")
    if not isinstance(table, Mapping):
        raise ConfigError(where, "must be a table")
    unknown = set(table) - KEYS
    if unknown:
        raise ConfigError(f"{where}.{sorted(unknown)[0]}",
                             f"unknown key (known: {', '.join(sorted(KEYS))})")
    if "command" not in table:
        raise ConfigError(f"{where}.command", "missing: the server's program and arguments")
    command = _strings(table["command"], f"{where}.command")
    if not command:
        raise ConfigError(f"{where}.command", "must not be empty")
    if "allowed_tools" not in table:
        raise ConfigError(f"{where}.allowed_tools", "missing: list the tools the entity "
                             "may use ([] for none)")
    allowed = _strings(table["allowed_tools"], f"{where}.allowed_tools")
    read_only = _strings(table.get("read_only", []), f"{where}.read_only")
    for path in read_only:
        if not path.startswith("/"):
            raise ConfigError(f"{where}.read_only", f"{path!r} is not an absolute path")
        if "tmp" in (os.path.normpath(path).split("/")[1], os.path.realpath(path).split("/")[1]):
            raise ConfigError(f"{where}.read_only", f"{path!r} is under /tmp, which the "
                              "sandbox replaces with a /tmp of its own, so the server would "
                              "never see it; move it elsewhere (e.g. under /var/tmp or /opt)")
    env = table.get("env", {})
    if not isinstance(env, Mapping) or not all(
            isinstance(k, str) and ENV_NAME.fullmatch(k) and isinstance(v, str)
            for k, v in env.items()):
        raise ConfigError(f"{where}.env", "must be a table of NAME = \"string\"")
    return McpServer(name, tuple(command), frozenset(allowed), tuple(read_only), dict(env))


def check_secrets(servers: Mapping[str, McpServer], data_dir: str) -> None:
    """No server may read the entity's data directory: its key, tokens and stores. A
    `read_only` path that is it, lies inside it or holds it (`/`, `/home`, ...) is
    refused, symbolic links followed on both sides."""
    secret = os.path.realpath(data_dir)
    for spec in servers.values():
        for path in spec.read_only:
            real = os.path.realpath(path)
            if _within(real, secret) or _within(secret, real):
                raise ConfigError(
                    f"mcp.servers.{spec.name}.read_only",
                    f"{path!r} would show the server the entity's data directory "
                    f"({data_dir}), its key and tokens among what it holds; an MCP server "
                    "is code from elsewhere: list only the paths it needs, outside it")


def _within(path: str, directory: str) -> bool:
    return path == directory or path.startswith(directory.rstrip("/") + "/")


def _strings(value: Any, key: str) -> list[str]:
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        raise ConfigError(key, "must be a list of strings")
    if any("\x00" in item for item in value):
        raise ConfigError(key, "must not contain a NUL byte")
    return list(value)
