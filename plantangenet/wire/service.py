"""The session service: session actors behind NATS request/reply.

``plantangenet serve`` runs one :class:`SessionService`. It subscribes to
``<prefix>.cmd.*.*`` in a queue group, so several processes can share the
load; each request is routed to its session's actor (rehydrated from the log
on first use, passivated again when idle), and answered with the stored sequence
or a typed error (see :mod:`plantangenet.wire.protocol`). If two processes write
the same session, the journal's optimistic concurrency makes the later one
fail cleanly; the service retries it on the caught-up state.

**Who sent it.** A request's principal comes from the NATS server, never from
its payload: bots live in accounts of their own that import the command
service with ``share: true`` (see :mod:`plantangenet.wire.access`), so every request
that crossed an import carries the server-set ``Nats-Request-Info`` header,
which a client cannot forge; its account and user are the principal
(``"<user>@<account>"``). A request with no such header comes from the
service's own account: the operator. A header the service cannot read (garbled,
or sent twice in different cases) is refused. The session then decides what
that principal may do (:mod:`plantangenet.domain.authorize`).

**Where replies go.** Only where the server said: a request that crossed an
import is answered only on the ``_R_.`` subject the server issued for it, and
no request is answered under ``$`` or on the subjects of the event stream, its
live republish, or the commands — such requests are dropped unanswered, logged
and counted (:attr:`SessionService.refused_replies`). Nothing a request says
can make the service publish into the log.

**Fairness.** Bots' requests arrive on *ingress lanes*: connections of the
service of their own, one per lane, each bot account on its lane (see
:mod:`plantangenet.wire.access`), so a bot that floods the service queues behind
itself on the socket, not in front of the others. Taking a message off a
connection costs little and never waits: each principal's requests queue on
their own, and the queues are served in turn, at most ``per_principal``
requests of one principal at a time. A principal that floods the service fills
its own queue (past ``queued_per_principal`` its requests are answered
``too_many_requests``) and delays the others only by the CPU its flood takes.
The operator (requests from the service's own account) is not limited: it
is trusted, and without accounts (an unauthenticated server) every client is
the operator.

**One writer per session.** With ``partitions`` set (``plantangenet serve``: 32 by
default), the processes that share a stream own its sessions by partition, under
leases in NATS KV (:mod:`plantangenet.wire.ownership`): a request for a session whose
partition another live process owns is passed on to that process on
``<prefix>.fwd.<member>.<session_id>.<command>`` with the principal this process read
from the server (only the service's own account can publish there, and a request
that crossed an import is never taken from it), and the owner answers the bot
directly. ``history`` pages are answered where they arrive (they read the log, not an
actor). A request for a partition with no live owner (a process just died and its
lease has not run out yet) is served where it arrives: the concurrency guard keeps
the log right, and the metrics count it (``plantangenet_unowned_total``).

Requests that cannot change a session whose log is empty (a ``state`` query,
any command but ``start``) are answered from the log without starting an
actor: clients name session ids at will, and must not start threads at will.
A ``state`` query reflects every command acknowledged before it was sent,
whichever process stored it (read-your-writes across ``serve`` processes): the
service asks the log for the session's last sequence (one round trip, to the
stream leader unless ``leader_reads`` is off: a replica may lag it) and the
session's actor answers once its state holds that sequence, catching up from the
log first if another process wrote meanwhile. It never answers an actor's state
from a failed rehydration (it reports the failure), and a reply larger than the
connection's ``max_payload`` becomes a ``reply_too_large`` error. A ``history`` request
answers a page of the session's stored events (no consumer is created).

**Operating it.** The service registers with the NATS services framework
(:mod:`plantangenet.wire.micro`): it answers ``$SRV.PING``, ``$SRV.INFO`` and
``$SRV.STATS`` in its own account, so ``nats micro ls`` lists it, with its
endpoints (the command subject and each lane) and their request, error and
latency counts. Its Prometheus metrics (:mod:`plantangenet.wire.metrics`) are in
:attr:`SessionService.metrics`; ``plantangenet serve --metrics-port`` serves them.

Nothing here blocks the event loop: requests become tasks, actors are reached
through futures.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import importlib.metadata
import logging
import time
from collections import deque
from collections.abc import Mapping, Sequence
from typing import Any

import nats.errors
from nats.aio.msg import Msg

from plantangenet.actors.handle import SessionHandle
from plantangenet.actors.session import CommandResult
from plantangenet.domain.commands import (
    Command,
    DiscloseChem,
    GrantDust,
    ProposeChem,
    QueryCursor,
    StartSession,
)
from plantangenet.domain.decide import check_id, decide_authorized
from plantangenet.errors import (
    AccessRefused,
    ConcurrencyError,
    InvalidCommand,
    PlantangenetError,
    ReplyTooLarge,
    StorageExhausted,
    TooManyRequests,
)
from plantangenet.events.chem import ChemQueried
from plantangenet.events.dust import TREASURY
from plantangenet.events.envelope import OPERATOR
from plantangenet.projections.session import SessionState
from plantangenet.projections.views import plain
from plantangenet.runtime import Plantangenet
from plantangenet.wire.access import REQUEST_INFO_HEADER, principal_from_headers
from plantangenet.wire.metrics import REPLY_DROPPED, ServiceMetrics
from plantangenet.wire.micro import EndpointCounts, Registration
from plantangenet.wire.ownership import DEFAULT_LEASE_TTL, Ownership
from plantangenet.wire.protocol import (
    BATCH,
    CHEM_STEPS,
    DEFAULT_COMMAND_PREFIX,
    DEFAULT_LANES,
    FORWARDED,
    HOPS_HEADER,
    PRINCIPAL_HEADER,
    QUERIES,
    TRACEPARENT_HEADER,
    QueryChemRequest,
    batch_reply,
    data_reply,
    decode_batch,
    decode_history,
    decode_request,
    error_reply,
    forward_subject,
    history_reply,
    lane_subjects,
    ok_reply,
    parse_subject,
    relay_id,
    traceparent,
)

log = logging.getLogger("plantangenet.wire.service")

#: Placeholder for a batch command not answered yet (every one is, before the reply).
_UNANSWERED = PlantangenetError("internal error: a command of the batch was not answered")
_REQUEST_INFO = REQUEST_INFO_HEADER.casefold()
#: Messages taken off the connection between two yields to the event loop.
_YIELD_EVERY = 64
#: Room a reply's own fields need beside the data it carries.
_REPLY_OVERHEAD = 4096
#: How often a request may be passed on before it is served where it is.
_MAX_HOPS = 2
#: Seconds a partition handed back waits for its sessions' requests in flight.
_DRAIN_TIMEOUT = 2.0


#: The queue group every ``serve`` process joins.
QUEUE_GROUP = "plantangenet-serve"
#: The name the service registers under with the NATS services framework.
SERVICE_NAME = "plantangenet"


def _traced(item: Any, trace: str | None) -> Any:
    """``item`` (a command, or the error refusing it) with ``trace`` as its correlation id
    when it names none (see ``protocol.traceparent``)."""
    if trace and isinstance(item, Command) and item.correlation_id is None:
        return dataclasses.replace(item, correlation_id=trace)
    return item


def _version() -> str:
    try:
        return importlib.metadata.version("plantangenet")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0.0.0"


#: A request waiting for its turn: the message, its endpoint, when it was taken (ns).
_Waiting = tuple[Msg, EndpointCounts, int]


class SessionService:
    """Serves commands for any session over NATS.

    :param runtime: a started :class:`~plantangenet.runtime.Plantangenet`.
    :param idle_timeout: seconds after which an unused session actor is passivated
        (:meth:`Plantangenet.passivate_session`: its agents are not torn down).
    :param max_in_flight: requests handled at once (more wait in their principals' queues).
    :param conflict_retries: how often a command that lost a race with
        another writer is retried on the caught-up state.
    :param per_principal: requests of one principal handled at once.
    :param queued_per_principal: requests of one principal waiting at most; more are
        answered ``too_many_requests`` at once.
    :param lanes: ingress lanes: connections bots' requests arrive on, one lane per
        bot account as far as there are lanes (``plantangenet nats-config --lanes`` must
        say the same; see the module docs).
    :param metrics: where the Prometheus metrics go (default: a registry of its own).
    :param service_name: the name registered with the NATS services framework.
    :param partitions: partitions the sessions hash into, owned one process each across
        the ``serve`` processes of the stream (see the module docs); 0: any process
        serves any session (one process alone, or tests).
    :param lease_ttl: seconds a process's ownership outlives its last renewal (an
        owner that died is replaced that long after).
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
        per_principal: int = 16,
        queued_per_principal: int = 256,
        lanes: int = DEFAULT_LANES,
        metrics: ServiceMetrics | None = None,
        service_name: str = SERVICE_NAME,
        partitions: int = 0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        self.runtime = runtime
        self.command_prefix = command_prefix
        self.queue = queue
        self.idle_timeout = idle_timeout
        self.conflict_retries = conflict_retries
        self.max_in_flight = max_in_flight
        self.per_principal = per_principal
        self.queued_per_principal = queued_per_principal
        self.lanes = lanes
        #: Who owns which sessions across processes (``None``: ``partitions=0``).
        self.ownership: Ownership | None = None
        if partitions:
            self.ownership = Ownership(
                runtime.journal.js,
                runtime.journal_config.stream,
                partitions=partitions,
                lease_ttl=lease_ttl,
                replicas=runtime.journal_config.replicas,
                on_release=self._drain_partition,
            )
        self._forward_sub: Any = None
        self._relays: set[asyncio.Task[None]] = set()
        #: Seconds a request passed on to its owner waits for the owner's answer.
        self.relay_timeout = 60.0
        #: Requests passed on to their session's owner, and requests served here while
        #: their session had no live owner.
        self.forwarded = 0
        self.unowned = 0
        #: The lanes' connections (see ``start``).
        self._lane_connections: list[Any] = []
        self._lane_subs: list[Any] = []
        self._tasks: set[asyncio.Task[None]] = set()
        #: Requests waiting, per principal, and the principals with some waiting that
        #: may start one now, in the order they are served (round robin).
        self._waiting: dict[str, deque[_Waiting]] = {}
        self._turns: deque[str] = deque()
        self._running_of: dict[str, int] = {}
        self._last_used: dict[str, float] = {}
        self._busy: dict[str, int] = {}
        #: The connection requests arrive and replies leave on: not the runtime's, whose
        #: socket carries the journal's appends and acknowledgements, so that a burst of
        #: requests waiting to be read never delays a command's append.
        self._nc: Any = None
        self._sub: Any = None
        self._reaper: asyncio.Task[None] | None = None
        self._stopping = False
        self._taken = 0
        config = runtime.journal_config
        #: Reply subjects no request may point the service at.
        self._protected = tuple(
            f"{prefix}." for prefix in (config.subject_prefix, config.live_prefix, command_prefix)
        )
        #: Requests answered, and how many of them were errors.
        self.handled = 0
        self.failed = 0
        #: Commands refused because the log has no room (the first one is logged).
        self.storage_refusals = 0
        #: Requests dropped unanswered for their reply subject (see the module docs).
        self.refused_replies = 0
        #: Requests refused because the service could not tell who sent them.
        self.unidentified = 0
        #: Requests answered ``too_many_requests``.
        self.overflowed = 0
        #: Prometheus metrics (see :mod:`plantangenet.wire.metrics`).
        self.metrics = metrics if metrics is not None else ServiceMetrics()
        self.metrics.gauges(
            sessions_owned=lambda: len(self._last_used),
            sessions_open=lambda: runtime.open_sessions,
            consumers_in_use=lambda: runtime.journal.consumers_in_use,
            requests_waiting=self._waiting_now,
            requests_in_flight=lambda: len(self._tasks),
            partitions_owned=lambda: len(self.ownership.owned) if self.ownership else 0,
        )
        #: The endpoints reported to ``$SRV.INFO``/``$SRV.STATS``: the command subject,
        #: then each lane.
        self.endpoints = [EndpointCounts("commands", f"{command_prefix}.*.*", queue)] + [
            EndpointCounts(f"lane-{lane}", lane_subjects(lane, command_prefix), queue)
            for lane in range(lanes)
        ]
        #: The service's registration with the NATS services framework.
        self.registration = Registration(
            service_name,
            _version(),
            description="plantangenet sessions: commands and queries over request/reply",
            metadata={
                "command_prefix": command_prefix,
                "stream": config.stream,
                "lanes": str(lanes),
            },
            endpoints=self.endpoints,
        )
        #: Requests other processes passed on to this one (counted, not registered).
        self._forward_endpoint = EndpointCounts("forwarded", f"{command_prefix}.{FORWARDED}", "")
        self._overflow_reply = error_reply(
            TooManyRequests(
                f"{queued_per_principal} requests of yours are waiting already; nothing was "
                "done: retry once replies come back"
            )
        )

    # -- lifecycle (coroutines: run them on the runtime's loop) ------------------

    async def start(self) -> None:
        """Connect (connections of its own: see the module docs), subscribe, begin serving."""
        nc = self._nc = await self.runtime.open_connection("plantangenet-serve")
        self.runtime.journal.append_observer = self.metrics.append_seconds.observe
        if self.ownership is not None:
            # Passed-on requests first, then ownership: once others see this process own a
            # partition, what they pass on arrives.
            self._forward_sub = await nc.subscribe(
                forward_subject(self.ownership.member_id, "*", "*", self.command_prefix),
                cb=self._on_forwarded,
                pending_msgs_limit=1_000_000,
                pending_bytes_limit=1024 * 1024 * 1024,
            )
            await nc.flush()
            await self.ownership.start()
        self._sub = await self._subscribe(nc, self.endpoints[0])
        for lane in range(self.lanes):
            lane_nc = await self.runtime.open_connection(f"plantangenet-serve-lane-{lane}")
            self._lane_connections.append(lane_nc)
            self._lane_subs.append(await self._subscribe(lane_nc, self.endpoints[lane + 1]))
        await self.registration.start(nc)
        self._reaper = asyncio.create_task(self._reap_idle())
        log.info(
            "serving %s.*.* and %d lanes in queue group %s",
            self.command_prefix,
            self.lanes,
            self.queue,
        )

    async def _subscribe(self, nc: Any, endpoint: EndpointCounts) -> Any:
        sub = await nc.subscribe(
            endpoint.subject,
            queue=self.queue,
            cb=functools.partial(self._on_message, endpoint=endpoint),
            # The service queues by principal itself; let NATS hand it a burst whole.
            pending_msgs_limit=1_000_000,
            pending_bytes_limit=1024 * 1024 * 1024,
        )
        await nc.flush()
        return sub

    async def stop(self, timeout: float = 30.0) -> None:
        """Stop taking requests, finish the ones taken (in flight and queued), then return."""
        self._stopping = True
        await self.registration.stop()
        for sub in [self._sub, *self._lane_subs]:
            if sub is not None:
                with contextlib.suppress(Exception):
                    await sub.drain()
        self._sub, self._lane_subs = None, []
        if self.ownership is not None:
            # Hand the partitions back (each drained first); what was passed on meanwhile
            # is still taken until the others see it, then the subscription goes.
            with contextlib.suppress(Exception):
                await self.ownership.stop()
            if self._forward_sub is not None:
                with contextlib.suppress(Exception):
                    await self._forward_sub.drain()
            self._forward_sub = None
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (self._tasks or self._turns or self._relays) and loop.time() < deadline:
            if self._tasks or self._relays:
                await asyncio.wait([*self._tasks, *self._relays], timeout=deadline - loop.time())
            else:
                await asyncio.sleep(0.01)
        if self._reaper is not None:
            self._reaper.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reaper
        for nc in [self._nc, *self._lane_connections]:
            if nc is not None:
                with contextlib.suppress(Exception):
                    await nc.drain()
        self._nc, self._lane_connections = None, []
        if self.runtime.journal.append_observer == self.metrics.append_seconds.observe:
            self.runtime.journal.append_observer = None

    # -- taking requests off the connection --------------------------------------

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
        self, msg: Msg, endpoint: EndpointCounts, taken: int, principal: str, hops: int
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
        subject = forward_subject(owner, session_id, name, self.command_prefix)
        relay = asyncio.create_task(
            self._relay(msg, endpoint, taken, principal, hops, subject, owner)
        )
        self._relays.add(relay)
        relay.add_done_callback(self._relays.discard)
        self.forwarded += 1
        self.metrics.forwarded.inc()
        return True

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
        if len(waiting) == 1 and (
            self._running_of.get(principal, 0) < self.per_principal or principal == OPERATOR
        ):
            self._turns.append(principal)
        self._dispatch()

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
        if any(c in reply for c in " \t\r\n*>") or ".." in reply or reply.endswith("."):
            return "not a subject one may publish to"
        return None

    def _dispatch(self) -> None:
        """Start waiting requests, one principal at a time, in turn."""
        turns = self._turns
        while turns and len(self._tasks) < self.max_in_flight:
            principal = turns.popleft()
            waiting = self._waiting[principal]
            request = waiting.popleft()
            running = self._running_of.get(principal, 0) + 1
            self._running_of[principal] = running
            if waiting and (running < self.per_principal or principal == OPERATOR):
                turns.append(principal)  # its next request: after everyone else's
            elif not waiting:
                del self._waiting[principal]
            task = asyncio.create_task(self._handle(*request, principal=principal))
            self._tasks.add(task)
            task.add_done_callback(functools.partial(self._done, principal=principal))

    def _done(self, task: asyncio.Task[None], principal: str) -> None:
        self._tasks.discard(task)
        running = self._running_of[principal] - 1
        if running:
            self._running_of[principal] = running
        else:
            del self._running_of[principal]
        waiting = self._waiting.get(principal)
        if waiting and principal not in self._turns:
            self._turns.append(principal)
        self._dispatch()

    # -- requests --------------------------------------------------------------------

    async def _handle(
        self, msg: Msg, endpoint: EndpointCounts, taken: int, *, principal: str
    ) -> None:
        session_id = name = ""
        failure: BaseException | None = None
        trace = traceparent(msg.headers)
        try:
            session_id, name, _ = parse_subject(msg.subject, self.command_prefix)
            check_id(session_id, "session_id")
            self._busy[session_id] = self._busy.get(session_id, 0) + 1
            reply = await self._answer(
                session_id, name, msg.data, principal, trace[1] if trace else None
            )
            limit = self._max_payload()
            if len(reply) > limit:
                raise ReplyTooLarge(
                    f"the reply to {name} is {len(reply)} bytes; this connection carries at "
                    f"most {limit}"
                )
        except PlantangenetError as exc:
            self.failed += 1
            failure = exc
            reply = error_reply(exc)
            self._storage_refused(exc)
        except Exception as exc:  # a bug: answer, log, keep serving
            log.exception("request on %s failed", msg.subject)
            self.failed += 1
            failure = exc
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
        self.metrics.request(name)
        if failure is not None:
            code = failure.code if isinstance(failure, PlantangenetError) else "error"
            endpoint.failed(f"{code}: {failure}"[:500])
            self.metrics.refusal(code)
        await self._reply(msg, reply, {TRACEPARENT_HEADER: trace[0]} if trace else None)
        endpoint.processing_ns += time.perf_counter_ns() - taken

    def _storage_refused(self, error: BaseException) -> None:
        """Count a command the log had no room for; log the first one, clearly, once."""
        if not isinstance(error, StorageExhausted):
            return
        self.storage_refusals += 1
        if self.storage_refusals == 1:
            log.error(
                "the log has no room: commands are refused with storage_exhausted until an "
                "operator makes room (reads are still answered; further refusals are "
                "counted, not logged): %s",
                error,
            )

    async def _reply(self, msg: Msg, reply: bytes, headers: dict[str, str] | None = None) -> None:
        """Answer on the connection the request came on (a flood's replies stay in its lane)."""
        nc = getattr(msg, "_client", None) or self._nc
        if msg.reply and nc is not None:
            try:
                await nc.publish(msg.reply, reply, headers=headers)
            except Exception:
                log.warning("could not reply on %s", msg.reply, exc_info=True)

    def _max_payload(self) -> int:
        """The largest message the connection may publish (the server's ``max_payload``)."""
        limit = getattr(self._nc or self.runtime.connection, "max_payload", 0)
        return limit if isinstance(limit, int) and limit > 0 else 1024 * 1024

    def _running(self, session_id: str) -> SessionHandle | None:
        """The session's actor if one is running in this process (none is started)."""
        return self.runtime.running_session(session_id)

    async def _log_is_empty(self, session_id: str) -> bool:
        return await self.runtime.journal.last_sequence(session_id) == 0

    async def _answer(
        self, session_id: str, name: str, payload: bytes, principal: str, trace: str | None
    ) -> bytes:
        if name == "history":
            return await self._history(session_id, payload)
        if name in QUERIES:
            return await self._query(session_id, name)
        if name == BATCH:
            commands = [_traced(c, trace) for c in decode_batch(payload, principal)]
            outcomes = await self._execute(session_id, commands)
            for outcome in outcomes:
                if isinstance(outcome, PlantangenetError):
                    self.metrics.refusal(outcome.code)
                    self._storage_refused(outcome)
            return batch_reply(outcomes)
        command = _traced(decode_request(name, payload, principal, session_id), trace)
        if name in CHEM_STEPS:
            return await self._chem_step(session_id, command)
        if isinstance(command, QueryCursor | DiscloseChem):
            # The answer must fit in a reply: a larger one is refused before it is
            # recorded or charged (the reply's own fields need a little room).
            room = self._max_payload() - _REPLY_OVERHEAD
            if command.max_bytes is None or command.max_bytes > room:
                command = dataclasses.replace(command, max_bytes=room)
        (outcome,) = await self._execute(session_id, [command])
        if isinstance(outcome, PlantangenetError):
            raise outcome
        return ok_reply(outcome)

    async def _one(self, session_id: str, command: Command) -> CommandResult:
        """``command`` decided and stored in ``session_id`` (its refusal raised)."""
        (outcome,) = await self._execute(session_id, [command])
        if isinstance(outcome, PlantangenetError):
            raise outcome
        return outcome

    async def _chem_step(self, session_id: str, command: Command) -> bytes:
        """A chem step: recorded in ``session_id`` as the request's sender sent it (the
        same standing and policy checks as any command), then in the chem's peer session.

        The peer records the step as the operator: the acting session's log decided it.
        Its command id there is derived from the sender, the session and the request's id
        (:func:`relay_id`), so a retry of a request that failed half-way (the peer's
        write) completes it, and nobody can take the id beforehand.
        """
        relayed = relay_id(command.principal, session_id, command.command_id)
        correlation = command.correlation_id or command.command_id
        if isinstance(command, QueryChemRequest):
            return await self._query_chem(session_id, command, relayed, correlation)
        result = await self._one(session_id, command)
        if isinstance(command, ProposeChem):
            peer = command.peer
            relay: Command = dataclasses.replace(command, peer=session_id)
        else:
            handle = self.runtime.session(session_id)
            state = await asyncio.wrap_future(handle.state_at_least(result.sequence))
            chem = state.chems.get(getattr(command, "chem_id", ""))
            if chem is None:  # pragma: no cover - it was just stored
                raise InvalidCommand(f"session {session_id} holds no such chem")
            peer, relay = chem.peer, command
        relay = dataclasses.replace(
            relay,
            command_id=relayed,
            correlation_id=correlation,
            issued_by=None,
            context={},
            principal=OPERATOR,
        )
        await self._one(peer, relay)
        return ok_reply(result)

    async def _query_chem(
        self, session_id: str, command: QueryChemRequest, relayed: str, correlation: str
    ) -> bytes:
        """``QueryChem`` here, then ``DiscloseChem`` in the peer (see ``QueryChemRequest``)."""
        asked = await self._one(session_id, command.asked())
        price = next((e.event.price for e in asked.events if isinstance(e.event, ChemQueried)), 0)
        handle = self.runtime.session(session_id)
        state = await asyncio.wrap_future(handle.state_at_least(asked.sequence))
        chem = state.chems.get(command.chem_id)
        if chem is None:  # pragma: no cover - it was just stored
            raise InvalidCommand(f"session {session_id} holds no chem {command.chem_id}")
        disclose = DiscloseChem(
            command_id=relayed,
            correlation_id=correlation,
            chem_id=command.chem_id,
            peer=session_id,
            agent_id=command.agent_id,
            axes=tuple(command.axes),
            start=command.start,
            end=command.end,
            compositor=command.compositor,
            resolution=command.resolution,
            max_bytes=self._max_payload() - _REPLY_OVERHEAD,
        )
        try:
            disclosed = await self._one(chem.peer, disclose)
        except PlantangenetError as refused:
            if price > 0:
                await self._one(
                    session_id,
                    GrantDust(
                        command_id=f"{relayed}-refund",
                        correlation_id=correlation,
                        source=TREASURY,
                        target=command.agent_id,
                        amount=price,
                        memo=f"refund: {command.chem_id} refused by {chem.peer} ({refused.code})",
                    ),
                )
            raise
        return ok_reply(dataclasses.replace(asked, samples=disclosed.samples))

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
        for command in commands.values():
            self.metrics.command(type(command).__name__)
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
                if isinstance(answer, ConcurrencyError):
                    self.metrics.conflicts.inc()
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
        # Read-your-writes across processes: the session's last sequence, asked now (after
        # the request arrived), covers every command acknowledged before it was sent,
        # whichever process stored it; the actor answers only once its state holds it.
        last = await self.runtime.journal.last_sequence(session_id)
        handle = self._running(session_id)
        if handle is None and last == 0:
            # A read starts no actor for a session that does not exist: its state is new.
            state = SessionState(session_id)
        else:
            handle = handle or self.runtime.session(session_id)
            state = await asyncio.wrap_future(handle.state_at_least(last))
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

    async def _history(self, session_id: str, payload: bytes) -> bytes:
        """A page of the session's stored events, as stored (see ``protocol.history_reply``)."""
        start, most = decode_history(payload)
        room = self._max_payload() - _REPLY_OVERHEAD
        page = await self.runtime.journal.page(
            session_id, start, max_events=most, max_bytes=max(room // 2, 1)
        )
        return history_reply(page.messages, page.last_sequence, page.more)

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
                await loop.run_in_executor(None, self.runtime.passivate_session, session_id)
                log.info("passivated idle session %s", session_id)

    def _waiting_now(self) -> int:
        """Requests waiting now; safe to call from another thread (a metrics scrape)."""
        for _ in range(10):
            try:
                return sum(len(w) for w in list(self._waiting.values()))
            except RuntimeError:  # the loop changed the dict meanwhile: look again
                continue
        return 0

    @property
    def active_sessions(self) -> list[str]:
        """Sessions whose actors this service has used and not yet stopped."""
        return sorted(self._last_used)

    @property
    def stats(self) -> Mapping[str, int]:
        """Counters: requests handled, failed, dropped for their reply subject, refused as
        unidentified, answered ``too_many_requests``, and waiting now."""
        return {
            "handled": self.handled,
            "failed": self.failed,
            "refused_replies": self.refused_replies,
            "unidentified": self.unidentified,
            "overflowed": self.overflowed,
            "waiting": sum(len(w) for w in self._waiting.values()),
        }
