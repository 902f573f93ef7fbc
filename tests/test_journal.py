"""The journal against a real JetStream stream: concurrency, dedup, atomic batches, replay."""

from __future__ import annotations

import asyncio

import pytest

from plantangenet import (
    AgentAttached,
    ConcurrencyError,
    CursorAdded,
    DuplicateCommand,
    Envelope,
    JournalError,
    SessionStarted,
)
from plantangenet.events import new_id, utc_now
from tests.conftest import AsyncJournal


def env(event: object, command_id: str, session_id: str = "s1") -> Envelope:
    return Envelope(event, session_id, new_id(), command_id, command_id, utc_now())  # type: ignore[arg-type]


def read(j: AsyncJournal, session_id: str = "s1", **kw: object) -> list[Envelope]:
    async def collect() -> list[Envelope]:
        return [e async for e in j.journal.read(session_id, **kw)]  # type: ignore[arg-type]

    return j.run(collect())  # type: ignore[no-any-return]


def test_append_assigns_contiguous_sequences_and_reads_back(journal: AsyncJournal) -> None:
    j = journal.journal
    first = journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0))
    assert (first.first_sequence, first.last_sequence) == (1, 1)
    batch = [env(AgentAttached(f"a{i}", "bot", ""), "c2") for i in range(5)]
    second = journal.run(j.append("s1", batch, expected_sequence=1))
    assert [e.sequence for e in second.envelopes] == [2, 3, 4, 5, 6]
    stored = read(journal)
    assert [e.sequence for e in stored] == [1, 2, 3, 4, 5, 6]
    assert [e.event for e in stored] == [e.event for e in [*first.envelopes, *batch]]
    assert read(journal, from_sequence=3, to_sequence=4) == list(second.envelopes[1:3])


def test_stale_writer_gets_concurrency_error_and_writes_nothing(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0))
    journal.run(j.append("s1", [env(AgentAttached("a", "bot", ""), "c2")], expected_sequence=1))
    with pytest.raises(ConcurrencyError) as info:
        journal.run(j.append("s1", [env(AgentAttached("b", "bot", ""), "c3")], expected_sequence=1))
    assert (info.value.expected, info.value.actual) == (1, 2)
    # A stale multi-event command is refused as a whole.
    stale = [env(AgentAttached(f"x{i}", "bot", ""), "c4") for i in range(3)]
    with pytest.raises(ConcurrencyError):
        journal.run(j.append("s1", stale, expected_sequence=1))
    assert len(read(journal)) == 2


def test_retried_command_is_stored_once(journal: AsyncJournal) -> None:
    j = journal.journal
    start = [env(SessionStarted("s1", {}), "start")]
    journal.run(j.append("s1", start, expected_sequence=0))
    multi = [env(AgentAttached(f"a{i}", "bot", ""), "attach-all") for i in range(3)]
    journal.run(j.append("s1", multi, expected_sequence=1))
    # The same command again, even as if the writer had not seen its own append.
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", multi, expected_sequence=1))
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", multi, expected_sequence=4))
    with pytest.raises((DuplicateCommand, ConcurrencyError)):
        journal.run(j.append("s1", start, expected_sequence=0))
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", start, expected_sequence=4))
    assert [e.sequence for e in read(journal)] == [1, 2, 3, 4]


def test_multi_event_append_is_all_or_nothing(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c1")], expected_sequence=0))
    # The third message of the batch is a duplicate of a stored one: the batch is refused
    # and none of its messages is stored.
    stored = env(AgentAttached("a", "bot", ""), "c2")
    journal.run(j.append("s1", [stored], expected_sequence=1))
    fresh = [env(AgentAttached("b", "bot", ""), "c2"), env(AgentAttached("c", "bot", ""), "c3")]
    # (c2, index 0) already exists, so this batch carries a duplicate message id.
    with pytest.raises(DuplicateCommand):
        journal.run(j.append("s1", fresh, expected_sequence=2))
    assert [e.event for e in read(journal)] == [SessionStarted("s1", {}), stored.event]


def test_sessions_are_separate_subjects(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "a")], expected_sequence=0))
    journal.run(j.append("s2", [env(SessionStarted("s2", {}), "b", "s2")], expected_sequence=0))
    journal.run(
        j.append("s2", [env(AgentAttached("x", "bot", ""), "c", "s2")], expected_sequence=2)
    )
    assert journal.run(j.sessions()) == {"s1": 1, "s2": 2}
    assert [e.session_id for e in read(journal, "s2")] == ["s2", "s2"]
    assert journal.run(j.last_sequence("s1")) == 1
    assert journal.run(j.last_sequence("nobody")) == 0
    assert read(journal, "nobody") == []


