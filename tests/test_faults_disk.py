"""Faults: the store runs out of space.

A dedicated nats-server whose JetStream file store may hold only a few hundred KiB
(``jetstream { max_file_store }``), and a stream with no size limit of its own: the
session is written to until the *server* refuses for lack of storage (err_code 10023,
"insufficient resources"). Appends must then fail with a typed, clear error, never
silently; every acknowledged command must be in the log, whole, at the sequences it
was acknowledged at, with no gap; and nothing half-written: a group-committed atomic
batch of several commands, or a command of several events, is all there or absent.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import errno
import http.server
import io
import json
import logging
import os
import random
import subprocess
import threading
import time
from collections.abc import Iterator
from concurrent.futures import Future
from pathlib import Path

import msgpack
import nats
import pytest

from plantangenet import (
    ChangeMetadata,
    EmbeddedNats,
    JournalConfig,
    JournalError,
    Plantangenet,
    StorageExhausted,
    verify,
)
from plantangenet.actors.session import CommandResult
from plantangenet.cli import main as cli_main
from plantangenet.log.journal import store_problem
from plantangenet.wire.protocol import command_subject, encode_request
from plantangenet.wire.service import SessionService

#: What the server's JetStream file store may hold.
STORE_BYTES = 384 * 1024
CONFIG = JournalConfig(stream="DISK", subject_prefix="disk.events")


@pytest.fixture
def small_store(tmp_path: Path) -> Iterator[EmbeddedNats]:
    conf = tmp_path / "nats.conf"
    conf.write_text(f"jetstream {{\n  max_file_store: {STORE_BYTES}\n}}\n")
    server = EmbeddedNats(tmp_path / "store", extra_args=["-c", str(conf)]).start()
    yield server
    server.stop()


def wire_request(url: str, subject: str, payload: bytes) -> dict[str, object]:
    async def go() -> dict[str, object]:
        nc = await nats.connect(url)
        try:
            msg = await nc.request(subject, payload, timeout=15)
        finally:
            await nc.close()
        reply: dict[str, object] = msgpack.unpackb(msg.data, raw=False)
        return reply

    return asyncio.run(go())


def test_a_store_out_of_space_refuses_appends_clearly_and_loses_nothing(
    small_store: EmbeddedNats,
) -> None:
    rng = random.Random(7)
    acked: dict[str, CommandResult] = {}
    refused: dict[str, BaseException] = {}
    with Plantangenet.open(nats_url=small_store.url, journal=CONFIG) as pg:
        info = pg.run(pg.journal.js.stream_info(CONFIG.stream))
        assert info.config.max_bytes == -1  # no stream limit: the server's store runs out
        session = pg.session("s")
        for result in (
            session.start({"purpose": "disk"}),
            session.attach("a"),
            *(session.add_cursor("a", f"c{i}", ["x"], 0, 1) for i in range(3)),
        ):
            acked[result.command_id] = result
        # Pipelined waves: while one append is in flight the others queue up and go out
        # together as one atomic batch (group commit), so batches of several commands
        # and events meet the end of the store.
        n = 0
        while len(refused) < 8:
            wave: list[tuple[str, Future[CommandResult]]] = []
            for _ in range(8):
                n += 1
                blob = f"{n}:" + "x" * rng.randrange(500, 4000)
                command = ChangeMetadata(changed={"blob": blob}, command_id=f"m{n}")
                wave.append((command.command_id, session.submit(command)))
            for command_id, future in wave:
                try:
                    acked[command_id] = future.result(timeout=30)
                except JournalError as exc:
                    refused[command_id] = exc
            assert n < 2_000, "the store never filled up"
        # A command of several events (cursors removed, agent detached) is refused whole.
        with pytest.raises(StorageExhausted) as whole:
            session.detach("a", command_id="detach-a")
        refused["detach-a"] = whole.value
        for error in refused.values():
            assert isinstance(error, StorageExhausted), repr(error)
            assert error.code == "storage_exhausted"
            assert "storage exhausted" in str(error) and "insufficient resources" in str(error)
            assert "err_code 10023" in str(error)
        assert session.is_running
        # Over the wire the refusal is the same typed error.
        service = SessionService(pg)
        pg.run(service.start())
        try:
            payload = encode_request({"changed": {"k": "v"}}, command_id="wire-1")
            reply = wire_request(small_store.url, command_subject("s", "change_metadata"), payload)
        finally:
            pg.run(service.stop())
        assert reply["ok"] is False
        assert reply["error"]["code"] == "storage_exhausted", reply  # type: ignore[index]
        refused["wire-1"] = StorageExhausted("over the wire")

        history = pg.history("s")
        # No gap: one session on its own stream holds the sequences 1..N.
        assert [e.sequence for e in history] == list(range(1, len(history) + 1))
        by_command: dict[str, list[int]] = {}
        for envelope in history:
            by_command.setdefault(envelope.causation_id, []).append(envelope.sequence or 0)
        # Every acknowledged command is there, whole, where it was acknowledged...
        for command_id, result in acked.items():
            assert by_command.get(command_id) == [e.sequence for e in result.events], command_id
        # ...and nothing else: no refused command left a single event behind.
        assert set(by_command) == set(acked)
        assert not set(refused) & set(by_command)
        assert pg.run(verify(pg.journal, "s")).intact
        assert pg.replay("s") == session.state
        assert session.state.agents["a"] and len(session.state.cursors) == 3
        stored = [(e.sequence, e.event_id) for e in history]

    # After a restart the log is what was acknowledged; the store is still full.
    small_store.restart()
    with Plantangenet.open(nats_url=small_store.url, journal=CONFIG) as pg:
        assert [(e.sequence, e.event_id) for e in pg.history("s")] == stored
        session = pg.session("s")
        assert session.state == pg.replay("s") and session.state.sequence == len(stored)
        with pytest.raises(StorageExhausted):
            session.change_metadata({"after": "restart"})
        assert pg.sessions() == {"s": len(stored)}


# -- A real full disk ---------------------------------------------------------------------
#
# Above, the server's own limit refuses (err_code 10023). On a real full disk the server
# believes it has room (here: told it may use 1 GiB of a 4 MiB tmpfs): its write fails
# ("Critical write error ... no space left on device"), the stream refuses every write
# until the server restarts, and nats-server never answers those appends. The journal
# asks the server's /healthz when an acknowledgement is late and names it.

DISK_BYTES = 4 * 1024 * 1024
BALLAST_BYTES = 512 * 1024
FULL_CONFIG = JournalConfig(stream="FULL", subject_prefix="full.events")


@contextlib.contextmanager
def small_disk(disk: Path) -> Iterator[Path]:
    """A tmpfs of DISK_BYTES mounted at ``disk`` (the test is skipped if mounting fails)."""
    disk.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={DISK_BYTES}", "tmpfs", str(disk)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        subprocess.run(["umount", "-l", str(disk)], check=False)


def fill(path: Path) -> None:
    """Write ``path`` until its filesystem is full."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND)
    try:
        while True:
            os.write(fd, b"\0" * 4096)
    except OSError as exc:
        assert exc.errno == errno.ENOSPC
    finally:
        os.close(fd)


