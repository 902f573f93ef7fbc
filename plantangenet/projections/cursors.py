"""The cursor index: which cursors cover axis A at time T.

A fold of the cursor events (``CursorAdded``, ``CursorMoved``,
``CursorRemoved``, ``AgentDetached``) kept for fast coverage lookups. Axes are
hierarchical: a cursor watching ``ocean`` covers ``ocean.temperature``.

For each watched axis the index keeps its cursors' intervals sorted by start,
with the largest end of every block of :data:`BLOCK` intervals: a lookup
bisects to the intervals that start early enough and skips every block that
ends too early, so it costs about ``n / BLOCK + matches`` steps rather than
``n``. A change inserts into (or deletes from) the sorted arrays; the block
maxima after it are recomputed on the next lookup.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from plantangenet.events.envelope import Envelope
from plantangenet.events.session import (
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    SessionEnded,
)
from plantangenet.projections.session import CursorView, SessionState, cursor_view

BLOCK = 32


class _Axis:
    """The intervals of the cursors watching one axis, sorted by ``(start, cursor id)``.

    Changes insert into and delete from the sorted arrays (no re-sorting); the
    block maxima are recomputed from the first block a change touched, on the
    next lookup.
    """

    __slots__ = ("block_ends", "dirty_from", "ends", "ids", "keys")

    def __init__(self) -> None:
        self.keys: list[tuple[float, str]] = []  # (start, cursor id), sorted
        self.ends: list[float] = []
        self.ids: list[str] = []
        self.block_ends: list[float] = []
        #: Index of the first element whose block maximum may be stale (None: none).
        self.dirty_from: int | None = None

    def __len__(self) -> int:
        return len(self.keys)

    def put(self, cursor_id: str, start: float, end: float) -> None:
        key = (start, cursor_id)
        at = bisect.bisect_left(self.keys, key)
        self.keys.insert(at, key)
        self.ends.insert(at, end)
        self.ids.insert(at, cursor_id)
        self._touch(at)

    def drop(self, cursor_id: str, start: float) -> None:
        at = bisect.bisect_left(self.keys, (start, cursor_id))
        del self.keys[at], self.ends[at], self.ids[at]
        self._touch(at)

    def _touch(self, at: int) -> None:
        if self.dirty_from is None or at < self.dirty_from:
            self.dirty_from = at

    def _refresh(self) -> None:
        first_block = (self.dirty_from or 0) // BLOCK
        ends = self.ends
        del self.block_ends[first_block:]
        self.block_ends.extend(
            max(ends[i : i + BLOCK]) for i in range(first_block * BLOCK, len(ends), BLOCK)
        )
        self.dirty_from = None

    def overlapping(self, lo: float, hi: float, out: set[str]) -> None:
        if self.dirty_from is not None:
            self._refresh()
        # Intervals starting at or before hi (every cursor id sorts before U+10FFFF).
        stop = bisect.bisect_right(self.keys, (hi, "\U0010ffff"))
        ends, ids = self.ends, self.ids
        for block, block_end in enumerate(self.block_ends):
            first = block * BLOCK
            if first >= stop:
                break
            if block_end < lo:
                continue
            for i in range(first, min(first + BLOCK, stop)):
                if ends[i] >= lo:
                    out.add(ids[i])


class CursorIndex:
    """Coverage lookups over a session's cursors; fold envelopes in with :meth:`apply`."""

    def __init__(self) -> None:
        self._cursors: dict[str, CursorView] = {}
        self._axes: dict[str, _Axis] = {}
        #: Stream sequence of the last envelope applied.
        self.sequence = 0

    @classmethod
    def of(cls, envelopes: Iterable[Envelope]) -> CursorIndex:
        """The index after folding ``envelopes``."""
        index = cls()
        for envelope in envelopes:
            index.apply(envelope)
        return index

    @classmethod
    def from_state(cls, state: SessionState) -> CursorIndex:
        """The index of the cursors a folded session state holds."""
        index = cls()
        for cursor in state.cursors.values():
            index._put(cursor)
        index.sequence = state.sequence
        return index

    def __len__(self) -> int:
        return len(self._cursors)

    @property
    def cursors(self) -> dict[str, CursorView]:
        """Every cursor in the index, by id."""
        return dict(self._cursors)

    def apply(self, envelope: Envelope) -> None:
        """Fold one envelope in (events other than cursor and detach events are ignored)."""
        event = envelope.event
        if envelope.sequence is not None:
            self.sequence = envelope.sequence
        match event:
            case CursorAdded() | CursorMoved():
                self._drop(event.cursor_id)
                self._put(cursor_view(event))
            case CursorRemoved(cursor_id=cursor_id):
                self._drop(cursor_id)
            case AgentDetached(agent_id=agent_id):
                for cursor_id in [c for c, v in self._cursors.items() if v.agent_id == agent_id]:
                    self._drop(cursor_id)
            case SessionEnded():  # every agent still attached left with the end
                for cursor_id in list(self._cursors):
                    self._drop(cursor_id)

    def covering(self, axis: str, time: float) -> list[CursorView]:
        """The cursors watching ``axis`` (or a parent axis) at ``time``, by cursor id."""
        return self.overlapping(axis, time, time)

    def overlapping(self, axis: str, start: float, end: float) -> list[CursorView]:
        """The cursors watching ``axis`` (or a parent) at some time in ``[start, end]``."""
        found: set[str] = set()
        parts = axis.split(".")
        for depth in range(1, len(parts) + 1):
            watched = self._axes.get(".".join(parts[:depth]))
            if watched is not None:
                watched.overlapping(start, end, found)
        return [self._cursors[c] for c in sorted(found)]

    def _put(self, cursor: CursorView) -> None:
        self._cursors[cursor.cursor_id] = cursor
        for axis in cursor.axes:
            entry = self._axes.get(axis)
            if entry is None:
                entry = self._axes[axis] = _Axis()
            entry.put(cursor.cursor_id, cursor.start, cursor.end)

    def _drop(self, cursor_id: str) -> None:
        cursor = self._cursors.pop(cursor_id, None)
        if cursor is None:
            return
        for axis in cursor.axes:
            entry = self._axes[axis]
            entry.drop(cursor_id, cursor.start)
            if not entry:
                del self._axes[axis]
