"""Tests for the sd_notify client against a real unix datagram socket (what systemd listens on)."""

from __future__ import annotations

import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from controller.app.sdnotify import SystemdNotifier


@pytest.fixture
def manager_socket() -> Iterator[tuple[socket.socket, str]]:
    """A bound datagram socket playing systemd, and the NOTIFY_SOCKET value that names it."""
    # A short directory: sun_path holds at most 107 bytes, pytest's tmp_path can be longer.
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        path = str(Path(directory) / "notify")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            yield sock, path
        finally:
            sock.close()


def received(sock: socket.socket) -> str:
    return sock.recv(4096).decode()


def test_ready_status_watchdog_stopping_reach_the_socket(
    manager_socket: tuple[socket.socket, str], monkeypatch: pytest.MonkeyPatch
) -> None:
    sock, path = manager_socket
    monkeypatch.setenv("NOTIFY_SOCKET", path)
    with SystemdNotifier.from_env() as notifier:
        assert notifier.enabled
        assert notifier.ready()
        assert received(sock) == "READY=1\n"
        assert notifier.ready("controlling 4 connectors")
        assert received(sock) == "READY=1\nSTATUS=controlling 4 connectors\n"
        assert notifier.status("meter stale")
        assert received(sock) == "STATUS=meter stale\n"
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1\n"
        assert notifier.stopping()
        assert received(sock) == "STOPPING=1\n"


def test_status_newlines_cannot_inject_assignments(
    manager_socket: tuple[socket.socket, str],
) -> None:
    sock, path = manager_socket
    notifier = SystemdNotifier(path)
    notifier.status("two\nREADY=1")
    assert received(sock) == "STATUS=two READY=1\n"
    notifier.close()


def test_abstract_socket_address() -> None:
    name = f"evsite-test-{uuid.uuid4().hex}"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind("\0" + name)
    sock.settimeout(2)
    try:
        notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "@" + name})
        assert notifier.watchdog()
        assert received(sock) == "WATCHDOG=1\n"
        notifier.close()
    finally:
        sock.close()


def test_no_notify_socket_is_a_silent_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    notifier = SystemdNotifier.from_env()
    assert not notifier.enabled
    assert not notifier.ready("x")
    assert not notifier.status("x")
    assert not notifier.watchdog()
    assert not notifier.stopping()
    notifier.close()
    notifier.close()


def test_unsupported_address_kind_is_a_no_op() -> None:
    notifier = SystemdNotifier.from_env({"NOTIFY_SOCKET": "vsock:2:1234"})
    assert not notifier.enabled
    assert not notifier.watchdog()


def test_send_failure_never_raises_and_recovers() -> None:
    with tempfile.TemporaryDirectory(prefix="sdn") as directory:
        path = str(Path(directory) / "notify")
        notifier = SystemdNotifier(path)
        assert not notifier.ready()  # nobody listening yet: swallowed
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        sock.bind(path)
        sock.settimeout(2)
        try:
            assert notifier.watchdog()  # the manager came back: delivered again
            assert received(sock) == "WATCHDOG=1\n"
        finally:
            sock.close()
        os.unlink(path)
        assert not notifier.watchdog()  # gone again: still no exception
        notifier.close()


@pytest.mark.parametrize(
    ("env", "expected"),
    [
        ({}, None),
        ({"WATCHDOG_USEC": "10000000"}, 10.0),
        ({"WATCHDOG_USEC": "2500000", "WATCHDOG_PID": str(os.getpid())}, 2.5),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": str(os.getpid() + 1)}, None),
        ({"WATCHDOG_USEC": "10000000", "WATCHDOG_PID": "nope"}, None),
        ({"WATCHDOG_USEC": "0"}, None),
        ({"WATCHDOG_USEC": "-5"}, None),
        ({"WATCHDOG_USEC": "ten"}, None),
    ],
)
def test_watchdog_interval(env: dict[str, str], expected: float | None) -> None:
    assert SystemdNotifier.from_env(env).watchdog_interval_s() == expected


def test_watchdog_interval_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert SystemdNotifier.from_env().watchdog_interval_s() == 4.0
