"""The cursor index: which cursors cover axis A at time T.

A fold of the cursor events (``CursorAdded``, ``CursorMoved``,
``CursorRemoved``, ``AgentDetached``) kept for fast coverage lookups. Axes are
hierarchical: a cursor watching ``ocean`` covers ``ocean.temperature``.

For each watched axis the index keeps its cursors' intervals sorted by
``(start, cursor id)``, in blocks of about :data:`BLOCK` (between half and twice
as many; starts and ends in ``array('d')``, so a bisection reads contiguous
memory), with the first key and the largest end of every block. A lookup walks
the blocks that start early enough and skips every block that ends too early,
so it costs about ``n / BLOCK + matches`` steps rather than ``n``. A change
bisects to its block and inserts into (or deletes from) that block alone,
keeping its first key and largest end; a block that grows to twice
:data:`BLOCK` is split, one that shrinks below half is merged with its
neighbour. So a fold step costs O(log n + BLOCK) (plus, every ``BLOCK`` changes
or so, a split or merge moving ``n / BLOCK`` block references), whatever the
number of cursors.
"""

from __future__ import annotations

import bisect
from array import array
from collections.abc import Iterable, MutableSequence, Sequence
from typing import Any

from plantangenet.events.envelope import CheckedEvent, Envelope
from plantangenet.events.session import (
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    SessionEnded,
)
from plantangenet.projections.session import CursorView, SessionState, cursor_view

BLOCK = 32


def _position(starts: Sequence[float], ids: Sequence[str], start: float, cursor_id: str) -> int:
    """Where ``(start, cursor_id)`` is, or goes, in a block's sorted keys."""
    at = bisect.bisect_left(starts, start)
    if at == len(starts) or starts[at] != start:
        return at
    # Ties on the start are ordered by cursor id.
    return bisect.bisect_left(ids, cursor_id, at, bisect.bisect_right(starts, start, at))


class _Axis:
    """The intervals of the cursors watching one axis, sorted by ``(start, cursor id)``.

    Kept in blocks: ``starts[b]``, ``ends[b]`` and ``ids[b]`` are block ``b``'s
    intervals in order; ``first_starts[b]`` and ``first_ids[b]`` its first key and
    ``block_ends[b]`` its largest end. Blocks are never empty.
    """

    __slots__ = ("block_ends", "ends", "first_ids", "first_starts", "ids", "size", "starts")

    #: Block maxima are kept up to date by every change: never stale (``None``).
    dirty_from = None

    def __init__(self) -> None:
        self.starts: list[MutableSequence[float]] = []
        self.ends: list[MutableSequence[float]] = []
        self.ids: list[list[str]] = []
        self.first_starts: MutableSequence[float] = array("d")
        self.first_ids: list[str] = []
        self.block_ends: MutableSequence[float] = array("d")
        self.size = 0

    def __len__(self) -> int:
        return self.size

    def _block(self, start: float, cursor_id: str) -> int:
        """The block that holds, or would hold, ``(start, cursor_id)``."""
        firsts = self.first_starts
        hi = bisect.bisect_right(firsts, start)  # blocks [0, hi) start at or before start
        lo = bisect.bisect_left(firsts, start, 0, hi)  # blocks [lo, hi) start at start
        if lo < hi:
            after = bisect.bisect_right(self.first_ids, cursor_id, lo, hi)
            if after > lo:
                return after - 1
        return max(lo - 1, 0)

    def put(self, cursor_id: str, start: float, end: float) -> None:
        self.size += 1
        if not self.ids:
            self.starts.append(array("d", (start,)))
            self.ends.append(array("d", (end,)))
            self.ids.append([cursor_id])
            self.first_starts.append(start)
            self.first_ids.append(cursor_id)
            self.block_ends.append(end)
            return
        b = self._block(start, cursor_id) if len(self.ids) > 1 else 0
        starts, ends, ids = self.starts[b], self.ends[b], self.ids[b]
        at = bisect.bisect_left(starts, start)
        if at < len(starts) and starts[at] == start:
            at = _position(starts, ids, start, cursor_id)
        starts.insert(at, start)
        ends.insert(at, end)
        ids.insert(at, cursor_id)
        if at == 0:
            self.first_starts[b], self.first_ids[b] = start, cursor_id
        if end > self.block_ends[b]:
            self.block_ends[b] = end
        if len(ids) > 2 * BLOCK:
            self._split(b)

    def drop(self, cursor_id: str, start: float) -> None:
        b = self._block(start, cursor_id) if len(self.ids) > 1 else 0
        starts, ends, ids = self.starts[b], self.ends[b], self.ids[b]
        at = bisect.bisect_left(starts, start)
        if ids[at] != cursor_id:  # another interval starts there too
            at = _position(starts, ids, start, cursor_id)
        end = ends[at]
        del starts[at], ends[at], ids[at]
        self.size -= 1
        if not ids:
            del self.starts[b], self.ends[b], self.ids[b]
            del self.first_starts[b], self.first_ids[b], self.block_ends[b]
            return
        if at == 0:
            self.first_starts[b], self.first_ids[b] = starts[0], ids[0]
        if end >= self.block_ends[b]:
            self.block_ends[b] = max(ends)
        if len(ids) < BLOCK // 2 and len(self.ids) > 1:
            self._merge(b if b + 1 < len(self.ids) else b - 1)

    def _split(self, b: int) -> None:
        starts, ends, ids = self.starts[b], self.ends[b], self.ids[b]
        half = len(ids) // 2
        upper = (starts[half:], ends[half:], ids[half:])
        del starts[half:], ends[half:], ids[half:]
        self.starts.insert(b + 1, upper[0])
        self.ends.insert(b + 1, upper[1])
        self.ids.insert(b + 1, upper[2])
        self.first_starts.insert(b + 1, upper[0][0])
        self.first_ids.insert(b + 1, upper[2][0])
        self.block_ends.insert(b + 1, max(upper[1]))
        self.block_ends[b] = max(ends)

    def _merge(self, b: int) -> None:
        """Merge block ``b + 1`` into block ``b`` (split again if that makes it too big)."""
        self.starts[b].extend(self.starts[b + 1])
        self.ends[b].extend(self.ends[b + 1])
        self.ids[b].extend(self.ids[b + 1])
        self.block_ends[b] = max(self.block_ends[b], self.block_ends[b + 1])
        del self.starts[b + 1], self.ends[b + 1], self.ids[b + 1]
        del self.first_starts[b + 1], self.first_ids[b + 1], self.block_ends[b + 1]
        if len(self.ids[b]) > 2 * BLOCK:
            self._split(b)

    def overlapping(self, lo: float, hi: float, out: set[str]) -> None:
        block_ends = self.block_ends
        # Blocks starting at or before hi; in each, intervals starting at or before hi.
        for b in range(bisect.bisect_right(self.first_starts, hi)):
            if block_ends[b] < lo:
                continue
            ends, ids = self.ends[b], self.ids[b]
            for i in range(bisect.bisect_right(self.starts[b], hi)):
                if ends[i] >= lo:
                    out.add(ids[i])


