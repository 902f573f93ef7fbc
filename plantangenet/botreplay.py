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
fingerprint (:func:`plantangenet.commands.fingerprint`, stored on a command's first
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
:mod:`plantangenet.fork`).

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

import concurrent.futures
import contextlib
import dataclasses
import fnmatch
import logging
from collections.abc import AsyncGenerator, Callable, Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Literal, cast

import pykka

from plantangenet.actors.agent import Agent, AgentContext
from plantangenet.actors.future import ReplyFuture
from plantangenet.actors.session import CommandResult, HookFailure, OnChange, refusal_of
from plantangenet.commands import Command, DataQuery, fingerprint
from plantangenet.decide import check_id, decide_authorized
from plantangenet.errors import (
    CommandRejected,
    InvalidCommand,
    PlantangenetError,
    UnknownAgent,
    UnknownSession,
)
from plantangenet.events.base import Event
from plantangenet.events.envelope import Envelope, new_id, utc_now
from plantangenet.events.session import AgentAttached, AgentDetached, SessionEnded
from plantangenet.handle import SessionHandle, Subscription
from plantangenet.history import Position, describe_state, fork_origin, resolve
from plantangenet.journal import Journal
from plantangenet.projections.agent import AgentState, evolve_agent
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.session import CursorView, SessionState, evolve
from plantangenet.runtime import Plantangenet
from plantangenet.views import describe, plain

log = logging.getLogger("plantangenet.botreplay")

Outcome = Literal["same", "different", "new", "missing"]
#: What a breakpoint answers: go on to the next breakpoint, stop before the next
#: event, or end the replay there.
BreakAction = Literal["continue", "step", "quit"]
#: Makes an agent's behaviour: an :class:`Agent` subclass (called with no arguments)
#: or an agent factory ``(agent_id, kind) -> Agent`` as the runtime takes.
BehaviourFactory = Callable[..., Agent]

#: Events a refused command leaves in the log (its only event).
_REFUSALS = frozenset({"AccessDenied", "ChargeRefused"})
#: Events that are about no agent in particular go to every agent (see SessionActor._stored).
_EVERYONE = object()

_REGION = ("agent_id", "cursor_id", "axes", "start", "end", "resolution")


def _same(*names: str) -> tuple[tuple[str, str], ...]:
    return tuple((name, name) for name in names)


#: The event a command's kind is read from (its last event), the command's kind, and
#: (command field, event field) pairs the log keeps of it.
_SHAPES: dict[str, tuple[str, tuple[tuple[str, str], ...]]] = {
    "CursorMoved": ("MoveCursor", _same(*_REGION)),
    "CursorAdded": ("AddCursor", _same(*_REGION)),
    "CursorRemoved": ("RemoveCursor", _same("agent_id", "cursor_id")),
    "AgentDetached": ("DetachAgent", _same("agent_id", "reason")),
    "AgentAttached": ("AttachAgent", _same("agent_id", "kind", "name")),
    "AgentBound": ("BindAgent", (*_same("agent_id"), ("bound_to", "principal"))),
    "SessionStarted": ("StartSession", _same("metadata")),
    "SessionMetadataChanged": ("ChangeMetadata", _same("changed", "removed")),
    "PolicyChanged": ("ChangePolicy", ()),  # the fingerprint compares it
    "IdentityBound": ("BindIdentity", _same("identity_id", "display_name", "attributes")),
    "RoleGranted": ("GrantRole", _same("agent_id", "role")),
    "RoleRevoked": ("RevokeRole", _same("agent_id", "role")),
    "SessionEnded": ("EndSession", _same("reason")),
    "CompositorRegistered": ("RegisterCompositor", _same("name", "description")),
    "DisclosureMade": ("QueryCursor", _same("agent_id", "cursor_id", "compositor")),
    "PricesChanged": ("SetPrices", _same("prices")),
    "DustDeposited": ("DepositDust", _same("account", "amount", "memo")),
    "DustGranted": ("GrantDust", _same("source", "target", "amount", "memo")),
    "ChemProposed": ("ProposeChem", _same("chem_id", "peer", "proposed_by")),
    "ChemAccepted": ("AcceptChem", _same("chem_id", "accepted_by")),
    "ChemRefused": ("RefuseChem", _same("chem_id", "refused_by", "reason")),
    "ChemRevoked": ("RevokeChem", _same("chem_id", "revoked_by", "reason")),
    "ChemQueried": ("QueryChem", _same("chem_id", "agent_id", "axes", "start", "end")),
    "OwnerAdded": ("AddOwner", (("owner", "principal"),)),
    "OwnerRemoved": ("RemoveOwner", (("owner", "principal"),)),
    "MessageQuarantined": ("QuarantineMessage", _same("sequence", "reason")),
    "RefusalsSuppressed": ("SummariseRefusals", (("refused", "principal"), *_same("count"))),
}
#: The fields compared for each command kind (besides ``issued_by``).
_FIELDS: dict[str, tuple[str, ...]] = {
    kind: tuple(c for c, _ in pairs) for kind, pairs in _SHAPES.values()
}
_FIELDS["DiscloseChem"] = ("agent_id", "compositor")
#: Command fields that are not what it asks for (``context`` only the fingerprint keeps).
_NOT_CONTENT = frozenset({"command_id", "correlation_id", "issued_by", "context", "principal"})


