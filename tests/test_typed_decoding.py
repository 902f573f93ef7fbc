"""The codec's typed path (plantangenet.events.typed_decoding) against its complete path.

The typed path decodes the common case in C and hands everything else to the
complete path, which decides. These tests hold it to that: for valid envelopes
of every event type and for payloads with one value, key or byte changed, the
typed path either steps aside or returns exactly what the complete path
returns -- never an envelope the complete path would refuse or build otherwise.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import typing
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any, Literal

import msgpack
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet.errors import DecodeError
from plantangenet.events import CODEC, SESSION_EVENTS, CursorMoved, Envelope, EventCodec
from plantangenet.events.codec import MAX_PRINCIPAL
from plantangenet.events.typed_decoding import _UNMAPPED, fields_decoder, typed_annotation
from tests.test_codec import (
    ANY_ENVELOPE,
    AT,
    PRIVATE,
    PRIVATE_CODEC,
    Counted,
    Drawn,
    Evolved,
    builds_from_hints,
    envelope_of,
    envelopes,
    pack,
    raw_of,
)

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
ENVELOPE_FIELDS = [f.name for f in dataclasses.fields(Envelope) if f.name != "digest"]
ENVELOPE_KEYS = ("f", "t", "v", "id", "s", "a", "c", "r", "at", "p", "z", "u", "k", "n", "d")


def same(a: Envelope, b: Envelope) -> bool:
    """Equal in every field, the ones left out of ``==`` (the digest) included."""
    return all(
        getattr(a, f.name) == getattr(b, f.name)
        and type(getattr(a, f.name)) is type(getattr(b, f.name))
        for f in dataclasses.fields(Envelope)
    ) and all(
        type(getattr(a.event, f.name)) is type(getattr(b.event, f.name))
        for f in dataclasses.fields(typing.cast(Any, a.event))
    )


def complete(codec: EventCodec, payload: bytes, sequence: int | None = 3) -> Envelope | str:
    """What the complete path makes of ``payload``: the envelope, or its error's text."""
    try:
        return codec._decode(payload, sequence)
    except DecodeError as exc:
        return f"{type(exc).__name__}: {exc}"


def typed(codec: EventCodec, payload: bytes, sequence: int | None = 3) -> Envelope | None:
    """What the typed path makes of it: the envelope, or ``None`` for "not mine"."""
    try:
        return codec._decode_typed(payload, sequence)
    except Exception:
        return None


def check_agrees(codec: EventCodec, payload: bytes) -> Envelope | None:
    """Assert the typed path, and the checked fields, agree with the complete path; the
    typed result."""
    fast = typed(codec, payload)
    full = complete(codec, payload)
    if fast is not None:
        assert isinstance(full, Envelope), (full, fast)
        assert same(fast, full), (fast, full)
    checked = codec.checked(payload)
    if checked is not None:  # only what decodes, and with the same values
        assert isinstance(full, Envelope), (full, checked)
        assert checked.type_name == full.event.type_name
        assert checked.occurred_at == round(full.occurred_at.timestamp() * 1e6)
        assert checked.occurred == full.occurred_at
        for name in (
            "session_id",
            "event_id",
            "agent_id",
            "causation_id",
            "correlation_id",
            "authorization",
        ):
            assert getattr(checked, name) == getattr(full, name), name
        for f in dataclasses.fields(typing.cast(Any, full.event)):
            value, expected = getattr(checked.fields, f.name), getattr(full.event, f.name)
            assert value == expected and type(value) is type(expected), (f.name, value)
    decoded = codec.decode(payload, sequence=3) if isinstance(full, Envelope) else None
    if decoded is not None:
        assert isinstance(full, Envelope) and same(decoded, full)
    return fast


# --------------------------------------------------------------------------
# Which annotations and event types take the typed path


@pytest.mark.parametrize(
    ("annotation", "mapped"),
    [
        (str, True),
        (int, True),
        (float, True),
        (bool, True),
        (bytes, True),
        (None, True),
        (str | None, True),
        (float | None, True),
        (tuple[str, ...], True),
        (tuple[float | None, ...], True),
        (Literal["a", "b"], True),
        (Literal[1, 2], False),  # only string literals, as the converters
        (str | int, True),  # distinct msgpack types: the same member either way
        (str | int | float | bool | None, True),
        (int | float, True),
        (float | int, False),  # the converters make an int a float: msgspec would not
        (str | Literal["a"], False),
        (str | tuple[str, ...], False),
        (Mapping[str, int], False),  # only as a field's own annotation (fields_decoder)
        (tuple[str, int], False),
        (list[str], False),
    ],
)
def test_annotations_map_only_where_the_checks_are_the_same(annotation: Any, mapped: bool) -> None:
    assert (typed_annotation(annotation) is not _UNMAPPED) is mapped


