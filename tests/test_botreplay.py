"""Replaying in-process bots against recorded sessions (plantangenet.timetravel.botreplay)."""

from __future__ import annotations

import io
import json
import re
import sys
from collections.abc import Iterator
from typing import Any, ClassVar

import pytest

from plantangenet import (
    AccessRefused,
    Agent,
    AgentContext,
    AttachAgent,
    CommandRecord,
    EmbeddedNats,
    Envelope,
    EventFilter,
    JournalConfig,
    MoveCursor,
    Plantangenet,
    ReplayReport,
    SessionState,
    StreamSequence,
    UnknownAgent,
    UnknownSession,
    replay_agent,
)
from plantangenet.cli import main
from plantangenet.timetravel.botreplay import (
    BreakAction,
    FieldChange,
    compare,
    record_of_command,
    record_of_events,
)
from plantangenet.timetravel.fork import fork
from tests.conftest import log_options, wait_until
from tests.replay_bots import (
    POLICY,
    ChattyWatcher,
    ForgetfulWatcher,
    LongSightedWatcher,
    Lookout,
    Recorder,
    WallClockLookout,
    Watcher,
    record_sweep,
)
from tests.test_docs import ROOT, python_blocks, run_python


def sequences(pg: Plantangenet, session_id: str, type_name: str, agent: str) -> list[int]:
    """Stream sequences of the session's ``type_name`` events about ``agent``."""
    return [
        e.sequence or 0
        for e in pg.history(session_id)
        if e.type_name == type_name and getattr(e.event, "agent_id", None) == agent
    ]


def commands_of(pg: Plantangenet, session_id: str, agent: str) -> list[int]:
    """First sequences of the commands issued as ``agent``."""
    seen: dict[str, int] = {}
    for e in pg.history(session_id):
        if e.agent_id == agent:
            seen.setdefault(e.causation_id, e.sequence or 0)
    return list(seen.values())


def test_an_unchanged_bot_is_the_same_at_every_event(runtime: Plantangenet) -> None:
    record_sweep(runtime, "sweep")
    report = replay_agent(runtime, "sweep", "watcher", Watcher)
    assert not report.diverged and report.first_divergence is None
    assert [e.outcome for e in report.entries] == ["same"] * 7
    attached = sequences(runtime, "sweep", "AgentAttached", "watcher")
    moves = sequences(runtime, "sweep", "CursorMoved", "tide-bot")
    left = sequences(runtime, "sweep", "AgentDetached", "tide-bot")
    # Each command at the event it answered: its attach, each of tide-bot's moves, its leaving.
    assert [e.sequence for e in report.entries] == [*attached, *moves, *left]
    assert [e.event_type for e in report.entries][1:6] == ["CursorMoved"] * 5
    # ... and paired with the command the log holds of it.
    then = [e.then.sequence for e in report.entries if e.then is not None]
    assert then == commands_of(runtime, "sweep", "watcher")
    assert report.entries[1].now is not None and report.entries[1].now.fields["start"] == 70
    assert report.describe()[-1] == "SAME: 7 commands, as recorded"


def test_a_changed_bot_diverges_first_at_the_first_move_with_the_field_diff(
    runtime: Plantangenet,
) -> None:
    record_sweep(runtime, "sweep")
    report = replay_agent(runtime, "sweep", "watcher", LongSightedWatcher)
    first_move = sequences(runtime, "sweep", "CursorMoved", "tide-bot")[0]
    first = report.first_divergence
    assert first is not None and report.diverged
    assert (first.sequence, first.event_type, first.outcome) == (
        first_move,
        "CursorMoved",
        "different",
    )
    assert first.changes == (FieldChange("end", 80.0, 90.0),)  # 70 + 10 then, 70 + 20 now
    assert [e.outcome for e in report.entries] == ["same", *["different"] * 5, "same"]
    assert f"DIVERGED: first at sequence {first_move} (different)" in report.describe()[-1]
    assert "end: 80 -> 90" in "\n".join(report.describe())


