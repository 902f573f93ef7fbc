"""Time-travel debugging for bots: replay an in-process agent against a recorded session.

:func:`replay_agent` runs an :class:`~plantangenet.actors.agent.Agent` behaviour
against a session's log, event by event, in order, and compares the commands it
issues *now* with the commands the agent issued *then* (as the log recorded them).
Nothing is sent anywhere: the behaviour's :class:`AgentContext` holds a
:class:`RecordingSession`, a session handle that records commands instead of
sending them, so a replay never writes to the session (or to any other).

What the agent is handed
------------------------
Exactly what its actor was handed live (see
:class:`~plantangenet.actors.session.SessionActor`): for each lifetime of the agent
(from its ``AgentAttached`` to its ``AgentDetached``, or to a ``SessionEnded`` that
detached it) a fresh behaviour from the factory, ``setup``, then ``on_event`` for
every event *about it or about no agent in particular* (an event with an
``agent_id`` field goes to that agent only), then ``teardown``. Callbacks the
behaviour registers with ``context.session.on_change`` get every event from the
next one on, before ``on_event``, as on the session's thread live. During a replay
``context.now()`` is the recorded time of the event being handled (``setup``: its
``AgentAttached``; ``teardown``: the event that detached it), ``context.origin`` is
``"attached"``, and ``context.session.state`` is the session folded up to and
including that event.

Which commands are the agent's
------------------------------
*Then*: the commands of the log issued as the agent (its envelopes' ``agent_id``,
i.e. ``issued_by=AGENT``) while it was attached, in log order; a command is the
events that share a ``causation_id`` (the command id), and its kind and fields are
read back from its events (``CursorMoved`` is a ``MoveCursor`` of the same agent,
cursor, axes, start, end and resolution; see :func:`record_of_events`). The
command that attached the agent is not its behaviour's doing and is left out.
*Now*: the commands the behaviour sends through ``context.session`` during the
replay, each with the event it was handling when it sent it (its *trigger*).

Pairing rule
------------
The log does not say which event an agent reacted to: an event's ``causation_id``
names the command that produced it, not the event that prompted that command. The
rule rests on what the log does guarantee:

1. An agent's commands are stored in the order it sent them (one actor thread;
   the session decides its mailbox in order). So then and now are two ordered
   lists, compared in order: the k-th command now with the k-th command then,
   unless one side has a command the other has not.
2. A command cannot answer an event stored after it. When the replay reaches a
   recorded command in the log and nothing was paired with it, it is **missing**
   (reported at the last event the agent had been handed before it).
3. A command sent now while handling event E is paired with the next unpaired
   recorded command C if C was stored after E and either it is the same command,
   or C was stored before the agent was handed anything after E (the last event
   handed before C, not counting the events of the agent's own commands, is at or
   before E; "handed" as live: delivered to ``on_event``, or any event while the
   behaviour has ``on_change`` callbacks): then C answered E, and they are
   **same** or **different** (with the fields that differ). Otherwise the command
   is **new**.

Rule 3 tolerates a live agent that lagged (its answer to E stored after later
events): a same command still pairs. A *changed* answer to E that was stored late
cannot be told apart from an answer to a later event; it shows as new, and the
recorded one as missing, at the right event.

Same means the same kind and fields, and, when both sides have it, the same
fingerprint (:func:`plantangenet.domain.commands.fingerprint`, stored on a command's first
event): it also covers what the events do not keep (``context``, ``bound_to``,
a policy change's ``replace``/``add``/``remove``).

What a replayed command is answered
-----------------------------------
A command paired as same gets what it got then: the recorded events (with their
sequences) in its :class:`~plantangenet.actors.session.CommandResult`, or the
recorded refusal (``AccessRefused``, ``InsufficientDust``) raised. Any other command
is decided against the replayed state (:func:`plantangenet.decide.decide_authorized`):
the events it would cause (not stored, no sequence), or the refusal raised. A data
query's answer holds no samples (data is not stored). The log does not change with
the new commands: a replay is open loop (fork the session to let them land, see
:mod:`plantangenet.timetravel.fork`).

What a replayable bot must not do
---------------------------------
Decide only from what it is handed: the events, ``context.now()``, its own fields,
and ``context.session.state``. It must not read the wall clock (``time.time()``,
``datetime.now()``), unseeded randomness (seed from the session and agent ids),
files, the network, environment variables or other sessions; must not act from its
own threads or timers; and must not depend on command results it cannot get back
(a query's samples, refusals the log does not record: ``UnknownCursor``,
``InvalidCommand`` and the like are never stored). Commands it sends in the owner
form (no ``issued_by``) cannot be told from the owner's in the log: send them as
the agent.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import AsyncGenerator, Callable
from datetime import datetime
from typing import Any, cast

from plantangenet.actors.agent import Agent, AgentContext
from plantangenet.actors.session import CommandResult, HookFailure, refusal_of
from plantangenet.domain.commands import Command, DataQuery
from plantangenet.domain.decide import check_id, decide_authorized
from plantangenet.errors import (
    CommandRejected,
    InvalidCommand,
    UnknownAgent,
    UnknownSession,
)
from plantangenet.events.base import Event
from plantangenet.events.envelope import Envelope, new_id, utc_now
from plantangenet.events.session import AgentAttached, AgentDetached, SessionEnded
from plantangenet.log.journal import Journal
from plantangenet.projections.agent import AgentState, evolve_agent
from plantangenet.projections.session import SessionState, evolve
from plantangenet.runtime import Plantangenet
from plantangenet.timetravel.botreplay_records import CommandRecord as CommandRecord
from plantangenet.timetravel.botreplay_records import FieldChange as FieldChange
from plantangenet.timetravel.botreplay_records import NotReplayable as NotReplayable
from plantangenet.timetravel.botreplay_records import Outcome as Outcome
from plantangenet.timetravel.botreplay_records import compare as compare
from plantangenet.timetravel.botreplay_records import record_of_command as record_of_command
from plantangenet.timetravel.botreplay_records import record_of_events as record_of_events
from plantangenet.timetravel.botreplay_report import BreakAction as BreakAction
from plantangenet.timetravel.botreplay_report import EventFilter as EventFilter
from plantangenet.timetravel.botreplay_report import OnBreak as OnBreak
from plantangenet.timetravel.botreplay_report import ReplayEntry as ReplayEntry
from plantangenet.timetravel.botreplay_report import ReplayReport as ReplayReport
from plantangenet.timetravel.botreplay_report import describe_break as describe_break
from plantangenet.timetravel.botreplay_session import RecordingSession as RecordingSession
from plantangenet.timetravel.botreplay_session import _Recorded
from plantangenet.timetravel.history import Position, fork_origin, resolve

log = logging.getLogger("plantangenet.timetravel.botreplay")

#: Makes an agent's behaviour: an :class:`Agent` subclass (called with no arguments)
#: or an agent factory ``(agent_id, kind) -> Agent`` as the runtime takes.
BehaviourFactory = Callable[..., Agent]

#: Events that are about no agent in particular go to every agent (see SessionActor._stored).
_EVERYONE = object()


# -- commands as the log and the replay see them --------------------------------------


# -- the report -------------------------------------------------------------------------


# -- the recording session handle -------------------------------------------------------


# -- the replay -------------------------------------------------------------------------


def _about(event: Event) -> object:
    return getattr(event, "agent_id", _EVERYONE)


def _delivered(agent_id: str, event: Event) -> bool:
    """Whether the session actor hands ``event`` to the attached agent ``agent_id``."""
    about = _about(event)
    return about is _EVERYONE or about == agent_id


def _starts(agent_id: str, event: Event) -> bool:
    return isinstance(event, AgentAttached) and event.agent_id == agent_id


def _ends(agent_id: str, event: Event) -> bool:
    if isinstance(event, AgentDetached):
        return event.agent_id == agent_id
    return isinstance(event, SessionEnded) and agent_id in event.detached


def _command_key(envelope: Envelope, previous: Envelope | None) -> bool:
    """Whether ``envelope`` starts another command than ``previous``'s."""
    if previous is None:
        return True
    if fork_origin(envelope) is not None:  # a fork's copy: one causation per event
        return bool(envelope.fingerprint) or (
            envelope.correlation_id != previous.correlation_id
            or envelope.agent_id != previous.agent_id
        )
    return envelope.causation_id != previous.causation_id


