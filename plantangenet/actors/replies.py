"""Where a session actor sends a command's outcome.

A command sent with :meth:`SessionHandle.submit` is answered on its own
:class:`concurrent.futures.Future`. Commands sent together with
:meth:`SessionHandle.submit_many` share one future: each holds a
:class:`BatchSlot` in a :class:`Batch`, which resolves the future with every
outcome, in order, once the last one is known. The actor treats both alike
(:class:`Reply`) and touches them only on its own thread.
"""

from __future__ import annotations

import concurrent.futures
from typing import Any, Protocol

from plantangenet.errors import PlantangenetError

#: What one command of a batch came to: its result, or the typed error that refused it.
Outcome = Any  # CommandResult | PlantangenetError (CommandResult would import the actor)


class Reply(Protocol):
    """The part of :class:`concurrent.futures.Future` an actor answers a command through."""

    def done(self) -> bool: ...

    def set_result(self, result: Any) -> None: ...

    def set_exception(self, exception: BaseException | None) -> None: ...


class Batch:
    """The outcomes of commands sent together; resolves ``future`` when all are in.

    :param future: resolved with a tuple of outcomes in the order the commands were sent.
    :param size: how many commands the batch holds (at least one).
    """

    __slots__ = ("_asks", "_cancelled", "_left", "_outcomes", "future")

    def __init__(self, future: concurrent.futures.Future[tuple[Outcome, ...]], size: int) -> None:
        self.future = future
        self._outcomes: list[Outcome] = [None] * size
        self._left = size
        self._asks = 0
        self._cancelled = False

    def cancelled(self) -> bool:
        """Whether the caller cancelled the batch: looked up on the first ask, then every
        64th (the lookup takes the future's lock), so a cancel stops the batch within
        64 commands."""
        if self._asks & 63 == 0:
            self._cancelled = self.future.cancelled()
        self._asks += 1
        return self._cancelled

    def slot(self, index: int) -> BatchSlot:
        """The reply of the batch's ``index``-th command."""
        return BatchSlot(self, index)

    def settle(self, index: int, outcome: Outcome) -> bool:
        """Record one command's outcome; False if it already had one."""
        if self._outcomes[index] is not None:
            return False
        self._outcomes[index] = outcome
        self._left -= 1
        if self._left == 0:
            try:  # noqa: SIM105 - the caller may have cancelled the whole batch
                self.future.set_result(tuple(self._outcomes))
            except concurrent.futures.InvalidStateError:
                pass
        return True


class BatchSlot:
    """One command's place in a :class:`Batch` (a :class:`Reply`)."""

    __slots__ = ("_batch", "_done", "_index")

    def __init__(self, batch: Batch, index: int) -> None:
        self._batch = batch
        self._index = index
        self._done = False

    def done(self) -> bool:
        """Answered already, or the caller cancelled the batch."""
        return self._done or self._batch.cancelled()

    def set_result(self, result: Any) -> None:
        self._settle(result)

    def set_exception(self, exception: BaseException | None) -> None:
        if not isinstance(exception, PlantangenetError):  # never expected; keep it typed
            exception = PlantangenetError(f"internal error: {exception!r}")
        self._settle(exception)

    def _settle(self, outcome: Outcome) -> None:
        if self._done or not self._batch.settle(self._index, outcome):
            raise concurrent.futures.InvalidStateError("this command was answered already")
        self._done = True
