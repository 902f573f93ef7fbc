"""``plantangenet explore SESSION_ID``: step through a session's history in a terminal.

Three layers, only the last of which touches curses:

* :class:`Timeline` — the model. It holds the session's events in log order
  (appended live), a cursor on one of them, the state folded up to and
  including the event under the cursor, and what that single event changed
  (:func:`diff_states`). A :class:`EventFilter` restricts which events the
  cursor stops on; the state still folds *every* event. Stepping forward folds
  incrementally; stepping backward re-folds from an in-memory checkpoint kept
  every ``checkpoint_every`` events (the log is never written to, and nothing
  is cached outside this process).
* :class:`Explorer` — keys to model actions, prompts and messages.
* :class:`ExplorerView` — the curses screen: the timeline on the left, the
  selected event, its changes and the state on the right, a status line.

:func:`run` is the entry point: it loads the history, follows the session
live (a :class:`LiveFeed` tails the log on the runtime's event loop and hands
events to the UI thread through a queue) and runs the screen until ``q``.
"""

from __future__ import annotations

import asyncio
import bisect
import contextlib
import curses
import dataclasses
import fnmatch
import json
import locale
import queue
import re
import sys
import textwrap
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from datetime import time as clock_time
from typing import TYPE_CHECKING, Any, Literal, TextIO

from plantangenet.decide import check_id
from plantangenet.errors import PlantangenetError, UnknownSession
from plantangenet.events.base import EVENTS
from plantangenet.events.envelope import Envelope
from plantangenet.history import Position, resolve
from plantangenet.policy import Policy, Statement
from plantangenet.projections.session import (
    AgentView,
    CursorView,
    IdentityView,
    SessionState,
    evolve,
)
from plantangenet.views import describe, plain

if TYPE_CHECKING:
    from plantangenet.runtime import Plantangenet

__all__ = [
    "Change",
    "EventFilter",
    "Explorer",
    "ExplorerView",
    "LiveFeed",
    "Timeline",
    "diff_states",
    "parse_jump",
    "run",
    "state_lines",
]

#: Events folded between two in-memory checkpoints of the state.
CHECKPOINT_EVERY = 256


# -- filter ---------------------------------------------------------------------------


def agents_of(envelope: Envelope) -> frozenset[str]:
    """The agents an event concerns: the one that issued it and the one it is about."""
    about = getattr(envelope.event, "agent_id", None)
    return frozenset(a for a in (envelope.agent_id, about) if isinstance(a, str))


