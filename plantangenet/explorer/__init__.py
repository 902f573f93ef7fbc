"""``plantangenet explore SESSION_ID``: step through a session's history in a terminal.

* :mod:`~plantangenet.explorer.model` — :class:`Timeline`, the events, a cursor on one
  and the state folded up to it; :func:`open_timeline`, :func:`parse_jump`.
* :mod:`~plantangenet.explorer.text` — what an event changed (:func:`diff_states`) and
  the panes' text.
* :mod:`~plantangenet.explorer.controller` — :class:`Explorer`, what keys and prompts do.
* :mod:`~plantangenet.explorer.live` — :class:`LiveFeed`, the session tailed live.
* :mod:`~plantangenet.explorer.app` — the Textual app and :func:`run`, the entry point
  (imported on demand: it loads Textual).

Filters (:class:`~plantangenet.filters.EventFilter`) are shared with ``history``.
"""

from __future__ import annotations

from plantangenet.explorer.controller import Explorer
from plantangenet.explorer.live import LiveFeed
from plantangenet.explorer.model import CHECKPOINT_EVERY, Timeline, open_timeline, parse_jump
from plantangenet.explorer.text import Change, diff_states, show, state_lines
from plantangenet.filters import EventFilter

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
