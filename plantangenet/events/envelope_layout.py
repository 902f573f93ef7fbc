"""The stored envelope's layout and the checks of its fields, for :mod:`.codec`.

What a stored envelope's keys are (and were: formats 1 and 2), how an older format
reads as the current one, which field of a malformed envelope is wrong (decoding) or of
an envelope that cannot be stored (encoding), and the authorizations decoded and
encoded once and shared. :mod:`.codec` is the only user; the layout is documented there.
"""

from __future__ import annotations

from typing import Any

import msgpack

from plantangenet.errors import DecodeError, EncodeError
from plantangenet.events.base import EventSpec
from plantangenet.events.envelope import Authorization, Envelope
from plantangenet.events.fields import compile_decoder, compile_encoder

#: The envelope layout written by this code (formats 1 and 2 are still read).
ENVELOPE_FORMAT = 3
#: The longest principal an envelope holds (``<user>@<account>``).
MAX_PRINCIPAL = 256
#: The size of a command fingerprint (bytes).
FINGERPRINT_BYTES = 16
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
    "u": "principal",
    "k": "fingerprint",
    "n": "revision",
    "d": "data",
}
_ENVELOPE_KEYS = frozenset(_ENVELOPE_FIELDS)
#: The keys of format 2 (no revision) and format 1 (no principal, no fingerprint either).
_V2_KEYS = _ENVELOPE_KEYS - {"n"}
_V1_KEYS = _V2_KEYS - {"u", "k"}


_encode_authorization = compile_encoder(Authorization | None)
_decode_authorization = compile_decoder(Authorization | None)


def _event_from(spec: EventSpec, data: dict[str, Any]) -> Any:
    """The event in ``data`` field by field: names an unknown or missing field."""
    type_name = spec.type_name
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
    return spec.cls(**values)


def _older_format(raw: dict[Any, Any]) -> dict[Any, Any]:
    """A format-1 or -2 envelope as format 3, or the error naming what is wrong.

    Format 2 has no revision (readers count it in); format 1 has no principal
    ("unknown") and no fingerprint either.
    """
    form = raw.get("f")
    if type(form) is int and form == 2 and raw.keys() == _V2_KEYS:
        return {**raw, "f": ENVELOPE_FORMAT, "n": None}
    if type(form) is int and form == 1 and raw.keys() == _V1_KEYS:
        return {**raw, "f": ENVELOPE_FORMAT, "u": None, "k": b"", "n": None}
    expected = {1: _V1_KEYS, 2: _V2_KEYS}.get(form, _ENVELOPE_KEYS) if type(form) is int else None
    expected = expected or _ENVELOPE_KEYS
    missing = expected - raw.keys()
    if missing:
        first = _ENVELOPE_FIELDS[sorted(missing)[0]]
        raise DecodeError(f"envelope field {first!r} is missing", field=first)
    extra = raw.keys() - expected
    raise DecodeError(f"unknown envelope field {sorted(map(str, extra))[0]!r}", field="envelope")


def _check_values(raw: dict[str, Any]) -> None:
    """Raise the :class:`DecodeError` naming the first envelope value of the wrong type."""
    if raw["f"] != ENVELOPE_FORMAT or type(raw["f"]) is not int:
        raise DecodeError(f"unsupported envelope format {raw['f']!r}", field="format")
    principal = raw["u"]
    if principal is not None and (type(principal) is not str or len(principal) > MAX_PRINCIPAL):
        raise DecodeError(
            f"principal: expected a string of at most {MAX_PRINCIPAL} characters or nil",
            field="principal",
        )
    revision = raw["n"]
    if revision is not None and (type(revision) is not int or revision < 1):
        raise DecodeError("revision: expected a positive integer or nil", field="revision")
    if type(raw["k"]) is not bytes or len(raw["k"]) > FINGERPRINT_BYTES:
        raise DecodeError(
            f"fingerprint: expected at most {FINGERPRINT_BYTES} bytes", field="fingerprint"
        )
    if type(raw["t"]) is not str:
        raise DecodeError("type: expected a string", field="type")
    if type(raw["v"]) is not int:
        raise DecodeError("version: expected an integer", field="version")
    if type(raw["d"]) is not dict:
        raise DecodeError("data: expected a map", field="data")
    for key, label in (
        ("id", "event_id"),
        ("s", "session_id"),
        ("c", "causation_id"),
        ("r", "correlation_id"),
    ):
        if type(raw[key]) is not str:
            raise DecodeError(f"{label}: expected a string", field=label)
    if raw["a"] is not None and type(raw["a"]) is not str:
        raise DecodeError("agent_id: expected a string or nil", field="agent_id")
    if type(raw["at"]) is not int:
        raise DecodeError("occurred_at: expected integer microseconds", field="occurred_at")
    raise DecodeError("previous_hash: expected bytes", field="previous_hash")


