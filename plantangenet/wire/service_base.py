"""What the parts of the session service share: the state :class:`SessionService` keeps
(set in its ``__init__``) and the methods one part calls on another, declared here for
the type checker only (:mod:`plantangenet.wire.service` and its ``service_*`` parts)."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import TYPE_CHECKING, Any

from nats.aio.msg import Msg

from plantangenet.actors.handle import SessionHandle
from plantangenet.runtime import Plantangenet
from plantangenet.wire.metrics import ServiceMetrics
from plantangenet.wire.micro import EndpointCounts
from plantangenet.wire.ownership import Ownership

#: A request waiting for its turn: the message, its endpoint, when it was taken (ns).
Waiting = tuple[Msg, EndpointCounts, int]


class ServiceState:
    """The session service's state and cross-part methods (declarations only)."""

    runtime: Plantangenet
    command_prefix: str
    conflict_retries: int
    max_in_flight: int
    per_principal: int
    first_window: int
    queued_per_principal: int
    ownership: Ownership | None
    metrics: ServiceMetrics
    relay_timeout: float
    forwarded: int
    relays_peak: int
    unowned: int
    unidentified: int
    overflowed: int
    refused_replies: int
    _nc: Any
    _taken: int
    _protected: tuple[str, ...]
    _overflow_reply: bytes
    _forward_endpoint: EndpointCounts
    _relays: set[asyncio.Task[None]]
    _relaying_of: dict[str, int]
    _tasks: set[asyncio.Task[None]]
    _direct: int
    _dispatching: bool
    _waiting: dict[str, deque[Waiting]]
    _turns: deque[str]
    _running_of: dict[str, int]
    _window_of: dict[str, int]
    _last_used: dict[str, float]
    _busy: dict[str, int]

    if TYPE_CHECKING:

        async def _handle(
            self, msg: Msg, endpoint: EndpointCounts, taken: int, *, principal: str
        ) -> None: ...

        async def _reply(
            self,
            msg: Msg,
            reply: bytes,
            headers: dict[str, str] | None = None,
            frame: bytes | None = None,
        ) -> None: ...

        def _max_payload(self) -> int: ...

        def _sized(self, name: str, reply: bytes) -> bytes: ...

        def _failure_reply(self, failure: Exception, subject: str) -> bytes: ...

        def _unbusy(self, session_id: str) -> None: ...

        def _count_answer(
            self,
            endpoint: EndpointCounts,
            principal: str,
            name: str,
            failure: BaseException | None,
            trace: tuple[str, str] | None,
        ) -> dict[str, str] | None: ...

        def _request_ended(self, principal: str) -> None: ...

        def _start_direct(
            self, msg: Msg, endpoint: EndpointCounts, taken: int, principal: str
        ) -> bool: ...

        def _running(self, session_id: str) -> SessionHandle | None: ...

        def _storage_refused(self, error: BaseException) -> None: ...

        async def _log_is_empty(self, session_id: str) -> bool: ...

        async def _enqueue(
            self, msg: Msg, endpoint: EndpointCounts, taken: int, principal: str
        ) -> None: ...

        def _reply_refusal(self, reply: str, crossed: bool) -> str | None: ...

        def _answered(self, principal: str, failure: BaseException | None) -> None: ...

        def _passed_on(
            self, msg: Msg, endpoint: EndpointCounts, taken: int, principal: str, hops: int
        ) -> bool: ...
