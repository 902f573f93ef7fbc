"""The session service: session actors behind NATS request/reply.

``plantangenet serve`` runs one :class:`SessionService`. It subscribes to
``<prefix>.cmd.*.*`` in a queue group, so several processes can share the
load; each request is routed to its session's actor (rehydrated from the log
on first use, stopped again when idle), and answered with the stored sequence
or a typed error (see :mod:`plantangenet.protocol`). If two processes write
the same session, the journal's optimistic concurrency makes the later one
fail cleanly; the service retries it on the caught-up state.

Requests that cannot change a session whose log is empty (a ``state`` query,
any command but ``start``) are answered from the log without starting an
actor: clients name session ids at will, and must not start threads at will.
A ``state`` query never answers an actor's state from a failed rehydration (it
reports the failure), and a reply larger than the connection's
``max_payload`` becomes a ``reply_too_large`` error.

Nothing here blocks the event loop: requests become tasks, actors are reached
through futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import Sequence
from typing import Any

from nats.aio.msg import Msg

from plantangenet.actors.session import CommandResult, SessionActor
from plantangenet.commands import Command, QueryCursor, StartSession
from plantangenet.decide import check_id, decide_authorized
from plantangenet.errors import (
    ConcurrencyError,
    InvalidCommand,
    PlantangenetError,
    ReplyTooLarge,
)
from plantangenet.handle import SessionHandle
from plantangenet.projections.session import SessionState
from plantangenet.protocol import (
    BATCH,
    DEFAULT_COMMAND_PREFIX,
    QUERIES,
    batch_reply,
    data_reply,
    decode_batch,
    decode_request,
    error_reply,
    ok_reply,
    parse_subject,
)
from plantangenet.runtime import Plantangenet
from plantangenet.views import plain

log = logging.getLogger("plantangenet.service")

#: Placeholder for a batch command not answered yet (every one is, before the reply).
_UNANSWERED = PlantangenetError("internal error: a command of the batch was not answered")

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
        nc = self.runtime.connection
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
            limit = self._max_payload()
            if len(reply) > limit:
                raise ReplyTooLarge(
                    f"the reply to {name} is {len(reply)} bytes; this connection carries at "
                    f"most {limit}"
                )
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
                if self._running(session_id) is not None:  # an actor serves it: keep it warm
                    self._last_used[session_id] = time.monotonic()
                elif not self._busy[session_id]:  # answered without an actor: nothing to keep
                    del self._busy[session_id]
                    self._last_used.pop(session_id, None)
        self.handled += 1
        if msg.reply:
            try:
                await self.runtime.connection.publish(msg.reply, reply)
            except Exception:
                log.warning("could not reply on %s", msg.reply, exc_info=True)

    def _max_payload(self) -> int:
        """The largest message the connection may publish (the server's ``max_payload``)."""
        limit = getattr(self.runtime.connection, "max_payload", 0)
        return limit if isinstance(limit, int) and limit > 0 else 1024 * 1024

    def _running(self, session_id: str) -> SessionHandle | None:
        """The session's actor if one is running in this process (none is started)."""
        return self.runtime.running_session(session_id)

    async def _log_is_empty(self, session_id: str) -> bool:
        return await self.runtime.journal.last_sequence(session_id) == 0

    async def _answer(self, session_id: str, name: str, payload: bytes) -> bytes:
        if name in QUERIES:
            return await self._query(session_id, name)
        if name == BATCH:
            return batch_reply(await self._execute(session_id, decode_batch(payload)))
        command = decode_request(name, payload)
        if isinstance(command, QueryCursor):
            # The answer must fit in a reply: a larger one is refused before it is
            # recorded or charged (the reply's own fields need a little room).
            room = self._max_payload() - 4096
            if command.max_bytes is None or command.max_bytes > room:
                command = dataclasses.replace(command, max_bytes=room)
        (outcome,) = await self._execute(session_id, [command])
        if isinstance(outcome, PlantangenetError):
            raise outcome
        return ok_reply(outcome)

    async def _execute(
        self, session_id: str, items: Sequence[Command | PlantangenetError]
    ) -> list[CommandResult | PlantangenetError]:
        """Each command decided and stored in order, each on its own; per item its outcome.

        ``items`` are a request's commands (one, or a batch's), with the errors that
        refused malformed ones in their places. They go to the session's actor as one
        message (``submit_many``); a command that lost a race with another writer is
        sent again on the caught-up state (at most ``conflict_retries`` times).
        """
        outcomes: list[CommandResult | PlantangenetError] = [
            item if isinstance(item, PlantangenetError) else _UNANSWERED for item in items
        ]
        commands = {i: item for i, item in enumerate(items) if isinstance(item, Command)}
        pending = list(commands)
        if (
            pending
            and not any(isinstance(command, StartSession) for command in commands.values())
            and self._running(session_id) is None
            and await self._log_is_empty(session_id)
        ):
            # Anyone may name any session id: commands that cannot apply to a session
            # that was never started are refused without starting an actor for it.
            could_apply = []
            for i in pending:
                try:
                    self._refuse_unstarted(session_id, commands[i])
                    could_apply.append(i)
                except PlantangenetError as exc:
                    outcomes[i] = exc
            pending = could_apply
        for attempt in range(self.conflict_retries + 1):
            if not pending:
                break
            handle = self.runtime.session(session_id)
            batch = [commands[i] for i in pending]
            answers = await asyncio.wrap_future(handle.submit_many(batch))
            retry = []
            for i, answer in zip(pending, answers, strict=True):
                if isinstance(answer, ConcurrencyError) and attempt < self.conflict_retries:
                    retry.append(i)
                else:
                    outcomes[i] = answer
            pending = retry
        return outcomes

    def _refuse_unstarted(self, session_id: str, command: Command) -> None:
        """Raise what the session's actor would for ``command`` on a session with no events.

        Returns only if the command could apply (then an actor must handle it).
        """
        try:
            decide_authorized(SessionState(session_id), command, limits=self.runtime.limits)
        except (TypeError, ValueError, AttributeError) as exc:  # as the actor reports them
            raise InvalidCommand(f"{type(command).__name__}: {exc}") from None

    async def _query(self, session_id: str, name: str) -> bytes:
        handle = self._running(session_id)
        if handle is None and await self._log_is_empty(session_id):
            # A read starts no actor for a session that does not exist: its state is new.
            state = SessionState(session_id)
        else:
            handle = handle or self.runtime.session(session_id)
            state = await asyncio.wrap_future(handle.query(SessionActor.current_state))
        reply = data_reply({"state": plain(state)})
        limit = self._max_payload()
        if len(reply) > limit:
            raise ReplyTooLarge(
                f"the state of session {session_id} is {len(reply)} bytes, more than this "
                f"connection carries ({limit}); fold its events from the log up to sequence "
                f"{state.sequence} instead",
                sequence=state.sequence,
            )
        return reply

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