@pytest.fixture
def full_disk(tmp_path: Path) -> Iterator[tuple[EmbeddedNats, Path]]:
    with small_disk(tmp_path / "disk") as disk:
        ballast = disk / "ballast"  # what an operator deletes to make room
        ballast.write_bytes(b"\0" * BALLAST_BYTES)
        conf = tmp_path / "nats.conf"
        conf.write_text("jetstream {\n  max_file_store: 1G\n}\n")
        server = EmbeddedNats(disk / "store", monitor=True, extra_args=["-c", str(conf)])
        server.start()
        try:
            yield server, ballast
        finally:
            server.stop()


def test_a_full_disk_is_named_within_seconds_and_recovers_after_space_is_freed(
    full_disk: tuple[EmbeddedNats, Path], caplog: pytest.LogCaptureFixture
) -> None:
    server, ballast = full_disk
    assert server.monitor_url is not None
    assert server.store_dir not in server.log_path.parents  # the log is not on the full disk
    config = dataclasses.replace(FULL_CONFIG, monitor_url=server.monitor_url)
    rng = random.Random(11)
    acked: dict[str, CommandResult] = {}
    refused: dict[str, BaseException] = {}
    with Plantangenet.open(nats_url=server.url, journal=config) as pg:
        session = pg.session("s")
        for result in (session.start({"purpose": "full disk"}), session.attach("a")):
            acked[result.command_id] = result
        n = 0
        while not refused:
            wave: list[tuple[str, Future[CommandResult]]] = []
            for _ in range(8):
                n += 1
                blob = f"{n}:" + "x" * rng.randrange(2000, 6000)
                command = ChangeMetadata(changed={"blob": blob}, command_id=f"m{n}")
                wave.append((command.command_id, session.submit(command)))
            for command_id, future in wave:
                try:
                    acked[command_id] = future.result(timeout=30)
                except JournalError as exc:
                    refused[command_id] = exc
            assert n < 4_000, "the disk never filled up"
        # A single append on the full disk: typed, named, in a couple of seconds.
        started = time.monotonic()
        with pytest.raises(StorageExhausted) as single:
            session.change_metadata({"k": "v"}, command_id="single")
        assert time.monotonic() - started < 6
        refused["single"] = single.value
        for error in refused.values():
            assert isinstance(error, StorageExhausted), repr(error)
            assert error.code == "storage_exhausted"
            assert "no space left on device" in str(error), str(error)
            assert "restart" in str(error)
        # Over the wire: the same typed error, and reads keep being answered.
        service = SessionService(pg)
        pg.run(service.start())
        try:
            with caplog.at_level(logging.ERROR, logger="plantangenet.wire.service"):
                for i in (1, 2):
                    payload = encode_request({"changed": {"k": "w"}}, command_id=f"wire-{i}")
                    reply = wire_request(
                        server.url, command_subject("s", "change_metadata"), payload
                    )
                    assert reply["ok"] is False
                    assert reply["error"]["code"] == "storage_exhausted", reply  # type: ignore[index]
                    refused[f"wire-{i}"] = StorageExhausted("over the wire")
                state = wire_request(server.url, command_subject("s", "state"), b"")
        finally:
            pg.run(service.stop())
        assert service.storage_refusals == 2
        said = [r.getMessage() for r in caplog.records if r.name == "plantangenet.wire.service"]
        assert len(said) == 1 and "the log has no room" in said[0], said
        assert "no space left on device" in said[0]
        assert state["ok"] is True, state
        assert state["state"]["sequence"] == session.state.sequence  # type: ignore[index]
        history = pg.history("s")
        stored = [(e.sequence, e.event_id) for e in history]
        assert [s for s, _ in stored] == list(range(1, len(stored) + 1))
        # `plantangenet status` names it too (exit status 1: a problem).
        out = io.StringIO()
        opts = ["--nats-url", server.url, "--monitor-url", server.monitor_url]
        opts += ["--stream", FULL_CONFIG.stream, "--subject-prefix", FULL_CONFIG.subject_prefix]
        assert cli_main(["status", *opts], out=out) == 1, out.getvalue()
        assert "the server cannot write its store" in out.getvalue()
        assert "no space left on device" in out.getvalue()
        assert f"{len(stored):,} events" in out.getvalue()

    # The server restarts on the still-full disk (its log is elsewhere); the log is there
    # and appends are still refused by name. Starting, it says the store needs space.
    with caplog.at_level(logging.WARNING, logger="plantangenet.nats.embedded"):
        server.restart()
    assert f"store {server.store_dir} is nearly full" in caplog.text
    assert "give it at least" in caplog.text
    with Plantangenet.open(nats_url=server.url, journal=config) as pg:
        assert [(e.sequence, e.event_id) for e in pg.history("s")] == stored
        with pytest.raises(StorageExhausted):
            pg.session("s").change_metadata({"big": "y" * 20_000}, command_id="still-full")
        refused["still-full"] = StorageExhausted("still full")

    # Space freed and the server restarted: appends are stored again, nothing acknowledged
    # was lost and nothing refused appeared.
    ballast.unlink()
    server.restart()
    with Plantangenet.open(nats_url=server.url, journal=config) as pg:
        session = pg.session("s")
        after = session.change_metadata({"after": "space freed"}, command_id="after")
        acked["after"] = after
        history = pg.history("s")
        assert [(e.sequence, e.event_id) for e in history][: len(stored)] == stored
        by_command: dict[str, list[int]] = {}
        for envelope in history:
            by_command.setdefault(envelope.causation_id, []).append(envelope.sequence or 0)
        for command_id, result in acked.items():
            assert by_command.get(command_id) == [e.sequence for e in result.events], command_id
        assert set(by_command) == set(acked)
        assert not set(refused) & set(by_command)
        assert pg.run(verify(pg.journal, "s")).intact
        assert pg.replay("s") == session.state