async def _scan(
    journal: Journal, session_id: str, agent_id: str, to_sequence: int | None
) -> list[_Recorded]:
    found: list[_Recorded] = []
    events: list[Envelope] = []  # of the agent's command being read
    attached = False
    prev_delivered = prev_any = 0
    previous: Envelope | None = None
    mine = False

    def close() -> None:
        if events:
            found[-1].record = record_of_events(events)
            events.clear()

    reader = journal.read(session_id, to_sequence=to_sequence)
    async with contextlib.aclosing(reader) as envelopes:
        async for envelope in envelopes:
            sequence = envelope.sequence or 0
            if _command_key(envelope, previous):
                close()
                mine = attached and envelope.agent_id == agent_id
                if mine:
                    placeholder = CommandRecord("", agent_id, {})
                    found.append(_Recorded(placeholder, prev_delivered, prev_any))
            previous = envelope
            event = envelope.event
            if _starts(agent_id, event):
                attached = True
            if mine:
                events.append(envelope)
            else:
                prev_any = sequence
                if attached and _delivered(agent_id, event):
                    prev_delivered = sequence
            if _ends(agent_id, event):
                attached = False
        close()
    return found


class Pairer:
    """Pairs commands sent now with the recorded ones (the rule in the module docs).

    ``recorded`` are the agent's commands in the log, in order. Call
    :meth:`close_before` when the walk reaches a sequence of the log (recorded
    commands stored up to it that nothing answered become *missing*), and
    :meth:`pair` for each command sent now, with the sequence and type of the
    event it answers. Entries at sequences before ``report.first`` are not kept.
    """

    def __init__(self, recorded: list[_Recorded], report: ReplayReport) -> None:
        self.recorded = recorded
        self.head = 0  # the next unpaired recorded command
        self.report = report

    def pair(self, now: CommandRecord, at: int, event_type: str, *, any_event: bool) -> ReplayEntry:
        """The entry of ``now``, sent while handling the event at ``at``.

        ``any_event``: the agent was being handed every event (callbacks, a remote
        bot following the log), not only those delivered to ``on_event``.
        """
        paired: _Recorded | None = None
        if self.head < len(self.recorded):
            candidate = self.recorded[self.head]
            then = candidate.record
            prev = candidate.prev_any if any_event else candidate.prev_delivered
            if at < then.sequence and (not compare(then, now) or prev <= at):
                paired = candidate
                self.head += 1
        if paired is None:
            entry = ReplayEntry(at, event_type, "new", None, now)
        else:
            changes = compare(paired.record, now)
            outcome: Outcome = "different" if changes else "same"
            entry = ReplayEntry(at, event_type, outcome, paired.record, now, changes)
        self._enter(entry)
        return entry

    def close_before(self, sequence: int, at: int, event_type: str) -> None:
        """Recorded commands stored up to ``sequence`` that nothing answered: missing
        (reported at ``at``, the last event handed before them; 0: their own)."""
        recorded = self.recorded
        while self.head < len(recorded) and recorded[self.head].record.sequence <= sequence:
            then = recorded[self.head].record
            self.head += 1
            if at:
                self._enter(ReplayEntry(at, event_type, "missing", then, None))
            else:
                self._enter(ReplayEntry(then.sequence, "-", "missing", then, None))

    def _enter(self, entry: ReplayEntry) -> None:
        if entry.sequence >= self.report.first:
            self.report.entries.append(entry)