def test_a_command_not_sent_is_missing_there_and_the_rest_is_same(runtime: Plantangenet) -> None:
    record_sweep(runtime, "sweep")
    report = replay_agent(runtime, "sweep", "watcher", ForgetfulWatcher)
    third_move = sequences(runtime, "sweep", "CursorMoved", "tide-bot")[2]
    answer = sequences(runtime, "sweep", "CursorMoved", "watcher")[2]
    outcomes = [(e.sequence, e.outcome) for e in report.entries]
    assert [o for _, o in outcomes] == ["same", "same", "same", "missing", "same", "same", "same"]
    missing = report.entries[3]
    assert missing.sequence == third_move and missing.now is None
    assert missing.then is not None and missing.then.sequence == answer
    assert missing.then.fields["start"] == 90


def test_an_extra_command_is_new_and_the_rest_is_same(runtime: Plantangenet) -> None:
    record_sweep(runtime, "sweep")
    report = replay_agent(runtime, "sweep", "watcher", ChattyWatcher)
    second_move = sequences(runtime, "sweep", "CursorMoved", "tide-bot")[1]
    assert [e.outcome for e in report.entries] == ["same"] * 3 + ["new"] + ["same"] * 4
    new = report.entries[3]
    assert new.sequence == second_move and new.then is None and new.now is not None
    assert new.now.kind == "ChangeMetadata" and new.now.fields["changed"] == {"lookout.tide": 90}


def test_a_late_answer_still_pairs_with_the_event_it_answers(runtime: Plantangenet) -> None:
    # tide-bot's moves go in one batch: the watcher's answers are stored after both.
    session = runtime.session("late")
    session.start()
    session.change_policy(replace=POLICY)
    session.attach("tide-bot")
    session.add_cursor("tide-bot", "tide", ["ocean.tide"], 0, 60, issued_by="tide-bot")
    watcher = Watcher()
    session.attach("watcher", behaviour=watcher)
    assert watcher.ready.wait(10)
    wait_until(lambda: "ahead" in session.state.cursors)
    moves = [
        MoveCursor(
            agent_id="tide-bot",
            cursor_id="tide",
            axes=("ocean.tide",),
            start=t,
            end=t + 60,
            issued_by="tide-bot",
        )
        for t in (10.0, 20.0)
    ]
    session.submit_many(moves).result(10)
    wait_until(lambda: session.state.cursors["ahead"].start == 80)
    history = [(e.type_name, e.agent_id) for e in runtime.history("late")][-4:]
    assert history == [("CursorMoved", "tide-bot")] * 2 + [("CursorMoved", "watcher")] * 2
    report = replay_agent(runtime, "late", "watcher", Watcher)
    assert [e.outcome for e in report.entries] == ["same"] * 3
    moved = sequences(runtime, "late", "CursorMoved", "tide-bot")
    assert [e.sequence for e in report.entries][1:] == moved


def test_replay_never_writes_to_the_session(runtime: Plantangenet) -> None:
    record_sweep(runtime, "sweep")
    runtime.stop_session("sweep")
    before = runtime.run(runtime.journal.last_sequence("sweep"))
    sessions = runtime.sessions()
    for behaviour in (Watcher, LongSightedWatcher, ForgetfulWatcher, ChattyWatcher):
        replay_agent(runtime, "sweep", "watcher", behaviour)
    assert runtime.run(runtime.journal.last_sequence("sweep")) == before
    assert runtime.sessions() == sessions  # no event anywhere, no other session


