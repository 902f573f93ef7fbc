"""Plain, JSON-friendly views of events and projections (for the CLI and the wire)."""

from __future__ import annotations

import dataclasses
from datetime import datetime
from typing import Any

from plantangenet.events.envelope import Envelope


def plain(value: Any) -> Any:
    """``value`` as JSON-friendly data (events, views, mappings, tuples, datetimes)."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {  # a field named _x is internal (e.g. a policy's role index): not data
            f.name: plain(getattr(value, f.name))
            for f in dataclasses.fields(value)
            if not f.name.startswith("_")
        }
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
    """A short human-readable summary of an event's content."""
    data = plain(envelope.event)
    parts = []
    for key, value in data.items():
        if value in ({}, [], None, ""):
            continue
        shown = ",".join(map(str, value)) if isinstance(value, list) else value
        parts.append(f"{key}={shown}")
    return " ".join(parts)