def test_the_hot_event_types_have_a_typed_decoder_and_maps_and_value_objects_do_not() -> None:
    assert CODEC._typed_decoder("CursorMoved")[1] is not None
    with_decoder = {cls for cls in SESSION_EVENTS if CODEC._typed_decoder(cls.type_name)[1]}
    assert CursorMoved in with_decoder
    assert len(with_decoder) >= len(SESSION_EVENTS) // 2
    hints = typing.get_type_hints
    assert fields_decoder(Drawn, hints(Drawn)) is None  # nested value objects
    assert fields_decoder(Counted, hints(Counted)) is not None  # a map of several types
    assert fields_decoder(Evolved, hints(Evolved)) is not None
    without = {c.type_name for c in SESSION_EVENTS if not CODEC._typed_decoder(c.type_name)[1]}
    assert without == {"PolicyChanged", "ChemProposed"}  # statements, clauses: value objects


def test_an_event_msgspec_cannot_type_has_no_typed_decoder_and_decodes_the_complete_way() -> None:
    from plantangenet.events import Event, EventRegistry, event_type

    registry = EventRegistry()

    @event_type("Blob", registry=registry)
    class Blob(Event):
        content: str | bytes  # a union msgspec refuses (two str-like types)

    codec = EventCodec(registry)
    assert typed_annotation(str | bytes) is not _UNMAPPED  # distinct msgpack types...
    assert fields_decoder(Blob, typing.get_type_hints(Blob)) is None  # ...msgspec refuses
    for content in ("text", b"bytes"):
        payload = codec.encode(envelope_of(Blob(content)))
        assert codec.decode(payload).event == Blob(content)
    assert codec._typed["Blob"] == (1, None, None)  # looked up once, remembered


def test_maps_decode_as_read_only_views_with_every_value_checked() -> None:
    payload = PRIVATE_CODEC.encode(envelope_of(Counted(1, 2.0, None, True, {"a": 1, "b": "x"})))
    fast = check_agrees(PRIVATE_CODEC, payload)
    assert fast is not None and isinstance(fast.event, Counted)
    assert type(fast.event.labels) is MappingProxyType and fast.event.labels == {"a": 1, "b": "x"}
    raw = msgpack.unpackb(payload)
    for labels in ({"a": math.nan}, {"a": [1]}, {"a": {"b": 1}}, {"a": b"x"}):
        raw["d"]["labels"] = labels
        assert typed(PRIVATE_CODEC, pack(raw)) is None
        with pytest.raises(DecodeError):
            PRIVATE_CODEC.decode(pack(raw))
    raw["d"]["labels"] = {"a": 1}
    packed = pack(raw)
    bytes_key = packed.replace(b"\x81\xa1a\x01", b"\x81\xc4\x01a\x01")  # the key as bin
    assert bytes_key != packed
    assert typed(PRIVATE_CODEC, bytes_key) is None
    with pytest.raises(DecodeError):
        PRIVATE_CODEC.decode(bytes_key)


@SETTINGS
@given(envelopes(st.sampled_from([Counted]).flatmap(builds_from_hints)))
def test_maps_and_unions_decode_the_same_both_ways(envelope: Envelope) -> None:
    fast = check_agrees(PRIVATE_CODEC, PRIVATE_CODEC.encode(envelope))
    if 1900 < envelope.occurred_at.year < 2100:
        assert fast is not None


def test_a_cursor_move_takes_the_typed_path_and_equals_the_complete_one() -> None:
    envelope = envelope_of(
        CursorMoved("bot", "c1", ("x", "y"), 1.0, 2.5, None),
        principal="bot@bots",
        fingerprint=b"\x01" * 16,
        revision=12,
        previous_hash=b"\x02" * 32,
    )
    payload = CODEC.encode(envelope)
    fast = CODEC._decode_typed(payload, 9)
    assert fast is not None
    full = CODEC._decode(payload, 9)
    assert same(fast, full)
    assert fast.sequence == 9 and fast.revision == 12 and fast.occurred_at == AT
    assert isinstance(fast.event, CursorMoved) and type(fast.event.axes) is tuple
    # A replay's run of moves reads its fields checked, without the envelope built.
    checked = CODEC.checked(payload)
    assert checked is not None and checked[:2] == ("CursorMoved", envelope.session_id)
    assert check_agrees(CODEC, payload) is not None
    assert CODEC.checked(payload[:-1]) is None  # cut short: decode decides
    assert CODEC.checked(payload, types={"CursorMoved"}) == checked
    assert CODEC.checked(payload, types={"CursorAdded"}) is None  # not asked for


