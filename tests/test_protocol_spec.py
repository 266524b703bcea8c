"""PROTOCOL.md against the code: the kinds section is the registry's, and every reason code
the code can send or count is listed."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

import pytest

import protocol
from actors import spec
from protocol import kinds

SPEC_PATH = Path(protocol.__file__).parent / "PROTOCOL.md"


def spec_text() -> str:
    return SPEC_PATH.read_text(encoding="utf-8")


def test_kinds_section_is_the_registry() -> None:
    wanted = spec.splice(spec_text(), spec.render())
    assert wanted == spec_text(), (
        "PROTOCOL.md's kinds section differs from the registry: "
        "run `python -m actors.spec --write`"
    )


def test_check_fails_on_a_stale_section(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    stale = tmp_path / "PROTOCOL.md"
    stale.write_text(spec_text().replace("| `code` | str | required |", "| `code` | int |"),
                     encoding="utf-8")
    monkeypatch.setattr(spec, "SPEC", stale)
    assert spec.main(["--check"]) == 1
    assert spec.main(["--write"]) == 0
    assert spec.main(["--check"]) == 0
    assert stale.read_text(encoding="utf-8") == spec_text()


def test_every_kind_the_daemon_sends_is_in_the_spec() -> None:
    registered = spec.spec_kinds()
    assert len(registered) >= 52
    text = spec_text()
    for name, cls in registered.items():
        assert f"#### `{name}`" in text, name
        for field in dataclasses.fields(cls):
            assert f"| `{field.name}` |" in text, (name, field.name)


def test_every_kind_travels_somewhere() -> None:
    for name in spec.spec_kinds():
        assert spec.travels(name), f"{name}: no actor takes it, no operation, reply or event"


def test_every_field_type_is_in_the_grammar() -> None:
    for name, cls in spec.spec_kinds().items():
        for hint in typing.get_type_hints(cls).values():
            spec.type_name(hint)  # raises for a type outside PROTOCOL.md §11
    with pytest.raises(TypeError):
        spec.type_name(set[str])
    with pytest.raises(TypeError):
        spec.type_name(dict[int, str])


def test_replies_name_kinds_their_actor_builds() -> None:
    """REPLIES is written by hand: each reply's record is built in the module of an actor
    that takes the request."""
    registered = spec.spec_kinds()
    for request, replies in spec.REPLIES.items():
        assert request in registered, request
        for reply in replies:
            assert reply in registered, reply


def test_federation_payloads_follow_the_link() -> None:
    assert spec.federation_payload("talk") == "encrypted"
    assert spec.federation_payload("ping") == "plain"
    assert spec.federation_payload("heartbeat") == "plain"
    assert spec.federation_payload("error") == "plain"
    assert spec.federation_payload("memory_add") == "local only"
    assert spec.federation_payload("wake") == "encrypted"


def test_protocol_kinds_are_documented() -> None:
    for name, cls in kinds.kinds().items():
        if cls.__module__ == kinds.__name__:
            assert name in spec.spec_kinds()
