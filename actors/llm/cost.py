"""What an LLM call costs: the shipped price table (prices.toml) with the operator's
[prices] over it, and one call priced in integer micro-dollars (millionths of a US dollar).

A model in neither table has no price: its calls cost None (unknown), never a guess.
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from importlib import resources
from typing import Any

from entityd import LlmSection

from .providers import PRESETS

PRICES_FILE = "prices.toml"
WILDCARD = "*"  # "provider/*": every model of that provider without a line of its own

PriceLines = Mapping[str, tuple[float, float]]
"""`"provider/model" = (input, output)`, US dollars per million tokens (config.prices)."""


@dataclass(frozen=True, slots=True)
class Price:
    """US dollars per million input (prompt) and output (completion) tokens."""

    input_per_mtok: Decimal
    output_per_mtok: Decimal

    @classmethod
    def of(cls, pair: tuple[float, float]) -> Price:
        # Through str: 0.15 is Decimal("0.15"), not the binary float's long expansion.
        return cls(Decimal(str(pair[0])), Decimal(str(pair[1])))

    def micros(self, prompt_tokens: int, completion_tokens: int) -> int:
        """The cost of one call in micro-dollars, rounded half up: dollars per million
        tokens times tokens is micro-dollars."""
        if prompt_tokens < 0 or completion_tokens < 0:
            raise ValueError(f"token counts cannot be negative ({prompt_tokens}, "
                             f"{completion_tokens})")
        exact = (self.input_per_mtok * prompt_tokens
                 + self.output_per_mtok * completion_tokens)
        return int(exact.to_integral_value(ROUND_HALF_UP))


class PriceTable:
    """Prices by "provider/model", with "provider/*" as the fallback of a provider."""

    def __init__(self, lines: PriceLines) -> None:
        self._prices = {name: Price.of(pair) for name, pair in lines.items()}

    def __repr__(self) -> str:
        return f"PriceTable({len(self._prices)} models)"

    def price_of(self, provider: str, model: str) -> Price | None:
        exact = self._prices.get(f"{provider}/{model}")
        if exact is not None:
            return exact
        return self._prices.get(f"{provider}/{WILDCARD}")

    def cost_micros(self, provider: str, model: str, prompt_tokens: int,
                    completion_tokens: int) -> int | None:
        """The call's cost in micro-dollars; None when the model has no price."""
        price = self.price_of(provider, model)
        return None if price is None else price.micros(prompt_tokens, completion_tokens)


def shipped_prices() -> dict[str, tuple[float, float]]:
    """The table shipped as package data (prices.toml); ValueError if it is malformed."""
    text = resources.files(__package__).joinpath(PRICES_FILE).read_text(encoding="utf-8")
    table = tomllib.loads(text).get("prices", {})
    lines: dict[str, tuple[float, float]] = {}
    for name, value in table.items():
        if "/" not in name or not _is_price_pair(value):
            raise ValueError(f"{PRICES_FILE}: {name!r} = {value!r} is not "
                             '"provider/model" = [input, output], two numbers >= 0')
        lines[name] = (float(value[0]), float(value[1]))
    return lines


def price_table(overrides: PriceLines | None = None) -> PriceTable:
    """The shipped table with `overrides` (config.prices) over it, line by line."""
    return PriceTable({**shipped_prices(), **(overrides or {})})


@dataclass(frozen=True, slots=True)
class ModelCost:
    """The provider and model a daemon's calls go to, and what their tokens cost."""

    provider: str
    model: str
    price: Price | None  # None: no price known; calls are counted, their cost unknown

    @classmethod
    def of(cls, settings: LlmSection, overrides: PriceLines | None = None) -> ModelCost:
        """For [llm] settings: the model named, else the preset's default."""
        preset = PRESETS.get(settings.provider)
        model = settings.model or (preset.default_model if preset is not None else "")
        table = price_table(overrides)
        return cls(settings.provider, model, table.price_of(settings.provider, model))

    def micros(self, prompt_tokens: int, completion_tokens: int) -> int | None:
        if self.price is None:
            return None
        return self.price.micros(prompt_tokens, completion_tokens)


def _is_price_pair(value: Any) -> bool:
    return (isinstance(value, list) and len(value) == 2
            and all(isinstance(v, int | float) and not isinstance(v, bool) and v >= 0
                    for v in value))
