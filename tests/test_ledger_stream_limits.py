"""The LEDGER stream's bounds on a real nats-server: it keeps nothing larger than an entry
can be (a stream made before it had that limit is given it), and a read holds a bounded
number of bytes per batch whatever the stream holds, reading on to the end all the same."""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import hashlib
import io
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any

import nats
import nats.js.errors
import pytest
from nacl.signing import SigningKey
from nats.js.api import StreamConfig

import protocol
from actors.ledger.stream import (
    MAX_ENTRY_BYTES,
    READ_BATCH,
    READ_MAX_BYTES,
    STREAM,
    LedgerStream,
    Stored,
    stream_config,
)
from entityd import federation
from entityd.app import economy
from entityd.federated import FederationAccess
from entityd.transport import Transport
from protocol import Keyring
from protocol.ledger import Hold, Link, Mint, Post, Rate, Transfer, Void, seal_entry
from protocol.ledger.entries import MAX_TEXT
from tests.helpers import NATS_SERVER, NatsServer, ServerProcess, child_env, free_port

pytestmark = pytest.mark.timeout(60)
ME = "entity-a"
LONGEST_NAME = "n" * 32
WIDEST_TEXT = "\U0010ffff" * MAX_TEXT  # MAX_TEXT characters of four UTF-8 bytes each
BIGGEST = 2**63 - 1


def unlimited_config() -> StreamConfig:
    """LEDGER as it was made before it had a size limit."""
    return dataclasses.replace(stream_config(), max_msg_size=None)


def largest_entries() -> list[Link]:
    """Each kind of entry at its largest: every text and name as long as a reader takes."""
    seq, prev = BIGGEST, b"\xff" * 32
    return [
        Mint(seq, prev, account=LONGEST_NAME, amount=BIGGEST, memo=WIDEST_TEXT),
        Transfer(seq, prev, to="m" * 32, amount=BIGGEST, memo=WIDEST_TEXT),
        Hold(seq, prev, to="m" * 32, amount=BIGGEST, expires_at=2**64 - 1, task=WIDEST_TEXT),
        Post(seq, prev, hold=b"\xff" * 16, amount=BIGGEST),
        Void(seq, prev, hold=b"\xff" * 16, reason=WIDEST_TEXT),
        Rate(seq, prev, peer="m" * 32, task=WIDEST_TEXT, score=5, note=WIDEST_TEXT),
    ]


def test_the_stream_takes_a_few_times_the_largest_entry_and_nothing_near_max_payload() -> None:
    key = SigningKey(hashlib.sha256(b"test_ledger_stream_limits").digest())
    largest = max(len(seal_entry(key, LONGEST_NAME, record, entry_id=b"\xff" * 16,
                                 ts=2**64 - 1)) for record in largest_entries())
    assert 3 * largest <= MAX_ENTRY_BYTES < protocol.MAX_WIRE_BYTES // 16, largest
    assert stream_config().max_msg_size == MAX_ENTRY_BYTES
    # A batch cut by its bytes still holds many entries of the largest kind.
    assert READ_MAX_BYTES >= 64 * largest


@contextlib.asynccontextmanager
async def opened(url: str, *, create: bool = True) -> AsyncGenerator[tuple[nats.NATS,
                                                                         LedgerStream]]:
    nc = await nats.connect(url)
    key = SigningKey.generate()
    stream = LedgerStream(FederationAccess(Transport(nc, entity=ME, key=key,
                                                     keyring=Keyring())),
                          domain="", timeout=5.0)
    try:
        await stream.start(create=create)
        yield nc, stream
    finally:
        await stream.stop()
        await nc.close()


async def too_large_refused(nc: nats.NATS, size: int) -> None:
    with pytest.raises(nats.js.errors.APIError):
        await nc.jetstream().publish(protocol.subjects.ledger(ME), b"\x00" * size)


async def test_an_entity_on_its_own_makes_the_stream_with_its_limit(
        nats_server: NatsServer) -> None:
    async with opened(nats_server.url) as (nc, stream):
        info = await nc.jetstream().stream_info(STREAM)
        assert info.config.max_msg_size == MAX_ENTRY_BYTES
        await too_large_refused(nc, MAX_ENTRY_BYTES + 1)
        # The limit counts the headers of an append: an entry a little under it is taken.
        seq = await stream.append(ME, b"\x01" * (MAX_ENTRY_BYTES - 512), protocol.new_id(),
                                  0)
        assert [stored.seq for stored in await stream.read(0)] == [seq]


