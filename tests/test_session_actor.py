"""Session and agent actors on a real JetStream log."""

from __future__ import annotations

import concurrent.futures
import threading
from collections.abc import Callable

import pytest

from plantangenet import (
    ActorStopped,
    AddCursor,
    Agent,
    AgentContext,
    AttachAgent,
    Command,
    CommandResult,
    ConcurrencyError,
    CursorAlreadyExists,
    DecodeError,
    Envelope,
    InvalidCommand,
    JournalConfig,
    Limits,
    MoveCursor,
    PayloadTooLarge,
    Plantangenet,
    SessionClosed,
    SessionEnded,
    StartSession,
    UnknownAgent,
    UnknownSession,
)
from plantangenet.actors.session import DEFAULT_MAX_BATCH, SessionActor
from plantangenet.log.verify import verify
from plantangenet.nats.embedded import EmbeddedNats
from tests.conftest import append_sizes, session_with_cursor, wait_until

ALLOW_ALL = {"id": "everything", "effect": "allow", "actions": ["*"], "resources": ["*"]}


class Recorder(Agent):
    """Counts hook calls (thread-safe)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []
        self.lock = threading.Lock()

    def setup(self, context: AgentContext) -> None:
        with self.lock:
            self.calls.append(("setup", context.origin))

    def teardown(self, context: AgentContext, reason: str) -> None:
        with self.lock:
            self.calls.append(("teardown", reason))

    def count(self, hook: str) -> int:
        with self.lock:
            return sum(1 for name, _ in self.calls if name == hook)


def started(runtime: Plantangenet, session_id: str = "s1") -> object:
    session = runtime.session(session_id)
    session.start({"owner": "tests"})
    return session


def test_commands_emit_events_and_state_follows(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    result = session.start({"owner": "tests"})
    assert result.sequence == 1 and result.events[0].type_name == "SessionStarted"
    session.attach("bot-1", "bot", "Bot One")
    session.add_cursor("bot-1", "c1", ["ocean.temperature"], 0, 10)
    session.move_cursor("bot-1", "c1", ["ocean.temperature", "ocean.salinity"], 5, 20)
    session.change_metadata({"topic": "tides"}, removed=["owner"])
    state = session.state
    assert state.status == "active"
    assert dict(state.metadata) == {"topic": "tides"}
    assert list(state.agents) == ["bot-1"]
    cursor = state.cursors["c1"]
    assert (cursor.axes, cursor.start, cursor.end) == (
        ("ocean.temperature", "ocean.salinity"),
        5,
        20,
    )
    assert state.event_count == 5
    assert runtime.replay("s1") == state
    types = [e.type_name for e in runtime.history("s1")]
    assert types == [
        "SessionStarted",
        "AgentAttached",
        "CursorAdded",
        "CursorMoved",
        "SessionMetadataChanged",
    ]


def test_envelope_carries_ids_and_issuer(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    session.change_policy(replace=[ALLOW_ALL])
    session.attach("bot-1")
    command = MoveCursor(agent_id="bot-1", cursor_id="c1", axes=("x",), start=0, end=1)
    with pytest.raises(Exception):  # noqa: B017 - cursor does not exist yet
        session.execute(command)
    result = session.add_cursor(
        "bot-1", "c1", ["x"], 0, 1, issued_by="bot-1", correlation_id="req-7"
    )
    stored = runtime.history("s1")[-1]
    assert stored == result.events[0]
    assert stored.agent_id == "bot-1"
    assert stored.correlation_id == "req-7"
    assert stored.causation_id == result.command_id
    assert stored.occurred_at.tzinfo is not None
    assert stored.sequence == 4
    assert stored.authorization is not None
    assert stored.authorization.statements == ("everything",)


def test_refused_commands_write_nothing_and_the_actor_keeps_serving(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    session.attach("bot-1")
    session.add_cursor("bot-1", "c1", ["x"], 0, 1)
    before = runtime.sessions()["s1"]
    bad: list[tuple[Callable[[], object], type[Exception]]] = [
        (lambda: session.detach("ghost"), UnknownAgent),
        (lambda: session.add_cursor("bot-1", "c1", ["x"], 0, 1), CursorAlreadyExists),
        (lambda: session.add_cursor("bot-1", "c2", ["x"], 5, 1), InvalidCommand),
        (lambda: session.add_cursor("bot-1", "c.2", ["x"], 0, 1), InvalidCommand),
        (lambda: session.add_cursor("bot-1", "c2", ["x"], float("nan"), 1), InvalidCommand),
        (lambda: session.attach("a b"), InvalidCommand),
        (lambda: session.attach("bot-9", name=123), InvalidCommand),  # type: ignore[arg-type]
        (lambda: session.execute("not a command"), InvalidCommand),  # type: ignore[arg-type]
        (
            lambda: session.change_metadata({f"blob{i}": "x" * 60_000 for i in range(5)}),
            PayloadTooLarge,
        ),
        (lambda: session.change_metadata({"blob": "x" * 300_000}), InvalidCommand),
        (lambda: session.change_metadata({"nested": {"a": 1}}), InvalidCommand),  # type: ignore[dict-item]
        (lambda: session.start(), Exception),
    ]
    for call, error in bad:
        with pytest.raises(error):
            call()
    assert runtime.sessions()["s1"] == before
    assert session.is_running
    session.move_cursor("bot-1", "c1", ["x"], 1, 2)
    assert runtime.sessions()["s1"] == before + 1


def test_ended_session_refuses_commands(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    session.end("done")
    with pytest.raises(SessionClosed):
        session.attach("late")
    assert runtime.replay("s1").status == "ended"


def test_unknown_session_replay_is_a_clear_error(runtime: Plantangenet) -> None:
    with pytest.raises(UnknownSession):
        runtime.replay("never-started")
    with pytest.raises(InvalidCommand):
        runtime.session("bad.id")


def test_same_command_sent_twice_is_stored_once(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    command = AttachAgent(agent_id="bot-1", command_id="retry-me")
    first = session.execute(command)
    second = session.execute(command)
    assert not first.duplicate and second.duplicate
    assert second.events == first.events
    assert runtime.sessions()["s1"] == 2
    # Also after the actor was stopped and the session rehydrated from the log.
    runtime.stop_session("s1")
    third = runtime.session("s1").execute(command)
    assert third.duplicate and third.events == first.events
    assert runtime.sessions()["s1"] == 2


def test_a_long_rehydration_remembers_the_last_commands_and_chains_on(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With more than twice as many events as it remembers commands, a rehydrating actor
    observes only the tail (log.tail_replay): the last commands are still answered as
    retries, with their events and digests, and its next event chains to the last."""
    monkeypatch.setattr(SessionActor, "remembered_commands", 3)
    session = runtime.session("long")
    session.start()
    session.attach("bot")
    session.add_cursor("bot", "c1", ("x",), 0.0, 1.0)
    moves = [
        MoveCursor(
            agent_id="bot",
            cursor_id="c1",
            axes=("x",),
            start=float(n),
            end=n + 1.0,
            command_id=f"move-{n}",
        )
        for n in range(20)
    ]
    results = [session.execute(move) for move in moves]
    stored = runtime.sessions()["long"]
    runtime.stop_session("long")
    again = runtime.session("long")
    for move, first in zip(moves[-3:], results[-3:], strict=True):
        retried = again.execute(move)
        assert retried.duplicate and retried.events == first.events
        assert [e.digest for e in retried.events] == [e.digest for e in first.events]
        assert all(e.digest for e in retried.events)
    assert runtime.sessions()["long"] == stored
    again.move_cursor("bot", "c1", ("x",), 50.0, 51.0)
    assert runtime.run(verify(runtime.journal, "long")).intact  # the chain goes on unbroken
    assert again.state == runtime.replay("long")


