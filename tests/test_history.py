"""Time travel: positions, state at a position, diff/apply, why, and the command line.

Everything runs against the real nats-server of the test run (fresh stream per test).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import dataclasses
import io
import itertools
import json
import os
import re
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from plantangenet import (
    AddCursor,
    AttachAgent,
    BindIdentity,
    ChangeMetadata,
    ChangePolicy,
    Command,
    CommandRejected,
    DetachAgent,
    EmbeddedNats,
    EndSession,
    GrantRole,
    JournalConfig,
    MoveCursor,
    Plantangenet,
    RemoveCursor,
    RevokeRole,
    SessionState,
    Statement,
    StreamSequence,
    UnknownSession,
    fold,
)
from plantangenet.cli import main
from plantangenet.errors import UnknownPosition
from plantangenet.log import positions
from plantangenet.timetravel.history import (
    Change,
    Position,
    StateDiff,
    apply,
    diff,
    event_at,
    parse_position,
    resolve,
    state_at,
    states_at,
    why,
)

ROOT = Path(__file__).resolve().parent.parent
_ids = itertools.count()

# -- positions ------------------------------------------------------------------------


def test_parse_position() -> None:
    assert parse_position("42") == 42  # a revision
    assert parse_position(" 7 ") == parse_position("rev:7") == 7
    assert parse_position("seq:42") == StreamSequence(42)
    event_id = "8A1E4E36996C7346000000002B7919F3"
    assert parse_position(event_id) == event_id.lower()
    assert parse_position("2025-03-01T09:30:00Z") == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    assert parse_position("2025-03-01T09:30:00") == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    assert parse_position("2025-03-01T10:30:00+01:00") == datetime(2025, 3, 1, 9, 30, tzinfo=UTC)
    for bad in ("", "yesterday", "12abc", "-3", "8a1e4e36996c7346", "seq:", "seq:-1", "rev:x"):
        with pytest.raises(UnknownPosition):
            parse_position(bad)


def _interleaved(runtime: Plantangenet) -> tuple[list, list]:  # type: ignore[type-arg]
    """Two sessions written alternately: each one's sequences have gaps."""
    a, b = runtime.session("a"), runtime.session("b")
    a.start({"n": 0})
    b.start()
    for i in range(1, 4):
        a.change_metadata({"n": i})
        b.change_metadata({"n": i})
    return runtime.history("a"), runtime.history("b")


def test_positions_resolve_to_the_sessions_own_events(runtime: Plantangenet) -> None:
    history_a, history_b = _interleaved(runtime)
    journal = runtime.journal
    seqs = [e.sequence for e in history_a]
    assert seqs == [1, 3, 5, 7]  # b holds 2, 4, 6, 8

    def at(position: object) -> SessionState:
        return runtime.state_at("a", position)  # type: ignore[arg-type]

    # An int is a revision: the session's own numbering, 1, 2, 3... with no gap.
    assert at(1).metadata == {"n": 0}
    assert [at(r) for r in (1, 2, 3, 4)] == [fold("a", history_a[:r]) for r in (1, 2, 3, 4)]
    assert at("3") == at("rev:3") == fold("a", history_a[:3])  # text is parsed
    # A stream sequence is the explicit form: a's last event at or before it.
    seq = StreamSequence
    assert at(seq(4)) == at(seq(3)) == fold("a", history_a[:2])  # 4 is b's: a's event before it
    assert at(seq(1000)) == fold("a", history_a)  # after the end: the last event
    assert at("seq:3") == fold("a", history_a[:2])
    assert runtime.run(resolve(journal, "a", seq(6))) == 5
    assert runtime.run(resolve(journal, "a", 3)) == 5
    assert runtime.run(resolve(journal, "a", history_a[2].event_id)) == 5
    assert at(history_a[2].event_id.upper()) == fold("a", history_a[:3])
    # A time: the last event at or before it (naive times are UTC).
    moment = history_a[2].occurred_at
    assert at(moment) == fold("a", history_a[:3])
    assert at(moment.replace(tzinfo=None)) == fold("a", history_a[:3])
    assert at(moment.isoformat()) == fold("a", history_a[:3])
    assert at(datetime(2999, 1, 1, tzinfo=UTC)) == fold("a", history_a)
    # One pass for several positions, in any order.
    many = runtime.run(states_at(journal, "a", [seq(7), 1, history_a[1].event_id, moment, 4]))
    assert [s.event_count for s in many] == [4, 1, 2, 3, 4]
    with pytest.raises(UnknownPosition, match="after its last event"):
        at(5)  # a revision past the end is an error (a sequence past it is the last event)

    for position in (
        0,
        -5,
        history_b[-1].event_id,  # another session's event
        "0123456789abcdef0123456789abcdef",
        history_a[0].occurred_at - timedelta(microseconds=1),
        True,
    ):
        with pytest.raises(UnknownPosition):
            at(position)
    with pytest.raises(UnknownSession):
        runtime.state_at("nobody", 1)
    with pytest.raises(UnknownSession):
        runtime.run(resolve(journal, "nobody", datetime.now(UTC)))
    # b's first event is 2: sequence 1 is before it.
    with pytest.raises(UnknownPosition, match="before its first event"):
        runtime.run(state_at(journal, "b", seq(1)))


