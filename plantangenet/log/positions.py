"""Positions in a session's history, and the session at one.

A *position* names a point of a session's history: a revision, a stream sequence
(:class:`StreamSequence`), an event id or a time (see :mod:`plantangenet.timetravel.history`).
:func:`resolve` finds the event at a position, :func:`state_at` folds the session up
to it. This reads the log and folds with the session projection, so it sits above both
and below the runtime, whose ``state_at`` it is; the rest of time travel
(:mod:`plantangenet.timetravel.history`, :mod:`plantangenet.timetravel.fork`) sits above
the runtime.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
from collections.abc import Sequence
from datetime import UTC, datetime

from plantangenet.errors import (
    UnknownPosition,
    UnknownSession,
)
from plantangenet.events.envelope import Envelope
from plantangenet.log.journal import Journal
from plantangenet.log.replay import Progress
from plantangenet.log.session_replay import replay
from plantangenet.projections.session import (
    SessionState,
    evolve,
)


@dataclasses.dataclass(frozen=True, slots=True)
class StreamSequence:
    """A position given as a stream sequence: the log's numbering, shared by every session.

    A plain ``int`` position is a revision, the session's own numbering; this is
    the explicit form for a sequence (``seq:N`` on the command line).
    """

    value: int

    def __post_init__(self) -> None:
        if type(self.value) is not int or self.value < 0:
            raise UnknownPosition(f"not a stream sequence: {self.value!r}")


#: A revision (``int``), a :class:`StreamSequence`, an event id or a time.
Position = int | StreamSequence | str | datetime


_EVENT_ID = re.compile(r"[0-9a-fA-F]{32}")


def parse_position(text: str) -> Position:
    """A position from its textual form.

    32 hex characters are an event id, digits a revision (``rev:N`` too),
    ``seq:N`` a stream sequence, anything else must be an ISO 8601 time
    (``2025-01-31T09:30:00Z``; UTC if it has no offset).

    :raises UnknownPosition: the text is none of these.
    """
    text = text.strip()
    if _EVENT_ID.fullmatch(text):
        return text.lower()
    if text.isascii() and text.isdigit():
        return int(text)
    prefix, _, number = text.partition(":")
    if prefix in ("seq", "rev") and number.isascii() and number.isdigit():
        return StreamSequence(int(number)) if prefix == "seq" else int(number)
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        raise UnknownPosition(
            f"not a position: {text!r} (expected a revision N, a stream sequence seq:N, "
            "a 32-hex event id or an ISO time)"
        ) from None
    return _utc(moment)


def _utc(moment: datetime) -> datetime:
    return moment.replace(tzinfo=UTC) if moment.tzinfo is None else moment.astimezone(UTC)


def _normalize(position: Position) -> Position:
    if isinstance(position, bool):
        raise UnknownPosition(f"not a position: {position!r}")
    if isinstance(position, int | StreamSequence):
        return position
    if isinstance(position, datetime):
        return _utc(position)
    if isinstance(position, str):
        return parse_position(position)
    raise UnknownPosition(f"not a position: {position!r}")


def describe_position(position: Position) -> str:
    """A short human-readable name of a position."""
    position = _normalize(position)
    if isinstance(position, int):
        return f"revision {position}"
    if isinstance(position, StreamSequence):
        return f"sequence {position.value}"
    if isinstance(position, datetime):
        return f"time {position.isoformat()}"
    return f"event {position}"


@dataclasses.dataclass(slots=True)
class _Target:
    """One position being looked for during a walk over the log."""

    position: Position
    #: The stream sequence the walk stops after: the position's own, or a time's seek.
    bound: int | None = None
    state: SessionState | None = None
    envelope: Envelope | None = None
    done: bool = False


async def _walk(
    journal: Journal,
    session_id: str,
    positions: Sequence[Position],
    *,
    progress: Progress | None = None,
) -> list[_Target]:
    """One pass over the log, folding, that stops as soon as every position is resolved.

    A time is first turned into the sequence of the session's last event that
    occurred at or before it (a seek, :meth:`Journal.sequence_at`); the pass then
    reads no further than the last sequence, unless an event id is asked for.
    """
    targets = [_Target(_normalize(p)) for p in positions]
    if not targets:
        return []
    moments = [t.position for t in targets if isinstance(t.position, datetime)]
    seeks = await asyncio.gather(*(journal.sequence_at(session_id, m) for m in moments))
    found = dict(zip(moments, seeks, strict=True))
    for target in targets:
        p = target.position
        if isinstance(p, datetime):
            target.bound = found[p]
        elif isinstance(p, StreamSequence):
            target.bound = p.value
    if await _walk_to_bounds(journal, session_id, targets, progress):
        return targets
    ints = [t.bound for t in targets if t.bound is not None]
    bound = max(ints) if len(ints) == len(targets) else None
    state = SessionState(session_id)
    last: Envelope | None = None
    if bound is None or bound >= 1:
        reader = journal.read(session_id, to_sequence=bound, progress=progress)
        async with contextlib.aclosing(reader) as envelopes:
            async for envelope in envelopes:
                sequence = envelope.sequence or 0
                for target in targets:  # a bound is reached once the next event is past it
                    b = target.bound
                    if not target.done and b is not None and sequence > b:
                        target.state, target.envelope, target.done = state, last, True
                state = evolve(state, envelope)
                last = envelope
                for target in targets:
                    p = target.position
                    if target.done:
                        continue
                    if (isinstance(p, str) and envelope.event_id.lower() == p) or (
                        type(p) is int and state.revision == p
                    ):
                        target.state, target.envelope, target.done = state, last, True
                if all(t.done for t in targets):
                    if progress is not None:  # the read stops early: close the progress line
                        progress(sequence, sequence)
                    break
    if state.event_count == 0 and await journal.last_sequence(session_id) == 0:
        raise UnknownSession(f"no events for session {session_id!r}")
    for target in targets:
        p = target.position
        if not target.done and target.bound is not None:
            target.state, target.envelope = state, last
        if target.state is None or target.state.event_count == 0 or target.envelope is None:
            if isinstance(p, str):
                problem = "is not one of its events"
            elif type(p) is int and p > state.revision:
                problem = f"is after its last event (revision {state.revision})"
            else:
                problem = "is before its first event"
            raise UnknownPosition(f"session {session_id!r}: {describe_position(p)} {problem}")
    return targets


async def _walk_to_bounds(
    journal: Journal, session_id: str, targets: list[_Target], progress: Progress | None
) -> bool:
    """The quick walk: each position found as a stream sequence first (a revision by a
    bisection of direct gets), then the log replayed up to each in turn (batched reads,
    runs of cursor moves folded at once: :func:`~plantangenet.log.session_replay.replay`).

    ``False``, with no target set, where that does not settle every position: an event
    id, a revision of a log that does not record them, a position outside the session,
    a message that is no event of it. The full walk then decides, and names what is wrong.
    """
    found: list[tuple[int, _Target, Envelope | None]] = []
    for target in targets:
        if isinstance(target.position, str):
            return False  # an event id: only reading finds it
        if type(target.position) is int:
            event = await journal.event_of_revision(session_id, target.position)
            if event is None or event.sequence is None:
                return False
            found.append((event.sequence, target, event))
        elif target.bound is not None and target.bound >= 1:
            found.append((target.bound, target, None))
        else:
            return False
    state = SessionState(session_id)
    settled: list[tuple[_Target, SessionState, Envelope]] = []
    for bound, target, event in sorted(found, key=lambda item: item[0]):
        if state.sequence < bound:
            state = await replay(
                journal, session_id, state=state, to_sequence=bound, progress=progress
            )
        if state.unreadable or state.event_count == 0:
            return False
        if event is None:
            event = await journal.event_stored_at(session_id, state.sequence)
        if event is None or (type(target.position) is int and state.revision != target.position):
            return False
        settled.append((target, state, event))
    for target, state, event in settled:
        target.state, target.envelope, target.done = state, event, True
    return True


async def resolve(
    journal: Journal, session_id: str, position: Position, *, progress: Progress | None = None
) -> int:
    """The stream sequence of the session's event that ``position`` resolves to."""
    target = (await _walk(journal, session_id, [position], progress=progress))[0]
    return target.state.sequence if target.state is not None else 0


async def event_at(
    journal: Journal, session_id: str, position: Position, *, progress: Progress | None = None
) -> Envelope:
    """The session's event that ``position`` resolves to.

    A revision is looked up (a bisection by direct gets), not read up to, when the
    log records revisions; the other positions walk the log.
    """
    if type(position) is int:
        found = await journal.event_of_revision(session_id, position)
        if found is not None:
            return found
    target = (await _walk(journal, session_id, [position], progress=progress))[0]
    assert target.envelope is not None  # _walk raises otherwise
    return target.envelope


async def state_at(
    journal: Journal, session_id: str, position: Position, *, progress: Progress | None = None
) -> SessionState:
    """The session as it was right after the event ``position`` resolves to."""
    return (await states_at(journal, session_id, [position], progress=progress))[0]


async def states_at(
    journal: Journal,
    session_id: str,
    positions: Sequence[Position],
    *,
    progress: Progress | None = None,
) -> list[SessionState]:
    """The session at each of ``positions``, in one pass over the log."""
    targets = await _walk(journal, session_id, positions, progress=progress)
    return [t.state for t in targets if t.state is not None]
