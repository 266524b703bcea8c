"""The ledger on a 3-node hub cluster (issue 10, part 3): the LEDGER stream made with three
replicas keeps every entry it acknowledged when one node, its leader, is killed; payments
go on after the leader election, and a payment answered `unreachable` meanwhile, asked
again with the same id, happens once. Also: what render_hub_conf refuses for a cluster."""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections import Counter
from pathlib import Path

import nats
import pytest
from nats.js.api import ClusterInfo

from actors.ledger.stream import STREAM
from actors.llm.scripted import ScriptedLLMServer
from bench.rig import Federation, build, edit, running
from entityd import federation
from entityd.errors import ConfigError
from tests.helpers import poll
from tests.peer_model import route

pytestmark = pytest.mark.timeout(120)
A, B = "entity-a", "entity-b"
START = 1000  # minted to each
APPEND_TIMEOUT_S = 2.0  # the members' economy.append_timeout: an election outlasts it
CTL_TIMEOUT_S = "15"  # entityctl's wait for the actor, longer than a read and an append
PAID_BEFORE, PAID_DURING = 4, 4  # payments done by each payer before the kill, and after it
RETRY_FOR_S = 40.0  # how long a payer asks again with the same id after exit 4


async def ledger_cluster(fed: Federation) -> tuple[ClusterInfo, int]:
    """LEDGER's replicas and how many entries it holds, asked as the treasurer (who may)
    of a running node."""
    assert fed.treasury is not None
    nc = await nats.connect(fed.hub_url, nkeys_seed=str(federation.seed_path(fed.treasury)),
                            inbox_prefix=f"_i.{federation.TREASURER}",
                            max_reconnect_attempts=0)
    try:
        info = await nc.jetstream(timeout=3).stream_info(STREAM)
    finally:
        await nc.close()
    assert info.cluster is not None
    return info.cluster, info.state.messages


class Payer:
    """One member paying another 1 at a time with entityctl, each payment under its own id,
    asked again with that id after exit 4 (unreachable) until it is answered."""

    def __init__(self, fed: Federation, name: str, to: str) -> None:
        self.member, self.to = fed[name], to
        self.answered: dict[str, str] = {}  # id -> done | retried
        self.unreachable: set[str] = set()  # ids answered exit 4 at least once
        self.done_after_kill = 0
        self.killed = False

    async def pay_once(self) -> None:
        entry_id = os.urandom(16).hex()
        deadline = time.monotonic() + RETRY_FOR_S
        while True:
            code, out, err = await self.member.ctl(
                "--timeout", CTL_TIMEOUT_S, "pay", self.to, "1", "--id", entry_id, "--json")
            if code == 0:
                self.answered[entry_id] = json.loads(out)["code"]
                self.done_after_kill += self.killed
                return
            assert code == 4, f"{self.member.name} pay exited {code}: {out}{err}"
            self.unreachable.add(entry_id)
            assert time.monotonic() < deadline, f"still unreachable after {RETRY_FOR_S} s"
            await asyncio.sleep(0.2)

    async def run(self, stop: asyncio.Event) -> None:
        while not stop.is_set():
            await self.pay_once()


