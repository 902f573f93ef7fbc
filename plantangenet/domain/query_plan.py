"""Data queries: plan them, then shape what the compositor returned and record it.

A data query (:class:`~plantangenet.domain.commands.QueryCursor` through an
agent's cursor, :class:`~plantangenet.domain.commands.DiscloseChem` across a chem)
runs in three steps on the session actor:

1. :func:`plan` (pure) checks the query against the state: the cursor or
   chem, the compositor, the disclosure level of every axis (by the policy,
   for the agent whose view it is, or by the chem's terms) and the price.
   A denied axis refuses the query (``AccessRefused``, its ``AccessDenied``
   recorded); dust that cannot cover the price refuses it too
   (``InsufficientDust``, its ``ChargeRefused`` recorded). Nothing has been
   asked of the compositor yet.
2. The actor asks the compositor for the plan's region.
3. :func:`disclose` (pure) keeps only the samples the plan covers, shapes
   each by its axis's disclosure, and returns the events to store: the
   ``DustCharged`` (if priced) and the ``DisclosureMade``. The caller gets the
   data only once those events are stored.

The :class:`Compositor` protocol (and :func:`covers`) is what the session actor asks,
defined here, below the actors; compositors themselves live in
:mod:`plantangenet.data.compositors`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import NoReturn, Protocol, runtime_checkable

import msgpack

from plantangenet.domain.authorize import refuse, request_context
from plantangenet.domain.chem import active_chem, terms_for
from plantangenet.domain.commands import DataQuery, DiscloseChem, QueryCursor
from plantangenet.domain.disclosure import Disclosure, Level, Region, Sample, least, shape
from plantangenet.domain.dust import charge
from plantangenet.errors import (
    CompositorFailed,
    InvalidCommand,
    LimitExceeded,
    UnknownCompositor,
)
from plantangenet.events.base import Event
from plantangenet.events.disclosure import DisclosureMade
from plantangenet.events.envelope import Authorization
from plantangenet.events.session import AccessDenied
from plantangenet.projections.session import SessionState


@runtime_checkable
class Compositor(Protocol):
    """What a session needs of a data producer."""

    @property
    def name(self) -> str:
        """The name sessions register it under."""
        ...

    def query(self, region: Region) -> Sequence[Sample]:
        """The samples for ``region`` (axes, time interval, resolution)."""
        ...


def covers(watched: str, axis: str) -> bool:
    """Whether watching axis ``watched`` includes ``axis`` (itself or a dotted child)."""
    return axis == watched or (axis.startswith(watched) and axis[len(watched)] == ".")


QUERY_ACTION = "cursor.query"


CHEM_ACTION = "chem.disclose"


@dataclasses.dataclass(frozen=True, slots=True)
class Plan:
    """What a data query will ask for, and how much of the answer each axis discloses."""

    command: DataQuery
    compositor: str
    region: Region
    #: The disclosure of each axis of the region.
    disclosures: Mapping[str, Disclosure]
    #: Dust the payer is charged (0: free), and who pays (``None``: nobody).
    price: int
    payer: str | None
    agent_id: str
    cursor_id: str | None = None
    chem_id: str | None = None
    peer: str | None = None

    def disclosure_of(self, axis: str) -> Disclosure | None:
        """The disclosure for a sample of ``axis`` (the closest planned axis covering it)."""
        found = self.disclosures.get(axis)
        if found is not None:
            return found
        best: str | None = None
        for planned in self.disclosures:
            if covers(planned, axis) and (best is None or len(planned) > len(best)):
                best = planned
        return None if best is None else self.disclosures[best]


@dataclasses.dataclass(frozen=True, slots=True)
class Disclosed:
    """The data a query disclosed and the events that record it."""

    samples: tuple[Sample, ...]
    events: tuple[Event, ...]
    level: Level


def encoded_size(samples: Iterable[Sample]) -> int:
    """Bytes the samples take as msgpack maps (what a wire reply carries)."""
    return sum(len(msgpack.packb(s.to_dict(), use_bin_type=True)) for s in samples)


def plan(state: SessionState, command: DataQuery, now: datetime) -> tuple[Authorization, Plan]:
    """Check a data query against ``state``; raises a typed refusal (see the module docs)."""
    match command:
        case QueryCursor():
            return _plan_cursor(state, command, now)
        case DiscloseChem():
            return _plan_chem(state, command)
    raise InvalidCommand(f"unknown data query {type(command).__name__}")


def _compositor(state: SessionState, name: object) -> str:
    if not isinstance(name, str) or name not in state.compositors:
        raise UnknownCompositor(
            f"session {state.session_id!r} does not coordinate with compositor {name!r}"
        )
    return name


def _plan_cursor(
    state: SessionState, command: QueryCursor, now: datetime
) -> tuple[Authorization, Plan]:
    # Shape and existence (cursor, compositor) were checked by decide's common path.
    agent_id = command.agent_id
    cursor = state.cursors[command.cursor_id]
    compositor = _compositor(state, command.compositor)
    policy = state.policy
    roles = state.roles_of(agent_id)
    context = request_context(state, command, agent_id, now)
    disclosures: dict[str, Disclosure] = {}
    statements: list[str | None] = []
    for axis in cursor.axes:
        resource = f"axis.{axis}"
        decision, disclosure = policy.disclose(roles, QUERY_ACTION, resource, context)
        if not decision.allowed:
            _deny(
                state,
                command,
                agent_id,
                QUERY_ACTION,
                resource,
                decision.statement_id,
                decision.reason,
            )
        disclosures[axis] = disclosure
        statements.append(decision.statement_id)
    price = sum(state.price(QUERY_ACTION, d.level) for d in disclosures.values())
    charge(state, agent_id, price, QUERY_ACTION, type(command).__name__)  # refuses if short
    resources = tuple(f"axis.{axis}" for axis in cursor.axes)
    authorization = Authorization(QUERY_ACTION, resources, tuple(statements), policy.version)
    region = Region(cursor.axes, cursor.start, cursor.end, cursor.resolution)
    return authorization, Plan(
        command,
        compositor,
        region,
        disclosures,
        price,
        agent_id,
        agent_id,
        cursor_id=cursor.cursor_id,
    )


def _plan_chem(state: SessionState, command: DiscloseChem) -> tuple[Authorization, Plan]:
    chem = active_chem(state, command.chem_id)
    if command.peer != chem.peer:
        raise InvalidCommand(f"chem {chem.chem_id!r} is with {chem.peer!r}, not {command.peer!r}")
    compositor = _compositor(state, command.compositor)
    disclosures: dict[str, Disclosure] = {}
    price = 0
    for axis in command.axes:
        clause = terms_for(chem, state.session_id, axis)
        if clause is None:
            reason = f"chem {chem.chem_id!r} does not disclose {axis} to {chem.peer!r}"
            _deny(state, command, None, CHEM_ACTION, f"axis.{axis}", None, reason)
        disclosures[axis] = clause.disclosure
        price += clause.price
    resources = tuple(f"axis.{axis}" for axis in command.axes)
    authorization = Authorization(
        CHEM_ACTION, resources, (None,) * len(resources), state.policy.version
    )
    region = Region(command.axes, command.start, command.end, command.resolution)
    return authorization, Plan(
        command,
        compositor,
        region,
        disclosures,
        price,
        None,  # the asking session charged its agent
        command.agent_id,
        chem_id=chem.chem_id,
        peer=chem.peer,
    )


def _deny(
    state: SessionState,
    command: DataQuery,
    agent_id: str | None,
    action: str,
    resource: str,
    statement_id: str | None,
    reason: str,
) -> NoReturn:
    event = AccessDenied(
        agent_id,
        type(command).__name__,
        action,
        resource,
        statement_id,
        reason,
        state.policy.version,
    )
    refuse(event)


def disclose(
    state: SessionState, plan: Plan, samples: Iterable[Sample], *, max_samples: int
) -> Disclosed:
    """Shape ``samples`` by ``plan`` and the events that record it (pure).

    Samples outside the plan's axes or interval are dropped: a compositor
    never discloses more than was authorized. More than ``max_samples`` in
    the answer is a :class:`CompositorFailed` (nothing is recorded).
    """
    region = plan.region
    by_axis: dict[str, list[Sample]] = {}
    disclosures: dict[str, Disclosure | None] = {}
    seen = 0
    for sample in samples:
        seen += 1
        if seen > max_samples:
            raise CompositorFailed(
                f"compositor {plan.compositor!r} returned more than {max_samples} samples"
            )
        if not isinstance(sample, Sample):
            raise CompositorFailed(
                f"compositor {plan.compositor!r} returned {type(sample).__name__}, not a Sample"
            )
        axis = sample.axis
        if axis not in disclosures:
            disclosures[axis] = plan.disclosure_of(axis)
        if disclosures[axis] is None or not region.start <= sample.time <= region.end:
            continue
        group = by_axis.get(axis)
        if group is None:
            group = by_axis[axis] = []
        group.append(sample)
    shaped: list[Sample] = []
    for axis, group in by_axis.items():
        disclosure = disclosures[axis]
        assert disclosure is not None
        shaped.extend(shape(group, disclosure))
    max_bytes = getattr(plan.command, "max_bytes", None)
    if max_bytes is not None and (size := encoded_size(shaped)) > max_bytes:
        raise LimitExceeded(
            f"the answer holds {len(shaped)} samples ({size} bytes); this query takes at most "
            f"{max_bytes} bytes: narrow the cursor or coarsen its resolution"
        )
    level = least(plan.disclosures.values())
    events: list[Event] = []
    if plan.payer is not None:
        events.extend(
            charge(
                state,
                plan.payer,
                plan.price,
                QUERY_ACTION,
                type(plan.command).__name__,
                plan.cursor_id or plan.chem_id or "",
            )
        )
    events.append(
        DisclosureMade(
            plan.agent_id,
            plan.cursor_id,
            plan.compositor,
            level,
            {axis: d.level for axis, d in plan.disclosures.items()},
            len(shaped),
            plan.price,
            plan.chem_id,
            plan.peer,
        )
    )
    return Disclosed(tuple(shaped), tuple(events), level)
