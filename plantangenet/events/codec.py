"""The one place where envelopes become msgpack bytes and back.

Layout of a stored envelope (a msgpack map with short keys)::

    {"f": 1,                 # envelope format
     "t": "CursorMoved",     # event type name
     "v": 1,                 # event schema version
     "id": "...",            # event id
     "s": "...",             # session id
     "a": "..." | nil,       # agent id (issuer), if any
     "c": "...",             # causation id (the command)
     "r": "...",             # correlation id
     "at": 1732540000000000, # occurred at, microseconds since the epoch, UTC
     "p": b"...",            # SHA-256 of the session's previous event (b"" for the first)
     "z": {...} | nil,       # the authorization that let the command through
     "d": {...}}             # the event's fields

The stream sequence is not in the payload: the log assigns it, and
:meth:`EventCodec.decode` takes it from the message metadata.

Decoding never trusts its input. Malformed msgpack, a wrong layout, an
unknown type, a version with no upcaster, and missing, unknown or mistyped
fields all raise :class:`~plantangenet.errors.DecodeError` (or one of its
subclasses) with a message naming the field; nothing else escapes.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack

from plantangenet.errors import (
    DecodeError,
    EncodeError,
    PayloadTooLarge,
    PlantangenetError,
    UnknownEventType,
)
from plantangenet.events.base import EVENTS, EventRegistry
from plantangenet.events.envelope import Authorization, Envelope
from plantangenet.events.fields import compile_decoder, compile_encoder

#: The envelope layout written by this code.
ENVELOPE_FORMAT = 1
#: Default upper bound for one encoded envelope (the NATS default max payload is 1 MiB).
DEFAULT_MAX_EVENT_BYTES = 256 * 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_encode_authorization = compile_encoder(Authorization | None)
_decode_authorization = compile_decoder(Authorization | None)
#: Stored key -> the name errors use for it.
_ENVELOPE_FIELDS = {
    "f": "format",
    "t": "type",
    "v": "version",
    "id": "event_id",
    "s": "session_id",
    "a": "agent_id",
    "c": "causation_id",
    "r": "correlation_id",
    "at": "occurred_at",
    "p": "previous_hash",
    "z": "authorization",
    "d": "data",
}
_ENVELOPE_KEYS = frozenset(_ENVELOPE_FIELDS)


def _micros(moment: datetime) -> int:
    if moment.tzinfo is None:
        raise EncodeError("occurred_at: must be timezone-aware (UTC)", field="occurred_at")
    delta = moment - _EPOCH
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


class EventCodec:
    """Encodes envelopes to msgpack and decodes (and upcasts) them back.

    :param registry: where event types and upcasters are looked up.
    :param max_event_bytes: the largest envelope accepted in either direction.
    """

    def __init__(
        self,
        registry: EventRegistry = EVENTS,
        *,
        max_event_bytes: int = DEFAULT_MAX_EVENT_BYTES,
    ) -> None:
        self.registry = registry
        self.max_event_bytes = max_event_bytes

    def encode(self, envelope: Envelope) -> bytes:
        """The msgpack bytes of ``envelope``; raises :class:`EncodeError` on bad values."""
        try:
            spec = self.registry.spec_of(envelope.event)
        except UnknownEventType as exc:
            raise EncodeError(str(exc), field="type") from None
        if not isinstance(envelope.occurred_at, datetime):
            raise EncodeError("occurred_at: expected a datetime", field="occurred_at")
        data: dict[str, Any] = {}
        for name, encode in zip(spec.field_names, spec.encoders, strict=True):
            data[name] = encode(getattr(envelope.event, name), name)
        for label, value in (
            ("session_id", envelope.session_id),
            ("event_id", envelope.event_id),
            ("causation_id", envelope.causation_id),
            ("correlation_id", envelope.correlation_id),
        ):
            if type(value) is not str:
                raise EncodeError(f"{label}: expected a string", field=label)
        if envelope.agent_id is not None and type(envelope.agent_id) is not str:
            raise EncodeError("agent_id: expected a string or None", field="agent_id")
        if type(envelope.previous_hash) is not bytes:
            raise EncodeError("previous_hash: expected bytes", field="previous_hash")
        authorization = _encode_authorization(envelope.authorization, "authorization")
        try:
            payload: bytes = msgpack.packb(
                {
                    "f": ENVELOPE_FORMAT,
                    "t": spec.type_name,
                    "v": spec.version,
                    "id": envelope.event_id,
                    "s": envelope.session_id,
                    "a": envelope.agent_id,
                    "c": envelope.causation_id,
                    "r": envelope.correlation_id,
                    "at": _micros(envelope.occurred_at),
                    "p": envelope.previous_hash,
                    "z": authorization,
                    "d": data,
                },
                use_bin_type=True,
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"{spec.type_name}: cannot encode: {exc}") from None
        if len(payload) > self.max_event_bytes:
            raise PayloadTooLarge(
                f"{spec.type_name} is {len(payload)} bytes encoded; "
                f"the limit is {self.max_event_bytes}"
            )
        return payload

    def decode(self, payload: bytes, *, sequence: int | None = None) -> Envelope:
        """The envelope in ``payload`` (upcast to the current version).

        :param sequence: the stream sequence the message was stored at.
        :raises DecodeError: for anything that is not a valid envelope.
        """
        try:
            return self._decode(payload, sequence)
        except DecodeError:
            raise
        except PlantangenetError as exc:
            raise DecodeError(str(exc)) from None
        except Exception as exc:  # an upcaster or msgpack failing in an unforeseen way
            raise DecodeError(f"cannot decode event: {type(exc).__name__}: {exc}") from None

    def _decode(self, payload: bytes, sequence: int | None) -> Envelope:
        if not isinstance(payload, bytes | bytearray | memoryview):
            raise DecodeError(f"expected bytes, got {type(payload).__name__}")
        if len(payload) > self.max_event_bytes:
            raise DecodeError(
                f"payload is {len(payload)} bytes; the limit is {self.max_event_bytes}"
            )
        try:
            raw = msgpack.unpackb(payload, raw=False, strict_map_key=True, use_list=True)
        except Exception as exc:
            raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
        if type(raw) is not dict:
            raise DecodeError(f"expected an envelope map, got {type(raw).__name__}")
        missing = _ENVELOPE_KEYS - raw.keys()
        if missing:
            first = _ENVELOPE_FIELDS[sorted(missing)[0]]
            raise DecodeError(f"envelope field {first!r} is missing", field=first)
        extra = raw.keys() - _ENVELOPE_KEYS
        if extra:
            raise DecodeError(f"unknown envelope field {sorted(extra)[0]!r}", field="envelope")
        if raw["f"] != ENVELOPE_FORMAT or type(raw["f"]) is not int:
            raise DecodeError(f"unsupported envelope format {raw['f']!r}", field="format")
        type_name, version, data = raw["t"], raw["v"], raw["d"]
        if type(type_name) is not str:
            raise DecodeError("type: expected a string", field="type")
        if type(version) is not int:
            raise DecodeError("version: expected an integer", field="version")
        if type(data) is not dict:
            raise DecodeError("data: expected a map", field="data")
        for key, label in (
            ("id", "event_id"),
            ("s", "session_id"),
            ("c", "causation_id"),
            ("r", "correlation_id"),
        ):
            if type(raw[key]) is not str:
                raise DecodeError(f"{label}: expected a string", field=label)
        agent_id = raw["a"]
        if agent_id is not None and type(agent_id) is not str:
            raise DecodeError("agent_id: expected a string or nil", field="agent_id")
        at = raw["at"]
        if type(at) is not int:
            raise DecodeError("occurred_at: expected integer microseconds", field="occurred_at")
        try:
            occurred_at = _EPOCH + timedelta(microseconds=at)
        except OverflowError:
            raise DecodeError("occurred_at: out of range", field="occurred_at") from None
        previous_hash = raw["p"]
        if type(previous_hash) is not bytes:
            raise DecodeError("previous_hash: expected bytes", field="previous_hash")
        authorization = _decode_authorization(raw["z"], "authorization")

        spec = self.registry.spec(type_name)
        if version != spec.version:
            data = self.registry.upcast(type_name, version, data)
        unknown = data.keys() - set(spec.field_names)
        if unknown:
            name = sorted(map(str, unknown))[0]
            raise DecodeError(f"{type_name}: unknown field {name!r}", field=name)
        values: dict[str, Any] = {}
        for name, decode in zip(spec.field_names, spec.decoders, strict=True):
            if name in data:
                values[name] = decode(data[name], name)
            elif name in spec.required:
                raise DecodeError(f"{type_name}: field {name!r} is missing", field=name)
        return Envelope(
            event=spec.cls(**values),
            session_id=raw["s"],
            event_id=raw["id"],
            causation_id=raw["c"],
            correlation_id=raw["r"],
            occurred_at=occurred_at,
            agent_id=agent_id,
            sequence=sequence,
            previous_hash=previous_hash,
            authorization=authorization,
            digest=hashlib.sha256(payload).digest(),
        )


#: The codec over plantangenet's own events, with default limits.
CODEC = EventCodec()
