"""The approved definitions of the MCP servers' tools: DATA_DIR/mcp-pins.json (0600), one
sha256 per server and tool of its canonical JSON (description and input schema), written
by `entityctl mcp approve NAME` and checked before each offer and each call."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any

from ..private_file import replace_private

FILE = "mcp-pins.json"


def definition_hash(description: str, input_schema: Any) -> str:
    """What is pinned: the model reads the description as much as the schema, so a changed
    description is as much a new tool as a changed schema."""
    canonical = json.dumps({"description": description, "input_schema": input_schema},
                           sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


class Pins:
    def __init__(self, data_dir: Path) -> None:
        self.path = data_dir / FILE

    def read(self) -> dict[str, dict[str, str]]:
        """server -> tool -> hash; a missing file pins nothing. A damaged one raises
        ValueError: nothing is offered rather than everything."""
        try:
            raw = json.loads(self.path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise ValueError(f"{self.path} could not be read: {exc}") from None
        servers = raw.get("servers") if isinstance(raw, dict) else None
        if not isinstance(servers, dict) or not all(
                isinstance(tools, dict) and all(isinstance(h, str) for h in tools.values())
                for tools in servers.values()):
            raise ValueError(f"{self.path} is not a pins file (servers: {{name: {{tool: hash}}}})")
        return servers

    def pinned(self, server: str) -> dict[str, str]:
        return self.read().get(server, {})

    def pin(self, server: str, hashes: dict[str, str]) -> None:
        """Replace the server's pins with `hashes`, atomically, the file 0600."""
        servers = self.read()
        servers[server] = dict(sorted(hashes.items()))
        text = json.dumps({"servers": servers}, indent=2, sort_keys=True) + "\n"
        replace_private(self.path, text)