async def test_a_payment_survives_the_loss_of_the_ledgers_leader(tmp_path: Path) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, [A, B], llm_url=llm.base_url, hub_nodes=3)
        for member in fed.members.values():
            edit(member.config, "append_timeout = 10.0",
                 f"append_timeout = {APPEND_TIMEOUT_S}")
        async with running(fed):
            made = await asyncio.to_thread(fed.economy, "init", "--replicas", "3")
            assert made.returncode == 0 and "3 replica(s)" in made.stdout, made
            for name in (A, B):
                minted = await asyncio.to_thread(fed.economy, "mint", name, str(START))
                assert minted.returncode == 0, minted.stdout + minted.stderr
            await fed.discovered()  # each counts the other's entries once it knows its key

            payers = [Payer(fed, A, B), Payer(fed, B, A)]
            stop = asyncio.Event()
            async with asyncio.TaskGroup() as tg:
                for payer in payers:
                    tg.create_task(payer.run(stop))
                await poll(lambda: all(len(p.answered) >= PAID_BEFORE for p in payers),
                           timeout=30, what="payments before the kill")
                leader = (await ledger_cluster(fed))[0].leader
                assert leader in fed.nodes, leader
                await asyncio.to_thread(fed.nodes[leader].kill)  # SIGKILL mid-payments
                for payer in payers:
                    payer.killed = True
                await poll(lambda: all(p.done_after_kill >= PAID_DURING for p in payers),
                           timeout=45, what="payments after the leader was killed")
                await asyncio.to_thread(fed.nodes[leader].start)
                stop.set()

            paid = {payer.member.name: payer.answered for payer in payers}
            total = 2 + sum(map(len, paid.values()))  # the mints and every payment once

            async def caught_up() -> int:
                cluster, messages = await ledger_cluster(fed)
                peers = {p.name: p for p in cluster.replicas or []}
                back = leader == cluster.leader or (
                    leader in peers and peers[leader].current and not peers[leader].lag)
                return messages if back else 0

            messages = await poll(caught_up, timeout=20, what=f"{leader} current again")
            assert messages == total

            for payer in payers:  # what each chain holds, as the payer's ledger actor reads it
                entries = await payer.member.ctl_json("ledger", "--limit", "1000")
                held = Counter(e["id"] for e in entries
                               if e["account"] == payer.member.name and e["typ"] == "transfer")
                assert held == Counter(payer.answered.keys()), (payer.member.name, held)
            # every id answered exit 4 was asked again until answered, and is there once
            assert any(p.unreachable for p in payers), "the kill made no payment wait"
            for payer in payers:
                assert payer.unreachable <= payer.answered.keys()

            for name in (A, B):
                code, out, err = await fed[name].ctl("ledger", "verify")
                assert code == 0, out + err
                assert out.startswith(f"ok: {total} entries on 2 chains, {2 * START} minted"), out
                balance = await fed[name].ctl_json("balance")
                assert balance["available"] == START - len(paid[name]) + len(
                    paid[B if name == A else A])


def test_a_cluster_node_config_refuses_what_would_not_hold(tmp_path: Path) -> None:
    user = federation.make_entity_credentials(A, tmp_path)[0]
    routes = tuple(f"nats-route://127.0.0.1:{port}" for port in (6222, 6223, 6224))

    def node(cluster: federation.HubCluster, server_name: str = "hub-1",
             insecure_plain: bool = False) -> str:
        return federation.render_hub_conf(
            [(A, user)], store_dir=tmp_path, leaf_host="127.0.0.1", server_name=server_name,
            insecure_plain=insecure_plain, cluster=cluster)

    text = node(federation.HubCluster("hub", routes))
    assert 'name: "hub"' in text and 'routes = ["nats-route://127.0.0.1:6222"' in text
    with pytest.raises(ConfigError, match="--server-name"):
        node(federation.HubCluster("hub", routes), server_name="entityd-hub")
    with pytest.raises(ConfigError, match="at least 3 nodes"):  # itself and one other
        node(federation.HubCluster("hub", routes[:2]))
    with pytest.raises(ConfigError, match="carries credentials"):
        node(federation.HubCluster("hub", ("nats-route://u:p@10.0.0.2:6222", *routes)))
    with pytest.raises(ConfigError, match="--cluster:"):
        node(federation.HubCluster("a hub", routes))
    far = tuple(f"nats-route://10.0.0.{i}:6222" for i in (1, 2, 3))
    with pytest.raises(ConfigError, match="mutual TLS"):  # routes carry every account
        node(federation.HubCluster("hub", far, host="10.0.0.1"))
    with pytest.raises(ConfigError, match="--cluster-tls-cert"):
        node(federation.HubCluster("hub", far, host="10.0.0.1", tls_cert="c", tls_key="k"))
    mutual = node(federation.HubCluster("hub", far, host="10.0.0.1", tls_cert="c",
                                        tls_key="k", tls_ca="ca"))
    assert "verify: true" in mutual and 'ca_file: "ca"' in mutual
    plain = node(federation.HubCluster("hub", far, host="10.0.0.1"), insecure_plain=True)
    assert "IN CLEAR" in plain.split("cluster {", 1)[1]
