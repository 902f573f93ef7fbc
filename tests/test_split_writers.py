"""Split brain: two writers that both believe they own one session.

Two :class:`Plantangenet` runtimes on the same stream each start an actor for the
same session, and a hypothesis state machine drives them in turn, sometimes
pipelined, sometimes both at once. Only the log's optimistic concurrency keeps
them apart: a stale writer's append fails with ``ConcurrencyError`` (nothing
written, the loser catches up). After every step the log must be one gap-free,
hash-chained history in which every acknowledged command is stored exactly once,
at the sequences it was acknowledged at, no refused command is stored at all, and
whatever writer is at the head of the log folds to exactly the replay.
"""

from __future__ import annotations

import dataclasses
import itertools
import uuid
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future
from typing import Any

import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    rule,
    run_state_machine_as_test,
)

from plantangenet import (
    AddCursor,
    AttachAgent,
    ChangeMetadata,
    Command,
    CommandRejected,
    ConcurrencyError,
    DetachAgent,
    MoveCursor,
    Plantangenet,
    RemoveCursor,
    SessionHandle,
    StartSession,
    decide,
)
from plantangenet.actors.session import CommandResult
from plantangenet.projections.session import SessionState
from tests.conftest import wait_until

AGENTS = ("a1", "a2")
CURSORS = ("c1", "c2")
KEYS = ("k1", "k2", "k3")
AXES = (("x",), ("x", "y"), ("ocean.temp",))
WAIT = 30.0


# -- commands drawn from small pools (so they often collide and often fit) -----------------


@st.composite
def commands(draw: st.DrawFn) -> Command:
    kind = draw(
        st.sampled_from(["attach", "attach", "detach", "add", "add", "move", "move", "remove"])
        | st.just("metadata")
    )
    agent = draw(st.sampled_from(AGENTS))
    command_id = uuid.uuid4().hex
    if kind == "attach":
        return AttachAgent(
            agent_id=agent, kind="bot", name=draw(st.sampled_from(["", "B"])), command_id=command_id
        )
    if kind == "detach":
        return DetachAgent(agent_id=agent, reason="gone", command_id=command_id)
    cursor = draw(st.sampled_from(CURSORS))
    if kind == "remove":
        return RemoveCursor(agent_id=agent, cursor_id=cursor, command_id=command_id)
    if kind in ("add", "move"):
        start = draw(st.integers(0, 5))
        region: dict[str, Any] = {
            "axes": draw(st.sampled_from(AXES)),
            "start": float(start),
            "end": float(start + draw(st.integers(0, 3))),
        }
        cls = AddCursor if kind == "add" else MoveCursor
        return cls(agent_id=agent, cursor_id=cursor, command_id=command_id, **region)
    changed = draw(st.dictionaries(st.sampled_from(KEYS), st.integers(0, 9), max_size=2))
    removed = draw(st.lists(st.sampled_from(KEYS), max_size=2, unique=True))
    if not changed and not removed:
        changed = {"k1": 0}
    return ChangeMetadata(changed=changed, removed=tuple(removed), command_id=command_id)


# -- the model: what the acknowledged commands, in log order, make of a session -------------


@dataclasses.dataclass
class Model:
    #: agent id -> (kind, name)
    agents: dict[str, tuple[str, str]] = dataclasses.field(default_factory=dict)
    #: cursor id -> (agent id, axes, start, end)
    cursors: dict[str, tuple[str, tuple[str, ...], float, float]] = dataclasses.field(
        default_factory=dict
    )
    metadata: dict[str, Any] = dataclasses.field(default_factory=dict)

    def apply(self, command: Command) -> None:
        match command:
            case StartSession(metadata=metadata):
                self.metadata = dict(metadata)
            case AttachAgent(agent_id=a, kind=kind, name=name):
                self.agents[a] = (kind, name)
            case DetachAgent(agent_id=a):
                del self.agents[a]
                self.cursors = {c: v for c, v in self.cursors.items() if v[0] != a}
            case (
                AddCursor(agent_id=a, cursor_id=c, axes=axes, start=s, end=e)
                | MoveCursor(agent_id=a, cursor_id=c, axes=axes, start=s, end=e)
            ):
                self.cursors[c] = (a, tuple(axes), s, e)
            case RemoveCursor(cursor_id=c):
                del self.cursors[c]
            case ChangeMetadata(changed=changed, removed=removed):
                for key in removed:
                    self.metadata.pop(key, None)
                self.metadata.update(changed)

    def matches(self, state: SessionState) -> bool:
        agents = {a: (v.kind, v.name) for a, v in state.agents.items()}
        cursors = {c: (v.agent_id, tuple(v.axes), v.start, v.end) for c, v in state.cursors.items()}
        return (
            state.status == "active"
            and agents == self.agents
            and cursors == self.cursors
            and dict(state.metadata) == self.metadata
        )


