"""The layers of ../shared/DESIGN.md hold: actors -> the entityd runtime API -> protocol.

- `protocol` imports neither `entityd` nor `actors`;
- the runtime library (`entityd` but `entityd.app`) never imports `actors` nor the app;
- `actors` import of `entityd` only the names `entityd/__init__.py` exports;
- the peer actor reaches the federation through a handle that holds back the key and
  the entity's local subjects, and no other actor gets that handle.

Every import counts, the ones inside functions too: a lazy import is still a dependency.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import nats
import pytest
from nacl.signing import SigningKey

import entityd
from entityd import Actor, FederationAccess
from entityd.actor import Context
from entityd.logs import get
from entityd.transport import Transport
from protocol import Keyring
from tests.helpers import NatsServer

ROOT = Path(__file__).resolve().parent.parent
RUNTIME_API = {
    "PEER_PERMISSIONS", "Actor", "ActorDeadError", "AskTimeout", "AutonomySection",
    "Config", "ConfigError", "Context", "DamagedFile", "EntitydError", "Envelope", "EventReader",
    "FederationAccess", "StoredEvent", "WebSection",
    "LlmSection", "Later", "McpServer", "PeerUnavailable", "PeersSection", "RemoteError",
    "SandboxSection", "Supervision", "Unsendable", "configure_logging", "disk_full",
    "get_logger", "kind",
    "unsubscribe",
}


def modules(package: str) -> Iterator[tuple[str, Path]]:
    for path in sorted((ROOT / package).rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        yield ".".join(parts), path


def imports(module: str, path: Path) -> Iterator[tuple[int, str, list[str]]]:
    """(line, the module imported, the names taken from it) for every import."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            for alias in node.names:
                yield node.lineno, alias.name, []
        elif isinstance(node, ast.ImportFrom):
            target = node.module or ""
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, target] if target else base)
            yield node.lineno, target, [alias.name for alias in node.names]


def within(target: str, package: str) -> bool:
    return target == package or target.startswith(package + ".")


def violations(package: str, rule: Any) -> list[str]:
    found = []
    for module, path in modules(package):
        for line, target, names in imports(module, path):
            problem = rule(module, target, names)
            if problem:
                found.append(f"{path.relative_to(ROOT)}:{line}: {problem}")
    return found


def test_protocol_imports_neither_entityd_nor_actors() -> None:
    def rule(module: str, target: str, names: list[str]) -> str:
        if within(target, "entityd") or within(target, "actors"):
            return f"protocol imports {target}"
        return ""

    assert violations("protocol", rule) == []


def test_the_runtime_library_never_imports_actors_nor_the_application() -> None:
    def rule(module: str, target: str, names: list[str]) -> str:
        if within(module, "entityd.app"):
            return ""
        if within(target, "actors") or within(target, "entityd.app"):
            return f"{module} (runtime) imports {target}"
        if target == "entityd" and "app" in names:
            return f"{module} (runtime) imports entityd.app"
        return ""

    assert violations("entityd", rule) == []


def test_actors_import_only_the_runtime_api_of_entityd() -> None:
    def rule(module: str, target: str, names: list[str]) -> str:
        if target == "entityd" and names and set(names) <= set(entityd.__all__):
            return ""
        if within(target, "entityd"):
            return f"{module} imports {target} {names or ''}".strip()
        return ""

    assert violations("actors", rule) == []


def test_the_rules_see_a_violation() -> None:
    """The checks parse what they should: planted imports are found, relative ones too."""
    planted = ROOT / "entityd" / "_planted_for_test_layers.py"
    planted.write_text("def f():\n    from .app import cli\n    import actors.tool\n")
    try:
        found = [(line, target) for line, target, _ in
                 imports("entityd._planted_for_test_layers", planted)]
    finally:
        planted.unlink()
    assert found == [(2, "entityd.app"), (3, "actors.tool")]


def test_the_runtime_api_is_pinned_and_complete() -> None:
    assert set(entityd.__all__) == RUNTIME_API
    assert len(entityd.__all__) == len(RUNTIME_API)
    for name in entityd.__all__:
        assert getattr(entityd, name) is not None, name


def test_importing_the_runtime_loads_no_actor() -> None:
    runtime = [m for m, _ in modules("entityd") if not within(m, "entityd.app")]
    code = ("import importlib, sys\n"
            f"for m in {runtime!r}:\n"
            "    importlib.import_module(m)\n"
            "print(sorted(m for m in sys.modules if m == 'actors' or m.startswith("
            "('actors.', 'entityd.app', 'openai'))))\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=ROOT, timeout=60, check=True)
    assert out.stdout.strip() == "[]", out.stdout


# ---- the federation handle ------------------------------------------------------------


class Plain(Actor):
    name = "plain"


class Federated(Actor):
    name = "federated"
    federated = True


@pytest.fixture
async def transport(nats_server: NatsServer) -> Any:
    nc = await nats.connect(nats_server.url, inbox_prefix=b"_l.alpha")
    yield Transport(nc, entity="alpha", key=SigningKey.generate(), keyring=Keyring())
    await nc.close()


def context(transport: Transport, actor: type[Actor]) -> Context:
    return Context(transport, actor.name, 1.0, get("test"), federated=actor.federated)


async def test_only_a_federated_actor_gets_the_federation_handle(transport: Transport) -> None:
    assert isinstance(context(transport, Federated).federation, FederationAccess)
    with pytest.raises(PermissionError, match="plain is not federated"):
        context(transport, Plain).federation  # noqa: B018


async def test_the_handle_holds_back_the_key_and_the_local_subjects(
        transport: Transport) -> None:
    fed = context(transport, Federated).federation
    public = {name: getattr(fed, name) for name in dir(fed) if not name.startswith("_")}
    assert not [name for name, value in public.items()
                if isinstance(value, SigningKey | Transport | nats.NATS)], public

    async def cb(msg: Any) -> None:
        pass

    for subject in ("loc.alpha.memory.memory_search", "_l.alpha.x"):
        with pytest.raises(ValueError, match="local subjects"):
            await fed.publish(subject, b"x")
    for subject in ("loc.alpha.>", "loc.*.*.*", ">", "*.alpha.memory.x", "_l.alpha.>",
                    "_l.*"):
        with pytest.raises(ValueError, match="local subjects"):
            await fed.subscribe(subject, cb=cb)
    own = await fed.subscribe(fed.new_inbox(), cb=cb)  # its own inbox: allowed
    fed_sub = await fed.subscribe("fed.req.alpha.*.*", cb=cb)
    await fed.publish("fed.evt.alpha.peer.heartbeat", b"x")
    await own.unsubscribe()
    await fed_sub.unsubscribe()