def test_the_agent_is_handed_what_it_was_handed_live_at_the_recorded_times(
    runtime: Plantangenet,
) -> None:
    session = runtime.session("handed")
    session.start({"purpose": "x"})
    session.attach("other")
    live = Recorder()
    session.attach("rec", behaviour=live)
    session.add_cursor("other", "o", ["ocean.tide"], 0, 1)  # about another agent: not handed
    session.add_cursor("rec", "r", ["ocean.tide"], 0, 1)
    session.change_metadata({"k": 1})  # about no agent: handed
    session.move_cursor("rec", "r", ["ocean.tide"], 1, 2)
    session.detach("rec", "bye")
    session.change_metadata({"k": 2})  # after it left
    session.attach("rec")  # a second lifetime: a new behaviour (the runtime's default here)
    session.end("done")
    wait_until(lambda: ("teardown", 0, "bye") in live.calls)
    made: list[Recorder] = []

    def factory(agent_id: str, kind: str) -> Agent:
        made.append(Recorder())
        return made[-1]

    report = replay_agent(runtime, "handed", "rec", factory)
    assert not report.diverged and report.entries == []
    assert len(made) == 2  # one behaviour per lifetime
    assert made[0].calls == live.calls
    assert ("on_event", 0, "CursorAdded") not in made[0].calls
    assert [c[2] for c in made[0].calls] == [
        "attached",
        "AgentAttached",
        "CursorAdded",
        "SessionMetadataChanged",
        "CursorMoved",
        "CursorRemoved",
        "AgentDetached",
        "bye",
    ]
    assert [c[2] for c in made[1].calls] == [
        "attached",
        "AgentAttached",
        "SessionEnded",
        "session ended",
    ]
    occurred = {e.sequence: e.occurred_at for e in runtime.history("handed")}
    handed = [c[1] for c in made[0].calls if c[0] == "on_event"]
    assert made[0].times == [occurred[s] for s in handed]  # context.now(): the event's time
    assert live.times == made[0].times  # as it was live


def test_a_bot_that_reads_context_now_replays_the_same_and_the_wall_clock_does_not(
    runtime: Plantangenet,
) -> None:
    session = runtime.session("clock")
    session.start()
    session.change_policy(replace=POLICY)
    session.attach("lookout", behaviour=Lookout())
    for tide in (1, 2, 3):
        session.change_metadata({"tide": tide})
        noted = 3 + 2 * tide  # the change, then the lookout's note
        wait_until(lambda noted=noted: session.state.event_count >= noted)  # type: ignore[misc]
    assert not replay_agent(runtime, "clock", "lookout", Lookout).diverged
    report = replay_agent(runtime, "clock", "lookout", WallClockLookout)
    assert [e.outcome for e in report.entries] == ["different"] * 3
    assert [c.field for c in report.entries[0].changes] == ["changed"]


class Nosy(Agent):
    """Tries to set a metadata key the policy keeps from agents; remembers the refusal."""

    refusals: ClassVar[list[str]] = []

    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        if envelope.type_name == "AgentAttached":
            try:
                context.session.change_metadata({"status": "mine"}, issued_by=context.agent_id)
            except AccessRefused as refused:
                Nosy.refusals.append(str(refused))


def test_a_recorded_refusal_replays_as_the_same_refusal(runtime: Plantangenet) -> None:
    session = runtime.session("nosy")
    session.start()
    session.change_policy(replace=POLICY)
    session.attach("nosy", behaviour=Nosy())
    wait_until(lambda: len(Nosy.refusals) == 1)
    report = replay_agent(runtime, "nosy", "nosy", Nosy)
    assert [e.outcome for e in report.entries] == ["same"]
    then = report.entries[0].then
    assert then is not None and then.kind == "ChangeMetadata" and then.refused
    assert len(Nosy.refusals) == 2 and Nosy.refusals[0] == Nosy.refusals[1]


