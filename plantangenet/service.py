"""The session service: session actors behind NATS request/reply.

``plantangenet serve`` runs one :class:`SessionService`. It subscribes to
``<prefix>.cmd.*.*`` in a queue group, so several processes can share the
load; each request is routed to its session's actor (rehydrated from the log
on first use, stopped again when idle), and answered with the stored sequence
or a typed error (see :mod:`plantangenet.protocol`). If two processes write
the same session, the journal's optimistic concurrency makes the later one
fail cleanly; the service retries it on the caught-up state.

Nothing here blocks the event loop: requests become tasks, actors are reached
through futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from nats.aio.msg import Msg

from plantangenet.decide import check_id
from plantangenet.errors import ConcurrencyError, PlantangenetError
from plantangenet.protocol import (
    DEFAULT_COMMAND_PREFIX,
    QUERIES,
    data_reply,
    decode_request,
    error_reply,
    ok_reply,
    parse_subject,
)
from plantangenet.runtime import Plantangenet
from plantangenet.views import plain

log = logging.getLogger("plantangenet.service")

#: The queue group every ``serve`` process joins.
QUEUE_GROUP = "plantangenet-serve"


class SessionService:
    """Serves commands for any session over NATS.

    :param runtime: a started :class:`~plantangenet.runtime.Plantangenet`.
    :param idle_timeout: seconds after which an unused session actor is stopped.
    :param max_in_flight: requests handled at once (more wait in NATS).
    :param conflict_retries: how often a command that lost a race with
        another writer is retried on the caught-up state.
    """

    def __init__(
        self,
        runtime: Plantangenet,
        *,
        command_prefix: str = DEFAULT_COMMAND_PREFIX,
        queue: str = QUEUE_GROUP,
        idle_timeout: float = 300.0,
        max_in_flight: int = 1000,
        conflict_retries: int = 8,
    ) -> None:
        self.runtime = runtime
        self.command_prefix = command_prefix
        self.queue = queue
        self.idle_timeout = idle_timeout
        self.conflict_retries = conflict_retries
        self._slots = asyncio.Semaphore(max_in_flight)
        self._tasks: set[asyncio.Task[None]] = set()
        self._last_used: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        self._sub: Any = None
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = False
        #: Requests answered, and how many of them were errors.
        self.handled = 0
        self.failed = 0

    # -- lifecycle (coroutines: run them on the runtime's loop) ------------------

    async def start(self) -> None:
        """Subscribe and begin serving."""
        nc = self.runtime._nc
        self._sub = await nc.subscribe(
            f"{self.command_prefix}.*.*", queue=self.queue, cb=self._on_message
        )
        await nc.flush()
        self._reaper = asyncio.create_task(self._reap_idle())
        log.info("serving %s.*.* in queue group %s", self.command_prefix, self.queue)

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking requests, finish the ones in flight, then return."""
        self._stopping = True
        if self._sub is not None:
            with contextlib.suppress(Exception):
                await self._sub.drain()
            self._sub = None
        if self._tasks:
            await asyncio.wait(list(self._tasks), timeout=timeout)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper

    # -- requests --------------------------------------------------------------------

    async def _on_message(self, msg: Msg) -> None:
        if msg.reply.startswith("$"):
            # Replies go to inboxes; never let a request make us publish to a system subject.
            log.warning("ignoring request on %s with reply subject %s", msg.subject, msg.reply)
            return
        await self._slots.acquire()
        task = asyncio.create_task(self._handle(msg))
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[None]) -> None:
        self._tasks.discard(task)
        self._slots.release()

    async def _handle(self, msg: Msg) -> None:
        session_id = ""
        try:
            session_id, name = parse_subject(msg.subject, self.command_prefix)
            check_id(session_id, "session_id")
            self._busy[session_id] = self._busy.get(session_id, 0) + 1
            reply = await self._answer(session_id, name, msg.data)
        except PlantangenetError as exc:
            self.failed += 1
            reply = error_reply(exc)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("request on %s failed", msg.subject)
            self.failed += 1
            reply = error_reply(exc)
        finally:
            if session_id in self._busy:
                self._busy[session_id] -= 1
                self._last_used[session_id] = time.monotonic()
        self.handled += 1
        if msg.reply:
            try:
                await self.runtime._nc.publish(msg.reply, reply)
            except Exception:
                log.warning("could not reply on %s", msg.reply, exc_info=True)

    async def _answer(self, session_id: str, name: str, payload: bytes) -> bytes:
        if name in QUERIES:
            return await self._query(session_id, name)
        command = decode_request(name, payload)
        handle = self.runtime.session(session_id)
        for attempt in range(self.conflict_retries + 1):
            try:
                result = await asyncio.wrap_future(handle.submit(command))
                return ok_reply(result)
            except ConcurrencyError:
                # Another writer got there first; the actor has caught up. Try again.
                if attempt == self.conflict_retries:
                    raise
        raise AssertionError("unreachable")

    async def _query(self, session_id: str, name: str) -> bytes:
        handle = self.runtime.session(session_id)
        state = await asyncio.wrap_future(handle.query(lambda actor: actor.state))
        return data_reply({"state": plain(state)})

    # -- idle sessions --------------------------------------------------------------

    async def _reap_idle(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(max(self.idle_timeout / 4, 0.05))
            now = time.monotonic()
            idle = [
                sid
                for sid, used in self._last_used.items()
                if now - used > self.idle_timeout and not self._busy.get(sid)
            ]
            for session_id in idle:
                self._last_used.pop(session_id, None)
                self._busy.pop(session_id, None)
                await loop.run_in_executor(None, self.runtime.stop_session, session_id)
                log.info("stopped idle session %s", session_id)

    @property
    def active_sessions(self) -> list[str]:
        """Sessions whose actors this service has used and not yet stopped."""
        return sorted(self._last_used)