class _Replay:
    """Hands the recorded events to the behaviour and pairs its commands (see the module)."""

    def __init__(
        self,
        session_id: str,
        agent_id: str,
        factory: BehaviourFactory,
        recorded: list[_Recorded],
        report: ReplayReport,
    ) -> None:
        self.session_id = session_id
        self.agent_id = agent_id
        self.factory = factory
        self.pairer = Pairer(recorded, report)
        self.report = report
        self.state = SessionState(session_id)
        self.session = RecordingSession(self)
        self.behaviour: Agent | None = None
        self.context: AgentContext | None = None
        self.agent: AgentState | None = None
        self.current: Envelope | None = None  # the event being handed
        self.last_handed: Envelope | None = None
        self.recording = True

    def _clock(self) -> datetime:
        return self.current.occurred_at if self.current is not None else utc_now()

    # -- commands -----------------------------------------------------------------

    def issue(self, command: Command) -> CommandResult:
        if not isinstance(command, Command):
            raise InvalidCommand(f"not a command: {type(command).__name__}")
        now = record_of_command(command)
        trigger = self.current
        if not self.recording or trigger is None:  # teardown at the end of the range
            return _answer(self._decide(command, now)[0])
        at = trigger.sequence or 0
        hooks = bool(self.session._hooks)
        entry = self.pairer.pair(now, at, trigger.type_name, any_event=hooks)
        if entry.outcome == "same":
            assert entry.then is not None
            then = entry.then
            if then.refused:
                refusal = refusal_of(then.events[-1])
                if refusal is not None:
                    raise refusal
            return CommandResult(command.command_id, self.session_id, then.events)
        answer, decided = self._decide(command, now)
        if decided is not now and self.report.entries and self.report.entries[-1] is entry:
            self.report.entries[-1] = dataclasses.replace(entry, now=decided)
        return _answer(answer)

    def _decide(
        self, command: Command, now: CommandRecord
    ) -> tuple[CommandResult | CommandRejected, CommandRecord]:
        """The replayed state's answer to a command the log does not hold as it is."""
        if isinstance(command, DataQuery):
            return CommandResult(command.command_id, self.session_id, ()), now
        at = self._clock()
        try:
            _, events = decide_authorized(self.state, command, now=at)
        except CommandRejected as exc:
            return exc, dataclasses.replace(now, refused=str(exc))
        correlation = command.correlation_id or command.command_id
        envelopes = tuple(
            Envelope(
                event,
                self.session_id,
                new_id(),
                command.command_id,
                correlation,
                at,
                command.issued_by,
            )
            for event in events
        )
        return CommandResult(command.command_id, self.session_id, envelopes), now

    # -- events -------------------------------------------------------------------

    def feed(self, envelope: Envelope) -> None:
        sequence = envelope.sequence or 0
        self._close_before(sequence)
        self.state = evolve(self.state, envelope)
        self.current = envelope
        event = envelope.event
        handed = False
        hooks = list(self.session._hooks.values())  # those registered before this event
        if isinstance(event, AgentAttached) and event.agent_id == self.agent_id:
            self._start(event)
        for hook in hooks:
            handed = True
            try:
                hook(envelope)
            except Exception as exc:
                name = getattr(hook, "__qualname__", repr(hook))
                self.session._hook_failures.append(HookFailure(sequence, name, repr(exc)))
                self._fail(sequence, f"on_change callback {name}", exc)
        if self.behaviour is not None and _delivered(self.agent_id, event):
            handed = True
            assert self.agent is not None
            self.agent = evolve_agent(self.agent, envelope)
            self._call("on_event", envelope)
        if _ends(self.agent_id, event) and self.behaviour is not None:
            reason = event.reason if isinstance(event, AgentDetached) else "session ended"
            self._call("teardown", reason)
            self.behaviour = self.context = self.agent = None
        if handed:
            self.last_handed = envelope
            if sequence >= self.report.first:
                self.report.handed += 1

    def _start(self, event: AgentAttached) -> None:
        try:
            self.behaviour = _make(self.factory, event.agent_id, event.kind)
        except Exception as exc:
            log.exception("replay of %s: the behaviour factory failed", self.agent_id)
            self._fail(self.state.sequence, "the behaviour factory", exc)
            self.behaviour = Agent()
        self.context = AgentContext(
            self.session_id,
            event.agent_id,
            event.kind,
            event.name,
            self.session,
            "attached",
            self._clock,
        )
        self.agent = AgentState(
            event.agent_id, event.kind, event.name, attached=True, sequence=self.state.sequence
        )
        self._call("setup")

    def _call(self, hook: str, *args: Any) -> None:
        assert self.behaviour is not None and self.context is not None
        try:
            getattr(self.behaviour, hook)(self.context, *args)
        except Exception as exc:
            sequence = self.current.sequence or 0 if self.current is not None else 0
            self._fail(sequence, hook, exc)

    def _fail(self, sequence: int, hook: str, exc: BaseException) -> None:
        message = f"sequence {sequence}: {hook} raised {exc!r}"
        log.info("replay of %s: %s", self.agent_id, message)
        if sequence >= self.report.first:
            self.report.failures.append(message)

    def _close_before(self, sequence: int) -> None:
        at = self.last_handed
        if at is None:
            self.pairer.close_before(sequence, 0, "-")
        else:
            self.pairer.close_before(sequence, at.sequence or 0, at.type_name)

    def finish(self, quit: bool) -> None:
        """End of the range: close what is left (unless quit), tear a running agent down."""
        if not quit:
            self._close_before(self.report.last)
        self.recording = False
        if self.behaviour is not None:
            self._call("teardown", "replay ended")
            self.behaviour = self.context = self.agent = None