def test_the_quick_walk_equals_the_full_one(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Positions settled as stream sequences and replayed to (the quick walk) give what
    reading event by event gives, for every kind it takes, in any order; event ids and
    positions outside the session go the full walk, which names the problem."""
    history_a, _ = _interleaved(runtime)
    journal = runtime.journal
    seq = StreamSequence
    moments = [e.occurred_at for e in history_a]
    cases: list[list[Position]] = [
        [1],
        [4],
        [seq(4)],  # another session's sequence: a's event before it
        [seq(1000)],
        [moments[2]],
        [3, seq(2), moments[1], 1, seq(7)],  # several, out of order
    ]
    read_calls: list[object] = []
    original_read = journal.read

    def counted_read(*args: object, **kwargs: object) -> object:
        read_calls.append(args)
        return original_read(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(journal, "read", counted_read)
    quick = [runtime.run(states_at(journal, "a", case)) for case in cases]
    assert read_calls == []  # none of them read event by event
    events = [runtime.run(event_at(journal, "a", seq(6)))]
    assert read_calls == [] and events[0] == history_a[2]

    monkeypatch.setattr(positions, "_walk_to_bounds", _never_quick)
    full = [runtime.run(states_at(journal, "a", case)) for case in cases]
    assert read_calls  # the full walk reads
    assert quick == full
    assert [[s.event_count for s in states] for states in quick] == [
        [1],
        [4],
        [2],
        [4],
        [3],
        [3, 1, 2, 1, 4],
    ]


async def _never_quick(*args: object) -> bool:
    return False


def test_commands_sharing_a_time_resolve_to_their_last_event(runtime: Plantangenet) -> None:
    session = runtime.session("t")
    session.start()
    session.attach("bot")
    for cursor in ("c1", "c2"):
        session.add_cursor("bot", cursor, ["x"], 0, 1)
    left = session.execute(DetachAgent(agent_id="bot", reason="done"))
    assert len(left.events) == 3  # two cursors removed, then the bot detached
    history = runtime.history("t")
    for envelope in left.events:
        state = runtime.state_at("t", envelope.occurred_at)
        assert state == fold("t", history) and "bot" not in state.agents
    middle = left.events[0]  # c1 removed, c2 not yet
    assert runtime.state_at("t", middle.event_id).cursors.keys() == {"c2"}
    assert runtime.state_at("t", middle.revision or 0) == runtime.state_at("t", middle.event_id)
    assert runtime.state_at("t", StreamSequence(middle.sequence or 0)) == runtime.state_at(
        "t", middle.event_id
    )


# -- the property: positions agree with folding, and diffs apply ----------------------------

AGENTS = st.sampled_from(["a", "b"])
ROLES = st.sampled_from(["watcher", "admin"])
STATEMENTS = {
    "watch": Statement("watch", "allow", ("cursor.*",), ("axis.*", "cursor.*"), ("watcher",)),
    "admin": Statement("admin", "allow", ("*",), ("*",), ("admin",)),
    "no-air": Statement("no-air", "deny", ("cursor.*",), ("axis.air.*",)),
}
CURSORS = st.sampled_from(["c1", "c2", "c3"])
AXES = st.lists(
    st.sampled_from(["ocean.temp", "air.wind"]), min_size=1, max_size=2, unique=True
).map(tuple)
METADATA = st.dictionaries(
    st.sampled_from(["k1", "k2", "k3"]),
    st.one_of(st.none(), st.booleans(), st.integers(-5, 5), st.text(max_size=3)),
    max_size=2,
)


@st.composite
def region(draw: st.DrawFn) -> dict[str, object]:
    a, b = sorted((draw(st.integers(-9, 9)), draw(st.integers(-9, 9))))
    return {"axes": draw(AXES), "start": a, "end": b}


COMMANDS: st.SearchStrategy[Command] = st.one_of(
    st.builds(lambda a: AttachAgent(agent_id=a), AGENTS),
    st.builds(lambda a: DetachAgent(agent_id=a), AGENTS),
    st.builds(lambda a, c, r: AddCursor(agent_id=a, cursor_id=c, **r), AGENTS, CURSORS, region()),
    st.builds(lambda a, c, r: MoveCursor(agent_id=a, cursor_id=c, **r), AGENTS, CURSORS, region()),
    st.builds(lambda a, c: RemoveCursor(agent_id=a, cursor_id=c), AGENTS, CURSORS),
    st.builds(
        lambda m, r: ChangeMetadata(changed=m, removed=r),
        METADATA,
        st.lists(st.sampled_from(["k1", "k2"]), max_size=1).map(tuple),
    ),
    st.builds(
        lambda ids, remove: ChangePolicy(
            add=tuple(STATEMENTS[i] for i in ids), remove=tuple(remove)
        ),
        st.lists(st.sampled_from(sorted(STATEMENTS)), max_size=2, unique=True),
        st.lists(st.sampled_from(sorted(STATEMENTS)), max_size=1),
    ),
    st.builds(
        lambda ids: ChangePolicy(replace=tuple(STATEMENTS[i] for i in ids)),
        st.lists(st.sampled_from(sorted(STATEMENTS)), max_size=3, unique=True),
    ),
    st.builds(lambda a, r: GrantRole(agent_id=a, role=r), AGENTS, ROLES),
    st.builds(lambda a, r: RevokeRole(agent_id=a, role=r), AGENTS, ROLES),
    st.builds(
        lambda t: BindIdentity(identity_id="ops", display_name="Ops", attributes={"tier": t}),
        st.sampled_from(["gold", "silver"]),
    ),
    st.just(EndSession(reason="done")),
).flatmap(
    lambda c: st.sampled_from([None, None, "a", "b"]).map(
        lambda who: dataclasses.replace(c, issued_by=who)
    )
)


def _run(runtime: Plantangenet, session_id: str, commands: list[Command]) -> None:
    session = runtime.session(session_id)
    session.start({"k1": 1})
    for future in [session.submit(c) for c in commands]:
        with contextlib.suppress(CommandRejected):
            future.result(30)
    runtime.stop_session(session_id)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(commands=st.lists(COMMANDS, min_size=1, max_size=20), data=st.data())
def test_state_at_any_position_is_the_fold_and_diffs_apply(
    runtime: Plantangenet, commands: list[Command], data: st.DataObject
) -> None:
    session_id = f"prop-{next(_ids)}"
    _run(runtime, session_id, commands)
    journal = runtime.journal
    history = runtime.history(session_id)
    n = len(history)
    i = data.draw(st.integers(1, n), label="a")
    j = data.draw(st.integers(min(i + 1, n), n), label="b")

    def folded(count: int) -> SessionState:
        return fold(session_id, history[:count])

    for k in (i, j):
        envelope = history[k - 1]
        assert runtime.state_at(session_id, StreamSequence(envelope.sequence or 0)) == folded(k)
        assert runtime.state_at(session_id, envelope.revision or 0) == folded(k)
        assert runtime.state_at(session_id, envelope.event_id) == folded(k)
        # Several events share a time (one command, or commands in the same microsecond):
        # a time names the last of them.
        moment = envelope.occurred_at
        last = max(m for m in range(1, n + 1) if history[m - 1].occurred_at <= moment)
        assert last >= k
        assert runtime.state_at(session_id, moment) == folded(last)
        assert runtime.run(resolve(journal, session_id, moment)) == history[last - 1].sequence

    a, b = runtime.run(
        states_at(journal, session_id, [history[i - 1].revision or 0, history[j - 1].event_id])
    )
    assert (a, b) == (folded(i), folded(j))
    forward = diff(a, b)
    assert apply(a, forward) == b
    assert apply(b, diff(b, a)) == a
    as_json = json.loads(json.dumps(forward.to_dict()))
    assert apply(a, StateDiff.from_dict(as_json)) == b
    assert diff(a, a).empty and diff(b, b).empty
    unpositioned = [dataclasses.replace(s, sequence=0, event_count=0) for s in (a, b)]
    assert forward.empty == (unpositioned[0] == unpositioned[1])


def test_diff_sections(runtime: Plantangenet) -> None:
    session = runtime.session("d")
    session.start({"keep": 1, "drop": 2, "edit": "x"})
    session.change_policy(replace=[STATEMENTS["watch"], STATEMENTS["admin"]])
    session.attach("bot", name="Bot")
    session.attach("gone")
    session.grant_role("bot", "watcher")
    session.add_cursor("bot", "c1", ["ocean.temp"], 0, 1)
    before = session.state
    session.change_metadata({"edit": "y", "new": None}, removed=["drop"])
    session.bind_identity("ops", "Ops", {"tier": "gold"})
    session.change_policy(add=[STATEMENTS["no-air"]], remove=["watch"])
    session.detach("gone")
    session.grant_role("bot", "admin")
    session.move_cursor("bot", "c1", ["ocean.temp"], 2, 3)
    session.execute(EndSession(reason="over"))
    after = session.state
    change = diff(before, after)
    assert dict(change.metadata.added) == {"new": None}
    assert dict(change.metadata.removed) == {"drop": 2}
    assert change.metadata.changed["edit"].before == "x"
    assert change.metadata.changed["edit"].after == "y"
    assert set(change.agents.removed) == {"gone", "bot"}  # the end detached everyone
    assert set(change.cursors.removed) == {"c1"}
    assert change.identity is not None and change.identity.before is None
    assert change.status is not None and (change.status.before, change.status.after) == (
        "active",
        "ended",
    )
    assert change.end_reason is not None and change.end_reason.after == "over"
    assert list(change.statements.added) == ["no-air"]
    assert list(change.statements.removed) == ["watch"]
    assert change.policy_version == Change(1, 2)
    assert change.statement_order is None  # appending gives the new order
    assert apply(before, change) == after
    # A reordering is recorded explicitly.
    session2 = runtime.session("d2")
    session2.start()
    session2.change_policy(replace=[STATEMENTS["watch"], STATEMENTS["admin"]])
    one = session2.state
    session2.change_policy(replace=[STATEMENTS["admin"], STATEMENTS["watch"]])
    two = session2.state
    reordered = diff(one, two)
    assert reordered.statement_order == ("admin", "watch") and not reordered.statements
    assert apply(one, reordered) == two
    lines = "\n".join(change.describe())
    assert "+ metadata new: None" in lines and "- agent gone" in lines
    assert "~ status: active -> ended" in lines and "+ statement no-air: deny" in lines


# -- why --------------------------------------------------------------------------------


def test_why_names_the_command_and_the_request_chain(runtime: Plantangenet) -> None:
    session = runtime.session("w")
    session.start()
    session.attach("bot")
    session.add_cursor("bot", "c1", ["x"], 0, 1)
    session.add_cursor("bot", "c2", ["x"], 0, 1)
    detached = session.execute(DetachAgent(agent_id="bot", correlation_id="req-7"))
    noted = session.execute(ChangeMetadata(changed={"why": "bot gone"}, correlation_id="req-7"))
    session.attach("other")
    with pytest.raises(CommandRejected):
        session.change_metadata({"x": 1}, issued_by="other")  # default deny, recorded
    history = runtime.history("w")
    denied = history[-1]
    journal = runtime.journal

    middle = detached.events[1]
    for position in (middle.event_id, middle.sequence or 0):
        answer = runtime.run(why(journal, "w", position))
        assert answer.event == middle
        assert answer.command_id == detached.command_id
        assert answer.command_events == detached.events
        assert [e.type_name for e in answer.command_events] == [
            "CursorRemoved",
            "CursorRemoved",
            "AgentDetached",
        ]
        assert answer.correlation_id == "req-7"
        assert answer.chain == (*detached.events, *noted.events)
        assert answer.commands == (detached.command_id, noted.command_id)
        assert answer.origin is None
    # By time: the last event at that time, of the same command.
    by_time = runtime.run(why(journal, "w", middle.occurred_at))
    assert by_time.event == detached.events[-1] and by_time.command_id == detached.command_id
    refused = runtime.run(why(journal, "w", denied.event_id))
    assert refused.event.type_name == "AccessDenied"
    assert refused.command_events == (denied,) and refused.chain == (denied,)
    record = json.loads(json.dumps(refused.to_dict()))
    assert record["command_events"][0]["type"] == "AccessDenied"
    assert record["commands"] == [denied.causation_id]
    with pytest.raises(UnknownPosition):
        runtime.run(why(journal, "w", "f" * 32))
    with pytest.raises(UnknownSession):
        runtime.run(why(journal, "nobody", 1))


# -- the command line ---------------------------------------------------------------------


def cli(server: EmbeddedNats, config: JournalConfig, *args: str) -> tuple[int, str]:
    out = io.StringIO()
    status = main(
        [
            *args,
            "--nats-url",
            server.url,
            "--stream",
            config.stream,
            "--subject-prefix",
            config.subject_prefix,
        ],
        out=out,
    )
    return status, out.getvalue()


def test_cli_history_filters_state_diff_and_why(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    def run(*args: str) -> tuple[int, str]:
        return cli(nats_server, journal_config, *args)

    assert run("demo", "--session-id", "h")[0] == 0
    status, text = run("history", "h", "--json")
    records = [json.loads(line) for line in text.splitlines()]
    assert len(records) == 20

    status, text = run("history", "h", "--type", "AccessDenied", "--type", "RoleGranted", "--json")
    chosen = [json.loads(line) for line in text.splitlines()]
    assert {r["type"] for r in chosen} == {"AccessDenied", "RoleGranted"} and len(chosen) == 5
    status, text = run("history", "h", "--agent", "viewer")
    rows = text.splitlines()[1:]
    assert [int(r.split()[0]) for r in rows] == [8, 9, 12, 16, 17, 18]  # by or about viewer
    assert [int(r.split()[1]) for r in rows] == [8, 9, 12, 16, 17, 18]  # REV, then SEQ
    assert rows[3].split()[4] == "AccessDenied"
    middle = records[9]["occurred_at"]
    status, text = run("history", "h", "--since", middle, "--json")
    assert [json.loads(line)["sequence"] for line in text.splitlines()] == list(range(10, 21))
    status, text = run("history", "h", "--until", middle, "--type", "CursorAdded", "--json")
    assert [json.loads(line)["sequence"] for line in text.splitlines()] == [10]
    status, text = run("history", "h", "--type", "SessionEnded")
    assert status == 0 and "none of the 20 events matches" in text
    assert run("history", "h", "--type", "CursorMove")[0] == 2  # unknown type: an error

    status, text = run("state", "h", "--at", "9", "--json")
    state = json.loads(text)
    assert (state["sequence"], state["event_count"], state["cursors"]) == (9, 9, {})
    assert sorted(state["agents"]) == ["tide-bot", "viewer", "weather-bot"]
    assert state["policy"]["version"] == 1 and len(state["policy"]["statements"]) == 4
    status, text = run("state", "h", "--at", records[15]["event_id"])
    assert status == 0 and "16 events, last sequence 16" in text
    status, text = run("state", "h", "--at", records[11]["occurred_at"], "--json")
    assert json.loads(text)["sequence"] == 12
    status, text = run("state", "h")
    assert "20 events, last sequence 20" in text and "weather-bot" not in text
    assert run("state", "h", "--at", "1999-01-01")[0] == 2
    assert run("state", "h", "--at", "soon")[0] == 2

    status, text = run("diff", "h", "9", "20")
    assert status == 0
    assert "- agent weather-bot" in text and "+ metadata status: 'observing'" in text
    assert "~ roles of viewer: viewer -> viewer,operator" in text
    status, text = run("diff", "h", "12", records[15]["event_id"], "--json")
    change = json.loads(text)
    assert change["cursors"]["changed"]["tide"]["after"]["start"] == 30
    assert change["sequence"] == {"before": 12, "after": 16}

    status, text = run("why", "h", "20")
    assert status == 0
    assert "2 event(s)" in text and "CursorRemoved" in text and "session.detach" in text
    status, text = run("why", "h", records[15]["event_id"], "--json")
    answer = json.loads(text)
    assert answer["event"]["type"] == "AccessDenied" and len(answer["command_events"]) == 1
    assert run("why", "h", "0")[0] == 2


def test_the_time_travel_guide_runs(
    nats_server: EmbeddedNats, journal_config: JournalConfig, tmp_path: Path
) -> None:
    """Every shell and Python block of docs/time-travel.md, in order, against the test server."""
    guide = (ROOT / "docs" / "time-travel.md").read_text()
    blocks = re.findall(r"```(sh|python)\n(.*?)```", guide, flags=re.S)
    assert [kind for kind, _ in blocks].count("sh") >= 5
    script = ["set -euo pipefail"]
    for kind, code in blocks:
        script.append(code if kind == "sh" else f"python - <<'PYTHON'\n{code}PYTHON\n")
    env = dict(
        os.environ,
        NATS_URL=nats_server.url,
        PLANTANGENET_STREAM=journal_config.stream,
        PLANTANGENET_SUBJECT_PREFIX=journal_config.subject_prefix,
        PATH=f"{ROOT / '.venv' / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}",
    )
    done = subprocess.run(
        ["bash", "-c", "\n".join(script)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr
    out = done.stdout
    assert "session harbour: active, 9 events, last sequence 9" in out
    assert "~ roles of viewer: viewer -> viewer,operator" in out
    assert "session harbour-what-if: history intact (16 events verified)" in out
    assert "copied by a fork from session harbour, sequence 16" in out
    assert "sequence 0 -> 0 (20 -> 18 events)" in out
    assert "metadata.status: allowed by statement operators-annotate" in out
    assert "statement set by PolicyChanged revision 3, sequence 3," in out
    assert "role operator of agent viewer granted by RoleGranted revision 17," in out
    assert "default deny: no statement allowed it (roles held: viewer)" in out
    assert "session harbour at revision 16 -> session harbour-what-if at revision 16" in out
    assert "harbour-what-if rev 16 seq 36  AccessDenied (fork copy of harbour sequence 16)" in out


def test_state_at_reports_progress_and_serves_threads(runtime: Plantangenet) -> None:
    seen: list[tuple[int, int]] = []
    session = runtime.session("p")
    session.start()
    state = runtime.state_at("p", 1, progress=lambda at, end: seen.append((at, end)))
    assert state.event_count == 1 and seen[-1] == (1, 1)
    # Pipelined readers on the same runtime do not interfere.
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        states = list(pool.map(lambda _: runtime.state_at("p", 1), range(4)))
    assert all(s == state for s in states)