def test_from_reports_from_a_position_and_to_stops_at_one(runtime: Plantangenet) -> None:
    record_sweep(runtime, "sweep")
    moves = sequences(runtime, "sweep", "CursorMoved", "tide-bot")
    report = replay_agent(runtime, "sweep", "watcher", Watcher, start=moves[2])
    # The events before --from warm the agent up (it counted the moves); none is reported.
    assert [e.sequence for e in report.entries] == [*moves[2:], report.entries[-1].sequence]
    assert not report.diverged and report.first == moves[2]
    report = replay_agent(runtime, "sweep", "watcher", ForgetfulWatcher, start=moves[3])
    assert not report.diverged  # its one missing answer is before the range
    report = replay_agent(runtime, "sweep", "watcher", Watcher, stop=moves[1])
    assert [e.sequence for e in report.entries][1:] == moves[:2]  # nothing missing after
    assert not report.diverged and report.last == moves[1]


def test_breakpoints_stop_before_matching_events_with_the_state_there(
    runtime: Plantangenet,
) -> None:
    record_sweep(runtime, "sweep")
    moves = sequences(runtime, "sweep", "CursorMoved", "tide-bot")
    stops: list[tuple[int, int, float, int]] = []

    def on_break(envelope: Envelope, state: SessionState, report: ReplayReport) -> BreakAction:
        ahead = state.cursors["ahead"].start if "ahead" in state.cursors else -1.0
        stops.append((envelope.sequence or 0, state.sequence, ahead, report.count("same")))
        return "continue"

    found = EventFilter(types=("Cursor*",), agent="tide-bot")
    report = replay_agent(runtime, "sweep", "watcher", Watcher, breakpoint=found, on_break=on_break)
    assert not report.diverged
    assert [s[0] for s in stops][1:6] == moves  # after tide-bot's CursorAdded
    for (at, state_at, _, _), before in zip(stops[1:6], moves, strict=True):
        assert at == before and state_at < at  # the session just before the event
    assert [s[2] for s in stops[1:6]] == [0.0, 70.0, 80.0, 90.0, 100.0]
    assert [s[3] for s in stops[1:6]] == [1, 2, 3, 4, 5]  # the report so far

    # Step from the second move, then quit: the replay ends there.
    answers: Iterator[BreakAction] = iter(["continue", "step", "quit"])
    stops.clear()
    on_moves = EventFilter(types=("CursorMoved",), agent="tide-bot")

    def stepping(envelope: Envelope, state: SessionState, report: ReplayReport) -> BreakAction:
        stops.append((envelope.sequence or 0, state.sequence, 0.0, 0))
        return next(answers)

    report = replay_agent(
        runtime, "sweep", "watcher", Watcher, breakpoint=on_moves, on_break=stepping
    )
    assert [s[0] for s in stops] == [moves[0], moves[1], moves[1] + 1]
    assert report.quit and [e.outcome for e in report.entries] == ["same"] * 3
    assert not report.diverged


def test_event_filter_matches_as_history_does() -> None:
    record = [e for e in _sample_events()]
    denied = EventFilter(outcome="denied")
    assert [e.type_name for e in record if denied(e)] == ["AccessDenied"]
    allowed = EventFilter(outcome="allowed", types=("Agent*",))
    assert [e.type_name for e in record if allowed(e)] == ["AgentAttached"]
    by = EventFilter(agent="bot")
    assert [e.type_name for e in record if by(e)] == ["AgentAttached", "AccessDenied"]
    assert not EventFilter() and EventFilter(agent="x")


def _sample_events() -> list[Envelope]:
    from datetime import UTC, datetime

    from plantangenet import AccessDenied, AgentAttached, SessionStarted

    at = datetime(2025, 1, 1, tzinfo=UTC)
    events = [
        (SessionStarted("s", {}), None),
        (AgentAttached("bot", "bot", "", None), None),
        (AccessDenied("bot", "ChangeMetadata", "metadata.change", "m", None, "no", 1), "bot"),
    ]
    return [
        Envelope(event, "s", f"{i:032x}", f"c{i}", f"c{i}", at, agent, i + 1)
        for i, (event, agent) in enumerate(events)
    ]


