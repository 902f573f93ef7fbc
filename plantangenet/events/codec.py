"""The one place where envelopes become msgpack bytes and back.

Layout of a stored envelope (a msgpack map with short keys)::

    {"f": 3,                 # envelope format
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
     "u": "..." | nil,       # principal: who sent the command, as NATS vouched for it
     "k": b"...",            # fingerprint of the command's content (b"" after its first event)
     "n": 17 | nil,          # revision: the event's position in its session (1, 2, 3...)
     "d": {...}}             # the event's fields

Format 2 (written before revisions were recorded) has no ``n``: it decodes with
``revision=None`` and readers count it in. Format 1 (written before principals
were recorded) has no ``u``, ``k`` and ``n``: it decodes with ``principal=None``
("unknown") and an empty fingerprint too. Stored envelopes are never rewritten.

The stream sequence is not in the payload: the log assigns it, and
:meth:`EventCodec.decode` takes it from the message metadata.

Decoding never trusts its input. Malformed msgpack, a wrong layout, an
unknown type, a version with no upcaster, and missing, unknown or mistyped
fields all raise :class:`~plantangenet.errors.DecodeError` (or one of its
subclasses) with a message naming the field; nothing else escapes.

Decoding takes one of two paths. The *typed* path (:mod:`.typed_decoding`)
reads the common case -- a format-3 envelope of an event type's current version
whose fields have plain annotations -- straight into its types, every value
checked in C (msgspec). Everything else, and anything the typed path refuses,
goes the *complete* path below, which upcasts older formats and versions and
names what is wrong. The typed path never refuses on its own and accepts only
what the complete path accepts, with equal results (``tests/test_typed_decoding.py``).
"""

from __future__ import annotations

import functools
import hashlib
import threading
import typing
from collections.abc import Callable, Container
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
from plantangenet.events.envelope import Authorization, CheckedEvent, Envelope
from plantangenet.events.envelope_layout import _AUTHORIZATIONS_STORED as _AUTHORIZATIONS_STORED
from plantangenet.events.envelope_layout import _ENVELOPE_KEYS as _ENVELOPE_KEYS
from plantangenet.events.envelope_layout import _UNSEEN as _UNSEEN
from plantangenet.events.envelope_layout import ENVELOPE_FORMAT as ENVELOPE_FORMAT
from plantangenet.events.envelope_layout import FINGERPRINT_BYTES as FINGERPRINT_BYTES
from plantangenet.events.envelope_layout import MAX_PRINCIPAL as MAX_PRINCIPAL
from plantangenet.events.envelope_layout import (
    _authorization,
    _check_values,
    _encode_auth,
    _event_from,
    _older_format,
    _reject_envelope_fields,
    _stored_authorization,
)
from plantangenet.events.slots import slot_builder
from plantangenet.events.typed_decoding import envelope_decoder, fields_checker, fields_decoder

#: Default upper bound for one encoded envelope (the NATS default max payload is 1 MiB).
DEFAULT_MAX_EVENT_BYTES = 256 * 1024

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
#: Microseconds since the epoch within which ``datetime.fromtimestamp(at / 1e6)`` is
#: exact (|at / 1e6| < 2**32 s, 1833 to 2106: the float's error stays under 0.25 µs, so
#: rounding to the microsecond gives ``at`` back); twice as fast as adding a timedelta.
_EXACT_TIMESTAMPS = 2**32 * 1_000_000
_from_timestamp = datetime.fromtimestamp
_new_envelope = slot_builder(Envelope)
_new_checked = functools.partial(tuple.__new__, CheckedEvent)
#: The typed path's decoder of a stored format-3 envelope (see :mod:`.typed_decoding`).
_decode_stored = envelope_decoder(MAX_PRINCIPAL, FINGERPRINT_BYTES)
_hash = hashlib.sha256
#: An event type's current version, and its typed fields decoder and checker (or ``None``).
_Typed = tuple[int, Callable[[Any], Any] | None, Callable[[Any], Any] | None]
_PACKERS = threading.local()


