"""What `entityd up` runs for a Spec: on first start the entities (key, config), their
hub logins, the treasurer and its mint key; on every start the settings the file gives
written into each entity's config, the hub's config, and the list of processes.

The layout under the federation's dir (start-pair.sh's, kept):
    hub/hub.conf, hub/hub.log, hub/jetstream/   the hub nats-server
    hub/treasury/                               the treasurer's login and mint.key
    hub/books-reader/, hub/books-reader.log     the books reader's logins, its log
    NAME/                                       entity NAME's data dir (entityd.toml ...)
    run/                                        pid files and state of the running `up`
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import os
import re
import socket
import sys
from dataclasses import dataclass, field
from pathlib import Path

import nats.errors
from nacl.signing import SigningKey

from actors.llm.providers import PRESETS

from ... import config as config_mod
from ... import federation, identity
from ...errors import EntitydError
from ...natsserver import find_binary
from ...ports import free_port_range
from .. import economy
from .spec import DEMO, Spec

HOST = "127.0.0.1"
MINT_KEY = "mint.key"
PREFIX = "up: "


def show(line: str) -> None:
    """A line of output, at once; a closed terminal does not stop `up` (nor its stop)."""
    with contextlib.suppress(OSError, ValueError):
        print(line, flush=True)


def say(text: str) -> None:
    """A note of what `up` does."""
    show(PREFIX + text)


class StartError(EntitydError):
    """Something `up` needs cannot be made or started; the message names it and the fix."""


@dataclass
class Child:
    """One process `up` starts and keeps running."""

    name: str  # "hub", "demo-entity-a", "entity-a": its pid file's name
    label: str  # what the output calls it
    kind: str  # "hub", "reader" (the hub's books reader), "model" or "daemon"
    argv: list[str]
    cwd: Path
    log: Path
    ports: dict[str, int]
    env: dict[str, str] = field(default_factory=dict)  # added to up's own
    config: Path | None = None  # a daemon's entityd.toml


@dataclass
class Plan:
    spec: Spec
    hub_url: str
    treasury: Path
    children: list[Child]
    allowances: dict[str, int]
    pages: dict[str, int | None]  # each entity's web page port (0: a free one; None: none)

    def of_kind(self, *kinds: str) -> list[Child]:
        return [child for child in self.children if child.kind in kinds]


def prepare(spec: Spec) -> Plan:
    """Make what a first start needs (later starts keep it) and the plan of processes."""
    ports = _ports(spec)
    hub_dir = spec.dir / "hub"
    treasury = hub_dir / federation.TREASURER
    treasury.mkdir(parents=True, exist_ok=True)
    mint_path = treasury / MINT_KEY
    if not mint_path.exists():
        identity.write_key(mint_path, SigningKey.generate())
    mint_key = bytes(identity.read_key(mint_path).verify_key).hex()
    treasurer = federation.make_entity_credentials(federation.TREASURER, treasury)[0]
    users = []
    for entity in spec.entities:
        data = spec.dir / entity.name
        config = data / config_mod.CONFIG_NAME
        if not config.exists():
            say(f"first run: creating {entity.name} in {data}")
            data.mkdir(parents=True, exist_ok=True)
            if not identity.key_path(data).exists():
                identity.create(data)
            config.write_text(config_mod.STARTER.format(
                name=entity.name, data_dir=data, port=ports[entity.name]))
        users.append((entity.name, federation.make_entity_credentials(entity.name, data)[0]))
        text = config.read_text()
        for peer in (e.name for e in spec.entities):  # the file owns the trust among them
            if peer != entity.name and peer not in entity.trust:
                text = toml_unset(text, "trust", peer)
        for section, key, value in [
            ("nats", "port", ports[entity.name]),
            ("nats", "hub_url", f"nats-leaf://{HOST}:{ports['leafnodes']}"),
            ("peers", "heartbeat_interval", spec.heartbeat),
            *[("trust", peer, list(perms)) for peer, perms in entity.trust.items()],
            ("mint_keys", federation.TREASURER, mint_key),
            ("autonomy", "enabled", entity.autonomy),
            ("autonomy", "mission", entity.mission),
            ("autonomy", "interval", entity.interval),
            # Left alone, it accepts (and pays for) a delivery once its tests pass.
            ("economy", "auto_accept", entity.autonomy),
            ("economy", "accept_command", entity.accept_command),
            *([("llm", "provider", entity.provider)] if entity.provider != DEMO else []),
            *([("llm", "model", entity.model)] if entity.model else []),
            ("web", "enabled", entity.web is not None),
            *([("web", "port", entity.web)] if entity.web is not None else []),
        ]:
            text = toml_set(text, section, key, json.dumps(value))
        config.write_text(text)
    reader_keys = hub_dir / federation.READER
    hub_conf = hub_dir / "hub.conf"
    hub_conf.write_text(federation.render_hub_conf(
        users, store_dir=hub_dir / "jetstream", host=HOST, port=ports["hub"],
        leaf_host=HOST, leaf_port=ports["leafnodes"], treasurer=treasurer,
        reader=federation.reader_credentials(reader_keys)))
    children = [Child("hub", "hub", "hub", [find_binary(), "-c", str(hub_conf)], hub_dir,
                      hub_dir / "hub.log",
                      {"clients": ports["hub"], "leafnodes": ports["leafnodes"]}),
                Child(federation.READER, "books reader", "reader",
                      [sys.executable, "-m", "entityd.books_reader",
                       "--hub", f"nats://{HOST}:{ports['hub']}", "--keys", str(reader_keys),
                       *(f"--member={name}" for name, _ in users)],
                      hub_dir, hub_dir / f"{federation.READER}.log", {})]
    daemons = []
    for entity in spec.entities:
        data = spec.dir / entity.name
        env = {"ENTITYD_LOG_FORMAT": "json"}  # the readiness check reads the log
        if _runs_on_demo(entity.name, entity.provider):
            demo_port = ports[f"demo-{entity.name}"]
            children.append(Child(
                f"demo-{entity.name}", f"demo model of {entity.name}", "model",
                [sys.executable, "-m", "actors.llm.scripted", "--demo", "--port",
                 str(demo_port)], data, data / "demo-model.log", {"model": demo_port}))
            env |= {"ENTITYD_LLM_PROVIDER": "scripted",
                    "ENTITYD_LLM_BASE_URL": f"http://{HOST}:{demo_port}/v1"}
        config = data / config_mod.CONFIG_NAME
        daemons.append(Child(
            entity.name, entity.name, "daemon",
            [str(Path(sys.executable).parent / "entityd"), "run", "--config", str(config)],
            data, data / "entityd.log", {"nats": ports[entity.name]}, env, config))
        try:
            config_mod.load(config, environ=env)
        except EntitydError as exc:
            raise StartError(f"{entity.name}: {exc} (in {config}, which `up` keeps: fix "
                             "the key there, or delete the file to have it made again)") \
                from None
    return Plan(spec, f"nats://{HOST}:{ports['hub']}", treasury, children + daemons,
                {e.name: e.allowance for e in spec.entities},
                {e.name: e.web for e in spec.entities})


def _ports(spec: Spec) -> dict[str, int]:
    """hub, leafnodes, each entity's NATS, each one's demo model: from base_port in that
    order (start-pair.sh's layout), else free ones; an entity's own port wins."""
    names = [e.name for e in spec.entities]
    slots = ["hub", "leafnodes", *names, *(f"demo-{n}" for n in names)]
    base = spec.base_port or free_port_range(len(slots))
    ports = {slot: base + i for i, slot in enumerate(slots)}
    ports.update({e.name: e.port for e in spec.entities if e.port})
    for slot, port in ports.items():
        # Another federation (or anything else) there would answer in our place.
        if _taken(port):
            raise StartError(f"port {port} ({slot}) is in use (another federation "
                             f"running?); set base_port in {spec.path} (or --base-port) to "
                             "a free range")
    return ports


def _taken(port: int) -> bool:
    with socket.socket() as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as nats-server binds
        try:
            sock.bind((HOST, port))
        except OSError:
            return True
    return False


def _runs_on_demo(name: str, provider: str) -> bool:
    """Whether entity `name` runs on the demo model: asked for, or its provider's key is
    not in the environment (tested by name only: the key is never printed or written)."""
    if provider == DEMO:
        say(f"{name}: running it on the scripted demo model (not a model), as asked")
        return True
    key_var = PRESETS[provider].key_env
    if key_var and not os.environ.get(key_var):
        say(f"{name}: no {key_var} in the environment; running it on the scripted demo "
            "model (not a model)")
        return True
    say(f"{name}: model provider {provider}" + (f" (key from ${key_var})" if key_var else ""))
    return False


def toml_set(text: str, section: str, key: str, value: str) -> str:
    """`key = value` in [section] of a TOML text: the key's line replaced (its comment
    kept), else added at the end of the section, else in a new section at the end. Applying it
    again changes nothing, so `up` applies the file's settings on every start."""
    lines = text.splitlines()
    header, current, under = f"[{section}]", "", -1
    assignment = re.compile(rf"{re.escape(key)}\s*=")
    for i, line in enumerate(lines):
        if line.startswith("["):
            current = line.split("#", 1)[0].strip()
            under = i + 1 if current == header else under
        elif current == header and line.strip():
            under = i + 1  # after the section's last line: keys keep the order they came in
        if current == header and assignment.match(line):
            comment = re.search(r"\s+#[^\"']*$", line)
            lines[i] = f"{key} = {value}" + (comment.group(0) if comment else "")
            return "\n".join(lines) + "\n"
    if under < 0:
        lines += ["", header]
        under = len(lines)
    lines.insert(under, f"{key} = {value}")
    return "\n".join(lines) + "\n"


