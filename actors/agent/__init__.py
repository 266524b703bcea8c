"""The agent loop shared by the orchestrator and the coder: typed steps, tools, the loop."""

from .loop import AgentLoop, TurnOutcome
from .steps import ActionStep, FinalAnswerStep, ObservationStep, Step, TaskStep
from .toolbox import Tool, Toolbox

__all__ = [
    "ActionStep",
    "AgentLoop",
    "FinalAnswerStep",
    "ObservationStep",
    "Step",
    "TaskStep",
    "Tool",
    "Toolbox",
    "TurnOutcome",
]