async def test_a_stream_made_before_the_limit_is_given_it_and_still_read(
        nats_server: NatsServer) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(unlimited_config())
        old = b"\x02" * (protocol.MAX_WIRE_BYTES - 1024)  # took then, kept for ever
        await js.publish(protocol.subjects.ledger(ME), old)
    finally:
        await nc.close()
    async with opened(nats_server.url) as (nc, stream):
        have = (await nc.jetstream().stream_info(STREAM)).config
        assert have.max_msg_size == MAX_ENTRY_BYTES
        assert have.deny_delete and have.deny_purge and have.allow_direct
        await too_large_refused(nc, MAX_ENTRY_BYTES + 1)
        assert [stored.data for stored in await stream.read(0)] == [old]


async def test_economy_init_gives_an_unlimited_stream_its_limit(
        nats_server: NatsServer, capsys: pytest.CaptureFixture[str]) -> None:
    nc = await nats.connect(nats_server.url)
    try:
        js = nc.jetstream()
        await js.add_stream(dataclasses.replace(unlimited_config(), max_msg_size=-1))
        assert await economy._init(nc, 1) == 0
        assert (await js.stream_info(STREAM)).config.max_msg_size == MAX_ENTRY_BYTES
        assert "at most" in capsys.readouterr().out
        assert await economy._init(nc, 1) == 0  # then nothing to do
        assert "nothing to do" in capsys.readouterr().out
        await too_large_refused(nc, MAX_ENTRY_BYTES + 1)
    finally:
        await nc.close()


@dataclasses.dataclass
class Hub:
    server: ServerProcess
    treasury: Path
    seed: Path

    def init(self) -> argparse.Namespace:
        return argparse.Namespace(economy_command="init", hub=self.server.url, config=None,
                                  data_dir=self.treasury, replicas=1)

    async def as_treasurer(self) -> nats.NATS:
        return await nats.connect(self.server.url, nkeys_seed=str(self.seed),
                                  inbox_prefix=protocol.subjects.inbox_prefix(
                                      federation.TREASURER))


@contextlib.contextmanager
def hub_server(tmp_path: Path, *, may_update: bool = False) -> Iterator[Hub]:
    """A hub as `hub-conf --treasurer` renders it, with no member; `may_update`: with the
    grant deploy/FEDERATION.md has an operator add for a moment."""
    treasury = tmp_path / "treasury"
    treasurer, seed = federation.make_entity_credentials(federation.TREASURER, treasury)
    port = free_port()
    conf = tmp_path / "hub.conf"
    text = federation.render_hub_conf(
        [], store_dir=tmp_path / "hub-store", port=port, leaf_host="127.0.0.1",
        leaf_port=free_port(), treasurer=treasurer)
    if may_update:
        info = '"$JS.API.STREAM.INFO.LEDGER"'
        assert info in text
        text = text.replace(info, f'{info}, "$JS.API.STREAM.UPDATE.LEDGER"')
    conf.write_text(text)
    server = ServerProcess([NATS_SERVER, "-c", str(conf)], port, tmp_path / "hub.log",
                           child_env())
    server.start()
    try:
        yield Hub(server, treasury, seed)
    finally:
        server.stop()


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[Hub]:
    with hub_server(tmp_path) as made:
        yield made


async def test_a_hubs_treasurer_makes_the_stream_with_its_limit(hub: Hub) -> None:
    with contextlib.redirect_stdout(io.StringIO()):
        assert await economy.run(hub.init()) == 0
    nc = await hub.as_treasurer()
    try:
        assert (await nc.jetstream().stream_info(STREAM)).config.max_msg_size == (
            MAX_ENTRY_BYTES)
    finally:
        await nc.close()


