"""The LLM layer: provider presets and keys, an OpenAI-compatible client with retries and
budgets, and a scripted server (not a model) for tests and offline demos."""

from typing import TYPE_CHECKING, Any

from .budget import StepBudget, TokenBudget
from .client import (
    LLM,
    Completion,
    EventSink,
    OpenAICompatLLM,
    ToolCallRequest,
    Usage,
    build_llm,
)
from .errors import (
    BudgetExhausted,
    KeyFileRefused,
    LLMError,
    LLMTimeout,
    MissingApiKey,
    ProviderError,
)
from .providers import PRESETS, ApiKey, Preset, ResolvedProvider, resolve

if TYPE_CHECKING:
    from .scripted import ErrorReply, Reply, ScriptedLLMServer, ScriptedToolCall

_SCRIPTED = frozenset({"ErrorReply", "Reply", "ScriptedLLMServer", "ScriptedToolCall"})


def __getattr__(name: str) -> Any:
    # Imported on first use, so that `python -m actors.llm.scripted` does not find the
    # module already imported by this package (runpy warns of that).
    if name in _SCRIPTED:
        from . import scripted

        return getattr(scripted, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "LLM",
    "PRESETS",
    "ApiKey",
    "BudgetExhausted",
    "Completion",
    "ErrorReply",
    "EventSink",
    "KeyFileRefused",
    "LLMError",
    "LLMTimeout",
    "MissingApiKey",
    "OpenAICompatLLM",
    "Preset",
    "ProviderError",
    "Reply",
    "ResolvedProvider",
    "ScriptedLLMServer",
    "ScriptedToolCall",
    "StepBudget",
    "TokenBudget",
    "ToolCallRequest",
    "Usage",
    "build_llm",
    "resolve",
]
