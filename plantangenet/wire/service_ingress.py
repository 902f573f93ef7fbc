"""The session service's front door: taking requests off the connections, telling who
sent them (the server's word, never the payload's), refusing reply subjects it must not
publish to, and serving each principal's requests in turn (see
:mod:`plantangenet.wire.service`)."""

from __future__ import annotations

import asyncio
import functools
import logging
import re
import time
from collections import deque
from typing import Any

from nats.aio.msg import Msg

from plantangenet.errors import (
    AccessRefused,
    CodecError,
    CommandRejected,
    InvalidCommand,
    TooManyRequests,
)
from plantangenet.events.envelope import OPERATOR
from plantangenet.wire.access import REQUEST_INFO_HEADER, principal_from_headers
from plantangenet.wire.metrics import REPLY_DROPPED
from plantangenet.wire.micro import EndpointCounts
from plantangenet.wire.protocol import (
    error_reply,
    parse_subject,
)
from plantangenet.wire.service_base import ServiceState, Waiting

log = logging.getLogger("plantangenet.wire.service")

_REQUEST_INFO = REQUEST_INFO_HEADER.casefold()
#: Messages taken off the connection between two yields to the event loop.
_YIELD_EVERY = 8

#: Principals whose windows are remembered, at most (past it, those at full width are
#: forgotten: they start at ``first_window`` again).
_WINDOWS_KEPT = 10_000

#: What a subject one may publish to never holds (wildcards, whitespace, an empty token).
_NOT_IN_A_SUBJECT = re.compile(r"[ \t\r\n*>]|\.\.|\.$")
_Waiting = Waiting


def yield_between_messages(nc: Any, every: int = _YIELD_EVERY * 2) -> None:
    """Make ``nc``'s reader let the loop run other work after every ``every`` messages.

    nats-py's reader parses a whole read (up to 32 KiB: dozens of requests) in one turn
    of the loop; on a lane that one bot floods, that turn is what every other bot's
    request, acknowledgement and reply waits behind. Yielding inside it (its
    ``_process_msg``, awaited per message since nats-py 2.0) bounds the wait by
    ``every`` messages instead. A connection without that method is left as it is.
    """
    original = getattr(nc, "_process_msg", None)
    if original is None:
        return
    taken = 0

    async def process(*args: Any) -> None:
        nonlocal taken
        await original(*args)
        taken += 1
        if taken % every == 0:
            await asyncio.sleep(0)

    nc._process_msg = process


