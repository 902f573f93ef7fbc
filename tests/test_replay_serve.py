"""Replaying a recorded session to a remote bot (plantangenet.timetravel.replay_serve)."""

from __future__ import annotations

import asyncio
import io
import json
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from plantangenet import (
    AddCursor,
    AttachAgent,
    ChangePolicy,
    DetachAgent,
    EmbeddedNats,
    Envelope,
    JournalConfig,
    Plantangenet,
    PlantangenetError,
    ReplayReport,
)
from plantangenet.cli import main
from plantangenet.timetravel.replay_serve import command_of, replay_serve
from plantangenet.wire.client import BotClient
from plantangenet.wire.service import SessionService
from tests.conftest import log_options, wait_until

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "examples"))

import tide_bot  # noqa: E402
import watcher_bot  # noqa: E402


@pytest.fixture
def recorded(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    runtime: Plantangenet,
    monkeypatch: pytest.MonkeyPatch,
) -> Iterator[str]:
    """A session "harbour" the two example bots played out (tide-bot sweeps, the watcher
    follows), served and recorded; the service is stopped again."""
    monkeypatch.setenv("PLANTANGENET_STREAM", journal_config.stream)
    monkeypatch.setenv("PLANTANGENET_SUBJECT_PREFIX", journal_config.subject_prefix)
    monkeypatch.setenv("PLANTANGENET_LIVE_PREFIX", journal_config.live_prefix)
    service = SessionService(runtime)
    runtime.run(service.start())

    async def both() -> None:
        await asyncio.wait_for(
            asyncio.gather(
                # A pause the watcher answers each move in, even on a busy machine.
                tide_bot.run(nats_server.url, "harbour", steps=5, pause=0.2),
                watcher_bot.run(nats_server.url, "harbour"),
            ),
            timeout=60,
        )

    try:
        asyncio.run(both())
    finally:
        runtime.run(service.stop())
    runtime.stop_session("harbour")
    yield "harbour"


def serve_to(
    runtime: Plantangenet, bot: Callable[[str], Any], fork_id: str, **kw: Any
) -> ReplayReport:
    """replay_serve on a thread of its own while ``bot(fork_id)`` runs here."""
    done: list[ReplayReport | BaseException] = []
    ready = threading.Event()

    def serve() -> None:
        try:
            done.append(
                replay_serve(
                    runtime,
                    "harbour",
                    fork_id,
                    "watcher-bot",
                    on_ready=lambda _: ready.set(),
                    **kw,
                )
            )
        except BaseException as exc:
            done.append(exc)
        ready.set()

    async def follow() -> None:
        assert await asyncio.to_thread(ready.wait, 30)
        if not done:  # served: the bot plays its part
            await asyncio.wait_for(bot(fork_id), 60)

    server = threading.Thread(target=serve)
    server.start()
    try:
        asyncio.run(follow())
    finally:
        server.join(60)
    assert done, "replay_serve did not finish"
    if isinstance(done[0], BaseException):
        raise done[0]
    return done[0]


def test_the_example_watcher_replayed_live_acts_as_it_did(
    nats_server: EmbeddedNats, runtime: Plantangenet, recorded: str
) -> None:
    before = runtime.run(runtime.journal.last_sequence(recorded))
    report = serve_to(
        runtime, lambda fork: watcher_bot.run(nats_server.url, fork), "again", speed=0
    )
    assert not report.diverged, "\n".join(report.describe())
    kinds = [e.now.kind for e in report.entries if e.now is not None]
    assert kinds == ["AttachAgent", "AddCursor", *["MoveCursor"] * 5, "DetachAgent"]
    assert [e.outcome for e in report.entries] == ["same"] * 8
    # Each look-ahead at the event it answered in the original: the last event of another
    # agent before it (a tide-bot move; the bots run side by side, so on a busy machine a
    # look-ahead may come after the next move, or after the tide bot left).
    answered: list[tuple[int | None, str]] = []
    last_other: Envelope | None = None
    for e in runtime.history(recorded):
        if e.agent_id != "watcher-bot":
            last_other = e
        elif e.type_name == "CursorMoved":
            assert last_other is not None and last_other.agent_id == "tide-bot"
            answered.append((last_other.sequence, last_other.type_name))
    assert len(answered) == 5
    looks = [e for e in report.entries if e.now is not None and e.now.kind == "MoveCursor"]
    assert [(e.sequence, e.event_type) for e in looks] == answered
    # The bot's commands landed in the fork, not in the original.
    assert runtime.run(runtime.journal.last_sequence(recorded)) == before
    fork = [e for e in runtime.history("again") if e.agent_id == "watcher-bot"]
    assert [e.type_name for e in fork][-2:] == ["CursorRemoved", "AgentDetached"]


def test_a_changed_remote_watcher_diverges_at_the_first_move(
    nats_server: EmbeddedNats, runtime: Plantangenet, recorded: str
) -> None:
    report = serve_to(
        runtime,
        lambda fork: watcher_bot.run(nats_server.url, fork, ahead=20),
        "changed",
        speed=0,
    )
    first_move = next(
        e.sequence
        for e in runtime.history(recorded)
        if e.type_name == "CursorMoved" and e.agent_id == "tide-bot"
    )
    first = report.first_divergence
    assert first is not None and first.sequence == first_move and first.outcome == "different"
    assert [c.field for c in first.changes] == ["end"]
    assert first.changes[0].now - first.changes[0].then == 10
    assert [e.outcome for e in report.entries] == ["same"] * 2 + ["different"] * 5 + ["same"]


