"""Errors of the LLM layer; none of them ever carries an API key.

LLMError
├── MissingApiKey      the provider needs a key and none was configured; names where to put one
├── KeyFileRefused     llm.api_key_file is missing, empty, readable by others or in the workspace
├── ProviderError      the provider answered with an error status (or never answered) after retries
├── BudgetExhausted    the tokens-per-hour or steps-per-turn budget is spent
└── LLMTimeout         one request took longer than llm.timeout
"""

from __future__ import annotations


class LLMError(Exception):
    """Base of every error the LLM layer raises on purpose."""


class MissingApiKey(LLMError):
    def __init__(self, provider: str, env_var: str) -> None:
        super().__init__(
            f"provider {provider!r} needs an API key: set the environment variable {env_var}, "
            "or name another variable in llm.api_key_env, "
            "or a 0600 file holding the key in llm.api_key_file"
        )
        self.provider = provider
        self.env_var = env_var


class KeyFileRefused(LLMError):
    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"llm.api_key_file {path}: {problem}")
        self.path = path
        self.problem = problem


class ProviderError(LLMError):
    """`status` is the HTTP status, or None when no response came (connection failed)."""

    def __init__(self, status: int | None, message: str, *, attempts: int = 1) -> None:
        where = f"HTTP {status}" if status is not None else "no response"
        super().__init__(f"LLM provider error ({where}, after {attempts} attempt(s)): {message}")
        self.status = status
        self.message = message
        self.attempts = attempts


class BudgetExhausted(LLMError):
    """`kind` is "tokens" or "steps"; `frees_in` is seconds until tokens free up (None: steps)."""

    def __init__(
        self, kind: str, limit: int, message: str, *, frees_in: float | None = None
    ) -> None:
        super().__init__(message)
        self.kind = kind
        self.limit = limit
        self.frees_in = frees_in


class LLMTimeout(LLMError):
    def __init__(self, timeout: float, model: str) -> None:
        super().__init__(f"LLM request to model {model!r} took longer than {timeout:g} s")
        self.timeout = timeout
        self.model = model
