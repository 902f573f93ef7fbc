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
itself on the socket, not in front of the others, and a lane's reader gives the
loop back every 16 messages of a read (``yield_between_messages``), so a flooded
lane's 32 KiB reads do not hold the others' turns. Taking a message off a
connection costs little and never waits: each principal's requests queue on
their own, and the queues are served in turn, at most ``per_principal``
requests of one principal at a time. A principal that floods the service fills
its own queue (past ``queued_per_principal`` its requests are answered
``too_many_requests``) and delays the others only by the CPU its flood takes.
A principal's window of requests handled at once starts at ``first_window`` (2)
and each request served without a refusal widens it by one, up to
``per_principal``; each refusal halves it (:meth:`SessionService.window`). A
flood of refused commands on a shared session thus has one or two of them at a
time in the session's actor, from its first moment, not ``per_principal``, ahead
of the other bots' commands.
The operator (requests from the service's own account) is not limited: it
is trusted, and without accounts (an unauthenticated server) every client is
the operator.

**One writer per session.** With ``partitions`` set (``plantangenet serve``: 32 by
default), the processes that share a stream own its sessions by partition, under
leases in NATS KV (:mod:`plantangenet.wire.ownership`): a request for a session whose
partition another live process owns is passed on to that process on
``<prefix>.fwd.<member>.<session_id>.<command>`` with the principal this process read
from the server (only the service's own account can publish there, and a request
that crossed an import is never taken from it); the owner's answer is relayed to the
bot. A process passes on at most ``per_principal + queued_per_principal`` requests
of one principal at a time (what the owner would hold for it): a flood through the
process that does not own the session is answered ``too_many_requests`` there.
``history`` pages are answered where they arrive (they read the log, not an actor).
A request for a partition with no live owner (a process just died and its lease has
not run out yet) is served where it arrives: the concurrency guard keeps the log
right, and the metrics count it (``plantangenet_unowned_total``).

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
through futures. A single command to a session whose actor runs here needs no task:
it goes to the actor at once and is answered from the callback that receives the
actor's outcome (:mod:`plantangenet.wire.service_direct`).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import importlib.metadata
import logging
import time
from collections import deque
from collections.abc import Awaitable, Mapping
from typing import Any

from nats.aio.msg import Msg

from plantangenet.actors.handle import SessionHandle
from plantangenet.domain.decide import check_id
from plantangenet.errors import (
    PlantangenetError,
    ReplyTooLarge,
    StorageExhausted,
    TooManyRequests,
)
from plantangenet.log.frames import publish_frame, send_frames
from plantangenet.runtime import Plantangenet
from plantangenet.wire.metrics import ServiceMetrics
from plantangenet.wire.micro import EndpointCounts, Registration
from plantangenet.wire.ownership import DEFAULT_LEASE_TTL, Ownership
from plantangenet.wire.protocol import (
    DEFAULT_COMMAND_PREFIX,
    DEFAULT_LANES,
    FORWARDED,
    TRACEPARENT_HEADER,
    error_reply,
    forward_subject,
    lane_subjects,
    parse_subject,
    traceparent,
)
from plantangenet.wire.service_answers import Answering
from plantangenet.wire.service_direct import Direct
from plantangenet.wire.service_ingress import Ingress, _Waiting, yield_between_messages
from plantangenet.wire.service_routing import PassingOn

log = logging.getLogger("plantangenet.wire.service")


#: The queue group every ``serve`` process joins.
QUEUE_GROUP = "plantangenet-serve"
#: The name the service registers under with the NATS services framework.
SERVICE_NAME = "plantangenet"


def _version() -> str:
    try:
        return importlib.metadata.version("plantangenet")
    except importlib.metadata.PackageNotFoundError:  # run from a source tree
        return "0.0.0"


class SessionService(Ingress, PassingOn, Answering, Direct):
    """Serves commands for any session over NATS.

    :param runtime: a started :class:`~plantangenet.runtime.Plantangenet`.
    :param idle_timeout: seconds after which an unused session actor is passivated
        (:meth:`Plantangenet.passivate_session`: its agents are not torn down).
    :param max_in_flight: requests handled at once (more wait in their principals' queues).
    :param conflict_retries: how often a command that lost a race with
        another writer is retried on the caught-up state.
    :param per_principal: requests of one principal handled at once, at most.
    :param first_window: requests of a principal handled at once until some of its
        requests were served (one more per request served, up to ``per_principal``).
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
        first_window: int = 2,
        queued_per_principal: int = 256,
        lanes: int = DEFAULT_LANES,
        metrics: ServiceMetrics | None = None,
        service_name: str = SERVICE_NAME,
        partitions: int = 0,
        lease_ttl: float = DEFAULT_LEASE_TTL,
    ) -> None:
        for name, value, least in (
            ("max_in_flight", max_in_flight, 1),
            ("per_principal", per_principal, 1),
            ("first_window", first_window, 1),
            ("queued_per_principal", queued_per_principal, 0),
            ("conflict_retries", conflict_retries, 0),
        ):
            if type(value) is not int or value < least:
                raise ValueError(f"{name}: an integer of at least {least}, got {value!r}")
        self.runtime = runtime
        self.command_prefix = command_prefix
        self.queue = queue
        self.idle_timeout = idle_timeout
        self.conflict_retries = conflict_retries
        self.max_in_flight = max_in_flight
        self.per_principal = per_principal
        self.first_window = min(first_window, per_principal)
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
        #: Relays in flight per principal (at most ``per_principal + queued_per_principal``
        #: each: more are answered ``too_many_requests`` here), and the most there were.
        self._relaying_of: dict[str, int] = {}
        self.relays_peak = 0
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
        #: Requests answered by their actor's callback, not a task (see service_direct).
        self._direct = 0
        self._dispatching = False
        #: Requests waiting, per principal, and the principals with some waiting that
        #: may start one now, in the order they are served (round robin).
        self._waiting: dict[str, deque[_Waiting]] = {}
        self._turns: deque[str] = deque()
        self._running_of: dict[str, int] = {}
        #: Principals seen, and how many of theirs may run at once now (see
        #: ``Ingress._answered``; one not in it: ``first_window``).
        self._window_of: dict[str, int] = {}
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
            requests_in_flight=lambda: len(self._tasks) + self._direct,
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
            yield_between_messages(lane_nc)  # a flooded lane's reader takes short turns
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
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout

        async def bounded(step: Awaitable[object], what: str) -> None:
            # Each step of the stop waits at most until the deadline: a subscription whose
            # drain never ends (nats-py waits for its queue without a limit) stops nothing.
            try:
                await asyncio.wait_for(step, max(deadline - loop.time(), 0.1))
            except TimeoutError:
                log.warning(
                    "stopping: %s did not finish by the stop's deadline (%.1f s); going on",
                    what,
                    timeout,
                )
            except Exception:
                log.debug("stopping: %s failed", what, exc_info=True)

        await bounded(self.registration.stop(), "the services-framework registration")
        for sub in [self._sub, *self._lane_subs]:
            if sub is not None:
                await bounded(sub.drain(), f"draining {sub.subject}")
        self._sub, self._lane_subs = None, []
        if self.ownership is not None:
            # Hand the partitions back (each drained first); what was passed on meanwhile
            # is still taken until the others see it, then the subscription goes.
            await bounded(self.ownership.stop(), "handing the partitions back")
            if self._forward_sub is not None:
                await bounded(self._forward_sub.drain(), "draining the passed-on requests")
            self._forward_sub = None
        while (self._tasks or self._direct or self._turns or self._relays) and (
            loop.time() < deadline
        ):
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
                await bounded(nc.drain(), "draining a connection")
                if not nc.is_closed:
                    with contextlib.suppress(Exception):
                        await nc.close()
        self._nc, self._lane_connections = None, []
        if self.runtime.journal.append_observer == self.metrics.append_seconds.observe:
            self.runtime.journal.append_observer = None

    # -- taking requests off the connection --------------------------------------

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
            reply = self._sized(
                name,
                await self._answer(
                    session_id, name, msg.data, principal, trace[1] if trace else None
                ),
            )
        except Exception as exc:
            failure = exc
            reply = self._failure_reply(exc, msg.subject)
        finally:
            self._unbusy(session_id)
        headers = self._count_answer(endpoint, principal, name, failure, trace)
        await self._reply(msg, reply, headers)
        endpoint.processing_ns += time.perf_counter_ns() - taken

    def _sized(self, name: str, reply: bytes) -> bytes:
        """``reply``, if the connection carries it (else ``ReplyTooLarge``)."""
        limit = self._max_payload()
        if len(reply) > limit:
            raise ReplyTooLarge(
                f"the reply to {name} is {len(reply)} bytes; this connection carries at "
                f"most {limit}"
            )
        return reply

    def _failure_reply(self, failure: Exception, subject: str) -> bytes:
        """The error reply of a request that ``failure`` ended, counted (a bug: logged)."""
        self.failed += 1
        if isinstance(failure, PlantangenetError):
            self._storage_refused(failure)
        else:  # a bug: answer, log, keep serving
            log.error("request on %s failed", subject, exc_info=failure)
        return error_reply(failure)

    def _unbusy(self, session_id: str) -> None:
        """A request of ``session_id`` ended: keep the session warm if an actor serves it."""
        if session_id in self._busy:
            self._busy[session_id] -= 1
            if self._running(session_id) is not None:  # an actor serves it: keep it warm
                self._last_used[session_id] = time.monotonic()
            elif not self._busy[session_id]:  # answered without an actor: nothing to keep
                del self._busy[session_id]
                self._last_used.pop(session_id, None)

    def _count_answer(
        self,
        endpoint: EndpointCounts,
        principal: str,
        name: str,
        failure: BaseException | None,
        trace: tuple[str, str] | None,
    ) -> dict[str, str] | None:
        """Count a request answered (its principal's window, the metrics); the reply's
        headers (its ``traceparent``, if it came with one)."""
        self.handled += 1
        self._answered(principal, failure)
        self.metrics.request(name)
        if failure is not None:
            code = failure.code if isinstance(failure, PlantangenetError) else "error"
            endpoint.failed(f"{code}: {failure}"[:500])
            self.metrics.refusal(code)
        return {TRACEPARENT_HEADER: trace[0]} if trace else None

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

    async def _reply(
        self,
        msg: Msg,
        reply: bytes,
        headers: dict[str, str] | None = None,
        frame: bytes | None = None,
    ) -> None:
        """Answer on the connection the request came on (a flood's replies stay in its lane).

        ``frame``: the reply's frame, if the caller built it already."""
        nc = getattr(msg, "_client", None) or self._nc
        if msg.reply and nc is not None:
            try:
                frame = frame or publish_frame(msg.reply, headers, reply)
                if frame is None or not await send_frames(nc, frame, (reply,), flush=True):
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
