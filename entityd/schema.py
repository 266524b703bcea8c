"""The config's schema: each key is declared once, as a field of its section's dataclass
holding its default, its doc and its checks (`key`). Loading a TOML mapping, the
ENTITYD_<SECTION>_<KEY> environment overrides, the errors naming the key, and the commented
starter file are all derived here from those declarations; a section's docstring heads
its block in the starter.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import textwrap
import typing
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar

from .errors import ConfigError

ENV_PREFIX = "ENTITYD_"
HEX_KEY_RE = re.compile(r"[0-9a-fA-F]{64}")
_STRINGS = tuple[str, ...]
_KINDS: dict[Any, str] = {
    str: "a string", int: "an integer", float: "a number", bool: "true or false",
}
_TRUE = ("1", "true", "yes", "on")
_FALSE = ("0", "false", "no", "off")
_COMMENT_AT = 24  # the column of an inline `#` in the starter, so that comments line up
_WIDTH = 100

Check = Callable[[Any], str | None]
"""What is wrong with a value, worded to follow the key's name; None when nothing is."""

T = TypeVar("T")


def key(default: T, doc: str, *checks: Check, starter: str = "") -> T:
    """A config key: its default, the doc the starter file shows beside it, the checks its
    value must pass, and a str.format placeholder the starter holds instead of the default
    (what `entityd init` fills in)."""
    return field(default=default, metadata={"doc": doc, "checks": checks, "starter": starter})


@dataclass(frozen=True)
class Table:
    """A top-level table of `name = value` entries, e.g. [operators]: each name passes
    `name_check`, each value `value_check`, and the config holds `convert(value)`."""

    entry: str  # what an entry looks like, for the error when the table is no table
    doc: str
    value_check: Check
    convert: Callable[[Any], Any]
    name_check: Check | None = None

    def parse(self, table: str, raw: Any) -> dict[str, Any]:
        if not isinstance(raw, dict):
            raise ConfigError(table, f"must be a table of {self.entry}")
        result = {}
        for name, value in raw.items():
            if self.name_check:
                _check(f"{table}.{name}", name, self.name_check)
            _check(f"{table}.{name}", value, self.value_check)
            result[name] = self.convert(value)
        return result


def table(entry: str, doc: str, value_check: Check, convert: Callable[[Any], Any], *,
          name_check: Check | None = None) -> Any:
    """A Config field holding a Table's entries, empty by default."""
    spec = Table(entry, doc, value_check, convert, name_check)
    return field(default_factory=dict, metadata={"table": spec})


# -- checks ---------------------------------------------------------------------------------


def positive(value: float) -> str | None:
    if not value > 0:  # written so that NaN fails too
        return f"must be greater than 0, got {value}"
    if math.isinf(value):
        return "must be a finite number"
    return None


def zero_or_more(zero_means: str = "") -> Check:
    said = f"0 ({zero_means})" if zero_means else "0"

    def check(value: float) -> str | None:
        return None if value >= 0 else f"must be {said} or more, got {value}"  # NaN fails
    return check


def one_of(*choices: str) -> Check:
    """The value, or each item of a list, is one of `choices`."""
    def check(value: Any) -> str | None:
        for item in value if isinstance(value, tuple) else (value,):
            if item not in choices:
                return f"{item!r} is not one of {', '.join(choices)}"
        return None
    return check


def tcp_port(value: int) -> str | None:
    return None if 0 < value < 65536 else f"{value} is not a TCP port (1-65535)"


def url_of(schemes: tuple[str, ...], described: str) -> Check:
    """Empty (the default applies) or a URL with one of `schemes`."""
    def check(value: str) -> str | None:
        return None if not value or value.startswith(schemes) else f"{value!r} is not {described}"
    return check


def hex_key(value: Any) -> str | None:
    # fullmatch, not bytes.fromhex alone: that skips spaces and makes a short key.
    if isinstance(value, str) and HEX_KEY_RE.fullmatch(value):
        return None
    return "expected a 64-character hex Ed25519 public key"


def _check(where: str, value: Any, *checks: Check) -> None:
    for check in checks:
        if problem := check(value):
            raise ConfigError(where, problem)


# -- loading --------------------------------------------------------------------------------


