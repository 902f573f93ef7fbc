"""Property: the log is the state. Rehydration and "state at N" equal the live actor."""

from __future__ import annotations

import contextlib
import dataclasses
import itertools

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet import (
    TREASURY,
    AddCursor,
    AttachAgent,
    BindIdentity,
    ChangeMetadata,
    ChangePolicy,
    Command,
    CommandRejected,
    CommandResult,
    Condition,
    CursorIndex,
    DepositDust,
    DetachAgent,
    EndSession,
    GrantDust,
    GrantRole,
    JournalConfig,
    Ledger,
    MoveCursor,
    Plantangenet,
    QueryCursor,
    RegisterCompositor,
    RemoveCursor,
    RevokeRole,
    SetPrices,
    StartSession,
    Statement,
    SyntheticCompositor,
    fold,
)
from plantangenet.domain.commands import fingerprint
from plantangenet.log.verify import verify
from plantangenet.nats.embedded import EmbeddedNats
from plantangenet.projections.audit import Audit
from tests.conftest import append_sizes

AGENTS = st.sampled_from(["a", "b", "c"])
ROLES = st.sampled_from(["watcher", "admin"])
STATEMENTS = {
    "watch": Statement("watch", "allow", ("cursor.*",), ("axis.*", "cursor.*"), ("watcher",)),
    "admin": Statement("admin", "allow", ("*",), ("*",), ("admin",)),
    "no-air": Statement("no-air", "deny", ("cursor.*",), ("axis.air.*",)),
    "gold": Statement(
        "gold",
        "allow",
        ("metadata.change",),
        ("metadata.*",),
        conditions=(Condition("identity.tier", "eq", "gold"),),
    ),
}
CURSORS = st.sampled_from(["c1", "c2", "c3", "c4"])
AXES = st.lists(
    st.sampled_from(["x", "ocean.temp", "ocean.salt", "air.wind"]),
    min_size=1,
    max_size=3,
    unique=True,
).map(tuple)
TIMES = st.integers(-100, 100)
METADATA = st.dictionaries(
    st.sampled_from(["k1", "k2", "k3"]),
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=5)),
    max_size=3,
)


@st.composite
def region(draw: st.DrawFn) -> dict[str, object]:
    a, b = sorted((draw(TIMES), draw(TIMES)))
    return {"axes": draw(AXES), "start": a, "end": b}


COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(lambda m: StartSession(metadata=m), METADATA),
    st.builds(
        lambda a, k: AttachAgent(agent_id=a, kind=k), AGENTS, st.sampled_from(["bot", "client"])
    ),
    st.builds(lambda a: DetachAgent(agent_id=a), AGENTS),
    st.builds(lambda a, c, r: AddCursor(agent_id=a, cursor_id=c, **r), AGENTS, CURSORS, region()),
    st.builds(lambda a, c, r: MoveCursor(agent_id=a, cursor_id=c, **r), AGENTS, CURSORS, region()),
    st.builds(lambda a, c: RemoveCursor(agent_id=a, cursor_id=c), AGENTS, CURSORS),
    st.builds(
        lambda m, r: ChangeMetadata(changed=m, removed=r),
        METADATA,
        st.lists(st.sampled_from(["k1", "k2"]), max_size=2).map(tuple),
    ),
    st.builds(
        lambda ids, remove: ChangePolicy(
            add=tuple(STATEMENTS[i] for i in ids), remove=tuple(remove)
        ),
        st.lists(st.sampled_from(sorted(STATEMENTS)), max_size=2, unique=True),
        st.lists(st.sampled_from(sorted(STATEMENTS)), max_size=1),
    ),
    st.builds(lambda a, r: GrantRole(agent_id=a, role=r), AGENTS, ROLES),
    st.builds(lambda a, r: RevokeRole(agent_id=a, role=r), AGENTS, ROLES),
    st.builds(
        lambda t: BindIdentity(identity_id="ops", display_name="Ops", attributes={"tier": t}),
        st.sampled_from(["gold", "silver"]),
    ),
    st.just(EndSession(reason="done")),
    # Data and dust: queries through cursors, priced actions, deposits and grants.
    st.just(RegisterCompositor(name="synthetic")),
    st.just(SetPrices(prices={"cursor.move": 1, "cursor.query": 1, "cursor.query.full": 2})),
    st.builds(lambda a, n: DepositDust(account=a, amount=n), AGENTS, st.integers(1, 5)),
    st.builds(
        lambda s, t, n: GrantDust(source=s, target=t, amount=n),
        st.sampled_from(["a", "b", TREASURY]),
        st.sampled_from(["b", "c", TREASURY]),
        st.integers(1, 5),
    ),
    st.builds(
        lambda a, c: QueryCursor(agent_id=a, cursor_id=c, compositor="synthetic"), AGENTS, CURSORS
    ),
).flatmap(
    # Any command but the start may be issued on behalf of an agent: policy applies.
    lambda c: st.sampled_from([None, "a", "b", "c"]).map(
        lambda who: c if isinstance(c, StartSession) else dataclasses.replace(c, issued_by=who)
    )
)

