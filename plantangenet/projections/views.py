"""Plain, JSON-friendly views of events and projections (for the CLI and the wire)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from plantangenet.events.envelope import Envelope

#: Dataclass -> the fields :func:`plain` and :func:`describe` show.
_SHOWN_FIELDS: dict[type, tuple[str, ...]] = {}


def _shown_fields(cls: type) -> tuple[str, ...]:
    """A field named ``_x`` is internal (e.g. a policy's role index): not data."""
    return tuple(f.name for f in dataclasses.fields(cls) if not f.name.startswith("_"))


def plain(value: Any) -> Any:
    """``value`` as JSON-friendly data (events, views, mappings, tuples, datetimes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        names = _SHOWN_FIELDS.get(type(value))
        if names is None:
            names = _SHOWN_FIELDS[type(value)] = _shown_fields(type(value))
        return {name: plain(getattr(value, name)) for name in names}
    if hasattr(value, "items"):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.hex()
    return value


def envelope_record(envelope: Envelope) -> dict[str, Any]:
    """One event as a flat JSON-friendly record."""
    return {
        "revision": envelope.revision,
        "sequence": envelope.sequence,
        "type": envelope.type_name,
        "version": envelope.event.version,
        "occurred_at": envelope.occurred_at.isoformat(),
        "session_id": envelope.session_id,
        "agent_id": envelope.agent_id,
        "principal": envelope.principal,
        "event_id": envelope.event_id,
        "causation_id": envelope.causation_id,
        "correlation_id": envelope.correlation_id,
        "previous_hash": envelope.previous_hash.hex(),
        "authorization": plain(envelope.authorization),
        "data": plain(envelope.event),
    }


def describe(envelope: Envelope) -> str:
    """A short human-readable summary of an event's content: ``field=value`` for each
    field with a value (empty strings, maps, lists and ``None`` left out), lists joined
    with commas, nested values as their :func:`plain` form."""
    event = envelope.event
    names = _SHOWN_FIELDS.get(type(event))
    if names is None:
        names = _SHOWN_FIELDS[type(event)] = _shown_fields(type(event))
    parts = []
    for key in names:
        value = getattr(event, key)
        kind = type(value)
        if kind is str:  # the common cases first, shown as plain() would show them
            if value:
                parts.append(f"{key}={value}")
            continue
        if kind is int or kind is float or kind is bool:
            parts.append(f"{key}={value}")
            continue
        if value is None:
            continue
        if kind is tuple and all(type(v) is str for v in value):
            if value:
                parts.append(f"{key}={','.join(value)}")
            continue
        value = plain(value)
        if value in ({}, [], None, ""):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return " ".join(parts)


#: ``"%Y-%m-%d %H:%M:%S"`` of the seconds :func:`clock_text` saw last (a log's events
#: crowd into few seconds: formatting each second once saves most of the work).
_SECONDS: dict[tuple[int, int, int, int, int, int], str] = {}


def clock_text(moment: datetime) -> str:
    """``moment`` as ``YYYY-MM-DD HH:MM:SS.ffffff`` (its own time zone's wall clock)."""
    key = (moment.year, moment.month, moment.day, moment.hour, moment.minute, moment.second)
    seconds = _SECONDS.get(key)
    if seconds is None:
        if len(_SECONDS) >= 4096:
            _SECONDS.clear()
        seconds = _SECONDS[key] = moment.strftime("%Y-%m-%d %H:%M:%S")
    return f"{seconds}.{moment.microsecond:06d}"