def test_the_runtime_opens_its_store_on_a_full_disk(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """`plantangenet serve` (or any command) on a store whose disk is full: its server
    starts, history is read, appends are refused by name; with room again, they work."""
    with small_disk(tmp_path / "disk") as disk:
        store = disk / "store"
        with Plantangenet.open(store_dir=store, journal=FULL_CONFIG) as pg:
            started = pg.session("s").start({"purpose": "full store"})
        ballast = disk / "ballast"
        fill(ballast)
        with (
            caplog.at_level(logging.WARNING),
            Plantangenet.open(store_dir=store, journal=FULL_CONFIG) as pg,
        ):
            assert [e.event_id for e in pg.history("s")] == [e.event_id for e in started.events]
            with pytest.raises(StorageExhausted):
                pg.session("s").change_metadata({"big": "y" * 20_000}, command_id="full")
        assert f"store {store} is nearly full" in caplog.text
        ballast.unlink()
        with Plantangenet.open(store_dir=store, journal=FULL_CONFIG) as pg:
            pg.session("s").change_metadata({"room": "again"}, command_id="room")
            assert [e.causation_id for e in pg.history("s")] == [started.command_id, "room"]


@pytest.mark.parametrize(
    ("status", "body", "named"),
    [
        (200, {"status": "ok"}, None),
        (
            503,
            {
                "status": "unavailable",
                "error": "JetStream stream '$G > FULL' write error: write /s/1.blk: "
                "no space left on device",
            },
            "no space left on device",
        ),
        (503, {"status": "unavailable", "error": "JetStream not enabled"}, "JetStream is off"),
        (503, {"status": "unavailable", "error": "JetStream is not current with the meta"}, None),
        (503, "not json", None),
    ],
)
def test_what_the_servers_health_says_of_its_store(
    status: int, body: object, named: str | None
) -> None:
    class Health(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            data = (body if isinstance(body, str) else json.dumps(body)).encode()
            self.send_response(status)
            self.end_headers()
            self.wfile.write(data)

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Health)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        problem = asyncio.run(store_problem(f"http://127.0.0.1:{server.server_port}"))
    finally:
        server.shutdown()
        server.server_close()
    if named is None:
        assert problem is None
    else:
        assert problem is not None and named in problem
    # No server there at all: no problem known.
    assert asyncio.run(store_problem(f"http://127.0.0.1:{server.server_port}", 0.5)) is None
