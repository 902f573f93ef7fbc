"""A session actor's inbox that lets the event loop take the actor's turn itself.

A session actor is a pykka ``ThreadingActor``: its own thread handles its messages,
one at a time. A command over the wire is two messages, both sent from the event
loop's thread (the service's command, then the log's acknowledgement of its append),
and each wakes the actor's thread, whose answer wakes the loop again: on a small
machine the hand-overs cost more CPU than deciding and storing the command.

:class:`Turns` lets the loop handle such a message itself, at once, when that changes
nothing about what the actor does:

- the actor is idle: nothing is queued and its thread handles nothing (it waits for
  a message), and it has started (``on_start``, the rehydration, has run);
- the actor says it handles this message in its present state without waiting for
  anything (see ``SessionActor._takes_on_loop``: never while it must catch up from
  the log, never a message that runs the user's hooks or code);
- the message is a ``tell`` (an ``ask``'s reply is pykka's to give).

Every message the actor's thread handles, and every one the loop handles, is handled
holding the actor's *turn* (a lock), so no two threads ever handle its messages at
once; and in the order they were sent: while the loop handles one, a message sent
meanwhile waits in the inbox and the actor's thread takes it after. Whoever sends a
message on the loop's thread may thus find it handled when ``tell`` returns.
"""

from __future__ import annotations

import logging
import queue
import threading
from typing import Any, Protocol

log = logging.getLogger("plantangenet.session")


class TakesTurns(Protocol):
    """What :class:`Turns` asks of its actor."""

    actor_stopped: threading.Event

    def _on_loop_thread(self) -> bool: ...

    def _takes_on_loop(self, message: Any) -> bool: ...

    def on_receive(self, message: Any) -> Any: ...


class Turns:
    """The inbox (pykka's ``put``, ``get``, ``empty``) and the turn of one actor.

    The actor sets :attr:`actor` once made, calls :meth:`done` after each message its
    thread handled (holding :attr:`turn`), and once after ``on_start``.
    """

    __slots__ = ("_backlog", "_lock", "_queue", "actor", "taken_on_loop", "turn")

    def __init__(self) -> None:
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._lock = threading.Lock()
        #: Messages queued or being handled; 1 at first: ``on_start`` has not run.
        self._backlog = 1
        #: Held by whoever handles one of the actor's messages.
        self.turn = threading.Lock()
        self.actor: TakesTurns | None = None
        #: How many messages the loop handled itself (for tests and the curious).
        self.taken_on_loop = 0

    def put(self, envelope: Any, block: bool = True, timeout: float | None = None) -> None:
        """Queue ``envelope`` for the actor's thread, or handle it here (see the module)."""
        actor = self.actor
        if (
            actor is not None
            and envelope.reply_to is None
            and actor._on_loop_thread()
            and self._take(actor, envelope.message)
        ):
            return
        with self._lock:
            self._backlog += 1
            self._queue.put(envelope)

    def _take(self, actor: TakesTurns, message: Any) -> bool:
        """Handle ``message`` on this thread if the actor is idle and takes it here."""
        with self._lock:
            if self._backlog or not self.turn.acquire(False):
                return False
            self._backlog = 1
        try:
            try:
                takes = not actor.actor_stopped.is_set() and actor._takes_on_loop(message)
            except Exception:  # a bug in the check: the actor's thread takes it (and says so)
                log.exception("%r: deciding where to handle %r failed", actor, type(message))
                takes = False
            if not takes:
                return False
            self.taken_on_loop += 1
            actor.on_receive(message)  # turns every failure into a typed reply or a log line
            return True
        finally:
            self.turn.release()
            self.done()

    def done(self) -> None:
        """One message (or ``on_start``) handled."""
        with self._lock:
            self._backlog -= 1

    def get(self, block: bool = True, timeout: float | None = None) -> Any:
        """The next queued envelope (waits for one)."""
        return self._queue.get(block, timeout)

    def empty(self) -> bool:
        """Whether nothing is queued."""
        return self._queue.empty()
