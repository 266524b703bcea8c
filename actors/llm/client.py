"""The LLM behind one call, `generate(messages, tools)`, and its OpenAI-compatible client:
our own retries (429, 5xx, connection errors; Retry-After honoured), a request timeout,
token accounting into a TokenBudget, and events for the orchestrator to publish."""

from __future__ import annotations

import asyncio
import email.utils
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol, cast

from entityd import LlmSection, get_logger

from ..untrusted import text as untrusted_text
from .budget import TokenBudget
from .errors import BudgetExhausted, LLMError, LLMTimeout, ProviderError
from .providers import NO_KEY, ResolvedProvider, resolve

if TYPE_CHECKING:
    import openai
    from openai.types.chat import ChatCompletion

log = get_logger("actors.llm")

EventSink = Callable[[str, dict[str, Any]], Awaitable[None]]
"""`await on_event(type, data)`: "llm_call", "llm_retry" or "budget_exhausted"."""


@dataclass(frozen=True)
class ToolCallRequest:
    """A function call the model asked for; `arguments` is its raw JSON text, unparsed,
    because a model may send malformed JSON and the caller turns that into an observation."""

    id: str
    name: str
    arguments: str


@dataclass(frozen=True)
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0
    total_tokens: int = 0


@dataclass(frozen=True)
class Completion:
    content: str | None
    tool_calls: list[ToolCallRequest] = field(default_factory=list)
    reasoning_content: str | None = None
    usage: Usage = field(default_factory=Usage)
    finish_reason: str = "stop"
    model: str = ""

    def assistant_message(self) -> dict[str, Any]:
        """This completion as the assistant turn to append to the conversation.

        Kimi's thinking models answer 400 when a turn with tool calls comes back without
        its `reasoning_content`, so it is kept on those turns.
        """
        message: dict[str, Any] = {"role": "assistant", "content": self.content or ""}
        if self.tool_calls:
            message["tool_calls"] = [
                {
                    "id": call.id,
                    "type": "function",
                    "function": {"name": call.name, "arguments": call.arguments},
                }
                for call in self.tool_calls
            ]
            if self.reasoning_content is not None:
                message["reasoning_content"] = self.reasoning_content
        return message


