"""Cursor queries through compositors, shaped by policy, on a real log (issue 4)."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack
import pytest

from plantangenet import (
    AccessDenied,
    AccessRefused,
    ChargeRefused,
    CompositorFailed,
    DisclosureMade,
    DustCharged,
    InsufficientDust,
    InvalidPolicy,
    Plantangenet,
    QueryCursor,
    RecordedCompositor,
    Region,
    Sample,
    SessionHandle,
    SyntheticCompositor,
    UnknownCompositor,
)
from plantangenet.domain.disclosure import Disclosure, parse_disclosure, shape

OCEAN = ("ocean.temperature", "ocean.salinity")
POLICY: list[Mapping[str, Any]] = [
    {
        "id": "cursors",
        "effect": "allow",
        "actions": ["cursor.add", "cursor.move", "cursor.remove"],
        "resources": ["axis.*"],
    },
    {
        "id": "analysts",
        "effect": "allow",
        "roles": ["analyst"],
        "actions": ["cursor.query"],
        "resources": ["axis.ocean.*"],
    },
    {
        "id": "students",
        "effect": "allow",
        "roles": ["student"],
        "actions": ["cursor.query"],
        "resources": ["axis.ocean.*"],
        "disclosure": {"level": "degraded", "resolution": 4, "decimals": 1},
    },
    {
        "id": "contractors",
        "effect": "allow",
        "roles": ["contractor"],
        "actions": ["cursor.query"],
        "resources": ["axis.ocean.*"],
        "disclosure": {"level": "masked", "mask": ["value", "station"]},
    },
    {
        "id": "public",
        "effect": "allow",
        "roles": ["public"],
        "actions": ["cursor.query"],
        "resources": ["axis.ocean.*"],
        "disclosure": "masked",
    },
    {
        "id": "no-salinity",
        "effect": "deny",
        "roles": ["public"],
        "actions": ["cursor.query"],
        "resources": ["axis.ocean.salinity"],
    },
]
ROLES = {
    "ana": "analyst",
    "stu": "student",
    "con": "contractor",
    "pub": "public",
    "vis": "visitor",  # no statement lets visitors query: default deny
}
CURSOR = {"axes": OCEAN, "start": 0.0, "end": 23.0}


class Counting(SyntheticCompositor):
    """The synthetic compositor, counting the queries it answers."""

    def __init__(self) -> None:
        super().__init__("synthetic")
        self.calls = 0

    def query(self, region: Region) -> list[Sample]:
        self.calls += 1
        return super().query(region)


@pytest.fixture
def compositor(runtime: Plantangenet) -> Counting:
    counting = Counting()
    runtime.add_compositor(counting)
    return counting


@pytest.fixture
def ocean(runtime: Plantangenet, compositor: Counting) -> SessionHandle:
    session = runtime.session("ocean")
    session.start({"purpose": "disclosure"})
    session.change_policy(replace=POLICY)
    session.register_compositor("synthetic", "deterministic series")
    for agent_id, role in ROLES.items():
        session.attach(agent_id)
        session.grant_role(agent_id, role)
        session.add_cursor(agent_id, f"c-{agent_id}", **CURSOR)  # type: ignore[arg-type]
    return session


def raw(axes: Sequence[str] = OCEAN) -> list[Sample]:
    return SyntheticCompositor().query(Region(tuple(axes), 0.0, 23.0))


def disclosures(session: SessionHandle) -> list[DisclosureMade]:
    return [e.event for e in session_history(session) if isinstance(e.event, DisclosureMade)]


def session_history(session: SessionHandle) -> list:  # type: ignore[type-arg]
    return session.query(lambda actor: actor.loop.run(actor.journal.read_all("ocean"))).result(10)


def test_full_disclosure_is_the_compositors_answer(ocean: SessionHandle) -> None:
    result = ocean.query_cursor("ana", "c-ana", "synthetic", issued_by="ana")
    assert list(result.samples) == raw()
    assert len(result.samples) == 48 and all(s.value is not None for s in result.samples)
    (made,) = [e.event for e in result.events if isinstance(e.event, DisclosureMade)]
    assert (made.level, dict(made.levels), made.amount) == (
        "full",
        {a: "full" for a in OCEAN},
        48,
    )
    assert (made.agent_id, made.cursor_id, made.compositor) == ("ana", "c-ana", "synthetic")


def test_degraded_disclosure_is_coarser_and_rounded(ocean: SessionHandle) -> None:
    result = ocean.query_cursor("stu", "c-stu", "synthetic")
    expected = shape(raw(), Disclosure("degraded", resolution=4.0, decimals=1))
    assert list(result.samples) == expected
    assert len(result.samples) == 12  # 24 hourly samples per axis in 6 buckets of 4
    for sample in result.samples:
        assert sample.time % 4 == 0
        assert sample.value is not None and round(sample.value, 1) == sample.value
        assert dict(sample.fields) == {}
    # Each bucket is the mean of the full samples it covers.
    hours = [s.value for s in raw(["ocean.salinity"]) if s.time < 4]
    first = next(s for s in result.samples if s.axis == "ocean.salinity" and s.time == 0)
    assert first.value == round(math.fsum(v for v in hours if v is not None) / 4, 1)
    assert disclosures(ocean)[-1].level == "degraded"


def test_masked_disclosure_removes_the_named_fields(ocean: SessionHandle) -> None:
    result = ocean.query_cursor("con", "c-con", "synthetic")
    assert len(result.samples) == 48
    for full, masked in zip(raw(), result.samples, strict=True):
        assert (masked.axis, masked.time) == (full.axis, full.time)
        assert masked.value is None
        assert dict(masked.fields) == {"quality": full.fields["quality"]}
    assert disclosures(ocean)[-1].level == "masked"


def test_a_denied_axis_refuses_the_whole_query_and_records_it(
    ocean: SessionHandle, compositor: Counting
) -> None:
    before = compositor.calls
    for agent_id, resource, statement in (
        ("pub", "axis.ocean.salinity", "no-salinity"),
        ("vis", "axis.ocean.temperature", None),
    ):
        with pytest.raises(AccessRefused) as excinfo:
            ocean.query_cursor(agent_id, f"c-{agent_id}", "synthetic")
        event = excinfo.value.event
        assert isinstance(event, AccessDenied)
        assert (event.agent_id, event.action, event.resource, event.statement_id) == (
            agent_id,
            "cursor.query",
            resource,
            statement,
        )
        assert excinfo.value.sequence > 0  # recorded
    assert compositor.calls == before  # the compositor was never asked
    assert disclosures(ocean) == []
    # Without the denied axis the same agent gets the masked level.
    ocean.move_cursor("pub", "c-pub", ["ocean.temperature"], 0, 23)
    result = ocean.query_cursor("pub", "c-pub", "synthetic")
    assert [s.value for s in result.samples] == [None] * 24
    assert all(dict(s.fields) == {} for s in result.samples)


def test_the_policy_decides_per_agent_even_when_the_owner_asks(ocean: SessionHandle) -> None:
    by_owner = ocean.query_cursor("con", "c-con", "synthetic")  # issued_by=None
    assert all(s.value is None for s in by_owner.samples)
    with pytest.raises(AccessRefused):  # one agent may not query through another's cursor
        ocean.query_cursor("ana", "c-ana", "synthetic", issued_by="stu")


def test_the_data_itself_never_reaches_the_log(ocean: SessionHandle) -> None:
    result = ocean.query_cursor("ana", "c-ana", "synthetic")
    values = {s.value for s in result.samples}
    for envelope in session_history(ocean):
        payload = msgpack.packb(envelope.event.__class__.__name__)
        assert payload
    stored = [e for e in session_history(ocean) if e.causation_id == result.command_id]
    assert [type(e.event) for e in stored] == [DisclosureMade]
    fields = vars_of(stored[0].event)
    assert not values & {v for v in fields.values() if isinstance(v, float)}


def vars_of(event: object) -> dict[str, object]:
    return {name: getattr(event, name) for name in event.__slots__}  # type: ignore[attr-defined]


def test_insufficient_dust_discloses_nothing(ocean: SessionHandle, compositor: Counting) -> None:
    ocean.set_prices({"cursor.query": 1, "cursor.query.full": 5})
    ocean.deposit("ana", 12)
    ocean.deposit("stu", 1)
    first = ocean.query_cursor("ana", "c-ana", "synthetic")  # 2 axes at full: 10
    charged = [e.event for e in first.events if isinstance(e.event, DustCharged)]
    assert charged == [DustCharged("ana", 10, "cursor.query", "c-ana")]
    calls = compositor.calls
    with pytest.raises(InsufficientDust) as excinfo:
        ocean.query_cursor("ana", "c-ana", "synthetic")
    assert excinfo.value.event == ChargeRefused("ana", 10, 2, "cursor.query", "QueryCursor")
    assert compositor.calls == calls  # refused before the compositor was asked
    with pytest.raises(InsufficientDust):  # degraded: 1 per axis, holds 1
        ocean.query_cursor("stu", "c-stu", "synthetic")
    assert ocean.state.balances["ana"] == 2 and ocean.state.balances["stu"] == 1
    assert len(disclosures(ocean)) == 1
    refusals = [e.event for e in session_history(ocean) if isinstance(e.event, ChargeRefused)]
    assert [r.account for r in refusals] == ["ana", "stu"]


def test_a_retried_query_is_stored_and_charged_once(ocean: SessionHandle) -> None:
    ocean.set_prices({"cursor.query": 2})
    ocean.deposit("ana", 10)
    command = QueryCursor(agent_id="ana", cursor_id="c-ana", compositor="synthetic")
    first = ocean.execute(command)
    again = ocean.execute(command)
    assert (first.duplicate, again.duplicate) == (False, True)
    assert again.events == first.events
    assert again.samples == ()  # data is not stored, so a retry does not repeat it
    assert ocean.state.balances["ana"] == 6
    assert len(disclosures(ocean)) == 1


class Broken:
    name = "broken"

    def __init__(self, answer: object) -> None:
        self.answer = answer

    def query(self, region: Region) -> object:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


@pytest.mark.parametrize(
    "answer",
    [RuntimeError("sensor offline"), [object()], None, [Sample("ocean.temperature", 1, 2)] * 5],
    ids=["raises", "not-samples", "none", "too-many"],
)
def test_a_failing_compositor_writes_nothing_and_the_session_serves_on(
    runtime: Plantangenet, ocean: SessionHandle, answer: object
) -> None:
    runtime.add_compositor(Broken(answer))  # type: ignore[arg-type]
    ocean.register_compositor("broken")
    ocean.set_prices({"cursor.query": 1})
    ocean.deposit("ana", 5)
    sequence = ocean.state.sequence
    limits = ocean.query(lambda actor: actor.limits).result(5)
    small = dataclasses.replace(limits, max_samples_per_query=4)
    ocean.query(lambda actor: setattr(actor, "limits", small)).result(5)
    with pytest.raises(CompositorFailed, match="broken"):
        ocean.query_cursor("ana", "c-ana", "broken")
    assert ocean.state.sequence == sequence
    assert ocean.state.balances["ana"] == 5
    ocean.query(lambda actor: setattr(actor, "limits", limits)).result(5)
    assert len(ocean.query_cursor("ana", "c-ana", "synthetic").samples) == 48


def test_unknown_and_unprovided_compositors_are_typed_errors(
    runtime: Plantangenet, ocean: SessionHandle
) -> None:
    with pytest.raises(UnknownCompositor):
        ocean.query_cursor("ana", "c-ana", "nowhere")
    ocean.register_compositor("elsewhere")  # registered with the session, not in this process
    with pytest.raises(CompositorFailed, match="does not provide"):
        ocean.query_cursor("ana", "c-ana", "elsewhere")


def test_the_recorded_compositor_answers_from_its_buffer(
    runtime: Plantangenet, ocean: SessionHandle
) -> None:
    buoys = RecordedCompositor("buoys", capacity=100)
    for t in range(30):
        buoys.record("ocean.temperature.surface", t, 10.0 + t, station="b1")
        buoys.record("wind.speed", t, 3.0)
    runtime.add_compositor(buoys)
    ocean.register_compositor("buoys", "recorded buoy samples")
    ocean.move_cursor("ana", "c-ana", ["ocean.temperature"], 5, 9.5)
    result = ocean.query_cursor("ana", "c-ana", "buoys")
    # ocean.temperature covers the recorded ocean.temperature.surface; wind is outside.
    assert [(s.axis, s.time, s.value) for s in result.samples] == [
        ("ocean.temperature.surface", float(t), 10.0 + t) for t in range(5, 10)
    ]
    ocean.move_cursor("ana", "c-ana", ["ocean.temperature"], 0, 29, resolution=10)
    assert [s.time for s in ocean.query_cursor("ana", "c-ana", "buoys").samples] == [0, 10, 20]
    # The student sees the same buffer degraded: 4-wide buckets, rounded.
    ocean.move_cursor("stu", "c-stu", ["ocean.temperature"], 0, 7)
    degraded = ocean.query_cursor("stu", "c-stu", "buoys").samples
    assert [(s.time, s.value) for s in degraded] == [(0.0, 11.5), (4.0, 15.5)]


def test_degrading_extreme_values_and_resolutions_never_crashes(
    runtime: Plantangenet, ocean: SessionHandle
) -> None:
    # Found by fuzzing: these overflowed and were answered "internal error".
    with pytest.raises(InvalidPolicy, match="at least"):
        parse_disclosure({"level": "degraded", "resolution": 5e-324})
    stored_before_the_check = Disclosure("degraded", resolution=5e-324)
    far = [Sample("x", 1.0, 2.0), Sample("x", 1e300, 3.0)]
    assert shape(far, stored_before_the_check) == [Sample("x", 1.0, 2.0), Sample("x", 1e300, 3.0)]
    coarse = Disclosure("degraded", resolution=2.0)
    assert shape([Sample("x", 0.5, 1e308)] * 2, coarse) == [Sample("x", 0.0, 1e308)]
    (mixed,) = shape([Sample("x", 0.5, math.inf), Sample("x", 1.0, -math.inf)], coarse)
    assert math.isnan(mixed.value or 0.0)
    # Through the session: a compositor answering huge values is shaped, not a crash.
    runtime.add_compositor(Broken([Sample("ocean.temperature", 0.5, 1e308)] * 2))  # type: ignore[arg-type]
    ocean.register_compositor("broken")
    result = ocean.query_cursor("stu", "c-stu", "broken")
    assert [(s.time, s.value) for s in result.samples] == [(0.0, 1e308)]