@dataclasses.dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events the cursor stops on.

    ``types`` are event type names or ``fnmatch`` patterns (``Cursor*``),
    compared case-insensitively; ``agents`` are agent ids, matching an event
    issued by the agent or about it. An event matches when it matches one of
    the types (if any are given) *and* one of the agents (if any are given).
    """

    types: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> EventFilter:
        """From the prompt: type names or patterns and ``agent:ID``, comma or space separated.

        An empty text is no filter. Type names are checked against the known
        event types (and written the way they are registered).

        :raises ValueError: naming the unknown type or the empty agent id.
        """
        known = sorted(EVENTS.types())
        types: list[str] = []
        agents: list[str] = []
        for token in text.replace(",", " ").split():
            if token.lower().startswith("agent:"):
                agent = token[len("agent:") :]
                if not agent:
                    raise ValueError("agent: needs an agent id, e.g. agent:bot-1")
                agents.append(agent)
                continue
            pattern = token.lower()
            matched = [name for name in known if fnmatch.fnmatchcase(name.lower(), pattern)]
            if not matched:
                raise ValueError(f"no event type matches {token!r} (known: {', '.join(known)})")
            has_wildcard = any(c in token for c in "*?[")
            types.append(token if has_wildcard else matched[0])
        return cls(tuple(types), tuple(agents))

    def __bool__(self) -> bool:
        return bool(self.types or self.agents)

    def matches(self, envelope: Envelope) -> bool:
        """Whether the cursor stops on ``envelope``."""
        if self.types:
            name = envelope.type_name.lower()
            if not any(fnmatch.fnmatchcase(name, p.lower()) for p in self.types):
                return False
        return not self.agents or bool(agents_of(envelope) & set(self.agents))

    def __str__(self) -> str:
        parts = [*self.types, *(f"agent:{a}" for a in self.agents)]
        return " ".join(parts) if parts else "(none)"


# -- diff -------------------------------------------------------------------------------

ChangeKind = Literal["added", "removed", "changed"]


@dataclasses.dataclass(frozen=True, slots=True)
class Change:
    """One difference between two states: ``path`` was added, removed or changed.

    ``before`` is ``None`` for an addition, ``after`` for a removal; values are
    the projection's own (``CursorView``, ``AgentView``, role tuples...).
    """

    path: str
    kind: ChangeKind
    before: Any = None
    after: Any = None

    def __str__(self) -> str:
        render = _scalar if self.path.startswith("metadata.") else show
        if self.kind == "added":
            return f"+ {self.path} = {render(self.after)}"
        if self.kind == "removed":
            return f"- {self.path} (was {render(self.before)})"
        return f"~ {self.path}: {render(self.before)} -> {render(self.after)}"


def _diff_mapping(
    prefix: str, before: Mapping[str, Any], after: Mapping[str, Any], out: list[Change]
) -> None:
    for key in sorted(set(before) | set(after)):
        if key not in after:
            out.append(Change(f"{prefix}.{key}", "removed", before[key], None))
        elif key not in before:
            out.append(Change(f"{prefix}.{key}", "added", None, after[key]))
        elif before[key] != after[key]:
            out.append(Change(f"{prefix}.{key}", "changed", before[key], after[key]))


def _diff_value(path: str, before: Any, after: Any, out: list[Change]) -> None:
    if before == after:
        return
    if before is None:
        out.append(Change(path, "added", None, after))
    elif after is None:
        out.append(Change(path, "removed", before, None))
    else:
        out.append(Change(path, "changed", before, after))


def diff_states(before: SessionState, after: SessionState) -> list[Change]:
    """What changed from ``before`` to ``after`` (not counting sequence and event count)."""
    out: list[Change] = []
    _diff_value("status", before.status, after.status, out)
    _diff_value("end_reason", before.end_reason, after.end_reason, out)
    _diff_value("identity", before.identity, after.identity, out)
    _diff_mapping("metadata", before.metadata, after.metadata, out)
    _diff_mapping("agents", before.agents, after.agents, out)
    _diff_mapping("cursors", before.cursors, after.cursors, out)
    _diff_mapping("roles", before.roles, after.roles, out)
    if before.policy != after.policy:
        _diff_value("policy.version", before.policy.version, after.policy.version, out)
        _diff_mapping(
            "policy.statements",
            {s.id: s for s in before.policy.statements},
            {s.id: s for s in after.policy.statements},
            out,
        )
    return out


# -- text -------------------------------------------------------------------------------


def show(value: Any) -> str:
    """A compact one-line rendering of a projection value."""
    match value:
        case CursorView(agent_id=agent, axes=axes, start=start, end=end):
            return f"{agent} {','.join(axes)} [{start:g}, {end:g}]"
        case AgentView(kind=kind, name=name, attached_at=at):
            return f"{kind} {json.dumps(name, ensure_ascii=False)} (attached at seq {at})"
        case IdentityView(identity_id=identity, display_name=name, attributes=attributes):
            attrs = " ".join(f"{k}={_scalar(v)}" for k, v in sorted(attributes.items()))
            return f"{identity} {json.dumps(name, ensure_ascii=False)} {attrs}".rstrip()
        case Statement():
            return _statement(value)
        case Policy(version=version, statements=statements):
            return f"v{version} ({len(statements)} statements)"
        case tuple() if all(isinstance(v, str) for v in value):
            return ",".join(value) or "(none)"
        case str():
            return value
        case _:
            return _scalar(value)


def _scalar(value: Any) -> str:
    try:
        return json.dumps(plain(value), ensure_ascii=False, sort_keys=True)
    except (TypeError, ValueError):
        return repr(value)


def _statement(s: Statement) -> str:
    text = f"{s.effect} actions={','.join(s.actions)} resources={','.join(s.resources)}"
    if s.roles:
        text += f" roles={','.join(s.roles)}"
    for c in s.conditions:
        text += f" if {c.key} {c.op} {_scalar(c.value)}"
    return text


def state_lines(state: SessionState) -> list[str]:
    """The state as indented text lines (for the right-hand pane)."""
    lines = [f"status: {state.status}  (seq {state.sequence}, {state.event_count} events)"]
    if state.end_reason is not None:
        lines.append(f"ended: {state.end_reason}")
    if state.identity is not None:
        lines.append(f"identity: {show(state.identity)}")
    lines.append(f"metadata ({len(state.metadata)}):")
    lines += [f"  {k} = {_scalar(v)}" for k, v in sorted(state.metadata.items())]
    lines.append(f"agents ({len(state.agents)}):")
    for agent_id, agent in sorted(state.agents.items()):
        roles = state.roles_of(agent_id)
        held = f"  roles: {','.join(roles)}" if roles else ""
        lines.append(f"  {agent_id}  {show(agent)}{held}")
    lines.append(f"cursors ({len(state.cursors)}):")
    lines += [f"  {cid}  {show(c)}" for cid, c in sorted(state.cursors.items())]
    policy = state.policy
    lines.append(f"policy v{policy.version} ({len(policy.statements)} statements):")
    lines += [f"  {s.id}  {_statement(s)}" for s in policy.statements]
    return lines


def timeline_row(envelope: Envelope, *, compact: bool = False) -> str:
    """One event as a row of the left-hand column: sequence, time, type, agent.

    ``compact`` leaves the time out (for narrow terminals).
    """
    at = envelope.occurred_at.astimezone(UTC)
    when = "" if compact else f"{at:%m-%d %H:%M:%S}  "
    return f"{envelope.sequence or 0:>6}  {when}{envelope.type_name:<22} {envelope.agent_id or '-'}"


def event_lines(envelope: Envelope) -> list[str]:
    """The selected event: header, time, who, and its content."""
    at = envelope.occurred_at.astimezone(UTC)
    lines = [
        f"seq {envelope.sequence}  {envelope.type_name}  by {envelope.agent_id or '(owner)'}",
        f"at {at.isoformat()}",
    ]
    details = describe(envelope)
    if details:
        lines.append(f"  {details}")
    return lines


# -- the model ----------------------------------------------------------------------------


class Timeline:
    """A session's events, a cursor on one of them, and the state folded up to it.

    :param session_id: the session (its initial state is ``SessionState(session_id)``).
    :param envelopes: events already read, in log order.
    :param checkpoint_every: keep the folded state every this many events, so
        stepping backward re-folds at most this many events.

    ``index`` is the selected event's position (``-1``: none, before the first
    event); :attr:`state` is ``fold(events[: index + 1])`` and :attr:`before`
    ``fold(events[:index])``. On creation the cursor is on the first event.
    """

    def __init__(
        self,
        session_id: str,
        envelopes: Iterable[Envelope] = (),
        *,
        checkpoint_every: int = CHECKPOINT_EVERY,
    ) -> None:
        if checkpoint_every < 1:
            raise ValueError("checkpoint_every must be at least 1")
        self.session_id = session_id
        self.follow = False
        self._every = checkpoint_every
        self._events: list[Envelope] = []
        self._sequences: list[int] = []
        self._filter = EventFilter()
        self._matching: list[int] = []
        initial = SessionState(session_id)
        self._checkpoints: list[SessionState] = [initial]  # [j]: fold of the first j * every
        self._index = -1
        self._before = initial
        self._state = initial
        self._changes: list[Change] | None = None
        self.extend(envelopes)
        if self._matching:
            self.select(self._matching[0])

    # -- reading ---------------------------------------------------------------

    def __len__(self) -> int:
        return len(self._events)

    @property
    def events(self) -> Sequence[Envelope]:
        """Every event loaded so far, in log order."""
        return self._events

    @property
    def index(self) -> int:
        """Position of the selected event in :attr:`events` (``-1`` before the first)."""
        return self._index

    @property
    def selected(self) -> Envelope | None:
        """The event under the cursor."""
        return self._events[self._index] if self._index >= 0 else None

    @property
    def state(self) -> SessionState:
        """The session right after the selected event (every earlier event folded in)."""
        return self._state

    @property
    def before(self) -> SessionState:
        """The session right before the selected event."""
        return self._before

    @property
    def changes(self) -> list[Change]:
        """What the selected event changed."""
        if self._changes is None:
            self._changes = diff_states(self._before, self._state)
        return self._changes

    @property
    def filter(self) -> EventFilter:
        """Which events the cursor stops on."""
        return self._filter

    @property
    def matching(self) -> Sequence[int]:
        """Positions of the events the cursor stops on, in order."""
        return self._matching

    @property
    def at_end(self) -> bool:
        """Whether no event the cursor stops on comes after the selected one."""
        return not self._matching or self._matching[-1] <= self._index

    def position(self) -> int:
        """How many of the :attr:`matching` events come before the selected one."""
        return bisect.bisect_left(self._matching, self._index)

    # -- feeding ----------------------------------------------------------------

    def append(self, envelope: Envelope) -> bool:
        """Add a newer event; an event at or before the last sequence is ignored.

        In :attr:`follow` mode, if the cursor was at the end, it moves to the
        new event (when the filter lets it stop there).
        """
        sequence = envelope.sequence
        if sequence is None:
            raise ValueError("only stored events (with a sequence) belong on a timeline")
        if self._sequences and sequence <= self._sequences[-1]:
            return False
        was_at_end = self.at_end
        self._events.append(envelope)
        self._sequences.append(sequence)
        index = len(self._events) - 1
        if self._filter.matches(envelope):
            self._matching.append(index)
            if self.follow and was_at_end:
                self.select(index)
        return True

    def extend(self, envelopes: Iterable[Envelope]) -> int:
        """:meth:`append` each; returns how many were new."""
        return sum(self.append(e) for e in envelopes)

    # -- moving -------------------------------------------------------------------

    def select(self, index: int) -> None:
        """Put the cursor on ``events[index]`` (whether or not the filter matches it)."""
        if not 0 <= index < len(self._events):
            raise IndexError(f"no event at position {index}")
        if index == self._index:
            return
        before = self._fold_to(index)
        state = evolve(before, self._events[index])
        self._remember(index + 1, state)
        self._index, self._before, self._state = index, before, state
        self._changes = None

    def step(self, delta: int) -> bool:
        """Move ``delta`` matching events forward (``+``) or backward (``-``).

        Stops at either end; returns whether the cursor moved.
        """
        matching = self._matching
        if delta > 0:
            after = bisect.bisect_right(matching, self._index)
            if after >= len(matching):
                return False
            self.select(matching[min(after + delta - 1, len(matching) - 1)])
            return True
        if delta < 0:
            earlier = bisect.bisect_left(matching, self._index)
            if earlier == 0:
                return False
            self.select(matching[max(earlier + delta, 0)])
            return True
        return False

    def first(self) -> bool:
        """To the first matching event; returns whether there is one."""
        if not self._matching:
            return False
        self.select(self._matching[0])
        return True

    def last(self) -> bool:
        """To the last matching event; returns whether there is one."""
        if not self._matching:
            return False
        self.select(self._matching[-1])
        return True

    def jump_to_sequence(self, sequence: int) -> bool:
        """To the last matching event at or before stream ``sequence``.

        Returns ``False`` (and stays) if there is none.
        """
        upto = bisect.bisect_right(self._sequences, sequence) - 1
        at = bisect.bisect_right(self._matching, upto) - 1
        if upto < 0 or at < 0:
            return False
        self.select(self._matching[at])
        return True

    def jump_to_time(self, moment: datetime) -> bool:
        """To the last matching event that occurred at or before ``moment``.

        "Last" in time (the latest ``occurred_at`` not after ``moment``; on a tie,
        the later in the log), so clocks of several writers need not agree.
        A naive ``moment`` is UTC. Returns ``False`` (and stays) if there is none.
        """
        if moment.tzinfo is None:
            moment = moment.replace(tzinfo=UTC)
        best: int | None = None
        best_at: datetime | None = None
        for index in reversed(self._matching):
            at = self._events[index].occurred_at
            if at <= moment and (best_at is None or at > best_at):
                best, best_at = index, at
        if best is None:
            return False
        self.select(best)
        return True

    def set_filter(self, event_filter: EventFilter) -> None:
        """Stop only on events ``event_filter`` matches.

        The cursor stays if the selected event matches; otherwise it moves to
        the nearest matching event before it, else after it. If nothing
        matches, it stays where it is.
        """
        self._filter = event_filter
        self._matching = [i for i, e in enumerate(self._events) if event_filter.matches(e)]
        if not self._matching or self._index < 0:
            if self._index < 0:
                self.first()
            return
        at = bisect.bisect_right(self._matching, self._index) - 1
        if at >= 0 and self._matching[at] == self._index:
            return
        self.select(self._matching[max(at, 0)])

    def set_follow(self, on: bool) -> None:
        """Follow mode; turning it on moves the cursor to the last matching event."""
        self.follow = on
        if on:
            self.last()

    # -- folding ------------------------------------------------------------------

    def _fold_to(self, count: int) -> SessionState:
        """``fold(events[:count])`` from the nearest checkpoint or known state before it."""
        every = self._every
        j = min(count // every, len(self._checkpoints) - 1)
        start, state = j * every, self._checkpoints[j]
        known = [(self._index + 1, self._state)]
        if self._index >= 0:
            known.append((self._index, self._before))
        for known_count, known_state in known:
            if start < known_count <= count:
                start, state = known_count, known_state
        for i in range(start, count):
            state = evolve(state, self._events[i])
            self._remember(i + 1, state)
        return state

    def _remember(self, count: int, state: SessionState) -> None:
        if count % self._every == 0 and count // self._every == len(self._checkpoints):
            self._checkpoints.append(state)


# -- keys and prompts ---------------------------------------------------------------------


def parse_jump(text: str, reference: datetime | None = None) -> int | datetime:
    """A jump target: a stream sequence (``42`` or ``#42``) or an ISO time.

    A time of day alone (``14:03:07``) is on ``reference``'s date (UTC). A time
    without an offset is UTC.

    :raises ValueError: if ``text`` is neither.
    """
    text = text.strip()
    if re.fullmatch(r"#?\d+", text):
        return int(text.lstrip("#"))
    try:
        moment = datetime.fromisoformat(text)
    except ValueError:
        try:
            of_day = clock_time.fromisoformat(text)
        except ValueError:
            raise ValueError(f"not a sequence or an ISO time: {text!r}") from None
        day = (reference or datetime.now(UTC)).astimezone(UTC).date()
        moment = datetime.combine(day, of_day)
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=UTC)


Action = Literal["quit", "jump", "filter", "redraw", "details-down", "details-up"]

_NEXT = {curses.KEY_RIGHT, curses.KEY_DOWN, ord("l"), ord("n"), ord("j")}
_PREVIOUS = {curses.KEY_LEFT, curses.KEY_UP, ord("h"), ord("p"), ord("k")}
_FIRST = {curses.KEY_HOME, ord("<")}
_LAST = {curses.KEY_END, ord(">"), ord("G")}
_REDRAW = {12, curses.KEY_RESIZE}  # Ctrl-L

HELP = "n/Right next  p/Left previous  g jump  f filter  F follow  [ ] scroll details  q quit"


class Explorer:
    """What each key does to a :class:`Timeline` (no curses here but the key codes).

    :meth:`key` returns an :data:`Action` the screen must carry out (``"jump"``
    and ``"filter"`` ask it to prompt, then call :meth:`submit`), or ``None``.
    :attr:`message` is the last answer worth showing (an error, a refusal).
    """

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.message = ""
        #: Events one page key moves (the screen sets it to its height).
        self.page = 10

    def key(self, key: int) -> Action | None:
        """Do what ``key`` (a curses key code) means; returns what the screen must do."""
        t = self.timeline
        self.message = ""
        if key in _NEXT:
            if not t.step(1):
                self.message = "at the last event" + (" (following)" if t.follow else "")
        elif key in _PREVIOUS:
            if not t.step(-1):
                self.message = "at the first event"
        elif key == curses.KEY_NPAGE:
            t.step(self.page)
        elif key == curses.KEY_PPAGE:
            t.step(-self.page)
        elif key in _FIRST:
            t.first()
        elif key in _LAST:
            t.last()
        elif key == ord("F"):
            t.set_follow(not t.follow)
            self.message = "following new events" if t.follow else "not following"
        elif key == ord("g"):
            return "jump"
        elif key == ord("f"):
            return "filter"
        elif key == ord("q"):
            return "quit"
        elif key in _REDRAW:
            return "redraw"
        elif key == ord("]"):
            return "details-down"
        elif key == ord("["):
            return "details-up"
        return None

    def prompt_label(self, action: Action) -> str:
        """The prompt shown for ``action`` (``"jump"`` or ``"filter"``)."""
        if action == "jump":
            return "jump to sequence or ISO time: "
        return f"filter (types, agent:ID; empty clears) [{self.timeline.filter}]: "

    def submit(self, action: Action, text: str) -> None:
        """Carry out a prompt's answer (``text``) for ``action``."""
        t = self.timeline
        self.message = ""
        if action == "jump":
            if not text.strip():
                return
            selected = t.selected
            try:
                target = parse_jump(text, selected.occurred_at if selected else None)
            except ValueError as exc:
                self.message = str(exc)
                return
            if isinstance(target, int):
                if not t.jump_to_sequence(target):
                    self.message = f"no event at or before sequence {target}"
            elif not t.jump_to_time(target):
                self.message = f"no event at or before {target.isoformat()}"
        elif action == "filter":
            try:
                event_filter = EventFilter.parse(text)
            except ValueError as exc:
                self.message = str(exc)
                return
            t.set_filter(event_filter)
            if event_filter and not t.matching:
                self.message = f"no event matches {event_filter}"

    def status(self, live: str) -> str:
        """The status line."""
        t = self.timeline
        selected = t.selected
        parts = [
            f"event {t.index + 1}/{len(t)}",
            f"seq {selected.sequence}" if selected else "no event",
        ]
        if t.filter:
            parts.append(f"filter {t.filter}: {len(t.matching)} match")
        parts.append("FOLLOW" if t.follow else "follow off")
        parts.append(live)
        return " | ".join(parts)


# -- live feed ------------------------------------------------------------------------------


class LiveFeed:
    """Tails a session on the runtime's event loop; the UI thread :meth:`drain` s it.

    The only hand-off between the loop and the UI is a thread-safe queue.
    """

    def __init__(self, runtime: Plantangenet, session_id: str, *, from_sequence: int) -> None:
        self.runtime = runtime
        self.session_id = session_id
        self.from_sequence = from_sequence
        #: Why the tail stopped (``None`` while it runs).
        self.error: BaseException | None = None
        self._queue: queue.SimpleQueue[Envelope | BaseException] = queue.SimpleQueue()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> LiveFeed:
        """Start tailing (returns once the tail is scheduled on the runtime's loop)."""
        self._task = self.runtime.loop.run(self._spawn(), timeout=10)
        return self

    async def _spawn(self) -> asyncio.Task[None]:
        return asyncio.get_running_loop().create_task(self._pump())

    async def _pump(self) -> None:
        try:
            tail = self.runtime.journal.tail(self.session_id, from_sequence=self.from_sequence)
            async for envelope in tail:
                self._queue.put(envelope)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # reported on the status line, never fatal
            self._queue.put(exc)

    def drain(self, limit: int = 10_000) -> list[Envelope]:
        """The events that arrived since the last call (at most ``limit``)."""
        out: list[Envelope] = []
        while len(out) < limit:
            try:
                item = self._queue.get_nowait()
            except queue.Empty:
                break
            if isinstance(item, BaseException):
                self.error = item
            else:
                out.append(item)
        return out

    @property
    def state(self) -> str:
        """``live``, or why the tail stopped."""
        return "live" if self.error is None else f"live tail stopped: {self.error}"

    def stop(self, timeout: float = 5.0) -> None:
        """Stop the tail and wait (up to ``timeout``) for it to unsubscribe (idempotent)."""
        task, self._task = self._task, None
        if task is not None:
            with contextlib.suppress(RuntimeError, TimeoutError):  # the loop is already gone
                self.runtime.loop.run(_cancel(task), timeout)


async def _cancel(task: asyncio.Task[None]) -> None:
    task.cancel()
    await asyncio.wait({task})


# -- curses ---------------------------------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")


class ExplorerView:
    """The curses screen over an :class:`Explorer` (and its live feed, if any)."""

    def __init__(
        self, screen: curses.window, explorer: Explorer, feed: LiveFeed | None = None
    ) -> None:
        self.screen = screen
        self.explorer = explorer
        self.feed = feed
        self.top = 0  # first matching position shown in the left column
        self.details_top = 0  # first line shown in the right column
        self._details_of = -2  # the event whose details are shown (scroll resets on change)
        self._details_rows = 1
        self._encoding = getattr(screen, "encoding", None) or "utf-8"

    def run(self) -> None:
        screen = self.screen
        with contextlib.suppress(curses.error):
            curses.curs_set(0)
        with contextlib.suppress(AttributeError, curses.error):
            curses.set_escdelay(25)
        screen.keypad(True)
        screen.timeout(100)
        dirty = True
        while True:
            if self._pull():
                dirty = True
            if dirty:
                self.draw()
                dirty = False
            key = screen.getch()
            if key == -1:
                continue
            dirty = True
            action = self.explorer.key(key)
            if action == "quit":
                return
            if action == "redraw":
                screen.clearok(True)
            elif action == "details-down":
                self.details_top += max(self._details_rows // 2, 1)
            elif action == "details-up":
                self.details_top = max(self.details_top - max(self._details_rows // 2, 1), 0)
            elif action in ("jump", "filter"):
                text = self.prompt(self.explorer.prompt_label(action))
                if text is not None:
                    self.explorer.submit(action, text)

    def _pull(self) -> bool:
        if self.feed is None:
            return False
        before = self.feed.error
        added = self.explorer.timeline.extend(self.feed.drain())
        return added > 0 or self.feed.error is not before

    # -- drawing ----------------------------------------------------------------------

    def _put(self, y: int, x: int, text: str, attr: int = 0) -> None:
        height, width = self.screen.getmaxyx()
        if not (0 <= y < height and 0 <= x < width):
            return
        text = _CONTROL.sub("?", text)[: width - x]
        text = text.encode(self._encoding, "replace").decode(self._encoding, "replace")
        with contextlib.suppress(curses.error):  # writing the bottom-right cell "fails"
            self.screen.addstr(y, x, text, attr)

    def draw(self) -> None:
        screen = self.screen
        explorer = self.explorer
        timeline = explorer.timeline
        height, width = screen.getmaxyx()
        screen.erase()
        title = f" plantangenet explore  {timeline.session_id}  ({len(timeline)} events)"
        self._put(0, 0, title.ljust(width), curses.A_BOLD)
        body = max(height - 3, 1)
        left = max(min(width // 2, 64), min(width, 30))
        self._draw_timeline(1, body, left)
        for y in range(1, 1 + body):
            self._put(y, left, "|")
        self._draw_details(1, body, left + 2, width - left - 2)
        live = self.feed.state if self.feed is not None else "not live"
        self._put(height - 2, 0, (" " + explorer.status(live)).ljust(width), curses.A_REVERSE)
        message = explorer.message or HELP
        self._put(height - 1, 0, " " + message, curses.A_BOLD if explorer.message else 0)
        screen.refresh()

    def _draw_timeline(self, y0: int, rows: int, width: int) -> None:
        timeline = self.explorer.timeline
        compact = width < 56
        when = "" if compact else f"{'TIME (UTC)':<14}  "
        header = f" {'SEQ':>6}  {when}{'EVENT':<22} BY"
        self._put(y0, 0, header[:width].ljust(width - 1), curses.A_UNDERLINE)
        rows -= 1
        self.explorer.page = max(rows - 1, 1)
        matching = timeline.matching
        if not matching:
            self._put(y0 + 1, 0, "(no event matches the filter)" if timeline.filter else "")
            return
        at = min(timeline.position(), len(matching) - 1)
        if at < self.top:
            self.top = at
        elif at >= self.top + rows:
            self.top = at - rows + 1
        self.top = max(min(self.top, len(matching) - rows), 0)
        for row, index in enumerate(matching[self.top : self.top + rows]):
            selected = index == timeline.index
            row_text = timeline_row(timeline.events[index], compact=compact)
            text = (">" if selected else " ") + row_text
            text = text[: width - 1].ljust(width - 1)
            self._put(y0 + 1 + row, 0, text, curses.A_REVERSE if selected else 0)

    def _draw_details(self, y0: int, rows: int, x: int, width: int) -> None:
        if width < 10:
            return
        timeline = self.explorer.timeline
        selected = timeline.selected
        lines: list[tuple[str, int]] = []
        if selected is None:
            lines.append(("no event selected", curses.A_BOLD))
        else:
            head, *rest = event_lines(selected)
            lines.append((head, curses.A_BOLD))
            lines += [(line, 0) for line in rest]
            lines.append(("", 0))
            changes = timeline.changes
            lines.append((f"changes ({len(changes)}):", curses.A_BOLD))
            lines += [(f"  {c}", 0) for c in changes] or [("  (no change to the state)", 0)]
        lines.append(("", 0))
        lines.append((f"state after seq {timeline.state.sequence}:", curses.A_BOLD))
        lines += [(f"  {line}", 0) for line in state_lines(timeline.state)]
        text_width = width - 4  # the last columns show whether there is more above/below
        wrapped = [(piece, attr) for text, attr in lines for piece in _wrap(text, text_width)]
        if timeline.index != self._details_of:
            self._details_of, self.details_top = timeline.index, 0
        self._details_rows = rows
        self.details_top = max(min(self.details_top, len(wrapped) - rows), 0)
        shown = wrapped[self.details_top : self.details_top + rows]
        for y, (piece, attr) in enumerate(shown, start=y0):
            self._put(y, x, piece, attr)
        if self.details_top > 0:
            self._put(y0, x + width - 3, "[^]", curses.A_BOLD)
        if self.details_top + rows < len(wrapped):
            self._put(y0 + rows - 1, x + width - 3, "[v]", curses.A_BOLD)

    def prompt(self, label: str) -> str | None:
        """Read a line on the bottom row; ``None`` if cancelled with Escape."""
        screen = self.screen
        height, width = screen.getmaxyx()
        buffer = ""
        with contextlib.suppress(curses.error):
            curses.curs_set(1)
        try:
            while True:
                shown = (label + buffer)[-(width - 2) :]
                screen.move(height - 1, 0)
                screen.clrtoeol()
                self._put(height - 1, 0, shown)
                screen.refresh()
                try:
                    key = screen.get_wch()
                except curses.error:  # no key within the timeout
                    continue
                if key in ("\n", "\r", curses.KEY_ENTER):
                    return buffer
                if key == "\x1b":
                    return None
                if key in ("\x7f", "\b", curses.KEY_BACKSPACE):
                    buffer = buffer[:-1]
                elif key == "\x15":  # Ctrl-U
                    buffer = ""
                elif isinstance(key, str) and key.isprintable():
                    buffer += key
        finally:
            with contextlib.suppress(curses.error):
                curses.curs_set(0)


def _wrap(text: str, width: int) -> list[str]:
    if len(text) <= width:
        return [text]
    indent = " " * (len(text) - len(text.lstrip(" ")))
    return textwrap.wrap(
        text.strip(),
        width,
        initial_indent=indent,
        subsequent_indent=indent + "    ",
        break_on_hyphens=False,
    ) or [text[:width]]


# -- entry point ----------------------------------------------------------------------------


class _Progress:
    """Loading progress on a terminal, for sessions long enough to report it."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.enabled = stream.isatty()
        self.shown = False

    def __call__(self, at: int, end: int) -> None:
        if not self.enabled or (at >= end and not self.shown):
            return  # a short session: nothing to wait for
        self.shown = True
        self.stream.write(f"\rloading… sequence {at:,} of {end:,}")
        if at >= end:
            self.stream.write("\n")
        self.stream.flush()


def open_timeline(runtime: Plantangenet, session_id: str, at: Position | None = None) -> Timeline:
    """The session's history as a :class:`Timeline`, on its event at ``at`` (default: the
    last), as the explorer opens it (e.g. at a replay's breakpoint).

    :raises UnknownSession: the session has no events.
    :raises UnknownPosition: ``at`` names no event of the session.
    """
    check_id(session_id, "session_id")
    events = runtime.history(session_id, progress=_Progress(sys.stderr))
    if not events:
        raise UnknownSession(f"no events for session {session_id!r}")
    timeline = Timeline(session_id, events)
    if at is not None:
        sequence = runtime.run(resolve(runtime.journal, session_id, at))
        timeline.jump_to_sequence(sequence)
    return timeline


def run(runtime: Plantangenet, session_id: str, at: Position | None = None) -> int:
    """Explore ``session_id`` interactively on this terminal; returns the exit status (0).

    Loads the session's history (opened on the event at ``at``, default the last),
    follows it live, and runs the curses screen until ``q``.

    :raises UnknownSession: the session has no events.
    :raises PlantangenetError: standard input or output is not a terminal.
    """
    check_id(session_id, "session_id")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise PlantangenetError("explore needs an interactive terminal (try: history)")
    timeline = open_timeline(runtime, session_id, at)
    events = timeline.events
    last = events[-1].sequence or 0
    feed = LiveFeed(runtime, session_id, from_sequence=last + 1).start()
    try:
        with contextlib.suppress(locale.Error):
            locale.setlocale(locale.LC_ALL, "")
        curses.wrapper(lambda screen: ExplorerView(screen, Explorer(timeline), feed).run())
    finally:
        feed.stop()
    return 0
