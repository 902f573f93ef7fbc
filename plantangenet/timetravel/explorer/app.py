"""The explorer on Textual: the timeline table, the event / diff / why panes, a status line.

:class:`ExplorerApp` draws a :class:`~plantangenet.timetravel.explorer.model.Timeline` and
carries out the keys through an :class:`~plantangenet.timetravel.explorer.controller.Explorer`.
Wide terminals (120 columns or more) show the timeline beside the panes, narrower
ones above them, so no column of the timeline vanishes at 80x24. :func:`run` is
the entry point of ``plantangenet explore`` and of the bot-replay breakpoint.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, ClassVar

from rich.text import Text
from textual import work
from textual.app import App, ComposeResult
from textual.binding import Binding, BindingType
from textual.containers import Container, VerticalScroll
from textual.widgets import Footer, Static, TabbedContent, TabPane

from plantangenet.domain.decide import check_id
from plantangenet.errors import PlantangenetError
from plantangenet.events.envelope import Envelope
from plantangenet.timetravel.explorer.controller import Explorer, Prompt
from plantangenet.timetravel.explorer.live import LiveFeed
from plantangenet.timetravel.explorer.model import Timeline, open_timeline
from plantangenet.timetravel.explorer.text import why_lines
from plantangenet.timetravel.explorer.widgets import (
    REFUSAL_STYLE,
    HelpScreen,
    PromptInput,
    TimelineTable,
    changes_text,
    event_text,
)
from plantangenet.timetravel.history import Position, StreamSequence, Why, why

if TYPE_CHECKING:
    from plantangenet.runtime import Plantangenet

__all__ = ["ExplorerApp", "WhySource", "run"]

#: Answers ``why`` for an event (blocking: the app calls it on a worker thread).
WhySource = Callable[[Envelope], Why]


class ExplorerApp(App[int]):
    """Explore a :class:`Timeline`; ``feed`` appends live events, ``why_source`` answers ``w``."""

    TITLE = "plantangenet explore"
    # Its footer entry would push the explorer's own keys off an 80-column footer.
    ENABLE_COMMAND_PALETTE = False
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (120, "-wide")]  # noqa: RUF012
    CSS = """
    #title { height: 1; background: $primary; color: $text; text-style: bold; }
    #status { height: 1; background: $panel; }
    #main { height: 1fr; }
    #timeline { height: 1fr; }
    #panes { height: 1fr; }
    .-narrow #main { layout: vertical; }
    .-narrow #timeline { height: 45%; }
    .-wide #main { layout: horizontal; }
    .-wide #timeline { width: 64; height: 1fr; }
    .-wide #panes { width: 1fr; }
    #prompt { display: none; height: 1; border: none; padding: 0 1; }
    #prompt.-active { display: block; }
    TabPane { padding: 0; }
    #event-text, #diff-text, #why-text { width: 100%; }
    """
    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("q", "quit_explorer", "Quit"),
        Binding("question_mark", "help", "Help"),
        Binding("slash", "prompt('search')", "Search"),
        Binding("n", "search(1)", "Next hit", show=False),
        Binding("N", "search(-1)", "Prev hit", show=False),
        Binding("t", "prompt('filter')", "Filter"),
        Binding("g", "prompt('jump')", "Jump", show=False),
        Binding("f", "follow", "Follow"),
        Binding("e", "pane('event')", "Event", show=False),
        Binding("d", "pane('diff')", "Diff"),
        Binding("w", "pane('why')", "Why"),
        Binding("c", "copy_id", "Copy id"),
        Binding("j", "step(1)", "Next", show=False),
        Binding("k", "step(-1)", "Previous", show=False),
        Binding("less_than_sign,home", "end(0)", "First", show=False),
        Binding("greater_than_sign,G,end", "end(1)", "Last", show=False),
        Binding("right_square_bracket", "scroll_pane(1)", "Scroll down", show=False),
        Binding("left_square_bracket", "scroll_pane(-1)", "Scroll up", show=False),
    ]

    def __init__(
        self,
        timeline: Timeline,
        *,
        feed: LiveFeed | None = None,
        why_source: WhySource | None = None,
        poll_interval: float = 0.1,
    ) -> None:
        super().__init__()
        self.timeline = timeline
        self.explorer = Explorer(timeline)
        self.feed = feed
        self.why_source = why_source
        self.poll_interval = poll_interval
        self.prompting: Prompt | None = None
        self._why: tuple[int, Text] | None = None  # (event position, answer) last shown

    # -- layout ---------------------------------------------------------------------------

    def compose(self) -> ComposeResult:
        yield Static(id="title")
        with Container(id="main"):
            yield TimelineTable(id="timeline")
            with TabbedContent(id="panes", initial="event"):
                for pane, label in (("event", "Event"), ("diff", "Diff"), ("why", "Why")):
                    with TabPane(label, id=pane), VerticalScroll(id=f"{pane}-scroll"):
                        yield Static(id=f"{pane}-text")
        yield Static(id="status")
        yield PromptInput(id="prompt")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one(TimelineTable)
        table.load(self.timeline)
        self._sync_table()
        self._refresh()
        table.focus()
        if self.feed is not None:
            self.set_interval(self.poll_interval, self._pull)

    @property
    def table(self) -> TimelineTable:
        return self.query_one(TimelineTable)

    @property
    def pane(self) -> str:
        """The pane shown: ``event``, ``diff`` or ``why``."""
        return self.query_one(TabbedContent).active

    def _live(self) -> str:
        return self.feed.state if self.feed is not None else "not live"

    def _refresh(self) -> None:
        """Title, panes and status after anything changed."""
        t = self.timeline
        self.query_one("#title", Static).update(
            f" plantangenet explore  {t.session_id}  ({len(t)} events)"
        )
        self.query_one("#event-text", Static).update(event_text(t))
        self.query_one("#diff-text", Static).update(changes_text(t))
        if self.pane == "why":
            self._load_why()
        status = Text(" ")
        if self.prompting is not None:
            status.append(self.explorer.prompt_label(self.prompting), style="bold")
            status.append(" (Enter: go, Escape: cancel)")
        else:
            if self.explorer.message:
                status.append(self.explorer.message, style="bold")
                status.append(" | ")
            status.append(self.explorer.status(self._live()))
        self.query_one("#status", Static).update(status)

    def _sync_table(self) -> None:
        """Show the selected event's row (after the model moved it)."""
        self.table.show_cursor()

    def _changed(self) -> None:
        self._sync_table()
        self._refresh()

    # -- the table --------------------------------------------------------------------

    def on_timeline_table_chosen(self, event: TimelineTable.Chosen) -> None:
        """Keys or a click on the table chose an event: select it."""
        self.explorer.message = ""
        self.timeline.select(event.index)
        self._changed()

    def _pull(self) -> None:
        """New events from the live feed."""
        feed = self.feed
        if feed is None:
            return
        error = feed.error
        if self.timeline.extend(feed.drain()) or feed.error is not error:
            self.table.add_new(self.timeline)
            self._changed()

    # -- actions ----------------------------------------------------------------------

    def action_quit_explorer(self) -> None:
        self.exit(0)

    def action_help(self) -> None:
        self.push_screen(HelpScreen())

    def action_step(self, delta: int) -> None:
        self.explorer.step(delta)
        self._changed()

    def action_end(self, last: int) -> None:
        if last:
            self.timeline.last()
        else:
            self.timeline.first()
        self.explorer.message = ""
        self._changed()

    def action_follow(self) -> None:
        self.explorer.toggle_follow()
        self._changed()

    def action_search(self, direction: int) -> None:
        self.explorer.search_next(direction)
        self._changed()

    def action_pane(self, pane: str) -> None:
        self.query_one(TabbedContent).active = pane
        if pane == "why":
            self._load_why()

    def action_scroll_pane(self, direction: int) -> None:
        scroll = self.query_one(f"#{self.pane}-scroll", VerticalScroll)
        if direction > 0:
            scroll.scroll_page_down(animate=False)
        else:
            scroll.scroll_page_up(animate=False)

    def action_copy_id(self) -> None:
        selected = self.timeline.selected
        if selected is None:
            self.notify("no event selected", severity="warning")
            return
        self.copy_to_clipboard(selected.event_id)
        self.notify(f"copied event id {selected.event_id}", title=f"seq {selected.sequence}")

    def on_tabbed_content_tab_activated(self, event: TabbedContent.TabActivated) -> None:
        if event.pane.id == "why":
            self._load_why()

    # -- prompts ----------------------------------------------------------------------

    def action_prompt(self, prompt: Prompt) -> None:
        self.prompting = prompt
        field = self.query_one(PromptInput)
        field.placeholder = self.explorer.prompt_label(prompt)
        field.value = self.explorer.search if prompt == "search" else ""
        field.add_class("-active")
        field.focus()
        self._refresh()

    def _close_prompt(self) -> None:
        self.prompting = None
        field = self.query_one(PromptInput)
        field.remove_class("-active")
        field.value = ""
        self.table.focus()
        self._refresh()

    def on_input_submitted(self, event: PromptInput.Submitted) -> None:
        prompt = self.prompting
        self._close_prompt()
        if prompt is None:
            return
        before = self.timeline.filter
        self.explorer.submit(prompt, event.value)
        if self.timeline.filter != before:
            self.table.load(self.timeline)
        self._changed()

    def on_prompt_input_cancelled(self, _: PromptInput.Cancelled) -> None:
        self._close_prompt()

    # -- why ------------------------------------------------------------------------

    def _load_why(self) -> None:
        """Show why the selected event is in the log (computed on a worker thread)."""
        t = self.timeline
        shown = self.query_one("#why-text", Static)
        if self._why is not None and self._why[0] == t.index:
            shown.update(self._why[1])
            return
        selected = t.selected
        if selected is None or self.why_source is None:
            shown.update("why: not available here" if selected else "no event selected")
            return
        shown.update(f"why seq {selected.sequence}: reading the session…")
        self._compute_why(t.index, selected)

    @work(thread=True, exclusive=True, group="why")
    def _compute_why(self, index: int, envelope: Envelope) -> None:
        assert self.why_source is not None
        try:
            text = Text("\n".join(why_lines(self.why_source(envelope))))
            text.highlight_words(["REFUSED"], REFUSAL_STYLE)
        except Exception as exc:  # shown in the pane, never fatal
            text = Text(f"why failed: {exc}", style=REFUSAL_STYLE)
        self.call_from_thread(self._show_why, index, text)

    def _show_why(self, index: int, text: Text) -> None:
        self._why = (index, text)
        if self.timeline.index == index:
            self.query_one("#why-text", Static).update(text)


def run(runtime: Plantangenet, session_id: str, at: Position | None = None) -> int:
    """Explore ``session_id`` interactively on this terminal; returns the exit status (0).

    Loads the session's history (opened on the event at ``at``, default the last),
    follows it live, and runs the app until ``q``.

    :raises UnknownSession: the session has no events.
    :raises PlantangenetError: standard input or output is not a terminal.
    """
    check_id(session_id, "session_id")
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise PlantangenetError("explore needs an interactive terminal (try: history)")
    timeline = open_timeline(runtime, session_id, at)
    last = timeline.events[-1].sequence or 0
    feed = LiveFeed(runtime, session_id, from_sequence=last + 1).start()

    def answer(envelope: Envelope) -> Why:
        position = StreamSequence(envelope.sequence or 0)
        result: Why = runtime.run(why(runtime.journal, session_id, position))
        return result

    try:
        status = ExplorerApp(timeline, feed=feed, why_source=answer).run()
    finally:
        feed.stop()
    return status or 0
