"""Replaying a recorded session to a remote bot: ``plantangenet replay-serve``.

:func:`replay_serve` lets a bot that speaks the wire protocol (docs/protocol.md)
live through a recorded session again, and compares what it does with what it
did then:

1. The recorded session is forked (:mod:`plantangenet.timetravel.fork`) just before the
   bot's first command (or at a given position): the fork is an ordinary session,
   and the original is never written to.
2. A :class:`~plantangenet.wire.service.SessionService` serves the fork, so the bot
   connects as it always does, to the fork's id; its commands land in the fork.
3. The commands the *other* participants recorded after that point are sent to
   the fork again, in their recorded order, as the recorded issuer
   (``issued_by``, by the operator): rebuilt from their events (see
   :func:`command_of`), they are decided again on the fork's state, so the fork
   stays a consistent session whatever the bot does differently. Commands that
   were refused then, data queries and chem commands are not sent again (they are
   listed as skipped).
4. Pace: at the recorded pace divided by ``speed`` (``0``: no waiting), or one at
   a time when ``step`` says so. And never ahead of the bot: a command recorded
   after the bot's k-th command waits until the bot has sent k commands to the
   fork (at most ``patience`` seconds), so a bot that waits for something of its
   own (a cursor, an attach) before it follows the session sees what it saw then.
5. When everything is released and the bot has sent as many commands as then (or
   has been quiet for ``patience`` seconds), the service stops and the bot's
   commands in the fork (*now*) are compared with its commands in the original
   after the fork point (*then*) by the rule of :mod:`plantangenet.timetravel.botreplay`: a
   command of the bot answers the last released event before it.

The recorded session is read into memory (a debugging tool: one session at a time).
"""

from __future__ import annotations

import dataclasses
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from plantangenet.actors.session import CommandResult
from plantangenet.domain.commands import (
    AddCursor,
    AddOwner,
    AttachAgent,
    BindAgent,
    BindIdentity,
    ChangeMetadata,
    ChangePolicy,
    Command,
    DepositDust,
    DetachAgent,
    EndSession,
    GrantDust,
    GrantRole,
    MoveCursor,
    RegisterCompositor,
    RemoveCursor,
    RemoveOwner,
    RevokeRole,
    SetPrices,
)
from plantangenet.domain.decide import check_id
from plantangenet.errors import PlantangenetError, UnknownAgent, UnknownSession
from plantangenet.events.envelope import Envelope
from plantangenet.projections.session import SessionState
from plantangenet.projections.views import describe
from plantangenet.runtime import Plantangenet
from plantangenet.timetravel.botreplay import (
    Pairer,
    ReplayReport,
    _command_key,
    record_of_events,
)
from plantangenet.timetravel.botreplay_session import _Recorded
from plantangenet.timetravel.fork import fork
from plantangenet.timetravel.history import Position, resolve
from plantangenet.wire.service import SessionService

#: Command kinds whose every field the log keeps, so they can be sent again.
_REBUILT: Mapping[str, type[Command]] = {
    cls.__name__: cls
    for cls in (
        MoveCursor,
        AddCursor,
        RemoveCursor,
        DetachAgent,
        ChangeMetadata,
        GrantRole,
        RevokeRole,
        EndSession,
        BindIdentity,
        RegisterCompositor,
        SetPrices,
        DepositDust,
        GrantDust,
        AddOwner,
        RemoveOwner,
        BindAgent,
    )
}


def command_of(events: Sequence[Envelope]) -> tuple[Command | None, str]:
    """The command to send again for a recorded command's events, or why not.

    It is issued as it was (``issued_by``), with the recorded correlation id and a
    fresh command id; an attach keeps the principal the agent was bound to, a policy
    change becomes a replacement by the statements it left.
    """
    record = record_of_events(events)
    if record.refused:
        return None, f"refused then ({record.refused})"
    first, last = events[0], events[-1]
    common: dict[str, Any] = {
        "issued_by": record.issued_by,
        "correlation_id": first.correlation_id,
    }
    event = last.event
    if record.kind == "AttachAgent":
        bound = getattr(event, "principal", None)
        return AttachAgent(**record.fields, bound_to=bound, **common), ""
    if record.kind == "ChangePolicy":
        return ChangePolicy(replace=tuple(getattr(event, "statements", ())), **common), ""
    cls = _REBUILT.get(record.kind)
    if cls is None:
        return None, f"{record.kind} is not sent again (the log does not hold all of it)"
    return cls(**record.fields, **common), ""


