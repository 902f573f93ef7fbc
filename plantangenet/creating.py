"""Creating JetStream things (streams, KV buckets) on a server that may answer late.

A cluster that has just started, or is busy, may form a new stream's replica group
after nats-py's request has given up: the create times out although it may have
happened. Creating the same thing again is answered as a success (or, if another
configuration exists, as the usual error), so a create that timed out is simply asked
again, for up to :data:`CREATE_TIMEOUT` seconds.

It sits beside :mod:`plantangenet.errors`, outside the layers, because the log (the
stream, the correlation index), the service's ownership and the read models of
:mod:`plantangenet.projections` (checkpoint buckets) all create things that way.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import TypeVar

import nats.errors

from plantangenet.errors import JournalError

__all__ = ["CREATE_TIMEOUT", "created"]

log = logging.getLogger(__name__)

T = TypeVar("T")

#: Seconds a create that times out is asked again (under the runtime's 30 s for opening
#: the log, so that this error is the one reported).
CREATE_TIMEOUT = 20.0


async def created(create: Callable[[], Awaitable[T]], what: str) -> T:
    """``create()``'s answer, asked again while it times out.

    :raises JournalError: if no attempt is answered within :data:`CREATE_TIMEOUT`.
        Other errors of ``create()`` are the caller's to handle.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + CREATE_TIMEOUT
    pause = 0.05
    while True:
        try:
            return await create()
        except nats.errors.TimeoutError as exc:
            if loop.time() + pause >= deadline:
                raise JournalError(
                    f"cannot create {what}: no answer within {CREATE_TIMEOUT:g} s"
                ) from exc
            log.info("creating %s timed out; asking again", what)
            await asyncio.sleep(pause)
            pause = min(pause * 2, 1.0)
