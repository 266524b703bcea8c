"""The ledger actor in a running daemon, as a user drives it: `entityd economy mint`,
`entityctl balance | pay | ledger | ledger verify`, against the LEDGER stream on the
entity's own nats-server (an entity on its own). Writers that race it and entries forged
into the stream are played by the test with the stream's own API."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import msgpack
import nats
import nats.js.errors
import pytest
from nacl.signing import SigningKey

import protocol
from bench.rig import edit
from entityd import config as config_mod
from entityd import identity, localauth
from entityd.client import EntityClient
from protocol.ledger import GENESIS, Transfer, seal_entry
from tests.helpers import BIN, DaemonProc, child_env, ctl, make_entity

pytestmark = pytest.mark.timeout(120)
A, B = "entity-a", "entity-b"


class Entity:
    def __init__(self, config: Path, daemon: DaemonProc, mint_key: Path) -> None:
        self.config = config
        self.daemon = daemon
        self.mint_key = mint_key

    @property
    def data(self) -> Path:
        return self.config.parent

    def ctl(self, *args: str) -> subprocess.CompletedProcess[str]:
        return ctl(self.config, *args)

    def ctl_json(self, *args: str) -> object:
        done = self.ctl(*args, "--json")
        assert done.returncode == 0, done.stdout + done.stderr
        return json.loads(done.stdout)

    def mint(self, amount: int, *extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(BIN / "entityd"), "economy", "mint", A, str(amount), "--config",
             str(self.config), "--key", str(self.mint_key), *extra],
            capture_output=True, text=True, timeout=60, env=child_env())

    def available(self) -> int:
        balance = self.ctl_json("balance")
        assert isinstance(balance, dict)
        return int(balance["available"])

    async def stream(self) -> nats.NATS:
        """A client of the entity's own server, where LEDGER is: the test's way to race
        the actor or forge entries, as a second process with the key could."""
        port = re.search(r"(?m)^port = (\d+)", self.config.read_text())
        assert port
        return await nats.connect(
            f"nats://{localauth.read(self.data)}@127.0.0.1:{port.group(1)}")


@pytest.fixture
def entity(tmp_path: Path) -> Iterator[Entity]:
    mint_key = tmp_path / "mint.key"
    made = subprocess.run([str(BIN / "entityd"), "keygen", str(mint_key)],
                          capture_output=True, text=True, timeout=30, env=child_env())
    assert made.returncode == 0, made.stderr
    public = bytes(identity.read_key(mint_key).verify_key).hex()
    config = make_entity(tmp_path, A)
    edit(config, "[mint_keys]\n", f'[mint_keys]\ntreasury = "{public}"\n')
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        daemon.wait_log('"entityd_ready"')
        yield Entity(config, daemon, mint_key)
    finally:
        code = daemon.terminate()
        assert code == 0, daemon.log()[-3000:]


def test_mint_pay_retry_conflict_and_verify(entity: Entity) -> None:
    assert entity.available() == 0
    broke = entity.ctl("pay", B, "5")
    assert broke.returncode == 3, broke.stdout + broke.stderr
    assert broke.stdout.startswith("overdraft:"), broke.stdout

    mint_id = "11" * 16
    minted = entity.mint(100, "--id", mint_id, "--memo", "starting allowance")
    assert minted.returncode == 0, minted.stdout + minted.stderr
    again = entity.mint(100, "--id", mint_id, "--memo", "starting allowance")
    assert again.returncode == 0 and again.stdout.startswith("retried"), again.stdout
    assert entity.available() == 100

    pay_id = "22" * 16
    paid = entity.ctl_json("pay", B, "30", "--memo", "for the review", "--id", pay_id)
    assert paid == {"ok": True, "code": "done", "text": f"entry 2 of {A}'s chain",
                    "id": pay_id, "seq": 2}
    retried = entity.ctl_json("pay", B, "30", "--memo", "for the review", "--id", pay_id)
    assert isinstance(retried, dict) and retried["code"] == "retried", retried
    assert retried["seq"] == 2
    conflict = entity.ctl("pay", B, "31", "--memo", "for the review", "--id", pay_id)
    assert conflict.returncode == 3 and conflict.stdout.startswith("conflict:"), conflict.stdout
    assert entity.available() == 70

    peer = entity.ctl_json("balance", B)
    assert isinstance(peer, dict) and peer["available"] == 30 and peer["entries"] == 0

    entries = entity.ctl_json("ledger")
    assert isinstance(entries, list)
    assert [(e["typ"], e["amount"], e["seq"]) for e in entries] == [
        ("transfer", 30, 2), ("mint", 100, 1)]
    assert entries[0]["counterparty"] == B and entries[0]["text"] == "for the review"

    verified = entity.ctl("ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok: 2 entries on 2 chains, 100 minted"), \
        verified.stdout
    assert '"event": "transfer"' not in entity.daemon.log()  # events go to NATS, not logs


async def test_a_second_writer_with_the_key_cannot_fork_the_chain(entity: Entity) -> None:
    """Another process holding the entity's key appends first: the actor's append at the
    same position is refused by the stream, and it places its payment after the other."""
    assert entity.mint(100).returncode == 0
    key = identity.load(A, entity.data).signing_key
    nc = await entity.stream()
    try:
        js = nc.jetstream()
        head = await js.get_last_msg("LEDGER", protocol.subjects.ledger(A))
        body = msgpack.unpackb(head.data or b"", raw=False)[2]  # what the chain hashes
        rival = Transfer(seq=2, prev=protocol.ledger.entry_hash(body), to=B, amount=40)
        wire = seal_entry(key, A, rival, entry_id=protocol.new_id(), ts=protocol.now_ms())
        ack = await js.publish(protocol.subjects.ledger(A), wire,
                               headers={"Nats-Expected-Last-Subject-Sequence": str(head.seq)})
        # The same position again, as a forking writer would try: refused.
        fork = Transfer(seq=2, prev=rival.prev, to=B, amount=50)
        forked = seal_entry(key, A, fork, entry_id=protocol.new_id(), ts=protocol.now_ms())
        with pytest.raises(nats.js.errors.BadRequestError):
            await js.publish(protocol.subjects.ledger(A), forked,
                             headers={"Nats-Expected-Last-Subject-Sequence": str(head.seq)})
        assert ack.seq == head.seq + 1
    finally:
        await nc.close()
    paid = await asyncio.to_thread(entity.ctl_json, "pay", B, "10")
    assert isinstance(paid, dict) and paid["ok"] and paid["seq"] == 3, paid
    assert entity.available() == 50
    assert entity.ctl("ledger", "verify").returncode == 0


async def test_forged_and_overdrawn_entries_are_not_counted_and_verify_names_them(
        entity: Entity) -> None:
    """A message on the entity's chain that it did not write (here signed by a stranger;
    anyone can have the hub's JetStream store a reply on the subject) is ignored: not
    counted, named by verify apart from violations, and it does not stop the chain: the
    entity goes on paying (a chain any member could stop would freeze its money)."""
    assert entity.mint(100).returncode == 0
    nc = await entity.stream()
    try:
        js = nc.jetstream()
        stranger = SigningKey.generate()
        forged = seal_entry(stranger, A, Transfer(seq=2, prev=GENESIS, to=B, amount=90),
                            entry_id=protocol.new_id(), ts=protocol.now_ms())
        await js.publish(protocol.subjects.ledger(A), forged)
        await js.publish(protocol.subjects.ledger(A), b"not even an envelope")
    finally:
        await nc.close()
    assert entity.available() == 100  # the forged transfer did not count
    verified = entity.ctl("ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok: 1 entries on 1 chains, 100 minted")
    assert "ignored: 2 message(s)" in verified.stdout, verified.stdout
    assert "unknown_key" in verified.stdout and "malformed" in verified.stdout
    paid = entity.ctl_json("pay", B, "10")  # appended past the two, compare-and-set on them
    assert isinstance(paid, dict) and paid["ok"], paid
    assert entity.available() == 90
    verified = entity.ctl("ledger", "verify")
    assert verified.returncode == 0 and verified.stdout.startswith(
        "ok: 2 entries on 2 chains"), verified.stdout + verified.stderr


async def test_a_replayed_entry_is_not_counted_twice_and_verify_names_it(
        entity: Entity) -> None:
    """A copy of an entry already on the chain (the key's other holder, or a JetStream
    reply of the stored entry) names an old position: it counts for nothing, and verify
    names it."""
    assert entity.mint(100).returncode == 0
    paid = entity.ctl_json("pay", B, "40")
    assert isinstance(paid, dict) and paid["ok"], paid
    nc = await entity.stream()
    try:
        js = nc.jetstream()
        last = await js.get_last_msg("LEDGER", protocol.subjects.ledger(A))
        await js.publish(protocol.subjects.ledger(A), last.data or b"")  # the payment again
    finally:
        await nc.close()
    assert entity.available() == 60  # paid once
    peer = entity.ctl_json("balance", B)
    assert isinstance(peer, dict) and peer["available"] == 40
    verified = entity.ctl("ledger", "verify")
    assert verified.returncode == 0, verified.stdout + verified.stderr
    assert verified.stdout.startswith("ok: 2 entries on 2 chains"), verified.stdout
    assert "replayed:" in verified.stdout and "it counts once" in verified.stdout
    again = entity.ctl_json("pay", B, "5")
    assert isinstance(again, dict) and again["ok"], again


def test_a_restart_goes_on_from_the_checkpoint_unless_the_stream_changed(
        entity: Entity) -> None:
    assert entity.mint(100).returncode == 0
    for amount in ("10", "20"):
        assert entity.ctl("pay", B, amount).returncode == 0
    assert entity.daemon.terminate() == 0  # its ledger actor writes the checkpoint
    assert (entity.data / "ledger.checkpoint").stat().st_mode & 0o777 == 0o600
    entity.daemon.start()
    entity.daemon.wait_log('"entityd_ready"', count=2)
    started = entity.daemon.log().rsplit('"event": "ledger_checkpoint"', 1)[0]
    assert started.rstrip().endswith('"used": true, "after": 3,'), started[-300:]
    assert entity.available() == 70
    assert entity.ctl("pay", B, "5").returncode == 0  # appended after the checkpoint's head
    assert entity.available() == 65 and entity.ctl("ledger", "verify").returncode == 0

    # A stream made afresh (its store lost) does not hold the heads the checkpoint names:
    # the books are replayed from the (now empty) stream instead of trusted.
    assert entity.daemon.terminate() == 0
    shutil.rmtree(entity.data / "nats" / "jetstream")
    entity.daemon.start()
    entity.daemon.wait_log('"entityd_ready"', count=3)
    assert "the stream no longer holds entity-a's entry at" in entity.daemon.log()
    assert entity.available() == 0


async def test_each_payment_is_an_event_with_amounts_and_ids_but_no_text(
        entity: Entity) -> None:
    assert entity.mint(100).returncode == 0
    async with EntityClient(config_mod.load(entity.config)) as client:
        async with client.events() as events:
            paid = await asyncio.to_thread(entity.ctl_json, "pay", B, "25", "--memo",
                                           "the secret plan")
            assert isinstance(paid, dict) and paid["ok"], paid
            async with asyncio.timeout(20):
                async for event in events:
                    if event.src == f"{A}/ledger":
                        break
    assert event.subj == f"fed.evt.{A}.ledger.transfer"
    assert event.message.data == {"to": B, "amount": 25, "id": paid["id"], "seq": 2}
    assert "secret plan" not in repr(event)

