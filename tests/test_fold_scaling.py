"""Folds share structure: an event costs about the same in a session of any size (issue 18).

No timing is asserted: what is checked is that one event on a 10,000-agent state
leaves the state before it as it was, and allocates far less than a copy of its
maps (``tracemalloc``), and that the indexes behind the folds (cursors by owner,
the cursor index's blocks) agree with a brute-force reading after random changes.
"""

from __future__ import annotations

import dataclasses
import pickle
import random
import sys
import tracemalloc
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from types import MappingProxyType
from typing import Any

import pytest

import plantangenet.projections.cursors as cursors_module
from plantangenet.events import (
    AgentAttached,
    AgentDetached,
    Authorization,
    CursorAdded,
    CursorMoved,
    CursorRemoved,
    Envelope,
    Event,
    RoleGranted,
    SessionEnded,
    SessionStarted,
)
from plantangenet.events.dust import DustCharged, DustDeposited
from plantangenet.projections.audit import Audit
from plantangenet.projections.cursors import CursorIndex
from plantangenet.projections.ledger import Ledger
from plantangenet.projections.maps import EMPTY, FrozenMap, frozen
from plantangenet.projections.session import CursorView, SessionState, evolve, fold

SID = "big"
AT = datetime(2026, 1, 1, tzinfo=UTC)
AGENTS = 10_000


def env(event: Event, sequence: int) -> Envelope:
    return Envelope(event, SID, f"e{sequence}", f"c{sequence}", f"c{sequence}", AT, None, sequence)


def big_session(agents: int = AGENTS) -> list[Envelope]:
    """Started, then ``agents`` agents attached, each with a cursor, a role and dust."""
    events: list[Event] = [SessionStarted(SID, {"size": agents})]
    for n in range(agents):
        events += [
            AgentAttached(f"a{n}", "bot", f"Bot {n}"),
            CursorAdded(f"a{n}", f"c{n}", ("ocean",), float(n % 100), float(n % 100 + 5)),
            RoleGranted(f"a{n}", "watcher"),
            DustDeposited(f"a{n}", 10),
        ]
    return [env(event, n) for n, event in enumerate(events, start=1)]


@pytest.fixture(scope="module")
def big() -> SessionState:
    return fold(SID, big_session())


def plain(state: SessionState) -> dict[str, Any]:
    """Every field of ``state``, its maps copied into dicts."""
    return {
        f.name: dict(v) if isinstance(v := getattr(state, f.name), MappingProxyType) else v
        for f in dataclasses.fields(state)
    }


def allocated(step: Callable[[], object]) -> tuple[int, int]:
    """Bytes ``step`` allocated: ``(kept, peak)``, its result kept alive meanwhile."""
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        tracemalloc.reset_peak()
        result = step()
        current, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    del result
    return current - before, peak - before


# -- structure sharing ---------------------------------------------------------------


def test_an_event_on_a_large_state_leaves_it_unchanged_and_shares_the_rest(
    big: SessionState,
) -> None:
    before = plain(big)
    attached = evolve(big, env(AgentAttached("new", "bot", "New"), 90_001))
    moved = evolve(attached, env(CursorMoved("a7", "c7", ("air",), 1.0, 2.0), 90_002))
    # The states before are as they were, and equal to their own copies.
    assert plain(big) == before
    assert "new" not in big.agents and len(big.agents) == AGENTS
    assert big.cursors["c7"] == CursorView("c7", "a7", ("ocean",), 7.0, 12.0)
    assert attached.cursors == big.cursors
    # The states after have the change, and share every other entry (the same objects).
    assert len(attached.agents) == AGENTS + 1 and attached.agents["new"].attached_at == 90_001
    assert moved.cursors["c7"] == CursorView("c7", "a7", ("air",), 1.0, 2.0)
    assert all(attached.agents[a] is big.agents[a] for a in big.agents)
    assert all(moved.cursors[c] is big.cursors[c] for c in big.cursors if c != "c7")
    assert moved.roles is big.roles and moved.balances is big.balances  # untouched maps
    # They compare with any mapping by content, as dicts did.
    assert moved.agents == dict(attached.agents) and dict(moved.agents) == attached.agents
    assert moved.cursors != big.cursors and big.cursors == before["cursors"]