_ids = itertools.count()


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands=st.lists(COMMANDS, min_size=1, max_size=25))
def test_rehydrated_state_equals_live_state(runtime: Plantangenet, commands: list[Command]) -> None:
    if "synthetic" not in runtime.compositors:
        runtime.add_compositor(SyntheticCompositor())
    session_id = f"prop-{next(_ids)}"
    session = runtime.session(session_id)
    live_audit = Audit()
    session.on_change(live_audit)
    live_ledger = Ledger()
    session.on_change(live_ledger.apply)
    session.start()
    for command in commands:
        with contextlib.suppress(CommandRejected):
            session.execute(command)
    live = session.state
    covering = {axis: session.cursors_covering(axis, 0.0) for axis in ("ocean", "ocean.temp", "x")}
    runtime.stop_session(session_id)
    # A new actor rehydrates from the log alone.
    assert runtime.session(session_id).state == live
    # "State at sequence N" equals folding the first N events.
    history = runtime.history(session_id)
    # The audit built live equals the audit of the replay, and the chain is intact.
    assert Audit.of(history).entries == live_audit.entries
    # So do the dust ledger (which reconciles) and the cursor index.
    ledger = Ledger.of(history)
    ledger.check()
    assert (ledger.balances, ledger.movements) == (live_ledger.balances, live_ledger.movements)
    assert {a: v for a, v in ledger.balances.items() if v} == {
        a: v for a, v in live.balances.items() if v
    }
    index = CursorIndex.of(history)
    assert index.cursors == dict(live.cursors)
    assert {axis: index.covering(axis, 0.0) for axis in covering} == covering
    assert runtime.run(verify(runtime.journal, session_id)).checked == len(history)
    assert len(history) == live.event_count
    for n in sorted({1, len(history) // 2 or 1, len(history)}):
        at = runtime.state_at(session_id, n)  # revision n: the first n events
        assert at == fold(session_id, history[:n])
        assert at.event_count == n
    runtime.stop_session(session_id)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands=st.lists(COMMANDS, min_size=1, max_size=40), many=st.booleans())
def test_pipelined_commands_rehydrate_to_the_live_state(
    runtime: Plantangenet, commands: list[Command], many: bool
) -> None:
    # Sent one future per command (submit) or all in one batch (submit_many).
    if "synthetic" not in runtime.compositors:
        runtime.add_compositor(SyntheticCompositor())
    session_id = f"pipe-{next(_ids)}"
    session = runtime.session(session_id)
    session.start()
    outcomes: list[int | None] = []
    if many:
        for outcome in session.submit_many(commands).result(30):
            if isinstance(outcome, CommandResult):
                outcomes.append(outcome.sequence)
            else:
                assert isinstance(outcome, CommandRejected)
                outcomes.append(None)
    else:
        for future in [session.submit(c) for c in commands]:
            try:
                outcomes.append(future.result(30).sequence)
            except CommandRejected:
                outcomes.append(None)
    # Acknowledged in the order they were sent; a command sent again (the same command
    # id: ``st.just`` strategies repeat one instance) answers with its stored result, and
    # the same id with other content (another issuer) is refused.
    first: dict[str, tuple[bytes, int]] = {}
    decided: list[int] = []
    for command, sequence in zip(commands, outcomes, strict=True):
        if command.command_id in first:
            content, stored = first[command.command_id]
            assert sequence == (stored if fingerprint(command) == content else None)
        elif sequence is not None:
            first[command.command_id] = (fingerprint(command), sequence)
            decided.append(sequence)
    assert decided == sorted(decided) and len(set(decided)) == len(decided)
    live = session.state
    assert runtime.replay(session_id) == live
    runtime.stop_session(session_id)


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands=st.lists(COMMANDS, min_size=1, max_size=40), max_batch=st.integers(1, 4))
def test_pipelined_commands_in_small_groups_rehydrate_to_the_live_state(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    commands: list[Command],
    max_batch: int,
) -> None:
    # Appends of at most ``max_batch`` events: many group boundaries, multi-event commands
    # (a detach removes cursors) crossing them. The live state, which reuses the state
    # decided at each group's end, must equal the log's fold.
    session_id = f"small-{next(_ids)}"
    with Plantangenet.open(
        nats_url=nats_server.url, journal=journal_config, max_batch=max_batch
    ) as runtime:
        runtime.add_compositor(SyntheticCompositor())
        sizes = append_sizes(runtime)
        session = runtime.session(session_id)
        session.start()
        session.attach("z")  # an agent and cursors the random commands never name
        session.add_cursor("z", "z1", ["x"], 0, 1)
        session.add_cursor("z", "z2", ["x"], 0, 1)
        sent: list[Command] = []
        for i, command in enumerate(commands):
            sent += [command, MoveCursor(agent_id="z", cursor_id="z1", axes=("x",), start=i, end=i)]
        sent.append(DetachAgent(agent_id="z"))  # three events, across a group boundary or not
        futures = [session.submit(c) for c in sent]
        for future in futures:
            with contextlib.suppress(CommandRejected):
                future.result(30)
        live = session.state
        assert runtime.replay(session_id) == live
        assert sizes and max(sizes) <= max_batch  # the groups the actor packed
