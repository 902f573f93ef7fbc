"""The cursor index: which cursors cover axis A at time T.

A fold of the cursor events (``CursorAdded``, ``CursorMoved``,
``CursorRemoved``, ``AgentDetached``) kept for fast coverage lookups. Axes are
hierarchical: a cursor watching ``ocean`` covers ``ocean.temperature``.

For each watched axis the index keeps its cursors' intervals sorted by start,
with the largest end of every block of :data:`BLOCK` intervals: a lookup
bisects to the intervals that start early enough and skips every block that
ends too early, so it costs about ``n / BLOCK + matches`` steps rather than
``n``. An axis's arrays are rebuilt on the first lookup after a change.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from plantangenet.events.envelope import Envelope
from plantangenet.events.session import AgentDetached, CursorAdded, CursorMoved, CursorRemoved
from plantangenet.projections.session import CursorView, SessionState

BLOCK = 32


class _Axis:
    """The intervals of the cursors watching one axis."""

    __slots__ = ("block_ends", "cursors", "dirty", "ends", "ids", "starts")

    def __init__(self) -> None:
        self.cursors: dict[str, tuple[float, float]] = {}
        self.dirty = True
        self.starts: list[float] = []
        self.ends: list[float] = []
        self.ids: list[str] = []
        self.block_ends: list[float] = []

    def rebuild(self) -> None:
        ordered = sorted((s, e, cid) for cid, (s, e) in self.cursors.items())
        self.starts = [s for s, _, _ in ordered]
        self.ends = [e for _, e, _ in ordered]
        self.ids = [cid for _, _, cid in ordered]
        self.block_ends = [max(self.ends[i : i + BLOCK]) for i in range(0, len(self.ends), BLOCK)]
        self.dirty = False

    def overlapping(self, lo: float, hi: float, out: set[str]) -> None:
        if self.dirty:
            self.rebuild()
        stop = bisect.bisect_right(self.starts, hi)  # intervals starting at or before hi
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
                self._put(
                    CursorView(
                        event.cursor_id,
                        event.agent_id,
                        event.axes,
                        event.start,
                        event.end,
                        event.resolution,
                    )
                )
            case CursorRemoved(cursor_id=cursor_id):
                self._drop(cursor_id)
            case AgentDetached(agent_id=agent_id):
                for cursor_id in [c for c, v in self._cursors.items() if v.agent_id == agent_id]:
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
            entry.cursors[cursor.cursor_id] = (cursor.start, cursor.end)
            entry.dirty = True

    def _drop(self, cursor_id: str) -> None:
        cursor = self._cursors.pop(cursor_id, None)
        if cursor is None:
            return
        for axis in cursor.axes:
            entry = self._axes[axis]
            del entry.cursors[cursor_id]
            entry.dirty = True
            if not entry.cursors:
                del self._axes[axis]
