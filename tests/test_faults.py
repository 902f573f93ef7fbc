"""Faults: the nats-server killed under load, actors that must come back, nothing lost."""

from __future__ import annotations

import itertools
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from plantangenet import (
    AttachAgent,
    Command,
    EmbeddedNats,
    Envelope,
    JournalConfig,
    Plantangenet,
    PlantangenetError,
    SessionHandle,
)
from tests.conftest import session_with_cursor

#: Short timeouts: appends fail fast while the server is down.
FAULT_JOURNAL = JournalConfig(
    stream="FAULTS",
    subject_prefix="faults.events",
    ack_timeout=2.0,
    idle_timeout=2.0,
    api_timeout=2.0,
)


def assert_acknowledged_stored_once(history: list[Envelope], outcomes: dict[str, str]) -> None:
    """Every acknowledged command is in the log, none twice, nothing nobody sent, in order."""
    stored = [e.causation_id for e in history if e.type_name != "SessionStarted"]
    assert len(stored) == len(set(stored)), "a command was stored twice"
    acked = {c for c, o in outcomes.items() if o == "acked"}
    assert acked <= set(stored), "an acknowledged command is missing from the log"
    assert set(stored) <= set(outcomes)  # nothing in the log that nobody sent
    sequences = [e.sequence or 0 for e in history]
    assert sequences == sorted(sequences)


@pytest.fixture
def own_server(tmp_path: Path) -> Iterator[EmbeddedNats]:
    server = EmbeddedNats(tmp_path / "store").start()
    yield server
    server.stop()


def through_a_server_kill(
    server: EmbeddedNats,
    writer_for: Callable[[SessionHandle, dict[str, str]], Callable[[], None]],
    downtime: float,
) -> tuple[dict[str, str], list[Envelope]]:
    """Run a session on ``server`` while ``writer_for(session, outcomes)`` writes to it in a
    loop on a thread, recording each command id as "acked" or "failed". The server is
    SIGKILLed once ``ACKS`` commands are acknowledged and restarted on the same store after
    ``downtime``; once ``ACKS`` more are (the actor reconnects by itself), the writing stops.
    Checks the log (see ``assert_acknowledged_stored_once``) and that the live state is its
    replay; returns the outcomes and the session's history."""
    outcomes: dict[str, str] = {}

    def acked() -> int:
        return sum(1 for o in list(outcomes.values()) if o == "acked")

    pg = Plantangenet.open(nats_url=server.url, journal=FAULT_JOURNAL)
    try:
        session = pg.session("s1")
        session.start()
        write = writer_for(session, outcomes)
        stop = threading.Event()

        def writer() -> None:
            while not stop.is_set():
                write()

        thread = threading.Thread(target=writer)
        thread.start()
        try:
            deadline = time.monotonic() + 30
            while acked() < ACKS:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            killed = server.pid
            server.kill()  # SIGKILL: no flush, no goodbye
            time.sleep(downtime)  # longer than the ack timeout: appends fail meanwhile
            server.restart()  # same port, same store
            assert server.pid != killed
            before = acked()
            deadline = time.monotonic() + 60
            while acked() < before + ACKS:
                assert time.monotonic() < deadline, "the session did not serve again"
                time.sleep(0.05)
        finally:
            stop.set()
            thread.join(30)
        history = pg.history("s1")
        assert pg.replay("s1") == session.state
    finally:
        pg.close()
    assert_acknowledged_stored_once(history, outcomes)
    return outcomes, history


#: Acknowledged commands wanted before the kill, and again after the restart.
ACKS = 50


@pytest.mark.parametrize("downtime", [0.5, 3.0])
def test_server_killed_under_load_loses_no_acknowledged_command(
    own_server: EmbeddedNats, downtime: float
) -> None:
    def writer_for(session: SessionHandle, outcomes: dict[str, str]) -> Callable[[], None]:
        numbers = itertools.count()

        def write() -> None:
            n = next(numbers)
            command = AttachAgent(agent_id=f"a{n}", command_id=f"cmd-{n}")
            try:
                session.execute(command, timeout=15)
                outcomes[command.command_id] = "acked"
            except (PlantangenetError, TimeoutError):
                outcomes[command.command_id] = "failed"

        return write

    outcomes, history = through_a_server_kill(own_server, writer_for, downtime)
    stored = [e.causation_id for e in history if e.type_name == "AgentAttached"]
    # Commands that failed were reported to their caller; if one was stored after all
    # (its acknowledgement was lost with the server), it is there exactly once.
    failed = {c for c, o in outcomes.items() if o == "failed"}
    assert all(stored.count(c) <= 1 for c in failed)


