"""submit_many with hostile batches: every item answered, nothing invalid written."""

from __future__ import annotations

import itertools
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet import (
    CommandResult,
    MoveCursor,
    Plantangenet,
    PlantangenetError,
    RemoveCursor,
)
from tests.conftest import session_with_cursor

_ids = itertools.count()

JUNK = st.one_of(
    st.none(),
    st.integers(),
    st.text(max_size=20),
    st.binary(max_size=20),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=3), st.integers(), max_size=3),
    st.floats(allow_nan=True, allow_infinity=True),
)

# MoveCursor with each field drawn from valid values or junk (the dataclass does not check).
MOVES = st.builds(
    lambda agent, cursor, axes, start, end, cid: MoveCursor(
        agent_id=agent, cursor_id=cursor, axes=axes, start=start, end=end, command_id=cid
    ),
    st.one_of(st.just("bot"), JUNK),
    st.one_of(st.just("c"), JUNK),
    st.one_of(st.just(("x",)), st.just(("x", "y.z")), JUNK),
    st.one_of(st.floats(0, 10), JUNK),
    st.one_of(st.floats(10, 20), JUNK),
    st.one_of(st.text("abc", min_size=1, max_size=3), JUNK),
)
ITEMS = st.lists(
    st.one_of(MOVES, JUNK, st.just(RemoveCursor(agent_id="nobody", cursor_id="c"))),
    max_size=30,
)


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(items=ITEMS)
def test_every_item_of_a_hostile_batch_is_answered_and_only_valid_ones_are_stored(
    runtime: Plantangenet, items: list[Any]
) -> None:
    session_id = f"many-{next(_ids)}"
    session = session_with_cursor(runtime, session_id)
    before = session.state.event_count

    outcomes = session.submit_many(items).result(30)

    assert len(outcomes) == len(items)
    assert all(isinstance(o, CommandResult | PlantangenetError) for o in outcomes)
    new_events = {e.event_id for o in outcomes if isinstance(o, CommandResult) for e in o.events}
    state = session.state
    assert state.event_count == before + len(new_events)  # nothing beyond the answers
    assert runtime.replay(session_id) == state
    # and the actor still serves
    assert session.move_cursor("bot", "c", ["x"], 3, 4).sequence == session.state.sequence
    runtime.stop_session(session_id)