def _answer(answer: CommandResult | CommandRejected) -> CommandResult:
    if isinstance(answer, CommandRejected):
        raise answer
    return answer


def _make(factory: BehaviourFactory, agent_id: str, kind: str) -> Agent:
    if isinstance(factory, type) and issubclass(factory, Agent):
        return factory()
    made: object = cast(Callable[[str, str], object], factory)(agent_id, kind)
    if not isinstance(made, Agent):
        raise TypeError(f"the behaviour factory made a {type(made).__name__}, not an Agent")
    return made


# -- breakpoints ------------------------------------------------------------------------


# -- entry points -----------------------------------------------------------------------


async def _take(reader: AsyncGenerator[Envelope, None], n: int) -> list[Envelope]:
    batch: list[Envelope] = []
    async for envelope in reader:
        batch.append(envelope)
        if len(batch) >= n:
            break
    return batch


def replay_agent(
    pg: Plantangenet,
    session_id: str,
    agent_id: str,
    behaviour: BehaviourFactory,
    *,
    start: Position | None = None,
    stop: Position | None = None,
    breakpoint: Callable[[Envelope], bool] | None = None,
    on_break: OnBreak | None = None,
    step: bool = False,
    progress: Callable[[int, int], None] | None = None,
) -> ReplayReport:
    """Replay ``agent_id``'s behaviour against ``session_id``'s log; compare its commands.

    :param behaviour: an :class:`Agent` subclass or an agent factory
        ``(agent_id, kind) -> Agent``; each lifetime of the agent gets a new one.
    :param start: report from the event this position resolves to on (the events
        before it are still handed to the agent, so its memory is as it was, but its
        commands there are not compared). Default: the session's first event.
    :param stop: replay up to and including the event this position resolves to
        (default: the session's last event when the replay starts).
    :param breakpoint: stop before each event of the reported range it matches
        (e.g. an :class:`EventFilter`) and call ``on_break``; ``step`` stops before
        the first event too. ``on_break`` answers ``"continue"``, ``"step"`` (stop
        before the next event) or ``"quit"``.
    :param progress: ``progress(sequence, end)`` as the replay reads the log (see
        :meth:`~plantangenet.log.journal.Journal.read`).

    Nothing is written to any session. Blocks the calling thread (the behaviour runs
    on it); the log is read on the runtime's loop.

    :raises UnknownSession, UnknownPosition: nothing to replay there.
    :raises UnknownAgent: the agent is never attached in that range.
    """
    check_id(session_id, "session_id")
    check_id(agent_id, "agent_id")
    journal = pg.journal
    end = pg.run(journal.last_sequence(session_id))
    if end == 0:
        raise UnknownSession(f"no events for session {session_id!r}")
    last = pg.run(resolve(journal, session_id, stop)) if stop is not None else end
    first = pg.run(resolve(journal, session_id, start)) if start is not None else 0
    # The agent's commands to the end of the log: its answer to an event of the range
    # may be stored after the range.
    recorded: list[_Recorded] = pg.run(_scan(journal, session_id, agent_id, end))
    report = ReplayReport(session_id, agent_id, first, last)
    replay = _Replay(session_id, agent_id, behaviour, recorded, report)
    stepping = step
    quit = False
    attached = False
    reader = journal.read(session_id, to_sequence=last, progress=progress)
    try:
        while not quit:
            batch: list[Envelope] = pg.run(_take(reader, 256))
            if not batch:
                break
            for envelope in batch:
                sequence = envelope.sequence or 0
                if report.first == 0:
                    report.first = first = sequence
                if (
                    sequence >= first
                    and on_break is not None
                    and (stepping or (breakpoint is not None and breakpoint(envelope)))
                ):
                    action = on_break(envelope, replay.state, report)
                    if action == "quit":
                        quit = report.quit = True
                        report.last = replay.state.sequence
                        break
                    stepping = action == "step"
                attached = attached or _starts(agent_id, envelope.event)
                replay.feed(envelope)
    finally:
        pg.run(reader.aclose())
    replay.finish(quit)
    if not attached:
        raise UnknownAgent(
            f"agent {agent_id!r} is never attached to session {session_id!r} "
            f"up to sequence {last}: nothing to replay"
        )
    return report


__all__ = [
    "BreakAction",
    "CommandRecord",
    "EventFilter",
    "FieldChange",
    "NotReplayable",
    "Pairer",
    "RecordingSession",
    "ReplayEntry",
    "ReplayReport",
    "compare",
    "describe_break",
    "record_of_command",
    "record_of_events",
    "replay_agent",
]
