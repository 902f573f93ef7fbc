"""In-process bots for the replay tests (importable by ``--behaviour tests.replay_bots:X``).

:class:`Watcher` is the in-process equivalent of ``examples/watcher_bot.py``: it
follows tide-bot's cursor and keeps its own just ahead of it. An agent's
``on_event`` is handed only the events about it (or about no agent), so it
watches tide-bot through an ``on_change`` callback, which sees every event; that
runs on the session's thread, so it sends with ``submit`` and never waits.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import Any

from plantangenet import (
    Agent,
    AgentContext,
    ChangeMetadata,
    DetachAgent,
    Envelope,
    MoveCursor,
    Plantangenet,
    SessionHandle,
    Subscription,
)
from plantangenet.events.envelope import utc_now
from plantangenet.events.session import AgentDetached, CursorMoved, SessionMetadataChanged

POLICY = [
    {
        "id": "agents-work-cursors",
        "effect": "allow",
        "actions": ["cursor.*"],
        "resources": ["axis.ocean.*", "cursor.*"],
    },
    {
        "id": "agents-note",
        "effect": "allow",
        "actions": ["metadata.change"],
        "resources": ["metadata.lookout.*"],
    },
]


class Watcher(Agent):
    """Moves its cursor ``ahead`` to ``[end, end + step]`` each time tide-bot's cursor moves."""

    step = 10.0
    #: Moves of tide-bot it does not answer (by their order, 1 = the first).
    skip: frozenset[int] = frozenset()
    #: Moves after which it also notes the tide in the metadata (an extra command).
    note: frozenset[int] = frozenset()

    def __init__(self) -> None:
        self.ready = threading.Event()
        self.context: AgentContext | None = None
        self.subscription: Subscription | None = None
        self.moves = 0

    def setup(self, context: AgentContext) -> None:
        self.context = context
        self.subscription = context.session.on_change(self.seen)
        self.ready.set()

    def teardown(self, context: AgentContext, reason: str) -> None:
        if self.subscription is not None:
            self.subscription.cancel()

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        event = envelope.event
        if envelope.type_name == "AgentAttached" and getattr(event, "agent_id", "") == "watcher":
            me = context.agent_id
            context.session.add_cursor(me, "ahead", ["ocean.tide"], 0, 10, issued_by=me)

    def seen(self, envelope: Envelope) -> None:
        """Every stored event (on the session's thread: submit, never wait)."""
        event = envelope.event
        context = self.context
        if context is None or getattr(event, "agent_id", None) != "tide-bot":
            return
        me, session = context.agent_id, context.session
        if isinstance(event, CursorMoved):
            self.moves += 1
            if self.moves in self.skip:
                return
            start, end = event.end, event.end + self.step
            session.submit(
                MoveCursor(
                    agent_id=me,
                    cursor_id="ahead",
                    axes=("ocean.tide",),
                    start=start,
                    end=end,
                    issued_by=me,
                )
            )
            if self.moves in self.note:
                session.submit(ChangeMetadata(changed={"lookout.tide": end}, issued_by=me))
        elif isinstance(event, AgentDetached):
            reason = "nothing left to watch"
            session.submit(DetachAgent(agent_id=me, reason=reason, issued_by=me))


class LongSightedWatcher(Watcher):
    """A changed watcher: looks 20 ahead instead of 10."""

    step = 20.0


class ForgetfulWatcher(Watcher):
    """A changed watcher: does not answer tide-bot's third move."""

    skip = frozenset({3})


class ChattyWatcher(Watcher):
    """A changed watcher: after tide-bot's second move also notes the tide."""

    note = frozenset({2})


def record_sweep(
    pg: Plantangenet, session_id: str, moves: int = 5
) -> tuple[SessionHandle, Watcher]:
    """A session where tide-bot sweeps its cursor ``moves`` times and a live Watcher follows.

    tide-bot's commands come from this thread (as the agent); each waits until the
    watcher answered the one before, so the log holds each answer right after its move.
    """
    session = pg.session(session_id)
    session.start({"purpose": "tides"})
    session.change_policy(replace=POLICY)
    session.attach("tide-bot", name="Tide gauge bot")
    session.add_cursor("tide-bot", "tide", ["ocean.tide"], 0, 60, issued_by="tide-bot")
    watcher = Watcher()
    session.attach("watcher", name="Watcher", behaviour=watcher)
    assert watcher.ready.wait(10)
    _wait(lambda: "ahead" in session.state.cursors)
    for step in range(1, moves + 1):
        start, end = step * 10.0, step * 10.0 + 60
        session.move_cursor("tide-bot", "tide", ["ocean.tide"], start, end, issued_by="tide-bot")
        _wait(lambda end=end: session.state.cursors["ahead"].start == end)
    session.detach("tide-bot", "sweep done", issued_by="tide-bot")
    _wait(lambda: "watcher" not in session.state.agents)
    return session, watcher


def _wait(predicate: Any, timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError("condition not met within timeout")
        time.sleep(0.01)


class Lookout(Agent):
    """On every tide the owner sets in the metadata, notes when it saw it (``context.now()``)."""

    def clock(self, context: AgentContext) -> datetime:
        return context.now()

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        event = envelope.event
        if isinstance(event, SessionMetadataChanged) and "tide" in event.changed:
            seen = self.clock(context).isoformat()
            me = context.agent_id
            context.session.change_metadata({"lookout.seen": seen}, issued_by=me)


class WallClockLookout(Lookout):
    """The same lookout, reading the wall clock: not replayable."""

    def clock(self, context: AgentContext) -> datetime:
        return utc_now()


class Recorder(Agent):
    """Remembers what it is handed: (hook, sequence, type) in order, and the clock it reads."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, int, str]] = []
        self.times: list[datetime] = []

    def setup(self, context: AgentContext) -> None:
        self.calls.append(("setup", 0, context.origin))

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        self.calls.append(("on_event", envelope.sequence or 0, envelope.type_name))
        self.times.append(context.now())

    def teardown(self, context: AgentContext, reason: str) -> None:
        self.calls.append(("teardown", 0, reason))
