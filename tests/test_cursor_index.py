"""The cursor index: coverage lookups equal a brute-force scan, live and after replay."""

from __future__ import annotations

import json
import random
from datetime import UTC, datetime

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet import CODEC, CursorIndex, Ledger, Plantangenet, UnknownSession
from plantangenet.cli import main
from plantangenet.events import (
    AgentDetached,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    Envelope,
    Event,
)
from plantangenet.projections.session import CursorView
from tests.conftest import log_options

AXES = [
    "ocean",
    "ocean.temperature",
    "ocean.salinity",
    "wind",
    "wind.speed",
    "ocean.temperature.deep",
]
AT = datetime(2026, 1, 1, tzinfo=UTC)


def brute(cursors: dict[str, CursorView], axis: str, lo: float, hi: float) -> list[str]:
    """Cursors watching ``axis`` or a parent axis, overlapping ``[lo, hi]``: by scanning."""
    parents = {".".join(axis.split(".")[:n]) for n in range(1, axis.count(".") + 2)}
    return sorted(
        c.cursor_id
        for c in cursors.values()
        if parents & set(c.axes) and c.start <= hi and c.end >= lo
    )


def envelope(event: Event, sequence: int) -> Envelope:
    return Envelope(event, "s", f"e{sequence}", "c", "c", AT, None, sequence=sequence)


times = st.integers(min_value=-50, max_value=50).map(float)
regions = st.tuples(
    st.lists(st.sampled_from(AXES), min_size=1, max_size=3, unique=True).map(tuple), times, times
).map(lambda r: (r[0], min(r[1], r[2]), max(r[1], r[2])))
operations = st.lists(
    st.tuples(
        st.sampled_from(["add", "move", "remove", "detach"]),
        st.integers(min_value=0, max_value=40),  # cursor number
        st.integers(min_value=0, max_value=4),  # agent number
        regions,
    ),
    max_size=120,
)


@settings(max_examples=150, deadline=None)
@given(operations, st.lists(st.tuples(st.sampled_from(AXES), times, times), max_size=20))
def test_lookups_equal_a_scan(ops: list, probes: list) -> None:  # type: ignore[type-arg]
    index = CursorIndex()
    from_checked = CursorIndex()  # fed the values the codec checked, no envelope built
    model: dict[str, CursorView] = {}
    for sequence, (op, number, agent, (axes, start, end)) in enumerate(ops, start=1):
        cursor_id, agent_id = f"c{number}", f"a{agent}"
        event: Event
        if op == "add" and cursor_id not in model:
            event = CursorAdded(agent_id, cursor_id, axes, start, end)
        elif op == "move" and cursor_id in model:
            event = CursorMoved(model[cursor_id].agent_id, cursor_id, axes, start, end, 2.0)
        elif op == "remove" and cursor_id in model:
            event = CursorRemoved(model[cursor_id].agent_id, cursor_id)
        elif op == "detach":
            event = AgentDetached(agent_id, "gone")
        else:
            continue
        index.apply(envelope(event, sequence))
        checked = CODEC.checked(CODEC.encode(envelope(event, sequence)), sequence=sequence)
        assert checked is not None
        from_checked.apply_checked(checked)
        match event:
            case CursorAdded() | CursorMoved():
                model[cursor_id] = CursorView(
                    cursor_id, event.agent_id, axes, start, end, event.resolution
                )
            case CursorRemoved():
                del model[cursor_id]
            case AgentDetached():
                model = {c: v for c, v in model.items() if v.agent_id != agent_id}
        # Probe between changes too: the lazily rebuilt arrays must follow every change.
        if sequence % 7 == 0:
            axis, t, _ = probes[0] if probes else ("ocean", 0.0, 0.0)
            assert [c.cursor_id for c in index.covering(axis, t)] == brute(model, axis, t, t)
    assert index.cursors == model == from_checked.cursors
    assert index.sequence == from_checked.sequence
    for axis, a, b in probes:
        lo, hi = min(a, b), max(a, b)
        assert [c.cursor_id for c in index.covering(axis, a)] == brute(model, axis, a, a)
        assert [c.cursor_id for c in index.overlapping(axis, lo, hi)] == brute(model, axis, lo, hi)
        assert from_checked.overlapping(axis, lo, hi) == index.overlapping(axis, lo, hi)