class LLM(Protocol):
    async def generate(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Completion: ...


RETRYABLE_STATUS = frozenset({429}) | frozenset(range(500, 600))


class OpenAICompatLLM:
    """An LLM behind any OpenAI-compatible chat-completions endpoint.

    The openai client's own retries are off (max_retries=0) so that every retry is ours:
    counted, logged and reported as an `llm_retry` event. Timeouts are not retried.
    """

    def __init__(
        self,
        provider: ResolvedProvider,
        *,
        timeout: float = 120.0,
        max_retries: int = 4,
        temperature: float | None = None,
        budget: TokenBudget | None = None,
        on_event: EventSink | None = None,
        backoff_initial: float = 0.5,
        backoff_max: float = 30.0,
        max_retry_after: float = 60.0,
        rng: random.Random | None = None,
    ) -> None:
        self.provider = provider
        self.timeout = timeout
        self.max_retries = max_retries
        self.temperature = temperature
        self.budget = budget
        self.on_event = on_event
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.max_retry_after = max_retry_after
        self._rng = rng or random.Random()
        key = provider.api_key.reveal() if provider.api_key is not None else NO_KEY
        self._secret = provider.api_key.reveal() if provider.api_key is not None else None
        # Imported here, not at the top: openai takes about a second to import, which only
        # a daemon that calls a model pays, never entityctl nor a daemon starting up.
        import openai

        self._client = openai.AsyncOpenAI(
            base_url=provider.base_url,
            api_key=key,
            max_retries=0,
            timeout=timeout,
            default_headers=dict(provider.headers),
        )
        if provider.name != "openai":
            # The client fills these from OPENAI_ORG_ID / OPENAI_PROJECT_ID; other
            # providers have no business seeing them.
            self._client.organization = None
            self._client.project = None

    @property
    def model(self) -> str:
        return self.provider.model

    def __repr__(self) -> str:
        return (
            f"OpenAICompatLLM(provider={self.provider.name!r}, model={self.model!r}, "
            f"base_url={self.provider.base_url!r}, key={self.provider.key_source!r})"
        )

    async def aclose(self) -> None:
        await self._client.close()

    async def __aenter__(self) -> OpenAICompatLLM:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.aclose()

    async def generate(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
    ) -> Completion:
        """One chat completion; raises BudgetExhausted before calling when the hour's
        tokens are spent, LLMTimeout, or ProviderError once retries are used up."""
        await self._check_budget()
        started = time.monotonic()
        response, attempts = await self._create_with_retries(messages, tools)
        completion, estimated = _completion(response, messages)
        if self.budget is not None:
            self.budget.spend(completion.usage.total_tokens)
        latency_ms = round((time.monotonic() - started) * 1000, 1)
        data: dict[str, Any] = {
            "provider": self.provider.name,
            "model": completion.model or self.model,
            "prompt_tokens": completion.usage.prompt_tokens,
            "completion_tokens": completion.usage.completion_tokens,
            "total_tokens": completion.usage.total_tokens,
            "usage_estimated": estimated,
            "latency_ms": latency_ms,
            "attempts": attempts,
            "finish_reason": completion.finish_reason,
            "tool_calls": len(completion.tool_calls),
        }
        if self.budget is not None:
            data["budget_remaining"] = self.budget.remaining()
        log.debug("llm_call", **data)
        await self._emit("llm_call", data)
        return completion

    async def _check_budget(self) -> None:
        if self.budget is None:
            return
        try:
            self.budget.check()
        except BudgetExhausted as exc:
            data = {"kind": exc.kind, "limit": exc.limit, "frees_in": exc.frees_in}
            log.warning("budget_exhausted", **data)
            await self._emit("budget_exhausted", {**data, "message": str(exc)})
            raise

    async def _create_with_retries(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None
    ) -> tuple[ChatCompletion, int]:
        attempt = 0
        while True:
            attempt += 1
            outcome = await self._attempt(messages, tools, attempt)
            if not isinstance(outcome, LLMError | tuple):
                return outcome, attempt
            if isinstance(outcome, LLMError):
                # Raised here, outside any except block, so that it has no __context__:
                # the openai error it replaces holds the request, Authorization header and all.
                raise outcome
            status, reason, delay = outcome
            data = {
                "provider": self.provider.name,
                "model": self.model,
                "attempt": attempt,
                "max_retries": self.max_retries,
                "status": status,
                "reason": reason,
                "delay_s": round(delay, 3),
            }
            log.warning("llm_retry", **data)
            await self._emit("llm_retry", data)
            await asyncio.sleep(delay)

    async def _attempt(
        self, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None, attempt: int
    ) -> ChatCompletion | LLMError | tuple[int | None, str, float]:
        """The response, the error to raise, or (status, reason, delay) to retry after."""
        import openai  # loaded by __init__ already (see there)

        try:
            async with asyncio.timeout(self.timeout):
                return await self._client.chat.completions.create(
                    model=self.model,
                    messages=cast(Any, messages),
                    tools=cast(Any, tools) if tools else openai.omit,
                    temperature=self.temperature if self.temperature is not None else openai.omit,
                )
        except (TimeoutError, openai.APITimeoutError):
            return LLMTimeout(self.timeout, self.model)
        except openai.APIStatusError as exc:
            status = exc.status_code
            message = self._redact(_error_message(exc))
            if status not in RETRYABLE_STATUS or attempt > self.max_retries:
                return ProviderError(status, message, attempts=attempt)
            retry_after = _retry_after(exc.response.headers)
            if retry_after is not None and retry_after > self.max_retry_after:
                return ProviderError(
                    status,
                    f"{message} (asked to retry after {retry_after:g} s, "
                    f"longer than the {self.max_retry_after:g} s we wait)",
                    attempts=attempt,
                )
            delay = retry_after if retry_after is not None else self._backoff(attempt)
            return status, f"HTTP {status}: {message}", delay
        except openai.APIConnectionError as exc:
            message = self._redact(str(exc.__cause__ or exc))
            if attempt > self.max_retries:
                return ProviderError(None, message, attempts=attempt)
            return None, f"connection error: {message}", self._backoff(attempt)
        except openai.APIError as exc:
            return ProviderError(None, self._redact(exc.message), attempts=attempt)

    def _backoff(self, attempt: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_initial * 2 ** (attempt - 1))
        return ceiling * self._rng.uniform(0.5, 1.0)

    def _redact(self, text: str) -> str:
        if self._secret:
            text = text.replace(self._secret, "<hidden>")
        return text

    async def _emit(self, typ: str, data: dict[str, Any]) -> None:
        if self.on_event is not None:
            await self.on_event(typ, data)


def build_llm(
    settings: LlmSection,
    *,
    environ: Mapping[str, str],
    workspace: Path | None,
    budget: TokenBudget | None,
    on_event: EventSink | None = None,
    metered: bool = True,
) -> OpenAICompatLLM:
    """The client for [llm] settings; budget None makes one of llm.max_tokens_per_hour.
    With `metered` false it has no budget of its own: its callers meter each call
    against the budget of whoever pays for it (actors.llm.budget.Metered).

    Raises ConfigError, MissingApiKey or KeyFileRefused when the settings cannot work.
    """
    provider = resolve(settings, environ=environ, workspace=workspace)
    if not metered:
        budget = None
    elif budget is None:
        budget = TokenBudget(settings.max_tokens_per_hour)
    return OpenAICompatLLM(
        provider,
        timeout=settings.timeout,
        max_retries=settings.max_retries,
        temperature=settings.temperature,
        budget=budget,
        on_event=on_event,
    )


# More tokens than any call could use: a provider saying so is misreporting.
USAGE_MAX = 2**31


def _completion(
    response: ChatCompletion, messages: list[dict[str, Any]]
) -> tuple[Completion, bool]:
    """The completion a provider's 200 answer holds; ProviderError when its shape is not
    a chat completion's (the SDK builds its records without checking a field's type, so
    a server's `choices: "abc"` or `content: 5` would otherwise reach the agent)."""
    try:
        return _shaped(response, messages)
    except (AttributeError, TypeError, ValueError, IndexError, KeyError) as exc:
        raise ProviderError(200, f"the response is not a chat completion: "
                            f"{type(exc).__name__}: {exc}"[:300]) from None


def _shaped(response: Any, messages: list[dict[str, Any]]) -> tuple[Completion, bool]:
    choices = response.choices
    if not choices:
        raise ProviderError(200, "the response has no choices")
    if not isinstance(choices, list):
        raise TypeError(f"choices is a {type(choices).__name__}, not a list")
    choice = choices[0]
    message = choice.message
    content = _optional_text(message.content, "content")
    calls = [
        ToolCallRequest(_optional_text(call.id, "a tool call's id") or "",
                        _text(call.function.name, "a tool call's name"),
                        _optional_text(call.function.arguments, "a tool call's arguments") or "")
        for call in _list(message.tool_calls, "tool_calls")
        if call.type == "function"
    ]
    reasoning = getattr(message, "reasoning_content", None)
    estimated = response.usage is None
    if response.usage is not None:
        prompt = _tokens(response.usage.prompt_tokens, "prompt_tokens")
        completion_tokens = _tokens(response.usage.completion_tokens, "completion_tokens")
        total = _tokens(response.usage.total_tokens, "total_tokens") or prompt + completion_tokens
    else:
        # Some servers (older Ollama, vLLM without usage) report none: a rough guess,
        # four characters a token, keeps the hourly budget meaningful.
        prompt = max(1, len(json.dumps(messages)) // 4)
        text = (content or "") + "".join(c.arguments for c in calls)
        completion_tokens = max(1, len(text) // 4)
        total = prompt + completion_tokens
    result = Completion(
        content=content,
        tool_calls=calls,
        reasoning_content=untrusted_text(reasoning) if isinstance(reasoning, str) else None,
        usage=Usage(prompt, completion_tokens, total),
        finish_reason=_optional_text(choice.finish_reason, "finish_reason") or "unknown",
        model=_optional_text(response.model, "model") or "",
    )
    return result, estimated


def _text(value: Any, what: str) -> str:
    if not isinstance(value, str):
        raise TypeError(f"{what} is a {type(value).__name__}, not a string")
    return untrusted_text(value)  # a lone surrogate (no Unicode character) made U+FFFD


def _optional_text(value: Any, what: str) -> str | None:
    return None if value is None else _text(value, what)


def _list(value: Any, what: str) -> list[Any]:
    if value is None:
        return []
    if not isinstance(value, list):
        raise TypeError(f"{what} is a {type(value).__name__}, not a list")
    return value


def _tokens(value: Any, what: str) -> int:
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or not 0 <= value <= USAGE_MAX:
        raise ValueError(f"usage.{what} is {value!r}, not a count of tokens")
    return value


def _error_message(exc: openai.APIStatusError) -> str:
    body = exc.body
    if isinstance(body, dict):
        error = body.get("error", body)
        if isinstance(error, dict) and isinstance(error.get("message"), str):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return exc.message


def _retry_after(headers: Mapping[str, str]) -> float | None:
    """Seconds the server asks us to wait: retry-after-ms, or Retry-After in seconds or
    as an HTTP date; None when absent or unreadable."""
    millis = headers.get("retry-after-ms")
    if millis is not None:
        try:
            return max(0.0, float(millis) / 1000)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())
