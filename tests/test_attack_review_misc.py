"""Review attacks on the federation surface, against a real daemon on its real nats-server.

- A member named `a2a-<client>`: the A2A face runs a client's task as the turn of
  `peer:a2a-<client>` (its owner, its memory origin, its token budget and its share of
  the queue). A federation member that took such a name would be that client to the
  orchestrator: its talks would recall what the client's tasks remembered, and spend the
  client's budget. Its heartbeat must not introduce it (refused `unknown_key`, counted),
  while a member of another name, announcing itself the same way, is discovered; and
  [peer_keys] or [trust] naming one stops the start, naming the key.
- A wire on an entity-local mailbox (loc.<entity>.orchestrator.goal_cancel) signed by
  a peer's pinned key, whatever `src` it names, is refused (`unknown_key`: the actors
  trust the entity's own key only): a member cannot cancel the entity's goals even
  where it reaches the entity's local bus (a leaf never forwards loc.>).
- A talk's conversation is `peer-<peer>.<its name>`: with '-', the member "entity"
  naming its conversation "a-x" wrote into entity-a's conversation "x"
  (`entityctl history peer-entity-a-x`).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import msgpack
import nats
import pytest
from nacl.signing import SigningKey

import protocol
from actors.llm import Reply, ScriptedLLMServer
from actors.messages import Goal, GoalAccepted, GoalCancel, History, HistoryGet
from actors.peer.messages import Heartbeat, Peers, PeersGet, Talk
from entityd import config as config_mod
from entityd.client import EntityClient
from entityd.errors import ConfigError, RemoteError
from protocol import Sealer
from tests.helpers import DaemonProc, make_entity, poll
from tests.test_agent_e2e import make_entity_config
from tests.test_config_peers import add_to_table

pytestmark = pytest.mark.timeout(120)

NAME = "entity-a"


def model(request: dict[str, Any]) -> Reply:
    return Reply(content="ok")


@asynccontextmanager
async def entity(tmp_path: Path, llm: ScriptedLLMServer) -> AsyncIterator[EntityClient]:
    config = make_entity_config(tmp_path, NAME, llm.base_url)
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    try:
        await asyncio.to_thread(daemon.wait_log, '"entityd_ready"', 60)
        async with EntityClient(config_mod.load(config)) as client:
            yield client
    finally:
        if daemon.proc is not None and daemon.proc.poll() is None:
            daemon.signal_stop()
            daemon.wait_stopped(20)


def heartbeat(key: SigningKey, name: str) -> tuple[str, bytes]:
    subject = protocol.subjects.event(name, "peer", "heartbeat")
    wire, _ = protocol.seal(key, src=f"{name}/peer", dst=protocol.BROADCAST, subj=subject,
                            message=Heartbeat(["chat"], 0.5, time.time()))
    return subject, wire


async def peer_names(client: EntityClient) -> set[str]:
    peers = await client.ask("peer", PeersGet(), 10.0)
    assert isinstance(peers, Peers)
    return {p.name for p in peers.peers}


async def introduced(client: EntityClient, nc: nats.NATS, key: SigningKey, name: str) -> None:
    """`name`'s heartbeat, signed with `key`, published on `nc`; until the entity lists
    `name` among its peers."""
    await nc.publish(*heartbeat(key, name))
    await nc.flush()

    async def discovered() -> bool:
        return name in await peer_names(client)

    await poll(discovered, timeout=20, what=f"{name} discovered")


async def rejected(client: EntityClient) -> dict[str, int]:
    status = await client.ask("health", protocol.StatusGet(), 10.0)
    return dict(status.rejected)


async def test_a_member_named_after_an_a2a_client_is_not_introduced(tmp_path: Path) -> None:
    async with ScriptedLLMServer(model) as llm, entity(tmp_path, llm) as client:
        transport = client._transport
        assert transport is not None
        nc = transport.nc
        squatter, honest = SigningKey.generate(), SigningKey.generate()
        before = (await rejected(client)).get("unknown_key", 0)
        # The squatter announces itself first, again and again; then an honest newcomer.
        for _ in range(3):
            await nc.publish(*heartbeat(squatter, "a2a-ci-bot"))
            await nc.flush()
            await asyncio.sleep(0.2)
        await introduced(client, nc, honest, "entity-x")
        names = await peer_names(client)
        assert "a2a-ci-bot" not in names, names
        assert (await rejected(client)).get("unknown_key", 0) >= before + 3


async def test_a_peer_key_on_a_local_mailbox_cannot_cancel_a_goal(tmp_path: Path) -> None:
    async with ScriptedLLMServer(model) as llm, entity(tmp_path, llm) as client:
        transport = client._transport
        assert transport is not None
        # A member the entity knows (its heartbeat pinned its key) ...
        member = SigningKey.generate()
        await introduced(client, transport.nc, member, "entity-m")
        accepted = await client.ask("orchestrator", Goal("hello", "held-goal"), 10.0)
        assert isinstance(accepted, GoalAccepted)
        # ... sends goal_cancel on the orchestrator's mailbox as entityctl and as itself.
        subject = protocol.subjects.local(NAME, "orchestrator", "goal_cancel")
        for src in (f"{NAME}/ctl", "entity-m/ctl"):
            wire, _ = protocol.seal(member, src=src, dst=f"{NAME}/orchestrator",
                                    subj=subject, message=GoalCancel("held-goal"))
            reply = await transport.nc.request(subject, wire, timeout=10)
            body = msgpack.unpackb(msgpack.unpackb(reply.data)[2])
            assert body["typ"] == "error", body
            # The actors' mailboxes trust the entity's own key only (a peer's key is
            # the peer actor's business): refused before the orchestrator sees it.
            assert body["payload"]["code"] == "unknown_key", (src, body["payload"])
        # Nothing was cancelled: entityctl's own cancel still finds the goal queued or
        # running, or answered, never cancelled.
        try:
            await client.ask("orchestrator", GoalCancel("held-goal"), 10.0)
        except RemoteError as exc:
            assert exc.code == "not_found" and "answered" in exc.message, exc
        assert (await rejected(client)).get("unknown_key", 0) >= 2


@pytest.mark.parametrize("table", ["peer_keys", "trust"])
def test_a2a_client_names_are_no_peer_names_in_config(tmp_path: Path, table: str) -> None:
    config = make_entity(tmp_path)
    value = f'"{"cd" * 32}"' if table == "peer_keys" else '["talk"]'
    add_to_table(config, table, f"a2a-ci-bot = {value}\n")
    with pytest.raises(ConfigError) as caught:
        config_mod.load(config)
    assert f"{table}.a2a-ci-bot" in str(caught.value) and "A2A client" in str(caught.value)


async def test_a_peer_talks_only_in_its_own_conversations(tmp_path: Path) -> None:
    """A talk's conversation is the peer's: "entity" naming its conversation "a-x" wrote
    into "peer-entity-a-x", which is entity-a's conversation "x"."""
    async with ScriptedLLMServer(model) as llm, entity(tmp_path, llm) as client:
        transport = client._transport
        assert transport is not None
        nc = transport.nc
        attacker = SigningKey.generate()
        await introduced(client, nc, attacker, "entity")
        subject = protocol.subjects.request(NAME, "entity", "talk")
        wire, _ = Sealer(attacker).seal(client.entity_public, src="entity/peer",
                                        dst=f"{NAME}/peer", subj=subject,
                                        message=Talk("words for entity-a's log", "a-x"))
        # (A reply inbox of the peer's own: the peer actor never answers on _l.*.)
        inbox = f"_i.entity.{uuid.uuid4().hex}"
        replies = await nc.subscribe(inbox, max_msgs=1)
        await nc.publish(subject, wire, reply=inbox)
        reply = await replies.next_msg(timeout=60)
        body = msgpack.unpackb(msgpack.unpackb(reply.data)[2])
        assert body["typ"] == "talk_reply", body

        victims: History = await client.ask("memory", HistoryGet("peer-entity-a-x"), 10.0)
        assert victims.entries == [], victims
        everything: History = await client.ask("memory", HistoryGet("", 200), 10.0)
        mine = {e.conversation for e in everything.entries if "entity-a's log" in e.content}
        assert mine and all(c.startswith("peer-entity.") for c in mine), mine
