"""PROTOCOL.md against the code: the kinds section is the registry's, and every reason code
the code can send or count is listed."""

from __future__ import annotations

import dataclasses
import inspect
import json
import re
import typing
from pathlib import Path
from typing import Any

import pytest
from nacl.signing import SigningKey

import protocol
from actors import kind_vectors, spec
from protocol import Envelope, Keyring, ProtocolError, ReplayGuard, Sealer, kinds, reasons
from protocol.vectors.generate import as_json

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
    for cls in spec.spec_kinds().values():
        for hint in typing.get_type_hints(cls).values():
            spec.type_name(hint)  # raises for a type outside PROTOCOL.md §11
    with pytest.raises(TypeError):
        spec.type_name(set[str])
    with pytest.raises(TypeError):
        spec.type_name(dict[int, str])


def test_replies_name_kinds_their_actor_builds() -> None:
    """REPLIES is written by hand: each reply's record is named where the request is
    handled (the module of an actor that takes it, or the peer package for federation
    requests); `ack` is what a handler returning nothing is answered with."""
    registered = spec.spec_kinds()
    name_of = {cls: name for name, cls in registered.items()}
    handlers: dict[str, list[Path]] = {}
    for actor in spec.ACTORS:
        module = Path(inspect.getfile(actor))
        files = sorted(module.parent.glob("*.py")) if module.name == "actor.py" else [module]
        for cls in actor.accepts or ():
            handlers.setdefault(name_of[cls], []).extend(files)
    peer_files = sorted(Path(inspect.getfile(spec.PeerActor)).parent.glob("*.py"))
    for record in spec.REQUESTS.values():
        handlers.setdefault(name_of[record], []).extend(peer_files)
    for request, replies in spec.REPLIES.items():
        assert request in handlers, f"{request}: no actor or federation operation takes it"
        code = "".join(path.read_text(encoding="utf-8") for path in handlers[request])
        for reply in replies:
            assert reply in registered, reply
            if reply != "ack":
                assert re.search(rf"\b{registered[reply].__name__}\b", code), (request, reply)


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


# ---- reason codes ------------------------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
CODE_DIRS = ("actors", "entityd", "protocol")
# A code written as a literal where a message or a refusal is built: the code must name
# protocol.reasons' constant instead.
LITERALS = (
    re.compile(r'\bError\(\s*(?:code\s*=\s*)?"([a-z_]+)"'),
    re.compile(r'^\s+reason\s*=\s*"([a-z_]+)"', re.MULTILINE),
    re.compile(r'\bCommandResult\(\s*(?:True|False)\s*,\s*"([a-z_]+)"'),
    re.compile(r'\.code\s*[!=]=\s*"([a-z_]+)"'),
)
CONSTANT = re.compile(r"\breasons\.([A-Z_]+)\b")
# ProtocolError's own reason: never on the wire, since only its subclasses are raised.
BASE_REASON = protocol.ProtocolError.reason


def sources() -> dict[str, str]:
    return {
        str(path.relative_to(ROOT)): path.read_text(encoding="utf-8")
        for directory in CODE_DIRS
        for path in sorted((ROOT / directory).rglob("*.py"))
    }


def literals(text: str) -> list[str]:
    return [code for pattern in LITERALS for code in pattern.findall(text)]


def table_codes(heading: str) -> list[str]:
    """The codes in the first column of the table under `heading` in PROTOCOL.md."""
    text = spec_text()
    start = text.index(heading)
    end = text.find("\n#", start + len(heading))
    section = text[start:end if end != -1 else None]
    return re.findall(r"^\| `([a-z_]+)` \|", section, re.MULTILINE)


def protocol_error_reasons() -> set[str]:
    """The reasons of every ProtocolError subclass the application defines (but a
    family's base that keeps ProtocolError's reason, such as protocol.ledger's
    LedgerError: only its subclasses are raised)."""
    import actors.peer.actor  # noqa: F401
    import entityd.runtime  # noqa: F401

    found = set()
    pending = [protocol.ProtocolError]
    while pending:
        cls = pending.pop()
        pending.extend(cls.__subclasses__())
        family_base = cls.reason == BASE_REASON and cls.__subclasses__()
        if cls.__module__.split(".")[0] in CODE_DIRS and not family_base:
            found.add(cls.reason)
    return found


def test_the_literal_scan_finds_what_it_looks_for() -> None:
    planted = ('Error("busy", "x")\n    reason = "stray_reply"\n'
               'CommandResult(True, "done", "")\nif exc.code == "not_found":\n')
    assert literals(planted) == ["busy", "stray_reply", "done", "not_found"]


def test_no_code_is_written_as_a_literal() -> None:
    found = {name: codes for name, text in sources().items()
             if name != "protocol/errors.py" and (codes := literals(text))}
    base = literals((ROOT / "protocol/errors.py").read_text(encoding="utf-8"))
    assert base == [BASE_REASON]
    assert not found, f"codes written as literals, not protocol.reasons' constants: {found}"


