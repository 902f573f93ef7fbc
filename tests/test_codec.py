"""Tests of the event codec: round trips, hostile input, limits and typed errors.

Pure: no NATS. Strategies for events are derived from the event classes' own
type hints (including ``Literal``, ``bytes`` and nested value objects such as
policy statements), so a newly registered event type is covered without
editing this file. Envelopes carry a random hash-chain link and a random
authorization.
"""

from __future__ import annotations

import copy
import dataclasses
import hashlib
import math
import re
import types
import typing
from collections.abc import Iterator, Mapping
from datetime import UTC, datetime, timedelta, timezone
from typing import Any, Literal

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet.domain.policy import Condition, Statement
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
    Authorization,
    CursorAdded,
    Envelope,
    Event,
    EventCodec,
    EventRegistry,
    MetadataValue,
    PolicyChanged,
    SessionMetadataChanged,
    SessionStarted,
    event_type,
)
from plantangenet.events import codec as codec_module
from plantangenet.events.codec import DEFAULT_MAX_EVENT_BYTES

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# --------------------------------------------------------------------------
# A private registry with field types the session events do not use (int,
# optional str, value objects nested in value objects, optional value objects,
# value objects inside maps), so the generic machinery is exercised on them too.

PRIVATE = EventRegistry()
Shade = Literal["light", "dark"]


@dataclasses.dataclass(frozen=True, slots=True)
class Point:
    x: float
    shade: Shade = "light"


@dataclasses.dataclass(frozen=True, slots=True)
class Shape:
    name: str
    points: tuple[Point, ...]
    origin: Point | None = None
    tag: bytes = b""


@event_type("Drawn", version=1, registry=PRIVATE)
class Drawn(Event):
    shape: Shape
    mode: Literal["line", "fill"]
    blob: bytes
    layers: Mapping[str, tuple[Shape, ...]]


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
#: A hash-chain link: empty for a session's first event, else a SHA-256.
HASHES = st.just(b"") | st.binary(min_size=32, max_size=32)


def fields_of(cls: type[Any]) -> tuple[dataclasses.Field[Any], ...]:
    """The dataclass fields of an event class (or a value object)."""
    return dataclasses.fields(typing.cast(Any, cls))


def is_value_object(tp: Any) -> bool:
    """Whether annotation ``tp`` is a nested value object (a dataclass)."""
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


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
    if tp is bytes:
        return st.binary(max_size=8)
    if tp is None or tp is type(None):
        return st.none()
    if origin is Literal:
        return st.sampled_from(args)
    if origin in (typing.Union, types.UnionType):
        return st.one_of([strategy_for(a) for a in args])
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        return st.lists(strategy_for(args[0]), max_size=3).map(tuple)
    if origin in (Mapping, dict) and len(args) == 2 and args[0] is str:
        return st.dictionaries(TEXT, strategy_for(args[1]), max_size=3)
    if is_value_object(tp):
        return builds_from_hints(tp)
    raise TypeError(f"no strategy for event field annotation {tp!r}")


def builds_from_hints(cls: type[Any]) -> st.SearchStrategy[Any]:
    """Instances of a dataclass (event or value object), every field drawn from its hint."""
    hints = typing.get_type_hints(cls)
    return st.builds(cls, **{f.name: strategy_for(hints[f.name]) for f in fields_of(cls)})


def event_strategy(cls: type[Event]) -> st.SearchStrategy[Event]:
    return builds_from_hints(cls)


EVENT_STRATEGIES: dict[type[Event], st.SearchStrategy[Event]] = {
    cls: event_strategy(cls) for cls in SESSION_EVENTS
}
#: ``None`` or a random authorization, drawn from the envelope's own annotation.
AUTHORIZATIONS: st.SearchStrategy[Authorization | None] = strategy_for(
    typing.get_type_hints(Envelope)["authorization"]
)


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
        previous_hash=HASHES,
        authorization=AUTHORIZATIONS,
        principal=st.none() | st.just("operator") | st.text(max_size=40).map(lambda u: u + "@acc"),
        fingerprint=st.binary(max_size=16),
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