@pytest.mark.parametrize(
    "event",
    [
        AgentAttached("new", "bot", "New"),
        CursorMoved("a7", "c7", ("air",), 1.0, 2.0),
        CursorAdded("a7", "c-new", ("air",), 1.0, 2.0),
        CursorRemoved("a7", "c7"),
        AgentDetached("a7", "bye"),
        RoleGranted("a7", "admin"),
        DustCharged("a7", 1, "cursor.query", "c7"),
    ],
    ids=lambda e: type(e).__name__,
)
def test_one_event_on_a_10000_agent_state_allocates_far_less_than_a_copy(
    big: SessionState, event: Event
) -> None:
    envelope = env(event, 90_001)
    evolve(big, envelope)  # anything built once, lazily, is built before measuring
    kept, peak = allocated(lambda: evolve(big, envelope))
    # A copy of one map of the state (what every event used to make) as a dict:
    copy = sys.getsizeof(dict(big.agents))
    assert copy > 150_000
    assert kept < copy // 25, (kept, copy)
    assert peak < copy // 25, (peak, copy)  # nor a copy made and dropped on the way


def test_a_fold_keeps_no_copies_of_the_maps_it_replaced() -> None:
    # Moving the same cursor again and again: the memory kept is the final state's,
    # not a copy of the cursors per event.
    envelopes = big_session(2_000)
    start = fold(SID, envelopes)
    moves = [
        env(CursorMoved("a1", "c1", ("ocean",), float(n), float(n + 1)), 9_000 + n)
        for n in range(2_000)
    ]
    kept, peak = allocated(lambda: fold(SID, moves, start))
    copy = sys.getsizeof(dict(start.cursors))
    assert kept < copy and peak < 4 * copy, (kept, peak, copy)


def test_cursor_index_ledger_and_audit_steps_allocate_a_constant(big: SessionState) -> None:
    envelopes = big_session()
    index, ledger, audit = CursorIndex.of(envelopes), Ledger.of(envelopes), Audit.of(envelopes)
    move = env(CursorMoved("a7", "c7", ("ocean",), 50.5, 51.0), 90_001)
    index.apply(move)
    copy = sys.getsizeof(dict(big.agents))
    for step in (lambda: index.apply(move), lambda: index.apply(env(AgentDetached("a9", "x"), 2))):
        kept, peak = allocated(step)
        assert kept < copy // 25 and peak < copy // 25, (kept, peak, copy)
    assert "c7" in {c.cursor_id for c in index.covering("ocean", 50.7)}
    assert "c9" not in index.cursors
    # The ledger and the audit append to lists: what 200 charges keep, per charge, is a
    # few records, whatever the number of accounts (a list's growth amortized).
    charges = [
        dataclasses.replace(
            env(DustCharged(f"a{n}", 1, "cursor.query", f"c{n}"), 90_100 + n),
            authorization=Authorization("cursor.query", (f"cursor.c{n}",), ("watch",), 1),
        )
        for n in range(200)
    ]
    for fold_in in (ledger.apply, audit):
        kept, _ = allocated(lambda: [fold_in(charge) for charge in charges])  # noqa: B023
        assert kept / len(charges) < 1_500, kept
    assert ledger.balance("a0") == 9 and len(audit.entries) == 200
    ledger.check()


# -- the maps --------------------------------------------------------------------------


def test_frozen_maps_read_and_compare_like_dicts() -> None:
    m = FrozenMap({"a": 1}).set("b", 2)
    same = {"a": 1, "b": 2}
    assert m == same == MappingProxyType(m) and same == m  # both ways
    assert MappingProxyType({"a": 1, "b": 2}) == MappingProxyType(m)
    assert m != {"a": 1} and m != {"a": 1, "b": 3} and m != {"a": 1, "c": 2} and m != [1]
    assert m.delete("a") == {"b": 2} and m.delete("zz") is m and m == {"a": 1, "b": 2}
    assert m.update({"c": 3}, removed=["a"]) == {"b": 2, "c": 3}
    assert sorted(m.items()) == [("a", 1), ("b", 2)] and sorted(m.values()) == [1, 2]
    assert m.keys() - {"a"} == {"b"} and ("a", 1) in m.items() and 2 in m.values()
    assert m.get("zz") is None and m.get("zz", 0) == 0 and "a" in m and len(m) == 2
    assert pickle.loads(pickle.dumps(m)) == m and repr(m) == "FrozenMap({'a': 1, 'b': 2})"
    assert EMPTY == {} and not EMPTY
    view = MappingProxyType(m)
    assert frozen(view) is m and frozen(m) is m
    assert frozen(MappingProxyType({"x": 1})) == {"x": 1} and frozen({"x": 1}) == {"x": 1}
    with pytest.raises(TypeError):
        view["c"] = 3  # type: ignore[index]
    with pytest.raises(TypeError):
        m["c"] = 3  # type: ignore[index]


