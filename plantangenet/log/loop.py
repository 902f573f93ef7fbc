"""One asyncio event loop on its own thread, owning the NATS connection.

pykka actors are threads; nats-py is asyncio. Actors never touch the
connection: they hand coroutines to this loop with :meth:`EventLoopThread.submit`
(non-blocking, returns a :class:`concurrent.futures.Future`) or
:meth:`EventLoopThread.run` (blocks the *calling* thread, never the loop).
Coroutines on the loop wait for an actor's answer with :meth:`EventLoopThread.wrap`.

Hand-offs share wake-ups. asyncio's ``call_soon_threadsafe`` writes a byte to the
loop's wake-up socket on every call: a system call on the actor's thread and a
read on the loop's, each giving up the GIL to whichever of a hundred session
threads wants it. :meth:`EventLoopThread.call_soon` queues the call instead and
wakes the loop only if no wake-up is on its way: under load, the hand-offs of many
sessions ride one wake-up.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from asyncio.futures import _chain_future  # type: ignore[attr-defined]
from collections import deque
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

log = logging.getLogger("plantangenet.loop")


def _copy_outcome(source: concurrent.futures.Future[T], target: asyncio.Future[T]) -> None:
    """Give ``target`` (on its loop) the outcome of the ended ``source``."""
    if target.done():
        return
    if source.cancelled():
        target.cancel()
        return
    exception = source.exception()
    if exception is not None:
        target.set_exception(exception)
    else:
        target.set_result(source.result())


class EventLoopThread:
    """A daemon thread running an asyncio loop until :meth:`stop`."""

    def __init__(self, name: str = "plantangenet-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        #: The loop thread's identifier once it runs (``in_loop_thread`` is asked several
        #: times per command: one C call, not ``threading.current_thread()``).
        self._ident: int | None = None
        self._started = threading.Event()
        #: Calls handed over from other threads, run in order on the loop.
        self._handoffs: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        #: Whether a wake-up that runs them is on its way.
        self._woken = False

    def _run(self) -> None:
        self._ident = threading.get_ident()
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
        self._ident = None  # an identifier may be reused by a thread started later

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
        return threading.get_ident() == self._ident

    def call_soon(self, callback: Callable[..., object], *args: Any) -> None:
        """Call ``callback(*args)`` on the loop soon (from any thread), after the calls
        handed over before it; raises ``RuntimeError`` if the loop is closed.

        ``callback`` must not block; an exception it raises is logged. Called on the
        loop's own thread with nothing handed over waiting, it is queued on the loop
        directly (no wake-up needed).
        """
        if not self._handoffs and self.in_loop_thread:
            self.loop.call_soon(self._run_one, callback, args)
            return
        self._handoffs.append((callback, args))
        if self._woken:
            return  # the wake-up on its way runs this call too
        self._woken = True
        try:
            self.loop.call_soon_threadsafe(self._run_handoffs)
        except RuntimeError:
            self._woken = False
            with contextlib.suppress(ValueError):
                self._handoffs.remove((callback, args))
            raise

    def _run_handoffs(self) -> None:
        # Cleared before draining: a call queued after the last pop sees it cleared
        # and wakes the loop again; one queued before it is popped here.
        self._woken = False
        handoffs = self._handoffs
        while handoffs:
            callback, args = handoffs.popleft()
            self._run_one(callback, args)

    @staticmethod
    def _run_one(callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        try:
            callback(*args)
        except Exception:
            log.exception("a call handed to the event loop failed: %r", callback)

    def submit(self, coro: Coroutine[Any, Any, T]) -> concurrent.futures.Future[T]:
        """Schedule ``coro`` on the loop; returns at once.

        As ``asyncio.run_coroutine_threadsafe``: the future holds the coroutine's
        outcome, and cancelling it cancels the coroutine.
        """
        future: concurrent.futures.Future[T] = concurrent.futures.Future()

        def start() -> None:
            if future.cancelled():
                coro.close()  # cancelled before it started
                return
            try:
                _chain_future(asyncio.ensure_future(coro, loop=self.loop), future)
            except BaseException as exc:
                if future.set_running_or_notify_cancel():
                    future.set_exception(exc)
                raise

        self._start(coro, start)
        return future

    def run_then(
        self, coro: Coroutine[Any, Any, T], then: Callable[[asyncio.Future[T]], object]
    ) -> None:
        """Run ``coro`` on the loop and call ``then(task)`` there once it ended.

        :meth:`submit` for a caller that only needs to hear of the outcome: no
        ``concurrent.futures.Future`` and no chaining of one to the task (``then`` may
        read ``task.result()`` from any thread, since the task has ended). If the loop
        stops first, the task is cancelled and ``then`` still called. ``then`` must
        not block; raises ``RuntimeError`` if the loop is closed. Called on the loop's own
        thread with nothing handed over waiting, the task is created at once (its first
        step is queued on the loop as any task's is).
        """

        def start() -> None:
            asyncio.ensure_future(coro, loop=self.loop).add_done_callback(then)

        if not self._handoffs and self.in_loop_thread and not self.loop.is_closed():
            start()  # what call_soon would queue, without the extra turn of the loop
            return
        self._start(coro, start)

    def _start(self, coro: Coroutine[Any, Any, Any], start: Callable[[], None]) -> None:
        """Hand ``start`` (which starts ``coro``) to the loop; a loop that is closed, or
        closes meanwhile, raises ``RuntimeError`` and ``coro`` is closed (never awaited)."""
        if self.loop.is_closed():
            coro.close()
            raise RuntimeError("the event loop is closed")
        try:
            self.call_soon(start)
        except RuntimeError:
            coro.close()
            raise

    def wrap(self, future: concurrent.futures.Future[T]) -> asyncio.Future[T]:
        """An asyncio future of this loop with ``future``'s outcome (call it on the loop).

        As ``asyncio.wrap_future``, but the outcome crosses to the loop through
        :meth:`call_soon` (shared wake-ups), or is copied at once if ``future`` ends on
        the loop's own thread; cancelling the asyncio future cancels ``future``.
        """
        target: asyncio.Future[T] = self.loop.create_future()

        def ended(source: concurrent.futures.Future[T]) -> None:
            if self.in_loop_thread:  # answered on the loop (see plantangenet.actors.turns)
                _copy_outcome(source, target)
                return
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody waits
                self.call_soon(_copy_outcome, source, target)

        def dropped(target: asyncio.Future[T]) -> None:
            if target.cancelled():
                future.cancel()

        target.add_done_callback(dropped)
        future.add_done_callback(ended)
        return target

    def call_later(self, delay: float, callback: Callable[[], object]) -> None:
        """Call ``callback()`` on the loop after ``delay`` seconds (from any thread).

        Nothing happens if the loop is closed meanwhile; ``callback`` must not block.
        """
        if not self.loop.is_closed():
            with contextlib.suppress(RuntimeError):  # closed between the check and the call
                self.call_soon(self.loop.call_later, delay, callback)

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