class SplitWriters(RuleBasedStateMachine):
    """Writers 0 and 1: two runtimes, two actors, one session."""

    def __init__(self, runtimes: Sequence[Plantangenet]) -> None:
        super().__init__()
        self.runtimes = list(runtimes)
        self.session_id = "split-" + uuid.uuid4().hex[:16]
        self.handles: list[SessionHandle] = [pg.session(self.session_id) for pg in self.runtimes]
        self.sent: dict[str, Command] = {}
        #: command id -> (first, last) sequence it was acknowledged at
        self.acked: dict[str, tuple[int, int]] = {}
        #: command id -> error code, for commands that were never acknowledged
        self.refused: dict[str, str] = {}
        #: command id -> how often it was submitted (to either writer)
        self.submissions: dict[str, int] = {}
        self.conflicts = 0

    # -- driving the writers -----------------------------------------------------------

    def submit(self, writer: int, command: Command) -> Future[CommandResult]:
        self.sent[command.command_id] = command
        self.submissions[command.command_id] = self.submissions.get(command.command_id, 0) + 1
        handle = self.handles[writer]
        if sum(self.submissions.values()) % 2:
            return handle.submit(command)

        async def on_loop() -> Future[CommandResult]:  # as the service sends: the loop may
            return handle.submit(command)  # decide it itself (see plantangenet.actors.turns)

        sent: Future[CommandResult] = self.runtimes[writer].run(on_loop())
        return sent

    def settle(
        self, writer: int, command: Command, future: Future[CommandResult], *, alone: bool = False
    ) -> None:
        """Record the outcome; after a ``ConcurrencyError`` retry once on the same writer.

        ``alone``: nothing else is in flight, so the loser's state must be the log's head.
        """
        for attempt in (1, 2):
            try:
                result = future.result(WAIT)
            except ConcurrencyError:
                event("a writer lost a race (ConcurrencyError)")
                self.conflicts += 1
                if attempt == 2:
                    self.refuse(command, "concurrency_conflict")
                    return
                if alone:  # the loser has caught up: its state is the log's head now
                    assert self.handles[writer].state == self.replay()
                future = self.submit(writer, command)
                continue
            except CommandRejected as refused:
                event(f"refused: {refused.code}")
                if alone:  # a refusal is the log's, not a stale writer's: the log refuses it too
                    with pytest.raises(CommandRejected):
                        decide(self.replay(), command)
                self.refuse(command, refused.code)
                return
            event("acknowledged" + (" after a lost race" if attempt == 2 else ""))
            self.acknowledge(command, result)
            return

    def refuse(self, command: Command, code: str) -> None:
        assert command.command_id not in self.acked, (command, code)
        self.refused[command.command_id] = code

    def acknowledge(self, command: Command, result: CommandResult) -> None:
        cid = command.command_id
        assert result.command_id == cid and result.events
        seqs = (result.first_sequence, result.sequence)
        assert [e.sequence for e in result.events] == list(range(seqs[0], seqs[1] + 1))
        assert all(e.causation_id == cid for e in result.events)
        if cid in self.acked:  # a retry or a joined duplicate: the original outcome
            assert self.acked[cid] == seqs, (command, self.acked[cid], seqs)
        else:
            # A command submitted once cannot have been stored before.
            assert not result.duplicate or self.submissions[cid] > 1, command
            self.acked[cid] = seqs
            self.refused.pop(cid, None)

    def run(self, writer: int, batch: Sequence[Command]) -> None:
        futures = [self.submit(writer, c) for c in batch]
        for command, future in zip(batch, futures, strict=True):
            self.settle(writer, command, future, alone=len(batch) == 1)

    def replay(self) -> SessionState:
        return self.runtimes[0].replay(self.session_id)

    # -- rules ---------------------------------------------------------------------------

    @initialize(writer=st.integers(0, 1))
    def start(self, writer: int) -> None:
        self.run(writer, [StartSession(metadata={"k1": 0}, command_id=uuid.uuid4().hex)])
        assert len(self.acked) == 1

    @rule(writer=st.integers(0, 1), command=commands())
    def execute(self, writer: int, command: Command) -> None:
        self.run(writer, [command])

    @rule(writer=st.integers(0, 1), batch=st.lists(commands(), min_size=2, max_size=5))
    def pipelined(self, writer: int, batch: list[Command]) -> None:
        self.run(writer, batch)

    @rule(writer=st.integers(0, 1), batch=st.lists(commands(), min_size=1, max_size=3))
    def pipelined_with_a_repeat(self, writer: int, batch: list[Command]) -> None:
        # The same command twice in one pipeline: the second joins the first.
        self.run(writer, [*batch, batch[0]])

    @rule(
        first=st.lists(commands(), min_size=1, max_size=4),
        second=st.lists(commands(), min_size=1, max_size=4),
    )
    def both_at_once(self, first: list[Command], second: list[Command]) -> None:
        submitted: list[tuple[int, Command, Future[CommandResult]]] = []
        for i in range(max(len(first), len(second))):
            for writer, batch in ((0, first), (1, second)):
                if i < len(batch):
                    submitted.append((writer, batch[i], self.submit(writer, batch[i])))
        for writer, command, future in submitted:
            self.settle(writer, command, future)

    @rule(command=commands())
    def one_command_on_both_at_once(self, command: Command) -> None:
        """The same new command reaches both writers (a retry racing its original)."""
        futures = [self.submit(writer, command) for writer in (0, 1)]
        outcomes: list[CommandResult | BaseException] = []
        for future in futures:
            try:
                outcomes.append(future.result(WAIT))
            except (CommandRejected, ConcurrencyError) as error:
                outcomes.append(error)
        results = [o for o in outcomes if isinstance(o, CommandResult)]
        for result in results:
            self.acknowledge(command, result)
        if results:
            event(f"one command on both: {len(results)} acknowledged")
            # A writer that would refuse checks the log first: it never refuses what the
            # other stored (it finds the command there, or decides on the same state).
            refusals = [o for o in outcomes if isinstance(o, CommandRejected)]
            assert not refusals, (command, refusals)
        else:
            event("one command on both: refused by both")
            self.refuse(command, "refused by both")

    @rule(writer=st.integers(0, 1), pick=st.integers(0, 1000))
    def retry_an_acknowledged_command(self, writer: int, pick: int) -> None:
        # (Drawn independently of what was acknowledged: outcomes of races vary between runs.)
        in_log_order = sorted(self.acked, key=lambda c: self.acked[c])
        cid = in_log_order[-1 - pick % len(in_log_order)]
        command = self.sent[cid]
        fresh = self.handles[writer].state.sequence == self.replay().sequence
        event(f"retry of an acknowledged command on a {'fresh' if fresh else 'stale'} writer")
        # Even a writer that has not seen it answers from the log: a duplicate, not a refusal.
        result = self.submit(writer, command).result(WAIT)
        assert result.duplicate, command
        assert (result.first_sequence, result.sequence) == self.acked[cid]

    @rule(writer=st.integers(0, 1))
    def catch_up(self, writer: int) -> None:
        """A no-op catch-up: the actor folds what the other wrote, writing nothing."""
        self.handles[writer].query(lambda actor: actor._catch_up()).result(WAIT)
        assert self.handles[writer].state == self.replay()

    @rule(writer=st.integers(0, 1))
    def restart(self, writer: int) -> None:
        """Stop one writer's actor; the next use rehydrates it from the log."""
        self.runtimes[writer].stop_session(self.session_id)
        self.handles[writer] = self.runtimes[writer].session(self.session_id)
        assert self.handles[writer].state == self.replay()

    # -- invariants ----------------------------------------------------------------------

    @invariant()
    def the_log_is_exactly_the_acknowledged_commands(self) -> None:
        if not self.acked:
            return
        history = self.runtimes[1].history(self.session_id)
        sequences = [e.sequence or 0 for e in history]
        # Only this session writes to the stream during an example: no gap at all.
        assert sequences == list(range(sequences[0], sequences[0] + len(sequences)))
        by_command: dict[str, list[int]] = {}
        for envelope in history:
            by_command.setdefault(envelope.causation_id, []).append(envelope.sequence or 0)
        assert by_command.keys() == self.acked.keys(), "stored and acknowledged differ"
        for cid, stored in by_command.items():
            first, last = self.acked[cid]
            assert stored == list(range(first, last + 1)), (self.sent[cid], stored)
            if len(stored) > 1:  # only a detach of an agent with cursors writes several
                assert isinstance(self.sent[cid], DetachAgent)
        assert not by_command.keys() & self.refused.keys()
        # One hash chain, whoever wrote each link.
        assert history[0].previous_hash == b""
        for before, after in itertools.pairwise(history):
            assert after.previous_hash == before.digest, after.sequence

    @invariant()
    def the_writer_at_the_head_is_the_replay(self) -> None:
        if not self.acked:
            return
        replay = self.replay()
        model = Model()
        for cid in sorted(self.acked, key=lambda c: self.acked[c]):
            model.apply(self.sent[cid])
        assert model.matches(replay), (model, replay)
        states = [handle.state for handle in self.handles]
        at_head = [s for s in states if s.sequence == replay.sequence]
        assert at_head, "neither writer is at the head of the log"
        for state in at_head:
            assert state == replay
        for state in states:
            assert state.sequence <= replay.sequence

    def teardown(self) -> None:
        for pg in self.runtimes:
            pg.stop_session(self.session_id)


