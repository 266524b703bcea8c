"""The federation file of `entityd up`: a small TOML file naming a hub's entities, read
into a checked Spec; a mistake is one FileError naming the key and the fix.

    [federation]
    dir = ".federation/pair"   # default: .federation/<file stem> beside the file
    base_port = 14220          # hub, hub leafnodes, each entity's NATS, each demo model;
                               # 0 or absent: free ports picked on every start
    allowance = 1000           # minted once to each entity by the hub's treasurer
    heartbeat = 2.0            # seconds between presence heartbeats

    [entities.entity-a]
    provider = "moonshot"      # or openrouter, openai, ollama, custom, demo
    model = ""                 # empty: the provider's default
    port = 14222               # its NATS port (optional: from base_port, or free)
    trust = { entity-b = ["talk", "report"] }   # default: every other one, fully
    allowance = 500            # instead of [federation] allowance
    autonomy = true            # left alone, it works its mission (README, "Autonomy"):
    mission = "..."            # what it works towards
    interval = 10.0            # seconds between its wake-ups (default 10)
    accept_command = "python3 -m unittest"   # what a delivery it paid for must pass
                               # (economy.auto_accept is on with autonomy)
    web = 8001                 # its web page on this loopback port (0: any free one;
                               # absent: no page); `entityctl web` prints the login link
"""

from __future__ import annotations

import tomllib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from actors.llm.providers import PRESETS
from protocol import subjects

from ... import config as config_mod
from ...errors import EntitydError

DEMO = "demo"
PROVIDERS = (*(p for p in PRESETS if p != "scripted"), DEMO)
MAX_ALLOWANCE = 10**15


class FileError(EntitydError):
    """The federation file is wrong: the file, the key, what is wrong and the fix."""

    def __init__(self, path: Path, key: str, problem: str) -> None:
        super().__init__(f"{path}: {key}: {problem}")
        self.key = key


DEFAULT_INTERVAL = 10.0  # seconds between an autonomous entity's wake-ups
DEFAULT_ACCEPT = "python3 -m unittest"  # what a paid delivery must pass to be accepted

@dataclass(frozen=True)
class EntitySpec:
    name: str
    provider: str
    model: str = ""
    port: int = 0  # 0: from base_port, else free
    trust: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    allowance: int = 0
    autonomy: bool = False
    mission: str = ""
    interval: float = DEFAULT_INTERVAL
    accept_command: str = DEFAULT_ACCEPT
    web: int | None = None  # the page's port (0: any free one); None: no page


@dataclass(frozen=True)
class Spec:
    path: Path  # the file, absolute
    dir: Path  # where the hub and the entities live, absolute
    base_port: int  # 0: free ports
    allowance: int
    heartbeat: float
    entities: tuple[EntitySpec, ...]

    @property
    def name(self) -> str:
        """What the output calls the federation: the file's stem ("pair ready")."""
        return self.path.stem


@dataclass(frozen=True)
class Overrides:
    """What the command line changes of the file (deploy/start-pair.sh's PAIR_* vars)."""

    dir: Path | None = None
    base_port: int | None = None
    allowance: int | None = None
    providers: Mapping[str, str] = field(default_factory=dict)


def default_dir(path: Path) -> Path:
    return path.parent / ".federation" / path.stem


def load(path: Path, overrides: Overrides | None = None) -> Spec:
    path = path.expanduser().resolve()
    try:
        raw = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise FileError(path, "file", "no such file; give a federation file such as "
                        "deploy/pair.toml") from None
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise FileError(path, "file", f"not valid TOML ({exc}); fix the line it names") from None
    except OSError as exc:
        raise FileError(path, "file", f"cannot be read: {exc.strerror}") from None
    return _parse(path, raw, overrides or Overrides())


def _parse(path: Path, raw: Mapping[str, Any], over: Overrides) -> Spec:
    def fail(key: str, problem: str) -> FileError:
        return FileError(path, key, problem)

    _only(raw, ("federation", "entities"), "", fail)
    fed = _table(raw, "federation", fail)
    _only(fed, ("dir", "base_port", "allowance", "heartbeat"), "federation.", fail)
    where = (over.dir.expanduser().resolve() if over.dir  # given on the command line
             else Path(_get(fed, "dir", str, "", "federation.dir", fail)).expanduser())
    base = _get(fed, "base_port", int, 0, "federation.base_port", fail)
    if over.base_port is not None:
        base = over.base_port
    allowance = _get(fed, "allowance", int, 1000, "federation.allowance", fail)
    if over.allowance is not None:
        allowance = over.allowance
    _check_allowance(allowance, "federation.allowance", fail)
    heartbeat = _get(fed, "heartbeat", float, 2.0, "federation.heartbeat", fail)
    if heartbeat <= 0:
        raise fail("federation.heartbeat", f"{heartbeat} must be a positive number of seconds")
    entities_raw = _table(raw, "entities", fail)
    if not entities_raw:
        raise fail("entities", "no entity; add a [entities.NAME] table for each, e.g. "
                   "[entities.entity-a] with provider = \"demo\"")
    names = list(entities_raw)
    for name in [*names, *over.providers]:
        if not subjects.valid_name(name):
            raise fail(f"entities.{name}", "an entity's name is 1-32 of lowercase letters, "
                       "digits and '-'; rename the table")
    for name in over.providers:
        if name not in entities_raw:
            raise fail(f"entities.{name}", f"not in the file, which has {', '.join(names)}")
    entities = tuple(_entity(name, entities_raw, allowance, over, fail) for name in names)
    ports = [e.port for e in entities if e.port]
    if base:
        last = base + 1 + 2 * len(entities)
        if not 0 < base or last > 65535:
            raise fail("federation.base_port", f"{base}: the hub, its leafnodes, and a NATS "
                       f"and a demo model port per entity need {last - base + 1} ports from "
                       "it; give a port number up to " + str(65535 - (last - base)))
    if len(set(ports)) != len(ports):
        raise fail("entities", "two entities have the same port; give each its own")
    directory = where if where.is_absolute() else path.parent / where
    if not fed.get("dir") and over.dir is None:
        directory = default_dir(path)
    return Spec(path, directory.resolve(), base, allowance, heartbeat, entities)


