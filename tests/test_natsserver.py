"""The embedded nats-server: shipped nats.conf, JetStream in the data dir, clean start, stop."""

from __future__ import annotations

import os
import re
import socket
import subprocess
from pathlib import Path

import nats
import pytest

from entityd import natsserver
from entityd.errors import NatsServerError
from entityd.natsserver import EmbeddedNatsServer
from tests.helpers import NATS_SERVER, free_port

REPO = Path(__file__).resolve().parent.parent
SHIPPED_CONF = REPO / "nats.conf"


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.5)
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_nats_server_accepts_the_shipped_config() -> None:
    result = subprocess.run(
        [NATS_SERVER, "-t", "-c", str(SHIPPED_CONF)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is valid" in result.stdout + result.stderr


def test_config_check_can_fail(tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text(SHIPPED_CONF.read_text() + "\njetstream {\n")
    result = subprocess.run(
        [NATS_SERVER, "-t", "-c", str(broken)], capture_output=True, text=True, timeout=30
    )
    assert result.returncode != 0


def test_the_shipped_config_is_the_default() -> None:
    assert natsserver.shipped_config() == SHIPPED_CONF


async def test_embedded_server_serves_jetstream_from_the_data_dir(tmp_path: Path) -> None:
    port = free_port()
    server = EmbeddedNatsServer(name="entity-a", data_dir=tmp_path, port=port)
    assert server.config == SHIPPED_CONF
    await server.start()
    pid = server.pid
    assert pid is not None and pid_alive(pid)
    try:
        nc = await nats.connect(server.url, max_reconnect_attempts=0)
        try:
            # max_payload comes from the shipped nats.conf (2MB), not the server's 1MB default.
            assert nc.max_payload == 2 * 1024 * 1024
            js = nc.jetstream()
            await js.add_stream(name="EMBEDDED", subjects=["emb.>"])
            ack = await js.publish("emb.one", b"first", headers={"Nats-Msg-Id": "m1"})
            assert (ack.stream, ack.seq) == ("EMBEDDED", 1)
            again = await js.publish("emb.one", b"first", headers={"Nats-Msg-Id": "m1"})
            assert again.duplicate and again.seq == 1
            msg = await js.get_msg("EMBEDDED", 1)
            assert msg.data == b"first"
        finally:
            await nc.close()
    finally:
        await server.stop()
    store = tmp_path / "nats" / "jetstream"
    assert [p.name for p in store.rglob("EMBEDDED") if p.is_dir()] == ["EMBEDDED"]
    assert "Server is ready" in (tmp_path / "nats" / "nats-server.log").read_text()
    assert server.pid is None
    assert not pid_alive(pid)
    assert not port_open(port)


async def test_stream_survives_a_restart_on_the_same_data_dir(tmp_path: Path) -> None:
    port = free_port()
    for round_ in (1, 2):
        server = EmbeddedNatsServer(name="entity-a", data_dir=tmp_path, port=port)
        await server.start()
        try:
            nc = await nats.connect(server.url, max_reconnect_attempts=0)
            try:
                js = nc.jetstream()
                if round_ == 1:
                    await js.add_stream(name="KEEP", subjects=["keep.>"])
                    await js.publish("keep.it", b"durable")
                else:
                    assert (await js.get_msg("KEEP", 1)).data == b"durable"
            finally:
                await nc.close()
        finally:
            await server.stop()


async def test_port_in_use_raises_with_the_servers_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        server = EmbeddedNatsServer(name="entity-a", data_dir=tmp_path, port=port)
        with pytest.raises(NatsServerError) as caught:
            await server.start()
    message = str(caught.value)
    assert "nats-server exited with code" in message
    assert f"127.0.0.1:{port}" in message
    assert "address already in use" in message
    assert server.pid is None


async def test_missing_config_file_raises(tmp_path: Path) -> None:
    missing = tmp_path / "no-such.conf"
    server = EmbeddedNatsServer(
        name="entity-a", data_dir=tmp_path, port=free_port(), config=str(missing)
    )
    with pytest.raises(NatsServerError, match=re.escape(f"nats.config {missing} does not exist")):
        await server.start()
    assert server.pid is None
    assert not (tmp_path / "nats").exists()


async def test_broken_config_file_raises_with_the_parse_error(tmp_path: Path) -> None:
    broken = tmp_path / "broken.conf"
    broken.write_text("port: 4222\njetstream {\n")
    server = EmbeddedNatsServer(
        name="entity-a", data_dir=tmp_path, port=free_port(), config=str(broken)
    )
    with pytest.raises(NatsServerError, match="Parse error"):
        await server.start()


def test_find_binary_refuses_a_non_executable_file(tmp_path: Path) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o644)
    with pytest.raises(NatsServerError) as caught:
        natsserver.find_binary(str(fake))
    assert f"nats.server_binary {str(fake)!r} is not an executable file" in str(caught.value)
    with pytest.raises(NatsServerError, match="not an executable file"):
        EmbeddedNatsServer(name="entity-a", data_dir=tmp_path, binary=str(fake))


@pytest.mark.parametrize("which", ["missing", "directory"])
def test_find_binary_refuses_what_is_not_a_file(tmp_path: Path, which: str) -> None:
    path = tmp_path / "missing" if which == "missing" else tmp_path
    with pytest.raises(NatsServerError, match="is not an executable file"):
        natsserver.find_binary(str(path))


def test_find_binary_defaults_to_the_venv_binary() -> None:
    assert natsserver.find_binary() == NATS_SERVER
    assert natsserver.find_binary(NATS_SERVER) == NATS_SERVER
