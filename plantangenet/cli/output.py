"""How the commands write: rich on a terminal, plain text when piped, JSON with ``--json``.

On a terminal (and without ``--json``) tables fit the terminal's width (a long cell,
such as a ``PolicyChanged`` event's details, is cut short with an ellipsis instead of
making a row a kilobyte wide) and refusals are red; rich leaves out colour when
``NO_COLOR`` is set. Anything else (a pipe, a file, a test's ``StringIO``) gets the
plain text the command has always written, which scripts parse.

Long reads show a progress bar with its rate and time remaining on stderr, when
stderr is a terminal; its last line is printed once, when the read is over.
"""

from __future__ import annotations

import sys
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal, TextIO

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    ProgressColumn,
    Task,
    TaskID,
    TaskProgressColumn,
    TextColumn,
    TimeRemainingColumn,
)
from rich.progress import Progress as RichProgress
from rich.table import Table
from rich.text import Text

#: The style of a refusal: a denied decision, a refused charge, a broken chain, an error.
REFUSAL = "red"

#: Whether a progress bar redraws itself on a timer (tests draw it at start and stop only).
AUTO_REFRESH = True

#: Event types that record a refusal (``history`` shows them in :data:`REFUSAL`).
REFUSAL_EVENTS = frozenset({"AccessDenied", "ChargeRefused", "ChemRefused"})


def is_terminal(stream: TextIO) -> bool:
    isatty = getattr(stream, "isatty", None)
    try:
        return bool(isatty()) if callable(isatty) else False
    except ValueError:  # a closed file
        return False


def terminal_console(stream: TextIO, *, json: bool = False) -> Console | None:
    """A rich console writing to ``stream`` if it is a terminal and the output is not JSON.

    None: write plain text. The console follows the terminal's width, and rich's own
    environment (``NO_COLOR`` drops the colours, keeping the layout).
    """
    if json or not is_terminal(stream):
        return None
    return Console(file=stream, highlight=False, emoji=False, markup=False)


# -- tables -----------------------------------------------------------------------------


Justify = Literal["left", "right"]
Overflow = Literal["ellipsis", "crop"]


@dataclass(frozen=True)
class Column:
    """A column of a :class:`RowWriter`: its header, its width, how far it may shrink."""

    header: str
    width: int
    minimum: int | None = None  # None: never narrower than ``width``
    justify: Justify = "left"
    overflow: Overflow = "ellipsis"
    #: The column taking what the others leave (at least ``minimum``), the last one.
    flexible: bool = False


GAP = 2  # spaces between columns


def fit(columns: Sequence[Column], width: int) -> list[int]:
    """The columns' widths on a ``width``-wide line: the flexible one takes the rest.

    When the rest is less than its minimum, the shrinkable columns give up room, the
    rightmost first, down to their minimum.
    """
    widths = [c.width for c in columns]
    flexible = [i for i, c in enumerate(columns) if c.flexible]
    rest = (
        width - GAP * (len(columns) - 1) - sum(w for i, w in enumerate(widths) if i not in flexible)
    )
    if not flexible:
        return widths
    f = flexible[0]
    wanted = columns[f].minimum or 1
    for i in reversed(range(len(columns))):
        if rest >= wanted:
            break
        column = columns[i]
        if i == f or column.minimum is None:
            continue
        give = min(widths[i] - column.minimum, wanted - rest)
        widths[i] -= give
        rest += give
    widths[f] = max(rest, 1)
    return widths


class RowWriter:
    """Rows written one at a time (a history of millions), each one line of the console.

    The widths are fitted to the console once; a long cell is cut short. ``history`` and
    ``audit`` stream their rows through one, so nothing waits for the last row.
    """

    def __init__(self, console: Console, columns: Sequence[Column]) -> None:
        self.console = console
        self.columns = tuple(columns)
        self.widths = fit(self.columns, console.width)

    def _line(self, cells: Sequence[str | Text], style: str = "") -> Text:
        line = Text(style=style, no_wrap=True, overflow="ellipsis")
        last = len(self.columns) - 1
        for i, (column, width, cell) in enumerate(
            zip(self.columns, self.widths, cells, strict=True)
        ):
            text = cell.copy() if isinstance(cell, Text) else Text(cell)
            text.truncate(width, overflow=column.overflow)
            if column.justify == "right":
                text.pad_left(width - text.cell_len)
            elif i < last:
                text.pad_right(width - text.cell_len)
            line.append_text(text)
            if i < last:
                line.append(" " * GAP)
        return line

    def header(self) -> None:
        self.console.print(self._line([c.header for c in self.columns], "bold"), crop=True)

    def row(self, cells: Sequence[str | Text], style: str = "") -> None:
        self.console.print(self._line(cells, style), crop=True)


