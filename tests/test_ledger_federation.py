"""The ledger across a federation: the LEDGER stream on the hub, made and minted into by
its treasurer (`entityd economy`), two real daemons paying each other through it, and
the hub refusing what a member may not do to another's chain."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import nats
import nats.errors
import nats.js.errors
import pytest

import protocol
from actors.llm.scripted import ScriptedLLMServer
from bench.rig import Federation, build, running
from entityd import federation, identity
from protocol.ledger import GENESIS, Transfer, seal_entry
from tests.helpers import poll
from tests.peer_model import route

pytestmark = pytest.mark.timeout(150)
A, B = "entity-a", "entity-b"


async def balance(fed: Federation, name: str, of: str = "") -> dict[str, int]:
    answer = await fed[name].ctl_json("balance", *([of] if of else []))
    assert isinstance(answer, dict)
    return answer


async def test_members_pay_each_other_through_the_hubs_ledger(tmp_path: Path) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            made = await asyncio.to_thread(fed.economy, "init")
            assert made.returncode == 0 and "made the LEDGER stream" in made.stdout, made
            again = await asyncio.to_thread(fed.economy, "init")
            assert again.returncode == 0 and "nothing to do" in again.stdout, again
            minted = await asyncio.to_thread(fed.economy, "mint", A, "500", "--memo",
                                             "allowance")
            assert minted.returncode == 0, minted.stdout + minted.stderr

            assert (await balance(fed, A))["available"] == 500
            code, out, err = await fed[A].ctl("pay", B, "120", "--memo", "for the parser")
            assert code == 0, out + err
            # b reads a's chain from the hub: the credit counts once a's key is known to
            # b (its peer directory pins it from a's heartbeat).
            await fed.discovered()
            async def credited() -> dict[str, int] | None:
                got = await balance(fed, B)
                return got if got["available"] == 120 else None

            seen = await poll(credited, timeout=30, what="b counting a's payment")
            assert seen == {"account": B, "available": 120, "held": 0, "entries": 0}
            code, out, err = await fed[B].ctl("pay", A, "20")
            assert code == 0, out + err
            assert (await balance(fed, A))["available"] == 400
            assert (await balance(fed, B))["available"] == 100
            for member in (A, B):
                code, out, err = await fed[member].ctl("ledger", "verify")
                assert code == 0, out + err
                assert out.startswith("ok: 3 entries on 2 chains, 500 minted"), out
            history = await fed[B].ctl_json("ledger")
            assert [(e["account"], e["typ"], e["amount"]) for e in history] == [
                (B, "transfer", 20), (A, "transfer", 120)]


async def test_the_hub_keeps_each_chain_to_its_owner(tmp_path: Path) -> None:
    """entity-b, with its own hub login, tries to write a's chain, to write its own
    without compare-and-set past a's reach, and to delete or purge the stream."""
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        async with running(fed):
            assert (await asyncio.to_thread(fed.economy, "init")).returncode == 0
            assert (await asyncio.to_thread(fed.economy, "mint", A, "50")).returncode == 0
            b_key = identity.load(B, fed[B].data).signing_key
            nc = await nats.connect(fed[B].url, inbox_prefix=f"_i.{B}")
            try:
                js = nc.jetstream(domain=federation.HUB_DOMAIN, timeout=3)
                theft = seal_entry(b_key, A, Transfer(seq=2, prev=GENESIS, to=B, amount=50),
                                   entry_id=protocol.new_id(), ts=protocol.now_ms())
                with pytest.raises(nats.js.errors.NoStreamResponseError):  # never stored
                    await js.publish(protocol.subjects.ledger(A), theft)
                for api in ("STREAM.DELETE.LEDGER", "STREAM.PURGE.LEDGER",
                            "CONSUMER.CREATE.LEDGER"):
                    with pytest.raises((nats.errors.NoRespondersError,
                                        nats.errors.TimeoutError)):
                        await nc.request(f"$JS.{federation.HUB_DOMAIN}.API.{api}",
                                         json.dumps({}).encode(), timeout=2)
            finally:
                await nc.close()
            assert (await balance(fed, A))["available"] == 50
            assert (await balance(fed, B))["available"] == 0
            code, out, err = await fed[A].ctl("ledger", "verify")
            assert code == 0 and out.startswith("ok: 1 entries on 1 chains, 50 minted"), \
                out + err


async def test_a_hub_whose_ledger_was_made_in_fed_keeps_it_and_members_read_it(
        tmp_path: Path) -> None:
    """A hub made before the BOOKS account has its LEDGER stream in FED: rendered again
    (an upgrade, `entityd up` at each start), it keeps that layout rather than start an
    empty ledger beside the old one (no money lost), and members read it through the
    books reader, which logs in to FED there and direct-gets FED's own JetStream."""
    (tmp_path / "hub-store" / "jetstream" / federation.HUB_ACCOUNT / "streams"
     / "LEDGER").mkdir(parents=True)  # what nats-server keeps of a LEDGER made in FED
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url)
        conf = await asyncio.to_thread(lambda: (tmp_path / "hub.conf").read_text())
        assert federation.BOOKS_ACCOUNT not in conf and "jetstream: enabled" in conf
        async with running(fed):
            made = await asyncio.to_thread(fed.economy, "init")
            assert made.returncode == 0, made.stdout + made.stderr
            minted = await asyncio.to_thread(fed.economy, "mint", A, "100")
            assert minted.returncode == 0, minted.stdout + minted.stderr
            assert (await balance(fed, A))["available"] == 100
            code, out, err = await fed[A].ctl("pay", B, "30")
            assert code == 0, out + err
            await fed.discovered()

            async def credited() -> bool:
                return (await balance(fed, B))["available"] == 30

            await poll(credited, timeout=30, what="b's balance from a's chain in FED")
            code, out, err = await fed[B].ctl("ledger", "verify")
            assert code == 0 and out.startswith("ok: 2 entries on 2 chains, 100 minted"), out + err