def toml_unset(text: str, section: str, key: str) -> str:
    """The TOML text without `key`'s line in [section] (unchanged when it has none)."""
    lines, current = text.splitlines(), ""
    assignment = re.compile(rf"{re.escape(key)}\s*=")
    kept = []
    for line in lines:
        if line.startswith("["):
            current = line.split("#", 1)[0].strip()
        if current == f"[{section}]" and assignment.match(line):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n"


async def fund(plan: Plan) -> None:
    """The LEDGER stream on the hub, and each entity's allowance minted once: the mint's
    id comes from the entity's name, so a later start's mint is a retry with no effect."""
    await _economy(plan, "init", "could not make the LEDGER stream on the hub")
    for name, amount in plan.allowances.items():
        if not amount:
            continue
        entry_id = hashlib.sha256(f"allowance/{name}".encode()).hexdigest()[:32]
        minted = await _economy(plan, "mint", f"could not mint {name}'s starting allowance",
                                entity=name, amount=amount, key=plan.treasury / MINT_KEY,
                                memo=f"the {plan.spec.name}'s starting allowance",
                                id=entry_id)
        say(f"{name}'s allowance: {minted}")


async def _economy(plan: Plan, command: str, failed: str, **args: object) -> str:
    """`entityd economy COMMAND` in this process, as the hub's treasurer; what it prints."""
    namespace = argparse.Namespace(economy_command=command, hub=plan.hub_url, config=None,
                                   data_dir=plan.treasury, replicas=1, **args)
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            code = await economy.run(namespace)  # its body, without its own loop
    except (EntitydError, ValueError, nats.errors.Error, OSError, TimeoutError) as exc:
        raise StartError(f"{failed}: {exc!r}; see {plan.children[0].log}") from None
    if code != 0:
        raise StartError(f"{failed} (entityd economy {command} exited {code})")
    return out.getvalue().strip()