def test_records_compare_kind_issuer_fields_and_what_the_log_does_not_keep() -> None:
    def cursor(**kw: Any) -> CommandRecord:
        fields = {"agent_id": "w", "cursor_id": "a", "axes": ("x",), "start": 1, "end": 2}
        return record_of_command(MoveCursor(**{**fields, "issued_by": "w", **kw}))

    same = cursor(axes=["x"], start=1.0, end=2.0)  # numbers by value, sequences as tuples
    assert compare(cursor(), same) == ()
    assert compare(cursor(), cursor(issued_by=None)) == (FieldChange("issued_by", "w", None),)
    assert compare(cursor(), cursor(end=3)) == (FieldChange("end", 2, 3),)
    # A cursor command's fields are all in its events: its context alone is not compared.
    assert compare(cursor(), cursor(context={"a": 1})) == ()
    # An attach's bound_to is not in its event: the fingerprint tells.
    bound = AttachAgent(agent_id="w", bound_to="bob@B")
    changes = compare(record_of_command(AttachAgent(agent_id="w")), record_of_command(bound))
    assert [c.field for c in changes] == ["content (fields the log does not keep)"]


def test_records_read_back_from_events(runtime: Plantangenet) -> None:
    session = runtime.session("records")
    session.start()
    session.attach("w")
    session.add_cursor("w", "a", ["ocean.tide"], 0, 1)
    session.detach("w", "bye")
    by_command: dict[str, list[Envelope]] = {}
    for envelope in runtime.history("records"):
        by_command.setdefault(envelope.causation_id, []).append(envelope)
    kinds = [record_of_events(events).kind for events in by_command.values()]
    assert kinds == ["StartSession", "AttachAgent", "AddCursor", "DetachAgent"]
    detach = record_of_events(list(by_command.values())[-1])
    assert detach.fields == {"agent_id": "w", "reason": "bye"} and len(detach.events) == 2


def test_unknown_session_and_agent_are_errors(runtime: Plantangenet) -> None:
    with pytest.raises(UnknownSession):
        replay_agent(runtime, "nowhere", "watcher", Watcher)
    record_sweep(runtime, "sweep")
    with pytest.raises(UnknownAgent):
        replay_agent(runtime, "sweep", "nobody", Watcher)


class Crashing(Agent):
    def on_event(self, context: AgentContext, envelope: Envelope) -> None:
        raise RuntimeError("boom")


def test_a_hook_that_raises_is_reported_and_counts_as_diverging(runtime: Plantangenet) -> None:
    record_sweep(runtime, "sweep")
    report = replay_agent(runtime, "sweep", "watcher", Crashing)
    assert report.diverged and report.failures
    assert "on_event raised RuntimeError('boom')" in report.failures[0]
    assert [e.outcome for e in report.entries] == ["missing"] * 7


# -- the command line ---------------------------------------------------------------------