def print_table(
    console: Console,
    columns: Sequence[Column],
    rows: Sequence[tuple[Sequence[str], str]],
    *,
    title: str | None = None,
) -> None:
    """A small table (sessions, cursors, a ledger), fitted by rich: ``rows`` of (cells, style)."""
    if title is not None:
        console.print(Text(title))
    table = Table(box=None, pad_edge=False, show_edge=False, header_style="bold", padding=(0, 1))
    for column in columns:
        table.add_column(
            column.header,
            justify=column.justify,
            overflow="ellipsis",
            no_wrap=True,
            ratio=1 if column.flexible else None,
            min_width=column.minimum,
        )
    for cells, style in rows:
        table.add_row(*cells, style=style or None)
    console.print(table)


# -- progress ---------------------------------------------------------------------------


class _RateColumn(ProgressColumn):
    """Sequences read a second."""

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        return Text("" if speed is None else f"{speed:,.0f}/s", style="progress.data.speed")


class Progress:
    """Read progress (``progress(sequence, end)`` from the journal) as a bar on stderr.

    Only on a terminal (or a given ``console``), and only for a long read: the bar
    starts at the read's first report before its end (the journal reports every
    1,000 events), so a short read shows nothing. Every read of the command (``why``
    reads twice, ``diff --against`` two sessions) moves the same bar; :meth:`close`
    prints its last line, once, whatever the number of ``(end, end)`` reports.
    ``auto_refresh=False`` draws the bar only when it starts and stops (tests).
    """

    def __init__(
        self,
        stream: TextIO | None = None,
        *,
        console: Console | None = None,
        enabled: bool = True,
        label: str = "reading",
        auto_refresh: bool | None = None,
    ) -> None:
        stream = sys.stderr if stream is None else stream
        if console is None and enabled and is_terminal(stream):
            console = Console(file=stream, highlight=False, markup=False)
        self.console = console if enabled else None
        self.label = label
        self.auto_refresh = AUTO_REFRESH if auto_refresh is None else auto_refresh
        self._bar: RichProgress | None = None
        self._task: TaskID | None = None

    @property
    def enabled(self) -> bool:
        return self.console is not None

    def __call__(self, at: int, end: int) -> None:
        if self.console is None or end <= 0:
            return
        if self._bar is None:
            if at >= end:
                return  # a short read, over before its first report
            self._bar = RichProgress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TaskProgressColumn(),
                _RateColumn(),
                TimeRemainingColumn(),
                console=self.console,
                auto_refresh=self.auto_refresh,
                transient=False,
            )
            self._bar.start()
            self._task = self._bar.add_task(self.label, total=end, completed=at)
            return
        task = self._task
        assert task is not None
        if at < self._bar.tasks[0].completed:  # the command's next read
            self._bar.reset(task, total=end, completed=at)
        else:
            self._bar.update(task, total=end, completed=min(at, end))

    def close(self) -> None:
        """Print the bar's last line (once) and stop drawing it."""
        bar, self._bar = self._bar, None
        if bar is not None:
            bar.stop()


@contextmanager
def progress_on_stderr(*, enabled: bool = True, label: str = "reading") -> Iterator[Progress]:
    """A :class:`Progress` on stderr, closed (its last line printed) on the way out."""
    progress = Progress(sys.stderr, enabled=enabled, label=label)
    try:
        yield progress
    finally:
        progress.close()


def error(message: str) -> None:
    """``plantangenet: error: ...`` on stderr, in red on a terminal."""
    console = terminal_console(sys.stderr)
    if console is None:
        sys.stderr.write(f"plantangenet: error: {message}\n")
    else:
        console.print(Text(f"plantangenet: error: {message}", style=REFUSAL), soft_wrap=True)
