"""Message kinds: payload schemas are checked on decode, records round-trip through msgpack."""

from __future__ import annotations

import ast
import dataclasses
import subprocess
import sys
from typing import Any

import msgpack
import pytest

from protocol import (
    ActorStatus,
    BadPayload,
    Error,
    Event,
    Ping,
    Pong,
    Status,
    StatusGet,
    UnknownKind,
    kind,
    kinds,
)

STATUS = Status(
    entity="alpha",
    public_key="ab" * 32,
    uptime_s=12.5,
    nats_server="nats://127.0.0.1:4222",
    actors=[ActorStatus("coder", "running", 0), ActorStatus("tool", "restarting", 3)],
    started_at=1767225587.5,
    rejected={"bad_signature": 2},
)
RECORDS = [
    Ping(),
    Pong(),
    Error(code="busy", message="try later"),
    StatusGet(),
    STATUS,
    Event(type="commit", actor="coder", data={"sha": "4b82", "files": [1, 2], "ok": True}),
]


def status_payload(**changes: Any) -> dict[str, Any]:
    return kinds.encode(STATUS) | changes


def actor_payload(**changes: Any) -> dict[str, Any]:
    return {"name": "coder", "state": "running", "restarts": 0} | changes


@pytest.mark.parametrize("record", RECORDS, ids=lambda r: type(r).__name__)
def test_records_round_trip_through_msgpack(record: object) -> None:
    name = kinds.kind_name(record)
    wire = msgpack.packb(kinds.encode(record), use_bin_type=True)
    assert kinds.decode(name, msgpack.unpackb(wire)) == record


def test_encode_gives_plain_maps_all_the_way_down() -> None:
    payload = kinds.encode(STATUS)
    assert payload["actors"][1] == {"name": "tool", "state": "restarting", "restarts": 3}
    assert kinds.encode(Ping()) == {}


def test_the_kinds_of_version_1_are_registered_under_their_wire_names() -> None:
    registered = kinds.kinds()
    for record in RECORDS:
        assert registered[kinds.kind_name(record)] is type(record)
    assert {"ping", "pong", "error", "status_get", "status", "event"} <= set(registered)
    assert kinds.is_kind("status") and not kinds.is_kind("Status")


@pytest.mark.parametrize("value", [True, 1.0, "1", None, [1]])
def test_an_int_field_takes_only_an_int(value: Any) -> None:
    with pytest.raises(BadPayload):
        kinds.decode("status", status_payload(actors=[actor_payload(restarts=value)]))


@pytest.mark.parametrize("value", [True, False, "12.5", None])
def test_a_float_field_takes_no_bool_or_str(value: Any) -> None:
    with pytest.raises(BadPayload):
        kinds.decode("status", status_payload(uptime_s=value))


def test_a_float_field_widens_an_int() -> None:
    status = kinds.decode("status", status_payload(uptime_s=12))
    assert status.uptime_s == 12.0 and type(status.uptime_s) is float


@pytest.mark.parametrize("value", [1, b"busy", None, True])
def test_a_str_field_takes_only_a_str(value: Any) -> None:
    with pytest.raises(BadPayload):
        kinds.decode("error", {"code": value, "message": "x"})


def test_nested_records_are_decoded_and_checked() -> None:
    status = kinds.decode("status", status_payload())
    assert status.actors == [
        ActorStatus("coder", "running", 0),
        ActorStatus("tool", "restarting", 3),
    ]
    assert all(type(actor) is ActorStatus for actor in status.actors)
    for actors in ({"coder": actor_payload()}, [None], ["coder"], [{"name": "coder"}]):
        with pytest.raises(BadPayload):
            kinds.decode("status", status_payload(actors=actors))


@pytest.mark.parametrize("rejected", [{"x": True}, {"x": "1"}, {1: 1}, [], None])
def test_a_map_field_checks_its_keys_and_values(rejected: Any) -> None:
    with pytest.raises(BadPayload):
        kinds.decode("status", status_payload(rejected=rejected))


def test_an_any_map_takes_any_values_but_only_str_keys() -> None:
    data = {"n": 1, "f": 1.5, "l": [None, b"x"], "m": {"k": True}}
    assert kinds.decode("event", {"type": "t", "actor": "a", "data": data}).data == data
    with pytest.raises(BadPayload):
        kinds.decode("event", {"type": "t", "actor": "a", "data": {1: "x"}})


@pytest.mark.parametrize(
    ("typ", "payload"),
    [
        ("error", {"code": "busy"}),
        ("status", {k: v for k, v in kinds.encode(STATUS).items() if k != "nats_server"}),
        ("event", {"type": "commit"}),
    ],
)
def test_a_missing_required_field_is_rejected(typ: str, payload: dict[str, Any]) -> None:
    with pytest.raises(BadPayload):
        kinds.decode(typ, payload)


def test_missing_optional_fields_take_their_defaults() -> None:
    payload = {k: v for k, v in kinds.encode(STATUS).items() if k not in ("started_at", "rejected")}
    status = kinds.decode("status", payload)
    assert (status.started_at, status.rejected) == (0.0, {})
    assert kinds.decode("event", {"type": "t", "actor": "a"}).data == {}


def test_unknown_fields_are_ignored_at_every_level() -> None:
    payload = status_payload(version=2, actors=[actor_payload(pid=7)])
    status = kinds.decode("status", payload)
    assert status.actors == [ActorStatus("coder", "running", 0)]
    assert kinds.decode("ping", {"sent_by": "v2", 3: None}) == Ping()


@pytest.mark.parametrize("payload", [None, [], "", b"", 0])
def test_a_payload_must_be_a_map(payload: Any) -> None:
    with pytest.raises(BadPayload):
        kinds.decode("ping", payload)


def test_an_unknown_kind_is_rejected() -> None:
    with pytest.raises(UnknownKind) as info:
        kinds.decode("launch", {})
    assert info.value.reason == "unknown_kind"


def test_registration_refuses_non_dataclasses_and_taken_names() -> None:
    with pytest.raises(TypeError):
        kind("not_a_dataclass")(type("Plain", (), {}))

    @dataclasses.dataclass(frozen=True)
    class Impostor:
        pass

    with pytest.raises(ValueError):
        kind("ping")(Impostor)
    assert kinds.kinds()["ping"] is Ping
    with pytest.raises(TypeError):
        kinds.kind_name(Impostor())


def test_importing_the_message_kinds_loads_no_actor() -> None:
    """entityctl needs the kinds, not the actors: importing a message module must not
    load every actor and the LLM client (it took 0.8 s when it did)."""
    code = ("import sys, actors.messages, actors.peer.messages; "
            "print(sorted(m for m in sys.modules if m.startswith(('actors.', 'openai'))))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout
    loaded = ast.literal_eval(out)
    assert "openai" not in loaded
    assert not [m for m in loaded if m.endswith(("orchestrator", "coder", "tool", "memory"))]