async def test_a_hubs_treasurer_may_not_update_an_unlimited_stream_and_is_told_so(
        hub: Hub, monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    """The treasurer may make LEDGER, not update it (an update could also make it drop
    entries): `economy init` on a hub whose LEDGER predates the limit warns, saying why
    and where the way to apply it is written, and lets the federation start as before."""
    nc = await hub.as_treasurer()
    try:
        await nc.jetstream().add_stream(unlimited_config())  # as it was made before
    finally:
        await nc.close()
    monkeypatch.setattr(economy, "TIMEOUT_S", 2.0)
    assert await economy.run(hub.init()) == 0
    said = capsys.readouterr().err
    assert "warning:" in said and "may not update it" in said and "FEDERATION.md" in said
    nc = await hub.as_treasurer()
    try:
        assert (await nc.jetstream().stream_info(STREAM)).config.max_msg_size == -1
    finally:
        await nc.close()


async def test_with_the_update_granted_for_a_moment_the_treasurer_applies_the_limit(
        tmp_path: Path) -> None:
    with hub_server(tmp_path, may_update=True) as hub:
        nc = await hub.as_treasurer()
        try:
            await nc.jetstream().add_stream(unlimited_config())
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert await economy.run(hub.init()) == 0
            assert f"at most {MAX_ENTRY_BYTES} bytes" in out.getvalue()
            have = (await nc.jetstream().stream_info(STREAM)).config
            assert have.max_msg_size == MAX_ENTRY_BYTES and have.deny_delete
        finally:
            await nc.close()


# ---- reads bounded by bytes ----------------------------------------------------------

ENTRY = 24 * 1024  # a message under the limit, large enough that bytes end a batch first
PER_BATCH = READ_MAX_BYTES // ENTRY + 1  # the server sends past max_bytes by one at most


async def _fill(nc: nats.NATS, sizes: list[int]) -> list[int]:
    js = nc.jetstream()
    seqs = []
    for i, size in enumerate(sizes):
        subject = protocol.subjects.ledger(ME if i % 3 else "entity-b")
        seqs.append((await js.publish(subject, bytes([i % 251]) * size)).seq)
    return seqs


def _held(batch: list[Stored]) -> int:
    return sum(len(stored.data) for stored in batch)


async def test_a_replay_holds_a_bounded_batch_and_reads_on_to_the_end(
        nats_server: NatsServer) -> None:
    """Batches cut short by their bytes are no end: every entry comes, in order, once; the
    last batch ends the read without one more request."""
    n = 3 * PER_BATCH + 5
    async with opened(nats_server.url) as (nc, stream):
        seqs = await _fill(nc, [ENTRY] * n)
        asked = 0
        ask = stream._ask

        async def counted(request: dict[str, Any], route: str = "") -> tuple[str, Any]:
            nonlocal asked
            asked += 1
            assert request["max_bytes"] == READ_MAX_BYTES
            return await ask(request, route)

        stream._ask = counted  # type: ignore[method-assign]
        got: list[int] = []
        sizes = []
        async with contextlib.aclosing(stream.reads(0)) as batches:
            async for batch in batches:
                assert batch, "an empty batch before the end"
                assert _held(batch) <= READ_MAX_BYTES + ENTRY
                sizes.append(len(batch))
                got.extend(stored.seq for stored in batch)
        assert got == seqs
        assert all(size < READ_BATCH for size in sizes) and len(sizes) >= 4, sizes
        assert asked == len(sizes)
        # One chain alone, and one batch at a time, alike.
        mine = [seq for i, seq in enumerate(seqs) if i % 3]
        one: list[int] = []
        async with contextlib.aclosing(
                stream.reads(0, protocol.subjects.ledger(ME))) as batches:
            async for batch in batches:
                one.extend(stored.seq for stored in batch)
        assert one == mine
        after, read = 0, list[int]()
        while batch := await stream.read(after):
            assert _held(batch) <= READ_MAX_BYTES + ENTRY
            read.extend(stored.seq for stored in batch)
            after = batch[-1].seq
        assert read == seqs


async def test_a_replay_of_exactly_full_batches_ends_where_the_stream_does(
        nats_server: NatsServer) -> None:
    async with opened(nats_server.url) as (nc, stream):
        seqs = await _fill(nc, [64] * (2 * READ_BATCH))
        got: list[int] = []
        async with contextlib.aclosing(stream.reads(0)) as batches:
            async for batch in batches:
                assert len(batch) == READ_BATCH
                got.extend(stored.seq for stored in batch)
        assert got == seqs
        assert not stream._pending


async def test_entries_stored_before_the_limit_are_read_one_big_one_a_batch(
        nats_server: NatsServer) -> None:
    """A stream that took megabyte messages before it had its limit: each batch holds at
    most one of them past READ_MAX_BYTES, and the read goes on past them."""
    nc = await nats.connect(nats_server.url)
    try:
        await nc.jetstream().add_stream(unlimited_config())
        big = protocol.MAX_WIRE_BYTES - 1024  # under this server's max_payload (1 MB)
        seqs = await _fill(nc, [big, big, 100, big, 100, 100])
    finally:
        await nc.close()
    async with opened(nats_server.url) as (nc, stream):
        got: list[int] = []
        async with contextlib.aclosing(stream.reads(0)) as batches:
            async for batch in batches:
                assert _held(batch) <= READ_MAX_BYTES + big
                got.extend(stored.seq for stored in batch)
        assert got == seqs

