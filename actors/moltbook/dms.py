"""Direct messages waiting for the operator's approval ([moltbook] dms = "approve"), in
DATA_DIR/moltbook-dms.json (0600): each is sent only by `entityctl moltbook approve ID`,
and dropped by `entityctl moltbook reject ID`."""

from __future__ import annotations

import json
import secrets
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from ..private_file import replace_private

DMS_FILE = "moltbook-dms.json"
MAX_PENDING = 100


@dataclass(frozen=True)
class PendingDM:
    id: str
    message: str
    to: str = ""  # a new chat request to this agent ...
    conversation_id: str = ""  # ... or a message in this conversation
    needs_human_input: bool = False
    created_at: float = 0.0

    @property
    def recipient(self) -> str:
        return f"agent {self.to}" if self.to else f"conversation {self.conversation_id}"


class PendingDMs:
    def __init__(self, path: Path) -> None:
        self.path = path

    def all(self) -> list[PendingDM]:
        try:
            raw: Any = json.loads(self.path.read_text())
        except FileNotFoundError:
            return []
        except (OSError, ValueError) as exc:
            raise OSError(f"cannot read {self.path}: {exc}") from None
        items = raw if isinstance(raw, list) else []
        fields = set(PendingDM.__dataclass_fields__)
        return [PendingDM(**{k: v for k, v in item.items() if k in fields})
                for item in items if isinstance(item, dict) and "id" in item]

    def add(self, message: str, to: str, conversation_id: str, needs_human_input: bool,
            now: float) -> PendingDM:
        items = self.all()
        if len(items) >= MAX_PENDING:
            raise OverflowError(f"{MAX_PENDING} DMs already wait for the operator's "
                                "approval (`entityctl moltbook pending`)")
        item = PendingDM(secrets.token_hex(4), message, to, conversation_id,
                         needs_human_input, now)
        self._write([*items, item])
        return item

    def get(self, dm_id: str) -> PendingDM | None:
        return next((item for item in self.all() if item.id == dm_id), None)

    def remove(self, dm_id: str) -> None:
        self._write([item for item in self.all() if item.id != dm_id])

    def _write(self, items: list[PendingDM]) -> None:
        replace_private(self.path, json.dumps([asdict(item) for item in items]))