def _packer() -> msgpack.Packer:
    """This thread's msgpack packer (a packer is not thread-safe; making one costs)."""
    try:
        packer: msgpack.Packer = _PACKERS.packer
    except AttributeError:
        packer = _PACKERS.packer = msgpack.Packer(use_bin_type=True)
    return packer


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
        #: Type name -> (current version, typed fields decoder and checker, each or
        #: ``None``), as looked up.
        self._typed: dict[str, _Typed] = {}

    def encode(self, envelope: Envelope) -> bytes:
        """The msgpack bytes of ``envelope``; raises :class:`EncodeError` on bad values."""
        try:
            spec = self.registry.spec_of(envelope.event)
        except UnknownEventType as exc:
            raise EncodeError(str(exc), field="type") from None
        if not isinstance(envelope.occurred_at, datetime):
            raise EncodeError("occurred_at: expected a datetime", field="occurred_at")
        data = spec.encode_fields(envelope.event)
        agent_id = envelope.agent_id
        principal = envelope.principal
        revision = envelope.revision
        if not (
            type(envelope.session_id) is str
            and type(envelope.event_id) is str
            and type(envelope.causation_id) is str
            and type(envelope.correlation_id) is str
            and (agent_id is None or type(agent_id) is str)
            and type(envelope.previous_hash) is bytes
            and (principal is None or (type(principal) is str and len(principal) <= MAX_PRINCIPAL))
            and type(envelope.fingerprint) is bytes
            and len(envelope.fingerprint) <= FINGERPRINT_BYTES
            and (revision is None or (type(revision) is int and revision >= 1))
        ):
            _reject_envelope_fields(envelope)
        authorization = _encode_auth(envelope.authorization)
        try:
            payload: bytes = _packer().pack(
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
                    "u": principal,
                    "k": envelope.fingerprint,
                    "n": revision,
                    "d": data,
                }
            )
        except (TypeError, ValueError, OverflowError) as exc:
            raise EncodeError(f"{spec.type_name}: cannot encode: {exc}") from None
        if len(payload) > self.max_event_bytes:
            raise PayloadTooLarge(
                f"{spec.type_name} is {len(payload)} bytes encoded; "
                f"the limit is {self.max_event_bytes}"
            )
        return payload

    def decode(
        self, payload: bytes, *, sequence: int | None = None, digest: bool = True
    ) -> Envelope:
        """The envelope in ``payload`` (upcast to the current version).

        :param sequence: the stream sequence the message was stored at.
        :param digest: whether to compute the envelope's ``digest`` (the SHA-256 of
            ``payload``, which the session's next event chains to); without it, ``b""``.
            A fold that reads no digest (a replay) saves the hashing.
        :raises DecodeError: for anything that is not a valid envelope.
        """
        try:  # the common case, checked in C; anything else: the complete path decides
            envelope = self._decode_typed(payload, sequence, digest)
        except Exception:
            envelope = None
        if envelope is not None:
            return envelope
        try:
            return self._decode(payload, sequence, digest)
        except DecodeError:
            raise
        except PlantangenetError as exc:
            raise DecodeError(str(exc)) from None
        except Exception as exc:  # an upcaster or msgpack failing in an unforeseen way
            raise DecodeError(f"cannot decode event: {type(exc).__name__}: {exc}") from None

    def checked(
        self,
        payload: bytes,
        *,
        sequence: int | None = None,
        types: Container[str] | None = None,
    ) -> CheckedEvent | None:
        """The :class:`CheckedEvent` of ``payload`` (stored at ``sequence``): every value
        checked as :meth:`decode` checks it, nothing built. ``None`` where :meth:`decode` must
        decide (maps, another version or format, anything it refuses) or, told first, for
        a type not in ``types``."""
        try:
            found = self._typed_stored(payload, types)
            if found is None:
                return None
            stored, (_, _, check_fields), authorization = found
            if check_fields is None:
                return None
            return _new_checked(
                (
                    stored.t,
                    stored.s,
                    stored.id,
                    stored.a,
                    stored.c,
                    stored.r,
                    stored.at,
                    authorization,
                    stored.n,
                    sequence,
                    check_fields(stored.d),
                )
            )
        except Exception:
            return None

    def _decode_typed(
        self, payload: bytes, sequence: int | None, digest: bool = True
    ) -> Envelope | None:
        """The typed path (:mod:`.typed_decoding`): the envelope, ``None`` where it does not
        apply, or any exception where it refuses (the complete path names why)."""
        found = self._typed_stored(payload)
        if found is None:
            return None
        stored, (_, decode_fields, _), authorization = found
        assert decode_fields is not None  # _typed_stored sees to it
        return _new_envelope(
            decode_fields(stored.d),
            stored.s,
            stored.id,
            stored.c,
            stored.r,
            _from_timestamp(stored.at / 1e6, UTC),
            stored.a,
            sequence,
            stored.p,
            authorization,
            _hash(payload).digest() if digest else b"",
            stored.u,
            stored.k,
            stored.n,
        )

    def _typed_stored(
        self, payload: bytes, types: Container[str] | None = None
    ) -> tuple[Any, _Typed, Authorization | None] | None:
        """The stored envelope in ``payload``, its type's typed decoders and authorization,
        all checked; ``None`` where the typed path does not apply; raises where it refuses."""
        if len(payload) > self.max_event_bytes:
            return None
        stored = _decode_stored(payload)
        if types is not None and stored.t not in types:
            return None
        typed = self._typed.get(stored.t)
        if typed is None:
            typed = self._typed_decoder(stored.t)
        if (
            typed[1] is None
            or stored.v != typed[0]
            or stored.f != ENVELOPE_FORMAT
            or not -_EXACT_TIMESTAMPS < stored.at < _EXACT_TIMESTAMPS
        ):
            return None
        raw_authorization = bytes(stored.z)
        authorization = _AUTHORIZATIONS_STORED.get(raw_authorization, _UNSEEN)
        if authorization is _UNSEEN:
            authorization = _stored_authorization(raw_authorization)
        return stored, typed, authorization

    def _typed_decoder(self, type_name: str) -> _Typed:
        try:
            spec = self.registry.spec(type_name)
        except UnknownEventType:
            return (0, None, None)  # not remembered: the type may be registered later
        hints = typing.get_type_hints(spec.cls)
        typed = self._typed[type_name] = (
            spec.version,
            fields_decoder(spec.cls, hints),
            fields_checker(spec.cls, hints),
        )
        return typed

    def _decode(self, payload: bytes, sequence: int | None, digest: bool = True) -> Envelope:
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
        if raw.keys() != _ENVELOPE_KEYS:
            raw = _older_format(raw)
        type_name, version, data, agent_id, at = raw["t"], raw["v"], raw["d"], raw["a"], raw["at"]
        previous_hash, principal, fingerprint, revision = raw["p"], raw["u"], raw["k"], raw["n"]
        # One combined test for the common case; _check_values names what is wrong.
        if not (
            type(raw["f"]) is int
            and raw["f"] == ENVELOPE_FORMAT
            and (principal is None or (type(principal) is str and len(principal) <= MAX_PRINCIPAL))
            and type(fingerprint) is bytes
            and len(fingerprint) <= FINGERPRINT_BYTES
            and type(type_name) is str
            and type(version) is int
            and type(data) is dict
            and type(raw["id"]) is str
            and type(raw["s"]) is str
            and type(raw["c"]) is str
            and type(raw["r"]) is str
            and (agent_id is None or type(agent_id) is str)
            and type(at) is int
            and type(previous_hash) is bytes
            and (revision is None or (type(revision) is int and revision >= 1))
        ):
            _check_values(raw)
        try:
            if -_EXACT_TIMESTAMPS < at < _EXACT_TIMESTAMPS:
                occurred_at = _from_timestamp(at / 1e6, UTC)
            else:
                occurred_at = _EPOCH + timedelta(microseconds=at)
        except (OverflowError, OSError, ValueError):
            raise DecodeError("occurred_at: out of range", field="occurred_at") from None
        authorization = _authorization(raw["z"])

        spec = self.registry.spec(type_name)
        if version != spec.version:
            data = self.registry.upcast(type_name, version, data)
        event = spec.decode_fields(data)
        if event is None:  # not exactly the class's fields: say what is wrong, or apply defaults
            event = _event_from(spec, data)
        return _new_envelope(
            event,
            raw["s"],
            raw["id"],
            raw["c"],
            raw["r"],
            occurred_at,
            agent_id,
            sequence,
            previous_hash,
            authorization,
            hashlib.sha256(payload).digest() if digest else b"",
            principal,
            fingerprint,
            revision,
        )


#: The codec over plantangenet's own events, with default limits.
CODEC = EventCodec()
