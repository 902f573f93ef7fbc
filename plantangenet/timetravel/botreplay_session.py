"""A session handle that records commands instead of sending them.

The :class:`RecordingSession` a replayed behaviour's context holds (see
:mod:`plantangenet.timetravel.botreplay`): it answers from the recorded state and keeps every
command the behaviour issues, so a replay never writes to any session.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any, cast

import pykka

from plantangenet.actors.agent import Agent
from plantangenet.actors.future import ReplyFuture
from plantangenet.actors.handle import SessionHandle, Subscription
from plantangenet.actors.session import CommandResult, HookFailure, OnChange
from plantangenet.domain.commands import Command
from plantangenet.errors import PlantangenetError
from plantangenet.projections.agent import AgentState
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.session import CursorView, SessionState
from plantangenet.timetravel.botreplay_records import (
    CommandRecord,
    NotReplayable,
)

if TYPE_CHECKING:  # the replay that drives it (it imports this module)
    from plantangenet.timetravel.botreplay import _Replay


class _Subscription(Subscription):
    def cancel(self) -> None:
        handle = self._handle
        assert isinstance(handle, RecordingSession)
        handle._hooks.pop(self._key, None)


class RecordingSession(SessionHandle):
    """The session handle a replayed agent gets: it records commands instead of sending them.

    Every command method of :class:`SessionHandle` works (they all go through
    :meth:`submit` / :meth:`execute`); the answer is the recorded one or the
    replayed state's decision (see the module docs). :attr:`state` is the session
    at the event being handled; :meth:`on_change` callbacks get the replayed
    events. :meth:`query` raises :class:`NotReplayable`.
    """

    def __init__(self, replay: _Replay) -> None:
        super().__init__(replay.session_id, cast("pykka.ActorRef[Any]", None))
        self._replay = replay
        self._hooks: dict[int, OnChange] = {}
        self._next_hook = 0
        self._hook_failures: list[HookFailure] = []

    def __repr__(self) -> str:
        return f"RecordingSession({self.session_id!r})"

    def submit(
        self, command: Command, *, behaviour: Agent | None = None
    ) -> concurrent.futures.Future[CommandResult]:
        reply: concurrent.futures.Future[CommandResult] = ReplyFuture()
        try:
            reply.set_result(self._replay.issue(command))
        except PlantangenetError as exc:
            reply.set_exception(exc)
        return reply

    def submit_many(
        self, commands: Iterable[Command]
    ) -> concurrent.futures.Future[tuple[CommandResult | PlantangenetError, ...]]:
        outcomes: list[CommandResult | PlantangenetError] = []
        for command in commands:
            try:
                outcomes.append(self._replay.issue(command))
            except PlantangenetError as exc:
                outcomes.append(exc)
        future: concurrent.futures.Future[tuple[CommandResult | PlantangenetError, ...]]
        future = ReplyFuture()
        future.set_result(tuple(outcomes))
        return future

    def execute(
        self, command: Command, *, behaviour: Agent | None = None, timeout: float | None = None
    ) -> CommandResult:
        return self._replay.issue(command)

    @property
    def state(self) -> SessionState:
        return self._replay.state

    def agent_state(self, agent_id: str) -> AgentState:
        if agent_id != self._replay.agent_id or self._replay.agent is None:
            raise NotReplayable(
                f"a replay of {self._replay.agent_id!r} has no agent actor {agent_id!r}"
            )
        return self._replay.agent

    def cursors_covering(self, axis: str, time: float) -> list[CursorView]:
        return CursorIndex.from_state(self._replay.state).covering(axis, time)

    @property
    def hook_failures(self) -> list[HookFailure]:
        return list(self._hook_failures)

    def on_change(self, callback: OnChange) -> Subscription:
        self._next_hook += 1
        self._hooks[self._next_hook] = callback
        return _Subscription(self, self._next_hook)

    def query(self, fn: Callable[[Any], Any]) -> concurrent.futures.Future[Any]:
        raise NotReplayable("query() runs code on the live session actor: a replay has none")

    def _tell(self, message: Any, reply: concurrent.futures.Future[Any]) -> None:
        reply.set_exception(NotReplayable("a replay sends nothing to a session"))

    @property
    def is_running(self) -> bool:
        return True


@dataclasses.dataclass(slots=True)
class _Recorded:
    """A command of the agent in the log, and where it stands in the replay."""

    record: CommandRecord
    #: The last event before it handed to the agent by delivery / by any callback,
    #: not counting the events of the agent's own commands.
    prev_delivered: int
    prev_any: int
