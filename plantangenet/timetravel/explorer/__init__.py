"""``plantangenet explore SESSION_ID``: step through a session's history in a terminal.

* :mod:`~plantangenet.timetravel.explorer.model` — :class:`Timeline`, the events, a cursor on one
  and the state folded up to it; :func:`open_timeline`, :func:`parse_jump`.
* :mod:`~plantangenet.timetravel.explorer.text` — what an event changed (:func:`diff_states`) and
  the panes' text.
* :mod:`~plantangenet.timetravel.explorer.controller` — :class:`Explorer`, what keys and prompts do.
* :mod:`~plantangenet.timetravel.explorer.live` — :class:`LiveFeed`, the session tailed live.
* :mod:`~plantangenet.timetravel.explorer.app` — the Textual app and :func:`run`, the entry point
  (imported on demand: it loads Textual).

Filters (:class:`~plantangenet.timetravel.filters.EventFilter`) are shared with ``history``.
"""

from __future__ import annotations

from plantangenet.timetravel.explorer.controller import Explorer
from plantangenet.timetravel.explorer.live import LiveFeed
from plantangenet.timetravel.explorer.model import (
    CHECKPOINT_EVERY,
    Timeline,
    open_timeline,
    parse_jump,
)
from plantangenet.timetravel.explorer.text import Change, diff_states, show, state_lines
from plantangenet.timetravel.filters import EventFilter

__all__ = [
    "CHECKPOINT_EVERY",
    "Change",
    "EventFilter",
    "Explorer",
    "LiveFeed",
    "Timeline",
    "diff_states",
    "open_timeline",
    "parse_jump",
    "show",
    "state_lines",
]
