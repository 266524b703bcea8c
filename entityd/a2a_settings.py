"""Who may call the entity as an A2A agent, and which A2A agents it may call: the `[a2a]`
table of its config file (Config.a2a), checked strictly; a mistake is a ConfigError
naming the key (`a2a.api_keys.NAME`) and stops the start.

    [a2a]
    api_keys = { ci-bot = "sha256 hex of the key" }   # `entityctl a2a key ci-bot`
    agents = { helper = "https://helper.example/" }   # delegate_to_a2a_agent's choices
    push_hosts = ["hooks.internal:8443"]              # push targets beyond public https

No key is configured by default, and then the A2A endpoint and its card are off. A
client's push-notification URL must be https to a host whose every address is public,
unless its `host[:port]` is in `push_hosts` (no port: the scheme's default); so a client
cannot aim the entity's pushes at its loopback or private network.
"""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, NamedTuple
from urllib.parse import urlsplit

from .errors import ConfigError

CLIENT_NAME = re.compile(r"[a-z0-9][a-z0-9-]{0,23}")
AGENT_NAME = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
DIGEST = re.compile(r"[0-9a-f]{64}")
KEYS = frozenset({"api_keys", "agents", "push_hosts"})
DEFAULT_PORTS = {"http": 80, "https": 443}
MAX_PUSH_HOSTS = 64


class A2ASettings(NamedTuple):
    """Not a dataclass: the config's schema would take it for a section of plain keys."""

    api_keys: Mapping[str, str] = MappingProxyType({})  # client name -> sha256 hex
    agents: Mapping[str, str] = MappingProxyType({})  # agent name -> base URL
    push_hosts: frozenset[tuple[str, int]] = frozenset()  # (host, port); port 0: default

    @property
    def serving(self) -> bool:
        return bool(self.api_keys)

    def client_of(self, key: str) -> str | None:
        """The client whose API key `key` is, or None (compared in constant time)."""
        digest = hashlib.sha256(key.encode("utf-8", "replace")).hexdigest()
        found = None
        for name, stored in self.api_keys.items():
            if hmac.compare_digest(digest, stored):
                found = name
        return found

    def push_host_allowed(self, scheme: str, host: str, port: int | None) -> bool:
        """Whether the operator named this push target in `push_hosts` (the host as
        written in the URL, normalised; `127.1` is not `127.0.0.1`: that errs closed)."""
        name = host_key(host)
        port = port or DEFAULT_PORTS.get(scheme, 0)
        return ((name, port) in self.push_hosts
                or (port == DEFAULT_PORTS.get(scheme) and (name, 0) in self.push_hosts))


def host_key(host: str) -> str:
    """A host as compared: lower case, no brackets or trailing dot, an IP address in its
    normal form."""
    name = host.strip().strip("[]").rstrip(".").lower()
    try:
        return str(ipaddress.ip_address(name))
    except ValueError:
        return name


def push_host(entry: str) -> tuple[str, int]:
    """`host`, `host:port` or `[v6]:port` as (host, port); port 0 when none is given."""
    host, port = entry, ""
    if entry.startswith("["):
        host, _, rest = entry[1:].partition("]")
        if rest and not rest.startswith(":"):
            raise ValueError(entry)
        port = rest[1:]
    elif entry.count(":") == 1:
        host, port = entry.split(":")
    number = int(port) if port else 0
    if not host.strip() or not 0 <= number <= 65535 or "/" in host or "@" in host:
        raise ValueError(entry)
    return host_key(host), number


def settings(a2a: Any) -> A2ASettings:
    """The settings of a config file's `[a2a]` table."""
    if not isinstance(a2a, Mapping):
        raise ConfigError("a2a", "must be a table")
    unknown = set(a2a) - KEYS
    if unknown:
        raise ConfigError(f"a2a.{sorted(unknown)[0]}",
                          f"unknown key (known: {', '.join(sorted(KEYS))})")
    keys = _table(a2a.get("api_keys", {}), "a2a.api_keys")
    for name, digest in keys.items():
        if not CLIENT_NAME.fullmatch(name):
            raise ConfigError(f"a2a.api_keys.{name}", "a client's name is 1-24 of a-z, 0-9 "
                              "and -, starting with a letter or digit")
        if not DIGEST.fullmatch(digest):
            raise ConfigError(f"a2a.api_keys.{name}", "must be the key's sha256 in lower-case "
                              "hex, as `entityctl a2a key NAME` prints it (never the key)")
    agents = _table(a2a.get("agents", {}), "a2a.agents")
    for name, url in agents.items():
        where = urlsplit(url)
        if not AGENT_NAME.fullmatch(name):
            raise ConfigError(f"a2a.agents.{name}", "an agent's name is 1-32 of a-z, 0-9, _ "
                              "and -")
        if where.scheme not in ("http", "https") or not where.hostname:
            raise ConfigError(f"a2a.agents.{name}", f"{url!r} is not an http(s) URL")
    hosts = a2a.get("push_hosts", [])
    if (not isinstance(hosts, list) or len(hosts) > MAX_PUSH_HOSTS
            or not all(isinstance(h, str) for h in hosts)):
        raise ConfigError("a2a.push_hosts", f'must be a list of up to {MAX_PUSH_HOSTS} '
                          '"host" or "host:port" strings')
    push_hosts = set()
    for entry in hosts:
        try:
            push_hosts.add(push_host(entry))
        except ValueError:
            raise ConfigError("a2a.push_hosts", f"{entry[:80]!r} is not a host or "
                              "host:port") from None
    return A2ASettings(MappingProxyType(keys), MappingProxyType(agents), frozenset(push_hosts))


def _table(value: Any, key: str) -> dict[str, str]:
    if not isinstance(value, Mapping) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
        raise ConfigError(key, 'must be a table of name = "string"')
    return dict(value)