#: Decoded authorizations repeat (same action, resources, statements, version): share them.
_AUTHORIZATIONS: dict[tuple[Any, ...], Authorization] = {}


def _authorization(raw: Any) -> Authorization | None:
    """Decode the ``z`` field; the common well-formed case is a cache lookup."""
    if raw is None:
        return None
    if type(raw) is dict and len(raw) == 4:
        action = raw.get("action")
        resources = raw.get("resources")
        statements = raw.get("statements")
        version = raw.get("policy_version")
        if (
            type(action) is str
            and type(resources) is list
            and type(statements) is list
            and type(version) is int
        ):
            # A key equal to a cached one holds the same strings and None (no other
            # msgpack value equals a string or None), so a hit needs no item check.
            key = (action, tuple(resources), tuple(statements), version)
            try:
                cached = _AUTHORIZATIONS.get(key)
            except TypeError:  # an unhashable item (a list, a map): not an authorization
                cached = None
            else:
                if cached is not None:
                    return cached
                if all(type(r) is str for r in resources) and all(
                    s is None or type(s) is str for s in statements
                ):
                    if len(_AUTHORIZATIONS) >= 4096:
                        _AUTHORIZATIONS.clear()
                    cached = _AUTHORIZATIONS[key] = Authorization(*key)
                    return cached
    result: Authorization | None = _decode_authorization(raw, "authorization")
    return result


#: Authorizations by their stored bytes (the typed path): most envelopes of a session
#: carry one of a few. Only decoded, checked ones go in.
_AUTHORIZATIONS_STORED: dict[bytes, Authorization | None] = {}
_UNSEEN: Any = object()


def _stored_authorization(raw: bytes) -> Authorization | None:
    """Decode and check the raw ``z`` value, and remember it by its bytes."""
    value = msgpack.unpackb(raw, raw=False, strict_map_key=True, use_list=True)
    authorization = _authorization(value)
    if len(_AUTHORIZATIONS_STORED) >= 4096:
        _AUTHORIZATIONS_STORED.clear()
    _AUTHORIZATIONS_STORED[raw] = authorization
    return authorization


def _reject_envelope_fields(envelope: Envelope) -> None:
    """Raise the :class:`EncodeError` naming the first mistyped envelope field."""
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
    principal = envelope.principal
    if principal is not None and (type(principal) is not str or len(principal) > MAX_PRINCIPAL):
        raise EncodeError(
            f"principal: expected a string of at most {MAX_PRINCIPAL} characters or None",
            field="principal",
        )
    revision = envelope.revision
    if revision is not None and (type(revision) is not int or revision < 1):
        raise EncodeError("revision: expected a positive integer or None", field="revision")
    raise EncodeError(
        f"fingerprint: expected at most {FINGERPRINT_BYTES} bytes", field="fingerprint"
    )


#: Encoded authorizations by value: a session answers the same few requests again and
#: again (the owner's, and each bot's), so most are encoded once. Only checked ones go in.
_ENCODED_AUTHORIZATIONS: dict[Authorization, dict[str, Any]] = {}
_STATEMENT_TYPES = frozenset({str, type(None)})


def _encode_auth(a: Authorization | None) -> dict[str, Any] | None:
    if a is None:
        return None
    if (
        type(a) is Authorization
        and type(a.action) is str
        and type(a.resources) is tuple
        and type(a.statements) is tuple
        and type(a.policy_version) is int
        and set(map(type, a.resources)) <= {str}  # (C loops: no per-item Python call)
        and set(map(type, a.statements)) <= _STATEMENT_TYPES
    ):
        encoded = _ENCODED_AUTHORIZATIONS.get(a)
        if encoded is None:
            if len(_ENCODED_AUTHORIZATIONS) >= 4096:
                _ENCODED_AUTHORIZATIONS.clear()
            encoded = _ENCODED_AUTHORIZATIONS[a] = {
                "action": a.action,
                "resources": list(a.resources),
                "statements": list(a.statements),
                "policy_version": a.policy_version,
            }
        return encoded
    encoded_by_converter: dict[str, Any] | None = _encode_authorization(a, "authorization")
    return encoded_by_converter
