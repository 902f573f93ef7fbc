"""One writer per session across ``serve`` processes: passing a request on to the process
that owns its session, relaying the owner's answer, serving a dead owner's sessions at
their successor, draining a partition handed back (see :mod:`plantangenet.wire.service`
and :mod:`plantangenet.wire.ownership`)."""

from __future__ import annotations

import asyncio
import logging
import time

import nats.errors
from nats.aio.msg import Msg

from plantangenet.errors import (
    InvalidCommand,
    TooManyRequests,
)
from plantangenet.events.envelope import OPERATOR
from plantangenet.wire.micro import EndpointCounts
from plantangenet.wire.protocol import (
    HOPS_HEADER,
    PRINCIPAL_HEADER,
    TRACEPARENT_HEADER,
    forward_subject,
    parse_subject,
    traceparent,
)
from plantangenet.wire.service_base import ServiceState
from plantangenet.wire.service_ingress import _REQUEST_INFO

log = logging.getLogger("plantangenet.wire.service")

#: How often a request may be passed on before it is served where it is.
_MAX_HOPS = 2
#: Seconds a partition handed back waits for its sessions' requests in flight.
_DRAIN_TIMEOUT = 2.0


class PassingOn(ServiceState):
    """Methods of :class:`~plantangenet.wire.service.SessionService` (a mixin of it)."""

    async def _on_forwarded(self, msg: Msg) -> None:
        """A request another ``serve`` process passed on: its principal is the header
        that process set; only the service's own account can publish here."""
        taken = time.perf_counter_ns()
        endpoint = self._forward_endpoint
        endpoint.requests += 1
        headers = msg.headers or {}
        crossed = any(isinstance(k, str) and k.casefold() == _REQUEST_INFO for k in headers)
        principal = headers.get(PRINCIPAL_HEADER)
        if crossed or not principal or self._reply_refusal(msg.reply, False) is not None:
            # Not from a process of ours: nothing crosses an import onto this subject.
            self.unidentified += 1
            endpoint.failed("dropped: a passed-on request not from the service's account")
            log.warning("dropped a passed-on request on %s: not from a service", msg.subject)
            return
        try:
            hops = int(headers.get(HOPS_HEADER, "1"))
        except ValueError:
            hops = _MAX_HOPS
        if self._passed_on(msg, endpoint, taken, principal, hops):
            return
        await self._enqueue(msg, endpoint, taken, principal)

    def _passed_on(
        self,
        msg: Msg,
        endpoint: EndpointCounts,
        taken: int,
        principal: str,
        hops: int,
    ) -> bool:
        """Pass ``msg`` on to its session's owner if that is another live process; whether
        it was (then its answer is relayed back). Requests for partitions nobody owns now
        are counted and served here."""
        assert self.ownership is not None
        try:
            session_id, name, _ = parse_subject(msg.subject, self.command_prefix)
        except InvalidCommand:
            return False  # answered as malformed here
        if name == "history":
            return False  # a page of the log: any process reads it as well
        owner = self.ownership.owner_of(session_id)
        if owner is None:
            # Nobody owns it now: the process that will take it first serves it meanwhile.
            self.unowned += 1
            self.metrics.unowned.inc()
            owner = self.ownership.successor(session_id)
        return self._pass_to(owner, msg, endpoint, taken, principal, hops, session_id, name)

    def _pass_to(
        self,
        owner: str | None,
        msg: Msg,
        endpoint: EndpointCounts,
        taken: int,
        principal: str,
        hops: int,
        session_id: str,
        name: str,
    ) -> bool:
        """Pass ``msg`` on to ``owner`` unless that is this process (or nobody, or the
        request was passed on too often already); whether it was."""
        assert self.ownership is not None
        if owner is None or owner == self.ownership.member_id or hops >= _MAX_HOPS:
            return False
        relaying = self._relaying_of.get(principal, 0)
        if relaying >= self.per_principal + self.queued_per_principal and principal != OPERATOR:
            # As many as the owner would hold for this principal are on their way already:
            # a flood through this process is answered here, as the owner would answer it.
            self.overflowed += 1
            endpoint.failed(f"{TooManyRequests.code}: principal {principal} overflowed")
            self.metrics.refusal(TooManyRequests.code)
            relay = asyncio.create_task(self._reply(msg, self._overflow_reply))
        else:
            self._relaying_of[principal] = relaying + 1
            self.relays_peak = max(self.relays_peak, relaying + 1)
            subject = forward_subject(owner, session_id, name, self.command_prefix)
            relay = asyncio.create_task(
                self._relay(msg, endpoint, taken, principal, hops, subject, owner)
            )
            relay.add_done_callback(lambda _: self._relayed(principal))
            self.forwarded += 1
            self.metrics.forwarded.inc()
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        return True

    def _relayed(self, principal: str) -> None:
        """A relay of ``principal``'s ended (answered, timed out or served here)."""
        left = self._relaying_of[principal] - 1
        if left:
            self._relaying_of[principal] = left
        else:
            del self._relaying_of[principal]

    async def _relay(
        self,
        msg: Msg,
        endpoint: EndpointCounts,
        taken: int,
        principal: str,
        hops: int,
        subject: str,
        owner: str,
    ) -> None:
        """Ask the owner (a request of this process: the server lets no client publish with
        a bot's ``_R_.`` reply subject), then answer the bot with its reply. An owner that
        is gone (no responders: it died, its lease has not run out) is replaced here."""
        headers = {PRINCIPAL_HEADER: principal, HOPS_HEADER: str(hops + 1)}
        trace = traceparent(msg.headers)
        if trace:
            headers[TRACEPARENT_HEADER] = trace[0]
        try:
            answer = await self._nc.request(
                subject, msg.data, timeout=self.relay_timeout, headers=headers
            )
        except nats.errors.NoRespondersError:
            # The owner is gone (its lease has not run out yet): its successor serves it.
            assert self.ownership is not None
            self.unowned += 1
            self.metrics.unowned.inc()
            session_id, name, _ = parse_subject(msg.subject, self.command_prefix)
            successor = self.ownership.successor(session_id, gone=owner)
            if not self._pass_to(
                successor, msg, endpoint, taken, principal, hops + 1, session_id, name
            ):
                await self._enqueue(msg, endpoint, taken, principal)
            return
        except Exception as exc:  # timed out, or the connection went: the bot retries
            log.warning("no answer from the owner on %s: %s", subject, exc or type(exc).__name__)
            return
        if msg.reply:
            await self._reply(msg, answer.data, {TRACEPARENT_HEADER: trace[0]} if trace else None)

    async def _drain_partition(self, partition: int) -> None:
        """Before a partition is handed back: let its sessions' requests in flight finish
        (at most ``_DRAIN_TIMEOUT``), then passivate their actors, so that this process
        never answers from a state folded while another process wrote."""
        assert self.ownership is not None
        mine = self.ownership.partition

        def in_partition() -> list[str]:
            return [sid for sid in self._last_used if mine(sid) == partition]

        loop = asyncio.get_running_loop()
        deadline = loop.time() + _DRAIN_TIMEOUT
        while any(self._busy.get(sid) for sid in in_partition()) and loop.time() < deadline:
            await asyncio.sleep(0.01)
        for session_id in in_partition():
            self._last_used.pop(session_id, None)
            self._busy.pop(session_id, None)
            await loop.run_in_executor(None, self.runtime.passivate_session, session_id)
