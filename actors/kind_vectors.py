"""Test vectors for every message kind (protocol/vectors/kinds/), from the kind registry.

`python -m actors.spec --write` writes them with PROTOCOL.md's kinds section. For each
kind, `<typ>.json` opens valid payloads (every field, the required ones only) on the
subject the kind travels on and refuses each field missing or of a wrong type as
`bad_payload`; for each kind a daemon encrypts on federation subjects,
`<typ>_encrypted.json` carries it sealed (section 12). Envelopes are built with the
helpers of protocol/vectors/generate.py (msgpack and PyNaCl, not `protocol.seal`); the
expected records are worked out from the field types, and the generator checks that
`protocol.kinds.decode` agrees before it writes anything.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import typing
from pathlib import Path
from typing import Any

from nacl.public import Box
from nacl.signing import SigningKey

from protocol import kinds, ledger, subjects
from protocol.errors import BadPayload
from protocol.vectors import generate as g

from . import spec

DIRECTORY = g.HERE / "kinds"
LOCAL_INBOX = "_l.alpha.Q8xvV2pT0a9JmWbK3cYfLd.1"
FED_INBOX = "_i.alpha.s4Fq0vJ1xR7m.5b3c9a0e1d2f4a6b8c7d9e0f1a2b3c4d"

# Sample field values by field name; other fields get a value of their type.
SAMPLE_STR = {
    "peer": "gamma", "actor": "memory", "task_id": "t-0001", "code": "busy",
    "state": "running", "conversation": "c-1", "text": "hello", "tool": "read_file",
    "kind": "fact", "status": "open", "role": "user", "source": "ctl", "origin": "operator",
    "entity": "alpha", "public_key": g.pk(g.ALPHA).hex(), "nats_server": "nats://127.0.0.1:4222",
    "type": "commit", "sha256": hashlib.sha256(b"patch").hexdigest(),
    "commit": "4b825dc642cb6eb9a060e54bf8d69288fbee4904", "notify": "alpha/peer",
    "payer": "gamma", "name": "coder", "pinned_by": "first-sight", "direction": "out",
    "branch": "delegated/t-0001", "caller": "coder", "message": "try later",
}
SAMPLE_FLOAT = {"importance": 0.75, "interval": 15.0, "started_at": 1767225590.5,
                "created_at": 1767225500.25, "updated_at": 1767225550.75}
SAMPLE_ANY: Any = ["text", 1, 2.5, True, None, {"nested": b"\x00\x01"}]


@dataclasses.dataclass(frozen=True)
class Route:
    """Where a kind's vector is received: the subject, the two ends, the signer."""

    subject: str
    src: str
    dst: str
    local: str
    signer: SigningKey
    request: str | None = None  # the request kind a reply answers (its corr)


# ---- values ------------------------------------------------------------------------------


def sample(hint: Any, name: str) -> Any:
    """A valid value of type `hint` for the field `name`."""
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return SAMPLE_ANY
    if _nullable(hint):
        return sample(_inner(hint), name)
    if origin is list:
        return [sample(typing.get_args(hint)[0], name)]
    if origin is dict:
        return {"k": sample(typing.get_args(hint)[1], name)}
    if dataclasses.is_dataclass(hint):
        return full(hint)  # type: ignore[arg-type]
    if hint is str:
        return SAMPLE_STR.get(name, f"example {name}")
    if hint is bool:
        return True
    if hint is int:
        return {"offset": 0, "length": 4096, "id": 42}.get(name, 3)
    if hint is float:
        return SAMPLE_FLOAT.get(name, 2.5)
    if hint is bytes:
        return b"From 4b825dc6 Mon Sep 17 00:00:00 2001\n" if name == "patch" else bytes(range(8))
    raise TypeError(f"no sample for {hint!r}")