def test_tail_follows_a_session_across_a_server_restart(own_server: EmbeddedNats) -> None:
    config = JournalConfig(
        stream="TAIL", subject_prefix="tail.events", idle_timeout=1.0, api_timeout=2.0
    )
    pg = Plantangenet.open(nats_url=own_server.url, journal=config)
    try:
        session = pg.session("s1")
        session.start()
        seen: list[int] = []

        async def follow() -> None:
            async for envelope in pg.journal.tail("s1", from_sequence=1):
                seen.append(envelope.sequence or 0)
                if len(seen) == 3:
                    return

        following = pg.loop.submit(follow())
        session.attach("before")
        own_server.kill()
        own_server.restart()
        deadline = time.monotonic() + 30
        while True:
            try:
                session.attach(
                    "after",
                )
                break
            except PlantangenetError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        following.result(timeout=30)
        assert seen == [1, 2, 3]
    finally:
        pg.close()


def test_a_dead_session_actor_comes_back_from_the_log(runtime: Plantangenet) -> None:
    from plantangenet import ActorStopped, MoveCursor

    session = session_with_cursor(runtime, agent_id="a")
    commands = [
        MoveCursor(
            agent_id="a", cursor_id="c", axes=("x",), start=i, end=i + 1, command_id=f"move-{i}"
        )
        for i in range(300)
    ]
    futures = [session.submit(c) for c in commands]
    session._actor.stop(block=False)  # the actor dies with commands in flight
    outcomes: list[int | None] = []
    for future in futures:
        try:
            outcomes.append(future.result(30).sequence)
        except ActorStopped:
            outcomes.append(None)
    assert not session.is_running
    # The next use brings the session back from the log, identical to a fresh replay.
    again = runtime.session("s1")
    assert again.state == runtime.replay("s1")
    # Every command that got an error can be retried with its id: applied once.
    for command, outcome in zip(commands, outcomes, strict=True):
        if outcome is None:
            again.execute(command)
    moved = [e.causation_id for e in runtime.history("s1") if e.type_name == "CursorMoved"]
    assert sorted(moved) == sorted(c.command_id for c in commands)
    assert again.state.cursors["c"].start == 299


def test_server_killed_under_batched_load_loses_no_acknowledged_command(
    own_server: EmbeddedNats,
) -> None:
    # The same, with pipelined submit_many batches: each batch attaches agents and opens
    # and moves their cursors, so appends carry groups of dependent commands when the
    # server dies; failed groups are decided again or reported, per command.
    from plantangenet import AddCursor, CommandResult, MoveCursor

    def writer_for(session: SessionHandle, outcomes: dict[str, str]) -> Callable[[], None]:
        numbers = itertools.count(step=10)

        def write() -> None:
            first = next(numbers)
            batch: list[Command] = []
            for i in range(first, first + 10):
                batch += [
                    AttachAgent(agent_id=f"a{i}", command_id=f"attach-{i}"),
                    AddCursor(
                        agent_id=f"a{i}",
                        cursor_id=f"c{i}",
                        axes=("x",),
                        start=0,
                        end=1,
                        command_id=f"add-{i}",
                    ),
                    MoveCursor(
                        agent_id=f"a{i}",
                        cursor_id=f"c{i}",
                        axes=("x",),
                        start=i,
                        end=i + 1,
                        command_id=f"move-{i}",
                    ),
                ]
            try:
                results = session.submit_many(batch).result(30)
            except (PlantangenetError, TimeoutError):
                results = tuple(PlantangenetError("batch lost") for _ in batch)
            for command, result in zip(batch, results, strict=True):
                ok = isinstance(result, CommandResult)
                outcomes[command.command_id] = "acked" if ok else "failed"

        return write

    through_a_server_kill(own_server, writer_for, downtime=1.0)
