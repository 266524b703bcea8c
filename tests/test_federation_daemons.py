"""Two real daemons whose embedded servers are leaves of one hub: events cross, signed."""

from __future__ import annotations

from pathlib import Path

import nats
import pytest

import protocol
from actors.llm.scripted import ScriptedLLMServer
from bench.rig import build, edit, running
from entityd import identity
from protocol import Keyring, ReplayGuard
from tests.helpers import DaemonProc, free_port, make_entity
from tests.peer_model import route

pytestmark = pytest.mark.timeout(90)


async def test_two_daemons_join_a_hub_and_see_each_others_signed_events(
    tmp_path: Path,
) -> None:
    async with ScriptedLLMServer(route) as llm:
        fed = build(tmp_path, ["entity-a", "entity-b"], llm_url=llm.base_url)
        async with running(fed):
            a, b = fed["entity-a"], fed["entity-b"]
            assert "leafnodes" in (a.data / "nats" / "leaf.conf").read_text()
            assert (await a.ctl("status"))[0] == 0

            # Watch entity-a from entity-b's own server, as entity-b's peer actor does.
            observer = await nats.connect(b.url,
                                          inbox_prefix="_i.entity-b")
            try:
                events = await observer.subscribe("fed.evt.entity-a.orchestrator.>")
                keyring = Keyring()
                keyring.add(identity.read_public(a.data), "entity-a")
                guard = ReplayGuard()
                crossed = None
                for _ in range(20):  # interest takes a moment to reach entity-a's leaf
                    code, _out, err = await a.ctl("task", "hello")
                    assert code == 0, err
                    try:
                        msg = await events.next_msg(timeout=1.0)
                    except nats.errors.TimeoutError:
                        continue
                    crossed = protocol.open(msg.data, subject=msg.subject, local="entity-b",
                                            keyring=keyring, replay=guard)
                    break
            finally:
                await observer.close()
            assert crossed is not None, "no event of entity-a reached entity-b's server"
            assert crossed.src.startswith("entity-a/")
            assert crossed.message.type in ("turn_started", "step", "answer")


def test_a_missing_hub_key_is_a_clear_startup_error(tmp_path: Path) -> None:
    config = make_entity(tmp_path, "entity-a")
    edit(config, 'hub_url = ""', f'hub_url = "nats-leaf://127.0.0.1:{free_port()}"')
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 1
    assert "entityd federation hub-user entity-a" in daemon.log()
