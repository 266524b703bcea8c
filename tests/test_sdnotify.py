"""systemd notifications reach a real NOTIFY_SOCKET datagram socket; none without one."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from pathlib import Path

import pytest

from entityd.sdnotify import Notifier


@pytest.fixture
def notify_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A bound AF_UNIX datagram socket, as systemd provides; (NOTIFY_SOCKET value, socket)."""
    path = tmp_path / "notify"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind(str(path))
        sock.settimeout(5)
        yield str(path), sock


def nothing_waiting(sock: socket.socket) -> bool:
    sock.setblocking(False)
    try:
        sock.recv(4096)
    except BlockingIOError:
        return True
    finally:
        sock.settimeout(5)
    return False


def test_ready_watchdog_stopping_reach_the_socket(
    notify_socket: tuple[str, socket.socket],
) -> None:
    address, sock = notify_socket
    notifier = Notifier({"NOTIFY_SOCKET": address})
    assert notifier.enabled
    notifier.ready()
    assert sock.recv(4096) == b"READY=1"
    notifier.watchdog()
    assert sock.recv(4096) == b"WATCHDOG=1"
    notifier.stopping()
    assert sock.recv(4096) == b"STOPPING=1"
    assert nothing_waiting(sock)


def test_ready_carries_a_status(notify_socket: tuple[str, socket.socket]) -> None:
    address, sock = notify_socket
    Notifier({"NOTIFY_SOCKET": address}).ready("entity entity-a serving")
    assert sock.recv(4096) == b"READY=1\nSTATUS=entity entity-a serving"


def test_abstract_namespace_address() -> None:
    name = f"entityd-test-{os.getpid()}-{os.urandom(4).hex()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        sock.settimeout(5)
        notifier = Notifier({"NOTIFY_SOCKET": "@" + name})
        notifier.ready()
        notifier.watchdog()
        notifier.stopping()
        assert [sock.recv(4096) for _ in range(3)] == [b"READY=1", b"WATCHDOG=1", b"STOPPING=1"]


@pytest.mark.parametrize(
    ("usec", "interval"),
    [("30000000", 15.0), ("1000000", 0.5), ("0", None), ("", None), ("soon", None), ("-5", None)],
)
def test_watchdog_interval_is_half_of_watchdog_usec(usec: str, interval: float | None) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/unused", "WATCHDOG_USEC": usec})
    assert notifier.watchdog_interval == interval


def test_no_watchdog_usec_means_no_watchdog() -> None:
    assert Notifier({"NOTIFY_SOCKET": "/run/unused"}).watchdog_interval is None


def test_without_notify_socket_nothing_is_sent_and_nothing_fails(
    notify_socket: tuple[str, socket.socket], monkeypatch: pytest.MonkeyPatch
) -> None:
    address, sock = notify_socket
    # The process environment names the socket, but the environ given is what counts.
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    quiet = Notifier({"WATCHDOG_USEC": "30000000"})
    assert not quiet.enabled
    quiet.ready("status")
    quiet.watchdog()
    quiet.stopping()
    assert nothing_waiting(sock)
    # With no environ, the process environment is used.
    Notifier().ready()
    assert sock.recv(4096) == b"READY=1"


def test_unset_in_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = Notifier()
    assert not notifier.enabled
    notifier.ready()
    notifier.watchdog()
    notifier.stopping()
