"""What a replay reads, and how it reports progress: the log side of replaying a session.

:func:`plantangenet.log.session_replay.replay` folds a session's log into its projection;
it reads any :class:`ReadableLog` (a :class:`~plantangenet.log.journal.Journal`, or a bot's
pages) and sits above both the log and the projections. The function is also
``plantangenet.replay`` at the top of the package.
"""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from typing import Protocol

from plantangenet.events.codec import EventCodec

#: ``progress(sequence_reached, last_sequence)``
Progress = Callable[[int, int], None]


class ReadableLog(Protocol):
    """What a replay reads: a :class:`~plantangenet.log.journal.Journal`, or a bot's pages."""

    codec: EventCodec

    def read_batches(
        self, session_id: str, *, from_sequence: int = 1, to_sequence: int | None = None
    ) -> AsyncGenerator[list[tuple[int, bytes]], None]:
        """``(stream sequence, stored bytes)`` of the session's messages in order, in
        batches (never empty)."""
        ...

    async def last_sequence(self, session_id: str) -> int: ...
