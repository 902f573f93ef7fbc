"""User-defined projections rebuilt from the log, their progress checkpointed in NATS KV.

Against a real nats-server. Each rebuild runs on a connection and event loop of
its own (``AsyncJournal``), as a separate process would: what one rebuild leaves
in the KV bucket is all the next one knows. The expected results are computed
independently, by counting the sessions' histories.
"""

from __future__ import annotations

import dataclasses
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any

import msgpack
import pytest

from plantangenet import (
    AgentAttached,
    ConcurrencyError,
    EmbeddedNats,
    Envelope,
    JournalConfig,
    MoveCursor,
    Plantangenet,
)
from plantangenet.projections.user import (
    DEFAULT_BUCKET,
    CheckpointConflict,
    CheckpointError,
    Projection,
    ProjectionRegistry,
    RebuildResult,
    UnknownProjection,
    load_checkpoint,
    rebuild,
    reset,
)
from tests.conftest import AsyncJournal, LateCreates

SESSIONS = ("dock", "harbour", "quay")
AGENTS = {"harbour": ("tide", "gull", "pilot"), "quay": ("tide", "crane"), "dock": ("forklift",)}
MOVES = {"harbour": 12, "quay": 6, "dock": 3}


@dataclasses.dataclass(frozen=True)
class Tally:
    """Events per type, and every agent ever attached, across the sessions folded."""

    per_type: Mapping[str, int]
    agents: frozenset[str]


def tally(state: Tally, envelope: Envelope) -> Tally:
    per_type = dict(state.per_type)
    per_type[envelope.type_name] = per_type.get(envelope.type_name, 0) + 1
    agents = state.agents
    if isinstance(envelope.event, AgentAttached):
        agents = agents | {envelope.event.agent_id}
    return Tally(per_type, agents)


def encode_tally(state: Tally) -> dict[str, Any]:
    return {"per_type": dict(sorted(state.per_type.items())), "agents": sorted(state.agents)}


def decode_tally(raw: Any) -> Tally:
    return Tally(dict(raw["per_type"]), frozenset(raw["agents"]))


def tally_projection(
    name: str = "tally",
    fold: Callable[[Tally, Envelope], Tally] = tally,
    version: int = 1,
) -> Projection[Tally]:
    return Projection(name, Tally({}, frozenset()), fold, encode_tally, decode_tally, version)


def populate(pg: Plantangenet) -> None:
    for session_id, agents in AGENTS.items():
        session = pg.session(session_id)
        session.start({"purpose": session_id})
        for agent_id in agents:
            session.attach(agent_id, kind="bot", name=agent_id.title())
        first = agents[0]
        session.add_cursor(first, "c1", ["ocean.height"], 0, 10)
        futures = [
            session.submit(
                MoveCursor(
                    agent_id=first, cursor_id="c1", axes=("ocean.height",), start=t, end=t + 10
                )
            )
            for t in range(MOVES[session_id])
        ]
        for future in futures:
            future.result(timeout=10)
        if len(agents) > 1:
            session.detach(agents[-1], "done")
    pg.session("dock").end("closed")


def expected(pg: Plantangenet, sessions: Iterable[str] = SESSIONS) -> Tally:
    """The tally, by counting the histories (independently of the fold)."""
    per_type: Counter[str] = Counter()
    agents: set[str] = set()
    for session_id in sessions:
        for envelope in pg.history(session_id):
            per_type[envelope.type_name] += 1
            if isinstance(envelope.event, AgentAttached):
                agents.add(envelope.event.agent_id)
    return Tally(dict(per_type), frozenset(agents))


def last_sequences(pg: Plantangenet, sessions: Iterable[str] = SESSIONS) -> dict[str, int]:
    return {s: pg.history(s)[-1].sequence or 0 for s in sessions}


def fold_order(pg: Plantangenet) -> list[tuple[str, int]]:
    """The order a rebuild from scratch folds events in: by session id, then sequence."""
    return [(s, e.sequence or 0) for s in sorted(SESSIONS) for e in pg.history(s)]


@pytest.fixture
def log(runtime: Plantangenet) -> Plantangenet:
    populate(runtime)
    return runtime


@pytest.fixture
def bucket(journal_config: JournalConfig) -> str:
    """A bucket of the test's own (checkpoints name the stream they follow)."""
    return f"projections-{journal_config.stream}"


