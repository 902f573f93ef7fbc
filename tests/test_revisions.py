"""Revisions: every event's position within its session (1, 2, 3...), on old and new logs."""

from __future__ import annotations

import hashlib
from typing import Any

import msgpack

from plantangenet import Plantangenet
from plantangenet.events.codec import CODEC
from plantangenet.events.envelope import Envelope
from plantangenet.log.session_replay import replay
from plantangenet.timetravel.fork import fork
from tests.conftest import session_with_cursor


def moves(runtime: Plantangenet, session_id: str, count: int, start: int = 0) -> None:
    session = runtime.session(session_id)
    for i in range(start, start + count):
        session.move_cursor("bot", "c", ["x"], float(i), i + 1.0)


def test_the_writer_numbers_every_event_and_readers_see_it(runtime: Plantangenet) -> None:
    session_with_cursor(runtime, "numbered")
    session_with_cursor(runtime, "other")  # interleaved: stream sequences have gaps
    moves(runtime, "numbered", 5)
    moves(runtime, "other", 3)
    moves(runtime, "numbered", 2, start=5)
    history = runtime.history("numbered")
    assert [e.revision for e in history] == list(range(1, len(history) + 1))
    assert [e.sequence for e in history] != [e.revision for e in history]
    # Stored in the payload (envelope format 3), not computed on the way.
    last = runtime.run(
        runtime.journal.js.get_last_msg(
            runtime.journal_config.stream, runtime.journal.subject("numbered")
        )
    )
    assert msgpack.unpackb(last.data)["n"] == len(history)
    assert runtime.session("numbered").state.revision == len(history)
    assert runtime.replay("numbered").revision == len(history)
    # A read that starts in the middle keeps the numbers.
    middle = history[4]
    assert middle.sequence is not None
    tail = runtime.history("numbered", from_sequence=middle.sequence)
    assert [e.revision for e in tail] == list(range(5, len(history) + 1))


def format_2(envelope: Envelope, session_id: str, previous: bytes) -> bytes:
    """``envelope`` of ``session_id`` as code before revisions stored it (format 2)."""
    raw: dict[str, Any] = msgpack.unpackb(CODEC.encode(envelope), raw=False)
    del raw["n"]
    raw.update(f=2, s=session_id, p=previous)
    packed: bytes = msgpack.packb(raw, use_bin_type=True)
    return packed


def write_old_log(runtime: Plantangenet, template: str, session_id: str) -> int:
    """Copy ``template``'s events into ``session_id`` as format-2 envelopes; their count."""
    journal = runtime.journal
    previous = b""
    envelopes = runtime.history(template)
    for envelope in envelopes:
        payload = format_2(envelope, session_id, previous)
        runtime.run(journal.js.publish(journal.subject(session_id), payload))
        if envelope.revision == 3:  # another session's events in between
            session_with_cursor(runtime, f"noise-{session_id}")
        previous = hashlib.sha256(payload).digest()
    return len(envelopes)


def test_an_old_log_is_numbered_on_read_and_the_writer_goes_on_from_there(
    runtime: Plantangenet,
) -> None:
    session_with_cursor(runtime, "template")
    moves(runtime, "template", 6)
    old = write_old_log(runtime, "template", "legacy")
    history = runtime.history("legacy")
    assert all(e.revision is not None for e in history)
    assert [e.revision for e in history] == list(range(1, old + 1))
    # From the middle: counted from the log's own counts (no read of what comes before).
    fourth = history[3]
    assert fourth.sequence is not None
    tail = runtime.history("legacy", from_sequence=fourth.sequence)
    assert [e.revision for e in tail] == list(range(4, old + 1))
    # The session, rehydrated from the old log, numbers its new events after the old ones.
    moves(runtime, "legacy", 2, start=100)
    history = runtime.history("legacy")
    assert [e.revision for e in history] == list(range(1, old + 3))
    raw = msgpack.unpackb(
        runtime.run(
            runtime.journal.js.get_last_msg(
                runtime.journal_config.stream, runtime.journal.subject("legacy")
            )
        ).data
    )
    assert (raw["f"], raw["n"]) == (3, old + 2)
    seen: list[int | None] = []
    state = runtime.run(
        replay(runtime.journal, "legacy", observe=lambda e: seen.append(e.revision))
    )
    assert seen == list(range(1, old + 3)) and state.revision == old + 2


def test_a_fork_keeps_the_revisions_of_its_origin(runtime: Plantangenet) -> None:
    session_with_cursor(runtime, "origin")
    session_with_cursor(runtime, "elsewhere")
    moves(runtime, "origin", 4)
    moves(runtime, "elsewhere", 4)
    moves(runtime, "origin", 4, start=4)
    origin = runtime.history("origin")
    fork(runtime, "origin", 9, "origin-fork")  # revision 9
    copy = runtime.history("origin-fork")
    assert [e.revision for e in copy] == [e.revision for e in origin[:9]]
    assert [e.sequence for e in copy] != [e.sequence for e in origin[:9]]


def test_an_event_is_found_by_its_revision_without_reading_the_session(
    runtime: Plantangenet,
) -> None:
    from plantangenet.timetravel.history import event_at

    session_with_cursor(runtime, "looked-up")
    session_with_cursor(runtime, "between")
    moves(runtime, "looked-up", 20)
    moves(runtime, "between", 5)
    moves(runtime, "looked-up", 20, start=20)
    history = runtime.history("looked-up")
    journal = runtime.journal
    decoded: list[int] = []
    decode = journal.codec.decode

    def counted(payload: bytes, *, sequence: int | None = None, digest: bool = True) -> Envelope:
        decoded.append(sequence or 0)
        return decode(payload, sequence=sequence, digest=digest)

    journal.codec.decode = counted  # type: ignore[method-assign]
    try:
        for envelope in (history[0], history[21], history[-1]):
            decoded.clear()
            assert runtime.run(event_at(journal, "looked-up", envelope.revision or 0)) == envelope
            assert len(decoded) <= 2 * len(history).bit_length()  # probes, not a read
        assert runtime.run(journal.event_of_revision("looked-up", len(history) + 1)) is None
    finally:
        journal.codec.decode = decode  # type: ignore[method-assign]
    # An old log (no revisions stored) is read and numbered instead.
    session_with_cursor(runtime, "old-template")
    write_old_log(runtime, "old-template", "old")
    assert runtime.run(journal.event_of_revision("old", 2)) is None
    assert runtime.run(event_at(journal, "old", 2)).revision == 2
