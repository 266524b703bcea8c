"""The daemon's NATS client parses message headers exactly as nats-py does, faster."""

from __future__ import annotations

import asyncio

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from nats.aio.client import Client

from entityd import bus
from entityd.bus import HeaderClient

LIBRARY = getattr(Client, "_parse_header_lines", None)
needs_library_parser = pytest.mark.skipif(
    LIBRARY is None, reason="this nats-py parses headers another way: nothing to match")

# Bytes a header block is made of, the awkward ones often: separators, every kind of
# whitespace str.isspace() knows in ASCII (\x1c-\x1f too), non-ASCII and bad UTF-8.
PIECES = st.sampled_from([b":", b": ", b"\r\n", b" ", b"\t", b"\x0b", b"\x0c", b"\x1c",
                          b"\x1f", b"\x85", b"\xc3\xa9", b"\xff", b"Nats-Sequence",
                          b"Nats-Subject", b"x", b"12345", b"fed.ledger.entity-a", b"\r",
                          b"\n", b"\x00"])
BLOCKS = st.lists(st.one_of(PIECES, st.binary(max_size=12)), max_size=40).map(b"".join)


@needs_library_parser
@settings(max_examples=2000, deadline=None)
@given(BLOCKS)
def test_any_header_block_parses_as_the_library_parses_it(raw: bytes) -> None:
    assert HeaderClient._parse_header_lines(raw) == LIBRARY(raw)


@needs_library_parser
def test_a_direct_get_answer_parses_as_the_library_parses_it() -> None:
    raw = (b"Nats-Stream: LEDGER\r\nNats-Subject: fed.ledger.entity-a\r\n"
           b"Nats-Sequence: 12345\r\nNats-Time-Stamp: 2026-12-06T07:12:00.123456789Z\r\n"
           b"Nats-Num-Pending: 100\r\nBad Name: x\r\nNats-Msg-Id:\tabc \r\n\r\n")
    parsed = HeaderClient._parse_header_lines(raw)
    assert parsed == LIBRARY(raw)
    assert parsed["Nats-Sequence"] == "12345" and parsed["Nats-Msg-Id"] == "abc"
    assert "Bad Name" not in parsed


def test_the_daemon_connects_with_it_and_reads_headers_off_a_real_server(nats_server) -> None:
    async def scenario() -> None:
        nc = await bus.connect(nats_server.url, entity="entity-a", client_name="t",
                               retry_forever=False)
        try:
            assert isinstance(nc, HeaderClient)
            sub = await nc.subscribe("h.t")
            await nc.publish("h.t", b"x", headers={"Nats-Msg-Id": "m1", "A": "b c"})
            msg = await sub.next_msg(timeout=5)
            assert msg.headers == {"Nats-Msg-Id": "m1", "A": "b c"}
        finally:
            await nc.close()
    asyncio.run(scenario())