def example_of(cls: type[Any], name: str = "") -> Any:
    """A deterministic, non-trivial instance of ``cls`` (every field filled, recursively)."""
    hints = typing.get_type_hints(cls)
    return cls(
        **{
            f.name: _example_value(hints[f.name], f"{name}.{f.name}" if name else f.name)
            for f in fields_of(cls)
        }
    )


def _example_value(tp: Any, name: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp is str:
        return f"{name}-value"
    if tp is bool:
        return True
    if tp is int:
        return 7
    if tp is float:
        return 1.5
    if tp is bytes:
        return f"{name}-bytes".encode()
    if origin is Literal:
        return args[-1]
    if origin in (typing.Union, types.UnionType):
        return _example_value(args[0], name)
    if origin is tuple:
        return tuple(_example_value(args[0], f"{name}[{i}]") for i in range(2))
    if origin in (Mapping, dict):
        if tp == Mapping[str, MetadataValue]:
            return {"k": "v", "n": 3}
        return {"k": _example_value(args[1], f"{name}.k")}
    if is_value_object(tp):
        return example_of(tp, name)
    raise TypeError(tp)


def codec_for(cls: type[Event]) -> EventCodec:
    return PRIVATE_CODEC if cls in PRIVATE.types().values() else CODEC


def test_examples_fill_nested_value_objects() -> None:
    policy = example_of(PolicyChanged)
    assert isinstance(policy, PolicyChanged)
    assert len(policy.statements) == 2
    first = policy.statements[0]
    assert isinstance(first, Statement)
    assert first.effect == "deny"
    assert first.id == "statements[0].id-value"
    assert first.conditions[1] == Condition(
        "statements[0].conditions[1].key-value",
        "not_in",
        "statements[0].conditions[1].value-value",
    )
    drawn = example_of(Drawn)
    assert isinstance(drawn.shape.origin, Point)
    assert drawn.blob == b"blob-bytes"


def raw_of(envelope: Envelope, codec: EventCodec = CODEC) -> dict[str, Any]:
    raw = msgpack.unpackb(codec.encode(envelope), raw=False)
    assert isinstance(raw, dict)
    return raw


def wrong(value: object) -> Any:
    """``value``, typed as anything: deliberately ill-typed."""
    return value


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


@pytest.mark.parametrize("cls", SESSION_EVENTS, ids=lambda c: c.type_name)
@FAST
@given(data=st.data())
def test_generated_field_encoder_equals_the_field_converters(
    cls: type[Event], data: st.DataObject
) -> None:
    event = data.draw(EVENT_STRATEGIES[cls])
    spec = EVENTS.spec_of(cls)
    expected = {
        name: encode(getattr(event, name), name)
        for name, encode in zip(spec.field_names, spec.encoders, strict=True)
    }
    assert spec.encode_fields(event) == expected
    assert list(spec.encode_fields(event)) == list(spec.field_names)


def test_generated_field_encoder_sends_uncommon_values_to_the_converters() -> None:
    encode = EVENTS.spec_of(CursorAdded).encode_fields
    # an int start is stored as a float; a non-ASCII name passes; bad values are named
    assert encode(CursorAdded("agént", "c1", ("x",), 0, 1.0, None))["start"] == 0.0
    assert type(encode(CursorAdded("agént", "c1", ("x",), 0, 1.0, 2))["resolution"]) is float
    with pytest.raises(EncodeError, match="end"):
        encode(CursorAdded("a1", "c1", ("x",), 0.0, float("nan")))
    with pytest.raises(EncodeError, match="resolution"):
        encode(CursorAdded("a1", "c1", ("x",), 0.0, 1.0, "fine"))  # type: ignore[arg-type]
    with pytest.raises(EncodeError, match="cursor_id"):
        encode(CursorAdded("a1", 7, ("x",), 0.0, 1.0))  # type: ignore[arg-type]


@settings(max_examples=60, deadline=None)
@given(envelope=ANY_ENVELOPE)
def test_round_trip_is_stable(envelope: Envelope) -> None:
    payload = CODEC.encode(envelope)
    decoded = CODEC.decode(payload, sequence=envelope.sequence)
    assert decoded == envelope
    # Encoding the decoded envelope gives the very same bytes.
    assert CODEC.encode(decoded) == payload


@pytest.mark.parametrize("cls", [Counted, Drawn], ids=lambda c: c.type_name)
@FAST
@given(data=st.data())
def test_private_events_with_other_field_types_round_trip(
    cls: type[Event], data: st.DataObject
) -> None:
    envelope = data.draw(envelopes(event_strategy(cls)))
    payload = PRIVATE_CODEC.encode(envelope)
    decoded = PRIVATE_CODEC.decode(payload, sequence=envelope.sequence)
    assert decoded == envelope
    assert type(decoded.event) is cls
    assert PRIVATE_CODEC.encode(decoded) == payload


@FAST
@given(envelope=ANY_ENVELOPE)
def test_decoded_digest_is_the_sha256_of_the_payload(envelope: Envelope) -> None:
    payload = CODEC.encode(envelope)
    digest = hashlib.sha256(payload).digest()
    for given_as in (payload, bytearray(payload), memoryview(payload)):
        decoded = CODEC.decode(typing.cast(bytes, given_as))
        assert decoded.digest == digest
        assert type(decoded.previous_hash) is bytes
        assert decoded.previous_hash == envelope.previous_hash
        assert decoded.authorization == envelope.authorization


def test_hash_chain_links_and_digest_is_not_compared() -> None:
    first = envelope_of(SessionStarted("s1", {}), event_id="e1")
    assert first.previous_hash == b""
    assert first.authorization is None
    assert first.digest == b""
    first_payload = CODEC.encode(first)
    stored_first = CODEC.decode(first_payload, sequence=1)
    assert stored_first == first.stored_at(1)  # the digest is not part of equality
    assert stored_first.digest == hashlib.sha256(first_payload).digest()
    assert "digest" not in repr(stored_first)

    second = envelope_of(example_of(CursorAdded), event_id="e2", previous_hash=stored_first.digest)
    stored_second = CODEC.decode(CODEC.encode(second), sequence=2)
    assert stored_second.previous_hash == stored_first.digest
    # Any change to the first event changes the digest the second must name.
    tampered = CODEC.decode(CODEC.encode(envelope_of(SessionStarted("s1", {"x": 1}))))
    assert tampered.digest != stored_first.digest
    # stored_at keeps a known digest unless it is given a new one.
    assert stored_first.stored_at(5).digest == stored_first.digest
    assert stored_first.stored_at(5, b"d").digest == b"d"


def test_authorization_round_trips_including_owner_statements() -> None:
    authorization = Authorization(
        "cursor.add", ("axis.x", "axis.ocean.temp"), ("watchers", None), 3
    )
    decoded = CODEC.decode(
        CODEC.encode(envelope_of(example_of(CursorAdded), authorization=authorization))
    )
    assert decoded.authorization == authorization
    assert isinstance(decoded.authorization, Authorization)
    assert type(decoded.authorization.resources) is tuple
    assert type(decoded.authorization.statements) is tuple


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


AT_MICROS = int((AT - datetime(1970, 1, 1, tzinfo=UTC)) / timedelta(microseconds=1))


def test_layout_matches_the_documented_envelope() -> None:
    envelope = envelope_of(CursorAdded("a1", "c1", ("x", "y"), 0.0, 2.5))
    raw = raw_of(envelope)
    assert raw == {
        "f": 3,
        "t": "CursorAdded",
        "v": 2,
        "id": "e1",
        "s": "s1",
        "a": "a1",
        "c": "c1",
        "r": "r1",
        "at": AT_MICROS,
        "p": b"",
        "z": None,
        "u": None,
        "k": b"",
        "n": None,
        "d": {
            "agent_id": "a1",
            "cursor_id": "c1",
            "axes": ["x", "y"],
            "start": 0.0,
            "end": 2.5,
            "resolution": None,
        },
    }
    # The keys written are exactly the keys the module documents, in order.
    doc = codec_module.__doc__ or ""
    layout = doc[doc.index("{") : doc.index("The stream sequence")]
    assert re.findall(r'"(\w+)":', layout) == list(raw)


def format_1(envelope: Envelope) -> dict[str, Any]:
    """``envelope`` as code before principals wrote it (envelope format 1)."""
    raw = raw_of(envelope)
    del raw["u"], raw["k"], raw["n"]
    return {**raw, "f": 1}


def format_2(envelope: Envelope) -> dict[str, Any]:
    """``envelope`` as code before revisions wrote it (envelope format 2)."""
    raw = raw_of(envelope)
    del raw["n"]
    return {**raw, "f": 2}


def test_revision_round_trips_and_format_2_decodes_unnumbered() -> None:
    envelope = envelope_of(SessionStarted("s1", {}), revision=17)
    assert raw_of(envelope)["n"] == 17
    assert CODEC.decode(CODEC.encode(envelope)) == envelope
    payload = pack(format_2(envelope))
    decoded = CODEC.decode(payload, sequence=3)
    assert decoded == dataclasses.replace(envelope, revision=None, sequence=3)
    assert decoded.digest == hashlib.sha256(payload).digest()  # its place in the chain kept


@pytest.mark.parametrize("revision", [0, -1, "3", 2.0, True])
def test_a_revision_that_is_no_positive_integer_is_refused_both_ways(revision: Any) -> None:
    raw = raw_of(envelope_of(SessionStarted("s1", {})))
    with pytest.raises(DecodeError) as decoding:
        CODEC.decode(pack({**raw, "n": revision}))
    assert decoding.value.field == "revision"
    with pytest.raises(EncodeError) as encoding:
        CODEC.encode(envelope_of(SessionStarted("s1", {}), revision=revision))
    assert encoding.value.field == "revision"


def test_principal_and_fingerprint_round_trip() -> None:
    envelope = envelope_of(
        SessionStarted("s1", {}), principal="alice@bot-alice", fingerprint=b"\x01" * 16
    )
    raw = raw_of(envelope)
    assert (raw["u"], raw["k"]) == ("alice@bot-alice", b"\x01" * 16)
    decoded = CODEC.decode(CODEC.encode(envelope))
    assert (decoded.principal, decoded.fingerprint) == ("alice@bot-alice", b"\x01" * 16)
    assert decoded == envelope


def test_format_1_envelopes_decode_with_the_principal_unknown() -> None:
    envelope = envelope_of(CursorAdded("a1", "c1", ("x",), 0.0, 1.0), principal="x@y")
    payload = pack(format_1(envelope))
    decoded = CODEC.decode(payload, sequence=7)
    assert decoded.principal is None
    assert decoded.fingerprint == b""
    assert decoded == dataclasses.replace(envelope, principal=None, sequence=7)
    # The digest is of the stored bytes: a format-1 event keeps its place in the chain.
    assert decoded.digest == hashlib.sha256(payload).digest()


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda raw: {**raw, "f": 1}, "format"),  # format 1 has no principal or fingerprint
        (lambda raw: {k: v for k, v in raw.items() if k != "u"}, "principal"),
        (lambda raw: {k: v for k, v in raw.items() if k != "k"}, "fingerprint"),
        (lambda raw: {**raw, "u": "p" * 257}, "principal"),
        (lambda raw: {**raw, "k": b"k" * 17}, "fingerprint"),
    ],
)
def test_mixed_or_oversized_format_fields_are_named(mutate: Any, field: str) -> None:
    raw = raw_of(envelope_of(SessionStarted("s1", {}), principal="a@b"))
    with pytest.raises(DecodeError) as excinfo:
        CODEC.decode(pack(mutate(raw)))
    assert excinfo.value.field == field


