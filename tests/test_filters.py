"""One filter syntax for ``history --type/--agent`` and the explorer
(plantangenet.timetravel.filters)."""

from __future__ import annotations

import io
import json

import pytest

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.cli import main
from plantangenet.timetravel.explorer import Explorer, Timeline
from plantangenet.timetravel.filters import EventFilter, type_pattern
from tests.test_cli import external
from tests.test_explore import SID, build_session


def history(server: EmbeddedNats, config: JournalConfig, *args: str) -> tuple[int, list[int]]:
    """``plantangenet history SID ARGS --json``: its status and the sequences it lists."""
    out = io.StringIO()
    status = main(["history", SID, *args, "--json", *external(server, config)], out=out)
    return status, [json.loads(line)["sequence"] for line in out.getvalue().splitlines()]


def test_type_patterns_are_case_insensitive_globs_of_known_types() -> None:
    assert type_pattern("cursormoved") == "CursorMoved"  # spelled as registered
    assert type_pattern("cursor*") == "cursor*"
    assert EventFilter.parse("cursor*, AGENT:bot-1") == EventFilter(("cursor*",), ("bot-1",))
    assert EventFilter.of(["*denied"], [None]) == EventFilter(("*denied",), ())
    assert not EventFilter.of([], [None])
    with pytest.raises(ValueError, match="no event type matches 'CursorMove'"):
        type_pattern("CursorMove")
    with pytest.raises(ValueError, match="no event type matches 'nothing\\*'"):
        EventFilter.parse("nothing*")
    with pytest.raises(ValueError, match="agent id"):
        EventFilter.parse("agent:")


@pytest.mark.parametrize(
    ("types", "agent"),
    [
        (["cursor*"], None),
        (["Cursor*"], None),
        (["CURSORMOVED"], None),
        (["*denied", "role*"], None),
        (["cursor*"], "bot-1"),
        ([], "bot-2"),
        (["Session?tarted"], None),
        (["policy[cC]hanged", "agentattached"], None),
    ],
)
def test_history_and_the_explorer_accept_the_same_filters_and_keep_the_same_events(
    runtime: Plantangenet,
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    types: list[str],
    agent: str | None,
) -> None:
    events = build_session(runtime)
    # The command line: repeated --type and --agent.
    args = [a for t in types for a in ("--type", t)] + (["--agent", agent] if agent else [])
    status, listed = history(nats_server, journal_config, *args)
    assert status == 0 and listed
    # The explorer: the same words on its filter line.
    timeline = Timeline(SID, events)
    explorer = Explorer(timeline)
    explorer.submit("filter", " ".join([*types, *([f"agent:{agent}"] if agent else [])]))
    assert explorer.message == ""
    shown = [events[i].sequence for i in timeline.matching]
    assert shown == listed
    # ...and what both keep is what the filter says, checked by hand for the first case.
    if types == ["cursor*"] and agent is None:
        assert listed == [e.sequence for e in events if e.type_name.startswith("Cursor")]
        assert len(listed) == 5


def test_history_and_the_explorer_refuse_the_same_unknown_types(
    runtime: Plantangenet, nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    events = build_session(runtime)
    explorer = Explorer(Timeline(SID, events))
    for bad in ("CursorMove", "nothing*", "[x]"):
        assert history(nats_server, journal_config, "--type", bad)[0] == 2
        explorer.submit("filter", bad)
        assert explorer.message.startswith(f"no event type matches {bad!r}")
        assert not explorer.timeline.filter