class NotReplayable(PlantangenetError):
    """The replayed behaviour used something a replay cannot give it (e.g. ``query``)."""


# -- commands as the log and the replay see them --------------------------------------


def _norm(value: Any) -> Any:
    """A value in the form both sides compare in: sequences as tuples, mappings as dicts."""
    if isinstance(value, str | bytes):
        return value
    if isinstance(value, Mapping):
        return {k: _norm(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return tuple(_norm(v) for v in value)
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class CommandRecord:
    """One command as compared: its kind, issuer and the fields the log keeps of it.

    For a recorded command (*then*): ``command_id`` and ``sequence`` (its first
    event's stream sequence) and its ``events``; ``refused`` is the reason of the
    refusal the log recorded for it (its fields are then unknown). For a command
    of the replay (*now*): ``sequence`` 0, and ``refused`` the reason the replayed
    state would refuse it for, if it was not paired as same.
    """

    kind: str
    issued_by: str | None
    fields: Mapping[str, Any]
    fingerprint: bytes = b""
    command_id: str = ""
    sequence: int = 0
    refused: str = ""
    events: tuple[Envelope, ...] = ()
    #: Whether ``fields`` hold all of the command's content but its ``context`` (a
    #: command of the replay): then the fingerprint is not compared.
    complete: bool = False

    def describe(self) -> str:
        """``MoveCursor cursor_id=c axes=x start=1 end=2`` (fields that are set)."""
        parts = [self.kind]
        for key, value in self.fields.items():
            if value in (None, "", (), {}):
                continue
            shown = ",".join(map(str, value)) if isinstance(value, tuple) else value
            if isinstance(shown, float) and shown.is_integer():
                shown = f"{shown:g}"
            parts.append(f"{key}={shown}")
        if self.refused:
            parts.append(f"(refused: {self.refused})")
        return " ".join(str(p) for p in parts)

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly data."""
        return {
            "command": self.kind,
            "issued_by": self.issued_by,
            "fields": plain(self.fields),
            "command_id": self.command_id,
            "sequence": self.sequence or None,
            "refused": self.refused or None,
        }


def record_of_command(command: Command) -> CommandRecord:
    """A command sent during the replay, as compared with the log's."""
    kind = type(command).__name__
    content = tuple(
        f.name for f in dataclasses.fields(cast(Any, command)) if f.name not in _NOT_CONTENT
    )
    names = _FIELDS.get(kind, content)  # a kind the log keeps no fields of: all of it
    fields = {name: _norm(getattr(command, name, None)) for name in names}
    complete = set(content) <= set(names)
    return CommandRecord(
        kind,
        command.issued_by,
        fields,
        fingerprint(command),
        command.command_id,
        complete=complete,
    )


def record_of_events(envelopes: Sequence[Envelope]) -> CommandRecord:
    """A recorded command, read back from its events (those sharing its causation id).

    Its kind and fields come from its last event (a detach's cursor removals and a
    price's ``DustCharged`` come before it); a refusal (``AccessDenied``,
    ``ChargeRefused``) gives the command's kind and the reason only.
    """
    first, last = envelopes[0], envelopes[-1]
    event = last.event
    refused = ""
    shape = _SHAPES.get(last.type_name)
    if last.type_name in _REFUSALS:
        refusal = refusal_of(last)
        refused = str(refusal) if refusal is not None else last.type_name
        kind, fields = str(getattr(event, "command", "?")), {}
    elif shape is None:  # an event type this table does not know: its data, as is
        kind, fields = last.type_name, _norm(plain(event))
    else:
        kind, pairs = shape
        if kind == "QueryCursor" and getattr(event, "cursor_id", None) is None:
            kind, pairs = "DiscloseChem", _same("agent_id", "compositor")
        fields = {c: _norm(getattr(event, e, None)) for c, e in pairs}
    return CommandRecord(
        kind,
        first.agent_id,
        fields,
        first.fingerprint,
        first.causation_id,
        first.sequence or 0,
        refused,
        tuple(envelopes),
    )


@dataclasses.dataclass(frozen=True, slots=True)
class FieldChange:
    """A field of a command, then and now."""

    field: str
    then: Any
    now: Any

    def describe(self) -> str:
        return f"{self.field}: {_show(self.then)} -> {_show(self.now)}"


def _show(value: Any) -> str:
    if isinstance(value, float) and value.is_integer():
        return f"{value:g}"
    if isinstance(value, tuple):
        return "[" + ", ".join(_show(v) for v in value) + "]"
    return repr(value) if isinstance(value, str) else str(value)


def compare(then: CommandRecord, now: CommandRecord) -> tuple[FieldChange, ...]:
    """How ``now`` differs from ``then`` (empty: the same command).

    The kind, the issuer and the fields ``then`` has are compared (numbers by value:
    ``10`` is ``10.0``). When those do not hold all of a command's content (a policy
    change's statements, an attach's ``bound_to``, a refused command's fields), a
    fingerprint that differs is reported as ``content``. A ``context`` that differs
    alone is noticed only then.
    """
    changes: list[FieldChange] = []
    if then.kind != now.kind:
        changes.append(FieldChange("command", then.kind, now.kind))
    if then.issued_by != now.issued_by:
        changes.append(FieldChange("issued_by", then.issued_by, now.issued_by))
    if then.kind == now.kind:
        for key, value in then.fields.items():
            other = now.fields.get(key)
            if value != other:
                changes.append(FieldChange(key, value, other))
    partial = bool(then.refused) or not now.complete
    if (
        not changes
        and partial
        and then.fingerprint
        and now.fingerprint
        and then.fingerprint != now.fingerprint
    ):
        changes.append(
            FieldChange(
                "content (fields the log does not keep)",
                then.fingerprint.hex()[:12],
                now.fingerprint.hex()[:12],
            )
        )
    return tuple(changes)


# -- the report -------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True, slots=True)
class ReplayEntry:
    """One command, then and/or now, at the event the agent was handling.

    ``sequence`` and ``event_type`` name that event: the event it was handed when
    it sent the command now (same, different, new), or, for a missing command,
    the last event it had been handed before the log stored the command then.
    """

    sequence: int
    event_type: str
    outcome: Outcome
    then: CommandRecord | None
    now: CommandRecord | None
    changes: tuple[FieldChange, ...] = ()

    @property
    def diverged(self) -> bool:
        return self.outcome != "same"

    def to_dict(self) -> dict[str, Any]:
        return {
            "sequence": self.sequence,
            "event_type": self.event_type,
            "outcome": self.outcome,
            "then": None if self.then is None else self.then.to_dict(),
            "now": None if self.now is None else self.now.to_dict(),
            "changes": [
                {"field": c.field, "then": plain(c.then), "now": plain(c.now)} for c in self.changes
            ],
        }


@dataclasses.dataclass(slots=True)
class ReplayReport:
    """What a replay of an agent found: per event, its commands then and now."""

    session_id: str
    agent_id: str
    #: The stream sequences reported on (events before ``first`` only warm the agent up).
    first: int
    last: int
    entries: list[ReplayEntry] = dataclasses.field(default_factory=list)
    #: Events of the reported range handed to the agent (``on_event`` or its callbacks).
    handed: int = 0
    #: Hooks of the behaviour that raised: ``"sequence N: on_event raised ..."``.
    failures: list[str] = dataclasses.field(default_factory=list)
    #: Whether the replay was ended at a breakpoint before the end of the range.
    quit: bool = False
    #: The fork the commands now landed in (``replay-serve``), if any.
    fork_id: str | None = None

    @property
    def diverged(self) -> bool:
        """Whether any command differs, is new or missing, or a hook raised."""
        return bool(self.failures) or any(e.diverged for e in self.entries)

    @property
    def first_divergence(self) -> ReplayEntry | None:
        return next((e for e in self.entries if e.diverged), None)

    def count(self, outcome: Outcome) -> int:
        return sum(1 for e in self.entries if e.outcome == outcome)

    def to_dict(self) -> dict[str, Any]:
        first = self.first_divergence
        return {
            "session_id": self.session_id,
            "agent_id": self.agent_id,
            "first": self.first,
            "last": self.last,
            "handed": self.handed,
            "diverged": self.diverged,
            "first_divergence": None if first is None else first.sequence,
            "counts": {o: self.count(o) for o in ("same", "different", "new", "missing")},
            "failures": list(self.failures),
            "quit": self.quit,
            "fork_id": self.fork_id,
            "entries": [e.to_dict() for e in self.entries],
        }

    def describe(self) -> list[str]:
        """The report as lines of text."""
        then = sum(1 for e in self.entries if e.then is not None)
        now = sum(1 for e in self.entries if e.now is not None)
        where = f" (now in fork {self.fork_id})" if self.fork_id else ""
        lines = [
            f"replay of agent {self.agent_id} on session {self.session_id}{where}, sequences "
            f"{self.first}-{self.last}: {self.handed} events handed, "
            f"{then} commands then, {now} now"
        ]
        if self.entries:
            lines.append(f"{'SEQ':>6}  {'EVENT':<22}  {'OUTCOME':<9}  COMMAND")
        for e in self.entries:
            record = e.now if e.now is not None else e.then
            assert record is not None
            shown = record.describe()
            if e.outcome == "missing" and e.then is not None:
                shown += f" (stored then at {e.then.sequence})"
            lines.append(f"{e.sequence:>6}  {e.event_type:<22}  {e.outcome:<9}  {shown}")
            lines.extend(f"{'':>43}{c.describe()}" for c in e.changes)
        lines.extend(f"failure: {f}" for f in self.failures)
        if self.quit:
            lines.append("(quit at a breakpoint: the rest of the range was not replayed)")
        first = self.first_divergence
        if first is not None:
            lines.append(
                f"DIVERGED: first at sequence {first.sequence} ({first.outcome}); "
                f"{self.count('same')} same, {self.count('different')} different, "
                f"{self.count('new')} new, {self.count('missing')} missing"
            )
        elif self.failures:
            lines.append(f"DIVERGED: {len(self.failures)} hook failure(s)")
        else:
            lines.append(f"SAME: {self.count('same')} commands, as recorded")
        return lines


# -- the recording session handle -------------------------------------------------------


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


# -- the replay -------------------------------------------------------------------------


@dataclasses.dataclass(slots=True)
class _Recorded:
    """A command of the agent in the log, and where it stands in the replay."""

    record: CommandRecord
    #: The last event before it handed to the agent by delivery / by any callback,
    #: not counting the events of the agent's own commands.
    prev_delivered: int
    prev_any: int


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


@dataclasses.dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events a breakpoint stops before (every given criterion must match).

    ``types`` are glob patterns of event types (``Cursor*``); ``agent`` matches an
    event issued by or about the agent (as ``history --agent``); ``outcome``
    ``"denied"`` matches recorded refusals (``AccessDenied``, ``ChargeRefused``),
    ``"allowed"`` every other event.
    """

    types: tuple[str, ...] = ()
    agent: str | None = None
    outcome: Literal["allowed", "denied"] | None = None

    def __bool__(self) -> bool:
        return bool(self.types or self.agent is not None or self.outcome is not None)

    def __call__(self, envelope: Envelope) -> bool:
        if self.types and not any(fnmatch.fnmatchcase(envelope.type_name, t) for t in self.types):
            return False
        if self.agent is not None and self.agent not in (
            envelope.agent_id,
            getattr(envelope.event, "agent_id", None),
        ):
            return False
        if self.outcome is not None:
            denied = envelope.type_name in _REFUSALS
            if denied != (self.outcome == "denied"):
                return False
        return True


#: Called at a breakpoint with the event about to be handed, the session just before
#: it and the report so far; answers what to do next.
OnBreak = Callable[[Envelope, SessionState, ReplayReport], BreakAction]


def describe_break(
    envelope: Envelope, state: SessionState, report: ReplayReport, since: int = 0
) -> list[str]:
    """Lines shown at a breakpoint: the event next, the session just before it, and the
    agent's commands so far (those from entry ``since`` on, one by one)."""
    by = envelope.agent_id or "the owner"
    lines = [
        f"-- break before sequence {envelope.sequence}: {envelope.type_name} by {by} "
        f"at {envelope.occurred_at.isoformat()}",
        f"   {describe(envelope)}",
        *(f"   {line}" for line in describe_state(state)),
    ]
    for entry in report.entries[since:]:
        record = entry.now if entry.now is not None else entry.then
        assert record is not None
        lines.append(
            f"   {report.agent_id} at {entry.sequence}: {entry.outcome} {record.describe()}"
        )
        lines.extend(f"     {change.describe()}" for change in entry.changes)
    lines.append(
        f"   {report.agent_id} so far: {report.count('same')} same, "
        f"{report.count('different')} different, {report.count('new')} new, "
        f"{report.count('missing')} missing"
    )
    return lines


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
        :meth:`~plantangenet.journal.Journal.read`).

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