def wrong(hint: Any, name: str) -> tuple[Any, str] | None:
    """A value of another type than `hint`, and what is wrong with it; None for `any`."""
    origin = typing.get_origin(hint)
    if hint is typing.Any:
        return None
    if _nullable(hint):
        return wrong(_inner(hint), name)
    if origin is list:
        inner = wrong(typing.get_args(hint)[0], name)
        if inner is None:
            return {"0": sample(typing.get_args(hint)[0], name)}, "a map where a list is due"
        return [inner[0]], f"an element that is {inner[1]}"
    if origin is dict:
        inner = wrong(typing.get_args(hint)[1], name)
        if inner is None:
            return [sample(typing.get_args(hint)[1], name)], "an array where a map is due"
        return {"k": inner[0]}, f"a map value that is {inner[1]}"
    if dataclasses.is_dataclass(hint):
        fields = dataclasses.fields(hint)
        if not fields:
            return "x", "a str where a record is due"
        first = fields[0]
        inner = wrong(typing.get_type_hints(hint)[first.name], first.name)
        assert inner is not None, f"{hint}: the first field of a record is not of type any"
        value = full(hint) | {first.name: inner[0]}  # type: ignore[arg-type]
        return value, f"a record whose {first.name} is {inner[1]}"
    cases: dict[Any, tuple[Any, str]] = {
        str: (SAMPLE_STR.get(name, f"example {name}").encode(), "a bin, not a str"),
        bytes: (bytes(range(8)).hex(), "a str, not a bin"),
        int: (3.0, "the float 3.0, not an int"),
        float: (True, "true, not a number"),
        bool: (1, "the int 1, not a bool"),
    }
    return cases[hint]


def _nullable(hint: Any) -> bool:
    return type(None) in typing.get_args(hint)


def _inner(hint: Any) -> Any:
    (inner,) = [arg for arg in typing.get_args(hint) if arg is not type(None)]
    return inner


def full(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: sample(hints[f.name], f.name) for f in dataclasses.fields(cls)}


