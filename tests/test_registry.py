"""Tests of the event registry: type names, versions and upcaster chains.

Everything here uses private registries, so plantangenet's own events are
untouched, except the last tests, which read plantangenet's own
``PolicyChanged`` v1 through the real codec and its registered upcaster. Old
versions are written by hand, with the envelope layout documented in
:mod:`plantangenet.events.codec`, as an older program would have.
"""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet.domain.policy import Condition, Statement
from plantangenet.errors import DecodeError, InvalidCommand, UnknownEventType, UnknownEventVersion
from plantangenet.events import CODEC as REAL_CODEC
from plantangenet.events import (
    EVENTS,
    CursorAdded,
    CursorMoved,
    Envelope,
    Event,
    EventCodec,
    EventRegistry,
    PolicyChanged,
    event_type,
)
from plantangenet.projections.session import fold

AT = datetime(2024, 11, 25, 13, 0, 0, 654321, tzinfo=UTC)
AT_MICROS = (AT - datetime(1970, 1, 1, tzinfo=UTC)) // timedelta(microseconds=1)

REG = EventRegistry()


@event_type("ThingRenamed", version=3, registry=REG)
class ThingRenamed(Event):
    """v1: ``{thing_id, name}``; v2: ``name`` became ``title``; v3: adds ``color``."""

    thing_id: str
    title: str
    color: str


def v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    data["title"] = data.pop("name")
    return data


def v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "color": "grey"}


REG.add_upcaster("ThingRenamed", 1, v1_to_v2)
REG.add_upcaster("ThingRenamed", 2, v2_to_v3)
CODEC = EventCodec(REG)


def stored(type_name: str, version: int, data: dict[str, Any], event_id: str = "e1") -> bytes:
    """An envelope as an older program wrote it."""
    payload = msgpack.packb(
        {
            "f": 1,
            "t": type_name,
            "v": version,
            "id": event_id,
            "s": "s1",
            "a": None,
            "c": "c1",
            "r": "r1",
            "at": AT_MICROS,
            "p": b"",
            "z": None,
            "d": data,
        },
        use_bin_type=True,
    )
    assert isinstance(payload, bytes)
    return payload


def v3_envelope(event: Event, event_id: str = "e1") -> Envelope:
    return Envelope(
        event=event,
        session_id="s1",
        event_id=event_id,
        causation_id="c1",
        correlation_id="r1",
        occurred_at=AT,
    )


def test_registration_sets_name_and_version() -> None:
    assert ThingRenamed.type_name == "ThingRenamed"
    assert ThingRenamed.version == 3
    assert REG.types() == {"ThingRenamed": ThingRenamed}
    assert REG.spec("ThingRenamed").field_names == ("thing_id", "title", "color")
    thing = ThingRenamed("t", "x", "grey")
    with pytest.raises(dataclasses.FrozenInstanceError):
        thing.title = "y"  # type: ignore[misc]
    assert dataclasses.is_dataclass(ThingRenamed)


def test_old_versions_are_upcast_to_the_current_one() -> None:
    expected = ThingRenamed("t1", "The Thing", "grey")
    v1 = CODEC.decode(
        stored("ThingRenamed", 1, {"thing_id": "t1", "name": "The Thing"}), sequence=1
    )
    v2 = CODEC.decode(
        stored("ThingRenamed", 2, {"thing_id": "t1", "title": "The Thing"}), sequence=2
    )
    v3 = CODEC.decode(
        stored("ThingRenamed", 3, {"thing_id": "t1", "title": "The Thing", "color": "grey"}),
        sequence=3,
    )
    assert v1.event == v2.event == v3.event == expected
    assert type(v1.event) is ThingRenamed
    assert [v1.sequence, v2.sequence, v3.sequence] == [1, 2, 3]
    assert v1.occurred_at == AT


@settings(max_examples=50, deadline=None)
@given(
    things=st.lists(
        st.tuples(st.text(max_size=10), st.text(max_size=10), st.sampled_from([1, 2, 3])),
        max_size=8,
    )
)
def test_a_mixed_version_log_reads_like_an_all_v3_log(
    things: list[tuple[str, str, int]],
) -> None:
    mixed: list[Envelope] = []
    modern: list[Envelope] = []
    for n, (thing_id, title, version) in enumerate(things, start=1):
        event_id = f"e{n}"
        if version == 1:
            data: dict[str, Any] = {"thing_id": thing_id, "name": title}
        elif version == 2:
            data = {"thing_id": thing_id, "title": title}
        else:
            data = {"thing_id": thing_id, "title": title, "color": "grey"}
        mixed.append(CODEC.decode(stored("ThingRenamed", version, data, event_id), sequence=n))
        payload = CODEC.encode(v3_envelope(ThingRenamed(thing_id, title, "grey"), event_id))
        modern.append(CODEC.decode(payload, sequence=n))
    assert mixed == modern