def test_every_constant_named_is_registered_and_every_registered_code_is_used() -> None:
    names = {name: getattr(reasons, name) for name in dir(reasons) if name.isupper()
             and isinstance(getattr(reasons, name), str)}
    used = {constant for path, text in sources().items() if path != "protocol/reasons.py"
            for constant in CONSTANT.findall(text)}
    assert used <= set(names), f"reasons has no {used - set(names)}"
    codes = {names[name] for name in used}
    unused = (set(reasons.REASONS) | set(reasons.RESULT_CODES)) - codes
    assert not unused, f"registered codes nothing sends or counts: {unused}"
    assert protocol_error_reasons() <= set(reasons.REASONS)
    assert set(protocol.REASON_CODES) <= set(reasons.REASONS)


def test_the_reason_tables_are_the_registry() -> None:
    assert spec.generated(spec_text()) == spec_text(), (
        "PROTOCOL.md differs from protocol/reasons.py: run `python -m actors.spec --write`")
    assert table_codes("### 9.2 Every reason code") == list(reasons.REASONS)
    assert table_codes("### 9.3 Command result codes") == list(reasons.RESULT_CODES)


def test_open_codes_table_is_reason_codes() -> None:
    assert table_codes("## 9. Reason codes") == list(protocol.REASON_CODES)


def test_only_subclasses_of_protocol_error_are_raised() -> None:
    direct = re.compile(r"\bProtocolError\(")
    for name, text in sources().items():
        for line in text.splitlines():
            if direct.search(line) and not line.lstrip().startswith("class "):
                raise AssertionError(f"{name}: {line.strip()} (raise a subclass with a code)")


# ---- vectors for every kind ----------------------------------------------------------------

KIND_VECTORS = sorted(kind_vectors.DIRECTORY.glob("*.json"))


def test_kind_vectors_are_the_generators_output() -> None:
    assert kind_vectors.committed() == kind_vectors.render(), (
        "protocol/vectors/kinds differs from the registry: run `python -m actors.spec --write`")


def test_every_kind_has_vectors_and_every_encrypted_kind_an_encrypted_one() -> None:
    names = {path.stem for path in KIND_VECTORS}
    for name in spec.spec_kinds():
        assert name in names, name
        encrypted = spec.federation_payload(name) == "encrypted"
        assert (f"{name}_encrypted" in names) is encrypted, name


def test_kind_vector_write_removes_kinds_gone(tmp_path: Path) -> None:
    (tmp_path / "retired_kind.json").write_text("{}", encoding="utf-8")
    assert kind_vectors.write(tmp_path) == len(kind_vectors.render())
    assert kind_vectors.committed(tmp_path) == kind_vectors.render()


@pytest.mark.parametrize("path", KIND_VECTORS, ids=lambda p: p.stem)
def test_kind_vector(path: Path) -> None:
    vector = json.loads(path.read_text(encoding="utf-8"))
    keyring = Keyring()
    for entry in vector["keyring"]:
        keyring.add(bytes.fromhex(entry["public_key"]), entry["entity"])
    guard = ReplayGuard(window_ms=vector["window_ms"], future_ms=vector["future_ms"])
    accepted = refused = 0
    for index, step in enumerate(vector["steps"]):
        where = f"step {index} ({step['note']})"
        expect = step["expect"]

        def run(step: dict[str, Any] = step) -> Envelope:
            return protocol.open(bytes.fromhex(step["wire"]), subject=vector["subject"],
                                 local=vector["local"], keyring=keyring, replay=guard,
                                 now=vector["now_ms"], max_bytes=vector["max_bytes"])

        if "error" in expect:
            with pytest.raises(ProtocolError) as info:
                run()
            assert info.value.reason == expect["error"], f"{where}: {info.value}"
            refused += 1
            continue
        envelope = run()
        assert envelope.typ == path.stem.removesuffix("_encrypted"), where
        assert {n: as_json(getattr(envelope, n)) for n in expect["ok"]} == expect["ok"], where
        if envelope.enc:
            recipient = SigningKey(bytes.fromhex(step["encryption"]["recipient_seed"]))
            sealer = Sealer(recipient)
            if "record_error" in expect:
                with pytest.raises(ProtocolError) as info:
                    sealer.decrypt(envelope, vector["max_bytes"])
                assert info.value.reason == expect["record_error"], where
                continue
            record = sealer.decrypt(envelope, vector["max_bytes"])
        else:
            record = envelope.message
        assert as_json(kinds.encode(record)) == expect["record"], where
        accepted += 1
    assert accepted >= 1
    if not path.stem.endswith("_encrypted") and dataclasses.fields(
            spec.spec_kinds()[path.stem]):
        assert refused >= 1, "a kind with fields has its refusals"
