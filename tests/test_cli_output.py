"""The command line on a terminal: rich tables that fit, refusals in red, progress on stderr.

Piped output (what every other CLI test reads) stays plain text; these tests give the
commands a stream that says it is a terminal, or render to a rich console forced
into terminal mode, at 80 columns.
"""

from __future__ import annotations

import io
import re
import sys

import pytest
from rich.console import Console
from rich.text import Text

import plantangenet.domain.commands as c
from plantangenet.cli import main, output
from plantangenet.cli.output import REFUSAL, Progress, RowWriter
from plantangenet.cli.reading import HISTORY_COLUMNS, history_row
from plantangenet.errors import AccessRefused
from plantangenet.runtime import Plantangenet
from tests.conftest import log_options, session_with_cursor

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
RED = "\x1b[31m"


class Terminal(io.StringIO):
    """What a command sees when its output is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def terminal_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """An 80-column colour terminal, whatever the environment running the tests."""
    monkeypatch.setenv("COLUMNS", "80")
    monkeypatch.setenv("TERM", "xterm-256color")
    for name in ("NO_COLOR", "FORCE_COLOR", "TTY_COMPATIBLE", "TTY_INTERACTIVE", "COLORTERM"):
        monkeypatch.delenv(name, raising=False)


def wide_policy_session(runtime: Plantangenet, session_id: str = "wide") -> None:
    """A session with a PolicyChanged of many statements (a ~1 kB row) and an AccessDenied."""
    session = runtime.session(session_id)
    session.start()
    statements = [
        {
            "id": f"statement-number-{i}",
            "effect": "allow",
            "roles": [f"role-{i}"],
            "actions": ["cursor.*", "metadata.change"],
            "resources": [f"axis.ocean.station-{i}.*", f"metadata.note-{i}"],
        }
        for i in range(12)
    ]
    session.change_policy(replace=statements)
    session.attach("viewer", "client")
    with pytest.raises(AccessRefused):
        session.change_metadata({"status": "observing"}, issued_by="viewer")


def lines(rendered: str) -> list[str]:
    """What was drawn, line by line (a progress bar redraws its line after a carriage return)."""
    return [line for line in re.split(r"[\r\n]", ANSI.sub("", rendered)) if line]


def test_a_policy_changed_row_fits_80_columns_and_a_refusal_is_red(
    runtime: Plantangenet, terminal_env: None
) -> None:
    wide_policy_session(runtime)
    envelopes = runtime.history("wide")
    policy = next(e for e in envelopes if e.type_name == "PolicyChanged")
    assert len(history_row(policy, 2)[0][-1]) > 1000  # the details that made 1 kB rows

    out = io.StringIO()
    console = Console(file=out, force_terminal=True, width=80, color_system="standard")
    rows = RowWriter(console, HISTORY_COLUMNS)
    rows.header()
    for revision, envelope in enumerate(envelopes, 1):
        rows.row(*history_row(envelope, revision))
    shown = lines(out.getvalue())
    assert len(shown) == 1 + len(envelopes)  # one line per event: nothing wraps
    assert all(Text(line).cell_len <= 80 for line in shown), shown
    (policy_line,) = [line for line in shown if "PolicyChanged" in line]
    assert policy_line.endswith("…") and "statements=" in policy_line
    assert policy_line.split()[:2] == ["2", "2"] and policy_line.startswith("     2")
    (denied,) = [line for line in out.getvalue().split("\n") if "AccessDenied" in line]
    assert denied.startswith(RED)
    (attached,) = [line for line in out.getvalue().split("\n") if "AgentAttached" in line]
    assert RED not in attached
    assert history_row(envelopes[-1], len(envelopes))[1] == REFUSAL


def test_history_on_a_terminal_fits_and_piped_stays_plain(
    runtime: Plantangenet, terminal_env: None
) -> None:
    wide_policy_session(runtime)
    tty, piped = Terminal(), io.StringIO()
    assert main(["history", "wide", *log_options(runtime)], tty) == 0
    assert main(["history", "wide", *log_options(runtime)], piped) == 0
    shown = lines(tty.getvalue())
    assert all(Text(line).cell_len <= 80 for line in shown)
    assert any(
        line.startswith(RED) and "AccessDenied" in line for line in tty.getvalue().split("\n")
    )
    plain = piped.getvalue()
    assert "\x1b" not in plain
    assert max(len(line) for line in plain.splitlines()) > 1000  # as ever, for scripts
    assert plain.splitlines()[0].split() == [
        "REV",
        "SEQ",
        "TIME",
        "(UTC)",
        "EVENT",
        "BY",
        "DETAILS",
    ]
    assert len(shown) == len(plain.splitlines())  # the same rows, fitted


def test_audit_denials_are_red_on_a_terminal_and_json_is_never_styled(
    runtime: Plantangenet, terminal_env: None
) -> None:
    wide_policy_session(runtime)
    tty, as_json = Terminal(), Terminal()
    assert main(["audit", "wide", *log_options(runtime)], tty) == 0
    assert main(["audit", "wide", "--json", *log_options(runtime)], as_json) == 0
    (denied,) = [line for line in tty.getvalue().split("\n") if "denied" in ANSI.sub("", line)]
    assert denied.startswith(RED)
    assert all(Text(line).cell_len <= 80 for line in lines(tty.getvalue()))
    assert "\x1b" not in as_json.getvalue()
    assert '"outcome": "denied"' in as_json.getvalue()


def test_no_color_keeps_the_layout_and_drops_the_colours(
    runtime: Plantangenet, terminal_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    wide_policy_session(runtime)
    monkeypatch.setenv("NO_COLOR", "1")
    tty = Terminal()
    assert main(["history", "wide", *log_options(runtime)], tty) == 0
    rendered = tty.getvalue()
    assert RED not in rendered and "\x1b[3" not in rendered  # no foreground colour at all
    shown = lines(rendered)
    assert all(Text(line).cell_len <= 80 for line in shown)
    assert any("AccessDenied" in line for line in shown)
    assert any(line.endswith("…") for line in shown)  # still fitted by rich


def test_the_progress_bar_draws_its_last_line_once() -> None:
    err = io.StringIO()
    console = Console(file=err, force_terminal=True, width=80)
    progress = Progress(console=console, auto_refresh=False)
    for at in range(1000, 6000, 1000):  # the journal's reports, every 1,000 events...
        progress(at, 5000)
    progress(5000, 5000)  # ... and once more at the end of the read
    progress(5000, 5000)  # (a second read of the same command, over at once)
    progress.close()
    progress.close()
    shown = lines(err.getvalue())
    assert sum("5000/5000" in line for line in shown) == 1, shown
    assert "/s" in shown[-1]  # the rate


def test_a_short_read_shows_no_progress() -> None:
    err = io.StringIO()
    progress = Progress(console=Console(file=err, force_terminal=True, width=80))
    progress(12, 12)  # a read of 12 events reports only its end
    progress.close()
    assert err.getvalue() == ""
    assert not Progress(io.StringIO()).enabled  # stderr not a terminal: no bar


def long_session(runtime: Plantangenet, session_id: str = "long") -> int:
    """A session of 2,503 events (the journal reports progress every 1,000); its last sequence."""
    session = session_with_cursor(runtime, session_id)
    moves = [
        c.MoveCursor(agent_id="bot", cursor_id="c", axes=("x",), start=float(i), end=i + 1.0)
        for i in range(2500)
    ]
    assert all(not isinstance(o, Exception) for o in session.submit_many(moves).result(60))
    runtime.stop_session(session_id)
    end: int = runtime.run(runtime.journal.last_sequence(session_id))
    return end


def test_verify_progress_goes_to_stderr_once_and_stdout_stays_plain(
    runtime: Plantangenet, terminal_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    end = long_session(runtime)
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    monkeypatch.setattr(output, "AUTO_REFRESH", False)  # drawn at start and stop only
    out = io.StringIO()
    assert main(["verify", "long", *log_options(runtime)], out) == 0
    assert out.getvalue() == "session long: history intact (2503 events verified)\n"
    shown = lines(err.getvalue())
    final = [line for line in shown if f"{end}/{end}" in line]
    assert len(final) == 1, shown
    assert "100%" in final[0]


def test_errors_are_plain_when_stderr_is_piped(
    runtime: Plantangenet, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["history", "nothing-here", *log_options(runtime)], io.StringIO()) == 2
    assert capsys.readouterr().err == "plantangenet: error: no events for session 'nothing-here'\n"


def test_errors_are_red_on_a_terminal(
    runtime: Plantangenet, terminal_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    assert main(["history", "nothing-here", *log_options(runtime)], io.StringIO()) == 2
    assert err.getvalue().startswith(RED)
    assert "no events for session 'nothing-here'" in ANSI.sub("", err.getvalue())


def test_replay_agent_shows_its_progress_on_stderr_unless_it_stops_at_breakpoints(
    runtime: Plantangenet, terminal_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    end = long_session(runtime, "replayed")
    monkeypatch.setattr(output, "AUTO_REFRESH", False)
    replay = ["replay-agent", "replayed", "bot", "--behaviour", "tests.replay_bots:Recorder"]
    err = Terminal()
    monkeypatch.setattr(sys, "stderr", err)
    out = io.StringIO()
    status = main([*replay, *log_options(runtime)], out)
    assert status == 0, out.getvalue()  # (the commands were the owner's)
    final = [line for line in lines(err.getvalue()) if f"{end}/{end}" in line]
    assert len(final) == 1 and final[0].startswith("replaying"), err.getvalue()
    assert "\x1b" not in out.getvalue()


def test_the_columns_fit_the_width_and_shrink_only_when_they_must() -> None:
    gaps = output.GAP * (len(HISTORY_COLUMNS) - 1)
    wide = output.fit(HISTORY_COLUMNS, 200)
    assert wide[:-1] == [column.width for column in HISTORY_COLUMNS[:-1]]  # room: as designed
    assert sum(wide) + gaps == 200
    narrow = output.fit(HISTORY_COLUMNS, 80)
    assert sum(narrow) + gaps == 80 and narrow[-1] == HISTORY_COLUMNS[-1].minimum
    assert all(w >= (c.minimum or c.width) for w, c in zip(narrow, HISTORY_COLUMNS, strict=True))