def test_states_made_with_other_mappings_fold_on_and_compare_equal(big: SessionState) -> None:
    # As fork.comparable() and history.apply() make them: plain dicts behind the views.
    redone = dataclasses.replace(
        big,
        agents=MappingProxyType(dict(big.agents)),
        cursors=MappingProxyType(dict(big.cursors)),
        roles={a: r for a, r in big.roles.items()},
    )
    assert redone == big and big == redone
    detach = env(AgentDetached("a3", "bye"), 90_001)
    assert evolve(redone, detach) == evolve(big, detach)
    assert redone.cursors_of("a4") == big.cursors_of("a4") == (big.cursors["c4"],)


# -- the indexes agree with a brute-force reading -----------------------------------------


def random_cursor_events(rng: random.Random, count: int) -> Iterator[Event]:
    """Cursor adds, moves (some to another owner), removes, detaches and an end."""
    for _ in range(count):
        roll = rng.random()
        agent, cursor = f"a{rng.randrange(6)}", f"c{rng.randrange(40)}"
        start = float(rng.randrange(8))  # few starts: many ties
        axes = tuple(rng.sample(["ocean", "ocean.temp", "air"], rng.randint(1, 2)))
        if roll < 0.45:
            yield CursorAdded(agent, cursor, axes, start, start + rng.randrange(4))
        elif roll < 0.8:
            yield CursorMoved(agent, cursor, axes, start, start + rng.randrange(4))
        elif roll < 0.93:
            yield CursorRemoved(agent, cursor)
        elif roll < 0.995:
            yield AgentDetached(agent, "bye")
        else:
            yield SessionEnded("stop", ())


def brute(cursors: dict[str, CursorView], axis: str, lo: float, hi: float) -> list[str]:
    parents = {".".join(axis.split(".")[:n]) for n in range(1, axis.count(".") + 2)}
    return sorted(
        c.cursor_id
        for c in cursors.values()
        if parents & set(c.axes) and c.start <= hi and c.end >= lo
    )


@pytest.mark.parametrize("seed", range(4))
def test_cursors_by_owner_follow_every_change(seed: int) -> None:
    rng = random.Random(seed)
    state = SessionState(SID)
    for sequence, event in enumerate(random_cursor_events(rng, 600), start=1):
        previous = state
        state = evolve(state, env(event, sequence))
        if sequence % 50 == 0:  # a state made another way rebuilds the index once
            state = dataclasses.replace(state, cursors=MappingProxyType(dict(state.cursors)))
        if isinstance(event, AgentDetached):
            assert not any(c.agent_id == event.agent_id for c in state.cursors.values())
            kept = {c: v for c, v in previous.cursors.items() if v.agent_id != event.agent_id}
            assert state.cursors == kept
        for agent in [f"a{n}" for n in range(6)]:
            owned = tuple(v for _, v in sorted(state.cursors.items()) if v.agent_id == agent)
            assert state.cursors_of(agent) == owned


@pytest.mark.parametrize("block", [2, 3, 32])
def test_the_cursor_index_blocks_split_merge_and_answer_like_a_scan(
    monkeypatch: pytest.MonkeyPatch, block: int
) -> None:
    monkeypatch.setattr(cursors_module, "BLOCK", block)
    rng = random.Random(block)
    index = CursorIndex()
    state = SessionState(SID)
    for sequence, event in enumerate(random_cursor_events(rng, 1500), start=1):
        envelope = env(event, sequence)
        index.apply(envelope)
        state = evolve(state, envelope)
        if sequence % 5 == 0:
            axis = rng.choice(["ocean", "ocean.temp", "ocean.temp.deep", "air", "wind"])
            lo = float(rng.randrange(-1, 12))
            hi = lo + rng.randrange(3)
            expected = brute(dict(state.cursors), axis, lo, hi)
            assert [c.cursor_id for c in index.overlapping(axis, lo, hi)] == expected
    assert index.cursors == state.cursors
    for entry in index._axes.values():  # blocks within bounds, keys in order
        keys = [
            (s, i)
            for starts, ids in zip(entry.starts, entry.ids, strict=True)
            for s, i in zip(starts, ids, strict=True)
        ]
        assert keys == sorted(keys) and len(keys) == len(entry)
        assert all(ids for ids in entry.ids) and all(len(ids) <= 2 * block for ids in entry.ids)