def test_a_parent_axis_covers_its_children_but_not_siblings() -> None:
    index = CursorIndex.of(
        [
            envelope(CursorAdded("a", "c1", ("ocean",), 0.0, 10.0), 1),
            envelope(CursorAdded("a", "c2", ("ocean.temperature",), 5.0, 20.0), 2),
            envelope(CursorAdded("b", "c3", ("oceanic",), 0.0, 10.0), 3),
        ]
    )
    assert [c.cursor_id for c in index.covering("ocean.temperature.deep", 7)] == ["c1", "c2"]
    assert [c.cursor_id for c in index.covering("ocean", 7)] == ["c1"]
    assert [c.cursor_id for c in index.covering("ocean.temperature", 15)] == ["c2"]
    assert index.covering("wind", 7) == []
    assert index.sequence == 3


def test_live_index_equals_the_replayed_one(runtime: Plantangenet) -> None:
    rng = random.Random(4)
    session = runtime.session("index")
    session.start()
    for n in range(6):
        session.attach(f"a{n}")
    live: dict[str, str] = {}
    agents = [f"a{n}" for n in range(6)]
    for step in range(300):
        cursor_id = f"c{rng.randrange(60)}"
        axes = rng.sample(AXES, rng.randint(1, 3))
        start = float(rng.randint(-20, 20))
        end = start + rng.randint(0, 15)
        if cursor_id not in live:
            agent_id = rng.choice(agents)
            session.add_cursor(agent_id, cursor_id, axes, start, end)
            live[cursor_id] = agent_id
        elif step % 5 == 0:
            session.remove_cursor(live.pop(cursor_id), cursor_id)
        else:
            session.move_cursor(live[cursor_id], cursor_id, axes, start, end, resolution=0.5)
        if step == 50:  # the live index is built now, and folded along from here on
            session.cursors_covering("ocean", 0.0)
        if step == 200:
            session.detach("a3")
            agents.remove("a3")
            live = {c: a for c, a in live.items() if a != "a3"}
    replayed = runtime.cursor_index("index")
    state = session.state
    assert replayed.cursors == dict(state.cursors)
    assert replayed.sequence == state.sequence
    for axis in AXES:
        for t in range(-22, 38, 3):
            expected = brute(dict(state.cursors), axis, t, t)
            assert [c.cursor_id for c in session.cursors_covering(axis, t)] == expected
            assert [c.cursor_id for c in replayed.covering(axis, t)] == expected
    # And for a later reader: an actor rehydrated from the log has the same index.
    runtime.stop_session("index")
    again = runtime.session("index")
    for axis in AXES:
        assert again.cursors_covering(axis, 3.0) == replayed.covering(axis, 3.0)


def test_cli_cursors_lists_and_answers_coverage(
    runtime: Plantangenet, capsys: pytest.CaptureFixture[str]
) -> None:
    session = runtime.session("cli-cursors")
    session.start()
    session.attach("a")
    session.add_cursor("a", "c1", ["ocean"], 0, 10, resolution=2)
    session.add_cursor("a", "c2", ["ocean.temperature"], 5, 20)
    session.add_cursor("a", "c3", ["wind"], 0, 10)
    args = log_options(runtime)
    assert main(["cursors", "cli-cursors", *args]) == 0
    text = capsys.readouterr().out
    assert "3 cursors" in text and "c1" in text and "ocean.temperature" in text
    cmd = ["cursors", "cli-cursors", *args, "--axis", "ocean.temperature", "--time", "12"]
    assert main([*cmd, "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [c["cursor_id"] for c in report["cursors"]] == ["c2"]
    assert main([*cmd[:-1], "3", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert [(c["cursor_id"], c["resolution"]) for c in report["cursors"]] == [("c1", 2.0)]
    assert main(["cursors", "nobody", *args]) == 2
    assert main(["cursors", "cli-cursors", *args, "--time", "3"]) == 2


def test_the_runtime_folds_its_projections_from_a_stream_not_a_list(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = runtime.session("streamed")
    session.start()
    session.attach("a")
    session.add_cursor("a", "c1", ("x",), 0.0, 1.0)
    session.move_cursor("a", "c1", ("x",), 2.0, 3.0)
    session.deposit("a", 5)
    expected_index = CursorIndex.of(runtime.history("streamed"))
    expected_ledger = Ledger.of(runtime.history("streamed"))

    def whole_history(*args: object, **kwargs: object) -> None:
        raise AssertionError("read the whole history into a list")

    monkeypatch.setattr(runtime, "history", whole_history)
    index, ledger = runtime.cursor_index("streamed"), runtime.ledger("streamed")
    assert index.cursors == expected_index.cursors and index.cursors
    assert index.covering("x", 2.5) == expected_index.covering("x", 2.5)
    assert ledger.balances == expected_ledger.balances == {"a": 5}
    with pytest.raises(UnknownSession):
        runtime.cursor_index("nobody-here")
    with pytest.raises(UnknownSession):
        runtime.ledger("nobody-here")