def cli(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    status = main(args, out=out)
    return status, out.getvalue()


def test_cli_exits_0_when_the_bot_acts_as_recorded_and_1_when_it_diverges(
    runtime: Plantangenet,
) -> None:
    record_sweep(runtime, "sweep")
    runtime.stop_session("sweep")
    before = runtime.run(runtime.journal.last_sequence("sweep"))
    opts = cli_options(runtime)
    status, text = cli(
        ["replay-agent", "sweep", "watcher", "--behaviour", "tests.replay_bots:Watcher", *opts]
    )
    assert status == 0, text
    assert text.splitlines()[-1] == "SAME: 7 commands, as recorded"
    assert text.count(" same ") == 7

    first_move = sequences(runtime, "sweep", "CursorMoved", "tide-bot")[0]
    changed = "tests.replay_bots:LongSightedWatcher"
    status, text = cli(["replay-agent", "sweep", "watcher", "--behaviour", changed, *opts])
    assert status == 1
    assert f"DIVERGED: first at sequence {first_move} (different)" in text
    assert "end: 80 -> 90" in text

    status, text = cli(
        ["replay-agent", "sweep", "watcher", "--behaviour", changed, "--json", *opts]
    )
    assert status == 1
    report = json.loads(text)
    assert report["diverged"] is True and report["first_divergence"] == first_move
    assert report["counts"] == {"same": 2, "different": 5, "new": 0, "missing": 0}
    entry = report["entries"][1]
    assert entry["outcome"] == "different" and entry["sequence"] == first_move
    assert entry["changes"] == [{"field": "end", "then": 80.0, "now": 90.0}]
    assert entry["then"]["command"] == "MoveCursor" and entry["then"]["issued_by"] == "watcher"

    # --from / --to take positions as history does; the run never wrote to the session.
    moves = sequences(runtime, "sweep", "CursorMoved", "tide-bot")
    status, text = cli(
        [
            *("replay-agent", "sweep", "watcher", "--behaviour", "tests.replay_bots:Watcher"),
            *("--from", str(moves[1]), "--to", str(moves[3]), "--json", *opts),
        ]
    )
    assert status == 0
    assert [e["sequence"] for e in json.loads(text)["entries"]] == moves[1:4]
    assert runtime.run(runtime.journal.last_sequence("sweep")) == before
    assert runtime.sessions() == {"sweep": before}


def test_cli_errors_exit_2(runtime: Plantangenet, capsys: pytest.CaptureFixture[str]) -> None:
    record_sweep(runtime, "sweep")
    opts = cli_options(runtime)
    watcher = "tests.replay_bots:Watcher"
    assert cli(["replay-agent", "nope", "watcher", "--behaviour", watcher, *opts])[0] == 2
    assert cli(["replay-agent", "sweep", "nobody", "--behaviour", watcher, *opts])[0] == 2
    bad = "tests.replay_bots:Nothing"
    assert cli(["replay-agent", "sweep", "watcher", "--behaviour", bad, *opts])[0] == 2
    assert cli(["replay-agent", "sweep", "watcher", "--behaviour", "x", *opts])[0] == 2
    err = capsys.readouterr().err
    assert "no events for session 'nope'" in err
    assert "agent 'nobody' is never attached" in err
    assert "has no attribute 'Nothing'" in err and "module:attribute" in err


def test_cli_breakpoints_show_the_state_and_continue_on_a_key(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    record_sweep(runtime, "sweep")
    moves = sequences(runtime, "sweep", "CursorMoved", "tide-bot")
    opts = cli_options(runtime)
    args = ["replay-agent", "sweep", "watcher", "--behaviour", "tests.replay_bots:Watcher"]
    breaks = ["--break-type", "CursorMov*", "--break-agent", "tide-bot"]
    # Enter: on to the next breakpoint; s: stop before the next event; q: end there.
    monkeypatch.setattr(sys, "stdin", io.StringIO("\ns\nq\n"))
    status, text = cli([*args, *breaks, *opts])
    assert status == 0, text
    stops = re.findall(r"-- break before sequence (\d+): (\w+)", text)
    assert stops == [
        (str(moves[0]), "CursorMoved"),
        (str(moves[1]), "CursorMoved"),
        (str(moves[1] + 1), "CursorMoved"),  # the watcher's answer, stepped onto
    ]
    # The session there: the state just before the event.
    assert f"events, last sequence {moves[0] - 1}" in text
    assert "ahead: watcher ocean.tide [0, 10]" in text
    assert "watcher so far: 2 same" in text
    # What the agent did since the last stop: its answer to the first move.
    assert f"watcher at {moves[0]}: same MoveCursor" in text
    assert (
        "(quit at a breakpoint" in text and text.splitlines()[-1] == "SAME: 3 commands, as recorded"
    )

    # At the end of the input it goes on without stopping; --step stops at every event.
    monkeypatch.setattr(sys, "stdin", io.StringIO(""))
    status, text = cli([*args, "--step", *opts])
    assert status == 0 and text.count("-- break before") == 1
    assert "end of input" in text and text.splitlines()[-1].startswith("SAME")


def test_readme_debugging_example_runs(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Debugging a bot") :]
    code = python_blocks(section)[0]
    out = run_python(code, nats_server, journal_config)
    lines = out.splitlines()
    assert "SAME: 4 commands, as recorded" in lines
    assert lines[-1].startswith("DIVERGED: first at sequence ")
    first = int(lines[-1].split()[4])
    tides = [line for line in lines if "SessionMetadataChanged  different" in line]
    assert len(tides) == 3 and int(tides[0].split()[0]) == first  # the first tide
    assert "end: 13 -> 23" in out


def test_a_fork_replays_like_its_origin(runtime: Plantangenet) -> None:
    # A fork's copies have one causation id each: commands are told apart by the
    # fingerprint their first event carries (a detach is still one command).
    record_sweep(runtime, "sweep")
    fork(runtime, "sweep", runtime.run(runtime.journal.last_sequence("sweep")), "sweep-copy")
    origin = replay_agent(runtime, "sweep", "watcher", Watcher)
    copy = replay_agent(runtime, "sweep-copy", "watcher", Watcher)
    assert not copy.diverged and [e.outcome for e in copy.entries] == ["same"] * 7
    assert [e.then.kind for e in copy.entries if e.then] == [
        e.then.kind for e in origin.entries if e.then
    ]
    changed = replay_agent(runtime, "sweep-copy", "watcher", LongSightedWatcher)
    assert [e.outcome for e in changed.entries] == ["same", *["different"] * 5, "same"]


class Listener(Agent):
    """Registers an on_change callback in setup; remembers what it sees."""

    seen: ClassVar[list[int]] = []

    def setup(self, context: AgentContext) -> None:
        context.session.on_change(lambda envelope: Listener.seen.append(envelope.sequence or 0))


def test_callbacks_get_every_event_after_the_one_being_handled(runtime: Plantangenet) -> None:
    record_sweep(runtime, "sweep")
    Listener.seen.clear()
    replay_agent(runtime, "sweep", "watcher", Listener)
    attached = sequences(runtime, "sweep", "AgentAttached", "watcher")[0]
    everything = [e.sequence or 0 for e in runtime.history("sweep")]
    assert Listener.seen == [s for s in everything if s > attached]


def cli_options(runtime: Plantangenet) -> list[str]:
    """The CLI options of ``runtime``'s log, its live prefix too (bots follow it)."""
    return [*log_options(runtime), "--live-prefix", runtime.journal_config.live_prefix]


def test_the_explorer_opens_at_a_breakpoint(
    runtime: Plantangenet, monkeypatch: pytest.MonkeyPatch
) -> None:
    from plantangenet.cli.replaying import Prompt
    from plantangenet.timetravel.explore import open_timeline

    record_sweep(runtime, "explored")
    moves = sequences(runtime, "explored", "CursorMoved", "tide-bot")
    # `x` at a stop opens the explorer on that event, then the stop asks again.
    opened: list[int] = []
    monkeypatch.setattr(sys, "stdin", io.StringIO("x\nq\n"))
    prompt = Prompt(io.StringIO(), explore=lambda envelope: opened.append(envelope.sequence or 0))
    on_moves = EventFilter(types=("CursorMoved",), agent="tide-bot")
    report = replay_agent(
        runtime, "explored", "watcher", Watcher, breakpoint=on_moves, on_break=prompt
    )
    assert opened == [moves[0]] and report.quit
    # What the explorer opens there: the recorded session on that event.
    timeline = open_timeline(runtime, "explored", StreamSequence(moves[0]))
    assert timeline.selected is not None and timeline.selected.sequence == moves[0]
    at_revision = open_timeline(runtime, "explored", timeline.selected.revision)
    assert at_revision.selected == timeline.selected