@pytest.fixture
def connect(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> Iterator[Callable[[], AsyncJournal]]:
    """A new connection on a new event loop each call: a process of its own."""
    opened: list[AsyncJournal] = []

    def make() -> AsyncJournal:
        j = AsyncJournal(nats_server.url, journal_config)
        opened.append(j)
        return j

    yield make
    for j in opened:
        if not j.loop.is_closed():
            j.close()


def run_rebuild(
    j: AsyncJournal, projection: Projection[Any] | str, **kw: Any
) -> RebuildResult[Any]:
    result: RebuildResult[Any] = j.run(rebuild(j.journal, projection, **kw))
    return result


def raw_checkpoint(j: AsyncJournal, bucket: str, name: str) -> tuple[dict[str, Any], int]:
    kv = j.run(j.journal.js.key_value(bucket))
    entry = j.run(kv.get(name))
    return msgpack.unpackb(entry.value, raw=False), entry.revision


def put_raw(j: AsyncJournal, bucket: str, name: str, value: bytes) -> None:
    kv = j.run(j.journal.js.key_value(bucket))
    j.run(kv.put(name, value))


def test_a_full_rebuild_counts_events_per_type_and_agents_across_sessions(
    log: Plantangenet,
    connect: Callable[[], AsyncJournal],
    bucket: str,
    journal_config: JournalConfig,
) -> None:
    j = connect()
    total = sum(log.sessions().values())
    seen: list[tuple[str, int, int]] = []
    result = run_rebuild(
        j,
        tally_projection(),
        bucket=bucket,
        checkpoint_every=7,
        progress=lambda s, seq, end: seen.append((s, seq, end)),
    )
    want = expected(log)
    assert result.state == want
    assert result.state.agents == {"tide", "gull", "pilot", "crane", "forklift"}
    assert result.state.per_type["CursorMoved"] == sum(MOVES.values())
    assert sum(result.state.per_type.values()) == total
    assert result.complete
    assert result.events == result.folded == total
    assert result.checkpoints == total // 7 + (1 if total % 7 else 0)
    last = last_sequences(log)
    assert result.positions == last
    assert seen == [(s, last[s], last[s]) for s in sorted(SESSIONS)]

    # The KV entry under the projection's name holds the positions and the state.
    raw, revision = raw_checkpoint(j, bucket, "tally")
    assert revision == result.revision
    assert raw["positions"] == last
    assert raw["events"] == total
    assert raw["state"] == encode_tally(want)
    assert (raw["f"], raw["name"], raw["version"], raw["stream"]) == (
        1,
        "tally",
        1,
        journal_config.stream,
    )
    checkpoint = j.run(load_checkpoint(j.journal, tally_projection(), bucket=bucket))
    assert (checkpoint.state, checkpoint.positions, checkpoint.events) == (want, last, total)
    assert checkpoint.revision == result.revision

    # Nothing new: nothing folded, the checkpoint is left as it is.
    again = run_rebuild(connect(), tally_projection(), bucket=bucket)
    assert (again.folded, again.checkpoints, again.revision) == (0, 0, result.revision)
    assert again.state == want

    # New events: only they are folded.
    log.session("quay").attach("diver", kind="client", name="Diver")
    more = run_rebuild(connect(), tally_projection(), bucket=bucket)
    assert more.folded == 1
    assert more.state == expected(log)
    assert "diver" in more.state.agents
    assert more.positions == last_sequences(log)
    assert more.positions["quay"] > last["quay"]


def test_an_interrupted_rebuild_resumes_in_a_fresh_process_and_ends_equal_to_one_from_scratch(
    log: Plantangenet, connect: Callable[[], AsyncJournal], bucket: str
) -> None:
    total = sum(log.sessions().values())
    order = fold_order(log)
    assert len(order) == total
    folds: list[tuple[str, int]] = []

    def counting(state: Tally, envelope: Envelope) -> Tally:
        folds.append((envelope.session_id, envelope.sequence or 0))
        return tally(state, envelope)

    half = total // 2 + 1
    first = connect()
    crashed = run_rebuild(
        first, tally_projection(fold=counting), bucket=bucket, checkpoint_every=5, stop_after=half
    )
    first.close()  # the "process" is gone: what it folded after its last checkpoint is lost
    assert not crashed.complete
    assert crashed.folded == half
    assert folds == order[:half]
    saved = half // 5 * 5
    assert crashed.checkpoints == half // 5

    second = connect()
    checkpoint = second.run(load_checkpoint(second.journal, tally_projection(), bucket=bucket))
    assert checkpoint.events == saved
    positions: dict[str, int] = {}
    for session_id, sequence in order[:saved]:
        positions[session_id] = sequence
    assert checkpoint.positions == positions
    assert checkpoint.state == tally_of(order[:saved], log)

    folds.clear()
    resumed = run_rebuild(
        second, tally_projection(fold=counting), bucket=bucket, checkpoint_every=5
    )
    assert resumed.complete
    assert resumed.folded == total - saved
    assert folds == order[saved:]  # nothing folded twice, nothing skipped
    assert resumed.events == total

    scratch = run_rebuild(connect(), tally_projection("tally-from-scratch"), bucket=bucket)
    assert scratch.folded == total
    assert resumed.state == scratch.state == expected(log)
    assert resumed.positions == scratch.positions == last_sequences(log)


def tally_of(events: Iterable[tuple[str, int]], pg: Plantangenet) -> Tally:
    wanted = set(events)
    state = Tally({}, frozenset())
    for session_id in SESSIONS:
        for envelope in pg.history(session_id):
            if (session_id, envelope.sequence) in wanted:
                state = tally(state, envelope)
    return state


def test_a_projection_over_one_session_and_over_all_of_them(
    log: Plantangenet, connect: Callable[[], AsyncJournal], bucket: str
) -> None:
    j = connect()
    everything = run_rebuild(j, tally_projection("all"), bucket=bucket)
    harbour = run_rebuild(j, tally_projection("harbour-only"), sessions=["harbour"], bucket=bucket)
    assert harbour.state == expected(log, ["harbour"])
    assert harbour.state.agents == {"tide", "gull", "pilot"}
    assert harbour.positions == last_sequences(log, ["harbour"])
    assert raw_checkpoint(j, bucket, "harbour-only")[0]["positions"] == harbour.positions
    assert everything.state == expected(log)
    assert harbour.state != everything.state

    # The projection over all sessions is the sum of those over each one.
    singles = [
        run_rebuild(j, tally_projection(f"only-{s}"), sessions=[s], bucket=bucket) for s in SESSIONS
    ]
    summed: Counter[str] = Counter()
    for single in singles:
        summed.update(single.state.per_type)
    assert dict(summed) == dict(everything.state.per_type)
    assert frozenset().union(*(s.state.agents for s in singles)) == everything.state.agents

    # Widened to every session, the one-session projection continues: harbour is not refolded.
    widened = run_rebuild(connect(), tally_projection("harbour-only"), bucket=bucket)
    assert widened.folded == everything.folded - harbour.folded
    assert widened.state == everything.state
    assert widened.positions == everything.positions


def test_a_corrupt_checkpoint_is_a_clear_error_until_reset(
    log: Plantangenet,
    connect: Callable[[], AsyncJournal],
    bucket: str,
    journal_config: JournalConfig,
) -> None:
    j = connect()
    good = run_rebuild(j, tally_projection(), bucket=bucket)
    valid, _ = raw_checkpoint(j, bucket, "tally")

    def refused(value: bytes, field: str | None, words: str, **kw: Any) -> None:
        put_raw(j, bucket, "tally", value)
        with pytest.raises(CheckpointError) as info:
            run_rebuild(j, kw.pop("projection", tally_projection()), bucket=bucket)
        message = str(info.value)
        assert "'tally'" in message and repr(bucket) in message and "reset" in message
        assert words in message
        assert info.value.field == field
        assert info.value.projection == "tally"
        assert info.value.code == "checkpoint_error"
        # Nothing was written over it.
        kv = j.run(j.journal.js.key_value(bucket))
        assert j.run(kv.get("tally")).value == value

    def variant(**changes: Any) -> bytes:
        packed: bytes = msgpack.packb({**valid, **changes}, use_bin_type=True)
        return packed

    refused(b"\xc1 not msgpack", None, "not valid msgpack")
    refused(msgpack.packb([1, 2, 3]), None, "not a checkpoint")
    refused(msgpack.packb({"positions": {}}), None, "not a checkpoint")
    refused(variant(f=9), "format", "format 9")
    refused(variant(positions={"harbour": "twelve"}), "positions", "malformed positions")
    refused(variant(positions=[1, 2]), "positions", "malformed positions")
    refused(variant(events=-1), "events", "'events'")
    refused(variant(state={"no": "tally"}), "state", "cannot decode")
    refused(variant(stream="ELSEWHERE"), "stream", "'ELSEWHERE'")
    refused(variant(name="other"), "name", "'other'")
    refused(variant(), "version", "version 1", projection=tally_projection(version=2))
    # Ahead of the log: the stream it followed was replaced.
    refused(variant(positions={"harbour": 10**9}), "positions", "the stream was replaced")
    put_raw(j, bucket, "tally", b"\xc1")
    with pytest.raises(CheckpointError, match="not valid msgpack"):
        j.run(load_checkpoint(j.journal, tally_projection(), bucket=bucket))

    assert j.run(reset(j.journal, "tally", bucket=bucket)) is True
    assert j.run(reset(j.journal, "tally", bucket=bucket)) is False
    assert j.run(reset(j.journal, "never-built", bucket=bucket)) is False
    assert j.run(reset(j.journal, "tally", bucket="no-such-bucket")) is False
    fresh = j.run(load_checkpoint(j.journal, tally_projection(), bucket=bucket))
    assert (fresh.events, fresh.positions, fresh.state) == (0, {}, Tally({}, frozenset()))
    assert fresh.revision > 0  # the reset's marker: the next save must follow it
    rebuilt = run_rebuild(j, tally_projection(), bucket=bucket)
    assert rebuilt.folded == good.folded
    assert rebuilt.state == good.state == expected(log)
    assert raw_checkpoint(j, bucket, "tally")[0]["positions"] == good.positions


def test_a_checkpoint_bucket_creation_that_times_out_is_asked_again(
    connect: Callable[[], AsyncJournal], bucket: str
) -> None:
    """A busy cluster answers the bucket's creation after nats-py gave up (twice; the
    first carried out anyway): the checkpoint is still loaded, from the one bucket."""
    j = connect()
    slow = LateCreates(j.journal.js, "create_key_value", late=2)
    j.journal.js = slow  # type: ignore[assignment]
    fresh = j.run(load_checkpoint(j.journal, tally_projection(), bucket=bucket))
    assert (fresh.events, fresh.revision) == (0, 0)
    assert slow.creates == 3
    assert j.run(j.journal.js.key_value(bucket)).__class__.__name__ == "KeyValue"


def test_two_rebuilders_one_wins_and_the_other_gets_a_conflict(
    log: Plantangenet,
    connect: Callable[[], AsyncJournal],
    bucket: str,
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
) -> None:
    folding, release = threading.Event(), threading.Event()

    def slow(state: Tally, envelope: Envelope) -> Tally:
        folding.set()
        release.wait(10)  # held until the other rebuilder has saved
        return tally(state, envelope)

    outcome: list[object] = []

    def loser() -> None:
        j = AsyncJournal(nats_server.url, journal_config)
        try:
            outcome.append(run_rebuild(j, tally_projection(fold=slow), bucket=bucket))
        except BaseException as exc:
            outcome.append(exc)
        finally:
            j.close()

    thread = threading.Thread(target=loser)
    thread.start()
    try:
        assert folding.wait(10)  # it has read the (empty) checkpoint and is folding
        j = connect()
        winner = run_rebuild(j, tally_projection(), bucket=bucket)
    finally:
        release.set()
        thread.join(30)
    [error] = outcome
    assert isinstance(error, CheckpointConflict)
    assert isinstance(error, ConcurrencyError)
    assert error.expected == 0
    assert error.projection == "tally"
    assert "another rebuilder" in str(error)

    # The winner's checkpoint is intact; the loser, rebuilding again, re-reads it.
    checkpoint = j.run(load_checkpoint(j.journal, tally_projection(), bucket=bucket))
    assert (checkpoint.revision, checkpoint.state) == (winner.revision, winner.state)
    retried = run_rebuild(connect(), tally_projection(), bucket=bucket)
    assert retried.folded == 0
    assert retried.state == winner.state == expected(log)
    assert retried.revision == winner.revision


def test_a_rebuild_racing_a_reset_saves_nothing(
    log: Plantangenet, connect: Callable[[], AsyncJournal], bucket: str
) -> None:
    j, other = connect(), connect()
    first = run_rebuild(j, tally_projection(), bucket=bucket, stop_after=10, checkpoint_every=4)

    def resetting(state: Tally, envelope: Envelope) -> Tally:
        if not resets:  # another process resets the projection while this one folds
            thread = threading.Thread(
                target=lambda: resets.append(
                    other.run(reset(other.journal, "tally", bucket=bucket))
                )
            )
            thread.start()
            thread.join(10)
        return tally(state, envelope)

    resets: list[bool] = []
    with pytest.raises(CheckpointConflict):
        run_rebuild(j, tally_projection(fold=resetting), bucket=bucket, checkpoint_every=4)
    assert resets == [True]
    assert first.checkpoints == 2
    after = j.run(load_checkpoint(j.journal, tally_projection(), bucket=bucket))
    assert after.events == 0  # the reset stands
    assert run_rebuild(j, tally_projection(), bucket=bucket).state == expected(log)


def test_a_failing_fold_names_the_event_and_keeps_the_last_checkpoint(
    log: Plantangenet, connect: Callable[[], AsyncJournal], bucket: str
) -> None:
    def fragile(state: Tally, envelope: Envelope) -> Tally:
        if envelope.type_name == "AgentDetached":
            raise RuntimeError("cannot fold a detachment")
        return tally(state, envelope)

    j = connect()
    with pytest.raises(RuntimeError, match="cannot fold") as info:
        run_rebuild(j, tally_projection(fold=fragile), bucket=bucket, checkpoint_every=1)
    [note] = info.value.__notes__
    first_detach = next(
        e for s in sorted(SESSIONS) for e in log.history(s) if e.type_name == "AgentDetached"
    )
    assert "'tally'" in note and "AgentDetached" in note
    assert f"{first_detach.session_id!r} at sequence {first_detach.sequence}" in note
    checkpoint = j.run(load_checkpoint(j.journal, tally_projection(), bucket=bucket))
    order = fold_order(log)
    assert checkpoint.events == order.index((first_detach.session_id, first_detach.sequence or 0))

    def unserialisable(state: dict[str, Any], envelope: Envelope) -> dict[str, Any]:
        return {**state, "last": envelope}  # an Envelope is not msgpack

    with pytest.raises(CheckpointError, match="msgpack-serialisable") as saving:
        run_rebuild(j, Projection("raw", {}, unserialisable), bucket=bucket)
    assert saving.value.field == "state"
    nothing = j.run(
        load_checkpoint(j.journal, Projection("raw", {}, unserialisable), bucket=bucket)
    )
    assert nothing.revision == 0


def test_projections_are_registered_and_rebuilt_by_name(
    connect: Callable[[], AsyncJournal], bucket: str, journal_config: JournalConfig
) -> None:
    registry = ProjectionRegistry()
    tallies = registry.register(tally_projection())

    # The state is a sequence: a tuple to begin with, a list once through msgpack.
    no_names: Sequence[str] = ()

    @registry.projection("type-names", no_names)
    def type_names(state: Any, envelope: Envelope) -> Any:
        return (*state, envelope.type_name)

    assert registry.names() == ("tally", "type-names")
    assert registry.get("tally") is tallies
    assert "type-names" in registry and len(registry) == 2
    assert [p.name for p in registry] == ["tally", "type-names"]
    assert registry.register(tallies) is tallies  # the same one again is harmless
    with pytest.raises(ValueError, match="already registered"):
        registry.register(tally_projection())
    with pytest.raises(UnknownProjection, match="'nope'"):
        registry.get("nope")

    # An empty log: the rebuild is complete and recorded.
    j = connect()
    empty = run_rebuild(j, "tally", registry=registry, bucket=bucket)
    assert (empty.complete, empty.folded, empty.checkpoints) == (True, 0, 1)
    assert empty.state == Tally({}, frozenset())
    assert raw_checkpoint(j, bucket, "tally")[0]["positions"] == {}
    # The default tuple comes back from msgpack as a list: fresh() is what a rebuild starts from.
    assert type_names.fresh() == []
    with pytest.raises(UnknownProjection):
        run_rebuild(j, "nope", registry=registry, bucket=bucket)
    assert DEFAULT_BUCKET == "plantangenet-projections"


def test_invalid_definitions_and_arguments_are_refused(
    connect: Callable[[], AsyncJournal], bucket: str
) -> None:
    for name in ("", "has space", "dot.ted", "x" * 129, 7):
        with pytest.raises(ValueError, match="projection name"):
            Projection(name, {}, lambda s, e: s)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="versions start at 1"):
        Projection("v0", {}, lambda s, e: s, version=0)
    with pytest.raises(TypeError, match="initial state"):
        Projection("objects", object(), lambda s, e: s)
    with pytest.raises(TypeError, match="initial state"):
        Projection("bad-encode", {}, lambda s, e: s, encode=lambda s: {1j: 2})

    initial: dict[str, list[int]] = {"xs": []}
    p = Projection("copies", initial, lambda s, e: s)
    p.fresh()["xs"].append(1)
    assert initial == {"xs": []} and p.fresh() == {"xs": []}

    j = connect()
    with pytest.raises(ValueError, match="checkpoint_every"):
        run_rebuild(j, p, bucket=bucket, checkpoint_every=0)
    with pytest.raises(ValueError, match="stop_after"):
        run_rebuild(j, p, bucket=bucket, stop_after=-1)
    with pytest.raises(ValueError, match="session id"):
        run_rebuild(j, p, bucket=bucket, sessions=["a.b"])
    with pytest.raises(ValueError, match="bucket"):
        run_rebuild(j, p, bucket="not a bucket")
    stopped = run_rebuild(j, p, bucket=bucket, stop_after=0)
    assert (stopped.complete, stopped.folded, stopped.revision) == (False, 0, 0)
