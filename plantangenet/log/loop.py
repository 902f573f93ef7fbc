"""One asyncio event loop on its own thread, owning the NATS connection.

pykka actors are threads; nats-py is asyncio. Actors never touch the
connection: they hand coroutines to this loop with :meth:`EventLoopThread.submit`
(non-blocking, returns a :class:`concurrent.futures.Future`) or
:meth:`EventLoopThread.run` (blocks the *calling* thread, never the loop).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import threading
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class EventLoopThread:
    """A daemon thread running an asyncio loop until :meth:`stop`."""

    def __init__(self, name: str = "plantangenet-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._started = threading.Event()

    def _run(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.call_soon(self._started.set)
        self.loop.run_forever()
        # Let cancelled tasks finish their cleanup before the loop closes.
        pending = asyncio.all_tasks(self.loop)
        for task in pending:
            task.cancel()
        if pending:
            self.loop.run_until_complete(asyncio.gather(*pending, return_exceptions=True))
        self.loop.run_until_complete(self.loop.shutdown_asyncgens())
        self.loop.close()

    @property
    def name(self) -> str:
        """The thread's name (``plantangenet-loop`` unless given)."""
        return self._thread.name

    def start(self) -> EventLoopThread:
        """Start the thread and wait until the loop runs."""
        self._thread.start()
        self._started.wait()
        return self

    @property
    def in_loop_thread(self) -> bool:
        """Whether the caller is running on the loop's own thread."""
        return threading.current_thread() is self._thread

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns at once."""
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("the event loop is closed")
        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        """Call ``callback()`` on the loop after ``delay`` seconds (from any thread).

        Nothing happens if the loop is closed meanwhile; ``callback`` must not block.
        """
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                self.loop.call_soon_threadsafe(self.loop.call_later, delay, callback)

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """Run ``coro`` on the loop and wait for its result in the calling thread."""
        if self.in_loop_thread:
            coro.close()
            raise RuntimeError("run() called from the loop thread would deadlock; await instead")
        future = self.submit(coro)
        try:
            return future.result(timeout)
        except concurrent.futures.TimeoutError:
            future.cancel()
            raise TimeoutError(f"no result within {timeout}s") from None

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the loop and join the thread (idempotent)."""
        if self._thread.is_alive():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout)