def test_a_retry_arriving_while_the_command_is_pending_joins_it(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    first = AttachAgent(agent_id="bot-1", command_id="first")
    retried = AttachAgent(agent_id="bot-2", command_id="retried")
    # One message: "first" goes out, "retried" queues behind it, and its copy finds it pending.
    outcomes = session.submit_many([first, retried, retried]).result(10)
    assert all(isinstance(o, CommandResult) for o in outcomes)
    assert outcomes[1].events == outcomes[2].events  # type: ignore[union-attr]
    assert [e.event.type_name for e in runtime.history("s1")] == [
        "SessionStarted",
        "AgentAttached",
        "AgentAttached",
    ]
    # A retry sent alone while its command is queued behind another is answered too.
    futures = [
        session.submit(AttachAgent(agent_id="bot-3", command_id="third")),
        session.submit(AttachAgent(agent_id="bot-4", command_id="fourth")),
        session.submit(AttachAgent(agent_id="bot-4", command_id="fourth")),
    ]
    results = [f.result(10) for f in futures]
    assert results[1].events == results[2].events
    assert runtime.sessions()["s1"] == 5


def test_appends_group_up_to_max_batch_events(runtime: Plantangenet) -> None:
    assert runtime.max_batch == DEFAULT_MAX_BATCH == 512
    session = session_with_cursor(runtime)
    sizes = append_sizes(runtime)
    moves = [
        MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=i, end=i) for i in range(600)
    ]
    # One message: the first move goes out alone, the rest queue behind it and are packed.
    outcomes = session.submit_many(moves).result(30)
    assert all(isinstance(o, CommandResult) for o in outcomes)
    assert sizes == [1, 512, 87]
    assert session.state.cursors["c"].start == 599


