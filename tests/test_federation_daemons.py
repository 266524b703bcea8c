"""Two real daemons whose embedded servers are leaves of one hub: events cross, signed."""

from __future__ import annotations

import asyncio
from pathlib import Path

import nats
import pytest

import protocol
from entityd import federation, identity
from protocol import Keyring, ReplayGuard
from tests.helpers import NATS_SERVER, DaemonProc, ServerProcess, ctl, free_port, make_entity

pytestmark = pytest.mark.timeout(90)


def _federated_entity(root: Path, name: str, hub_leaf_port: int) -> tuple[Path, str]:
    config = make_entity(root, name)
    config.write_text(config.read_text().replace(
        'hub_url = ""', f'hub_url = "nats-leaf://127.0.0.1:{hub_leaf_port}"'
    ))
    public, _ = federation.make_entity_credentials(name, config.parent)
    return config, public


async def test_two_daemons_join_a_hub_and_see_each_others_signed_events(
    tmp_path: Path,
) -> None:
    leaf_port, client_port = free_port(), free_port()
    config_a, nkey_a = _federated_entity(tmp_path, "entity-a", leaf_port)
    config_b, nkey_b = _federated_entity(tmp_path, "entity-b", leaf_port)
    hub_conf = tmp_path / "hub.conf"
    hub_conf.write_text(federation.render_hub_conf(
        [("entity-a", nkey_a), ("entity-b", nkey_b)], store_dir=tmp_path / "hub-store",
        port=client_port, leaf_host="127.0.0.1", leaf_port=leaf_port,
    ))
    hub = ServerProcess([NATS_SERVER, "-c", str(hub_conf)], client_port, tmp_path / "hub.log")
    daemons = [DaemonProc(c, tmp_path / f"{c.parent.name}.log") for c in (config_a, config_b)]
    observer = None
    try:
        hub.start()
        for daemon in daemons:
            daemon.start()
        for daemon in daemons:
            await asyncio.to_thread(daemon.wait_log, '"entityd_ready"')
        assert "leafnodes" in (config_a.parent / "nats" / "leaf.conf").read_text()
        assert ctl(config_a, "status").returncode == 0

        # Watch entity-a from entity-b's own server, as entity-b's peer actor will.
        port_b = int(config_b.read_text().split("port = ")[1].split()[0])
        observer = await nats.connect(f"nats://127.0.0.1:{port_b}", inbox_prefix="_i.entity-b")
        events = await observer.subscribe("fed.evt.entity-a.>")
        keyring = Keyring()
        keyring.add(identity.read_public(config_a.parent), "entity-a")
        guard = ReplayGuard()
        crossed = None
        for _ in range(20):  # interest takes a moment to reach entity-a's leaf
            result = await asyncio.to_thread(ctl, config_a, "task", "hello")
            assert result.returncode == 0, result.stderr
            try:
                msg = await events.next_msg(timeout=1.0)
            except nats.errors.TimeoutError:
                continue
            crossed = protocol.open(msg.data, subject=msg.subject, local="entity-b",
                                    keyring=keyring, replay=guard)
            break
        assert crossed is not None, "no event of entity-a reached entity-b's server"
        assert crossed.src.startswith("entity-a/")
        assert crossed.message.type in ("turn_started", "step", "answer")
    finally:
        if observer is not None:
            await observer.close()
        codes = [await asyncio.to_thread(d.terminate) for d in daemons if d.proc]
        hub.stop()
    assert codes == [0, 0]


def test_a_missing_hub_key_is_a_clear_startup_error(tmp_path: Path) -> None:
    config = make_entity(tmp_path, "entity-a")
    config.write_text(config.read_text().replace(
        'hub_url = ""', f'hub_url = "nats-leaf://127.0.0.1:{free_port()}"'
    ))
    daemon = DaemonProc(config, tmp_path / "entityd.log").start()
    assert daemon.proc is not None
    assert daemon.proc.wait(30) == 1
    assert "entityd federation hub-user entity-a" in daemon.log()
