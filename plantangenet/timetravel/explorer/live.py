"""The explorer's live feed: a session tailed on the runtime's event loop, handed to the
UI (which :meth:`LiveFeed.drain` s it on a timer) through a thread-safe queue."""

from __future__ import annotations

import asyncio
import contextlib
import queue
from typing import TYPE_CHECKING

from plantangenet.events.envelope import Envelope

if TYPE_CHECKING:
    from plantangenet.runtime import Plantangenet

__all__ = ["LiveFeed"]


class LiveFeed:
    """Tails a session on the runtime's event loop; the UI thread :meth:`drain` s it.

    The only hand-off between the loop and the UI is a thread-safe queue.
    """

    def __init__(self, runtime: Plantangenet, session_id: str, *, from_sequence: int) -> None:
        self.runtime = runtime
        self.session_id = session_id
        self.from_sequence = from_sequence
        #: Why the tail stopped (``None`` while it runs).
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue[Envelope | BaseException] = queue.SimpleQueue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LiveFeed:
        """Start tailing (returns once the tail is scheduled on the runtime's loop)."""
        self._task = self.runtime.loop.run(self._spawn(), timeout=10)
        return self

    async def _spawn(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            tail = self.runtime.journal.tail(self.session_id, from_sequence=self.from_sequence)
            async for envelope in tail:
                self._queue.put(envelope)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported on the status line, never fatal
            self._queue.put(exc)

    def drain(self, limit: int = 10_000) -> list[Envelope]:
        """The events that arrived since the last call (at most ``limit``)."""
        out: list[Envelope] = []
        while len(out) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, BaseException):
                self.error = item
            else:
                out.append(item)
        return out

    @property
    def state(self) -> str:
        """``live``, or why the tail stopped."""
        return "live" if self.error is None else f"live tail stopped: {self.error}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the tail and wait (up to ``timeout``) for it to unsubscribe (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(RuntimeError, TimeoutError):  # the loop is already gone
                self.runtime.loop.run(_cancel(task), timeout)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})
