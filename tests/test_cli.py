"""The command line, against the test server and (once) on its own embedded server."""

from __future__ import annotations

import argparse
import io
import json
import os
import subprocess
import sys
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest

from plantangenet import EmbeddedNats, JournalConfig, Plantangenet
from plantangenet.cli import build_parser, main
from plantangenet.domain import commands as c
from tests.conftest import log_options, session_with_cursor


def run(args: list[str]) -> tuple[int, str]:
    out = io.StringIO()
    status = main(args, out=out)
    return status, out.getvalue()


def external(server: EmbeddedNats, config: JournalConfig) -> list[str]:
    return [
        "--nats-url",
        server.url,
        "--stream",
        config.stream,
        "--subject-prefix",
        config.subject_prefix,
    ]


def test_demo_sessions_and_history_against_an_external_server(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    opts = external(nats_server, journal_config)
    status, text = run(["demo", "--session-id", "demo-1", *opts])
    assert status == 0, text
    assert "rehydrated state EQUALS the live state" in text
    assert "replayed audit EQUALS the live one" in text
    assert "history intact (20 events verified)" in text
    assert "viewer tries to change metadata: REFUSED" in text
    assert "[weather-bot] teardown (storm over)" in text

    status, text = run(["sessions", *opts, "--json"])
    assert status == 0
    assert json.loads(text) == [{"session_id": "demo-1", "events": 20}]
    status, text = run(["sessions", *opts])
    assert "demo-1" in text and "20" in text

    status, text = run(["history", "demo-1", *opts, "--json"])
    records = [json.loads(line) for line in text.splitlines()]
    assert [r["sequence"] for r in records] == list(range(1, 21))
    assert records[0]["type"] == "SessionStarted"
    assert records[0]["data"]["metadata"] == {"purpose": "demo", "owner": "harbour"}
    assert "AccessDenied" in [r["type"] for r in records]
    assert {"event_id", "causation_id", "correlation_id", "occurred_at", "agent_id"} <= set(
        records[0]
    )
    assert [r["type"] for r in records[-2:]] == ["CursorRemoved", "AgentDetached"]

    status, text = run(["history", "demo-1", *opts, "--from", "2", "--to", "4"])
    assert status == 0
    assert len(text.splitlines()) == 1 + 3  # header + three events
    assert "AgentAttached" in text


def test_demo_json_output(nats_server: EmbeddedNats, journal_config: JournalConfig) -> None:
    status, text = run(
        ["demo", "--session-id", "d2", "--json", *external(nats_server, journal_config)]
    )
    assert status == 0
    report = json.loads(text)
    assert report["equal"] is True
    assert sorted(report["state"]["agents"]) == ["tide-bot", "viewer"]
    assert len(report["events"]) == 20
    assert report["audit_equal"] is True and report["intact"] is True


def test_two_demos_started_in_the_same_second_get_sessions_of_their_own(
    nats_server: EmbeddedNats, journal_config: JournalConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    import plantangenet.cli.demo as demo

    class Frozen(datetime):
        @classmethod
        def now(cls, tz: Any = None) -> Frozen:
            return cls(2026, 12, 5, 3, 33, 36, tzinfo=tz)

    monkeypatch.setattr(demo, "datetime", Frozen)
    reports = []
    for _ in range(2):
        status, text = run(["demo", "--json", *external(nats_server, journal_config)])
        assert status == 0
        reports.append(json.loads(text))
    ids = [r["session_id"] for r in reports]
    assert ids[0] != ids[1] and all(i.startswith("demo-20261205-033336-") for i in ids)
    assert all(r["equal"] and r["intact"] for r in reports)


def test_unknown_session_is_a_clear_error(
    nats_server: EmbeddedNats, journal_config: JournalConfig, capsys: object
) -> None:
    status, text = run(["history", "nope", *external(nats_server, journal_config)])
    assert status == 2 and text == ""  # no table header before the error
    # verify too: an unknown session has no events, its chain is not "broken".
    status, text = run(["verify", "nope", *external(nats_server, journal_config)])
    assert status == 2 and "BROKEN" not in text
    err = capsys.readouterr().err  # type: ignore[attr-defined]
    assert "no events for session 'nope'" in err


def test_a_range_with_no_events_says_so_and_where_the_session_ends(
    nats_server: EmbeddedNats, journal_config: JournalConfig, capsys: Any
) -> None:
    opts = external(nats_server, journal_config)
    assert run(["demo", "--session-id", "r1", "--json", *opts])[0] == 0
    capsys.readouterr()
    for bounds in (["--from", "100"], ["--from", "seq:100", "--to", "seq:200"]):
        status, text = run(["history", "r1", *opts, *bounds])
        assert status == 2 and text == ""
        err = capsys.readouterr().err
        assert "session 'r1' has no events from" in err
        assert "its last event: revision 20, sequence 20" in err
    status, _ = run(["history", "nope", *opts, "--from", "3"])
    assert status == 2 and "no events for session 'nope'" in capsys.readouterr().err


#: The command line in a process of its own, on the embedded server (no NATS_URL).
CLI = [sys.executable, "-m", "plantangenet"]
EMBEDDED_ENV = {k: v for k, v in os.environ.items() if k != "NATS_URL"}


def cli(*args: str, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    """``plantangenet *args`` in a process of its own; it must succeed."""
    done = subprocess.run(
        [*CLI, *args], env=EMBEDDED_ENV, capture_output=True, text=True, timeout=timeout
    )
    assert done.returncode == 0, done.stderr
    return done


def test_a_cli_command_joins_the_store_another_process_runs(tmp_path: Path) -> None:
    # As `plantangenet history` while `plantangenet serve` runs: one server on the store.
    store = str(tmp_path / "store")
    serve = subprocess.Popen(
        [*CLI, "serve", "--store-dir", store], env=EMBEDDED_ENV, stdout=subprocess.PIPE, text=True
    )
    try:
        assert serve.stdout is not None and "listening" in serve.stdout.readline()
        demo = cli("demo", "--session-id", "joined", "--store-dir", store)
        assert "joined)" in demo.stdout  # it did not start a second server
    finally:
        serve.terminate()
        serve.wait(30)
    listed = cli("sessions", "--json", "--store-dir", store, timeout=60)
    assert json.loads(listed.stdout) == [{"session_id": "joined", "events": 20}]


def test_cli_uses_an_embedded_server_when_no_url_is_given(tmp_path: Path) -> None:
    store = tmp_path / "store"
    demo = cli("demo", "--session-id", "emb", "--store-dir", str(store))
    assert "embedded nats-server at nats://127.0.0.1:" in demo.stdout
    # The store persists: a second process (a new embedded server) sees the session.
    listed = cli("sessions", "--json", "--store-dir", str(store), timeout=60)
    assert json.loads(listed.stdout) == [{"session_id": "emb", "events": 20}]
    assert (store / "jetstream").is_dir()


def test_explore_without_a_terminal_is_a_clear_error(
    nats_server: EmbeddedNats, journal_config: JournalConfig, capsys: object
) -> None:
    run(["demo", "--session-id", "d3", *external(nats_server, journal_config)])
    status, _ = run(["explore", "d3", *external(nats_server, journal_config)])
    assert status == 2  # stdin/stdout are not a terminal under pytest: refused, not crashed


def test_a_closed_pipe_ends_history_quietly(runtime: Plantangenet) -> None:
    # `plantangenet history SID | head`: more rows than a pipe holds, the reader leaves early.
    session = session_with_cursor(runtime, "piped")
    moves = [
        c.MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=float(i), end=i + 1.0)
        for i in range(2000)
    ]
    outcomes = session.submit_many(moves).result(timeout=60)
    assert all(not isinstance(o, Exception) for o in outcomes)
    for json_rows in (False, True):
        args = ["history", "piped", *log_options(runtime), *(["--json"] if json_rows else [])]
        reader = subprocess.Popen(
            [*CLI, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        assert reader.stdout is not None and reader.stderr is not None
        first = reader.stdout.readline()
        reader.stdout.close()  # as `head -1` does
        status = reader.wait(60)
        err = reader.stderr.read()
        assert first and status == 0, err
        assert err == "", err  # no traceback, no "exception was never retrieved"


# -- the stream's limits ---------------------------------------------------------------------


def stream_limits(server: EmbeddedNats, config: JournalConfig) -> tuple[int, int, int]:
    """``(max_bytes, max_msgs, replicas)`` of the stream, read by a runtime that sets none."""
    with Plantangenet.open(nats_url=server.url, journal=config) as pg:
        info = pg.run(pg.journal.js.stream_info(config.stream))
    return info.config.max_bytes, info.config.max_msgs, info.config.num_replicas


def test_every_command_that_opens_the_log_takes_the_stream_limits() -> None:
    subcommands = next(
        a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)
    )
    limits = {"--max-bytes", "--max-msgs", "--replicas"}
    for name, parser in subcommands.choices.items():
        options = {o for a in parser._actions for o in a.option_strings}
        if name == "nats-config":  # writes a server config; never opens the log
            assert not limits & options
        else:
            assert limits <= options, name


def test_limits_on_the_command_line_are_set_on_a_fresh_stream(
    nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    opts = external(nats_server, journal_config)
    status, _ = run(["sessions", *opts, "--max-bytes", "64M", "--max-msgs", "1000"])
    assert status == 0
    assert stream_limits(nats_server, journal_config) == (64 << 20, 1000, 1)
    status, _ = run(["sessions", *opts])  # none given: the stream keeps its own
    assert status == 0 and stream_limits(nats_server, journal_config) == (64 << 20, 1000, 1)
    status, _ = run(["sessions", *opts, "--max-msgs", "-1", "--replicas", "1"])
    assert status == 0 and stream_limits(nats_server, journal_config) == (64 << 20, -1, 1)


def test_limits_from_the_environment_and_the_options_over_them(
    nats_server: EmbeddedNats, journal_config: JournalConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PLANTANGENET_MAX_BYTES", "1048576")
    monkeypatch.setenv("PLANTANGENET_MAX_MSGS", "500")
    monkeypatch.setenv("PLANTANGENET_REPLICAS", "1")
    opts = external(nats_server, journal_config)
    status, _ = run(["sessions", *opts])
    assert status == 0 and stream_limits(nats_server, journal_config) == (1 << 20, 500, 1)
    status, _ = run(["sessions", *opts, "--max-msgs", "600"])
    assert status == 0 and stream_limits(nats_server, journal_config) == (1 << 20, 600, 1)
    # The library reads them too (JournalConfig.from_env).
    assert JournalConfig.from_env().max_msgs == 500


@pytest.mark.parametrize(
    ("option", "value", "problem"),
    [
        ("--max-bytes", "lots", "not a size: 'lots'"),
        ("--max-bytes", "-5", "-5 is negative"),
        ("--max-bytes", "0", "0 would mean no limit"),
        ("--max-msgs", "1k", "not a whole number: '1k'"),
        ("--max-msgs", "-2", "-2 is negative"),
        ("--replicas", "7", "7 is out of range; use 1 to 5"),
    ],
)
def test_a_bad_limit_is_a_clear_error(
    option: str, value: str, problem: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        run(["sessions", "--nats-url", "nats://127.0.0.1:1", option, value])
    assert exited.value.code == 2
    assert f"argument {option}: {problem}" in capsys.readouterr().err


def test_a_bad_limit_in_the_environment_is_a_clear_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("PLANTANGENET_MAX_MSGS", "many")
    status, text = run(["sessions", "--nats-url", "nats://127.0.0.1:1"])
    assert status == 2 and text == ""
    assert "$PLANTANGENET_MAX_MSGS: max_msgs: not a whole number: 'many'" in capsys.readouterr().err


def test_a_full_stream_refuses_the_command_lines_append_as_storage_exhausted(
    nats_server: EmbeddedNats, journal_config: JournalConfig, capsys: pytest.CaptureFixture[str]
) -> None:
    opts = external(nats_server, journal_config)
    status, _ = run(["demo", "--session-id", "full", *opts, "--max-msgs", "5"])
    assert status == 2
    assert "storage exhausted (the stream is full: maximum messages" in capsys.readouterr().err
    with Plantangenet.open(nats_url=nats_server.url, journal=journal_config) as pg:
        assert pg.sessions() == {"full": 5}  # what fitted, whole


def test_a_cli_command_keeps_the_streams_live_prefix(
    nats_server: EmbeddedNats, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Opening the journal gives the stream the live republish of its config: a CLI command
    # must use the deployment's prefix (option or environment), or bots following it would
    # see events late.
    config = JournalConfig(stream="LIVEPFX", subject_prefix="lp.events", live_prefix="lp.live")
    with Plantangenet.open(nats_url=nats_server.url, journal=config) as pg:
        pg.session("s").start()

        def republished() -> str:
            info = pg.run(pg.journal.js.stream_info("LIVEPFX"))
            return str(info.config.republish.dest)

        assert republished() == "lp.live.>" or republished().startswith("lp.live.")
        opts = ["--nats-url", nats_server.url, "--stream", "LIVEPFX", "--subject-prefix"]
        monkeypatch.setenv("PLANTANGENET_LIVE_PREFIX", "lp.live")
        assert run(["sessions", *opts, "lp.events"])[0] == 0
        assert republished().startswith("lp.live.")
        monkeypatch.delenv("PLANTANGENET_LIVE_PREFIX")
        assert run(["sessions", *opts, "lp.events", "--live-prefix", "lp.live"])[0] == 0
        assert republished().startswith("lp.live.")


def test_status_shows_server_store_and_stream_on_one_screen(
    runtime: Plantangenet, nats_server: EmbeddedNats, journal_config: JournalConfig
) -> None:
    runtime.session("st").start({"purpose": "status"})
    opts = [*external(nats_server, journal_config), "--live-prefix", journal_config.live_prefix]
    status, text = run(["status", *opts, "--json"])
    assert status == 0, text
    report = json.loads(text)
    assert report["server"]["version"] and report["server"]["url"] == nats_server.url
    assert report["server"]["health"] is None  # no monitoring URL given: not asked
    stream = report["stream"]
    assert stream["name"] == journal_config.stream
    assert (stream["messages"], stream["last_seq"]) == (1, 1)
    assert stream["max_bytes"] is None and stream["discard"] == "new"
    assert stream["replicas"] == 1 and stream["leader"]
    assert report["jetstream"]["storage_used"] >= stream["bytes"] > 0
    assert report["problems"] == []
    status, text = run(["status", *opts])
    assert status == 0, text
    assert f"nats-server {report['server']['version']}" in text
    assert f"stream     {journal_config.stream}: 1 events" in text
    assert "no problems found" in text
    assert len(text.splitlines()) <= 24  # one screen


def test_status_of_an_embedded_store_asks_its_health_and_disk(tmp_path: Path) -> None:
    store = tmp_path / "store"
    listed = cli("status", "--json", "--store-dir", str(store), timeout=60)
    report = json.loads(listed.stdout)
    assert report["server"]["health"] == "ok"
    assert report["server"]["monitor_url"].startswith("http://127.0.0.1:")
    assert report["disk"]["store_dir"] == str(store) and report["disk"]["free"] > 0
    assert report["jetstream"]["store_dir"] == str(store / "jetstream")
    assert report["jetstream"]["server_storage_limit"] > 0


def test_append_timeouts_from_the_options_and_the_environment(
    nats_server: EmbeddedNats,
    journal_config: JournalConfig,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:

    used: list[JournalConfig] = []
    opened = Plantangenet.open

    def recording(**kwargs: Any) -> Plantangenet:
        used.append(kwargs["journal"])
        return opened(**kwargs)

    monkeypatch.setattr(Plantangenet, "open", recording)
    opts = external(nats_server, journal_config)
    assert run(["sessions", *opts])[0] == 0
    assert (used[-1].ack_timeout, used[-1].attempt_timeout) == (10.0, 1.0)  # the defaults
    monkeypatch.setenv("PLANTANGENET_ATTEMPT_TIMEOUT", "0.5")
    monkeypatch.setenv("PLANTANGENET_ACK_TIMEOUT", "20")
    assert run(["sessions", *opts])[0] == 0
    assert (used[-1].ack_timeout, used[-1].attempt_timeout) == (20.0, 0.5)
    assert run(["sessions", *opts, "--attempt-timeout", "2.5"])[0] == 0  # an option wins
    assert (used[-1].ack_timeout, used[-1].attempt_timeout) == (20.0, 2.5)
    assert JournalConfig.from_env().attempt_timeout == 0.5  # the library reads them too
    # Bad values: a clear error, exit 2, from the option or from the environment.
    with pytest.raises(SystemExit) as exited:
        run(["sessions", *opts, "--ack-timeout", "soon"])
    assert exited.value.code == 2
    assert "argument --ack-timeout: not a number of seconds: 'soon'" in capsys.readouterr().err
    monkeypatch.setenv("PLANTANGENET_ATTEMPT_TIMEOUT", "0")
    assert run(["sessions", *opts]) == (2, "")
    err = capsys.readouterr().err
    assert "$PLANTANGENET_ATTEMPT_TIMEOUT: attempt_timeout: must be positive" in err


def test_a_nats_server_nobody_answers_at_fails_clearly_and_soon(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """nats-py retries a refused connection as long as its reconnect settings allow (for
    ever here): the first connection gives up after ``CONNECT_WAIT`` with a clear error,
    not a traceback, and no password in it."""
    import socket

    from plantangenet.nats import connect

    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setattr(connect, "CONNECT_WAIT", 1.5)
    url = f"nats://bot:secret-pw@127.0.0.1:{port}"
    assert main(["serve", "--nats-url", url]) == 2
    err = capsys.readouterr().err
    assert "cannot connect to NATS" in err and "within 1.5 s" in err
    assert "secret-pw" not in err and "Traceback" not in err


@pytest.mark.parametrize(
    ("command", "option", "bad", "good", "said"),
    [
        ("serve", "--per-principal", "0", "1", "must be 1 or more"),
        ("serve", "--first-window", "0", "1", "must be 1 or more"),
        ("serve", "--queued-per-principal", "-5", "0", "must be 0 or more"),
        ("serve", "--lanes", "0", "1024", "must be 1 to 1024"),
        ("serve", "--partitions", "-1", "0", "must be 0 to 4096"),
        ("serve", "--partitions", "4097", "4096", "must be 0 to 4096"),
        ("serve", "--metrics-port", "70000", "0", "must be 0 to 65535"),
        ("serve", "--lease-ttl", "0.1", "0.2", "must be more than 0.1 seconds"),
        ("serve", "--idle-timeout", "0", "0.5", "must be more than 0 seconds"),
        ("serve", "--idle-timeout", "nan", "inf?", "must be more than 0 seconds"),
        ("serve", "--compositor-timeout", "-1", "0", "must be more than 0 seconds (or 0: no"),
        ("serve", "--per-principal", "x", "16", "not a whole number"),
        ("nats-config", "--lanes", "0", "8", "must be 1 to 1024"),
        ("cursors", "--time", "nan", "-3.5", "must be a finite number"),
    ],
)
def test_a_number_out_of_range_is_refused_at_parse_time_naming_the_option(
    command: str, option: str, bad: str, good: str, said: str, capsys: Any
) -> None:
    """Once a traceback from deep inside (a ValueError of the service, an OverflowError
    of the metrics socket), or accepted and wrong (--idle-timeout 0 passivated every
    session at once)."""
    parser = build_parser()
    given = {"cursors": ["s"], "nats-config": ["--service-password", "p"]}.get(command, [])
    with pytest.raises(SystemExit) as exited:
        parser.parse_args([command, *given, option, bad])
    assert exited.value.code == 2
    assert f"argument {option}: {said}" in capsys.readouterr().err
    if good != "inf?":
        parsed = parser.parse_args([command, *given, option, good])
        assert str(getattr(parsed, option[2:].replace("-", "_"))) in (good, str(float(good)))
    else:
        with pytest.raises(SystemExit):
            parser.parse_args([command, *given, option, "inf"])
