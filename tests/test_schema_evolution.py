"""Schema evolution against a real log (the path documented in docs/schema-evolution.md).

Old versions of an event are written by hand, as an older program stored them
(msgpack, in the envelope layout documented in :mod:`plantangenet.events.codec`),
with a valid hash chain, through the journal into a session's subject. Replaying
such a mixed log must give exactly what an all-current log of the same events
gives; the stored bytes are never rewritten. Done for plantangenet's own
``PolicyChanged`` v1 -> v2, and for a test-only type with a private registry and
a three-version chain (v1 -> v2 -> v3).
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import msgpack
import pytest

from plantangenet import (
    CODEC,
    AgentAttached,
    CursorAdded,
    Envelope,
    Event,
    EventCodec,
    EventRegistry,
    Journal,
    JournalConfig,
    Plantangenet,
    PolicyChanged,
    RoleGranted,
    SessionStarted,
    Statement,
    UnknownEventType,
    UnknownEventVersion,
    event_type,
    replay,
    verify,
)
from plantangenet.projections.user import Projection, rebuild
from tests.conftest import AsyncJournal

AT = datetime(2024, 11, 25, 13, 0, tzinfo=UTC)
EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


@dataclasses.dataclass(frozen=True)
class Item:
    """One event of a test log: what the current code reads, and maybe how an old one stored it."""

    event: Event
    old: tuple[int, dict[str, Any]] | None = None  # (version, data) as an older program wrote it
    agent_id: str | None = None


def stored_bytes(
    type_name: str,
    version: int,
    data: dict[str, Any],
    *,
    session_id: str,
    event_id: str,
    command_id: str,
    agent_id: str | None,
    at: datetime,
    previous: bytes,
) -> bytes:
    """An envelope exactly as the layout in plantangenet.events.codec describes it."""
    payload = msgpack.packb(
        {
            "f": 1,
            "t": type_name,
            "v": version,
            "id": event_id,
            "s": session_id,
            "a": agent_id,
            "c": command_id,
            "r": command_id,
            "at": (at - EPOCH) // timedelta(microseconds=1),
            "p": previous,
            "z": None,
            "d": data,
        },
        use_bin_type=True,
    )
    assert isinstance(payload, bytes)
    return payload


async def write(
    journal: Journal, session_id: str, items: Sequence[Item], *, legacy: bool
) -> list[bytes]:
    """Append ``items`` one command at a time through ``journal``, chaining the hashes.

    ``legacy``: the items that have an old form are stored in it (a log written
    over the years); otherwise every item is stored as the current code writes it.
    """
    previous, last, payloads = b"", 0, []
    for n, item in enumerate(items):
        event_id, command_id = f"{session_id}-e{n}", f"{session_id}-c{n}"
        at = AT + timedelta(seconds=n)
        if legacy and item.old is not None:
            version, data = item.old
            payload = stored_bytes(
                item.event.type_name,
                version,
                data,
                session_id=session_id,
                event_id=event_id,
                command_id=command_id,
                agent_id=item.agent_id,
                at=at,
                previous=previous,
            )
            envelope = journal.codec.decode(payload)  # as the log will read it
        else:
            envelope = Envelope(
                item.event,
                session_id,
                event_id,
                command_id,
                command_id,
                at,
                item.agent_id,
                previous_hash=previous,
            )
            payload = journal.codec.encode(envelope)
        result = await journal.append_encoded(
            session_id, [(envelope, payload)], expected_sequence=last
        )
        last = result.last_sequence
        previous = hashlib.sha256(payload).digest()
        payloads.append(payload)
    return payloads


async def stored_versions(journal: Journal, session_id: str) -> list[tuple[str, int]]:
    """``(type, version)`` of every message as it sits in the stream, undecoded."""
    out = []
    async for _, payload in journal.read_raw(session_id):
        raw = msgpack.unpackb(payload, raw=False)
        out.append((raw["t"], raw["v"]))
    return out


def modern_config(config: JournalConfig) -> JournalConfig:
    """Another stream on the same server, for the all-current copy of the log."""
    return dataclasses.replace(
        config, stream=config.stream + "M", subject_prefix=config.subject_prefix + "m"
    )


# -- plantangenet's own PolicyChanged v1 -> v2 ------------------------------------

WATCHERS = Statement("watchers", "allow", ("cursor.*",), ("axis.*", "cursor.*"), ("watcher",))
WATCHERS_V2 = {
    "id": "watchers",
    "effect": "allow",
    "actions": ["cursor.*"],
    "resources": ["axis.*", "cursor.*"],
    "roles": ["watcher"],
    "conditions": [],
}

POLICY_LOG = [
    Item(SessionStarted("harbour", {"purpose": "schema evolution"})),
    # Written by the program of the time, before policies had statements.
    Item(PolicyChanged(()), old=(1, {"policy_id": "p1", "rules": ["allow all"]})),
    Item(AgentAttached("tide", "bot", "Tide")),
    Item(PolicyChanged((WATCHERS,), added=("watchers",))),
    Item(RoleGranted("tide", "watcher")),
    Item(PolicyChanged(()), old=(1, {"policy_id": "p2", "rules": []})),
    # Hand-encoded too, but already in the v2 shape: v2 is read as is.
    Item(
        PolicyChanged((WATCHERS,), added=("watchers",)),
        old=(2, {"statements": [WATCHERS_V2], "added": ["watchers"], "removed": []}),
    ),
    Item(CursorAdded("tide", "c1", ("ocean.height",), 0.0, 10.0), agent_id="tide"),
]


def test_a_log_mixing_policy_changed_v1_and_v2_replays_like_an_all_v2_log(
    journal: AsyncJournal, runtime: Plantangenet, journal_config: JournalConfig
) -> None:
    mixed = journal.journal
    modern = Journal(journal.nc, modern_config(journal_config))
    journal.run(modern.ensure_stream())
    journal.run(write(mixed, "harbour", POLICY_LOG, legacy=True))
    journal.run(write(modern, "harbour", POLICY_LOG, legacy=False))

    # The stored bytes keep the version they were written with: nothing is rewritten.
    policy_versions = [
        v for t, v in journal.run(stored_versions(mixed, "harbour")) if t == "PolicyChanged"
    ]
    # (the modern copy is written by today's code: PolicyChanged v3)
    assert policy_versions == [1, PolicyChanged.version, 1, 2]
    assert {
        v for t, v in journal.run(stored_versions(modern, "harbour")) if t == "PolicyChanged"
    } == {PolicyChanged.version}
    # Both chains are intact, the v1 events included.
    assert journal.run(verify(mixed, "harbour")).intact
    assert journal.run(verify(modern, "harbour")).intact

    # Read back, the events are the same values, at the same sequences.
    old_events = journal.run(mixed.read_all("harbour"))
    new_events = journal.run(modern.read_all("harbour"))
    assert [type(e.event) for e in old_events] == [type(i.event) for i in POLICY_LOG]
    assert [e.event for e in old_events] == [e.event for e in new_events]
    assert [(e.sequence, e.event_id, e.agent_id, e.occurred_at) for e in old_events] == [
        (e.sequence, e.event_id, e.agent_id, e.occurred_at) for e in new_events
    ]

    # And they replay into the same session.
    replayed = journal.run(replay(mixed, "harbour"))
    assert replayed == journal.run(replay(modern, "harbour"))
    assert replayed.policy.version == 4  # every PolicyChanged counts, v1 ones too
    assert replayed.policy.statements == (WATCHERS,)
    assert replayed.roles_of("tide") == ("watcher",)
    for n in range(1, len(POLICY_LOG) + 1):  # at every point in time, not only at the end
        assert journal.run(replay(mixed, "harbour", to_sequence=n)) == journal.run(
            replay(modern, "harbour", to_sequence=n)
        )
    after_first_v1 = journal.run(replay(mixed, "harbour", to_sequence=2))
    assert (after_first_v1.policy.version, after_first_v1.policy.statements) == (1, ())

    # A session actor rehydrates from the mixed log and works on: the upcast policy is live.
    session = runtime.session("harbour")
    assert session.state == replayed
    session.add_cursor("tide", "c2", ["ocean.temperature"], 0, 5, issued_by="tide")
    assert journal.run(stored_versions(mixed, "harbour"))[-1] == (
        "CursorAdded",
        CursorAdded.version,
    )
    assert journal.run(verify(mixed, "harbour")).intact
    assert runtime.replay("harbour").cursors.keys() == {"c1", "c2"}


# -- a test-only type with a private registry: v1 -> v2 -> v3 ---------------------

TIDES = EventRegistry()


@event_type("StationOpened", version=1, registry=TIDES)
class StationOpened(Event):
    station: str


@event_type("TideMeasured", version=3, registry=TIDES)
class TideMeasured(Event):
    """v1: ``{station, height_cm}``; v2: ``{station, height_mm}``; v3 adds ``datum``."""

    station: str
    height_mm: int
    datum: str


def tide_v1_to_v2(data: dict[str, Any]) -> dict[str, Any]:
    return {"station": data["station"], "height_mm": data["height_cm"] * 10}


def tide_v2_to_v3(data: dict[str, Any]) -> dict[str, Any]:
    return {**data, "datum": "LAT"}  # every v1/v2 height was above lowest astronomical tide


TIDES.add_upcaster("TideMeasured", 1, tide_v1_to_v2)
TIDES.add_upcaster("TideMeasured", 2, tide_v2_to_v3)
TIDE_CODEC = EventCodec(TIDES)


def tide_log(station: str, heights_cm: Sequence[int]) -> list[Item]:
    items = [Item(StationOpened(station))]
    for n, cm in enumerate(heights_cm):
        version = n % 3 + 1
        if version == 1:
            items.append(
                Item(
                    TideMeasured(station, cm * 10, "LAT"),
                    old=(1, {"station": station, "height_cm": cm}),
                )
            )
        elif version == 2:
            items.append(
                Item(
                    TideMeasured(station, cm * 10, "LAT"),
                    old=(2, {"station": station, "height_mm": cm * 10}),
                )
            )
        else:  # written by today's code, with a datum v1 and v2 could not express
            items.append(Item(TideMeasured(station, cm * 10, "MSL" if n % 2 else "LAT")))
    return items


HEIGHTS = {"north": [412, 388, 405, 431, 399, 377, 420], "south": [120, 164, 151, 133, 170]}


def tide_fold(state: dict[str, Any], envelope: Envelope) -> dict[str, Any]:
    """Per station: [measurements, highest in mm, datums seen]."""
    event = envelope.event
    if isinstance(event, StationOpened):
        return {**state, event.station: [0, 0, []]}
    if isinstance(event, TideMeasured):
        count, highest, datums = state[event.station]
        return {
            **state,
            event.station: [
                count + 1,
                max(highest, event.height_mm),
                sorted({*datums, event.datum}),
            ],
        }
    return state


def test_a_three_version_chain_replays_through_a_private_codec_like_an_all_v3_log(
    journal: AsyncJournal, journal_config: JournalConfig
) -> None:
    mixed = Journal(journal.nc, journal_config, codec=TIDE_CODEC)
    modern = Journal(journal.nc, modern_config(journal_config), codec=TIDE_CODEC)
    journal.run(modern.ensure_stream())
    for station, heights in HEIGHTS.items():
        journal.run(write(mixed, station, tide_log(station, heights), legacy=True))
        journal.run(write(modern, station, tide_log(station, heights), legacy=False))

    versions = journal.run(stored_versions(mixed, "north"))
    assert versions == [("StationOpened", 1)] + [
        ("TideMeasured", n % 3 + 1) for n in range(len(HEIGHTS["north"]))
    ]
    assert {v for _, v in journal.run(stored_versions(modern, "north"))[1:]} == {3}
    for station in HEIGHTS:
        assert journal.run(verify(mixed, station)).intact
        old = journal.run(mixed.read_all(station))
        new = journal.run(modern.read_all(station))
        assert [e.event for e in old] == [e.event for e in new]
        assert all(type(e.event) in (StationOpened, TideMeasured) for e in old)

    # The same user projection, rebuilt over each log, ends the same.
    projection: Projection[dict[str, Any]] = Projection("tides", {}, tide_fold)
    from_mixed = journal.run(rebuild(mixed, projection, bucket=f"evo-{mixed.config.stream}"))
    from_modern = journal.run(rebuild(modern, projection, bucket=f"evo-{modern.config.stream}"))
    assert from_mixed.state == from_modern.state
    assert from_mixed.events == from_modern.events == sum(len(h) + 1 for h in HEIGHTS.values())
    assert from_mixed.state == {
        "north": [7, 4310, ["LAT", "MSL"]],
        "south": [5, 1700, ["LAT"]],
    }

    # Read through a codec that does not know the private types, the log is refused clearly...
    with pytest.raises(UnknownEventType, match="StationOpened"):
        journal.run(Journal(journal.nc, journal_config, codec=CODEC).read_all("north"))
    # ...and through a registry missing a link of the chain, the version is named.
    partial = EventRegistry()
    partial.register(StationOpened, "StationOpened", 1)
    partial.register(TideMeasured, "TideMeasured", 3)
    partial.add_upcaster("TideMeasured", 2, tide_v2_to_v3)
    with pytest.raises(UnknownEventVersion, match="v1 to v2"):
        journal.run(
            Journal(journal.nc, journal_config, codec=EventCodec(partial)).read_all("north")
        )
