"""Provider presets (URL, default model, key variable, headers) and API key resolution.

A key comes from a 0600 file named in llm.api_key_file (never one inside the workspace)
or from the environment (llm.api_key_env, else the preset's variable); it is held in an
ApiKey, whose repr and str never show it.
"""

from __future__ import annotations

import stat
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from entityd import ConfigError, LlmSection

from .errors import KeyFileRefused, MissingApiKey

# OpenRouter attributes traffic to an app by these headers; entityd has no public site yet,
# so the referer is a reserved .invalid name rather than someone else's URL.
ATTRIBUTION_URL = "https://entityd.invalid"
ATTRIBUTION_TITLE = "entityd"

# Sent as the bearer token to servers that need none (the client refuses an empty key, and
# an empty one would make it fall back to OPENAI_API_KEY and leak that key elsewhere).
NO_KEY = "no-key"


@dataclass(frozen=True)
class Preset:
    name: str
    base_url: str  # empty: llm.base_url must be set
    default_model: str  # empty: llm.model must be set
    key_env: str  # empty: no key variable of its own
    needs_key: bool
    headers: Mapping[str, str] = field(default_factory=dict)


PRESETS: Mapping[str, Preset] = {
    "moonshot": Preset(
        "moonshot", "https://api.moonshot.ai/v1", "kimi-k2.5", "MOONSHOT_API_KEY", True
    ),
    "openrouter": Preset(
        "openrouter",
        "https://openrouter.ai/api/v1",
        "moonshotai/kimi-k2",
        "OPENROUTER_API_KEY",
        True,
        {"HTTP-Referer": ATTRIBUTION_URL, "X-Title": ATTRIBUTION_TITLE},
    ),
    "openai": Preset("openai", "https://api.openai.com/v1", "gpt-4o-mini", "OPENAI_API_KEY", True),
    "ollama": Preset("ollama", "http://localhost:11434/v1", "llama3.1", "", False),
    "custom": Preset("custom", "", "", "", False),
    "scripted": Preset("scripted", "", "scripted", "", False),
}


class ApiKey:
    """A secret that never shows itself in repr(), str() or a formatted log line."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "ApiKey(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, ApiKey) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)

    def __reduce__(self) -> str | tuple[Any, ...]:
        raise TypeError("an ApiKey cannot be pickled")


@dataclass(frozen=True)
class ResolvedProvider:
    """Everything a client needs to talk to one provider."""

    name: str
    base_url: str
    model: str
    headers: Mapping[str, str]
    api_key: ApiKey | None  # None: the server needs no key
    key_source: str  # where the key came from, e.g. "env MOONSHOT_API_KEY"; never the key


def resolve(
    settings: LlmSection, *, environ: Mapping[str, str], workspace: Path | None
) -> ResolvedProvider:
    """Apply the preset of settings.provider and find its key; raise a precise error if not."""
    preset = PRESETS.get(settings.provider)
    if preset is None:
        raise ConfigError(
            "llm.provider", f"{settings.provider!r} is not one of {', '.join(PRESETS)}"
        )
    base_url = (settings.base_url or preset.base_url).rstrip("/")
    if not base_url:
        raise ConfigError("llm.base_url", f"provider {preset.name!r} needs the server's base_url")
    model = settings.model or preset.default_model
    if not model:
        raise ConfigError("llm.model", f"provider {preset.name!r} needs a model name")
    key, source = _find_key(settings, preset, environ=environ, workspace=workspace)
    return ResolvedProvider(preset.name, base_url, model, dict(preset.headers), key, source)


def _find_key(
    settings: LlmSection, preset: Preset, *, environ: Mapping[str, str], workspace: Path | None
) -> tuple[ApiKey | None, str]:
    if settings.api_key_file and settings.api_key_env:
        raise ConfigError(
            "llm.api_key_file", "set either llm.api_key_file or llm.api_key_env, not both"
        )
    if settings.api_key_file:
        path = Path(settings.api_key_file).expanduser()
        return ApiKey(read_key_file(path, workspace)), f"file {path}"
    env_var = settings.api_key_env or preset.key_env
    value = environ.get(env_var, "").strip() if env_var else ""
    if value:
        return ApiKey(value), f"env {env_var}"
    if preset.needs_key or settings.api_key_env:
        raise MissingApiKey(preset.name, env_var)
    return None, "none needed"


def read_key_file(path: Path, workspace: Path | None) -> str:
    """Read a key from a file only if group and others cannot read it and it is not in
    the workspace, where the entity's own tools (and so the model) could read it."""
    if workspace is not None:
        ws = workspace.resolve()
        for candidate in (path.absolute(), path.resolve()):
            if candidate == ws or candidate.is_relative_to(ws):
                raise KeyFileRefused(
                    str(path),
                    f"lies inside the entity's workspace {ws}, where its tools can read it; "
                    "move it out, e.g. into the data dir's keys/",
                )
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise KeyFileRefused(str(path), "no such file") from None
    except PermissionError:
        raise KeyFileRefused(str(path), "permission denied") from None
    if not stat.S_ISREG(mode):
        raise KeyFileRefused(str(path), "is not a regular file")
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        raise KeyFileRefused(
            str(path),
            f"is accessible by group or others (mode {stat.S_IMODE(mode):o}); "
            f"run `chmod 600 {path}`",
        )
    try:
        with open(path, encoding="utf-8") as handle:
            value = handle.read().strip()
    except PermissionError:
        raise KeyFileRefused(str(path), "permission denied") from None
    except UnicodeDecodeError:
        raise KeyFileRefused(str(path), "is not UTF-8 text") from None
    if not value:
        raise KeyFileRefused(str(path), "is empty")
    if "\n" in value:
        raise KeyFileRefused(str(path), "holds more than one line; put only the key in it")
    return value
