"""A command to a session whose actor runs here, answered without a task (see
:mod:`plantangenet.wire.service`).

Most requests a busy service takes are one command (a move, an attach, a grant) to a
session it serves already. As a task, each costs the task's creation and first step,
the asyncio future its actor's answer is copied into, the task's wake-up once the
answer comes, its done-callback, and a chain of coroutine frames: turns of the loop
on the thread that does everything else. :meth:`Direct._start_direct` instead sends
such a command to the actor at once and answers the bot from the callback that
receives the actor's outcome (on the loop's thread; an outcome set on the actor's own
thread is handed over to it): the same reply, counts, windows and retries as the
task's. Anything else (a batch, a query, a chem step, history, a session with no actor
running here, a request that does not decode) goes the task's way, which answers it.

A request the actor answers at once (a refusal, a duplicate) ends its principal's turn
on the loop's next turn, not at once, as a task's would: otherwise a flood of them would
be decided one by one within a single turn of the loop, never queueing behind the one in
hand nor overflowing cheaply (``too_many_requests``). And the requests of a principal
whose window refusals narrowed (see :meth:`SessionService.window
<plantangenet.wire.service.SessionService.window>`) take the task's way: measured with
``bench/bench_flood.py``, a flood of refusals answered directly, even one a turn, left
the well-behaved bot a third fewer round trips during it than tasks do.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import functools
import logging
import time
from dataclasses import dataclass
from typing import Any

from nats.aio.msg import Msg

from plantangenet.actors.handle import SessionHandle
from plantangenet.domain.commands import Command
from plantangenet.domain.decide import check_id
from plantangenet.errors import ConcurrencyError, PlantangenetError
from plantangenet.log.frames import publish_frame, queue_frames
from plantangenet.wire.micro import EndpointCounts
from plantangenet.wire.protocol import (
    BATCH,
    QUERIES,
    UNBATCHED,
    decode_request,
    ok_reply,
    parse_subject,
    traceparent,
)
from plantangenet.wire.relayed import RELAYED
from plantangenet.wire.service_answers import _traced
from plantangenet.wire.service_base import ServiceState

log = logging.getLogger("plantangenet.wire.service")

#: Requests that are never one plain command to an actor, told by name before anything
#: is decoded: history, batches, queries, chem steps, and the data queries whose answer
#: the task bounds by the connection's size (see Answering). The task answers them.
_NOT_DIRECT = frozenset({"history", BATCH, RELAYED, *QUERIES, *UNBATCHED})


@dataclass(slots=True)
class _Asked:
    """A command sent to its session's actor, and what answering its request needs."""

    msg: Msg
    endpoint: EndpointCounts
    taken: int
    principal: str
    session_id: str
    name: str
    trace: tuple[str, str] | None
    handle: SessionHandle
    command: Command
    attempt: int = 0


class Direct(ServiceState):
    """Methods of :class:`~plantangenet.wire.service.SessionService` (a mixin of it)."""

    def _start_direct(self, msg: Msg, endpoint: EndpointCounts, taken: int, principal: str) -> bool:
        """Send ``msg``'s command to its session's actor and answer it once decided, if
        it is one command to a session whose actor runs here; whether it was sent."""
        try:
            session_id, name, _ = parse_subject(msg.subject, self.command_prefix)
            check_id(session_id, "session_id")
        except PlantangenetError:
            return False
        if name in _NOT_DIRECT:
            return False
        if self._window_of.get(principal, self.first_window) < self.first_window:
            # Refused lately: its requests take the task's way, as before there was this
            # one (a flood of refusals is served exactly as it was; see the module docs).
            return False
        handle = self._running(session_id)
        if handle is None:
            return False
        trace = traceparent(msg.headers)
        try:
            command = _traced(
                decode_request(name, msg.data, principal, session_id), trace[1] if trace else None
            )
        except Exception:
            return False  # the task decodes it again, and answers what refuses it
        self.metrics.command(type(command).__name__)
        self._busy[session_id] = self._busy.get(session_id, 0) + 1
        self._direct += 1
        asked = _Asked(msg, endpoint, taken, principal, session_id, name, trace, handle, command)
        try:
            self._ask(asked)
        except Exception:  # not sent (nothing was decided): the task's way answers it
            log.warning("could not tell session %s a command", session_id, exc_info=True)
            self._direct -= 1
            self._unbusy(session_id)
            return False
        return True

    def _ask(self, asked: _Asked) -> None:
        outcome = asked.handle.submit_many((asked.command,))
        outcome.add_done_callback(functools.partial(self._decided, asked))

    def _decided(self, asked: _Asked, outcome: concurrent.futures.Future[Any]) -> None:
        """The actor's outcome of ``asked``: answer its request (on the loop's thread)."""
        loop = self.runtime.loop
        if not loop.in_loop_thread:
            with contextlib.suppress(RuntimeError):  # the loop closed: nobody to answer
                loop.call_soon(self._decided, asked, outcome)
            return
        try:
            (answer,) = outcome.result()
        except Exception as exc:  # the actor stopped before deciding it
            answer = exc
        if isinstance(answer, ConcurrencyError):
            self.metrics.conflicts.inc()
            if asked.attempt < self.conflict_retries:  # again, on the caught-up state
                asked.attempt += 1
                try:
                    self._ask(asked)
                    return
                except Exception as exc:
                    answer = exc
        try:
            self._answer_direct(asked, answer)
        finally:  # whatever happened answering it, its turn ends
            self._direct -= 1
            if self._dispatching:
                # Answered at once (a refusal, a duplicate): the turn ends on the loop's
                # next, as a task's would, so that the principal's next requests queue
                # (and overflow) behind this one instead of being decided one by one now.
                asyncio.get_running_loop().call_soon(self._request_ended, asked.principal)
            else:
                self._request_ended(asked.principal)

    def _answer_direct(self, asked: _Asked, answer: Any) -> None:
        """Answer ``asked``'s request with the actor's ``answer`` (a result or an error)."""
        failure: Exception | None = answer if isinstance(answer, Exception) else None
        if failure is None:
            try:
                reply = self._sized(asked.name, ok_reply(answer))
            except Exception as exc:
                failure = exc
        if failure is not None:
            reply = self._failure_reply(failure, asked.msg.subject)
        self._unbusy(asked.session_id)
        headers = self._count_answer(
            asked.endpoint, asked.principal, asked.name, failure, asked.trace
        )
        self._reply_now(asked.msg, reply, headers)
        asked.endpoint.processing_ns += time.perf_counter_ns() - asked.taken

    def _reply_now(self, msg: Msg, reply: bytes, headers: dict[str, str] | None) -> None:
        """:meth:`_reply` without waiting where the connection takes it at once (else as a
        task of its own, kept until it ends)."""
        nc = getattr(msg, "_client", None) or self._nc
        if not msg.reply or nc is None:
            return
        frame = publish_frame(msg.reply, headers, reply)
        try:
            if frame is not None and queue_frames(nc, frame, (reply,)):
                return
        except Exception:
            log.warning("could not reply on %s", msg.reply, exc_info=True)
            return
        task = asyncio.create_task(self._reply(msg, reply, headers, frame))
        self._tasks.add(task)  # stop() waits for it
        task.add_done_callback(self._tasks.discard)