def allow_many_readers(pg: Plantangenet) -> None:
    """Raise the stream's consumer limit (nats-server 2.15 defaults to 1,000 per stream).

    Every read (history, replay, catch-up) creates a named consumer that the server
    keeps for 30 s after the read ends; this test reads after every step, which
    passes 1,000 in 30 s. (Reported: with the default limit, all reads of the stream,
    catch-ups included, then fail with "maximum consumers limit reached".)
    """

    async def update() -> None:
        js = pg.journal.js
        info = await js.stream_info(pg.journal_config.stream)
        await js.update_stream(dataclasses.replace(info.config, max_consumers=1_000_000))

    pg.run(update(), 30)


@pytest.fixture
def two_writers(make_runtime: Callable[[], Plantangenet]) -> Iterator[list[Plantangenet]]:
    writers = [make_runtime(), make_runtime()]
    allow_many_readers(writers[0])
    yield writers


def test_two_writers_of_one_session_keep_one_consistent_log(
    two_writers: list[Plantangenet],
) -> None:
    class OnTheseRuntimes(SplitWriters):
        def __init__(self) -> None:
            super().__init__(two_writers)

    run_state_machine_as_test(
        OnTheseRuntimes,
        settings=settings(
            max_examples=100,
            stateful_step_count=20,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        ),
    )


