"""Actors without a thread of their own: a mailbox drained on a shared thread pool.

A pykka ``ThreadingActor`` is one thread, for as long as it lives: a session with
thousands of agents with behaviour would run on thousands of threads. A
:class:`PooledActor` is a mailbox; while it holds messages, one task on a shared
:class:`~concurrent.futures.ThreadPoolExecutor` handles them, one at a time, in
order, then gives the thread back (after at most :data:`BUDGET` messages, so that
a busy actor does not starve the others). The threads are the pool's: a few dozen
at most, however many actors there are.

Its reference offers what the session actor uses of a pykka ``ActorRef``:
``tell``, ``ask``, ``is_alive``, ``actor_urn``; a stopped actor refuses messages
with ``pykka.ActorDeadError``, like pykka's.
"""

from __future__ import annotations

import concurrent.futures
import logging
import os
import threading
import uuid
from collections import deque
from typing import Any

import pykka

log = logging.getLogger("plantangenet.pool")

#: Messages one actor handles before it lets the other actors of the pool run.
BUDGET = 64

#: Threads of the default pool (``PLANTANGENET_AGENT_THREADS`` overrides it).
DEFAULT_THREADS = 32

_default: concurrent.futures.ThreadPoolExecutor | None = None
_default_lock = threading.Lock()


def default_pool() -> concurrent.futures.ThreadPoolExecutor:
    """The process's shared pool of agent threads (made on first use)."""
    global _default
    with _default_lock:
        if _default is None:
            threads = int(os.environ.get("PLANTANGENET_AGENT_THREADS", DEFAULT_THREADS))
            _default = concurrent.futures.ThreadPoolExecutor(
                max_workers=max(threads, 1), thread_name_prefix="plantangenet-agent"
            )
        return _default


_START = object()


class PooledRef:
    """A reference to a :class:`PooledActor` (what ``start`` returns)."""

    __slots__ = ("_actor", "actor_urn")

    def __init__(self, actor: PooledActor) -> None:
        self._actor = actor
        self.actor_urn = actor.actor_urn

    def tell(self, message: Any) -> None:
        """Queue ``message``; raises ``pykka.ActorDeadError`` if the actor stopped."""
        self._actor._post(message, None)

    def ask(self, message: Any, timeout: float | None = None) -> Any:
        """Queue ``message`` and wait for what ``on_receive`` returns (or raises)."""
        reply: concurrent.futures.Future[Any] = concurrent.futures.Future()
        self._actor._post(message, reply)
        return reply.result(timeout)

    def is_alive(self) -> bool:
        """Whether the actor still takes messages."""
        return not self._actor._stopped

    @property
    def pending(self) -> int:
        """Messages queued and not handled yet."""
        return len(self._actor._inbox)

    @property
    def actor(self) -> PooledActor:
        """The actor itself (for inspection only: never call it from another thread)."""
        return self._actor


class PooledActor:
    """Base class: override ``on_start``, ``on_receive``, ``on_stop``; call ``stop`` in them."""

    def __init__(self, pool: concurrent.futures.Executor | None = None) -> None:
        self._pool = pool or default_pool()
        self.actor_urn = uuid.uuid4().urn
        self._inbox: deque[tuple[Any, concurrent.futures.Future[Any] | None]] = deque()
        self._lock = threading.Lock()
        self._scheduled = False
        self._stopped = False
        self.actor_ref = PooledRef(self)

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> PooledRef:
        """Make the actor and queue its ``on_start``; returns its reference at once."""
        actor = cls(*args, **kwargs)
        actor._post(_START, None)
        return actor.actor_ref

    def on_start(self) -> None:
        """Called first, on a pool thread."""

    def on_receive(self, message: Any) -> Any:
        """Handle one message, on a pool thread; the result answers an ``ask``."""
        return None

    def on_stop(self) -> None:
        """Called once, by :meth:`stop`."""

    def stop(self) -> None:
        """Stop now (call it from a hook): refuse messages from now on, run ``on_stop``;
        asks still queued fail with ``pykka.ActorDeadError``."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            left, self._inbox = list(self._inbox), deque()
        try:
            self.on_stop()
        except Exception:
            log.exception("%s: on_stop failed", type(self).__name__)
        for _, reply in left:
            if reply is not None and not reply.done():
                reply.set_exception(pykka.ActorDeadError(f"{self.actor_urn} stopped"))

    # -- the mailbox -------------------------------------------------------------

    def _post(self, message: Any, reply: concurrent.futures.Future[Any] | None) -> None:
        with self._lock:
            if self._stopped:
                raise pykka.ActorDeadError(f"{self.actor_urn} stopped")
            self._inbox.append((message, reply))
            if self._scheduled:
                return
            self._scheduled = True
        self._schedule()

    def _schedule(self) -> None:
        try:
            self._pool.submit(self._drain)
        except RuntimeError:  # the pool is shut down (interpreter exit): drain here
            self._drain(budget=None)

    def _drain(self, budget: int | None = BUDGET) -> None:
        handled = 0
        while budget is None or handled < budget:
            with self._lock:
                if not self._inbox:
                    self._scheduled = False
                    return
                message, reply = self._inbox.popleft()
            handled += 1
            self._handle(message, reply)
        self._schedule()  # more to do: behind the other actors' turns

    def _handle(self, message: Any, reply: concurrent.futures.Future[Any] | None) -> None:
        try:
            if message is _START:
                self.on_start()
                return
            result = self.on_receive(message)
        except Exception as exc:
            if reply is not None:
                reply.set_exception(exc)
            else:
                log.exception("%s: unexpected error", type(self).__name__)
            return
        if reply is not None and not reply.done():
            reply.set_result(result)
