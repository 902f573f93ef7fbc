"""Where appends' acknowledgements come back: one inbox, one table of waiting appends.

An append's last message is a request: JetStream answers it with the
acknowledgement. nats-py's ``request`` does per call what a busy journal does a
thousand times a second: two random bytes from the OS for the token (a system call,
during which the event loop's thread gives up the GIL to whichever session thread
wants it), a ``wait_for`` with its own future and task machinery, header validation
key by key, and for the answer a header dict, a ``Msg``, a queue and a task.
:class:`AckInbox` asks the same question more cheaply: one direct subscription to
``<inbox>.*`` for the connection's life (answers go from nats-py's parser to the
waiting append, see :mod:`plantangenet.log.deliveries`), a counter for tokens, one
timer per append, and the message's frame built in one pass
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
of other accounts cannot publish (README, "Locking it down").
"""

from __future__ import annotations

import asyncio
from typing import Any

import nats.errors

from plantangenet.log.deliveries import NO_RESPONDERS, status_code, subscribe_direct
from plantangenet.log.frames import request_frame, send_frames


def _expire(future: asyncio.Future[bytes]) -> None:
    if not future.done():
        future.set_exception(nats.errors.TimeoutError())


class AckInbox:
    """Requests on ``nc`` whose answers share one subscription (see the module docstring).

    Use it on the connection's event loop only.
    """

    __slots__ = ("_count", "_nc", "_opening", "_prefix", "_token_at", "_waiting")

    def __init__(self, nc: Any) -> None:
        self._nc = nc
        self._prefix: str | None = None
        self._token_at = 0
        self._opening = asyncio.Lock()
        self._waiting: dict[bytes, asyncio.Future[bytes]] = {}
        self._count = 0

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
        self, subject: str, payload: bytes, timeout: float, headers: dict[str, str]
    ) -> bytes:
        """Publish ``payload`` on ``subject``; the answer's payload (see the module docstring)."""
        prefix = self._prefix if self._prefix is not None else await self._open()
        self._count += 1
        token = b"%d" % self._count
        reply = f"{prefix}{self._count}"
        loop = asyncio.get_running_loop()
        future: asyncio.Future[bytes] = loop.create_future()
        self._waiting[token] = future
        timer = loop.call_later(timeout, _expire, future)
        try:
            nc = self._nc
            frame = request_frame(subject, reply, headers, payload)
            if frame is None or not await send_frames(nc, frame, (payload,), flush=True):
                await nc.publish(subject, payload, reply=reply, headers=headers)
            return await future
        finally:
            timer.cancel()
            del self._waiting[token]