@dataclasses.dataclass(frozen=True, slots=True)
class Release:
    """A recorded command of another participant, to send to the fork again."""

    events: tuple[Envelope, ...]
    command: Command | None
    #: Why it is not sent again ("" when it is).
    skipped: str
    #: How many of the bot's commands were recorded before it.
    after: int

    @property
    def sequence(self) -> int:
        """The original's stream sequence of its last event."""
        return self.events[-1].sequence or 0

    @property
    def type_name(self) -> str:
        return self.events[-1].type_name

    def describe(self) -> str:
        by = self.events[0].agent_id or "the owner"
        return f"sequence {self.sequence}: {self.type_name} by {by} {describe(self.events[-1])}"


def plan(
    envelopes: Sequence[Envelope], agent_id: str, after: int
) -> tuple[list[Release], list[_Recorded]]:
    """Split the recorded events after sequence ``after`` into the others' commands to
    release and the agent's commands (with the last other event before each)."""
    groups: list[list[Envelope]] = []
    previous: Envelope | None = None
    for envelope in envelopes:
        if _command_key(envelope, previous):
            groups.append([])
        groups[-1].append(envelope)
        previous = envelope
    releases: list[Release] = []
    recorded: list[_Recorded] = []
    last_other = after
    for events in groups:
        sequence = events[0].sequence or 0
        if sequence <= after:
            continue
        if events[0].agent_id == agent_id:
            recorded.append(_Recorded(record_of_events(events), last_other, last_other))
            continue
        command, skipped = command_of(events)
        releases.append(Release(tuple(events), command, skipped, len(recorded)))
        last_other = events[-1].sequence or 0
    return releases, recorded


#: Called before each release when stepping: False ends the releases there.
Step = Callable[[Release], bool]
#: Told of each release and its outcome in the fork (None: skipped).
OnRelease = Callable[[Release, "CommandResult | PlantangenetError | None"], None]


