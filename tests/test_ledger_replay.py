"""The ledger actor's reader on a real nats-server: a replay that has to learn a signer's
key reads the stream once, and a read-ahead given up leaves no stray answers behind."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections import Counter
from collections.abc import AsyncGenerator
from concurrent.futures import ThreadPoolExecutor

import nats
from nacl.signing import SigningKey

import protocol
from actors.ledger.chains import OPENING_AHEAD, Chains
from actors.ledger.stream import READ_BATCH, LedgerStream, Stored
from entityd.federated import FederationAccess
from entityd.transport import Transport
from protocol import Keyring, StrayReply
from protocol.ledger import GENESIS, Mint, Transfer, entry_hash, seal_entry
from tests.helpers import NatsServer

ME, PAYER, PAYEE = "entity-a", "payer", "payee"
AHEAD = OPENING_AHEAD + 1  # batches read before the first is applied
ENTRIES = 2 * AHEAD * READ_BATCH + 40  # twice that and a short one
Opened = tuple[nats.NATS, LedgerStream, Counter[str]]  # the connection, the reader, refusals


def _key(name: str) -> SigningKey:
    return SigningKey(hashlib.sha256(f"test_ledger_replay {name}".encode()).digest())


async def _fill(nc: nats.NATS, n: int) -> None:
    """A mint of n to PAYER (by the operator), then n - 1 transfers of 1 to PAYEE."""
    js = nc.jetstream()
    prev, ts = GENESIS, protocol.now_ms()
    for seq in range(1, n + 1):
        record: Mint | Transfer = (Mint(seq=1, prev=prev, account=PAYER, amount=n)
                                   if seq == 1 else
                                   Transfer(seq=seq, prev=prev, to=PAYEE, amount=1))
        wire = seal_entry(_key("operator") if seq == 1 else _key(PAYER), PAYER, record,
                          entry_id=protocol.new_id(), ts=ts)
        ack = await js.publish(protocol.subjects.ledger(PAYER), wire)
        assert ack.seq == seq
        body = protocol.verify_signature(
            wire, subject=protocol.subjects.ledger(PAYER),
            keyring=_keyring(_key("operator") if seq == 1 else _key(PAYER))).body
        prev = entry_hash(body)


def _keyring(key: SigningKey) -> Keyring:
    keyring = Keyring()
    keyring.add(bytes(key.verify_key), PAYER)
    return keyring


@contextlib.asynccontextmanager
async def _stream(server: NatsServer) -> AsyncGenerator[Opened]:
    nc = await nats.connect(server.url)
    fed = FederationAccess(Transport(nc, entity=ME, key=_key(ME), keyring=Keyring()))
    rejected: Counter[str] = Counter()
    fed.count_rejected = rejected.update  # type: ignore[method-assign]
    stream = LedgerStream(fed, domain="", timeout=5.0)
    await stream.start(create=True)
    try:
        yield nc, stream, rejected
    finally:
        await stream.stop()
        await nc.close()


async def test_a_replay_that_learns_a_signers_key_reads_the_stream_once(
        nats_server: NatsServer) -> None:
    async with _stream(nats_server) as (nc, stream, rejected):
        await _fill(nc, ENTRIES)
        read: list[int] = []
        reads = stream.reads

        async def counted(after: int, subject: str = "ledger.>") -> AsyncGenerator[
                list[Stored]]:
            async with contextlib.aclosing(reads(after, subject)) as batches:
                async for batch in batches:
                    read.extend(stored.seq for stored in batch)
                    yield batch

        stream.reads = counted  # type: ignore[method-assign]
        asked = 0

        async def peer_keys() -> dict[str, bytes]:
            nonlocal asked
            asked += 1
            return {PAYER: bytes(_key(PAYER).verify_key)}

        with ThreadPoolExecutor(max_workers=2) as verifier:
            chains = Chains(stream, ME, bytes(_key(ME).verify_key),
                            {"treasury": bytes(_key("operator").verify_key)}, peer_keys,
                            verifier=verifier)
            await chains.catch_up()
        # The payer's first transfer is the stream's second entry: the read stops there
        # (once the batches being opened by then are read), learns the key and starts
        # again, rather than reading on to the end first.
        assert asked == 1
        assert chains.clean() and chains.entries == ENTRIES
        assert chains.books.balance(PAYER).available == 1
        assert chains.books.balance(PAYEE).available == ENTRIES - 1
        assert chains.books.audit() == []
        assert len(read) <= ENTRIES + AHEAD * READ_BATCH < 2 * ENTRIES, len(read)
        assert read[-ENTRIES:] == list(range(1, ENTRIES + 1))
        await asyncio.sleep(0.2)  # the read-ahead given up at the stop has ended by now
        assert not rejected, rejected
        assert not stream._pending


async def test_a_read_ahead_given_up_is_dropped_without_a_stray(
        nats_server: NatsServer) -> None:
    async with _stream(nats_server) as (nc, stream, rejected):
        await _fill(nc, ENTRIES)
        async with contextlib.aclosing(stream.reads(0)) as batches:
            async for batch in batches:
                assert [stored.seq for stored in batch] == list(range(1, READ_BATCH + 1))
                break  # the second batch was asked for already
        for _ in range(100):
            if not stream._pending:
                break
            await asyncio.sleep(0.02)
        assert not stream._pending
        assert rejected[StrayReply.reason] == 0, rejected
        # The stream reads on as before from where the reader stopped.
        assert [stored.seq for stored in await stream.read(READ_BATCH)] == list(
            range(READ_BATCH + 1, 2 * READ_BATCH + 1))


async def test_a_broken_entry_batches_into_a_long_read_stops_its_chain_there(
        nats_server: NatsServer) -> None:
    """The batches after the one being applied are opened meanwhile: what counts is
    still decided in stream order. A forgery (a bad signature: not the payer's writing)
    is ignored; the payer's next entry, linked to the wrong place, stops its chain at
    its place, and nothing after it counts."""
    async with _stream(nats_server) as (nc, stream, _):
        await _fill(nc, ENTRIES)
        forged_at = ENTRIES + 1
        wire = bytearray(seal_entry(_key(PAYER), PAYER, Transfer(
            seq=ENTRIES + 1, prev=GENESIS, to=PAYEE, amount=1),
            entry_id=protocol.new_id(), ts=protocol.now_ms()))
        wire[-3] ^= 1  # inside the signature, the wire's last field
        js = nc.jetstream()
        assert (await js.publish(protocol.subjects.ledger(PAYER), bytes(wire))).seq == (
            forged_at)
        await _fill_more(nc, ENTRIES, 2 * READ_BATCH)  # signed, but linked to nothing

        async def peer_keys() -> dict[str, bytes]:
            return {PAYER: bytes(_key(PAYER).verify_key)}

        with ThreadPoolExecutor(max_workers=2) as verifier:
            chains = Chains(stream, ME, bytes(_key(ME).verify_key),
                            {"treasury": bytes(_key("operator").verify_key)}, peer_keys,
                            peers={PAYER: bytes(_key(PAYER).verify_key)},
                            verifier=verifier)
            await chains.catch_up()
        assert chains.ignored == 1 and "bad_signature" in chains.ignored_noted[0]
        assert chains.violations[PAYER].reason == protocol.reasons.BROKEN_CHAIN
        assert chains.entries == ENTRIES
        assert chains.last_of[PAYER] == ENTRIES
        assert chains.subject_last[PAYER] == chains.after == forged_at + 2 * READ_BATCH
        assert chains.books.balance(PAYEE).available == ENTRIES - 1
        assert chains.clean() is False


async def _fill_more(nc: nats.NATS, after: int, n: int) -> None:
    """n transfers of 1 on PAYER's chain, well signed, numbered after a chain of `after`
    entries but linked to none of them (the first breaks the chain)."""
    js = nc.jetstream()
    for seq in range(after + 1, after + n + 1):
        wire = seal_entry(_key(PAYER), PAYER, Transfer(seq=seq, prev=GENESIS, to=PAYEE,
                                                        amount=1),
                          entry_id=protocol.new_id(), ts=protocol.now_ms())
        await js.publish(protocol.subjects.ledger(PAYER), wire)
