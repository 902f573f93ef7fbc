"""The explorer's widgets: the timeline table, the prompt line, the help screen, and the
coloured text of the panes (refusals in red, policy changes and role grants highlighted)."""

from __future__ import annotations

from datetime import UTC
from typing import ClassVar

from rich.style import Style
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import VerticalScroll
from textual.events import Click, Key
from textual.geometry import Size
from textual.message import Message
from textual.screen import ModalScreen
from textual.scroll_view import ScrollView
from textual.strip import Strip
from textual.widgets import Input, Static

from plantangenet.timetravel.explorer.model import Timeline
from plantangenet.timetravel.explorer.text import Change, event_lines, state_lines

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
#: Width of the EVENT column (the longest event type name).
TYPE_WIDTH = 22
#: Width of a row: every column whole.
ROW_WIDTH = 1 + 6 + 2 + 14 + 2 + TYPE_WIDTH + 2 + BY_WIDTH

_REFUSED = ("Denied", "Refused")  # AccessDenied, ChargeRefused, ChemRefused, as history shows them
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


class TimelineTable(ScrollView, can_focus=True):
    """The events the cursor can stop on, one row each, under a header that stays put.

    Only the rows on screen are drawn (a long session opens at once). The widget
    never moves the model: keys and clicks post :class:`Chosen` with the
    timeline position the user asked for, and the app selects it.
    """

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("down", "move(1)", "Next", show=False),
        Binding("up", "move(-1)", "Previous", show=False),
        Binding("pagedown", "page(1)", "Page down", show=False),
        Binding("pageup", "page(-1)", "Page up", show=False),
        Binding("home", "app.end(0)", "First", show=False),
        Binding("end", "app.end(1)", "Last", show=False),
    ]
    DEFAULT_CSS = """
    TimelineTable { background: $surface; }
    TimelineTable > .timeline--header { text-style: bold; background: $panel; }
    TimelineTable > .timeline--cursor { background: $block-cursor-background; }
    TimelineTable:focus > .timeline--cursor { background: $block-cursor-background; }
    """
    COMPONENT_CLASSES: ClassVar[set[str]] = {"timeline--header", "timeline--cursor"}

    class Chosen(Message):
        """The user picked the event at ``index`` (a position in the timeline's events)."""

        def __init__(self, index: int) -> None:
            super().__init__()
            self.index = index

    def __init__(self, *, id: str | None = None) -> None:
        super().__init__(id=id)
        self._timeline: Timeline | None = None

    # -- rows ----------------------------------------------------------------------

    @property
    def row_count(self) -> int:
        return 0 if self._timeline is None else len(self._timeline.matching)

    @property
    def cursor_row(self) -> int:
        """The row of the selected event (-1: it is not among the rows)."""
        t = self._timeline
        if t is None or not t.matching:
            return -1
        row = t.position()
        return row if row < len(t.matching) and t.matching[row] == t.index else -1

    def index_at(self, row: int) -> int:
        """The timeline position of row ``row``."""
        assert self._timeline is not None
        return self._timeline.matching[row]

    def row(self, row: int) -> Text:
        """Row ``row`` as text, styled as its event stands out."""
        assert self._timeline is not None
        envelope = self._timeline.events[self._timeline.matching[row]]
        at = envelope.occurred_at.astimezone(UTC)
        cells = (
            f"{envelope.sequence or 0:>6}",
            f"{at:%m-%d %H:%M:%S}",
            envelope.type_name,
            _by(envelope.agent_id),
        )
        return Text(_line(cells), style=event_style(envelope.type_name))

    def load(self, timeline: Timeline) -> None:
        """Show the events ``timeline`` stops on (after a filter changed them)."""
        self._timeline = timeline
        self._resize()
        self.scroll_to(y=0, animate=False)
        self.show_cursor()

    def add_new(self, timeline: Timeline) -> int:
        """Take in events appended live; returns how many rows were added."""
        before = self.virtual_size.height - 1
        self._timeline = timeline
        self._resize()
        return self.row_count - max(before, 0)

    def _resize(self) -> None:
        self.virtual_size = Size(ROW_WIDTH, self.row_count + 1)  # + the header
        self.refresh()

    def show_cursor(self) -> None:
        """Scroll so that the selected event's row is on screen."""
        row = self.cursor_row
        if row < 0:
            self.refresh()
            return
        rows = max(self.scrollable_content_region.height - 1, 1)
        top = round(self.scroll_offset.y)
        if row < top:
            self.scroll_to(y=row, animate=False, immediate=True)
        elif row >= top + rows:
            self.scroll_to(y=row - rows + 1, animate=False, immediate=True)
        self.refresh()

    def on_resize(self) -> None:
        self.show_cursor()

    # -- drawing -------------------------------------------------------------------

    def render_line(self, y: int) -> Strip:
        width = self.scrollable_content_region.width
        scroll_x, scroll_y = round(self.scroll_offset.x), round(self.scroll_offset.y)
        base = self.rich_style
        if y == 0:
            line = _line(COLUMNS)
            styles = [self.get_component_rich_style("timeline--header")]
        else:
            row = scroll_y + y - 1
            if not 0 <= row < self.row_count:
                return Strip.blank(width, base)
            shown = self.row(row)
            line = shown.plain
            own = Style.parse(str(shown.style))
            styles = [own]
            if row == self.cursor_row:  # the cursor's background, the event's own colour
                styles = [self.get_component_rich_style("timeline--cursor"), own]
        # Spans, not Text.style: a Text's own style is not in the segments it renders.
        text = Text(line.ljust(max(ROW_WIDTH, width + scroll_x)))
        for style in (base, *styles):
            text.stylize(style)
        strip = Strip(text.render(self.app.console, end=""))
        return strip.crop(scroll_x, scroll_x + width)

    # -- input ---------------------------------------------------------------------

    def _choose_row(self, row: int) -> None:
        if self.row_count:
            self.post_message(self.Chosen(self.index_at(max(min(row, self.row_count - 1), 0))))

    def action_move(self, delta: int) -> None:
        row = self.cursor_row
        if row < 0:  # the selected event is filtered out: from where it would be
            assert self._timeline is not None
            row = self._timeline.position() - (1 if delta > 0 else 0)
        self._choose_row(row + delta)

    def action_page(self, direction: int) -> None:
        rows = max(self.scrollable_content_region.height - 1, 1)
        self.action_move(direction * rows)

    def on_click(self, event: Click) -> None:
        offset = event.get_content_offset(self)
        if offset is not None and offset.y >= 1:
            self._choose_row(round(self.scroll_offset.y) + offset.y - 1)


