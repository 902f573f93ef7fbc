"""Nothing slow blocks a session: compositors answer off the session actor's thread (issue 16)."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from plantangenet import (
    CompositorFailed,
    DisclosureMade,
    InsufficientDust,
    MoveCursor,
    Plantangenet,
    QueryCursor,
    Region,
    Sample,
    SessionHandle,
    SyntheticCompositor,
)
from plantangenet.errors import CommandRejected
from plantangenet.log.journal import JournalConfig
from plantangenet.nats.embedded import EmbeddedNats

OCEAN = ("ocean.temperature", "ocean.salinity")
POLICY: list[dict[str, Any]] = [
    {
        "id": "cursors",
        "effect": "allow",
        "actions": ["cursor.add", "cursor.move", "cursor.remove", "cursor.query"],
        "resources": ["axis.*"],
    },
]


class Gate:
    """A compositor that answers like the synthetic one once the test opens its gate."""

    name = "gate"

    def __init__(self) -> None:
        self.opened = threading.Event()
        self.asked = threading.Event()
        self.returned = threading.Event()
        self.regions: list[Region] = []

    def query(self, region: Region) -> list[Sample]:
        self.regions.append(region)
        self.asked.set()
        try:
            assert self.opened.wait(30), "the test never opened the gate"
            return SyntheticCompositor().query(region)
        finally:
            self.returned.set()


def ocean(runtime: Plantangenet, gate: Gate) -> SessionHandle:
    runtime.add_compositor(gate)
    runtime.add_compositor(SyntheticCompositor())
    session = runtime.session("ocean")
    session.start({"purpose": "slow compositors"})
    session.change_policy(replace=POLICY)
    session.register_compositor("gate")
    session.register_compositor("synthetic")
    for agent_id in ("ana", "bob"):
        session.attach(agent_id)
        session.add_cursor(agent_id, f"c-{agent_id}", OCEAN, 0.0, 23.0)
    return session


def disclosures(session: SessionHandle) -> list[object]:
    stored = session.query(lambda actor: actor.loop.run(actor.journal.read_all("ocean")))
    return [e.event for e in stored.result(10) if isinstance(e.event, DisclosureMade)]


@pytest.fixture
def gate() -> Iterator[Gate]:
    gate = Gate()
    yield gate
    gate.opened.set()  # free the compositor thread whatever the test did


def query(agent_id: str, compositor: str = "gate") -> QueryCursor:
    return QueryCursor(agent_id=agent_id, cursor_id=f"c-{agent_id}", compositor=compositor)


def test_a_slow_compositor_does_not_delay_the_sessions_other_commands(
    runtime: Plantangenet, gate: Gate
) -> None:
    session = ocean(runtime, gate)
    asked = session.submit(query("ana"))
    assert gate.asked.wait(10)
    # The compositor is blocked; the session goes on deciding and storing commands.
    move = session.submit(
        MoveCursor(
            command_id="move", agent_id="bob", cursor_id="c-bob", axes=OCEAN, start=1.0, end=5.0
        )
    )
    moved = move.result(10)
    other = session.query_cursor("bob", "c-bob", "synthetic")
    assert not asked.done()  # still waiting for its compositor
    assert len(other.samples) == 10
    gate.opened.set()
    result = asked.result(10)
    assert len(result.samples) == 48
    # Decided when the answer came: after the commands decided meanwhile.
    assert result.sequence > other.sequence > moved.sequence
    assert [type(e.event) for e in result.events] == [DisclosureMade]
    assert runtime.replay("ocean") == session.state


def test_a_cursor_moved_while_its_compositor_answers_is_asked_again(
    runtime: Plantangenet, gate: Gate
) -> None:
    session = ocean(runtime, gate)
    asked = session.submit(query("ana"))
    assert gate.asked.wait(10)
    session.move_cursor("ana", "c-ana", ("ocean.temperature",), 2.0, 4.0)
    gate.opened.set()
    result = asked.result(10)
    # The first answer was for a region the cursor left: the compositor was asked again.
    assert [(r.axes, r.start, r.end) for r in gate.regions] == [
        (OCEAN, 0.0, 23.0),
        (("ocean.temperature",), 2.0, 4.0),
    ]
    assert {(s.axis, s.time) for s in result.samples} == {
        ("ocean.temperature", t) for t in (2.0, 3.0, 4.0)
    }
    assert runtime.replay("ocean") == session.state


def test_the_charge_is_decided_on_the_state_when_the_compositor_answers(
    runtime: Plantangenet, gate: Gate
) -> None:
    session = ocean(runtime, gate)
    session.set_prices({"cursor.query": 5})  # 2 axes: 10 a query
    session.deposit("ana", 10)
    first = session.submit(
        QueryCursor(command_id="q1", agent_id="ana", cursor_id="c-ana", compositor="gate")
    )
    second = session.submit(
        QueryCursor(command_id="q2", agent_id="ana", cursor_id="c-ana", compositor="gate")
    )
    assert gate.asked.wait(10)
    gate.opened.set()
    outcomes: list[int | str] = []
    for future in (first, second):
        try:
            outcomes.append(len(future.result(10).samples))
        except InsufficientDust:  # both were planned on 10 dust; only one can be paid
            outcomes.append("refused")
    assert sorted(outcomes, key=str) == [48, "refused"]
    assert session.state.balances["ana"] == 0
    assert runtime.replay("ocean") == session.state


def test_an_agent_detached_while_its_compositor_answers_discloses_nothing(
    runtime: Plantangenet, gate: Gate
) -> None:
    session = ocean(runtime, gate)
    asked = session.submit(query("ana"))
    assert gate.asked.wait(10)
    session.detach("ana")
    sequence = session.state.sequence
    gate.opened.set()
    with pytest.raises(CommandRejected):
        asked.result(10)
    assert session.state.sequence == sequence
    assert runtime.replay("ocean") == session.state


def test_a_retry_while_the_compositor_answers_joins_the_query(
    runtime: Plantangenet, gate: Gate
) -> None:
    session = ocean(runtime, gate)
    command = QueryCursor(command_id="q", agent_id="ana", cursor_id="c-ana", compositor="gate")
    first = session.submit(command)
    assert gate.asked.wait(10)
    again = session.submit(command)
    gate.opened.set()
    assert first.result(10).events == again.result(10).events
    assert len(gate.regions) == 1  # asked once
    assert len(disclosures(session)) == 1


def test_a_compositor_past_its_timeout_fails_and_the_session_serves_on(
    nats_server: EmbeddedNats, journal_config: JournalConfig, gate: Gate
) -> None:
    with Plantangenet.open(
        nats_url=nats_server.url, journal=journal_config, compositor_timeout=0.3
    ) as runtime:
        session = ocean(runtime, gate)
        session.set_prices({"cursor.query": 1})  # 1 an axis
        session.deposit("ana", 5)
        sequence = session.state.sequence
        with pytest.raises(CompositorFailed, match=r"did not answer within 0\.3 s"):
            session.execute(query("ana"))
        assert session.state.sequence == sequence  # nothing recorded, nothing charged
        session.move_cursor("ana", "c-ana", OCEAN, 0.0, 11.0)
        assert len(session.query_cursor("ana", "c-ana", "synthetic").samples) == 24
        gate.opened.set()  # the late answer is dropped
        assert gate.returned.wait(10)
        time.sleep(0.2)
        assert session.query(lambda actor: not actor._composing).result(10)
        assert session.state.balances["ana"] == 3  # the one query that answered
        assert len(disclosures(session)) == 1
        assert runtime.replay("ocean") == session.state
