"""A bot's commands as the log records them, and comparing two.

:func:`record_of_command` turns a command a behaviour issues now, and
:func:`record_of_events` the events its command left then, into a
:class:`CommandRecord` of the same shape; :func:`compare` tells whether they are
the same (:class:`FieldChange` s otherwise). Used by :mod:`plantangenet.timetravel.botreplay`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any, Literal, cast

from plantangenet.actors.session import refusal_of
from plantangenet.domain.commands import Command, fingerprint
from plantangenet.errors import PlantangenetError
from plantangenet.events.envelope import Envelope
from plantangenet.projections.views import plain

Outcome = Literal["same", "different", "new", "missing"]


#: Events a refused command leaves in the log (its only event).
_REFUSALS = frozenset({"AccessDenied", "ChargeRefused"})


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
