"""`entityd economy`: the federation operator's side of the ledger (DESIGN.md, "The
economy"): make the LEDGER stream (or give one made before it had its size limit that
limit), and mint.

Money enters the ledger only by `mint` entries signed by an operator's mint key, which
every entity lists in `[mint_keys]`. A mint sits on the credited entity's own chain, at
its next position, appended with the same compare-and-set as the entity's own entries;
when the entity appends first, the mint is placed again after it.

Where the stream is:
- in a federation, on the hub: the operator logs in as the hub's treasurer user
  (`entityd federation treasurer` makes it; `hub-conf --treasurer` admits it), which may
  make and read LEDGER and append to any chain, and nothing else;
- an entity on its own keeps LEDGER on its own server: give its --config instead.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from collections.abc import AsyncIterator
from pathlib import Path

import msgpack
import nats
import nats.errors
import nats.js.errors
from nacl.signing import SigningKey
from nats.aio.client import Client

import protocol
from actors.ledger.stream import (
    MAX_ENTRY_BYTES,
    STREAM,
    ChainMoved,
    LedgerStream,
    Stored,
    StreamUnbounded,
    bound,
    stream_config,
    unbounded,
)
from protocol import Keyring
from protocol.ledger import GENESIS, Entry, LedgerKeys, Mint, content, read_entry, seal_entry

from .. import config as config_mod
from .. import federation, identity, localauth, logs, loop
from ..errors import EntitydError
from ..federated import FederationAccess
from ..transport import Transport
from .args import command

TREASURER = "treasury"  # the hub user's name, and its reply inboxes' (_i.treasury.>)
ATTEMPTS = 5
TIMEOUT_S = 10.0


def add_arguments(parser: argparse.ArgumentParser) -> None:
    sub = parser.add_subparsers(dest="economy_command", required=True)
    examples = {
        "init": "entityd economy init --hub nats://hub:4222 --data-dir /etc/entityd-hub/"
                "treasury\nentityd economy init --config ~/entities/entity-a/entityd.toml",
        "mint": "entityd economy mint entity-a 1000 --key ~/.config/entityd/mint.key "
                "--hub nats://hub:4222 --data-dir /etc/entityd-hub/treasury",
    }
    for name, text in (("init", "Make the LEDGER stream, or give one made before it had "
                                "its size limit that limit (idempotent)."),
                       ("mint", "Credit an entity with new money, signed by an operator's "
                                "mint key.")):
        cmd = command(sub, name, text, examples[name])
        where = cmd.add_mutually_exclusive_group(required=True)
        where.add_argument("--hub", help="the hub's client URL (as its treasurer user)")
        where.add_argument("--config", type=Path,
                           help="an entity on its own: its entityd.toml (LEDGER is on its "
                           "own server)")
        cmd.add_argument("--data-dir", type=Path,
                         help="with --hub: the treasurer's dir (`entityd federation "
                         "treasurer`), holding its hub login")
        if name == "init":
            cmd.add_argument("--replicas", type=int, default=1,
                             help="copies of the stream in a hub cluster (3 for R3)")
        else:
            cmd.add_argument("entity")
            cmd.add_argument("amount", type=int)
            cmd.add_argument("--key", type=Path, required=True,
                             help="the operator's mint key (`entityd keygen FILE`); its "
                             "public key is in every entity's [mint_keys]")
            cmd.add_argument("--memo", default="")
            cmd.add_argument("--id", default="", help="32 hex digits: the mint's "
                             "idempotency key (default: a fresh one, printed)")


def main(args: argparse.Namespace) -> int:
    logs.configure("warning", "console")
    try:
        return loop.run(run(args))
    except (EntitydError, ValueError) as exc:
        print(f"entityd economy: {exc}", file=sys.stderr)
        return 2
    except (nats.errors.Error, OSError, TimeoutError) as exc:
        print(f"entityd economy: the LEDGER stream cannot be reached: {exc!r}",
              file=sys.stderr)
        return 4


async def run(args: argparse.Namespace) -> int:
    """The command in the running loop (`entityd up` runs it as the hub's treasurer)."""
    if args.economy_command == "mint":
        amount, entity = args.amount, args.entity
        if not 0 < amount <= protocol.ledger.MAX_AMOUNT:
            raise ValueError(f"amount {amount} is outside 1..{protocol.ledger.MAX_AMOUNT}")
        if not protocol.subjects.valid_name(entity):
            raise ValueError(f"{entity!r} is not an entity name")
        entry_id = bytes.fromhex(args.id) if args.id else protocol.new_id()
        if len(entry_id) != 16:
            raise ValueError("--id must be 32 hex digits")
        key = identity.read_key(args.key)
    async with _connected(args) as nc:
        if args.economy_command == "init":
            return await _init(nc, args.replicas)
        # Logged in where LEDGER is (the hub, or the entity's own server): no domain.
        stream = LedgerStream(_access(nc, key), domain="", timeout=TIMEOUT_S)
        await stream.start(create=False)
        try:
            return await _mint(stream, key, entity, amount, args.memo, entry_id)
        finally:
            await stream.stop()


@contextlib.asynccontextmanager
async def _connected(args: argparse.Namespace) -> AsyncIterator[Client]:
    inbox = protocol.subjects.inbox_prefix(TREASURER).encode()
    if args.hub:
        if args.data_dir is None:
            raise ValueError("--hub needs --data-dir, the treasurer's dir")
        seed = federation.seed_path(args.data_dir.expanduser())
        federation.read_seed(seed)  # a clear error when it is missing or exposed
        nc = await nats.connect(args.hub, nkeys_seed=str(seed), inbox_prefix=inbox,
                                connect_timeout=TIMEOUT_S, max_reconnect_attempts=0)
    else:
        cfg = config_mod.load(args.config)
        url = cfg.nats.url or f"nats://{cfg.nats.host}:{cfg.nats.port}"
        token = localauth.read(cfg.data_dir) if cfg.embedded_nats else None
        nc = await nats.connect(url, token=token, inbox_prefix=inbox,
                                connect_timeout=TIMEOUT_S, max_reconnect_attempts=0)
    try:
        yield nc
    finally:
        await nc.close()


def _access(nc: Client, key: SigningKey) -> FederationAccess:
    """The operator's handle on the bus: its replies come to _i.treasury."""
    return FederationAccess(Transport(nc, entity=TREASURER, key=key, keyring=Keyring()))


async def _init(nc: Client, replicas: int) -> int:
    js = nc.jetstream(timeout=TIMEOUT_S)
    wanted = stream_config(replicas)
    try:
        have = (await js.stream_info(STREAM)).config
    except nats.js.errors.NotFoundError:
        await js.add_stream(wanted)
        print(f"made the {STREAM} stream ({replicas} replica(s))")
        return 0
    if not (have.deny_delete and have.deny_purge and have.allow_direct):
        print(f"entityd economy: {STREAM} exists but lets entries be deleted or "
              "purged, or has no direct gets: it is not a ledger; remove it by hand",
              file=sys.stderr)
        return 3
    if unbounded(have):  # made before the stream had its size limit
        try:
            await bound(js, have)
        except StreamUnbounded as exc:
            denied = nc.last_error is not None and (
                "permissions violation" in str(nc.last_error).lower())
            # A warning, not a failure: the ledger works as before without the limit,
            # and a federation made before it must go on starting (`entityd up`).
            print(f"entityd economy: warning: {STREAM} takes messages of any size up to "
                  f"the server's max_payload, kept for ever, and could not be limited to "
                  f"{MAX_ENTRY_BYTES} bytes: "
                  + ("this login may not update it (a hub's treasurer may not; "
                     "deploy/FEDERATION.md, \"The ledger's limits\", says how to apply "
                     "it)" if denied else str(exc)),
                  file=sys.stderr)
            print(f"{STREAM} is there ({have.num_replicas} replica(s)); without its size "
                  "limit (see the warning)")
            return 0
        print(f"{STREAM} is there ({have.num_replicas} replica(s)); it now takes "
              f"messages of at most {MAX_ENTRY_BYTES} bytes")
        return 0
    print(f"{STREAM} is there ({have.num_replicas} replica(s)); nothing to do")
    return 0


async def _mint(stream: LedgerStream, key: SigningKey, entity: str, amount: int,
                memo: str, entry_id: bytes) -> int:
    operator = bytes(key.verify_key)
    record = Mint(seq=0, prev=GENESIS, account=entity, amount=amount, memo=memo)
    for _ in range(ATTEMPTS):
        entries = await _chain(stream, entity, operator)
        for entry, _stored in entries:
            if entry.id == entry_id:
                if content(entry.record) != content(record):
                    print(f"conflict: {entity}'s chain holds id {entry_id.hex()} with "
                          "another entry", file=sys.stderr)
                    return 3
                print(f"retried: the chain holds this mint already (entry {entry.seq})")
                return 0
        head, stored = entries[-1] if entries else (None, None)
        seq = head.seq + 1 if head else 1
        placed = Mint(seq=seq, prev=head.hash if head else GENESIS, account=entity,
                      amount=amount, memo=memo)
        ts = max(protocol.now_ms(), head.ts if head else 0)
        wire = seal_entry(key, entity, placed, entry_id=entry_id, ts=ts)
        try:
            await stream.append(entity, wire, entry_id, stored.seq if stored else 0)
        except ChainMoved:
            continue
        print(f"minted {amount} to {entity}: entry {seq} of its chain, id {entry_id.hex()}")
        return 0
    print(f"entityd economy: {entity}'s chain moved {ATTEMPTS} times in a row; run it "
          "again with the same --id", file=sys.stderr)
    return 4


async def _chain(stream: LedgerStream, account: str,
                 operator: bytes) -> list[tuple[Entry, Stored]]:
    """The entries of `account`'s chain, each opened under the key that claims it (the
    operator links to the chain; the entities' readers are the ones that verify it)."""
    entries: list[tuple[Entry, Stored]] = []
    after = 0
    subject = protocol.subjects.ledger(account)
    while batch := await stream.read(after, subject):
        for stored in batch:
            kid = msgpack.unpackb(stored.data, raw=False)[1]
            keys = LedgerKeys({} if kid == operator else {account: kid},
                              {"operator": operator})
            entries.append((read_entry(stored.data, stored.subject, keys), stored))
            after = stored.seq
    return entries