# -- stale writers decide on the log's state, not on a state that is gone ------------------


def test_a_retry_reaching_a_stale_writer_is_answered_as_a_duplicate(
    two_writers: list[Plantangenet],
) -> None:
    a = two_writers[0].session("s")
    a.execute(StartSession())
    b = two_writers[1].session("s")  # writer B rehydrates, and will not hear of what A writes
    assert b.state.sequence == 1
    a.execute(AttachAgent(agent_id="bot"))
    add = AddCursor(agent_id="bot", cursor_id="c", axes=("x",), start=0, end=1, command_id="add")
    stored = a.execute(add)
    retried = b.execute(add)  # raises UnknownAgent: B decides on its stale state
    assert retried.duplicate and retried.sequence == stored.sequence


def test_a_stale_writer_does_not_refuse_what_the_log_allows(
    two_writers: list[Plantangenet],
) -> None:
    a = two_writers[0].session("s")
    a.execute(StartSession())
    a.execute(AttachAgent(agent_id="bot"))
    b = two_writers[1].session("s")
    assert b.state.sequence == 2
    a.execute(AddCursor(agent_id="bot", cursor_id="c", axes=("x",), start=0, end=1))
    moved = b.execute(MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=1, end=2))
    assert moved.sequence == 4


def test_many_reads_do_not_lock_the_stream(make_runtime: Callable[[], Plantangenet]) -> None:
    # A stream holds at most 1,000 consumers. Every read makes one; if it outlived its
    # read, the 1,001st read within its inactive threshold would fail ("maximum consumers
    # limit reached"), and so would every catch-up of a writer. Reads delete theirs.
    pg = make_runtime()
    session = pg.session("s")
    session.start()
    for _ in range(1_001):
        pg.history("s")
    pg.stop_session("s")
    assert pg.session("s").attach("a").sequence == 2
    stream = pg.journal_config.stream
    wait_until(lambda: pg.run(pg.journal.js.stream_info(stream)).state.consumer_count == 0)


def test_a_stale_writer_does_not_refuse_pipelined_commands_on_a_state_that_is_gone(
    two_writers: list[Plantangenet],
) -> None:
    a = two_writers[0].session("s")
    a.execute(StartSession())
    b = two_writers[1].session("s")  # B rehydrates now and will not hear of A's writes
    assert b.state.sequence == 1  # rehydrated (in its own thread) before A writes, as above
    a.execute(AttachAgent(agent_id="bot"))
    a.execute(AddCursor(agent_id="bot", cursor_id="c", axes=("x",), start=0, end=1))
    # B pipelines: the first append is stale (ConcurrencyError); the moves behind it
    # were decided, on B's stale state, as refusals (no agent, no cursor). They must be
    # decided again on the log's state, not answered with those refusals.
    first = b.submit(ChangeMetadata(changed={"k": 1}))
    moves = [
        b.submit(MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=i, end=i + 1))
        for i in range(5)
    ]
    with pytest.raises(ConcurrencyError):
        first.result(10)
    stored = [m.result(10).sequence for m in moves]
    assert stored == sorted(stored) and len(set(stored)) == 5
    assert b.state.cursors["c"].start == 4
    assert b.state == two_writers[0].replay("s")