def test_read_reports_progress(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c0")], expected_sequence=0))
    seq = 1
    for n in range(3):
        batch = [env(CursorAdded("a", f"c{n}-{i}", ("x",), 0.0, 1.0), f"k{n}") for i in range(900)]
        seq = journal.run(j.append("s1", batch, expected_sequence=seq)).last_sequence
    seen: list[tuple[int, int]] = []
    read(journal, progress=lambda at, end: seen.append((at, end)))
    assert seen[-1] == (2701, 2701)
    assert [at for at, _ in seen[:-1]] == [1000, 2000]


def test_tail_delivers_new_events_live(journal: AsyncJournal) -> None:
    j = journal.journal
    journal.run(j.append("s1", [env(SessionStarted("s1", {}), "c0")], expected_sequence=0))

    async def scenario() -> list[int]:
        got: list[int] = []

        async def follow() -> None:
            async for e in j.tail("s1", from_sequence=1):
                got.append(e.sequence or 0)
                if len(got) == 3:
                    return

        task = asyncio.create_task(follow())
        await asyncio.sleep(0.1)
        await j.append("s1", [env(AgentAttached("a", "bot", ""), "c1")], expected_sequence=1)
        await j.append("s1", [env(AgentAttached("b", "bot", ""), "c2")], expected_sequence=2)
        await asyncio.wait_for(task, 10)
        return got

    assert journal.run(scenario()) == [1, 2, 3]


def test_append_to_missing_stream_is_a_clear_error(journal: AsyncJournal) -> None:
    async def scenario() -> None:
        await journal.journal.js.delete_stream(journal.journal.config.stream)
        await journal.journal.append(
            "s1", [env(SessionStarted("s1", {}), "c")], expected_sequence=0
        )

    with pytest.raises(JournalError, match="no stream"):
        journal.run(scenario())


def test_stored_digests_are_the_payloads_sha256_given_or_computed(journal: AsyncJournal) -> None:
    import hashlib

    from plantangenet import CODEC

    j = journal.journal
    envelopes = [env(SessionStarted("s1", {}), "c1"), env(AgentAttached("a", "bot", ""), "c2")]
    payloads = [CODEC.encode(e) for e in envelopes]
    expected = [hashlib.sha256(p).digest() for p in payloads]
    first = journal.run(j.append_encoded("s1", [(envelopes[0], payloads[0])], expected_sequence=0))
    assert [e.digest for e in first.envelopes] == expected[:1]  # computed by the journal
    second = journal.run(
        j.append_encoded(
            "s1", [(envelopes[1], payloads[1])], expected_sequence=1, digests=expected[1:]
        )
    )
    assert [e.digest for e in second.envelopes] == expected[1:]  # the writer's own
    assert [e.digest for e in read(journal)] == expected  # what a reader computes
    with pytest.raises(ValueError, match="digests"):
        journal.run(
            j.append_encoded(
                "s1", [(envelopes[1], payloads[1])], expected_sequence=2, digests=expected
            )
        )
    assert len(read(journal)) == 2


def test_append_payloads_takes_envelopes_and_encodings_side_by_side(
    journal: AsyncJournal,
) -> None:
    from plantangenet import CODEC

    j = journal.journal
    envelopes = [env(SessionStarted("s1", {}), "c1"), env(AgentAttached("a", "bot", ""), "c1")]
    payloads = [CODEC.encode(e) for e in envelopes]
    with pytest.raises(ValueError, match="1 payloads for 2 envelopes"):
        journal.run(j.append_payloads("s1", envelopes, payloads[:1], expected_sequence=0))
    with pytest.raises(ValueError, match="at least one"):
        journal.run(j.append_payloads("s1", [], [], expected_sequence=0))
    assert read(journal) == []  # nothing half-written
    stored = journal.run(j.append_payloads("s1", envelopes, payloads, expected_sequence=0))
    assert [e.sequence for e in stored.envelopes] == [1, 2]
    assert [e.event for e in read(journal)] == [e.event for e in envelopes]