def _entity(name: str, all_raw: Mapping[str, Any], allowance: int, over: Overrides,
            fail: Any) -> EntitySpec:
    at = f"entities.{name}"
    raw = _table(all_raw, name, fail, at)
    _only(raw, ("provider", "model", "port", "trust", "allowance", "autonomy", "mission",
                "interval", "accept_command", "web"), at + ".", fail)
    provider = over.providers.get(name) or _get(raw, "provider", str, DEMO, at + ".provider",
                                                fail)
    if provider == "scripted":
        provider = DEMO
    if provider not in PROVIDERS:
        raise fail(at + ".provider", f"{provider!r} is not a provider; use one of "
                   f"{', '.join(PROVIDERS)}")
    port = _get(raw, "port", int, 0, at + ".port", fail)
    if port and not 0 < port < 65536:
        raise fail(at + ".port", f"{port} is not a port number (1-65535)")
    others = [other for other in all_raw if other != name]
    trust: dict[str, tuple[str, ...]] = {o: config_mod.PEER_PERMISSIONS for o in others}
    if "trust" in raw:
        given = _table(raw, "trust", fail, at + ".trust")
        trust = {}
        for peer, perms in given.items():
            wrong = [p for p in perms] if not isinstance(perms, list) else [
                p for p in perms if p not in config_mod.PEER_PERMISSIONS]
            if peer not in others or wrong:
                what = (f"{peer!r} is not another entity of the file" if peer not in others
                        else f"{wrong} are not permissions")
                raise fail(f"{at}.trust.{peer}", f"{what}; give another entity's name = a "
                           f"list drawn from {', '.join(config_mod.PEER_PERMISSIONS)}")
            trust[peer] = tuple(perms)
    own = _get(raw, "allowance", int, allowance, at + ".allowance", fail)
    _check_allowance(own, at + ".allowance", fail)
    return EntitySpec(
        name, provider, _get(raw, "model", str, "", at + ".model", fail), port, trust, own,
        _get(raw, "autonomy", bool, False, at + ".autonomy", fail),
        _get(raw, "mission", str, "", at + ".mission", fail),
        _interval(_get(raw, "interval", float, DEFAULT_INTERVAL, at + ".interval", fail),
                  at + ".interval", fail),
        _get(raw, "accept_command", str, DEFAULT_ACCEPT, at + ".accept_command", fail),
        _web_port(raw, at + ".web", fail))


def _web_port(raw: Mapping[str, Any], key: str, fail: Any) -> int | None:
    if "web" not in raw:
        return None
    port = _get(raw, "web", int, 0, key, fail)
    if not 0 <= port < 65536:
        raise fail(key, f"{port} is not a port number (1-65535, or 0 for any free one)")
    return int(port)


def _interval(seconds: float, key: str, fail: Any) -> float:
    if not seconds > 0:
        raise fail(key, f"{seconds} must be more than 0 seconds between wake-ups")
    return seconds


def _check_allowance(amount: int, key: str, fail: Any) -> None:
    if not 0 <= amount <= MAX_ALLOWANCE:
        raise fail(key, f"{amount} must be a whole amount from 0 (none) to {MAX_ALLOWANCE}")


def _table(raw: Mapping[str, Any], name: str, fail: Any, key: str = "") -> Mapping[str, Any]:
    value = raw.get(name, {})
    if not isinstance(value, dict):
        raise fail(key or name, f"must be a table ([{key or name}]), not {value!r}")
    return value


def _get(raw: Mapping[str, Any], name: str, kind: type, default: Any, key: str,
         fail: Any) -> Any:
    value = raw.get(name, default)
    if kind is float and isinstance(value, int) and not isinstance(value, bool):
        value = float(value)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        example = {str: '"text"', int: "1000", float: "2.0", bool: "true"}[kind]
        raise fail(key, f"{value!r} is not {kind.__name__}; write it like {name} = {example}")
    return value


def _only(raw: Mapping[str, Any], known: tuple[str, ...], prefix: str, fail: Any) -> None:
    for name in raw:
        if name not in known:
            raise fail(prefix + name, f"unknown key; the keys here are {', '.join(known)}")
