"""The old home of the session explorer, kept so its names still import from here.

The explorer lives in :mod:`plantangenet.timetravel.explorer` (a Textual app); filters in
:mod:`plantangenet.timetravel.filters`. :func:`run` loads Textual only when called.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from plantangenet.timetravel.explorer import (
    Change,
    EventFilter,
    Explorer,
    LiveFeed,
    Timeline,
    diff_states,
    open_timeline,
    parse_jump,
    state_lines,
)
from plantangenet.timetravel.history import Position

if TYPE_CHECKING:
    from plantangenet.runtime import Plantangenet

__all__ = [
    "Change",
    "EventFilter",
    "Explorer",
    "LiveFeed",
    "Timeline",
    "diff_states",
    "open_timeline",
    "parse_jump",
    "run",
    "state_lines",
]


def run(runtime: Plantangenet, session_id: str, at: Position | None = None) -> int:
    """Explore ``session_id`` on this terminal
    (see :func:`plantangenet.timetravel.explorer.app.run`)."""
    from plantangenet.timetravel.explorer.app import (
        run as run_app,  # Textual: loaded only when needed
    )

    return run_app(runtime, session_id, at)
