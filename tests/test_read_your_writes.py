"""Read-your-writes across ``serve`` processes.

A bot's ``state`` query reflects every command acknowledged before it was sent,
whichever process stored the command and whichever answers the query. Each
process keeps its own actor for a session; one that did not write learns of the
other's events only from the log. Before answering, the service asks the log
for the session's last sequence, and the actor catches up to it if it is behind.

The services here take commands on distinct prefixes, so a test decides which
process writes and which reads: every read is answered by a process that did
not write the move it must show.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from plantangenet import (
    ActorStopped,
    AddCursor,
    AttachAgent,
    ChangeMetadata,
    ConcurrencyError,
    EmbeddedNats,
    JournalConfig,
    Plantangenet,
    StartSession,
)
from plantangenet.wire.client import BotClient
from plantangenet.wire.service import SessionService
from tests.conftest import two_services, with_client

ROOT = Path(__file__).resolve().parent.parent
ALLOW_ALL = [{"id": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}]


@pytest.fixture
def make_services(
    make_runtime: Callable[[], Plantangenet],
) -> Iterator[Callable[[int], list[SessionService]]]:
    """``make(n)``: n services on n runtimes (one stream), service i on prefix ``ryw<i>.cmd``."""
    started: list[SessionService] = []

    def make(n: int) -> list[SessionService]:
        for i in range(n):
            service = SessionService(make_runtime(), command_prefix=f"ryw{i}.cmd", lanes=1)
            service.runtime.run(service.start())
            started.append(service)
        return started[-n:]

    yield make
    for service in started:
        service.runtime.run(service.stop())


async def moves_then_states(
    url: str, config: JournalConfig, prefixes: Sequence[str], pairs: int
) -> list[tuple[int, int, int]]:
    """Move a cursor through one prefix, then ask for the state through the next one.

    Returns the stale answers: ``(pair, acknowledged sequence, answered sequence)``.
    """
    bots = [
        await BotClient.connect(url, agent_id="bot", journal=config, command_prefix=p)
        for p in prefixes
    ]
    stale: list[tuple[int, int, int]] = []
    try:
        session = "ryw"
        await bots[0].open(session)
        await bots[0].change_policy(session, replace=ALLOW_ALL)
        await bots[0].attach(session, kind="bot")
        await bots[0].add_cursor(session, "c", ["x"], 0, 1)
        n = len(bots)
        for pair in range(pairs):
            writer, reader = bots[pair % n], bots[(pair + 1) % n]
            acked = await writer.move_cursor(session, "c", ["x"], pair, pair + 1)
            state = await reader.state(session)
            if state["sequence"] < acked["seq"] or state["cursors"]["c"]["start"] != pair:
                stale.append((pair, acked["seq"], state["sequence"]))
    finally:
        for bot in bots:
            await bot.close()
    return stale


@pytest.mark.parametrize(("processes", "pairs"), [(2, 1000), (3, 600)])
def test_a_state_query_on_another_service_reflects_the_acknowledged_move(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    make_services: Callable[[int], list[SessionService]],
    processes: int,
    pairs: int,
) -> None:
    services = make_services(processes)
    prefixes = [s.command_prefix for s in services]
    stale = asyncio.run(moves_then_states(nats_server.url, journal_config, prefixes, pairs))
    assert stale == []
    # Every service answered its share of moves and of states, and none failed.
    assert all(s.handled >= 2 * pairs // processes and s.failed == 0 for s in services)
    replay = services[0].runtime.replay("ryw")
    for service in services:  # each one's actor, asked for the log's head, folds to it
        caught_up = service.runtime.session("ryw").state_at_least(replay.sequence).result(10)
        assert caught_up == replay


def serve(url: str, config: JournalConfig, command_prefix: str) -> subprocess.Popen[str]:
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "plantangenet",
            "serve",
            "--nats-url",
            url,
            "--stream",
            config.stream,
            "--subject-prefix",
            config.subject_prefix,
            "--command-prefix",
            command_prefix,
            "--lanes",
            "1",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        cwd=ROOT,
    )
    assert process.stdout is not None and process.stderr is not None
    line = process.stdout.readline()
    assert "listening" in line, line + (process.stderr.read() if process.poll() else "")
    return process


def test_two_serve_processes_answer_1000_move_then_state_pairs_with_no_stale_state(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    prefixes = ["rywa.cmd", "rywb.cmd"]
    processes = [serve(nats_server.url, journal_config, p) for p in prefixes]
    try:
        stale = asyncio.run(moves_then_states(nats_server.url, journal_config, prefixes, 1000))
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.communicate(timeout=30)
    assert stale == []
    assert [p.returncode for p in processes] == [0, 0]


def test_after_load_through_one_queue_group_every_state_reply_is_the_log_head(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    make_runtime: Callable[[], Plantangenet],
) -> None:
    # The reported case: two `serve` processes in one queue group under load, then the
    # load stops and a bot asks for the state: every reply must be the log's head.
    async def load(bot: BotClient) -> list[dict[str, Any]]:
        await bot.open("shared")
        await asyncio.gather(*(bot.attach("shared", f"a{i}") for i in range(60)))
        await asyncio.gather(*(bot.change_metadata("shared", {f"k{i}": i}) for i in range(60)))
        return [await bot.state("shared") for _ in range(20)]

    with two_services(make_runtime) as services:
        states = with_client(nats_server.url, journal_config, load)
        head = services[0].runtime.replay("shared")
        assert all(s.handled > 20 for s in services)  # both took commands and queries
    assert head.event_count == 121
    assert [s["sequence"] for s in states] == [head.sequence] * 20
    assert all(len(s["agents"]) == 60 and len(s["metadata"]) == 60 for s in states)


# -- the actor: a read waits for its own append in flight, never folds around it ------------


def slow_appends(runtime: Plantangenet, seconds: float) -> None:
    """Every append of ``runtime``'s journal waits ``seconds`` before it is sent."""
    append = runtime.journal.append_payloads

    async def slow(session_id: str, envelopes: Any, payloads: Any, **kwargs: Any) -> Any:
        await asyncio.sleep(seconds)
        return await append(session_id, envelopes, payloads, **kwargs)

    runtime.journal.append_payloads = slow  # type: ignore[method-assign]


