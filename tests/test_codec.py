"""Tests of the event codec: round trips, hostile input, limits and typed errors.

Pure: no NATS. Strategies for events are derived from the event classes' own
type hints, so a newly registered event type is covered without editing
this file.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet.errors import (
    DecodeError,
    EncodeError,
    PayloadTooLarge,
    UnknownEventType,
    UnknownEventVersion,
)
from plantangenet.events import (
    CODEC,
    EVENTS,
    SESSION_EVENTS,
    CursorAdded,
    Envelope,
    Event,
    EventCodec,
    EventRegistry,
    MetadataValue,
    SessionMetadataChanged,
    SessionStarted,
    event_type,
)
from plantangenet.events.codec import DEFAULT_MAX_EVENT_BYTES

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# A private registry with field types the session events do not use
# (int, optional str), so the generic machinery is exercised on them too.

PRIVATE = EventRegistry()


@event_type("Counted", version=1, registry=PRIVATE)
class Counted(Event):
    count: int
    ratio: float
    note: str | None
    flag: bool
    labels: Mapping[str, MetadataValue]
    names: tuple[str, ...] = ()


@event_type("Evolved", version=2, registry=PRIVATE)
class Evolved(Event):
    what: str


PRIVATE_CODEC = EventCodec(PRIVATE)

# --------------------------------------------------------------------------
# Strategies built from type hints.

TEXT = st.text(max_size=12)
INTS = st.integers(min_value=-(2**63), max_value=2**64 - 1)
FLOATS = st.floats(allow_nan=False, allow_infinity=False)
DATETIMES = st.datetimes(timezones=st.just(UTC))


def fields_of(cls: type[Event]) -> tuple[dataclasses.Field[Any], ...]:
    """The dataclass fields of an event class."""
    return dataclasses.fields(typing.cast(Any, cls))


def strategy_for(tp: Any) -> st.SearchStrategy[Any]:
    """A strategy of valid values for an event field annotated ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        return TEXT
    if tp is bool:
        return st.booleans()
    if tp is int:
        return INTS
    if tp is float:
        return FLOATS
    if tp is None or tp is type(None):
        return st.none()
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(a) for a in args])
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=4).map(tuple)
    if origin in (Mapping, dict) and len(args) == 2 and args[0] is str:
        return st.dictionaries(TEXT, strategy_for(args[1]), max_size=4)
    raise TypeError(f"no strategy for event field annotation {tp!r}")


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in fields_of(cls)})


EVENT_STRATEGIES: dict[type[Event], st.SearchStrategy[Event]] = {
    cls: event_strategy(cls) for cls in SESSION_EVENTS
}


def envelopes(events: st.SearchStrategy[Event]) -> st.SearchStrategy[Envelope]:
    return st.builds(
        Envelope,
        event=events,
        session_id=TEXT,
        event_id=TEXT,
        causation_id=TEXT,
        correlation_id=TEXT,
        occurred_at=DATETIMES,
        agent_id=st.none() | TEXT,
        sequence=st.none() | st.integers(min_value=1, max_value=2**63),
    )


ANY_ENVELOPE = envelopes(st.sampled_from(SESSION_EVENTS).flatmap(lambda c: EVENT_STRATEGIES[c]))

AT = datetime(2024, 11, 25, 13, 0, 0, 123456, tzinfo=UTC)


def envelope_of(event: Event, **overrides: Any) -> Envelope:
    fields: dict[str, Any] = {
        "event": event,
        "session_id": "s1",
        "event_id": "e1",
        "causation_id": "c1",
        "correlation_id": "r1",
        "occurred_at": AT,
        "agent_id": "a1",
    }
    fields.update(overrides)
    return Envelope(**fields)


def example_of(cls: type[Event]) -> Event:
    """A deterministic, non-trivial instance of ``cls`` (every field filled)."""
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in fields_of(cls):
        tp = hints[f.name]
        values[f.name] = _example_value(tp, f.name)
    return cls(**values)