def parse(top: type, raw: Mapping[str, Any], environ: Mapping[str, str]) -> dict[str, Any]:
    """Each section and table of the dataclass `top`, read from `raw` with the overrides in
    `environ`, every value checked."""
    parts = _parts(top)
    unknown = sorted(set(raw) - set(parts))
    if unknown:
        raise ConfigError(unknown[0], f"unknown section; known: {', '.join(parts)}")
    return {
        name: part.parse(name, raw.get(name, {})) if isinstance(part, Table)
        else _section(name, part, raw.get(name, {}), environ)
        for name, part in parts.items()
    }


def _parts(top: type) -> dict[str, Any]:
    """The sections (dataclasses) and tables of `top`, by name, in declaration order."""
    kinds = typing.get_type_hints(top)
    parts: dict[str, Any] = {}
    for f in dataclasses.fields(top):
        if "table" in f.metadata:
            parts[f.name] = f.metadata["table"]
        elif dataclasses.is_dataclass(kinds[f.name]):
            parts[f.name] = kinds[f.name]
    return parts


def _section(name: str, cls: type[Any], raw: Any, environ: Mapping[str, str]) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(name, f"must be a table, e.g. [{name}]")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(raw) - set(fields))
    if unknown:
        raise ConfigError(f"{name}.{unknown[0]}", f"unknown key; known keys: {', '.join(fields)}")
    kinds = typing.get_type_hints(cls)
    values = {}
    for key_name, f in fields.items():
        where = f"{name}.{key_name}"
        env_name = f"{ENV_PREFIX}{name.upper()}_{key_name.upper()}"
        if env_name in environ:
            value = _from_env(f"{where} (from {env_name})", kinds[key_name], environ[env_name])
        elif key_name in raw:
            value = _from_toml(where, kinds[key_name], raw[key_name])
        else:
            value = f.default
        _check(where, value, *f.metadata["checks"])
        values[key_name] = value
    return cls(**values)


def _from_toml(where: str, kind: Any, value: Any) -> Any:
    if kind == _STRINGS:
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ConfigError(where, f"expected a list of strings, got {value!r}")
        return tuple(value)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if isinstance(value, kind) and not (kind is int and isinstance(value, bool)):
        return value
    raise ConfigError(where, f"expected {_KINDS[kind]}, got {value!r}")


def _from_env(where: str, kind: Any, text: str) -> Any:
    """A value from the environment: a list is comma-separated, a bool a word or 0/1."""
    if kind == _STRINGS:
        return tuple(item.strip() for item in text.split(",") if item.strip())
    if kind is str:
        return text
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in _TRUE or lowered in _FALSE:
            return lowered in _TRUE
    else:
        try:
            return kind(text)
        except ValueError:
            pass
    raise ConfigError(where, f"expected {_KINDS[kind]}, got {text!r}")


# -- the starter file -----------------------------------------------------------------------


def starter(top: type) -> str:
    """Every section of `top` with each key at its default and its doc, then each table
    with its doc: a TOML file, as a str.format template of the keys' placeholders."""
    blocks = []
    for name, part in _parts(top).items():
        lines = [f"[{name}]", *_comment(part.doc if isinstance(part, Table) else part.__doc__)]
        if not isinstance(part, Table):
            for f in dataclasses.fields(part):
                lines += _key_lines(f)
        blocks.append("\n".join(lines) + "\n")
    return "\n".join(blocks)


def _key_lines(f: dataclasses.Field[Any]) -> list[str]:
    """A key's line in the starter with its doc beside it, or above it where it is long."""
    line = f"{f.name} = {f.metadata['starter'] or _escape(_toml(f.default))}"
    doc = f.metadata["doc"]
    inline = f"{line:<{_COMMENT_AT - 2}}  # {_escape(doc)}"
    return [inline] if len(inline) <= _WIDTH else [*_comment(doc), line]


def _comment(doc: str | None) -> list[str]:
    return [
        _escape(line)
        for paragraph in (doc or "").splitlines()
        for line in textwrap.wrap(paragraph, _WIDTH - 4, initial_indent="# ",
                                  subsequent_indent="# ", break_on_hyphens=False)
    ]


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str | tuple):
        return json.dumps(list(value) if isinstance(value, tuple) else value)
    return repr(value)


def _escape(text: str) -> str:
    """Text as it reads after str.format."""
    return text.replace("{", "{{").replace("}", "}}")
