"""The audit read model's chunks: entries folded from envelopes and from checked values.

``_Chunk.fold`` (an envelope) and ``_Chunk.fold_checked`` (the values the codec checked,
no envelope built: the first build's common case) must give the entries
``projections.audit.audit_entries`` gives. Events by different agents, of different
commands, with the very same stored authorization share one authorization object (the
codec hands out one per distinct stored form), so the chunk's memo of an
authorization's entries must keep each event's own agent and command.
"""

from __future__ import annotations

from datetime import UTC, datetime

from plantangenet.events import AccessDenied, CursorAdded, CursorMoved
from plantangenet.events.codec import CODEC
from plantangenet.events.envelope import Authorization, Envelope, new_id
from plantangenet.projections.audit import audit_entries
from plantangenet.projections.audit_chunks import _Chunk

AT = datetime(2026, 1, 1, 12, 0, 0, 123456, tzinfo=UTC)
SAME = Authorization("cursor.move", ("axis.x", "axis.y"), ("movers", None), 3)


def stored() -> list[Envelope]:
    events = [
        (CursorMoved("a", "c1", ("x",), 0.0, 1.0), "a", SAME),
        (CursorMoved("b", "c2", ("x",), 0.0, 1.0), "b", SAME),  # another agent, same form
        (CursorAdded("a", "c3", ("x",), 0.0, 1.0), "a", SAME),  # another command, same form
        (CursorMoved("a", "c1", ("x",), 1.0, 2.0), None, SAME),  # the owner form
        (AccessDenied("b", "move_cursor", "cursor.move", "axis.z", "no", "denied", 3), "b", None),
        (CursorMoved("a", "c1", ("x",), 2.0, 3.0), "a", None),  # no authorization: no entry
        (CursorMoved("b", "c2", ("x",), 1.0, 2.0), "b", SAME),
    ]
    return [
        Envelope(event, "s", new_id(), f"cmd-{n}", "r", AT, agent, n + 1, authorization=auth)
        for n, (event, agent, auth) in enumerate(events)
    ]


def entries(chunk: _Chunk) -> list[object]:
    return [chunk.entry(i) for i in range(len(chunk))]


def test_entries_from_envelopes_and_from_checked_values_are_audit_entries() -> None:
    envelopes = stored()
    expected = [entry for envelope in envelopes for entry in audit_entries(envelope)]
    assert len(expected) == 11  # two per authorized event, one refused
    from_envelopes, from_checked = _Chunk(), _Chunk()
    for envelope in envelopes:
        from_envelopes.fold(envelope)
        checked = CODEC.checked(CODEC.encode(envelope), sequence=envelope.sequence)
        assert checked is not None
        from_checked.fold_checked(checked)
    assert entries(from_envelopes) == expected
    assert entries(from_checked) == expected


def test_a_packed_chunk_is_the_msgpack_of_its_columns_and_reads_back() -> None:
    import msgpack

    chunk = _Chunk()
    for envelope in stored():
        chunk.fold(envelope)
    data = chunk.pack()
    assert data == msgpack.packb(
        {"f": 1, "s": chunk.strings, "c": chunk.columns}, use_bin_type=True
    )
    assert entries(_Chunk.unpack(data)) == entries(chunk)