def test_a_command_writing_more_than_max_batch_events_is_refused(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config, max_batch=2) as pg:
        session = session_with_cursor(pg)
        session.add_cursor("bot", "d", ["x"], 0, 1)
        before = pg.sessions()["s1"]
        # Detaching removes both cursors first: three events.
        with pytest.raises(
            InvalidCommand, match="DetachAgent would write 3 events; the limit is 2"
        ):
            session.detach("bot")
        assert pg.sessions()["s1"] == before  # nothing written
        assert "bot" in session.state.agents
        session.remove_cursor("bot", "d")  # and the session goes on
        session.detach("bot")
        assert "bot" not in session.state.agents
        # Ending detaches every agent still attached in one event, whatever their number.
        session.attach("a1")
        session.attach("a2")
        session.add_cursor("a1", "e", ["x"], 0, 1)
        ended = session.end()
        assert [e.event.type_name for e in ended.events] == ["SessionEnded"]
        assert ended.events[0].event == SessionEnded("ended", ("a1", "a2"))
        assert session.state.agents == {} and session.state.cursors == {}
        assert pg.replay("s1") == session.state


def test_two_writers_one_wins_the_other_gets_concurrency_error(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    first, second = make_runtime(), make_runtime()
    a = first.session("s1")
    a.start()
    b = second.session("s1")
    assert b.state.sequence == 1  # both rehydrated at the same point
    a.attach("from-a")
    with pytest.raises(ConcurrencyError):
        b.attach("from-b")
    # The loser caught up with the log and can go on.
    assert set(b.state.agents) == {"from-a"}
    b.attach("from-b")
    history = first.history("s1")
    sequences = [e.sequence for e in history]
    assert sequences == list(range(1, len(history) + 1)) == [1, 2, 3]
    assert len({e.event_id for e in history}) == 3


def test_racing_writers_leave_no_gap_and_no_duplicate(
    make_runtime: Callable[[], Plantangenet],
) -> None:
    runtimes = [make_runtime(), make_runtime()]
    runtimes[0].session("s1").start()
    handles = [pg.session("s1") for pg in runtimes]
    outcomes: dict[str, str] = {}

    def write(index: int) -> None:
        for n in range(40):
            command = AttachAgent(agent_id=f"w{index}-{n}")
            try:
                handles[index].execute(command)
                outcomes[command.agent_id] = "ok"
            except ConcurrencyError:
                outcomes[command.agent_id] = "conflict"

    threads = [threading.Thread(target=write, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    history = runtimes[0].history("s1")
    attached = [e.event.agent_id for e in history[1:]]  # type: ignore[attr-defined]
    assert [e.sequence for e in history] == list(range(1, len(history) + 1))
    assert sorted(attached) == sorted(a for a, o in outcomes.items() if o == "ok")
    assert len(attached) == len(set(attached))


def test_pipelined_commands_are_stored_in_order(runtime: Plantangenet) -> None:
    session = session_with_cursor(runtime)
    futures = [
        session.submit(MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=i, end=i + 1))
        for i in range(500)
    ]
    results = [f.result(30) for f in futures]
    assert [r.sequence for r in results] == list(range(4, 504))
    assert session.state.cursors["c"].start == 499
    assert runtime.replay("s1") == session.state


def test_pipelined_attaches_among_moves_fold_to_the_replayed_state(
    runtime: Plantangenet,
) -> None:
    # A stored group's state is its speculative fold stamped with the log's sequence,
    # except where the fold records an event's own sequence (an agent's attached_at):
    # those groups, and every command queued behind them, are folded again.
    session = runtime.session("s1")
    session.start()
    futures = [session.submit(AttachAgent(agent_id="a0"))]
    futures.append(
        session.submit(AddCursor(agent_id="a0", cursor_id="c0", axes=("x",), start=0, end=1))
    )
    for i in range(1, 300):
        if i % 50 == 0:
            futures.append(session.submit(AttachAgent(agent_id=f"a{i}")))
        futures.append(
            session.submit(
                MoveCursor(agent_id="a0", cursor_id="c0", axes=("x",), start=i, end=i + 1)
            )
        )
    for future in futures:
        future.result(30)
    state = session.state
    assert sorted(view.attached_at for view in state.agents.values()) == [
        r.sequence
        for r in (f.result() for f in futures)
        if r.events[0].type_name == "AgentAttached"
    ]
    assert runtime.replay("s1") == state
    session.move_cursor("a0", "c0", ["x"], 0, 1)
    assert runtime.replay("s1") == session.state


def test_setup_and_teardown_run_exactly_once(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    bots = {name: Recorder() for name in ("a", "b", "c")}
    for name, behaviour in bots.items():
        session.attach(name, behaviour=behaviour)
    session.add_cursor("a", "ca", ["x"], 0, 1)
    wait_until(lambda: all(b.count("setup") == 1 for b in bots.values()))
    session.detach("b", "leaving")
    wait_until(lambda: bots["b"].count("teardown") == 1)
    assert bots["a"].count("teardown") == 0
    session.end("over")
    wait_until(lambda: all(b.count("teardown") == 1 for b in bots.values()))
    for behaviour in bots.values():
        assert behaviour.count("setup") == 1
        assert behaviour.count("teardown") == 1
    assert bots["b"].calls == [("setup", "attached"), ("teardown", "leaving")]
    assert bots["a"].calls == [("setup", "attached"), ("teardown", "session ended")]
    history = runtime.history("s1")
    assert history[-1].event == SessionEnded("over", ("a", "c"))  # they leave with the end
    assert [e.type_name for e in history[-3:-1]] == ["CursorAdded", "AgentDetached"]


class Witness(Agent):
    """Records the events it is told about, and its teardown."""

    def __init__(self) -> None:
        self.seen: list[str] = []

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        self.seen.append(envelope.type_name)

    def teardown(self, context: AgentContext, reason: str) -> None:
        self.seen.append(f"teardown: {reason}")


def test_an_agent_is_told_of_the_end_that_detaches_it_then_torn_down(
    runtime: Plantangenet,
) -> None:
    session = runtime.session("s1")
    session.start()
    witness = Witness()
    session.attach("w", behaviour=witness)
    session.add_cursor("w", "c", ["x"], 0, 1)
    session.end("over")
    wait_until(lambda: "teardown: session ended" in witness.seen)
    assert witness.seen[-2:] == ["SessionEnded", "teardown: session ended"]
    assert runtime.history("s1")[-1].event == SessionEnded("over", ("w",))


def test_agents_come_back_on_rehydration(
    make_runtime: Callable[[], Plantangenet], nats_server: object
) -> None:
    first = make_runtime()
    session = first.session("s1")
    session.start()
    session.attach("keeper", "bot", "Keeper")
    session.add_cursor("keeper", "k1", ["x"], 0, 1)
    made: list[Recorder] = []

    def factory(agent_id: str, kind: str) -> Agent:
        made.append(Recorder())
        return made[-1]

    second = Plantangenet.open(
        nats_url=first.url, journal=first.journal_config, agent_factory=factory
    )
    try:
        again = second.session("s1")
        assert again.state == session.state
        wait_until(lambda: len(made) == 1 and made[0].count("setup") == 1)
        assert made[0].calls[0] == ("setup", "rehydrated")
        agent = again.agent_state("keeper")
        assert agent.attached and list(agent.cursors) == ["k1"]
    finally:
        second.close()
    wait_until(lambda: made[0].count("teardown") == 1)


def test_on_change_callbacks_see_every_event_once_in_order(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    seen: list[int] = []
    session.on_change(lambda e: seen.append(e.sequence or 0))
    session.start()
    futures = [session.submit(AttachAgent(agent_id=f"a{i}")) for i in range(50)]
    for f in futures:
        f.result(30)
    session.end()  # one SessionEnded detaching the 50
    assert seen == list(range(1, 53))


def test_failing_callback_is_reported_and_breaks_nothing(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    seen: list[Envelope] = []

    def broken(envelope: Envelope) -> None:
        raise RuntimeError("boom")

    session.on_change(broken)
    subscription = session.on_change(seen.append)
    session.start()
    session.attach("a")
    assert [e.sequence for e in seen] == [1, 2]
    failures = session.hook_failures
    assert [f.sequence for f in failures] == [1, 2]
    assert "boom" in failures[0].error
    subscription.cancel()
    session.attach("b")
    assert len(seen) == 2
    assert session.state.event_count == 3


def test_failing_agent_hooks_are_contained(runtime: Plantangenet) -> None:
    class Broken(Agent):
        def setup(self, context: AgentContext) -> None:
            raise RuntimeError("setup failed")

        def on_event(self, context: AgentContext, envelope: Envelope) -> None:
            raise RuntimeError("on_event failed")

    session = runtime.session("s1")
    session.start()
    session.attach("bad", behaviour=Broken())
    session.add_cursor("bad", "c", ["x"], 0, 1)
    assert session.agent_state("bad").cursors["c"].end == 1
    session.detach("bad")
    assert session.state.agents == {}


def test_agent_can_send_commands_through_its_session(runtime: Plantangenet) -> None:
    done = concurrent.futures.Future[int]()

    class Mover(Agent):
        def on_event(self, context: AgentContext, envelope: Envelope) -> None:
            if envelope.type_name == "CursorAdded" and not done.done():
                result = context.session.move_cursor(
                    context.agent_id, "c", ["x"], 2, 3, issued_by=context.agent_id
                )
                done.set_result(result.sequence)

    session = runtime.session("s1")
    session.start()
    session.change_policy(replace=[ALLOW_ALL])
    session.attach("mover", behaviour=Mover())
    session.add_cursor("mover", "c", ["x"], 0, 1)
    assert done.result(10) == 5
    assert session.state.cursors["c"].start == 2


def test_on_event_given_on_the_instance_is_called_too(runtime: Plantangenet) -> None:
    # The actor skips on_event only for behaviours that keep the base class's no-op.
    seen: list[str] = []
    behaviour = Agent()
    behaviour.on_event = lambda context, envelope: seen.append(envelope.type_name)  # type: ignore[method-assign]
    session = runtime.session("s1")
    session.start()
    session.attach("listener", behaviour=behaviour)
    session.add_cursor("listener", "c", ["x"], 0, 1)
    wait_until(lambda: len(seen) >= 2)
    assert seen == ["AgentAttached", "CursorAdded"]


def test_corrupt_event_in_log_is_a_decode_error(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    session.start()
    subject = runtime.journal.subject("s1")
    runtime.run(runtime.journal.js.publish(subject, b"\xc1 not msgpack"))
    with pytest.raises(DecodeError):
        runtime.replay("s1")


def test_start_command_with_explicit_id_and_correlation(runtime: Plantangenet) -> None:
    session = runtime.session("s1")
    result = session.execute(StartSession(metadata={"k": 1}, command_id="cmd-1"))
    assert result.command_id == "cmd-1"
    assert runtime.history("s1")[0].correlation_id == "cmd-1"


def test_an_actor_that_cannot_read_its_log_raises_instead_of_showing_an_empty_session(
    runtime: Plantangenet,
) -> None:
    session = runtime.session("unreadable")
    session.start()
    runtime.stop_session("unreadable")
    # Something that is not an event lands in the session's log.
    subject = runtime.journal.subject("unreadable")
    runtime.run(runtime.journal.js.publish(subject, b"\xc1 not msgpack"))
    again = runtime.session("unreadable")  # its rehydration fails
    with pytest.raises(DecodeError):
        again.state  # noqa: B018 - the property is the call under test
    with pytest.raises(DecodeError):
        again.change_metadata({"k": 1})
    assert again.is_running  # the actor serves on, and says what is wrong each time


def test_submit_many_answers_each_command_in_order(runtime: Plantangenet) -> None:
    session = session_with_cursor(runtime)
    moves = [
        MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=i, end=i + 1) for i in range(5)
    ]
    sent: list[object] = [
        moves[0],
        MoveCursor(agent_id="ghost", cursor_id="c", axes=("x",), start=0, end=1),
        moves[1],
        "not a command",
        moves[2],
        moves[0],  # the same command again: answered with its stored result
        *moves[3:],
    ]
    outcomes = session.submit_many(sent).result(30)  # type: ignore[arg-type]
    assert len(outcomes) == len(sent)
    assert isinstance(outcomes[1], UnknownAgent) and isinstance(outcomes[3], InvalidCommand)
    stored = [o for i, o in enumerate(outcomes) if i not in (1, 3, 5)]
    assert [o.sequence for o in stored] == list(range(4, 9))  # type: ignore[union-attr]
    assert outcomes[5] == outcomes[0]
    assert session.state.cursors["c"].start == 4
    assert runtime.replay("s1") == session.state


def test_submit_many_edge_cases_leave_the_actor_serving(runtime: Plantangenet) -> None:
    session = session_with_cursor(runtime)
    assert session.submit_many([]).result(5) == ()
    moves = [
        MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=i, end=i + 1)
        for i in range(300)
    ]
    cancelled = session.submit_many(moves)
    cancelled.cancel()  # whatever was not decided yet is skipped
    after = session.move_cursor("bot", "c", ["x"], 7, 8)
    state = session.state
    assert state.cursors["c"].start == 7
    assert after.sequence == state.sequence
    assert runtime.replay("s1") == state
    runtime.stop_session("s1")
    with pytest.raises(ActorStopped):
        session.submit_many(moves[:1]).result(5)


def test_agents_are_told_the_events_about_them_and_about_no_agent(runtime: Plantangenet) -> None:
    seen: dict[str, list[str]] = {"a": [], "b": []}

    class Listener(Agent):
        def on_event(self, context: AgentContext, envelope: Envelope) -> None:
            seen[context.agent_id].append(envelope.type_name)

    session = runtime.session("s1")
    session.start()
    session.attach("a", behaviour=Listener())
    session.attach("b", behaviour=Listener())
    session.add_cursor("a", "ca", ["x"], 0, 1)
    session.add_cursor("b", "cb", ["x"], 0, 1)
    session.change_metadata({"topic": "tides"})  # about no agent: everyone hears it
    session.detach("b")
    wait_until(lambda: len(seen["a"]) >= 3 and len(seen["b"]) >= 5)
    assert seen["a"] == ["AgentAttached", "CursorAdded", "SessionMetadataChanged"]
    assert seen["b"] == [
        "AgentAttached",
        "CursorAdded",
        "SessionMetadataChanged",
        "CursorRemoved",
        "AgentDetached",
    ]


def test_commands_and_queries_queued_behind_a_stop_are_answered(runtime: Plantangenet) -> None:
    session = session_with_cursor(runtime)
    gate = threading.Event()
    busy = session.query(lambda actor: gate.wait(10))  # holds the actor's thread
    session._actor.stop(block=False)  # the stop waits in the inbox behind it
    move = MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=5, end=6)
    one = session.submit(move)
    many = session.submit_many([move, move])
    query = session.query(lambda actor: actor.state)
    gate.set()
    assert busy.result(10) is True
    for future in (one, query):  # answered, not left waiting forever
        with pytest.raises(ActorStopped):
            future.result(10)
    assert [type(o) for o in many.result(10)] == [ActorStopped, ActorStopped]
    assert runtime.replay("s1").cursors["c"].start == 0  # none of them was stored


def test_a_session_of_any_size_ends_in_one_command(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    # 2,000 agents with 10,000 cursors: more than one append holds, were they detached one by
    # one (as SessionEnded v1 was written); v2 detaches them all in its one event.
    limits = Limits(max_agents=2_000, max_cursors_per_agent=5)
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config, limits=limits) as pg:
        session = pg.session("big")
        session.start()
        agents = [f"a{i}" for i in range(2_000)]
        commands: list[Command] = [AttachAgent(agent_id=a) for a in agents]
        commands += [
            AddCursor(agent_id=a, cursor_id=f"{a}-{k}", axes=("x",), start=0, end=1)
            for a in agents
            for k in range(5)
        ]
        outcomes = session.submit_many(commands).result(120)
        assert all(isinstance(o, CommandResult) for o in outcomes)
        assert len(session.state.cursors) == 10_000
        ended = session.end("closing time")
        assert [e.type_name for e in ended.events] == ["SessionEnded"]
        assert ended.events[0].event == SessionEnded("closing time", tuple(sorted(agents)))
        assert session.state.status == "ended"
        assert session.state.agents == {} and session.state.cursors == {}
        assert pg.replay("big") == session.state
        assert pg.cursor_index("big").cursors == {}
