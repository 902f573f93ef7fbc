"""replay_tail: the whole log folded, only the last commands' events observed -- and the
observer remembers exactly what it would have from seeing every event.

Against the real nats-server of the test run; the log is written through the journal
with commands of one to three events, interleaved with another session's.
"""

from __future__ import annotations

import itertools
from collections import OrderedDict
from collections.abc import Sequence
from datetime import UTC, datetime

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet.events import CursorAdded, CursorMoved, Event, SessionStarted
from plantangenet.events.envelope import Envelope, new_id
from plantangenet.log.session_replay import replay
from plantangenet.log.tail_replay import command_key, replay_tail
from plantangenet.projections.session import SessionState
from tests.conftest import AsyncJournal

AT = datetime(2026, 1, 1, tzinfo=UTC)
_sessions = itertools.count()


def write_log(journal: AsyncJournal, sizes: list[int], numbered: bool = True) -> str:
    """A session whose commands store ``sizes[i]`` events each (revisions recorded unless
    not ``numbered``), another session's event after each command; its id."""
    session = f"tail{next(_sessions)}"
    other = f"{session}x"
    j = journal.journal
    revision = 0
    last = {session: 0, other: 0}

    async def append(session_id: str, events: Sequence[Event], command: str) -> None:
        nonlocal revision
        envelopes = []
        for event in events:
            if session_id == session:
                revision += 1
            envelopes.append(
                Envelope(
                    event,
                    session_id,
                    new_id(),
                    command,
                    command,
                    AT,
                    principal="p" if len(command) % 2 else "q",
                    revision=revision if numbered and session_id == session else None,
                )
            )
        result = await j.append(session_id, envelopes, expected_sequence=last[session_id])
        last[session_id] = result.last_sequence

    async def scenario() -> None:
        await append(session, [SessionStarted(session, {})], "start")
        await append(session, [CursorAdded("a", "c1", ("x",), 0.0, 1.0)], "add")
        await append(other, [SessionStarted(other, {})], "other-start")
        for n, size in enumerate(sizes):
            moves = [CursorMoved("a", "c1", ("x",), float(n), float(n + k)) for k in range(size)]
            await append(session, moves, f"cmd{n}")
            await append(other, [CursorMoved("b", "c9", ("x",), 0.0, float(n))], f"o{n}")

    journal.run(scenario())
    return session


def remembered(
    observed: list[Envelope],
    commands: int,
    results: OrderedDict | None = None,  # type: ignore[type-arg]
) -> tuple[list[tuple[object, tuple[Envelope, ...]]], bytes]:
    """What the session actor's memory holds after seeing ``observed`` (its ``_remember``)."""
    results = OrderedDict() if results is None else results
    last = b""
    for envelope in observed:
        last = envelope.digest
        key = command_key(envelope)
        held = results.get(key)
        if held is None:
            results[key] = (envelope,)
            if len(results) > commands:
                results.popitem(last=False)
        else:
            results[key] = (*held, envelope)
    return list(results.items()), last


def both(
    journal: AsyncJournal, session: str, state: SessionState, commands: int
) -> tuple[tuple[SessionState, list[Envelope]], tuple[SessionState, list[Envelope]]]:
    every: list[Envelope] = []
    tail: list[Envelope] = []
    j = journal.journal
    full = journal.run(replay(j, session, state=state, observe=every.append))
    quick = journal.run(
        replay_tail(j, session, state=state, observe=tail.append, commands=commands)
    )
    return (full, every), (quick, tail)


@settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
@given(
    sizes=st.lists(st.integers(1, 3), min_size=0, max_size=40),
    commands=st.integers(1, 6),
    resume=st.integers(0, 40),
)
def test_the_tail_is_remembered_as_every_event_would_be(
    journal: AsyncJournal, sizes: list[int], commands: int, resume: int
) -> None:
    session = write_log(journal, sizes)
    # Rehydrating from nothing, and catching up from part of the way.
    part = journal.run(replay(journal.journal, session, to_sequence=1 + 2 * min(resume, 40)))
    for state in (SessionState(session), part):
        (full, every), (quick, tail) = both(journal, session, state, commands)
        assert quick == full
        assert remembered(tail, commands) == remembered(every, commands)
        assert len(tail) <= len(every)
        if full.event_count - state.event_count > 8 * commands + 1:
            assert len(tail) < len(every)  # a long catch-up observed only its tail


def test_short_catch_ups_and_logs_without_revisions_observe_every_event(
    journal: AsyncJournal,
) -> None:
    for numbered, sizes in ((True, [1, 2, 1]), (False, [1, 2, 1, 3] * 10)):
        session = write_log(journal, sizes, numbered=numbered)
        (full, every), (quick, tail) = both(journal, session, SessionState(session), 5)
        assert quick == full and tail == every