@SETTINGS
@given(ANY_ENVELOPE)
def test_every_session_event_decodes_the_same_both_ways(envelope: Envelope) -> None:
    check_agrees(CODEC, CODEC.encode(envelope))


@SETTINGS
@given(ANY_ENVELOPE, st.booleans())
def test_a_decode_without_digest_differs_only_in_the_digest(
    envelope: Envelope, older_format: bool
) -> None:
    """Both paths (the typed one; format 2 goes the complete one) skip only the hashing."""
    payload = CODEC.encode(envelope)
    if older_format:
        payload = pack({k: v for k, v in raw_of(envelope).items() if k != "n"} | {"f": 2})
    full = CODEC.decode(payload, sequence=7)
    bare = CODEC.decode(payload, sequence=7, digest=False)
    assert full.digest == hashlib.sha256(payload).digest()
    assert bare.digest == b""
    assert dataclasses.replace(bare, digest=full.digest) == full
    for name in ENVELOPE_FIELDS:
        assert getattr(bare, name) == getattr(full, name), name


@SETTINGS
@given(envelopes(st.just(Evolved("x")) | st.builds(Evolved, st.text(max_size=30))))
def test_a_private_registry_decodes_the_same_both_ways(envelope: Envelope) -> None:
    payload = PRIVATE_CODEC.encode(envelope)
    fast = check_agrees(PRIVATE_CODEC, payload)
    if 1900 < envelope.occurred_at.year < 2100:  # beyond 1833-2106: the complete path's times
        assert fast is not None


# --------------------------------------------------------------------------
# Changed payloads: the typed path must never accept what the complete path refuses

#: Any msgpack value, the awkward ones often: NaN, the infinities, bools, big ints,
#: non-ASCII text, bytes, nested lists and maps.
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.sampled_from([0, 1, -1, 2**53 + 1, 2**63 - 1])
    | st.floats()
    | st.sampled_from([math.nan, math.inf, -math.inf, 0.0, -0.0, 1.5])
    | st.text(max_size=5)
    | st.text(min_size=MAX_PRINCIPAL - 1, max_size=MAX_PRINCIPAL + 1, alphabet="aé")
    | st.binary(max_size=20)
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner),
    max_leaves=6,
)


@st.composite
def changed_payloads(draw: st.DrawFn) -> bytes:
    envelope = draw(ANY_ENVELOPE)
    raw = raw_of(envelope)
    data = raw["d"]
    target = draw(st.sampled_from(["envelope", "data"])) if data else "envelope"
    where: dict[str, Any] = raw if target == "envelope" else data
    keys = list(ENVELOPE_KEYS if target == "envelope" else data)
    how = draw(st.sampled_from(["set", "set", "set", "drop", "add"]))
    if how == "set":
        where[draw(st.sampled_from(keys))] = draw(VALUES)
    elif how == "drop":
        del where[draw(st.sampled_from(keys))]
    else:
        where[draw(st.text(min_size=1, max_size=4))] = draw(VALUES)
    return pack(raw)


@settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(changed_payloads())
def test_a_changed_value_key_or_field_decodes_the_same_or_goes_the_complete_way(
    payload: bytes,
) -> None:
    check_agrees(CODEC, payload)


@SETTINGS
@given(ANY_ENVELOPE, st.data())
def test_changed_bytes_decode_the_same_or_go_the_complete_way(
    envelope: Envelope, data: st.DataObject
) -> None:
    payload = bytearray(CODEC.encode(envelope))
    for _ in range(data.draw(st.integers(1, 3))):
        at = data.draw(st.integers(0, len(payload) - 1))
        payload[at] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(len(payload) // 2, len(payload)))
    check_agrees(CODEC, bytes(payload[:cut]))


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"start": math.nan}, "start"),
        ({"end": math.inf}, "end"),
        ({"start": True}, "start"),
        ({"cursor_id": b"c1"}, "cursor_id"),
        ({"axes": ["x", 1]}, "axes[1]"),
        ({"resolution": "fine"}, "resolution"),
    ],
)
def test_refused_fields_are_named_by_the_complete_path(change: dict[str, Any], field: str) -> None:
    raw = raw_of(envelope_of(CursorMoved("bot", "c1", ("x",), 1.0, 2.0, None)))
    raw["d"].update(change)
    payload = pack(raw)
    assert typed(CODEC, payload) is None
    with pytest.raises(DecodeError) as caught:
        CODEC.decode(payload)
    assert caught.value.field == field


