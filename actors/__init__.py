"""The entity's actors; each module holds one (plus its helpers)."""

from .coder import CoderActor
from .health import HealthActor
from .memory import MemoryActor
from .orchestrator import OrchestratorActor
from .tool import ToolActor

__all__ = ["CoderActor", "HealthActor", "MemoryActor", "OrchestratorActor", "ToolActor"]
