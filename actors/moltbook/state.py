"""What the Moltbook tools remember across restarts, in DATA_DIR/moltbook.state (JSON,
0600): when the entity last posted and commented (so a restart resets no limit), its
verification failures in a row, and when its account was made, once Moltbook said."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..private_file import replace_private

STATE_FILE = "moltbook.state"
DAY_S = 86400.0


@dataclass
class MoltbookState:
    posts: list[float] = field(default_factory=list)  # wall-clock times, the newest last
    comments: list[float] = field(default_factory=list)  # those of the last day
    failures: int = 0  # verification challenges failed in a row
    last_failure: str = ""  # why the last one failed
    account_created: float | None = None  # from /agents/me; None: not known yet


class StateFile:
    """The state at `path`, read once and written after each change (atomically)."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.state = self._read()

    def _read(self) -> MoltbookState:
        try:
            raw: Any = json.loads(self.path.read_text())
        except FileNotFoundError:
            return MoltbookState()
        except (OSError, ValueError) as exc:
            # A state we cannot read must not lift the limits: say so and start strict.
            raise OSError(f"cannot read {self.path}: {exc}; fix or remove it") from None
        if not isinstance(raw, dict):
            raise OSError(f"cannot read {self.path}: not a JSON object; fix or remove it")
        state = MoltbookState()
        state.posts = _times(raw.get("posts"))
        state.comments = _times(raw.get("comments"))
        failures = raw.get("failures", 0)
        state.failures = failures if isinstance(failures, int) and failures >= 0 else 0
        state.last_failure = str(raw.get("last_failure", ""))[:500]
        created = raw.get("account_created")
        state.account_created = float(created) if isinstance(created, int | float) else None
        return state

    def save(self, now: float) -> None:
        state = self.state
        state.posts = state.posts[-1:]
        state.comments = [t for t in state.comments if t > now - DAY_S]
        replace_private(self.path, json.dumps(asdict(state)))


def _times(value: Any) -> list[float]:
    if not isinstance(value, list):
        return []
    return sorted(float(v) for v in value if isinstance(v, int | float)
                  and not isinstance(v, bool))