def test_format_1_with_format_2_keys_or_missing_keys_is_refused() -> None:
    raw = format_1(envelope_of(SessionStarted("s1", {})))
    with pytest.raises(DecodeError) as excinfo:
        CODEC.decode(pack({**raw, "u": None}))
    assert excinfo.value.field == "envelope"
    del raw["z"]
    with pytest.raises(DecodeError) as excinfo:
        CODEC.decode(pack(raw))
    assert excinfo.value.field == "authorization"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"principal": "p" * 257}, "principal"),
        ({"principal": 7}, "principal"),
        ({"fingerprint": b"f" * 17}, "fingerprint"),
        ({"fingerprint": "text"}, "fingerprint"),
    ],
)
def test_oversized_or_mistyped_principal_or_fingerprint_is_an_encode_error(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(EncodeError) as excinfo:
        CODEC.encode(envelope_of(SessionStarted("s1", {}), **overrides))
    assert excinfo.value.field == field


def test_layout_of_the_hash_chain_and_the_authorization() -> None:
    link = hashlib.sha256(b"previous").digest()
    envelope = envelope_of(
        CursorAdded("a1", "c1", ("x",), 0.0, 1.0),
        previous_hash=link,
        authorization=Authorization("cursor.add", ("axis.x",), ("watchers",), 4),
    )
    payload = CODEC.encode(envelope)
    raw = msgpack.unpackb(payload, raw=True)  # raw=True: tell bin from str
    assert raw[b"p"] == link
    assert raw[b"z"] == {
        b"action": b"cursor.add",
        b"resources": [b"axis.x"],
        b"statements": [b"watchers"],
        b"policy_version": 4,
    }
    # previous_hash is msgpack bin (0xc4, length 32), not str.
    assert b"\xa1p\xc4\x20" + link in payload
    owner = envelope_of(
        example_of(CursorAdded),
        authorization=Authorization("session.end", ("session",), (None,), 0),
    )
    assert raw_of(owner)["z"] == {
        "action": "session.end",
        "resources": ["session"],
        "statements": [None],
        "policy_version": 0,
    }


def test_layout_of_nested_statements() -> None:
    statement = Statement(
        "watchers",
        "allow",
        ("cursor.*",),
        ("axis.ocean.*",),
        roles=("watcher",),
        conditions=(Condition("hour", "ge", 9), Condition("identity.tier", "in", ("a", 1))),
    )
    raw = raw_of(envelope_of(PolicyChanged((statement,), added=("watchers",))))
    assert raw["t"] == "PolicyChanged"
    assert raw["v"] == 3
    assert raw["d"] == {
        "statements": [
            {
                "id": "watchers",
                "effect": "allow",
                "actions": ["cursor.*"],
                "resources": ["axis.ocean.*"],
                "roles": ["watcher"],
                "conditions": [
                    {"key": "hour", "op": "ge", "value": 9},
                    {"key": "identity.tier", "op": "in", "value": ["a", 1]},
                ],
                "disclosure": None,
            }
        ],
        "added": ["watchers"],
        "removed": [],
    }
    decoded = CODEC.decode(pack(raw)).event
    assert decoded == PolicyChanged((statement,), added=("watchers",))
    assert isinstance(decoded, PolicyChanged)
    assert type(decoded.statements[0]) is Statement
    assert type(decoded.statements[0].conditions[1]) is Condition
    assert decoded.statements[0].conditions[1].value == ("a", 1)
    # Statement fields with defaults may be absent from stored data.
    minimal = {
        k: v
        for k, v in raw["d"]["statements"][0].items()
        if k not in ("roles", "conditions", "disclosure")
    }
    sparse = CODEC.decode(pack({**raw, "d": {"statements": [minimal]}})).event
    assert sparse == PolicyChanged(
        (Statement("watchers", "allow", ("cursor.*",), ("axis.ocean.*",)),)
    )


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


def _raw_authorization(authorization: Authorization | None) -> dict[str, Any] | None:
    if authorization is None:
        return None
    return {
        "action": authorization.action,
        "resources": list(authorization.resources),
        "statements": list(authorization.statements),
        "policy_version": authorization.policy_version,
    }


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
        "p": data.draw(HASHES | STRUCTURES),
        "z": data.draw(AUTHORIZATIONS.map(_raw_authorization) | STRUCTURES),
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
    "p": ("previous_hash", "previous_hash", (bytes,)),
    "z": ("authorization", "authorization", (dict, type(None))),
    "u": ("principal", "principal", (str, type(None))),
    "k": ("fingerprint", "fingerprint", (bytes,)),
    "n": ("revision", "revision", (int, type(None))),
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


def test_envelope_key_table_covers_every_written_key() -> None:
    assert set(ENVELOPE_KEYS) == set(_raw_any())


def _raw_any() -> dict[str, Any]:
    return raw_of(envelope_of(example_of(CursorAdded)))


@pytest.mark.parametrize(
    "value",
    [
        {},
        {"action": "a", "resources": [], "statements": []},
        {"action": "a", "resources": [], "statements": [], "policy_version": 1, "extra": 1},
        {"action": 1, "resources": [], "statements": [], "policy_version": 1},
        {"action": "a", "resources": "r", "statements": [], "policy_version": 1},
        {"action": "a", "resources": ["r"], "statements": [1], "policy_version": 1},
        {"action": "a", "resources": [], "statements": [], "policy_version": True},
        {"action": "a", "resources": [], "statements": [], "policy_version": 1.0},
        {b"action": "a", "resources": [], "statements": [], "policy_version": 1},
    ],
    ids=repr,
)
def test_malformed_authorization_map_is_named(value: dict[Any, Any]) -> None:
    with pytest.raises(DecodeError) as excinfo:
        CODEC.decode(pack({**_raw_any(), "z": value}))
    field = excinfo.value.field
    assert field is not None
    assert field == "authorization" or field.startswith("authorization."), field
    assert "authorization" in str(excinfo.value)


def _conforms(value: Any, tp: Any) -> bool:
    """Whether ``value`` (as msgpack gives it) is valid for annotation ``tp``."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in (str, int, bool, bytes):
        return type(value) is tp
    if tp is float:
        return type(value) in (int, float) and math.isfinite(value)
    if tp is None or tp is type(None):
        return value is None
    if origin is Literal:
        return type(value) is str and value in args
    if origin in (typing.Union, types.UnionType):
        return any(_conforms(value, a) for a in args)
    if origin is tuple:
        return type(value) is list and all(_conforms(v, args[0]) for v in value)
    if origin in (Mapping, dict):
        return type(value) is dict and all(
            type(k) is str and _conforms(v, args[1]) for k, v in value.items()
        )
    if is_value_object(tp):
        hints = typing.get_type_hints(tp)
        return (
            type(value) is dict
            and value.keys() <= hints.keys()
            and _required(tp) <= value.keys()
            and all(_conforms(v, hints[k]) for k, v in value.items())
        )
    raise TypeError(tp)


def _required(cls: type[Any]) -> set[str]:
    return {
        f.name
        for f in fields_of(cls)
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    }


Keys = tuple[str | int, ...]


def _nodes(value: Any, tp: Any, path: str, keys: Keys) -> Iterator[tuple[str, Any, Keys]]:
    """Every position in a field's stored data: ``(error path, annotation, keys to it)``.

    Unions are not entered: a union reports a mismatch at its own position.
    """
    yield path, tp, keys
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is tuple and type(value) is list:
        for i, item in enumerate(value):
            yield from _nodes(item, args[0], f"{path}[{i}]", (*keys, i))
    elif origin in (Mapping, dict) and type(value) is dict:
        for key, item in value.items():
            yield from _nodes(item, args[1], f"{path}.{key}", (*keys, key))
    elif is_value_object(tp) and type(value) is dict:
        hints = typing.get_type_hints(tp)
        for key, item in value.items():
            yield from _nodes(item, hints[key], f"{path}.{key}", (*keys, key))


def _at(data: Any, keys: Keys) -> Any:
    for key in keys:
        data = data[key]
    return data


def _replaced(data: dict[str, Any], keys: Keys, value: Any) -> dict[str, Any]:
    copied = copy.deepcopy(data)
    _at(copied, keys[:-1])[keys[-1]] = value
    return copied


def _all_nodes(cls: type[Event], data: dict[str, Any]) -> Iterator[tuple[str, Any, Keys]]:
    hints = typing.get_type_hints(cls)
    for f in fields_of(cls):
        yield from _nodes(data[f.name], hints[f.name], f.name, (f.name,))


def _names_path(err: DecodeError, path: str) -> bool:
    field = err.field
    return field is not None and (field == path or field.startswith((f"{path}.", f"{path}[")))


WRONG_VALUES: tuple[Any, ...] = (
    *WRONG_POOL,
    math.nan,
    math.inf,
    "\u00e9",
    2**64 - 1,
    -(2**63),
    "allow",
    {"x": 1.0},
)
ALL_EVENTS: list[type[Event]] = [*SESSION_EVENTS, Counted, Drawn]


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda c: c.type_name)
def test_data_value_of_wrong_type_is_named_by_its_path(cls: type[Event]) -> None:
    """Every field, and every position nested in it, is checked and named."""
    codec = codec_for(cls)
    raw = raw_of(envelope_of(example_of(cls)), codec)
    positions = list(_all_nodes(cls, raw["d"]))
    assert len(positions) >= len(fields_of(cls))
    for path, tp, keys in positions:
        for value in WRONG_VALUES:
            mutated = {**raw, "d": _replaced(raw["d"], keys, value)}
            if _conforms(value, tp):
                decoded = codec.decode(pack(mutated))
                assert codec.decode(codec.encode(decoded)) == decoded
                if type(value) is not dict:  # a map may gain a value object's defaults
                    options = typing.get_args(tp) or (tp,)
                    floats = float in options and int not in options
                    expected = float(value) if floats and type(value) is int else value
                    assert _at(raw_of(decoded, codec)["d"], keys) == expected, path
                continue
            with pytest.raises(DecodeError) as excinfo:
                codec.decode(pack(mutated))
            assert _names_path(excinfo.value, path), (path, value, excinfo.value.field)
            assert path in str(excinfo.value)


@pytest.mark.parametrize("cls", ALL_EVENTS, ids=lambda c: c.type_name)
def test_missing_and_unknown_value_object_fields_are_named(cls: type[Event]) -> None:
    codec = codec_for(cls)
    raw = raw_of(envelope_of(example_of(cls)), codec)
    for path, tp, keys in _all_nodes(cls, raw["d"]):
        if not is_value_object(tp):
            continue
        stored = _at(raw["d"], keys)
        for f in fields_of(tp):
            without = {k: v for k, v in stored.items() if k != f.name}
            payload = pack({**raw, "d": _replaced(raw["d"], keys, without)})
            if f.name in _required(tp):
                with pytest.raises(DecodeError) as excinfo:
                    codec.decode(payload)
                assert excinfo.value.field == f"{path}.{f.name}"
                assert f"{path}.{f.name}" in str(excinfo.value)
            else:
                codec.decode(payload)  # a field with a default may be absent
        surprise = pack({**raw, "d": _replaced(raw["d"], keys, {**stored, "surprise": 1})})
        with pytest.raises(DecodeError) as excinfo:
            codec.decode(surprise)
        assert excinfo.value.field == f"{path}.surprise"
        assert path in str(excinfo.value)


def test_value_objects_are_checked_in_every_session_event_that_has_them() -> None:
    """The generic tests above do reach into the statements of PolicyChanged."""
    raw = _raw(PolicyChanged)
    paths = {path for path, _, _ in _all_nodes(PolicyChanged, raw["d"])}
    assert {
        "statements[0].effect",
        "statements[1].conditions[0].op",
        "statements[1].conditions[1].value",
        "statements[0].roles[1]",
    } <= paths


@pytest.mark.parametrize(
    ("keys", "value", "field"),
    [
        (("statements", 0, "effect"), "maybe", "statements[0].effect"),
        (("statements", 0, "effect"), 1, "statements[0].effect"),
        (("statements", 1, "effect"), None, "statements[1].effect"),
        (("statements", 0, "id"), b"id", "statements[0].id"),
        (("statements", 0, "actions"), "cursor.add", "statements[0].actions"),
        (("statements", 1, "resources", 1), 5, "statements[1].resources[1]"),
        (("statements", 0, "roles"), None, "statements[0].roles"),
        (("statements", 1, "conditions", 0, "op"), "between", "statements[1].conditions[0].op"),
        (
            ("statements", 1, "conditions", 1, "value"),
            {"a": 1},
            "statements[1].conditions[1].value",
        ),
        (
            ("statements", 1, "conditions", 1, "value"),
            ["a", []],
            "statements[1].conditions[1].value",
        ),
        (
            ("statements", 1, "conditions", 1, "value"),
            math.nan,
            "statements[1].conditions[1].value",
        ),
        (("statements", 0, "conditions", 0), ["key", "op"], "statements[0].conditions[0]"),
        (("statements", 1), "watchers", "statements[1]"),
        (("statements",), {"id": "s"}, "statements"),
    ],
)
def test_wrong_nested_statement_field_names_the_nested_path(
    keys: Keys, value: Any, field: str
) -> None:
    raw = _raw(PolicyChanged)
    with pytest.raises(DecodeError) as excinfo:
        CODEC.decode(pack({**raw, "d": _replaced(raw["d"], keys, value)}))
    assert excinfo.value.field == field
    assert field in str(excinfo.value)


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
        CODEC.decode(pack({**_raw(), "v": CursorAdded.version + 1}))
    assert excinfo.value.field == "version"
    assert f"v{CursorAdded.version + 1}" in str(excinfo.value)


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


DRAWN: Drawn = example_of(Drawn)


def test_wrongly_typed_nested_values_are_encode_errors() -> None:
    good = Statement("s", "allow", ("a",), ("r",))
    bad: list[tuple[Event, str]] = [
        (
            PolicyChanged((good, dataclasses.replace(good, effect=wrong("maybe")))),
            "statements[1].effect",
        ),
        (PolicyChanged((dataclasses.replace(good, actions=wrong("a")),)), "statements[0].actions"),
        (PolicyChanged((dataclasses.replace(good, roles=wrong((1,))),)), "statements[0].roles[0]"),
        (
            PolicyChanged(
                (dataclasses.replace(good, conditions=(Condition("k", wrong("between"), 1),)),)
            ),
            "statements[0].conditions[0].op",
        ),
        (
            PolicyChanged(
                (dataclasses.replace(good, conditions=(Condition("k", "eq", wrong({"x": 1})),)),)
            ),
            "statements[0].conditions[0].value",
        ),
        (PolicyChanged(wrong(({"id": "s"},))), "statements[0]"),
        (PolicyChanged(wrong((good, None))), "statements[1]"),
        (dataclasses.replace(DRAWN, mode=wrong("dots")), "mode"),
        (dataclasses.replace(DRAWN, blob=wrong(bytearray(b"x"))), "blob"),
        (
            dataclasses.replace(DRAWN, shape=Shape("n", (Point(1.0, wrong("grey")),))),
            "shape.points[0].shade",
        ),
        (dataclasses.replace(DRAWN, shape=wrong(Point(1.0))), "shape"),
    ]
    for event, field in bad:
        codec = codec_for(type(event))
        with pytest.raises(EncodeError) as excinfo:
            codec.encode(envelope_of(event))
        assert excinfo.value.field == field, event
        assert field in str(excinfo.value)


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"previous_hash": ""}, "previous_hash"),
        ({"previous_hash": bytearray(32)}, "previous_hash"),
        ({"previous_hash": None}, "previous_hash"),
        ({"authorization": "allowed"}, "authorization"),
        ({"authorization": {"action": "a"}}, "authorization"),
        ({"authorization": Authorization("a", ("r",), wrong((1,)), 0)}, "authorization"),
        ({"authorization": Authorization("a", ("r",), (None,), wrong("0"))}, "authorization"),
    ],
    ids=repr,
)
def test_wrong_chain_link_or_authorization_is_an_encode_error(
    overrides: dict[str, Any], field: str
) -> None:
    with pytest.raises(EncodeError) as excinfo:
        CODEC.encode(envelope_of(example_of(CursorAdded), **overrides))
    assert excinfo.value.field is not None
    assert excinfo.value.field.startswith(field)
    assert field in str(excinfo.value)


def test_a_cached_authorization_does_not_let_an_equal_mistyped_one_through() -> None:
    # Encoded authorizations are cached by value; True == 1 and hash alike, so the type
    # checks must come before the cache, or a bool version would be stored as an int.
    good = Authorization("cursor.move", ("axis.x",), (None,), 1)
    CODEC.encode(envelope_of(example_of(CursorAdded), authorization=good))
    bad = Authorization("cursor.move", ("axis.x",), (None,), typing.cast(Any, True))
    assert bad == good and hash(bad) == hash(good)
    with pytest.raises(EncodeError, match="authorization"):
        CODEC.encode(envelope_of(example_of(CursorAdded), authorization=bad))


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

    stray = _Envelope(Stray(1), "s", "e", "c", "r", AT)
    with pytest.raises(_EncodeError) as excinfo:
        CODEC.encode(stray)
    assert excinfo.value.field == "type"
    good = envelope_of(example_of(SESSION_EVENTS[0]))
    bad_time = _dc.replace(good, occurred_at="yesterday")  # type: ignore[arg-type]
    with pytest.raises(_EncodeError, match="occurred_at"):
        CODEC.encode(bad_time)