def served(url: str, session_id: str) -> bool:
    """Whether a session service answers for the started session ``session_id``."""

    async def ask() -> bool:
        async with await BotClient.connect(url, timeout=1, retries=0) as client:
            return bool((await client.state(session_id))["status"] == "active")

    try:
        return asyncio.run(ask())
    except PlantangenetError:
        return False


def serve_cli(args: list[str], url: str, fork_id: str, bot: Callable[[], Any]) -> tuple[int, str]:
    """``plantangenet replay-serve ARGS`` on a thread; ``bot()`` runs once it serves."""
    out = io.StringIO()
    status: list[int] = []
    server = threading.Thread(target=lambda: status.append(main(args, out=out)))
    server.start()
    try:
        wait_until(lambda: bool(status) or served(url, fork_id), timeout=30)
        if not status:
            asyncio.run(asyncio.wait_for(bot(), 60))
    finally:
        server.join(60)
    assert status, "replay-serve did not finish"
    return status[0], out.getvalue()


def test_cli_replay_serve_steps_and_exits_0_then_1(
    nats_server: EmbeddedNats,
    runtime: Plantangenet,
    recorded: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    opts = cli_options(runtime)
    # One release per line of input (Enter): here all lines at once, each release still
    # waits for the bot's answers recorded before it.
    monkeypatch.setattr(sys, "stdin", io.StringIO("\n" * 6))
    args = ["replay-serve", recorded, "--as", "stepped", "--agent", "watcher-bot", "--step"]
    status, text = serve_cli(
        [*args, *opts],
        nats_server.url,
        "stepped",
        lambda: watcher_bot.run(nats_server.url, "stepped"),
    )
    assert status == 0, text
    assert "session stepped holds the 4 events of harbour before the replay" in text
    assert text.count("next: sequence") == 6 and text.count("-> fork sequence") == 6
    assert text.splitlines()[-1] == "SAME: 8 commands, as recorded"

    args = ["replay-serve", recorded, "--as", "paced", "--agent", "watcher-bot", "--json"]
    status, text = serve_cli(
        [*args, "--speed", "4", *opts],
        nats_server.url,
        "paced",
        lambda: watcher_bot.run(nats_server.url, "paced", ahead=20),
    )
    assert status == 1
    report = json.loads(text)
    assert report["fork_id"] == "paced" and report["diverged"] is True
    assert report["counts"] == {"same": 3, "different": 5, "new": 0, "missing": 0}

    # A fork id in use is an error (exit 2), and nothing is served.
    args = ["replay-serve", recorded, "--as", "paced", "--agent", "watcher-bot", "--speed", "0"]
    status, _ = serve_cli([*args, *opts], nats_server.url, "nowhere", lambda: asyncio.sleep(0))
    assert status == 2 and "already exists" in capsys.readouterr().err


def cli_options(runtime: Plantangenet) -> list[str]:
    """The CLI options of ``runtime``'s log, its live prefix too (bots follow it)."""
    return [*log_options(runtime), "--live-prefix", runtime.journal_config.live_prefix]


def test_the_others_commands_are_rebuilt_from_their_events(runtime: Plantangenet) -> None:
    session = runtime.session("rebuilt")
    session.start()
    session.change_policy(
        replace=[{"id": "a", "effect": "allow", "actions": ["cursor.add"], "resources": ["axis.*"]}]
    )
    session.attach("w", bound_to="bob@B")
    session.add_cursor("w", "c", ["ocean.tide"], 0, 1, issued_by="w")
    with pytest.raises(PlantangenetError):
        session.move_cursor("w", "c", ["ocean.tide"], 1, 2, issued_by="w")  # denied
    session.detach("w", "bye")
    groups: dict[str, list[Envelope]] = {}
    for envelope in runtime.history("rebuilt"):
        groups.setdefault(envelope.causation_id, []).append(envelope)
    rebuilt = [command_of(events) for events in groups.values()][1:]
    policy, attach, add, move, detach = rebuilt
    assert isinstance(policy[0], ChangePolicy)
    assert [getattr(s, "id", None) for s in policy[0].replace or ()] == ["a"]
    assert isinstance(attach[0], AttachAgent)
    assert attach[0] == AttachAgent(
        agent_id="w",
        kind="bot",
        name="",
        bound_to="bob@B",
        command_id=attach[0].command_id,
        correlation_id=attach[0].correlation_id,
    )
    assert isinstance(add[0], AddCursor) and add[0].issued_by == "w" and add[0].end == 1
    assert move[0] is None and move[1].startswith("refused then")
    assert isinstance(detach[0], DetachAgent) and detach[0].reason == "bye"
    # The rebuilt commands carry the recorded correlation ids (fresh command ids).
    first = list(groups.values())[3][0]
    assert add[0].correlation_id == first.correlation_id
    assert add[0].command_id != first.causation_id


def test_releases_keep_the_recorded_pace_times_speed(
    nats_server: EmbeddedNats, runtime: Plantangenet, recorded: str
) -> None:
    history = runtime.history(recorded)
    tide = [e for e in history if e.agent_id == "tide-bot" and e.type_name == "CursorMoved"]
    span = (tide[-1].occurred_at - tide[0].occurred_at).total_seconds()
    times: list[float] = []
    report = serve_to(
        runtime,
        lambda fork: watcher_bot.run(nats_server.url, fork),
        "slow",
        speed=0.5,
        on_release=lambda release, outcome: times.append(time.monotonic()),
    )
    assert not report.diverged
    moves = times[:5]  # the five moves, then the detach
    assert moves[-1] - moves[0] >= span / 0.5 * 0.9  # twice as slow as recorded (or slower)
