"""What the daemon reads from JSON an attacker may have written (actors/untrusted.py) and
the whole numbers a tool takes (toolbox.integer): every failure is the parser's own error
or a tool's refusal, and nothing read holds what msgpack and SQLite cannot carry."""

from __future__ import annotations

import json

import msgpack
import pytest

from actors.agent.toolbox import ToolFailed, integer
from actors.untrusted import INT_MAX, INT_MIN, TOO_DEEP, json_loads


@pytest.mark.parametrize("number", [INT_MIN, -1, 0, INT_MAX])
def test_integers_within_64_bits_are_read(number: int) -> None:
    assert json_loads(f'{{"n": {number}}}') == {"n": number}


@pytest.mark.parametrize("literal", [
    str(INT_MAX + 1), str(INT_MIN - 1), str(2**64), "1" * 5000, "-" + "9" * 4301])
def test_an_integer_past_64_bits_is_a_decoding_error(literal: str) -> None:
    with pytest.raises(json.JSONDecodeError, match="past 64 bits"):
        json_loads(f'{{"n": [1, {literal}]}}')


@pytest.mark.parametrize("document", [
    '{"a": "x\\ud800y"}', '{"\\udfff": 1}', '[[{"c": "\\uDBFF"}]]', b'"\\ud800"', '"\ud800"'])
def test_a_lone_surrogate_is_a_decoding_error(document: str | bytes) -> None:
    with pytest.raises(json.JSONDecodeError, match="lone surrogate"):
        json_loads(document)


def test_a_surrogate_pair_is_one_character_and_packs() -> None:
    read = json_loads('{"ok": "\\ud83d\\ude00"}')
    assert read == {"ok": "\U0001f600"}
    assert msgpack.unpackb(msgpack.packb(read)) == read


def test_a_document_nested_too_deeply_is_a_decoding_error() -> None:
    with pytest.raises(json.JSONDecodeError, match=TOO_DEEP):
        json_loads("[" * 100_000 + "]" * 100_000)


@pytest.mark.parametrize(("value", "number"), [
    (3, 3), ("3", 3), (" -4 ", -4), (3.0, 3), (INT_MAX, INT_MAX), (str(INT_MIN), INT_MIN)])
def test_a_whole_number_argument(value: object, number: int) -> None:
    assert integer(value, "priority") == number


@pytest.mark.parametrize("value", [
    INT_MAX + 1, str(INT_MAX + 1), float(2**63), 2**64, "1" * 5000, "x", 2.5, True, None,
    [1]])
def test_an_argument_that_is_no_64_bit_whole_number_is_refused(value: object) -> None:
    with pytest.raises(ToolFailed, match="priority must be a whole number"):
        integer(value, "priority")