def test_stored_data_is_not_changed_by_upcasting() -> None:
    seen: list[dict[str, Any]] = []
    reg = EventRegistry()

    @event_type("Noted", version=2, registry=reg)
    class Noted(Event):
        text: str

    def upcast(data: dict[str, Any]) -> dict[str, Any]:
        seen.append(data)
        data["text"] = data.pop("note").upper()
        return data

    reg.add_upcaster("Noted", 1, upcast)
    raw = {"note": "hi"}
    assert reg.upcast("Noted", 1, raw) == {"text": "HI"}
    assert raw == {"note": "hi"}  # the upcaster got a copy
    assert seen[0] is not raw
    assert EventCodec(reg).decode(stored("Noted", 1, {"note": "hi"})).event == Noted("HI")


def test_missing_upcaster_in_the_chain_names_the_version() -> None:
    reg = EventRegistry()

    @event_type("ThingRenamed", version=3, registry=reg)
    class Thing(Event):
        thing_id: str
        title: str
        color: str

    reg.add_upcaster("ThingRenamed", 2, v2_to_v3)  # no v1 -> v2
    codec = EventCodec(reg)
    assert codec.decode(stored("ThingRenamed", 2, {"thing_id": "t", "title": "x"})).event == (
        Thing("t", "x", "grey")
    )
    with pytest.raises(UnknownEventVersion) as excinfo:
        codec.decode(stored("ThingRenamed", 1, {"thing_id": "t", "name": "x"}))
    assert "v1" in str(excinfo.value)
    assert excinfo.value.field == "version"

    other = EventRegistry()
    other.register(Thing, "ThingRenamed", 3)
    other.add_upcaster("ThingRenamed", 1, v1_to_v2)  # no v2 -> v3
    with pytest.raises(UnknownEventVersion) as excinfo:
        EventCodec(other).decode(stored("ThingRenamed", 1, {"thing_id": "t", "name": "x"}))
    assert "v2" in str(excinfo.value)
    with pytest.raises(UnknownEventVersion) as excinfo:
        EventCodec(other).decode(stored("ThingRenamed", 4, {"thing_id": "t"}))
    assert "v4" in str(excinfo.value)


def test_registering_a_type_name_twice_with_another_class_is_refused() -> None:
    reg = EventRegistry()

    @event_type("Dup", registry=reg)
    class First(Event):
        a: str

    with pytest.raises(ValueError, match="Dup"):

        @event_type("Dup", registry=reg)
        class Second(Event):
            a: str

    assert reg.types() == {"Dup": First}
    # Registering the same class again under its own name is harmless.
    reg.register(First, "Dup", 1)
    assert reg.types() == {"Dup": First}


def test_duplicate_upcaster_is_refused() -> None:
    reg = EventRegistry()
    reg.add_upcaster("X", 1, v1_to_v2)
    with pytest.raises(ValueError, match="X v1"):
        reg.add_upcaster("X", 1, v2_to_v3)
    reg.add_upcaster("X", 2, v2_to_v3)  # another version is fine


def test_invalid_registrations_are_refused() -> None:
    reg = EventRegistry()

    class NotADataclass(Event):
        pass

    with pytest.raises(TypeError):
        reg.register(NotADataclass, "NotADataclass", 1)
    with pytest.raises(ValueError):

        @event_type("Zero", version=0, registry=reg)
        class Zero(Event):
            a: str

    with pytest.raises(TypeError, match="unsupported"):

        @event_type("Listy", registry=reg)
        class Listy(Event):
            items: list[str]

    assert reg.types() == {}


def test_unknown_names_and_classes() -> None:
    with pytest.raises(UnknownEventType):
        REG.spec("Nope")

    @dataclasses.dataclass(frozen=True)
    class Stray(Event):
        a: str

    with pytest.raises(UnknownEventType):
        REG.spec_of(Stray)
    with pytest.raises(UnknownEventType):
        CODEC.decode(stored("Nope", 1, {}))


class Boom(Exception):
    pass


def _failing_upcaster(exc: Exception) -> Any:
    def upcast(data: dict[str, Any]) -> dict[str, Any]:
        raise exc

    return upcast


@pytest.mark.parametrize(
    "upcaster",
    [
        _failing_upcaster(Boom("boom")),
        _failing_upcaster(KeyError("name")),
        _failing_upcaster(RecursionError("deep")),
        _failing_upcaster(InvalidCommand("not a decode error")),
        lambda data: None,  # not a dict
        lambda data: ["not", "a", "dict"],
        lambda data: {"thing_id": "t"},  # loses a required field
        lambda data: {**data, 1: "non-string key"},
    ],
)
def test_a_failing_upcaster_is_a_decode_error(upcaster: Any) -> None:
    reg = EventRegistry()
    reg.register(ThingRenamed, "ThingRenamed", 3)
    reg.add_upcaster("ThingRenamed", 1, upcaster)
    reg.add_upcaster("ThingRenamed", 2, v2_to_v3)
    with pytest.raises(DecodeError) as excinfo:
        EventCodec(reg).decode(stored("ThingRenamed", 1, {"thing_id": "t", "name": "x"}))
    assert type(excinfo.value) is DecodeError
    assert str(excinfo.value)


