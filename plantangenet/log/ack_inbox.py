"""Where answers to requests come back: one inbox, one table of waiting requests.

An append's last message is a request: JetStream answers it with the
acknowledgement; a bot's command is a request the session service answers
(:class:`~plantangenet.wire.client.BotClient` sends its requests through an
:class:`AckInbox` too). nats-py's ``request`` does per call what a busy journal does a
thousand times a second: two random bytes from the OS for the token (a system call,
during which the event loop's thread gives up the GIL to whichever session thread
wants it), a ``wait_for`` with its own future and task machinery, header validation
key by key, and for the answer a header dict, a ``Msg``, a queue and a task.
:class:`AckInbox` asks the same question more cheaply: one direct subscription to
``<inbox>.*`` for the connection's life (answers go from nats-py's parser to the
waiting append, see :mod:`plantangenet.log.deliveries`), a counter for tokens, one
timer for all the appends waiting (their deadlines in a heap of plain tuples: an
asyncio timer per append cost its creation, its cancelling and the event loop's
heap of timers compared in Python), and the message's frame built in one pass
(:func:`~plantangenet.log.frames.request_frame`, falling back to nats-py's
``publish`` for anything that is not plain ASCII). An answer is its payload: all
the journal reads of an acknowledgement.

It raises what ``Client.request`` raises for the cases the journal handles:
:class:`nats.errors.TimeoutError` when no answer comes in time and
:class:`nats.errors.NoRespondersError` when the server says nobody listens (a
stream without a leader). A connection closed meanwhile fails the publish with
nats-py's own error, or the wait with the timeout.

Whoever can publish on the inbox could answer in JetStream's place: it is the
connection's own (``_INBOX.<random>``), in the service's NATS account, where bots
of other accounts cannot publish (README, "Locking it down"). A bot's inbox is in
its own account (``_INBOX_<user>.<random>``), where only that account's clients and
the service's replies (through the import's reply mapping) can publish, as for
nats-py's own ``request``.
"""

from __future__ import annotations

import asyncio
import heapq
import logging
from collections.abc import Callable
from typing import Any

import nats.errors

from plantangenet.log.deliveries import NO_RESPONDERS, status_code, subscribe_direct
from plantangenet.log.frames import queue_frames, request_frame, send_frames

log = logging.getLogger("plantangenet.log.ack_inbox")

#: Seconds an expired request may wait to be told so, at most (the timer's granularity).
SWEEP_EVERY = 0.02

#: ``answered(payload, None)`` or ``answered(None, error)``: see :meth:`AckInbox.request_now`.
Answered = Callable[[bytes | None, BaseException | None], None]


class _Answer:
    """A request of :meth:`AckInbox.request_now` waiting: told its outcome once, as a
    future would be (it leaves the table of waiting requests then)."""

    __slots__ = ("_answered", "_done", "_table", "_token")

    def __init__(self, table: dict[bytes, Any], token: bytes, answered: Answered) -> None:
        self._table = table
        self._token = token
        self._answered = answered
        self._done = False

    def done(self) -> bool:
        return self._done

    def set_result(self, payload: bytes) -> None:
        self._end(payload, None)

    def set_exception(self, error: BaseException) -> None:
        self._end(None, error)

    def _end(self, payload: bytes | None, error: BaseException | None) -> None:
        self._done = True
        del self._table[self._token]
        try:
            self._answered(payload, error)
        except Exception:
            log.exception("a request's answer could not be handed over")


