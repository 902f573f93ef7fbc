"""An append's attempts: lost acknowledgements and missing leaders, on a real server.

The journal sends an append again when an attempt's acknowledgement does not come
within ``attempt_timeout`` (or no stream leader answers), under the same message ids
and expected sequence. Here the faults are injected between the journal and the
connection: an attempt that reaches the server but whose acknowledgement is "lost",
one that never reaches it, and "no responders".
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import nats.errors
import pytest

from plantangenet import (
    AgentAttached,
    ConcurrencyError,
    DuplicateCommand,
    Envelope,
    JournalError,
    SessionStarted,
)
from plantangenet.events import new_id, utc_now
from plantangenet.log.journal import InvalidJournalConfig, JournalConfig
from tests.conftest import AsyncJournal

INCOMPLETE = (
    b'{"error":{"code":400,"err_code":10176,"description":"atomic publish batch is incomplete"}}'
)


def env(event: object, command_id: str, session_id: str = "s1") -> Envelope:
    return Envelope(event, session_id, new_id(), command_id, command_id, utc_now())  # type: ignore[arg-type]


def read(j: AsyncJournal, session_id: str = "s1") -> list[Envelope]:
    async def collect() -> list[Envelope]:
        return [e async for e in j.journal.read(session_id)]

    return j.run(collect())  # type: ignore[no-any-return]


def faulty(
    j: AsyncJournal, faults: list[str], before: Callable[[], Any] | None = None
) -> list[str]:
    """Make the journal's next attempts fail as `faults` says; the attempts made.

    ``lost``: sent and stored, acknowledgement lost (a timeout); ``dropped``: not
    sent (a timeout); ``no-responders``: not sent, no leader; ``incomplete``: not
    stored, the server answers "batch incomplete". ``before`` (a
    coroutine function) runs before the first retry (another writer, say).
    """
    journal = j.journal
    send = journal._send_append
    attempts: list[str] = []

    async def attempt(*args: Any) -> Any:
        fault = faults.pop(0) if faults else "ok"
        attempts.append(fault)
        if len(attempts) == 2 and before is not None:
            await before()
        if fault == "lost":
            await send(*args)
            raise nats.errors.TimeoutError
        if fault == "dropped":
            raise nats.errors.TimeoutError
        if fault == "no-responders":
            raise nats.errors.NoRespondersError
        if fault == "incomplete":  # a batch message went missing on its way
            return INCOMPLETE
        return await send(*args)

    journal._send_append = attempt  # type: ignore[method-assign,assignment]
    return attempts


@pytest.fixture(params=[True, False], ids=["leader-reads", "direct-reads"])
def retrying(journal: AsyncJournal, request: pytest.FixtureRequest) -> AsyncJournal:
    """The journal with short attempts; reads from the leader or by direct get."""
    journal.journal.config = dataclasses.replace(
        journal.journal.config, attempt_timeout=0.2, ack_timeout=3.0, leader_reads=request.param
    )
    start = [env(SessionStarted("s1", {}), "start")]
    journal.run(journal.journal.append("s1", start, expected_sequence=0))
    # Another session's messages, so that stream and subject sequences differ.
    other = [env(SessionStarted("s2", {}), "other", "s2")]
    journal.run(journal.journal.append("s2", other, expected_sequence=0))
    return journal


@pytest.mark.parametrize("size", [1, 3], ids=["one-event", "atomic-batch"])
def test_a_retry_after_a_lost_ack_succeeds_and_stores_once(
    retrying: AsyncJournal, size: int
) -> None:
    j = retrying
    attempts = faulty(j, ["lost", "lost"])
    events = [env(AgentAttached(f"a{i}", "bot", ""), "attach") for i in range(size)]
    result = j.run(j.journal.append("s1", events, expected_sequence=1))
    assert attempts == ["lost", "lost", "ok"]
    stored = read(j)
    assert [e.sequence for e in stored] == [1, *range(3, 3 + size)]
    assert [e.sequence for e in result.envelopes] == list(range(3, 3 + size))
    assert [e.event for e in stored[1:]] == [e.event for e in events]


@pytest.mark.parametrize("fault", ["dropped", "no-responders", "incomplete"])
@pytest.mark.parametrize("size", [1, 3], ids=["one-event", "atomic-batch"])
def test_an_attempt_that_never_arrived_is_sent_again(
    retrying: AsyncJournal, size: int, fault: str
) -> None:
    j = retrying
    attempts = faulty(j, [fault, fault])
    events = [env(AgentAttached(f"a{i}", "bot", ""), "attach") for i in range(size)]
    result = j.run(j.journal.append("s1", events, expected_sequence=1))
    assert attempts == [fault, fault, "ok"]
    assert [e.sequence for e in result.envelopes] == list(range(3, 3 + size))
    assert [e.sequence for e in read(j)] == [1, *range(3, 3 + size)]


@pytest.mark.parametrize("size", [1, 3], ids=["one-event", "atomic-batch"])
def test_a_retry_that_finds_another_writer_first_is_a_concurrency_error(
    retrying: AsyncJournal, size: int
) -> None:
    j = retrying
    theirs = [env(AgentAttached("x", "bot", ""), "theirs")]

    async def other_writer() -> None:
        await j.journal.append("s1", theirs, expected_sequence=1)

    faulty(j, ["dropped"], before=other_writer)
    mine = [env(AgentAttached(f"a{i}", "bot", ""), "mine") for i in range(size)]
    with pytest.raises(ConcurrencyError):
        j.run(j.journal.append("s1", mine, expected_sequence=1))
    assert [e.causation_id for e in read(j)] == ["start", "theirs"]


@pytest.mark.parametrize("size", [1, 3], ids=["one-event", "atomic-batch"])
def test_a_new_command_reusing_a_stored_id_is_still_a_duplicate(
    retrying: AsyncJournal, size: int
) -> None:
    """A duplicate after a retry is success only if stored after the expected sequence."""
    j = retrying
    events = [env(AgentAttached(f"a{i}", "bot", ""), "attach") for i in range(size)]
    j.run(j.journal.append("s1", events, expected_sequence=1))
    last = 2 + size
    faulty(j, ["dropped"])
    with pytest.raises((DuplicateCommand, ConcurrencyError)):
        j.run(j.journal.append("s1", events, expected_sequence=last))
    assert len(read(j)) == 1 + size


def test_attempts_end_at_the_ack_timeout(journal: AsyncJournal) -> None:
    j = journal
    j.journal.config = dataclasses.replace(j.journal.config, attempt_timeout=0.1, ack_timeout=0.6)
    attempts = faulty(j, ["dropped"] * 100)
    event = [env(SessionStarted("s1", {}), "start")]
    with pytest.raises(JournalError, match="may or may not be stored"):
        j.run(j.journal.append("s1", event, expected_sequence=0))
    assert 2 <= len(attempts) <= 6
    attempts = faulty(j, ["no-responders"] * 1000)
    with pytest.raises(JournalError, match="electing a leader"):
        j.run(j.journal.append("s1", event, expected_sequence=0))
    assert len(attempts) > 2


def test_timeouts_must_be_positive() -> None:
    with pytest.raises(InvalidJournalConfig, match="attempt_timeout"):
        JournalConfig(attempt_timeout=0)
    with pytest.raises(InvalidJournalConfig, match="ack_timeout"):
        JournalConfig(ack_timeout=-1)