def required(cls: type[Any]) -> dict[str, Any]:
    hints = typing.get_type_hints(cls)
    return {f.name: sample(hints[f.name], f.name) for f in dataclasses.fields(cls)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


def record_of(cls: type[Any], payload: dict[str, Any]) -> dict[str, Any]:
    """The record a payload decodes to, worked out from the field types: defaults filled
    in, ints in float fields made floats, unknown keys dropped."""
    hints = typing.get_type_hints(cls)
    out = {}
    for field in dataclasses.fields(cls):
        if field.name in payload:
            out[field.name] = _value_of(hints[field.name], payload[field.name])
        elif field.default is not dataclasses.MISSING:
            out[field.name] = field.default
        elif field.default_factory is not dataclasses.MISSING:
            out[field.name] = field.default_factory()
        else:
            raise AssertionError(f"{cls.__name__}.{field.name} is required")
    return out


def _value_of(hint: Any, value: Any) -> Any:
    if value is None:
        return None
    if _nullable(hint):
        return _value_of(_inner(hint), value)
    origin = typing.get_origin(hint)
    if origin is list:
        return [_value_of(typing.get_args(hint)[0], v) for v in value]
    if origin is dict:
        return {k: _value_of(typing.get_args(hint)[1], v) for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        return record_of(hint, value)  # type: ignore[arg-type]
    if hint is float:
        return float(value)
    return value


# ---- routes ------------------------------------------------------------------------------


def routes(name: str) -> tuple[Route, Route | None]:
    """The route of the plain vector, and of the encrypted one (None when the daemon sends
    the kind in plain everywhere)."""
    fed = _federation_route(name)
    plain = _local_route(name) or fed
    assert plain is not None, f"{name} travels nowhere"
    encrypted = fed if spec.federation_payload(name) == "encrypted" else None
    return plain, encrypted


def _local_route(name: str) -> Route | None:
    for actor in spec.ACTORS:
        if name in {spec.kind_name_of(cls) for cls in actor.accepts or ()}:
            src = "alpha/peer" if actor.name == "orchestrator" else "alpha/orchestrator"
            return Route(f"loc.alpha.{actor.name}.{name}", src, f"alpha/{actor.name}",
                         f"alpha/{actor.name}", g.ALPHA)
    if name in ("ack", "error"):
        return Route(LOCAL_INBOX, "alpha/memory", "alpha/orchestrator", "alpha", g.ALPHA,
                     request="log_append")
    if name in spec.federation_kinds():
        return None
    for request, replies in spec.REPLIES.items():
        if name in replies:
            (actor,) = [a for a in spec.ACTORS
                        if request in {spec.kind_name_of(c) for c in a.accepts or ()}]
            return Route(LOCAL_INBOX, f"alpha/{actor.name}", "alpha/orchestrator", "alpha",
                         g.ALPHA, request=request)
    return None


def _federation_route(name: str) -> Route | None:
    for op, cls in spec.REQUESTS.items():
        if spec.kind_name_of(cls) == name:
            return Route(f"fed.req.beta.alpha.{op}", "alpha/peer", "beta/peer", "beta/peer",
                         g.ALPHA)
    for op, cls in spec.COMMANDS.items():
        if spec.kind_name_of(cls) == name:
            return Route(f"fed.cmd.beta.alpha.{op}", "alpha/peer", "beta/peer", "beta/peer",
                         g.ALPHA)
    requests = {spec.kind_name_of(cls) for cls in spec.REQUESTS.values()}
    for request, replies in spec.REPLIES.items():
        if name in replies and request in requests:
            return Route(FED_INBOX, "beta/peer", "alpha/peer", "alpha", g.BETA, request=request)
    if name == "error":
        return Route(FED_INBOX, "beta/peer", "alpha/peer", "alpha", g.BETA, request="talk")
    if name in ledger.ENTRY_KINDS:
        address = f"alpha/{subjects.LEDGER_ACTOR}"
        return Route(subjects.ledger("alpha"), address, address, address, g.ALPHA)
    if name in spec.EVENTS:
        actor = "peer" if name == "heartbeat" else "coder"
        token = "heartbeat" if name == "heartbeat" else SAMPLE_STR["type"]
        return Route(f"fed.evt.alpha.{actor}.{token}", f"alpha/{actor}", "*", "beta", g.ALPHA)
    return None


# ---- vectors -----------------------------------------------------------------------------


class Steps:
    """The steps of one vector file, each with its own id and timestamp."""

    def __init__(self, name: str, route: Route) -> None:
        self.name = name
        self.route = route
        self.steps: list[dict[str, Any]] = []

    def body(self, payload: Any, *, enc: bool = False) -> dict[str, Any]:
        n = len(self.steps)
        corr = None if self.route.request is None else g.msg_id(f"kind {self.name} request")
        return g.fields(id=g.msg_id(f"kind {self.name} {self.route.subject} {n}"),
                        src=self.route.src, dst=self.route.dst, subj=self.route.subject,
                        typ=self.name, ts=g.NOW_MS - 100 - n, corr=corr, enc=enc,
                        payload=payload)

    def accepted(self, payload: dict[str, Any], note: str) -> None:
        cls = kinds.kinds()[self.name]
        record = record_of(cls, payload)
        _agrees(self.name, payload, record)
        body = self.body(payload)
        step = g.ok(g.wire(self.route.signer, g.pack(body)), body, note)
        step["expect"]["record"] = g.as_json(record)
        self.steps.append(step)

    def refused(self, payload: dict[str, Any], note: str) -> None:
        _agrees(self.name, payload, None)
        body = self.body(payload)
        self.steps.append(g.error(g.wire(self.route.signer, g.pack(body)), "bad_payload", note))

    def sealed(self, payload: dict[str, Any], note: str, *, valid: bool = True,
               recipient: SigningKey | None = None) -> None:
        """An encrypted step: `open` accepts it; decrypting by the receiving entity gives
        the record, or bad_payload."""
        cls = kinds.kinds()[self.name]
        record = record_of(cls, payload) if valid else None
        _agrees(self.name, payload, record)
        if recipient is None:
            recipient = self._recipient()
        else:
            record = None  # sealed for another key: it does not decrypt
        n = len(self.steps)
        nonce = hashlib.sha256(f"entityd/v1 kind vector nonce {self.name} {n}".encode()
                               ).digest()[:24]
        box = Box(self.route.signer.to_curve25519_private_key(),
                  recipient.verify_key.to_curve25519_public_key())
        body = self.body(bytes(box.encrypt(g.pack(payload), nonce)), enc=True)
        step = g.ok(g.wire(self.route.signer, g.pack(body)), body, note)
        step["encryption"] = {"recipient_seed": bytes(self._recipient()).hex(),
                              "nonce": nonce.hex(), "plaintext_payload": g.as_json(payload)}
        if record is None:
            step["expect"]["record_error"] = "bad_payload"
        else:
            step["expect"]["record"] = g.as_json(record)
        self.steps.append(step)

    def _recipient(self) -> SigningKey:
        return g.BETA if self.route.signer is g.ALPHA else g.ALPHA


def _agrees(name: str, payload: dict[str, Any], record: dict[str, Any] | None) -> None:
    """Stop the generator when the reference decoder disagrees with a worked-out result."""
    try:
        decoded = kinds.encode(kinds.decode(name, payload))
    except BadPayload as exc:
        if record is not None:
            raise AssertionError(f"{name}: decode refuses a valid payload: {exc}") from None
        return
    if record is None:
        raise AssertionError(f"{name}: decode accepts {payload!r}, which should be bad_payload")
    if decoded != record:
        raise AssertionError(f"{name}: decode gives {decoded!r}, expected {record!r}")


def plain_vector(name: str, route: Route) -> dict[str, Any]:
    cls = kinds.kinds()[name]
    hints = typing.get_type_hints(cls)
    steps = Steps(name, route)
    steps.accepted(full(cls), "every field present")
    if required(cls) != full(cls):
        steps.accepted(required(cls), "the required fields only: the others take their "
                                      "defaults")
    nullable = {f.name: None for f in dataclasses.fields(cls) if _nullable(hints[f.name])}
    if nullable:
        steps.accepted(required(cls) | nullable, "nil for every field whose type allows nil")
    for field in dataclasses.fields(cls):
        if field.name in required(cls):
            payload = {k: v for k, v in full(cls).items() if k != field.name}
            steps.refused(payload, f"'{field.name}' missing (it is required)")
    for field in dataclasses.fields(cls):
        bad = wrong(hints[field.name], field.name)
        if bad is not None:
            steps.refused(full(cls) | {field.name: bad[0]}, f"'{field.name}': {bad[1]}")
    not_nil = [f.name for f in dataclasses.fields(cls)
               if hints[f.name] is not Any and not _nullable(hints[f.name])]
    if not_nil:
        steps.refused(full(cls) | {not_nil[0]: None}, f"'{not_nil[0]}': nil, which its type "
                      "does not allow (nil is not the default)")
    return _file(name, f"Kind `{name}` in plain on {route.subject}: valid payloads with "
                 "their decoded record (defaults filled in), and each field missing or of "
                 "another type refused as bad_payload.", route, steps)


def encrypted_vector(name: str, route: Route) -> dict[str, Any]:
    cls = kinds.kinds()[name]
    steps = Steps(name, route)
    steps.sealed(full(cls), "every field present, encrypted")
    if required(cls) != full(cls):
        steps.sealed(required(cls), "the required fields only, encrypted")
    for field in dataclasses.fields(cls):
        if field.name in required(cls):
            payload = {k: v for k, v in full(cls).items() if k != field.name}
            steps.sealed(payload, f"'{field.name}' missing inside the ciphertext: open "
                         "accepts the envelope, its payload is bad_payload", valid=False)
            break
    steps.sealed(full(cls), "sealed for another entity's key (gamma's): open accepts the "
                 "envelope, the payload does not decrypt: bad_payload", recipient=g.GAMMA)
    return _file(f"{name}_encrypted", f"Kind `{name}` encrypted end to end on "
                 f"{route.subject} (section 12), as the reference sends it: open() accepts "
                 "each envelope and returns the ciphertext; the receiving entity decrypts "
                 "it (encryption.recipient_seed) to the record, or refuses it as "
                 "bad_payload.", route, steps)


def _file(name: str, description: str, route: Route, steps: Steps) -> dict[str, Any]:
    keyring = [g.ALPHA, g.BETA]
    return g.vector(name, description, signer=route.signer, keyring=keyring,
                    subject=route.subject, local=route.local, steps=steps.steps)


def render() -> dict[str, str]:
    """File name -> text of every kind vector."""
    files = {}
    for name in spec.spec_kinds():
        plain, encrypted = routes(name)
        vectors = [plain_vector(name, plain)]
        if encrypted is not None:
            vectors.append(encrypted_vector(name, encrypted))
        for data in vectors:
            files[f"{data['name']}.json"] = json.dumps(data, indent=2) + "\n"
    return files


def write(directory: Path = DIRECTORY) -> int:
    """Write every kind vector into `directory`, removing the ones of kinds gone."""
    files = render()
    directory.mkdir(exist_ok=True)
    for stale in directory.glob("*.json"):
        if stale.name not in files:
            stale.unlink()
    for name, text in files.items():
        path = directory / name
        if not path.exists() or path.read_text(encoding="utf-8") != text:
            path.write_text(text, encoding="utf-8")
    return len(files)


def committed(directory: Path = DIRECTORY) -> dict[str, str]:
    return {path.name: path.read_text(encoding="utf-8")
            for path in sorted(directory.glob("*.json"))}
