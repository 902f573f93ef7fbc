"""Slot builders: the objects the decoder builds equal what the classes build."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plantangenet.events import EVENTS, AgentAttached, CursorMoved, SessionStarted
from plantangenet.events.codec import _EXACT_TIMESTAMPS, CODEC
from plantangenet.events.envelope import Authorization, Envelope
from plantangenet.events.slots import slot_builder
from plantangenet.projections.session import CursorView, cursor_view
from tests.test_codec import envelope_of

EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def test_the_envelope_every_registered_event_and_the_cursor_view_get_a_builder() -> None:
    classes = [Envelope, Authorization, CursorView, *EVENTS.types().values()]
    for cls in classes:
        assert slot_builder(cls) is not cls, cls.__name__


def test_a_built_envelope_equals_hashes_and_stays_frozen_like_one_made_by_the_class() -> None:
    event = AgentAttached("a", "bot", "")
    values: tuple[Any, ...] = (event, "s", "e", "c", "r", EPOCH, "a", 5, b"p", None, b"d")
    values += ("u@A", b"f", 3)
    made, built = Envelope(*values), slot_builder(Envelope)(*values)
    assert type(built) is Envelope
    assert built == made and hash(built) == hash(made) and repr(built) == repr(made)
    with pytest.raises(dataclasses.FrozenInstanceError):
        built.sequence = 6  # type: ignore[misc]
    assert dataclasses.replace(built, sequence=6).sequence == 6


def test_classes_it_cannot_build_exactly_are_built_by_the_class() -> None:
    @dataclasses.dataclass(frozen=True, slots=True)
    class Checked:
        n: int

        def __post_init__(self) -> None:
            if self.n < 0:
                raise ValueError("negative")

    @dataclasses.dataclass(frozen=True)
    class Unslotted:
        n: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class OwnInit:
        n: int

        def __init__(self, n: int) -> None:
            object.__setattr__(self, "n", n * 2)

    @dataclasses.dataclass(frozen=True, slots=True)
    class Computed:
        n: int
        twice: int = dataclasses.field(init=False, default=0)

    for cls in (Checked, Unslotted, OwnInit, Computed, int):
        assert slot_builder(cls) is cls, cls.__name__


@given(
    at=st.integers(-_EXACT_TIMESTAMPS - 10**7, -_EXACT_TIMESTAMPS + 10**7)
    | st.integers(_EXACT_TIMESTAMPS - 10**7, _EXACT_TIMESTAMPS + 10**7)
    | st.integers(-_EXACT_TIMESTAMPS, _EXACT_TIMESTAMPS)
)
def test_stored_times_decode_to_the_exact_microsecond(at: int) -> None:
    """Both ways of turning stored microseconds into a time agree, at the edges too."""
    occurred = EPOCH + timedelta(microseconds=at)
    decoded = CODEC.decode(
        CODEC.encode(envelope_of(SessionStarted("s1", {}), occurred_at=occurred))
    )
    assert decoded.occurred_at == occurred
    assert decoded.occurred_at.tzinfo is UTC


def test_the_fold_s_cursor_equals_one_made_by_the_class() -> None:
    move = CursorMoved("a", "c1", ("x", "y"), 1.0, 2.0, 0.5)
    made = CursorView("c1", "a", ("x", "y"), 1.0, 2.0, 0.5)
    assert cursor_view(move) == made and hash(cursor_view(move)) == hash(made)
