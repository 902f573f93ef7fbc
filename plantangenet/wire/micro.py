"""The session service as a NATS service: ``$SRV.PING``, ``$SRV.INFO`` and ``$SRV.STATS``.

NATS tooling (``nats micro ls``, ``nats micro info``, ``nats micro stats``) finds
services through the NATS services framework: each service instance answers
requests on ``$SRV.<VERB>``, ``$SRV.<VERB>.<name>`` and ``$SRV.<VERB>.<name>.<id>``
with JSON of the ``io.nats.micro.v1`` schemas. nats-py's :mod:`nats.micro` does
that for endpoints it subscribes itself; the session service's endpoints are its
own subscriptions (the command subject and one per ingress lane, each on a
connection of its own, with the trust checks of :mod:`plantangenet.wire.service`),
which must not be rerouted through another handler. So :class:`Registration`
answers the three verbs itself, with nats.micro's own response classes (the same
JSON), reporting the service's endpoints and the counts the service keeps for
them (:class:`EndpointCounts`).

Who can ask: the ``$SRV`` subscriptions live in the service's account. A
locked-down deployment (:mod:`plantangenet.wire.access`) exports only the command and
live subjects, and bot users may publish only to their sessions' command
subjects and their own JetStream: bots cannot reach ``$SRV``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
from collections.abc import Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

from nats.micro.service import (
    EndpointInfo,
    EndpointStats,
    ServiceInfo,
    ServicePing,
    ServiceStats,
    ServiceVerb,
    control_subject,
)
from nats.nuid import NUID

__all__ = ["EndpointCounts", "Registration"]


@dataclasses.dataclass(slots=True)
class EndpointCounts:
    """One endpoint (a subscription of the service) and what it has seen.

    ``requests`` counts every request taken off the subscription; ``errors``
    those answered with an error or dropped unanswered; ``processing_ns`` the
    time from taking each request to answering it (waiting in its principal's
    queue included).
    """

    name: str
    subject: str
    queue_group: str
    requests: int = 0
    errors: int = 0
    processing_ns: int = 0
    last_error: str = ""

    def failed(self, error: str) -> None:
        self.errors += 1
        self.last_error = error

    def stats(self) -> Any:
        average = self.processing_ns // self.requests if self.requests else 0
        return EndpointStats(
            name=self.name,
            subject=self.subject,
            queue_group=self.queue_group,
            num_requests=self.requests,
            num_errors=self.errors,
            processing_time=self.processing_ns,
            average_processing_time=average,
            last_error=self.last_error,
        )

    def info(self) -> Any:
        return EndpointInfo(
            name=self.name, subject=self.subject, queue_group=self.queue_group, metadata={}
        )


class Registration:
    """Answers ``$SRV.PING/INFO/STATS`` for one service instance (see the module docs).

    :param name: the service's name (shared by all its instances): letters, digits,
        ``-`` and ``_``.
    :param version: its semantic version.
    :param endpoints: the endpoints to report; their counts are read at each request.
    """

    def __init__(
        self,
        name: str,
        version: str,
        *,
        description: str = "",
        metadata: Mapping[str, str] | None = None,
        endpoints: Sequence[EndpointCounts] = (),
    ) -> None:
        self.name = name
        self.version = version
        self.description = description
        self.metadata = dict(metadata or {})
        self.endpoints = list(endpoints)
        self.id: str = NUID().next().decode()
        self.started = datetime.now(UTC)
        self._nc: Any = None
        self._subs: list[Any] = []

    def ping(self) -> dict[str, Any]:
        """The ``$SRV.PING`` answer (``io.nats.micro.v1.ping_response``)."""
        ping: dict[str, Any] = ServicePing(
            id=self.id, name=self.name, version=self.version, metadata=self.metadata
        ).to_dict()
        return ping

    def info(self) -> dict[str, Any]:
        """The ``$SRV.INFO`` answer (``io.nats.micro.v1.info_response``)."""
        info: dict[str, Any] = ServiceInfo(
            id=self.id,
            name=self.name,
            version=self.version,
            description=self.description,
            endpoints=[endpoint.info() for endpoint in self.endpoints],
            metadata=self.metadata,
        ).to_dict()
        return info

    def stats(self) -> dict[str, Any]:
        """The ``$SRV.STATS`` answer (``io.nats.micro.v1.stats_response``)."""
        stats: dict[str, Any] = ServiceStats(
            id=self.id,
            name=self.name,
            version=self.version,
            started=self.started,
            endpoints=[endpoint.stats() for endpoint in self.endpoints],
            metadata=self.metadata,
        ).to_dict()
        return stats

    async def start(self, nc: Any) -> None:
        """Subscribe to the control subjects on ``nc`` (no queue group: every instance
        answers)."""
        self._nc = nc
        answers = {
            ServiceVerb.PING: self.ping,
            ServiceVerb.INFO: self.info,
            ServiceVerb.STATS: self.stats,
        }
        for verb, answer in answers.items():

            async def respond(msg: Any, answer: Any = answer) -> None:
                if msg.reply:
                    await nc.publish(msg.reply, json.dumps(answer()).encode())

            for name, id_ in ((None, None), (self.name, None), (self.name, self.id)):
                subject = control_subject(verb, name=name, id=id_)
                self._subs.append(await nc.subscribe(subject, cb=respond))
        await nc.flush()

    async def stop(self) -> None:
        """Stop answering."""
        subs, self._subs = self._subs, []
        for sub in subs:
            with contextlib.suppress(Exception):  # the connection is going anyway
                await sub.unsubscribe()
