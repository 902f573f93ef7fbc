"""The explorer's widgets: the timeline table, the prompt line, the help screen, and the
coloured text of the panes (refusals in red, policy changes and role grants highlighted)."""

from __future__ import annotations

from datetime import UTC
from typing import ClassVar

from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.coordinate import Coordinate
from textual.message import Message
from textual.screen import ModalScreen
from textual.widgets import DataTable, Input, Static

from plantangenet.events.envelope import Envelope
from plantangenet.explorer.model import Timeline
from plantangenet.explorer.text import Change, event_lines, state_lines

__all__ = [
    "COLUMNS",
    "HelpScreen",
    "PromptInput",
    "TimelineTable",
    "changes_text",
    "event_style",
    "event_text",
]

#: The timeline's columns (each always shown, at 80 columns too).
COLUMNS = ("SEQ", "TIME (UTC)", "EVENT", "BY")
#: Longest agent id shown whole in the BY column.
BY_WIDTH = 14

_REFUSED = ("Denied", "Refused", "Quarantined")
# Explicit colours: a terminal palette may draw ANSI red and magenta alike.
REFUSAL_STYLE = "bold #ff4d4d"
_HIGHLIGHTED = {"PolicyChanged": "bold #c38bff", "RoleGranted": "bold #ffd75f"}


def event_style(type_name: str) -> str:
    """How an event type stands out: refusals red, policy changes and role grants highlighted."""
    if type_name.endswith(_REFUSED):
        return REFUSAL_STYLE
    return _HIGHLIGHTED.get(type_name, "")


def _by(agent_id: str | None) -> str:
    by = agent_id or "-"
    return by if len(by) <= BY_WIDTH else by[: BY_WIDTH - 1] + "…"


class TimelineTable(DataTable[Text]):
    """The events the cursor can stop on, one row each (keyed by position in the timeline)."""

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("home", "app.end(0)", "First", show=False),
        Binding("end", "app.end(1)", "Last", show=False),
    ]

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id, cursor_type="row", zebra_stripes=False)

    def on_mount(self) -> None:
        for label in COLUMNS:
            self.add_column(label, key=label)

    def add_event(self, index: int, envelope: Envelope) -> None:
        style = event_style(envelope.type_name)
        at = envelope.occurred_at.astimezone(UTC)
        self.add_row(
            Text(f"{envelope.sequence or 0:>6}", style=style),
            Text(f"{at:%m-%d %H:%M:%S}", style=style),
            Text(envelope.type_name, style=style),
            Text(_by(envelope.agent_id), style=style),
            key=str(index),
        )

    def load(self, timeline: Timeline) -> None:
        """Rows for every event ``timeline`` stops on (replacing any shown)."""
        self.clear()
        events = timeline.events
        for index in timeline.matching:
            self.add_event(index, events[index])

    def add_new(self, timeline: Timeline) -> int:
        """Rows for the matching events not shown yet (appended live); returns how many."""
        new = timeline.matching[self.row_count :]
        for index in new:
            self.add_event(index, timeline.events[index])
        return len(new)

    def index_at(self, row: int) -> int:
        """The timeline position of row ``row``."""
        key = self.coordinate_to_cell_key(Coordinate(row, 0)).row_key
        return int(key.value or 0)


def event_text(timeline: Timeline) -> Text:
    """The event pane: the selected event, then the state right after it."""
    text = Text()
    selected = timeline.selected
    if selected is None:
        text.append("no event selected\n", style="bold")
    else:
        head, *rest = event_lines(selected)
        text.append(head + "\n", style=event_style(selected.type_name) or "bold")
        text.append(f"id {selected.event_id}\n", style="dim")
        for line in rest:
            text.append(line + "\n")
    text.append(f"\nstate after seq {timeline.state.sequence}:\n", style="bold")
    for line in state_lines(timeline.state):
        text.append(f"  {line}\n")
    return text


_CHANGE_STYLE = {"added": "green", "removed": "red", "changed": "yellow"}


def changes_text(timeline: Timeline) -> Text:
    """The diff pane: what the selected event changed, one coloured line per change."""
    selected = timeline.selected
    if selected is None:
        return Text("no event selected")
    changes: list[Change] = timeline.changes
    text = Text(f"seq {selected.sequence} {selected.type_name}: ", style="bold")
    text.append(f"{len(changes)} change(s)\n")
    if not changes:
        text.append("  (no change to the state)\n", style="dim")
    for change in changes:
        text.append(f"{change}\n", style=_CHANGE_STYLE[change.kind])
    return text


class PromptInput(Input):
    """The one-line prompt (jump, filter, search); Escape cancels it."""

    BINDINGS: ClassVar[list[BindingType]] = [Binding("escape", "cancel", "Cancel", show=False)]

    class Cancelled(Message):
        """The prompt was dismissed without an answer."""

    def action_cancel(self) -> None:
        self.post_message(self.Cancelled())


HELP = """\
[b]plantangenet explore[/b]: step through a session's history

[b]moving[/b]
  Down j / Up k     next / previous event
  PgDn PgUp         a page down / up
  Home < / End > G  first / last event
  click a row       select it
  g                 jump to a sequence (42, #42) or an ISO time

[b]finding[/b]
  /                 search event type, agent, payload
  n / N             next / previous search hit (wraps around)
  t                 filter: types or globs (cursor*), agent:ID
                    (the same syntax as history --type/--agent)

[b]the selected event[/b]
  e                 event and the state after it
  d                 diff: what the event changed
  w                 why: its command, grounds and request
  c                 copy its event id
  \\[ ]               scroll the pane

[b]live[/b]
  f                 follow new events on / off

  ?                 this help    q  quit
  [#ff4d4d]red[/]: refusals   [#c38bff]violet[/]: policy changes   \
[#ffd75f]yellow[/]: role grants

any key closes this help"""


class HelpScreen(ModalScreen[None]):
    """``?``: the keys."""

    DEFAULT_CSS = """
    HelpScreen { align: center middle; }
    HelpScreen > VerticalScroll {
        width: 76; max-width: 100%; height: auto; max-height: 100%;
        border: round $accent; background: $surface; padding: 0 1;
    }
    """

    def compose(self) -> ComposeResult:
        with VerticalScroll():
            yield Static(HELP, id="help-text")

    def on_key(self) -> None:
        self.dismiss()

    def on_click(self) -> None:
        self.dismiss()
