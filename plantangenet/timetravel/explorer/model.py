"""The explorer's model: a session's events, a cursor on one of them, and the state folded
up to it (:class:`Timeline`).

It holds the session's events in log order (appended live), a cursor on one of
them, the state folded up to and including the event under the cursor, and
what that single event changed (:func:`~plantangenet.timetravel.explorer.text.diff_states`).
An :class:`~plantangenet.timetravel.filters.EventFilter` restricts which events the
cursor stops on; the state still folds *every* event. Stepping forward folds
incrementally; stepping backward re-folds from an in-memory checkpoint kept
every ``checkpoint_every`` events (the log is never written to, and nothing is
cached outside this process).
"""

from __future__ import annotations

import bisect
import re
import sys
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from datetime import time as clock_time
from typing import TYPE_CHECKING, TextIO

from plantangenet.domain.decide import check_id
from plantangenet.errors import UnknownSession
from plantangenet.events.envelope import Envelope
from plantangenet.projections.session import SessionState, evolve
from plantangenet.timetravel.explorer.text import Change, diff_states
from plantangenet.timetravel.filters import EventFilter
from plantangenet.timetravel.history import Position, resolve

if TYPE_CHECKING:
    from plantangenet.runtime import Plantangenet

__all__ = ["CHECKPOINT_EVERY", "Timeline", "open_timeline", "parse_jump"]

#: Events folded between two in-memory checkpoints of the state.
CHECKPOINT_EVERY = 256


