"""A :class:`concurrent.futures.Future` that costs little to make and to collect.

A pipelining caller keeps hundreds of commands outstanding, each with its
future. The standard future builds a :class:`threading.Condition` and two
lists apiece: eleven objects the garbage collector tracks, and since they live
as long as the command, it promotes them and traverses them again and again
(with a thousand commands in flight that was a sixth of the library's CPU).
:class:`ReplyFuture` behaves the same to its users but is one tracked object:
all reply futures share one lock for their state changes, a thread that has
to wait gets its own wake-up lock only then, and the lists are made when
first used.

It is a subclass, so ``isinstance(f, concurrent.futures.Future)``,
``concurrent.futures.wait``, ``as_completed`` and ``asyncio.wrap_future`` work as
with any future. It keeps the base class's private attributes that those
functions use (``_condition``, ``_state``, ``_waiters``) and its methods that
need no waking (``add_done_callback``, ``set_running_or_notify_cancel``, ``repr``).
"""

from __future__ import annotations

import logging
import threading
from concurrent.futures import CancelledError, Future, InvalidStateError
from concurrent.futures import TimeoutError as FutureTimeout
from concurrent.futures._base import (
    CANCELLED,
    CANCELLED_AND_NOTIFIED,
    FINISHED,
    PENDING,
    RUNNING,
)
from typing import Any, TypeVar

T = TypeVar("T")

#: Guards every ReplyFuture's state (held for a few attribute writes at a time).
_LOCK = threading.RLock()
_LOG = logging.getLogger("concurrent.futures")
_ENDED = frozenset({CANCELLED, CANCELLED_AND_NOTIFIED, FINISHED})


class ReplyFuture(Future[T]):
    """A future answered by a session actor (see the module docstring).

    Made by the library; callers use it as any :class:`concurrent.futures.Future`.
    """

    __slots__ = ("_callback_list", "_exception", "_result", "_sleepers", "_state", "_waiter_list")

    #: Shared by all reply futures. A lock, not a Condition: nothing waits on it
    #: (``wait`` and ``as_completed`` only take and release it; the base methods kept
    #: here only hold it).
    _condition = _LOCK  # type: ignore[assignment]

    def __init__(self) -> None:  # not super().__init__(): it makes a Condition
        self._state = PENDING
        self._result: Any = None
        self._exception: BaseException | None = None
        #: ``_waiters`` and ``_done_callbacks``, made when first used (most replies
        #: have neither a ``wait()`` nor a callback).
        self._waiter_list: list[Any] | None = None
        self._callback_list: list[Any] | None = None
        #: Locks held by threads waiting in ``result``/``exception``; released on the end.
        self._sleepers: list[threading.Lock] | None = None

    @property
    def _waiters(self) -> list[Any]:  # type: ignore[override]
        if self._waiter_list is None:
            self._waiter_list = []
        return self._waiter_list

    @property
    def _done_callbacks(self) -> list[Any]:
        if self._callback_list is None:
            self._callback_list = []
        return self._callback_list

    def _run_callbacks(self) -> None:
        for callback in self._done_callbacks:
            try:
                callback(self)
            except Exception:  # as the standard future does: log, go on with the next
                _LOG.exception("exception calling callback for %r", self)

    # -- waiting -------------------------------------------------------------

    def _wait(self, timeout: float | None) -> None:
        """Return once ended, or raise :class:`TimeoutError` after ``timeout`` seconds."""
        if self._state in _ENDED:
            return
        with _LOCK:
            if self._state in _ENDED:
                return
            sleeper = threading.Lock()
            sleeper.acquire()
            if self._sleepers is None:
                self._sleepers = []
            self._sleepers.append(sleeper)
        woken = sleeper.acquire(True, -1 if timeout is None else max(timeout, 0.0))
        if not woken:
            with _LOCK:
                if self._sleepers is not None and sleeper in self._sleepers:
                    self._sleepers.remove(sleeper)
                if self._state not in _ENDED:
                    raise FutureTimeout()

    def _wake(self) -> None:
        """Wake the waiting threads (called holding ``_LOCK``, once ended)."""
        sleepers, self._sleepers = self._sleepers, None
        if sleepers:
            for sleeper in sleepers:
                sleeper.release()

    def result(self, timeout: float | None = None) -> T:
        state = self._state
        if state != FINISHED:
            self._wait(timeout)
            state = self._state
            if state != FINISHED:
                raise CancelledError()
        exception = self._exception
        if exception is not None:
            try:
                raise exception
            finally:
                del exception  # no reference cycle through the traceback
        result: T = self._result
        return result

    def exception(self, timeout: float | None = None) -> BaseException | None:
        if self._state != FINISHED:
            self._wait(timeout)
            if self._state != FINISHED:
                raise CancelledError()
        return self._exception

    # -- ending ----------------------------------------------------------------

    def done(self) -> bool:
        return self._state in _ENDED

    def cancelled(self) -> bool:
        return self._state in (CANCELLED, CANCELLED_AND_NOTIFIED)

    def running(self) -> bool:
        return self._state == RUNNING

    def cancel(self) -> bool:
        with _LOCK:
            if self._state in (RUNNING, FINISHED):
                return False
            if self._state in (CANCELLED, CANCELLED_AND_NOTIFIED):
                return True
            self._state = CANCELLED
            self._wake()
        if self._callback_list:
            self._run_callbacks()
        return True

    def set_result(self, result: T) -> None:
        self._finish(result, None, failed=False)

    def set_exception(self, exception: BaseException | None) -> None:
        self._finish(None, exception, failed=True)

    def _finish(self, result: Any, exception: BaseException | None, *, failed: bool) -> None:
        with _LOCK:
            if self._state in _ENDED:
                raise InvalidStateError(f"{self._state}: {self!r}")
            self._result = result
            self._exception = exception
            self._state = FINISHED
            if self._waiter_list:  # concurrent.futures.wait / as_completed
                for waiter in self._waiter_list:
                    if failed:
                        waiter.add_exception(self)
                    else:
                        waiter.add_result(self)
            self._wake()
        if self._callback_list:
            self._run_callbacks()