#: The events the index folds, by type name.
_SETS = frozenset({CursorAdded.type_name, CursorMoved.type_name})
_REMOVED, _DETACHED, _ENDED = (
    CursorRemoved.type_name,
    AgentDetached.type_name,
    SessionEnded.type_name,
)


class CursorIndex:
    """Coverage lookups over a session's cursors; fold envelopes in with :meth:`apply`."""

    def __init__(self) -> None:
        self._cursors: dict[str, CursorView] = {}
        self._axes: dict[str, _Axis] = {}
        #: Cursor ids by owning agent (what a detach drops): agent id -> {cursor id: None}.
        self._owned: dict[str, dict[str, None]] = {}
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
        self._apply(event.type_name, event, envelope.sequence)

    def apply_checked(self, checked: CheckedEvent) -> None:
        """:meth:`apply` for an event read as its checked values (no envelope built)."""
        self._apply(checked.type_name, checked.fields, checked.sequence)

    def _apply(self, type_name: str, event: Any, sequence: int | None) -> None:
        """Fold in the event of type ``type_name`` whose fields ``event`` has."""
        if sequence is not None:
            self.sequence = sequence
        if type_name in _SETS:
            cursor = cursor_view(event)
            before = self._cursors.get(cursor.cursor_id)
            if before is None or before.agent_id != cursor.agent_id:  # a new owner
                self._drop(cursor.cursor_id)
                self._put(cursor)
            else:  # a move: the same owner, a new region
                self._unindex(before)
                self._cursors[cursor.cursor_id] = cursor
                self._index(cursor)
        elif type_name == _REMOVED:
            self._drop(event.cursor_id)
        elif type_name == _DETACHED:
            for cursor_id in list(self._owned.get(event.agent_id, ())):
                self._drop(cursor_id)
        elif type_name == _ENDED:  # every agent still attached left with the end
            self._cursors, self._axes, self._owned = {}, {}, {}

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
        owned = self._owned.get(cursor.agent_id)
        if owned is None:
            owned = self._owned[cursor.agent_id] = {}
        owned[cursor.cursor_id] = None
        self._index(cursor)

    def _drop(self, cursor_id: str) -> None:
        cursor = self._cursors.pop(cursor_id, None)
        if cursor is None:
            return
        owned = self._owned[cursor.agent_id]
        del owned[cursor_id]
        if not owned:
            del self._owned[cursor.agent_id]
        self._unindex(cursor)

    def _index(self, cursor: CursorView) -> None:
        for axis in cursor.axes:
            entry = self._axes.get(axis)
            if entry is None:
                entry = self._axes[axis] = _Axis()
            entry.put(cursor.cursor_id, cursor.start, cursor.end)

    def _unindex(self, cursor: CursorView) -> None:
        for axis in cursor.axes:
            entry = self._axes[axis]
            entry.drop(cursor.cursor_id, cursor.start)
            if not entry:
                del self._axes[axis]
