"""Property: a replay with no observer folds runs of cursor moves from their checked
fields (no envelope built) and gives exactly what decoding every payload gives.

``plantangenet.log.session_replay`` folds a batch of stored payloads two ways: decoding
each into an envelope (``_fold_batch``, as an observer needs), or, with no observer,
taking a cursor move that joins the current run from ``EventCodec.checked``
(``_fold_checked``). For random batches -- moves and adds of cursors that keep or change
owners, events that end a run, events of another session, damaged payloads -- both must
give equal states, whole or split in two, from nothing or from a state with cursors.
"""

from __future__ import annotations

from datetime import UTC, datetime

from hypothesis import given, settings
from hypothesis import strategies as st

from plantangenet.events import AgentAttached, CursorAdded, Event, SessionStarted
from plantangenet.events.codec import CODEC
from plantangenet.events.envelope import Envelope, new_id
from plantangenet.log.session_replay import _fold_batch, _fold_checked
from plantangenet.projections.session import SessionState, fold
from plantangenet.projections.views import plain
from tests.test_fold_sharing_property import _EVENTS

AT = datetime(2026, 1, 1, tzinfo=UTC)
SESSION = "runs"

#: A stored message: an event of this session or of another, or bytes that are none.
_STORED = st.one_of(
    st.tuples(st.just("event"), _EVENTS),
    st.tuples(st.just("event"), _EVENTS),
    st.tuples(st.just("event"), _EVENTS),
    st.tuples(st.just("other session"), _EVENTS),
    st.tuples(st.just("damaged"), _EVENTS),
)


def payload(kind: str, event: Event, sequence: int) -> bytes:
    session = "elsewhere" if kind == "other session" else SESSION
    stored = CODEC.encode(
        Envelope(event, session, new_id(), "c", "r", AT, None, sequence, revision=sequence)
    )
    return stored[:-3] if kind == "damaged" else stored


def start() -> SessionState:
    """A session whose agents a, b, c each have a cursor (c1, c2, c3)."""
    events: list[Event] = [SessionStarted(SESSION, {})]
    events += [AgentAttached(a, "bot", "") for a in "abc"]
    events += [CursorAdded(a, f"c{n + 1}", ("x",), 0.0, 1.0) for n, a in enumerate("abc")]
    envelopes = [
        Envelope(e, SESSION, new_id(), "c", "r", AT, None, n + 1) for n, e in enumerate(events)
    ]
    return fold(SESSION, envelopes)


@settings(max_examples=300, deadline=None)
@given(
    stored=st.lists(_STORED, max_size=60),
    cut=st.integers(min_value=0, max_value=60),
    with_cursors=st.booleans(),
)
def test_folding_checked_fields_equals_folding_decoded_envelopes(
    stored: list[tuple[str, Event]], cut: int, with_cursors: bool
) -> None:
    before = start() if with_cursors else SessionState(SESSION)
    first = before.sequence + 1
    batch = [(first + n, payload(kind, event, first + n)) for n, (kind, event) in enumerate(stored)]
    decode, checked = CODEC.decode, CODEC.checked
    expected = _fold_batch(before, batch, decode, False, None)
    whole = _fold_checked(before, batch, decode, checked)
    in_two = _fold_checked(
        _fold_checked(before, batch[:cut], decode, checked), batch[cut:], decode, checked
    )
    for state in (whole, in_two):
        assert state == expected
        assert plain(state) == plain(expected)
        assert state.unreadable == expected.unreadable
        for agent in "abc":  # the cursors-by-owner cache the fold carries along
            assert state.cursors_of(agent) == expected.cursors_of(agent)