class Ingress(ServiceState):
    """Methods of :class:`~plantangenet.wire.service.SessionService` (a mixin of it)."""

    async def _on_message(self, msg: Msg, endpoint: EndpointCounts) -> None:
        taken = time.perf_counter_ns()
        endpoint.requests += 1
        self._taken += 1
        if self._taken % _YIELD_EVERY == 0:
            # nats-py hands a backlog over without yielding: let the requests already
            # started (everyone's, in turn) run between messages of a burst.
            await asyncio.sleep(0)
        headers = msg.headers
        crossed = bool(headers) and any(
            isinstance(k, str) and k.casefold() == _REQUEST_INFO for k in headers or ()
        )
        refusal = self._reply_refusal(msg.reply, crossed)
        if refusal is not None:
            self.refused_replies += 1
            endpoint.failed(f"dropped: the reply subject is {refusal}")
            endpoint.processing_ns += time.perf_counter_ns() - taken
            self.metrics.refusal(REPLY_DROPPED)
            if self.refused_replies <= 10 or self.refused_replies % 1000 == 0:
                log.warning(
                    "dropped a request on %s: its reply subject %r is %s (%d dropped so far)",
                    msg.subject,
                    msg.reply[:200],
                    refusal,
                    self.refused_replies,
                )
            return
        principal = principal_from_headers(headers) if crossed else OPERATOR
        try:
            lane_account = parse_subject(msg.subject, self.command_prefix)[2]
        except InvalidCommand:
            lane_account = None  # answered as malformed when handled
        if lane_account is not None and (
            not crossed or principal is None or not principal.endswith("@" + lane_account)
        ):
            principal = None  # on a lane without the server's word, or not its account's
        if principal is None:
            self.unidentified += 1
            refused = AccessRefused(
                "the service cannot tell who sent this request: its Nats-Request-Info "
                "header is unreadable or repeated; nothing was done"
            )
            endpoint.failed(f"{refused.code}: {refused}")
            self.metrics.refusal(refused.code)
            await self._reply(msg, error_reply(refused))
            endpoint.processing_ns += time.perf_counter_ns() - taken
            return
        if self.ownership is not None and self._passed_on(msg, endpoint, taken, principal, 0):
            endpoint.processing_ns += time.perf_counter_ns() - taken
            return
        await self._enqueue(msg, endpoint, taken, principal)

    async def _enqueue(
        self, msg: Msg, endpoint: EndpointCounts, taken: int, principal: str
    ) -> None:
        """Queue a request behind its principal's others (see the module docs)."""
        waiting = self._waiting.get(principal)
        if waiting is None:
            waiting = self._waiting[principal] = deque()
        elif len(waiting) >= self.queued_per_principal and principal != OPERATOR:
            self.overflowed += 1  # the cheapest answer there is: a flood must cost little
            endpoint.failed(f"{TooManyRequests.code}: principal {principal} overflowed")
            self.metrics.refusal(TooManyRequests.code)
            await self._reply(msg, self._overflow_reply)
            endpoint.processing_ns += time.perf_counter_ns() - taken
            return
        waiting.append((msg, endpoint, taken))
        if len(waiting) == 1 and self._may_start(principal):
            self._turns.append(principal)
        self._dispatch()

    def window(self, principal: str) -> int:
        """How many requests of ``principal`` may be handled at once now: ``first_window``
        at first, wider by one per request served (up to ``per_principal``), halved by
        each refusal (see the module docs of :mod:`plantangenet.wire.service`)."""
        return self._window_of.get(principal, self.first_window)

    def _may_start(self, principal: str) -> bool:
        return principal == OPERATOR or self._running_of.get(principal, 0) < self.window(principal)

    def _answered(self, principal: str, failure: BaseException | None) -> None:
        """Narrow or widen ``principal``'s window after one of its requests was answered:
        halved by a refusal of what it sent or may do, one wider after a request served."""
        if principal == OPERATOR:
            return
        window = self._window_of.get(principal, self.first_window)
        if isinstance(failure, CommandRejected | CodecError):
            self._window_of[principal] = max(1, window // 2)
        elif failure is None and window < self.per_principal:
            self._window_of[principal] = window + 1
            if len(self._window_of) > _WINDOWS_KEPT:  # forget the widest: they start again
                for seen in [p for p, w in self._window_of.items() if w == self.per_principal]:
                    del self._window_of[seen]

    def _reply_refusal(self, reply: str, crossed: bool) -> str | None:
        """Why the service must not publish on ``reply`` (``None``: it may)."""
        if not reply:
            return None  # a command sent without waiting for its outcome
        if crossed and not reply.startswith("_R_."):
            return "not the reply subject the server issued for a request from another account"
        if reply.startswith("$"):
            return "a system subject"
        if reply.startswith(self._protected) or reply + "." in self._protected:
            return "a subject of the event stream, its live republish, or the commands"
        if _NOT_IN_A_SUBJECT.search(reply):
            return "not a subject one may publish to"
        return None

    def _dispatch(self) -> None:
        """Start waiting requests, one principal at a time, in turn."""
        if self._dispatching:
            return  # called back by a request answered at once: the loop below goes on
        self._dispatching = True
        try:
            self._start_turns()
        finally:
            self._dispatching = False

    def _start_turns(self) -> None:
        turns = self._turns
        while turns and len(self._tasks) + self._direct < self.max_in_flight:
            principal = turns.popleft()
            if not self._may_start(principal):
                continue  # its window narrowed meanwhile: its next turn comes when one ends
            waiting = self._waiting[principal]
            request = waiting.popleft()
            self._running_of[principal] = self._running_of.get(principal, 0) + 1
            if waiting and self._may_start(principal):
                turns.append(principal)  # its next request: after everyone else's
            elif not waiting:
                del self._waiting[principal]
            if self._start_direct(*request, principal):
                continue  # answered by its actor's callback (see service_direct)
            task = asyncio.create_task(self._handle(*request, principal=principal))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, principal=principal))

    def _done(self, task: asyncio.Task[None], principal: str) -> None:
        self._tasks.discard(task)
        self._request_ended(principal)

    def _request_ended(self, principal: str) -> None:
        """One of ``principal``'s requests was answered: start what may start now."""
        running = self._running_of[principal] - 1
        if running:
            self._running_of[principal] = running
        else:
            del self._running_of[principal]
        waiting = self._waiting.get(principal)
        if waiting and principal not in self._turns and self._may_start(principal):
            self._turns.append(principal)
        self._dispatch()