class Timeline:
    """A session's events, a cursor on one of them, and the state folded up to it.

    :param session_id: the session (its initial state is ``SessionState(session_id)``).
    :param envelopes: events already read, in log order.
    :param checkpoint_every: keep the folded state every this many events, so
        stepping backward re-folds at most this many events.

    ``index`` is the selected event's position (``-1``: none, before the first
    event); :attr:`state` is ``fold(events[: index + 1])`` and :attr:`before`
    ``fold(events[:index])``. On creation the cursor is on the first event.
    """

    def __init__(
        self,
        session_id: str,
        envelopes: Iterable[Envelope] = (),
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.session_id = session_id
        self.follow = False
        self._every = checkpoint_every
        self._events: list[Envelope] = []
        self._sequences: list[int] = []
        self._filter = EventFilter()
        self._matching: list[int] = []
        initial = SessionState(session_id)
        self._checkpoints: list[SessionState] = [initial]  # [j]: fold of the first j * every
        self._index = -1
        self._before = initial
        self._state = initial
        self._changes: list[Change] | None = None
        self.extend(envelopes)
        if self._matching:
            self.select(self._matching[0])

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._events)

    @property
    def events(self) -> Sequence[Envelope]:
        """Every event loaded so far, in log order."""
        return self._events

    @property
    def index(self) -> int:
        """Position of the selected event in :attr:`events` (``-1`` before the first)."""
        return self._index

    @property
    def selected(self) -> Envelope | None:
        """The event under the cursor."""
        return self._events[self._index] if self._index >= 0 else None

    @property
    def state(self) -> SessionState:
        """The session right after the selected event (every earlier event folded in)."""
        return self._state

    @property
    def before(self) -> SessionState:
        """The session right before the selected event."""
        return self._before

    @property
    def changes(self) -> list[Change]:
        """What the selected event changed."""
        if self._changes is None:
            self._changes = diff_states(self._before, self._state)
        return self._changes

    @property
    def filter(self) -> EventFilter:
        """Which events the cursor stops on."""
        return self._filter

    @property
    def matching(self) -> Sequence[int]:
        """Positions of the events the cursor stops on, in order."""
        return self._matching

    @property
    def at_end(self) -> bool:
        """Whether no event the cursor stops on comes after the selected one."""
        return not self._matching or self._matching[-1] <= self._index

    def position(self) -> int:
        """How many of the :attr:`matching` events come before the selected one."""
        return bisect.bisect_left(self._matching, self._index)

    # -- feeding ----------------------------------------------------------------

    def append(self, envelope: Envelope) -> bool:
        """Add a newer event; an event at or before the last sequence is ignored.

        In :attr:`follow` mode, if the cursor was at the end, it moves to the
        new event (when the filter lets it stop there).
        """
        sequence = envelope.sequence
        if sequence is None:
            raise ValueError("only stored events (with a sequence) belong on a timeline")
        if self._sequences and sequence <= self._sequences[-1]:
            return False
        was_at_end = self.at_end
        self._events.append(envelope)
        self._sequences.append(sequence)
        index = len(self._events) - 1
        if self._filter.matches(envelope):
            self._matching.append(index)
            if self.follow and was_at_end:
                self.select(index)
        return True

    def extend(self, envelopes: Iterable[Envelope]) -> int:
        """:meth:`append` each; returns how many were new."""
        return sum(self.append(e) for e in envelopes)

    # -- moving -------------------------------------------------------------------

    def select(self, index: int) -> None:
        """Put the cursor on ``events[index]`` (whether or not the filter matches it)."""
        if not 0 <= index < len(self._events):
            raise IndexError(f"no event at position {index}")
        if index == self._index:
            return
        before = self._fold_to(index)
        state = evolve(before, self._events[index])
        self._remember(index + 1, state)
        self._index, self._before, self._state = index, before, state
        self._changes = None

    def step(self, delta: int) -> bool:
        """Move ``delta`` matching events forward (``+``) or backward (``-``).

        Stops at either end; returns whether the cursor moved.
        """
        matching = self._matching
        if delta > 0:
            after = bisect.bisect_right(matching, self._index)
            if after >= len(matching):
                return False
            self.select(matching[min(after + delta - 1, len(matching) - 1)])
            return True
        if delta < 0:
            earlier = bisect.bisect_left(matching, self._index)
            if earlier == 0:
                return False
            self.select(matching[max(earlier + delta, 0)])
            return True
        return False

    def first(self) -> bool:
        """To the first matching event; returns whether there is one."""
        if not self._matching:
            return False
        self.select(self._matching[0])
        return True

    def last(self) -> bool:
        """To the last matching event; returns whether there is one."""
        if not self._matching:
            return False
        self.select(self._matching[-1])
        return True

    def jump_to_sequence(self, sequence: int) -> bool:
        """To the last matching event at or before stream ``sequence``.

        Returns ``False`` (and stays) if there is none.
        """
        upto = bisect.bisect_right(self._sequences, sequence) - 1
        at = bisect.bisect_right(self._matching, upto) - 1
        if upto < 0 or at < 0:
            return False
        self.select(self._matching[at])
        return True

    def jump_to_time(self, moment: datetime) -> bool:
        """To the last matching event that occurred at or before ``moment``.

        "Last" in time (the latest ``occurred_at`` not after ``moment``; on a tie,
        the later in the log), so clocks of several writers need not agree.
        A naive ``moment`` is UTC. Returns ``False`` (and stays) if there is none.
        """
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        best: int | None = None
        best_at: datetime | None = None
        for index in reversed(self._matching):
            at = self._events[index].occurred_at
            if at <= moment and (best_at is None or at > best_at):
                best, best_at = index, at
        if best is None:
            return False
        self.select(best)
        return True

    def set_filter(self, event_filter: EventFilter) -> None:
        """Stop only on events ``event_filter`` matches.

        The cursor stays if the selected event matches; otherwise it moves to
        the nearest matching event before it, else after it. If nothing
        matches, it stays where it is.
        """
        self._filter = event_filter
        self._matching = [i for i, e in enumerate(self._events) if event_filter.matches(e)]
        if not self._matching or self._index < 0:
            if self._index < 0:
                self.first()
            return
        at = bisect.bisect_right(self._matching, self._index) - 1
        if at >= 0 and self._matching[at] == self._index:
            return
        self.select(self._matching[max(at, 0)])

    def set_follow(self, on: bool) -> None:
        """Follow mode; turning it on moves the cursor to the last matching event."""
        self.follow = on
        if on:
            self.last()

    # -- folding ------------------------------------------------------------------

    def _fold_to(self, count: int) -> SessionState:
        """``fold(events[:count])`` from the nearest checkpoint or known state before it."""
        every = self._every
        j = min(count // every, len(self._checkpoints) - 1)
        start, state = j * every, self._checkpoints[j]
        known = [(self._index + 1, self._state)]
        if self._index >= 0:
            known.append((self._index, self._before))
        for known_count, known_state in known:
            if start < known_count <= count:
                start, state = known_count, known_state
        for i in range(start, count):
            state = evolve(state, self._events[i])
            self._remember(i + 1, state)
        return state

    def _remember(self, count: int, state: SessionState) -> None:
        if count % self._every == 0 and count // self._every == len(self._checkpoints):
            self._checkpoints.append(state)


def parse_jump(text: str, reference: datetime | None = None) -> int | datetime:
    """A jump target: a stream sequence (``42`` or ``#42``) or an ISO time.

    A time of day alone (``14:03:07``) is on ``reference``'s date (UTC). A time
    without an offset is UTC.

    :raises ValueError: if ``text`` is neither.
    """
    text = text.strip()
    if re.fullmatch(r"#?\d+", text):
        return int(text.lstrip("#"))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            of_day = clock_time.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a sequence or an ISO time: {text!r}") from None
        day = (reference or datetime.now(UTC)).astimezone(UTC).date()
        moment = datetime.combine(day, of_day)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


class _Progress:
    """Loading progress on a terminal, for sessions long enough to report it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False

    def __call__(self, at: int, end: int) -> None:
        if not self.enabled or (at >= end and not self.shown):
            return  # a short session: nothing to wait for
        self.shown = True
        self.stream.write(f"\rloading… sequence {at:,} of {end:,}")
        if at >= end:
            self.stream.write("\n")
        self.stream.flush()


def open_timeline(runtime: Plantangenet, session_id: str, at: Position | None = None) -> Timeline:
    """The session's history as a :class:`Timeline`, on its event at ``at`` (default: the
    last), as the explorer opens it (e.g. at a replay's breakpoint).

    :raises UnknownSession: the session has no events.
    :raises UnknownPosition: ``at`` names no event of the session.
    """
    check_id(session_id, "session_id")
    events = runtime.history(session_id, progress=_Progress(sys.stderr))
    if not events:
        raise UnknownSession(f"no events for session {session_id!r}")
    timeline = Timeline(session_id, events)
    if at is not None:
        sequence = runtime.run(resolve(runtime.journal, session_id, at))
        timeline.jump_to_sequence(sequence)
    return timeline