class AckInbox:
    """Requests on ``nc`` whose answers share one subscription (see the module docstring).

    Use it on the connection's event loop only.
    """

    __slots__ = (
        "_count",
        "_deadlines",
        "_nc",
        "_opening",
        "_prefix",
        "_sweep",
        "_token_at",
        "_waiting",
    )

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._prefix: str | None = None
        self._token_at = 0
        self._opening = asyncio.Lock()
        self._waiting: dict[bytes, asyncio.Future[bytes] | _Answer] = {}
        self._count = 0
        #: ``(deadline, count)`` of requests sent (answered ones stay until they are due
        #: or the heap is compacted), and the timer that expires the due ones.
        self._deadlines: list[tuple[float, int]] = []
        self._sweep: asyncio.TimerHandle | None = None

    @property
    def prefix(self) -> str | None:
        """The inbox's subject prefix (answers come on ``<prefix><token>``), once opened."""
        return self._prefix

    @property
    def sent(self) -> int:
        """How many requests were sent (the last token used)."""
        return self._count

    @property
    def waiting(self) -> int:
        """How many requests wait for their answer now."""
        return len(self._waiting)

    async def _open(self) -> str:
        """Subscribe to the inbox, once (the first callers wait for the one subscription)."""
        async with self._opening:
            if self._prefix is None:
                prefix = f"{self._nc.new_inbox()}."
                self._token_at = len(prefix)
                await subscribe_direct(self._nc, f"{prefix}*", self._arrived)
                self._prefix = prefix
            return self._prefix

    def _arrived(self, subject: bytes, reply: bytes, data: bytes, headers: bytes | None) -> None:
        future = self._waiting.get(subject[self._token_at :])
        if future is None or future.done():
            return
        # What nats-py's request checks: the server's status for a request nobody took.
        if status_code(headers) == NO_RESPONDERS:
            future.set_exception(nats.errors.NoRespondersError())
        else:
            future.set_result(data)

    async def request(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str] | None = None,
    ) -> bytes:
        """Publish ``payload`` on ``subject``; the answer's payload (see the module docstring)."""
        prefix = self._prefix if self._prefix is not None else await self._open()
        self._count += 1
        reply = f"{prefix}{self._count}"
        future: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()
        token = self._wait_for(self._count, future, timeout)
        try:
            nc = self._nc
            frame = request_frame(subject, reply, headers, payload)
            if frame is None or not await send_frames(nc, frame, (payload,), flush=True):
                await nc.publish(subject, payload, reply=reply, headers=headers)
            return await future
        finally:
            del self._waiting[token]

    def request_now(
        self,
        subject: str,
        payload: bytes,
        timeout: float,
        headers: dict[str, str],
        answered: Answered,
    ) -> bool:
        """:meth:`request` without a coroutine, for a caller on the loop: send now and call
        ``answered(payload, None)`` with the answer, or ``answered(None, error)`` with what
        :meth:`request` raises, on the loop. ``False`` (nothing sent, ``answered`` never
        called) where it would have to wait: the inbox not open yet, a frame nats-py must
        build, a full write buffer; then use :meth:`request`."""
        prefix = self._prefix
        if prefix is None:
            return False
        count = self._count + 1
        frame = request_frame(subject, f"{prefix}{count}", headers, payload)
        if frame is None or not queue_frames(self._nc, frame, (payload,)):
            return False
        self._count = count
        token = b"%d" % count
        self._wait_for(count, _Answer(self._waiting, token, answered), timeout)
        return True

    def _wait_for(
        self, count: int, waiter: asyncio.Future[bytes] | _Answer, timeout: float
    ) -> bytes:
        """Register ``waiter`` for the answer to request ``count``, due in ``timeout``
        seconds; its token."""
        token = b"%d" % count
        self._waiting[token] = waiter
        loop = asyncio.get_running_loop()
        self._expire_at(loop, loop.time() + timeout, count)
        return token

    def _expire_at(self, loop: asyncio.AbstractEventLoop, deadline: float, count: int) -> None:
        """Time the request ``count`` out at ``deadline`` (see the module docstring)."""
        deadlines = self._deadlines
        if len(deadlines) > 2 * len(self._waiting) + 4096:  # mostly answered: compact
            deadlines[:] = [e for e in deadlines if b"%d" % e[1] in self._waiting]
            heapq.heapify(deadlines)
        heapq.heappush(deadlines, (deadline, count))
        sweep = self._sweep
        if sweep is None or deadline < sweep.when():
            if sweep is not None:
                sweep.cancel()
            self._sweep = loop.call_at(deadline, self._expire_due, loop)

    def _expire_due(self, loop: asyncio.AbstractEventLoop) -> None:
        """Fail the requests whose deadline passed with ``TimeoutError``; sleep till the next."""
        self._sweep = None
        now = loop.time()
        deadlines = self._deadlines
        while deadlines and deadlines[0][0] <= now:
            future = self._waiting.get(b"%d" % heapq.heappop(deadlines)[1])
            if future is not None and not future.done():
                future.set_exception(nats.errors.TimeoutError())
        if deadlines:  # the next sweep: unless one told here armed it early enough
            due = max(deadlines[0][0], now + SWEEP_EVERY)
            sweep = self._sweep
            if sweep is None or sweep.when() > due:
                if sweep is not None:
                    sweep.cancel()
                self._sweep = loop.call_at(due, self._expire_due, loop)