def replay_serve(
    pg: Plantangenet,
    session_id: str,
    fork_id: str,
    agent_id: str,
    *,
    at: Position | None = None,
    speed: float = 1.0,
    step: Step | None = None,
    patience: float = 10.0,
    settle: float = 0.3,
    stop: threading.Event | None = None,
    on_ready: Callable[[SessionState], None] | None = None,
    on_release: OnRelease | None = None,
    command_prefix: str | None = None,
) -> ReplayReport:
    """Serve a fork of ``session_id`` to the bot ``agent_id``, release the others'
    recorded commands into it, and compare the bot's commands then and now.

    :param at: fork there (default: just before the bot's first command).
    :param speed: the recorded pace times ``speed`` (2: twice as fast; 0: no pause).
    :param step: asked before each release (one at a time); False stops releasing.
    :param patience: seconds a release waits for the bot to catch up, and the bot's
        quiet time after which the replay ends.
    :param settle: quiet seconds that end the replay once the bot has sent as many
        commands as then.
    :param stop: set it to end the replay early (e.g. on a signal).
    :param on_ready: called with the fork's state once the fork is served.
    :raises UnknownSession, UnknownPosition: nothing to replay there.
    :raises UnknownAgent: the agent issued no command in the session.
    :raises SessionExists: ``fork_id`` already has events.
    """
    check_id(session_id, "session_id")
    check_id(agent_id, "agent_id")
    stop = stop or threading.Event()
    envelopes = pg.history(session_id)
    if not envelopes:
        raise UnknownSession(f"no events for session {session_id!r}")
    mine = [e.sequence or 0 for e in envelopes if e.agent_id == agent_id]
    if at is not None:
        point = pg.run(resolve(pg.journal, session_id, at))
    elif not mine:
        raise UnknownAgent(f"agent {agent_id!r} issued no command in session {session_id!r}")
    else:
        before = [e.sequence or 0 for e in envelopes if (e.sequence or 0) < mine[0]]
        if not before:
            raise PlantangenetError(
                f"agent {agent_id!r} issued the first command of {session_id!r}: "
                "fork at a later position (--at)"
            )
        point = before[-1]
    releases, recorded = plan(envelopes, agent_id, point)
    point_event = next(e for e in envelopes if e.sequence == point)
    end = envelopes[-1].sequence or 0
    report = ReplayReport(session_id, agent_id, point, end, fork_id=fork_id)
    state = fork(pg, session_id, point, fork_id)
    fork_point = state.sequence

    seen: set[str] = set()  # the bot's command ids in the fork

    def count(envelope: Envelope) -> None:
        if envelope.agent_id == agent_id and (envelope.sequence or 0) > fork_point:
            seen.add(envelope.causation_id)

    service = SessionService(pg, idle_timeout=7 * 24 * 3600.0, **_prefix(command_prefix))
    handle = pg.session(fork_id)
    subscription = handle.on_change(count)
    pg.run(service.start())
    released: dict[int, Release] = {}  # fork sequence of a released command's first event
    try:
        if on_ready is not None:
            on_ready(state)
        paced_at = time.monotonic()
        paced_from = point_event.occurred_at
        for release in releases:
            _wait(lambda r=release: len(seen) >= r.after, patience, stop)  # type: ignore[misc]
            if stop.is_set():
                break
            if step is not None:
                if not step(release):
                    break
            elif speed > 0:
                gap = (release.events[0].occurred_at - paced_from).total_seconds() / speed
                stop.wait(max(0.0, paced_at + gap - time.monotonic()))
            paced_at, paced_from = time.monotonic(), release.events[0].occurred_at
            outcome: CommandResult | PlantangenetError | None = None
            if release.command is not None:
                try:
                    outcome = handle.execute(release.command)
                    released[outcome.first_sequence] = release
                except PlantangenetError as exc:
                    outcome = exc
            if on_release is not None:
                on_release(release, outcome)
            report.handed += len(release.events)
        # The bot's last answers: as many commands as then, then quiet for a moment.
        quiet_since, sent = time.monotonic(), len(seen)
        while not stop.is_set():
            stop.wait(0.05)
            if len(seen) != sent:
                quiet_since, sent = time.monotonic(), len(seen)
            quiet = time.monotonic() - quiet_since
            if (sent >= len(recorded) and quiet >= settle) or quiet >= patience:
                break
    finally:
        pg.run(service.stop())
        subscription.cancel()
    _compare(pg, fork_id, fork_point, agent_id, point_event, released, recorded, report)
    return report


def _prefix(command_prefix: str | None) -> dict[str, Any]:
    return {} if command_prefix is None else {"command_prefix": command_prefix}


def _wait(done: Callable[[], bool], timeout: float, stop: threading.Event) -> None:
    deadline = time.monotonic() + timeout
    while not done() and not stop.is_set() and time.monotonic() < deadline:
        stop.wait(0.01)


def _compare(
    pg: Plantangenet,
    fork_id: str,
    fork_point: int,
    agent_id: str,
    point_event: Envelope,
    released: Mapping[int, Release],
    recorded: list[_Recorded],
    report: ReplayReport,
) -> None:
    """Walk the fork after the fork point: pair the bot's commands with the recorded ones."""
    pairer = Pairer(recorded, report)
    at, event_type = point_event.sequence or 0, point_event.type_name
    previous: Envelope | None = None
    group: list[Envelope] = []

    def close_group() -> None:
        if group and group[0].agent_id == agent_id:
            now = record_of_events(group)
            pairer.pair(now, at, event_type, any_event=True)
        group.clear()

    for envelope in pg.history(fork_id, from_sequence=fork_point + 1):
        if _command_key(envelope, previous):
            close_group()
            release = released.get(envelope.sequence or 0)
            if release is not None:  # the answer to it can only come after it
                pairer.close_before(release.events[0].sequence or 0, at, event_type)
                at, event_type = release.sequence, release.type_name
        group.append(envelope)
        previous = envelope
    close_group()
    pairer.close_before(report.last, at, event_type)
