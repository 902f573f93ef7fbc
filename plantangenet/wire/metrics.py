"""Prometheus metrics of the session service (``plantangenet serve --metrics-port``).

Exposed with prometheus-client's standard exposition (``/metrics``), each service
on a registry of its own:

===========================================  ==========================================
``plantangenet_requests_total{name}``        requests handled, by the subject's request
                                             name (``start``, ``move``..., ``state``,
                                             ``history``, ``batch``; ``other`` for any
                                             name the protocol does not have)
``plantangenet_commands_total{command}``     commands that reached a session (each of a
                                             batch's), by command class
``plantangenet_refusals_total{code}``        refusals by error code: error replies, and
                                             errors in a batch reply in place of its
                                             commands; ``reply_dropped`` for requests
                                             dropped unanswered for their reply subject
``plantangenet_conflicts_total``             appends that lost a race with another writer
                                             (each is retried on the caught-up state)
``plantangenet_forwarded_total``             requests passed on to the process that owns
                                             their session's partition
``plantangenet_unowned_total``               requests handled here while their session's
                                             partition had no live owner
``plantangenet_partitions_owned``            partitions this process owns (see
                                             :mod:`plantangenet.wire.ownership`)
``plantangenet_append_seconds``              histogram: from publishing an append to its
                                             acknowledgement (or failure)
``plantangenet_sessions_owned``              sessions this service keeps an actor warm for
``plantangenet_sessions_open``               session actors running in the process
``plantangenet_consumers_in_use``            readers' consumers the process holds on the
                                             stream (a stream holds at most 1,000)
``plantangenet_requests_waiting``            requests queued behind their principals' turn
``plantangenet_requests_in_flight``          requests being handled
===========================================  ==========================================
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server

from plantangenet.wire.subjects import BATCH, COMMAND_NAMES, QUERIES

__all__ = ["APPEND_BUCKETS", "REPLY_DROPPED", "ServiceMetrics"]

#: Buckets of the append latency histogram (seconds): appends take a fraction of a
#: millisecond on a local server, a few on a replicated stream, more under load.
APPEND_BUCKETS = (
    0.0005,
    0.001,
    0.002,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
#: The refusal code of a request dropped unanswered for its reply subject.
REPLY_DROPPED = "reply_dropped"
#: Request names that get a label of their own (clients may name anything).
_NAMES = frozenset({*COMMAND_NAMES, *QUERIES, BATCH})


class ServiceMetrics:
    """The metrics of one session service, on a registry of its own (see the module docs)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._requests = Counter(
            "plantangenet_requests", "Requests handled, by request name", ["name"], registry=r
        )
        self._commands = Counter(
            "plantangenet_commands",
            "Commands that reached a session, by command",
            ["command"],
            registry=r,
        )
        self._refusals = Counter(
            "plantangenet_refusals", "Refusals, by error code", ["code"], registry=r
        )
        self.conflicts = Counter(
            "plantangenet_conflicts", "Appends that lost a race with another writer", registry=r
        )
        self.forwarded = Counter(
            "plantangenet_forwarded",
            "Requests passed on to the owner of their session's partition",
            registry=r,
        )
        self.unowned = Counter(
            "plantangenet_unowned",
            "Requests handled here while their session's partition had no live owner",
            registry=r,
        )
        self.partitions_owned = Gauge(
            "plantangenet_partitions_owned", "Partitions this process owns", registry=r
        )
        self.append_seconds = Histogram(
            "plantangenet_append_seconds",
            "Seconds from publishing an append to its acknowledgement",
            buckets=APPEND_BUCKETS,
            registry=r,
        )
        self.sessions_owned = Gauge(
            "plantangenet_sessions_owned", "Sessions this service keeps an actor for", registry=r
        )
        self.sessions_open = Gauge(
            "plantangenet_sessions_open", "Session actors running in the process", registry=r
        )
        self.consumers_in_use = Gauge(
            "plantangenet_consumers_in_use",
            "Readers' consumers the process holds on the stream",
            registry=r,
        )
        self.requests_waiting = Gauge(
            "plantangenet_requests_waiting", "Requests waiting for their turn", registry=r
        )
        self.requests_in_flight = Gauge(
            "plantangenet_requests_in_flight", "Requests being handled", registry=r
        )
        self._children: dict[tuple[str, str], Any] = {}
        self._server: Any = None
        self._thread: threading.Thread | None = None

    def _child(self, metric: Counter, kind: str, label: str) -> Any:
        child = self._children.get((kind, label))
        if child is None:
            child = self._children[(kind, label)] = metric.labels(label)
        return child

    def request(self, name: str) -> None:
        self._child(self._requests, "request", name if name in _NAMES else "other").inc()

    def command(self, command_class: str) -> None:
        self._child(self._commands, "command", command_class).inc()

    def refusal(self, code: str) -> None:
        self._child(self._refusals, "refusal", code).inc()

    def gauges(
        self,
        *,
        sessions_owned: Callable[[], float],
        sessions_open: Callable[[], float],
        consumers_in_use: Callable[[], float],
        requests_waiting: Callable[[], float],
        requests_in_flight: Callable[[], float],
        partitions_owned: Callable[[], float] = lambda: 0,
    ) -> None:
        """Read the gauges from these functions at each scrape."""
        self.sessions_owned.set_function(sessions_owned)
        self.sessions_open.set_function(sessions_open)
        self.consumers_in_use.set_function(consumers_in_use)
        self.requests_waiting.set_function(requests_waiting)
        self.requests_in_flight.set_function(requests_in_flight)
        self.partitions_owned.set_function(partitions_owned)

    def serve(self, port: int, address: str = "127.0.0.1") -> int:
        """Serve ``/metrics`` over HTTP on ``address:port`` (0: any free port), in a
        thread; returns the port."""
        self._server, self._thread = start_http_server(port, address, registry=self.registry)
        bound: int = self._server.server_port
        return bound

    def close(self) -> None:
        """Stop serving ``/metrics``."""
        server, self._server = self._server, None
        if server is not None:
            server.shutdown()
            server.server_close()
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