def _example_value(tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    if tp is str:
        return f"{name}-value"
    if tp is bool:
        return True
    if tp is int:
        return 7
    if tp is float:
        return 1.5
    if origin in (typing.Union, types.UnionType):
        return _example_value(typing.get_args(tp)[0], name)
    if origin is tuple:
        return ("one", "two")
    if origin in (Mapping, dict):
        return {"k": "v", "n": 3}
    raise TypeError(tp)


def raw_of(envelope: Envelope, codec: EventCodec = CODEC) -> dict[str, Any]:
    raw = msgpack.unpackb(codec.encode(envelope), raw=False)
    assert isinstance(raw, dict)
    return raw


def pack(raw: Any) -> bytes:
    payload = msgpack.packb(raw, use_bin_type=True)
    assert isinstance(payload, bytes)
    return payload


# --------------------------------------------------------------------------
# Round trips


def test_strategies_cover_every_session_event() -> None:
    assert len(SESSION_EVENTS) == len(set(SESSION_EVENTS))
    assert set(EVENT_STRATEGIES) == set(SESSION_EVENTS)
    registered = set(EVENTS.types().values())
    for cls in SESSION_EVENTS:
        assert cls in registered
        assert EVENTS.spec_of(cls).field_names == tuple(f.name for f in fields_of(cls))


@FAST
@given(data=st.data())
def test_strategies_build_instances_of_every_session_event(data: st.DataObject) -> None:
    for cls, strategy in EVENT_STRATEGIES.items():
        assert type(data.draw(strategy)) is cls


@pytest.mark.parametrize("cls", SESSION_EVENTS, ids=lambda c: c.type_name)
@FAST
@given(data=st.data())
def test_every_session_event_round_trips(cls: type[Event], data: st.DataObject) -> None:
    envelope = data.draw(envelopes(EVENT_STRATEGIES[cls]))
    decoded = CODEC.decode(CODEC.encode(envelope), sequence=envelope.sequence)
    assert decoded == envelope
    assert type(decoded.event) is cls
    assert decoded.occurred_at.tzinfo is not None
    assert decoded.occurred_at.utcoffset() == timedelta(0)


@settings(max_examples=60, deadline=None)
@given(envelope=ANY_ENVELOPE)
def test_round_trip_is_stable(envelope: Envelope) -> None:
    payload = CODEC.encode(envelope)
    decoded = CODEC.decode(payload, sequence=envelope.sequence)
    assert decoded == envelope
    # Encoding the decoded envelope gives the very same bytes.
    assert CODEC.encode(decoded) == payload


@FAST
@given(envelope=envelopes(event_strategy(Counted)))
def test_private_event_with_int_and_optional_fields_round_trips(envelope: Envelope) -> None:
    decoded = PRIVATE_CODEC.decode(PRIVATE_CODEC.encode(envelope), sequence=envelope.sequence)
    assert decoded == envelope
    assert type(decoded.event) is Counted


def test_sequence_comes_from_the_caller_not_the_payload() -> None:
    envelope = envelope_of(SessionStarted("s1", {}), sequence=41)
    payload = CODEC.encode(envelope)
    assert CODEC.decode(payload).sequence is None
    assert CODEC.decode(payload, sequence=99).sequence == 99


def test_non_utc_aware_datetime_is_stored_as_the_same_instant() -> None:
    local = datetime(2024, 1, 1, 12, 0, tzinfo=timezone(timedelta(hours=2)))
    decoded = CODEC.decode(CODEC.encode(envelope_of(SessionStarted("s1", {}), occurred_at=local)))
    assert decoded.occurred_at == local
    assert decoded.occurred_at.utcoffset() == timedelta(0)
    assert decoded.occurred_at.hour == 10


def test_layout_matches_the_documented_envelope() -> None:
    envelope = envelope_of(CursorAdded("a1", "c1", ("x", "y"), 0.0, 2.5))
    raw = raw_of(envelope)
    assert raw == {
        "f": 1,
        "t": "CursorAdded",
        "v": 1,
        "id": "e1",
        "s": "s1",
        "a": "a1",
        "c": "c1",
        "r": "r1",
        "at": int((AT - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1)),
        "d": {"agent_id": "a1", "cursor_id": "c1", "axes": ["x", "y"], "start": 0.0, "end": 2.5},
    }


# --------------------------------------------------------------------------
# Hostile input: only DecodeError ever escapes


@settings(max_examples=300, deadline=None)
@given(payload=st.binary(max_size=200))
def test_random_bytes_raise_decode_error(payload: bytes) -> None:
    with pytest.raises(DecodeError):
        CODEC.decode(payload)


@settings(max_examples=25, deadline=None)
@given(envelope=ANY_ENVELOPE)
def test_every_truncation_of_a_valid_encoding_raises_decode_error(envelope: Envelope) -> None:
    payload = CODEC.encode(envelope)
    for end in range(len(payload)):
        with pytest.raises(DecodeError):
            CODEC.decode(payload[:end])


SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats()
    | st.text(max_size=8)
    | st.binary(max_size=8)
)
STRUCTURES = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(st.text(max_size=4) | st.binary(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(structure=STRUCTURES)
def test_random_msgpack_structures_raise_decode_error(structure: Any) -> None:
    with pytest.raises(DecodeError):
        CODEC.decode(pack(structure))


def _envelope_like(data: st.DataObject) -> dict[str, Any]:
    """A map with every envelope key, some values valid and some random."""
    cls = data.draw(st.sampled_from(SESSION_EVENTS))
    names = [f.name for f in fields_of(cls)]
    raw: dict[str, Any] = {
        "f": data.draw(st.just(1) | STRUCTURES),
        "t": data.draw(st.just(cls.type_name) | STRUCTURES),
        "v": data.draw(st.just(1) | STRUCTURES),
        "id": data.draw(TEXT | STRUCTURES),
        "s": data.draw(TEXT | STRUCTURES),
        "a": data.draw(st.none() | TEXT | STRUCTURES),
        "c": data.draw(TEXT | STRUCTURES),
        "r": data.draw(TEXT | STRUCTURES),
        "at": data.draw(st.integers(min_value=-(2**63), max_value=2**64 - 1) | STRUCTURES),
        "d": data.draw(
            st.dictionaries(st.sampled_from(names) | TEXT, STRUCTURES, max_size=6) | STRUCTURES
        ),
    }
    return raw


@settings(max_examples=300, deadline=None)
@given(data=st.data())
def test_envelope_shaped_random_maps_never_raise_anything_but_decode_error(
    data: st.DataObject,
) -> None:
    payload = pack(_envelope_like(data))
    try:
        decoded = CODEC.decode(payload)
    except DecodeError as exc:
        assert str(exc)
    else:  # a random map may happen to be valid: then it must re-encode cleanly
        assert CODEC.decode(CODEC.encode(decoded)) == decoded


# The label each envelope key is reported under, and the types it accepts.
ENVELOPE_KEYS: dict[str, tuple[str, str, tuple[type, ...]]] = {
    # key: (error field, word in the message, accepted types)
    "f": ("format", "format", (int,)),
    "t": ("type", "type", (str,)),
    "v": ("version", "version", (int,)),
    "id": ("event_id", "event_id", (str,)),
    "s": ("session_id", "session_id", (str,)),
    "a": ("agent_id", "agent_id", (str, type(None))),
    "c": ("causation_id", "causation_id", (str,)),
    "r": ("correlation_id", "correlation_id", (str,)),
    "at": ("occurred_at", "occurred_at", (int,)),
    "d": ("data", "data", (dict,)),
}
WRONG_POOL: tuple[Any, ...] = (True, 1.5, b"bytes", [], {}, "str", 7, None, ["x", 1], {"k": [1]})


@pytest.mark.parametrize("cls", SESSION_EVENTS, ids=lambda c: c.type_name)
@pytest.mark.parametrize("key", sorted(ENVELOPE_KEYS))
def test_envelope_key_of_wrong_type_is_named(cls: type[Event], key: str) -> None:
    raw = raw_of(envelope_of(example_of(cls)))
    field, word, accepted = ENVELOPE_KEYS[key]
    wrong = [v for v in WRONG_POOL if type(v) not in accepted]
    assert wrong
    for value in wrong:
        mutated = {**raw, key: value}
        with pytest.raises(DecodeError) as excinfo:
            CODEC.decode(pack(mutated))
        assert excinfo.value.field == field, (key, value)
        assert word in str(excinfo.value), (key, value)


def _conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as msgpack gives it) is valid for annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in (str, int, bool):
        return type(value) is tp
    if tp is float:
        return type(value) in (int, float) and math.isfinite(value)
    if tp is None or tp is type(None):
        return value is None
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is tuple:
        return type(value) is list and all(_conforms(v, args[0]) for v in value)
    if origin in (Mapping, dict):
        return type(value) is dict and all(
            type(k) is str and _conforms(v, args[1]) for k, v in value.items()
        )
    raise TypeError(tp)


@pytest.mark.parametrize("cls", [*SESSION_EVENTS, Counted], ids=lambda c: c.type_name)
def test_data_field_of_wrong_type_is_named(cls: type[Event]) -> None:
    codec = PRIVATE_CODEC if cls is Counted else CODEC
    raw = raw_of(envelope_of(example_of(cls)), codec)
    hints = typing.get_type_hints(cls)
    for f in fields_of(cls):
        tp = hints[f.name]
        for value in (*WRONG_POOL, math.nan, math.inf, "\u00e9", 2**64 - 1, -(2**63)):
            mutated = {**raw, "d": {**raw["d"], f.name: value}}
            if _conforms(value, tp):
                decoded = codec.decode(pack(mutated))
                expected = float(value) if tp is float else value
                if isinstance(value, list):
                    expected = tuple(value)
                assert getattr(decoded.event, f.name) == expected
                continue
            with pytest.raises(DecodeError) as excinfo:
                codec.decode(pack(mutated))
            err = excinfo.value
            assert err.field is not None
            assert err.field == f.name or err.field.startswith((f"{f.name}.", f"{f.name}[")), (
                f.name,
                value,
                err.field,
            )
            assert f.name in str(err)


# --------------------------------------------------------------------------
# Specific cases


def _raw(cls: type[Event] = CursorAdded) -> dict[str, Any]:
    return raw_of(envelope_of(example_of(cls)))


def test_unknown_type_name() -> None:
    with pytest.raises(UnknownEventType) as excinfo:
        CODEC.decode(pack({**_raw(), "t": "NoSuchEvent"}))
    assert excinfo.value.field == "type"
    assert "NoSuchEvent" in str(excinfo.value)


def test_newer_version_than_the_code() -> None:
    with pytest.raises(UnknownEventVersion) as excinfo:
        CODEC.decode(pack({**_raw(), "v": 2}))
    assert excinfo.value.field == "version"
    assert "v2" in str(excinfo.value)


def test_older_version_without_upcaster() -> None:
    raw = raw_of(envelope_of(Evolved("x")), PRIVATE_CODEC)
    assert raw["v"] == 2
    assert PRIVATE_CODEC.decode(pack(raw)).event == Evolved("x")
    with pytest.raises(UnknownEventVersion) as excinfo:
        PRIVATE_CODEC.decode(pack({**raw, "v": 1}))
    assert "v1" in str(excinfo.value)
    # Version 0 (or below) of a v1 type has no upcaster either.
    for version in (0, -1):
        with pytest.raises(UnknownEventVersion):
            CODEC.decode(pack({**_raw(), "v": version}))


@pytest.mark.parametrize("cls", SESSION_EVENTS, ids=lambda c: c.type_name)
def test_missing_data_field(cls: type[Event]) -> None:
    raw = _raw(cls)
    for f in fields_of(cls):
        data = {k: v for k, v in raw["d"].items() if k != f.name}
        payload = pack({**raw, "d": data})
        if f.default is dataclasses.MISSING:
            with pytest.raises(DecodeError) as excinfo:
                CODEC.decode(payload)
            assert excinfo.value.field == f.name
            assert f.name in str(excinfo.value)
        else:  # a field with a default may be absent
            assert getattr(CODEC.decode(payload).event, f.name) == f.default


def test_missing_envelope_key() -> None:
    raw = _raw()
    for key in raw:
        with pytest.raises(DecodeError) as excinfo:
            CODEC.decode(pack({k: v for k, v in raw.items() if k != key}))
        assert excinfo.value.field == ENVELOPE_KEYS[key][0]


def test_extra_unknown_field() -> None:
    raw = _raw()
    with pytest.raises(DecodeError) as excinfo:
        CODEC.decode(pack({**raw, "d": {**raw["d"], "surprise": 1}}))
    assert excinfo.value.field == "surprise"
    with pytest.raises(DecodeError):
        CODEC.decode(pack({**raw, "zz": 1}))


def test_bool_is_not_an_int_or_a_float() -> None:
    raw = raw_of(envelope_of(example_of(Counted)), PRIVATE_CODEC)
    for name in ("count", "ratio"):
        with pytest.raises(DecodeError) as excinfo:
            PRIVATE_CODEC.decode(pack({**raw, "d": {**raw["d"], name: True}}))
        assert excinfo.value.field == name
    raw = _raw()
    for name in ("start", "end"):
        with pytest.raises(DecodeError) as excinfo:
            CODEC.decode(pack({**raw, "d": {**raw["d"], name: False}}))
        assert excinfo.value.field == name


def test_non_finite_floats_are_refused() -> None:
    raw = _raw()
    for value in (math.nan, math.inf, -math.inf):
        with pytest.raises(DecodeError) as excinfo:
            CODEC.decode(pack({**raw, "d": {**raw["d"], "start": value}}))
        assert excinfo.value.field == "start"
        started = raw_of(envelope_of(SessionStarted("s1", {})))
        with pytest.raises(DecodeError) as excinfo:
            CODEC.decode(pack({**started, "d": {"session_id": "s1", "metadata": {"k": value}}}))
        assert excinfo.value.field == "metadata.k"


def test_deeply_nested_msgpack_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        CODEC.decode(b"\x91" * 10_000 + b"\xc0")
    with pytest.raises(DecodeError):
        CODEC.decode(b"\x81\xa1k" * 10_000 + b"\xc0")


def test_trailing_bytes_are_a_decode_error() -> None:
    payload = CODEC.encode(envelope_of(example_of(CursorAdded)))
    with pytest.raises(DecodeError):
        CODEC.decode(payload + b"\xc0")


def test_non_bytes_input_is_a_decode_error() -> None:
    with pytest.raises(DecodeError):
        CODEC.decode(typing.cast(Any, "not bytes"))


def test_payload_over_the_limit_is_refused_when_decoding() -> None:
    payload = CODEC.encode(envelope_of(example_of(CursorAdded)))
    assert CODEC.decode(payload).event == example_of(CursorAdded)
    small = EventCodec(max_event_bytes=len(payload) - 1)
    with pytest.raises(DecodeError):
        small.decode(payload)
    assert EventCodec(max_event_bytes=len(payload)).decode(payload).event == example_of(CursorAdded)
    with pytest.raises(DecodeError):
        CODEC.decode(b"\xc0" * (DEFAULT_MAX_EVENT_BYTES + 1))


def test_encoding_over_the_limit_raises_payload_too_large() -> None:
    envelope = envelope_of(example_of(CursorAdded))
    size = len(CODEC.encode(envelope))
    assert len(EventCodec(max_event_bytes=size).encode(envelope)) == size
    with pytest.raises(PayloadTooLarge):
        EventCodec(max_event_bytes=size - 1).encode(envelope)
    huge = envelope_of(SessionStarted("s1", {"blob": "x" * DEFAULT_MAX_EVENT_BYTES}))
    with pytest.raises(PayloadTooLarge):
        CODEC.encode(huge)


def test_naive_datetime_is_an_encode_error() -> None:
    with pytest.raises(EncodeError) as excinfo:
        CODEC.encode(envelope_of(example_of(CursorAdded), occurred_at=datetime(2024, 1, 1)))
    assert excinfo.value.field == "occurred_at"


def test_lone_surrogate_is_an_encode_error() -> None:
    with pytest.raises(EncodeError) as excinfo:
        CODEC.encode(envelope_of(CursorAdded("a\ud800", "c1", ("x",), 0.0, 1.0)))
    assert excinfo.value.field == "agent_id"
    with pytest.raises(EncodeError) as excinfo:
        CODEC.encode(envelope_of(CursorAdded("a1", "c1", ("x", "\ud800"), 0.0, 1.0)))
    assert excinfo.value.field == "axes[1]"
    with pytest.raises(EncodeError) as excinfo:
        CODEC.encode(envelope_of(SessionStarted("s1", {"k": "\ud800"})))
    assert excinfo.value.field == "metadata.k"
    with pytest.raises(EncodeError):
        CODEC.encode(envelope_of(SessionStarted("s1", {"\udfff": 1})))
    with pytest.raises(EncodeError):
        CODEC.encode(envelope_of(SessionStarted("s1", {}), session_id="\ud800"))


def test_wrongly_typed_values_are_encode_errors() -> None:
    bad: list[tuple[Event, str]] = [
        (CursorAdded("a1", "c1", ("x",), typing.cast(Any, "0"), 1.0), "start"),
        (CursorAdded("a1", "c1", ("x",), 0.0, math.nan), "end"),
        (CursorAdded("a1", "c1", ("x",), typing.cast(Any, True), 1.0), "start"),
        (CursorAdded("a1", "c1", typing.cast(Any, "x"), 0.0, 1.0), "axes"),
        (CursorAdded(typing.cast(Any, 5), "c1", ("x",), 0.0, 1.0), "agent_id"),
        (SessionStarted("s1", {"k": typing.cast(Any, {"nested": 1})}), "metadata.k"),
        (SessionStarted("s1", typing.cast(Any, [("k", 1)])), "metadata"),
        (SessionStarted("s1", {typing.cast(Any, 1): 1}), "metadata"),
        (SessionMetadataChanged({}, typing.cast(Any, ("k", 2))), "removed[1]"),
    ]
    for event, field in bad:
        with pytest.raises(EncodeError) as excinfo:
            CODEC.encode(envelope_of(event))
        assert excinfo.value.field == field, event
    with pytest.raises(EncodeError):
        CODEC.encode(envelope_of(example_of(CursorAdded), event_id=typing.cast(Any, 1)))
    with pytest.raises(EncodeError):
        CODEC.encode(envelope_of(example_of(CursorAdded), agent_id=typing.cast(Any, 1)))


def test_numbers_out_of_range_are_encode_errors() -> None:
    # An int too large for a float (or for msgpack) must not escape as OverflowError.
    with pytest.raises(EncodeError) as excinfo:
        CODEC.encode(envelope_of(CursorAdded("a1", "c1", ("x",), 0.0, typing.cast(Any, 10**400))))
    assert excinfo.value.field == "end"
    with pytest.raises(EncodeError):
        CODEC.encode(envelope_of(SessionStarted("s1", {"big": 2**64})))
    with pytest.raises(EncodeError):
        CODEC.encode(envelope_of(SessionStarted("s1", {"small": -(2**63) - 1})))
    # Ints in float fields are stored as floats.
    decoded = CODEC.decode(
        CODEC.encode(envelope_of(CursorAdded("a1", "c1", ("x",), typing.cast(Any, 1), 2.0)))
    )
    assert isinstance(decoded.event, CursorAdded)
    assert type(decoded.event.start) is float


def test_out_of_range_timestamp_is_a_decode_error() -> None:
    raw = _raw()
    for at in (2**63 - 1, -(2**63)):
        with pytest.raises(DecodeError) as excinfo:
            CODEC.decode(pack({**raw, "at": at}))
        assert excinfo.value.field == "occurred_at"


def test_decoded_mappings_are_read_only() -> None:
    envelope = envelope_of(SessionStarted("s1", {"k": 1}))
    decoded = CODEC.decode(CODEC.encode(envelope))
    assert isinstance(decoded.event, SessionStarted)
    metadata = decoded.event.metadata
    with pytest.raises(TypeError):
        typing.cast(Any, metadata)["k"] = 2
    with pytest.raises(TypeError):
        typing.cast(Any, metadata)["new"] = 2
    assert dict(metadata) == {"k": 1}
    changed = CODEC.decode(CODEC.encode(envelope_of(SessionMetadataChanged({"a": None}, ("b",)))))
    assert isinstance(changed.event, SessionMetadataChanged)
    with pytest.raises(TypeError):
        typing.cast(Any, changed.event.changed)["a"] = 1
    assert isinstance(changed.event.removed, tuple)


def test_encoding_an_unregistered_event_or_a_bad_time_is_an_encode_error() -> None:
    import dataclasses as _dc

    from plantangenet.errors import EncodeError as _EncodeError
    from plantangenet.events import Envelope as _Envelope

    @_dc.dataclass(frozen=True, slots=True)
    class Stray(Event):
        x: int

    stray = _Envelope(Stray(1), "s", "e", "c", "r", AT)  # type: ignore[arg-type]
    with pytest.raises(_EncodeError) as excinfo:
        CODEC.encode(stray)
    assert excinfo.value.field == "type"
    good = envelope_of(example_of(SESSION_EVENTS[0]))
    bad_time = _dc.replace(good, occurred_at="yesterday")  # type: ignore[arg-type]
    with pytest.raises(_EncodeError, match="occurred_at"):
        CODEC.encode(bad_time)