def test_a_read_behind_the_log_waits_for_the_actors_append_in_flight(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    a, b = make_runtime(), make_runtime()
    a.session("s").execute(StartSession())
    writer_b = b.session("s")  # rehydrates at sequence 1, and hears nothing of A's writes
    assert writer_b.state.sequence == 1
    a.session("s").execute(AttachAgent(agent_id="bot"))
    head = a.session("s").execute(ChangeMetadata(changed={"k": 1})).sequence
    slow_appends(b, 0.3)
    # B's append is in flight (and stale: it will conflict) when the read arrives.
    first = writer_b.submit(ChangeMetadata(changed={"k": 2}))
    second = writer_b.submit(AddCursor(agent_id="bot", cursor_id="c", axes=("x",), start=0, end=1))
    time.sleep(0.05)
    read = writer_b.state_at_least(head)
    with pytest.raises(ConcurrencyError):
        first.result(10)
    state = read.result(10)
    # Answered on the caught-up state (never one folded around the append in flight).
    assert state.sequence >= head and state.metadata["k"] in (1, 2)
    assert "bot" in state.agents
    assert second.result(10).sequence > head
    assert writer_b.state == a.replay("s")


def test_a_read_at_the_head_is_answered_at_once_and_one_behind_catches_up(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    a, b = make_runtime(), make_runtime()
    a.session("s").execute(StartSession())
    reader = b.session("s")
    assert reader.state_at_least(1).result(10).sequence == 1
    moved = [a.session("s").execute(ChangeMetadata(changed={"k": i})).sequence for i in range(1, 4)]
    assert reader.state.sequence == 1  # the plain state: what the actor has seen
    state = reader.state_at_least(moved[-1]).result(10)
    assert state.sequence == moved[-1] and state.metadata["k"] == 3
    assert reader.state_at_least(2).result(10) == state  # older asks: the state as it is


def test_a_read_waiting_on_a_stopping_actor_is_answered_actor_stopped(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    a, b = make_runtime(), make_runtime()
    a.session("s").execute(StartSession())
    writer_b = b.session("s")
    writer_b.state  # noqa: B018 - rehydrated at sequence 1
    head = a.session("s").execute(ChangeMetadata(changed={"k": 1})).sequence
    slow_appends(b, 0.5)
    pending = writer_b.submit(ChangeMetadata(changed={"k": 2}))
    time.sleep(0.05)
    read = writer_b.state_at_least(head)
    time.sleep(0.05)
    b.stop_session("s")
    with pytest.raises(ActorStopped):
        read.result(10)
    with pytest.raises(ActorStopped):
        pending.result(10)