def _line(cells: tuple[str, ...]) -> str:
    seq, when, kind, by = cells
    return f" {seq:>6}  {when:<14}  {kind:<{TYPE_WIDTH}}  {by}"


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
    text = Text(
        f"seq {selected.sequence} {selected.type_name}: ",
        style=event_style(selected.type_name) or "bold",
    )
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
  Down j / Up k     next / previous event      PgDn PgUp  a page
  Home < / End > G  first / last event         click      select a row
  g                 jump to a sequence (42, #42) or an ISO time
[b]finding[/b]
  /                 search event type, agent, payload
  n / N             next / previous search hit (wraps around)
  t                 filter: types or globs (cursor*), agent:ID
                    (the same syntax as history --type/--agent)
[b]the selected event[/b]
  e  d  w           event and state after it / what it changed / why
  c                 copy its event id          \\[ ]        scroll pane
[b]live[/b]
  f                 follow new events on / off
  ?  q              this help / quit
[#ff4d4d]red[/]: refusals   [#c38bff]violet[/]: policy changes   [#ffd75f]yellow[/]: role grants
[dim]any key closes this help[/dim]"""


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

    def on_key(self, event: Key) -> None:
        event.stop()  # the key only closes the help (no binding of the screen below sees it)
        event.prevent_default()
        self.dismiss()

    def on_click(self) -> None:
        self.dismiss()
