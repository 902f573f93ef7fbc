"""Faults around reading the log: consumers that must not pile up, reads that fail.

A stream holds at most 1,000 consumers (fewer if its ``max_consumers`` says so), and
every read of the log (a replay, a rehydration, a catch-up, ``history``, a tail) is a
consumer. Readers delete theirs when they end; what cannot delete (a bot without the
permission) is dropped by the server after a short inactive threshold. When a stream
is out of consumers anyway, a read fails with a typed error, and a session that cannot
rehydrate answers a ``state`` query with that error, never with an empty state.
"""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import AsyncGenerator, Iterator
from typing import Any

import msgpack
import nats
import pytest
from nats.js.api import ConsumerConfig, DiscardPolicy, StorageType, StreamConfig

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet, SessionStarted, TooManyReaders
from plantangenet.log import (
    journal_reads as journal_module,  # where the readers' consumers are made
)
from plantangenet.wire.protocol import command_subject
from plantangenet.wire.service import SessionService
from tests.conftest import AsyncJournal, wait_until
from tests.test_journal import env


def consumers(j: AsyncJournal) -> int:
    info = j.run(j.journal.js.stream_info(j.journal.config.stream))
    return int(info.state.consumer_count)


def fill(j: AsyncJournal, n: int) -> None:
    for i in range(n):
        j.run(j.journal.append("s1", [env(SessionStarted("s1", {}), f"c{i}")], expected_sequence=i))


def test_reads_and_tails_delete_their_consumers(journal: AsyncJournal) -> None:
    fill(journal, 5)
    j = journal.journal

    async def partial() -> int:
        reader = j.read("s1")
        first = await anext(reader)
        assert isinstance(reader, AsyncGenerator)  # typed as an AsyncIterator, closable
        await reader.aclose()  # the reader stops early
        return first.sequence or 0

    async def tail() -> int:
        seen = 0
        async for _ in j.tail("s1", from_sequence=1):
            seen += 1
            if seen == 5:
                break
        return seen

    async def cancelled_tail() -> None:
        task = asyncio.ensure_future(tail_forever())
        await asyncio.sleep(0)  # let it create its consumer
        while (await j.js.stream_info(j.config.stream)).state.consumer_count == 0:
            await asyncio.sleep(0.01)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    async def tail_forever() -> None:
        async for _ in j.tail("s1"):
            pass

    for _ in range(20):
        assert len(journal.run(j.read_all("s1"))) == 5
    assert journal.run(partial()) == 1
    assert journal.run(tail()) == 5
    wait_until(lambda: consumers(journal) == 0)
    journal.run(cancelled_tail())
    wait_until(lambda: consumers(journal) == 0)


