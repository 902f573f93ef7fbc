"""Forking a session: a new session whose history is another's up to a position.

:func:`fork` copies the origin's events up to the position (see
:mod:`plantangenet.timetravel.history`) into a new session, through the journal, and the
fork is then an ordinary session (``runtime.session(new_id)``) that diverges
independently. Each copy keeps the original's content, issuing agent,
correlation id, time (``occurred_at``) and authorization, and gets:

* a new event id and the new session id;
* the causation id ``fork:<origin session>:<origin sequence>``, which names
  the exact event it copies (:func:`plantangenet.timetravel.history.fork_origin` reads
  it, and ``why`` follows it to the origin);
* a fresh hash chain: ``previous_hash`` links the fork's own events, so
  ``verify`` checks the fork like any session.

``SessionStarted.session_id`` is the one field of an event's content that is
rewritten, to the fork's id. No marker event is added: a fork at the N-th
event holds exactly N events, and its state is the origin's after N events
apart from the session id and the stream sequences (:func:`comparable`).

The copies are appended with optimistic concurrency on the new, empty session
(expected last sequence 0, then the sequence each append ended at): a session
that already has events is refused with :class:`~plantangenet.errors.SessionExists`.
Up to 1,000 events go in one atomic append, so a fork of up to 1,000 events is
all or nothing; a longer one that fails part-way leaves a shorter, intact fork
(an error names where it stopped).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Coroutine
from types import MappingProxyType
from typing import Any, overload

from plantangenet.domain.decide import check_id
from plantangenet.errors import ConcurrencyError, DuplicateCommand, JournalError, SessionExists
from plantangenet.events.base import Event
from plantangenet.events.envelope import Envelope, new_id
from plantangenet.events.session import SessionStarted
from plantangenet.log.journal import MAX_EVENTS_PER_APPEND, Journal
from plantangenet.log.positions import Position, resolve
from plantangenet.log.replay import Progress
from plantangenet.projections.session import SessionState, evolve
from plantangenet.runtime import Plantangenet

#: The most bytes one append of copied events carries (besides the event count limit).
MAX_APPEND_BYTES = 8 * 1024 * 1024


def fork_causation(origin_session: str, origin_sequence: int) -> str:
    """The causation id of a fork's copy of the event at ``origin_sequence``."""
    return f"fork:{origin_session}:{origin_sequence}"


def _retarget(event: Event, session_id: str) -> Event:
    if isinstance(event, SessionStarted):
        return SessionStarted(session_id, event.metadata)
    return event


async def fork_session(
    journal: Journal,
    session_id: str,
    position: Position,
    new_session_id: str,
    *,
    progress: Progress | None = None,
    batch_size: int = MAX_EVENTS_PER_APPEND,
) -> SessionState:
    """:func:`fork` on a journal (a coroutine for the journal's event loop).

    :param batch_size: events per atomic append (at most 1,000).
    :raises SessionExists: ``new_session_id`` already has events.
    :raises UnknownSession, UnknownPosition: nothing to fork at ``position``.
    """
    check_id(session_id, "session_id")
    check_id(new_session_id, "new_session_id")
    batch_size = max(1, min(batch_size, MAX_EVENTS_PER_APPEND))
    if new_session_id == session_id or await journal.last_sequence(new_session_id) != 0:
        raise SessionExists(f"session {new_session_id!r} already exists; a fork needs a new id")
    end = await resolve(journal, session_id, position, progress=progress)
    state = SessionState(new_session_id)
    previous = b""
    batch: list[tuple[Envelope, bytes]] = []
    size = 0

    async def flush() -> None:
        nonlocal state, size
        if not batch:
            return
        try:
            result = await journal.append_encoded(
                new_session_id, batch, expected_sequence=state.sequence
            )
        except (ConcurrencyError, DuplicateCommand) as exc:
            if state.event_count == 0:
                raise SessionExists(
                    f"session {new_session_id!r} was created by another writer meanwhile"
                ) from exc
            raise JournalError(
                f"fork {new_session_id!r} stopped after {state.event_count} events "
                f"(origin {session_id!r} up to sequence {end}): {exc}"
            ) from exc
        for envelope in result.envelopes:
            state = evolve(state, envelope)
        batch.clear()
        size = 0

    async for original in journal.read(session_id, to_sequence=end, progress=progress):
        copy = Envelope(
            event=_retarget(original.event, new_session_id),
            session_id=new_session_id,
            event_id=new_id(),
            causation_id=fork_causation(session_id, original.sequence or 0),
            correlation_id=original.correlation_id,
            occurred_at=original.occurred_at,
            agent_id=original.agent_id,
            previous_hash=previous,
            authorization=original.authorization,
            principal=original.principal,
            fingerprint=original.fingerprint,
            revision=original.revision,  # a position means the same in the fork
        )
        payload = journal.codec.encode(copy)
        previous = hashlib.sha256(payload).digest()
        if batch and (len(batch) >= batch_size or size + len(payload) > MAX_APPEND_BYTES):
            await flush()
        batch.append((copy, payload))
        size += len(payload)
    await flush()
    return state


@overload
def fork(
    target: Plantangenet,
    session_id: str,
    position: Position,
    new_session_id: str,
    *,
    progress: Progress | None = None,
    batch_size: int = MAX_EVENTS_PER_APPEND,
) -> SessionState: ...


@overload
def fork(
    target: Journal,
    session_id: str,
    position: Position,
    new_session_id: str,
    *,
    progress: Progress | None = None,
    batch_size: int = MAX_EVENTS_PER_APPEND,
) -> Coroutine[Any, Any, SessionState]: ...


def fork(
    target: Plantangenet | Journal,
    session_id: str,
    position: Position,
    new_session_id: str,
    *,
    progress: Progress | None = None,
    batch_size: int = MAX_EVENTS_PER_APPEND,
) -> SessionState | Coroutine[Any, Any, SessionState]:
    """Create ``new_session_id`` with ``session_id``'s history up to ``position``.

    With a :class:`~plantangenet.runtime.Plantangenet` it runs on the runtime's
    loop and returns the fork's state (a handle opened on ``new_session_id``
    before is stopped, so the next ``runtime.session(new_session_id)``
    rehydrates the fork); with a :class:`~plantangenet.log.journal.Journal` it
    returns the coroutine to await on the journal's loop.

    :raises SessionExists: ``new_session_id`` already has events.
    :raises UnknownSession, UnknownPosition: nothing to fork at ``position``.
    """
    work = fork_session(
        target if isinstance(target, Journal) else target.journal,
        session_id,
        position,
        new_session_id,
        progress=progress,
        batch_size=batch_size,
    )
    if isinstance(target, Journal):
        return work
    state: SessionState = target.run(work)
    target.stop_session(new_session_id)
    return state


def comparable(state: SessionState) -> SessionState:
    """``state`` without what differs between a session and its fork.

    The session id, the stream sequence and the agents' ``attached_at``
    sequences are zeroed; everything else (including ``event_count``) is kept:
    ``comparable(fork_state) == comparable(origin_state)`` when the fork holds
    the same history.
    """
    agents = {
        agent_id: dataclasses.replace(agent, attached_at=0)
        for agent_id, agent in state.agents.items()
    }
    return dataclasses.replace(state, session_id="", sequence=0, agents=MappingProxyType(agents))


def same_history(a: SessionState, b: SessionState) -> bool:
    """Whether ``a`` and ``b`` are the same state apart from session id and sequences."""
    return comparable(a) == comparable(b)