def test_an_int_where_a_float_is_declared_decodes_as_a_float_both_ways() -> None:
    raw = raw_of(envelope_of(CursorMoved("bot", "c1", ("x",), 1.0, 2.0, None)))
    raw["d"]["start"] = 3
    payload = pack(raw)
    fast = check_agrees(CODEC, payload)
    assert fast is not None and isinstance(fast.event, CursorMoved)
    assert type(fast.event.start) is float and fast.event.start == 3.0


def test_older_formats_versions_and_unknown_types_go_the_complete_way() -> None:
    envelope = envelope_of(CursorMoved("bot", "c1", ("x",), 1.0, 2.0, None), revision=4)
    raw = raw_of(envelope)
    format_2 = {k: v for k, v in raw.items() if k != "n"} | {"f": 2}
    assert typed(CODEC, pack(format_2)) is None
    assert CODEC.decode(pack(format_2)).revision is None
    unknown = raw | {"t": "NoSuchEvent"}
    assert typed(CODEC, pack(unknown)) is None
    with pytest.raises(DecodeError, match="unknown event type"):
        CODEC.decode(pack(unknown))
    newer = raw | {"v": raw["v"] + 1}
    assert typed(CODEC, pack(newer)) is None
    with pytest.raises(DecodeError, match="newer"):
        CODEC.decode(pack(newer))


def test_a_type_registered_after_the_first_decode_takes_the_typed_path_then() -> None:
    from plantangenet.events import Event, EventRegistry, event_type

    registry = EventRegistry()
    codec = EventCodec(registry)

    @event_type("Late", registry=registry)
    class Late(Event):
        what: str

    other = EventCodec(registry)
    payload = other.encode(envelope_of(Late("x")))
    assert codec._typed_decoder("Nope") == (0, None, None)
    assert typed(codec, payload) is not None
    assert codec.decode(payload).event == Late("x")


def test_authorizations_decode_once_per_distinct_stored_form() -> None:
    from plantangenet.events import codec as codec_module
    from plantangenet.events.envelope import Authorization

    authorization = Authorization("cursor.move", ("axis.x",), (None,), 3)
    payload = CODEC.encode(
        envelope_of(CursorMoved("b", "c", ("x",), 1.0, 2.0, None), authorization=authorization)
    )
    first = CODEC._decode_typed(payload, None)
    second = CODEC._decode_typed(payload, None)
    assert first is not None and second is not None
    assert first.authorization == authorization
    assert second.authorization is first.authorization
    stored = msgpack.packb(msgpack.unpackb(payload)["z"], use_bin_type=True)
    assert codec_module._AUTHORIZATIONS_STORED[stored] is first.authorization
    bad = raw_of(envelope_of(CursorMoved("b", "c", ("x",), 1.0, 2.0, None)))
    bad["z"] = {"action": 1, "resources": [], "statements": [], "policy_version": 0}
    assert typed(CODEC, pack(bad)) is None
    with pytest.raises(DecodeError, match="authorization"):
        CODEC.decode(pack(bad))


def test_every_private_registry_type_decodes_either_way() -> None:
    for cls in PRIVATE.types().values():
        payload = PRIVATE_CODEC.encode(envelope_of(_example(cls)))
        fast = check_agrees(PRIVATE_CODEC, payload)
        assert (fast is None) is (cls is Drawn)  # nested value objects: the complete path


def _example(cls: type[Any]) -> Any:
    from tests.test_codec import example_of

    return example_of(cls)


def test_threads_decoding_at_once_each_get_their_own_envelopes() -> None:
    """The codec is shared by the loop thread and the actors' threads."""
    import threading

    payloads = [
        CODEC.encode(envelope_of(CursorMoved(f"bot-{i}", f"c{i}", ("x",), float(i), i + 1.0, None)))
        for i in range(8)
    ]
    wrong: list[str] = []

    def decode_many(index: int) -> None:
        for _ in range(2_000):
            envelope = CODEC.decode(payloads[index], sequence=index)
            event = envelope.event
            if not isinstance(event, CursorMoved) or event.agent_id != f"bot-{index}":
                wrong.append(repr(envelope))
                return

    threads = [threading.Thread(target=decode_many, args=(i,)) for i in range(8)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert wrong == []