def test_readers_that_may_not_delete_expire_on_their_own(
    nats_server: EmbeddedNats, journal_config: JournalConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Bots hold per-session permissions, without CONSUMER.DELETE: they leave their
    # consumers to the server, which drops them after a short inactive threshold
    # (5 s; shortened here so that the test does not wait that long).
    assert journal_module.READER_INACTIVE_THRESHOLD <= 5.0
    monkeypatch.setattr(journal_module, "READER_INACTIVE_THRESHOLD", 1.5)
    bot = AsyncJournal(nats_server.url, dataclasses.replace(journal_config, leader_reads=False))
    try:
        assert bot.journal.config.delete_readers is None
        fill(bot, 2)
        assert len(bot.run(bot.journal.read_all("s1"))) == 2
        assert consumers(bot) == 1  # left behind...
        wait_until(lambda: consumers(bot) == 0, timeout=20)  # ...and dropped by the server
    finally:
        bot.close()


# -- a stream out of consumers -------------------------------------------------------------


def create_stream(url: str, config: JournalConfig, max_consumers: int) -> None:
    """The journal's stream, made beforehand with a small consumer limit."""

    async def create() -> None:
        nc = await nats.connect(url)
        try:
            await nc.jetstream().add_stream(
                StreamConfig(
                    name=config.stream,
                    subjects=[f"{config.subject_prefix}.*"],
                    storage=StorageType.FILE,
                    discard=DiscardPolicy.NEW,
                    allow_atomic=True,
                    allow_direct=True,
                    max_consumers=max_consumers,
                )
            )
        finally:
            await nc.close()

    asyncio.run(create())


def hold_consumer(j: AsyncJournal, name: str) -> None:
    """A consumer that stays (another reader, somewhere), taking one of the stream's slots."""
    config = ConsumerConfig(
        name=name,
        filter_subject=f"{j.journal.config.subject_prefix}.other",
        deliver_subject=f"nowhere.{name}",
        inactive_threshold=300.0,
        mem_storage=True,
    )
    j.run(j.journal.js.add_consumer(j.journal.config.stream, config))


def release_consumer(j: AsyncJournal, name: str) -> None:
    j.run(j.journal.js.delete_consumer(j.journal.config.stream, name))


@pytest.fixture
def tight(nats_server: EmbeddedNats, journal_config: JournalConfig) -> Iterator[AsyncJournal]:
    """A journal on a stream that holds at most one consumer."""
    create_stream(nats_server.url, journal_config, max_consumers=1)
    j = AsyncJournal(nats_server.url, journal_config)
    yield j
    j.close()


def test_a_stream_out_of_consumers_refuses_reads_with_a_typed_error(tight: AsyncJournal) -> None:
    fill(tight, 3)
    assert len(tight.run(tight.journal.read_all("s1"))) == 3
    # A read deletes its consumer fire-and-forget: wait until the server has acted on
    # it, or the held consumer below would find the stream's only slot still taken.
    wait_until(lambda: consumers(tight) == 0)
    hold_consumer(tight, "elsewhere")
    with pytest.raises(TooManyReaders) as refused:
        tight.run(tight.journal.read_all("s1"))
    assert refused.value.code == "too_many_readers"
    assert "readers" in str(refused.value) and "maximum consumers" in str(refused.value)
    release_consumer(tight, "elsewhere")
    wait_until(lambda: consumers(tight) == 0)
    assert len(tight.run(tight.journal.read_all("s1"))) == 3


def state_query(url: str, session_id: str) -> dict[str, Any]:
    async def ask() -> dict[str, Any]:
        nc = await nats.connect(url)
        try:
            msg = await nc.request(command_subject(session_id, "state"), b"", timeout=10)
        finally:
            await nc.close()
        reply: dict[str, Any] = msgpack.unpackb(msg.data, raw=False)
        return reply

    return asyncio.run(ask())


def test_a_session_that_cannot_rehydrate_answers_state_with_an_error(
    nats_server: EmbeddedNats, journal_config: JournalConfig, tight: AsyncJournal
) -> None:
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config) as pg:
        service = SessionService(pg)
        pg.run(service.start())
        try:
            session = pg.session("s")
            session.start({"k": "v"})
            session.attach("a")
            pg.stop_session("s")
            wait_until(lambda: consumers(tight) == 0)
            hold_consumer(tight, "elsewhere")
            # The service starts the session's actor, whose rehydration cannot read the log:
            # the query reports why, instead of answering a new, empty session.
            failed = state_query(nats_server.url, "s")
            assert failed["ok"] is False, failed
            assert failed["error"]["code"] == "too_many_readers", failed
            release_consumer(tight, "elsewhere")
            # The same actor catches up on the next query.
            state = state_query(nats_server.url, "s")["state"]
            assert state["status"] == "active" and state["sequence"] == 2
            assert list(state["agents"]) == ["a"] and state["metadata"] == {"k": "v"}
        finally:
            pg.run(service.stop())


def test_a_session_whose_log_cannot_be_decoded_answers_state_with_an_error(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
) -> None:
    service = SessionService(runtime)
    runtime.run(service.start())
    try:
        runtime.session("s").start()
        runtime.stop_session("s")
        # Something wrote a message that is no event into the session's subject.
        subject = runtime.journal.subject("s")
        runtime.run(runtime._nc.request(subject, b"\xc1 not msgpack", timeout=5))
        failed = state_query(nats_server.url, "s")
        assert failed["ok"] is False and failed["error"]["code"] == "log_damaged", failed
        assert failed["error"]["seq"] == 2 and "plantangenet quarantine s 2" in str(failed)
    finally:
        runtime.run(service.stop())