# -- plantangenet's own upcaster: PolicyChanged v1 -> v2 ---------------------

POLICY_V1 = {"policy_id": "p1", "rules": ["allow all", "deny nothing"]}


def test_policy_changed_v1_is_upcast_to_an_empty_policy_by_the_real_codec() -> None:
    assert PolicyChanged.version == 3
    payload = stored("PolicyChanged", 1, POLICY_V1)
    envelope = REAL_CODEC.decode(payload, sequence=7)
    assert envelope.event == PolicyChanged(statements=())
    assert type(envelope.event) is PolicyChanged
    assert (envelope.event.statements, envelope.event.added, envelope.event.removed) == (
        (),
        (),
        (),
    )
    assert envelope.sequence == 7
    assert envelope.occurred_at == AT
    assert (envelope.previous_hash, envelope.authorization) == (b"", None)
    # Read back and written again, it is stored as the current version.
    rewritten = msgpack.unpackb(REAL_CODEC.encode(envelope), raw=False)
    assert rewritten["v"] == 3
    assert rewritten["d"] == {"statements": [], "added": [], "removed": []}


@pytest.mark.parametrize(
    "data",
    [POLICY_V1, {"policy_id": "p2", "rules": []}, {"policy_id": "p3"}, {}],
    ids=repr,
)
def test_policy_changed_v1_payloads_carry_no_statements(data: dict[str, Any]) -> None:
    # v1 rules were opaque placeholder strings: none of them becomes a statement.
    assert EVENTS.upcast("PolicyChanged", 1, data) == {
        "statements": [],
        "added": [],
        "removed": [],
    }
    assert REAL_CODEC.decode(stored("PolicyChanged", 1, data)).event == PolicyChanged(())


def test_policy_changed_v2_is_upcast_and_v4_is_refused() -> None:
    statement = {
        "id": "watchers",
        "effect": "allow",
        "actions": ["cursor.*"],
        "resources": ["axis.*"],
        "roles": ["watcher"],
        "conditions": [{"key": "hour", "op": "lt", "value": 17}],
    }
    v2 = REAL_CODEC.decode(
        stored("PolicyChanged", 2, {"statements": [statement], "added": ["watchers"]})
    )
    assert v2.event == PolicyChanged(
        (
            Statement(
                "watchers",
                "allow",
                ("cursor.*",),
                ("axis.*",),
                ("watcher",),
                (Condition("hour", "lt", 17),),
            ),
        ),
        added=("watchers",),
    )
    # v2 data claiming to be v1 is still upcast (the v1 fields are ignored).
    assert REAL_CODEC.decode(
        stored("PolicyChanged", 1, {"statements": [statement]})
    ).event == PolicyChanged(())
    with pytest.raises(UnknownEventVersion) as excinfo:
        REAL_CODEC.decode(stored("PolicyChanged", 4, {"statements": []}))
    assert "v4" in str(excinfo.value)
    with pytest.raises(UnknownEventVersion):
        REAL_CODEC.decode(stored("PolicyChanged", 0, POLICY_V1))


def test_a_log_mixing_policy_versions_folds_to_the_latest_policy() -> None:
    statement = {"id": "all", "effect": "allow", "actions": ["*"], "resources": ["*"]}
    log = [
        REAL_CODEC.decode(
            stored("PolicyChanged", 2, {"statements": [statement]}, "e1"), sequence=1
        ),
        REAL_CODEC.decode(stored("PolicyChanged", 1, POLICY_V1, "e2"), sequence=2),
    ]
    state = fold("s1", log)
    assert state.policy.version == 2
    assert state.policy.statements == ()  # the v1 change left no statements
    state = fold("s1", log[:1])
    assert state.policy.version == 1
    assert [s.id for s in state.policy.statements] == ["all"]


# -- CursorAdded / CursorMoved v1 -> v2 (resolution added) -------------------------------


@pytest.mark.parametrize("cls", [CursorAdded, CursorMoved], ids=lambda c: c.type_name)
def test_cursor_events_v1_are_read_with_no_resolution(cls: type[Event]) -> None:
    assert cls.version == 2
    v1 = {"agent_id": "a1", "cursor_id": "c1", "axes": ["ocean"], "start": 0.0, "end": 5.0}
    event = REAL_CODEC.decode(stored(cls.type_name, 1, v1)).event
    assert event == cls("a1", "c1", ("ocean",), 0.0, 5.0, None)  # type: ignore[call-arg]
    # A v1 event that somehow carried a resolution does not keep it: v1 had none.
    assert REAL_CODEC.decode(stored(cls.type_name, 1, {**v1, "resolution": 2.0})).event == event
    with pytest.raises(UnknownEventVersion):
        REAL_CODEC.decode(stored(cls.type_name, 3, {**v1, "resolution": 1.0}))
