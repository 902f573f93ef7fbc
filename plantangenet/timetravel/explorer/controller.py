"""What the explorer's keys and prompts do to a
:class:`~plantangenet.timetravel.explorer.model.Timeline`.

No Textual here: :class:`Explorer` moves the cursor, follows, filters, jumps and
searches, and keeps the last answer worth showing (:attr:`Explorer.message`);
the app binds keys to it and draws what it says.
"""

from __future__ import annotations

from typing import Literal

from plantangenet.timetravel.explorer.model import Timeline, parse_jump
from plantangenet.timetravel.explorer.text import search_text
from plantangenet.timetravel.filters import EventFilter

__all__ = ["Explorer", "Prompt"]

#: What a prompt line asks for.
Prompt = Literal["jump", "filter", "search"]


class Explorer:
    """The explorer's commands over a :class:`Timeline`.

    :attr:`message` is the last answer worth showing (an error, where a search
    landed); every command resets it. :attr:`search` is the current search
    text (``""``: none), which :meth:`search_next` looks for again.
    """

    def __init__(self, timeline: Timeline) -> None:
        self.timeline = timeline
        self.message = ""
        self.search = ""
        self._texts: dict[int, str] = {}  # search_text of events[i], computed once

    # -- moving --------------------------------------------------------------------

    def step(self, delta: int) -> None:
        """``delta`` matching events forward (``+``) or backward (``-``)."""
        t = self.timeline
        self.message = ""
        if not t.step(delta):
            if delta > 0:
                self.message = "at the last event" + (" (following)" if t.follow else "")
            else:
                self.message = "at the first event"

    def toggle_follow(self) -> None:
        """Follow mode on or off (on: to the last event, then along with new ones)."""
        t = self.timeline
        t.set_follow(not t.follow)
        self.message = "following new events" if t.follow else "not following"

    # -- prompts -------------------------------------------------------------------

    def prompt_label(self, prompt: Prompt) -> str:
        """The label shown for ``prompt``."""
        if prompt == "jump":
            return "jump to sequence or ISO time"
        if prompt == "search":
            return "search type, agent, payload (n/N: next/previous)"
        return f"filter: types or globs, agent:ID; empty clears [{self.timeline.filter}]"

    def submit(self, prompt: Prompt, text: str) -> None:
        """Carry out a prompt's answer ``text``."""
        self.message = ""
        if prompt == "jump":
            self._jump(text)
        elif prompt == "filter":
            self._filter(text)
        else:
            self.search = text.strip()
            if self.search:
                self._find(+1, include_selected=True)

    def _jump(self, text: str) -> None:
        t = self.timeline
        if not text.strip():
            return
        selected = t.selected
        try:
            target = parse_jump(text, selected.occurred_at if selected else None)
        except ValueError as exc:
            self.message = str(exc)
            return
        if isinstance(target, int):
            if not t.jump_to_sequence(target):
                self.message = f"no event at or before sequence {target}"
        elif not t.jump_to_time(target):
            self.message = f"no event at or before {target.isoformat()}"

    def _filter(self, text: str) -> None:
        t = self.timeline
        try:
            event_filter = EventFilter.parse(text)
        except ValueError as exc:
            self.message = str(exc)
            return
        t.set_filter(event_filter)
        if event_filter and not t.matching:
            self.message = f"no event matches {event_filter}"

    # -- search --------------------------------------------------------------------

    def search_next(self, direction: int) -> None:
        """To the next (``+1``) or previous (``-1``) event the search text is in."""
        self.message = ""
        if not self.search:
            self.message = "no search yet: / to search"
            return
        self._find(direction, include_selected=False)

    def hits(self) -> list[int]:
        """Positions (in :attr:`Timeline.events`) of the matching events the search is in."""
        needle = self.search.lower()
        if not needle:
            return []
        return [i for i in self.timeline.matching if needle in self._text(i)]

    def _text(self, index: int) -> str:
        text = self._texts.get(index)
        if text is None:
            text = self._texts[index] = search_text(self.timeline.events[index])
        return text

    def _find(self, direction: int, *, include_selected: bool) -> None:
        """Search across the whole timeline from the selected event, wrapping around."""
        t = self.timeline
        hits = self.hits()
        if not hits:
            self.message = f"not found: {self.search!r}"
            return
        here = t.index
        if direction > 0:
            later = [i for i in hits if i > here or (include_selected and i == here)]
            target, wrapped = (later[0], False) if later else (hits[0], True)
        else:
            earlier = [i for i in hits if i < here]
            target, wrapped = (earlier[-1], False) if earlier else (hits[-1], True)
        t.select(target)
        where = f"{hits.index(target) + 1} of {len(hits)}"
        self.message = f"{self.search!r}: {where}" + (" (wrapped)" if wrapped else "")

    # -- status --------------------------------------------------------------------

    def status(self, live: str) -> str:
        """The status line."""
        t = self.timeline
        selected = t.selected
        parts = [
            f"event {t.index + 1}/{len(t)}",
            f"seq {selected.sequence}" if selected else "no event",
        ]
        if t.filter:
            parts.append(f"filter {t.filter}: {len(t.matching)} match")
        parts.append("FOLLOW" if t.follow else "follow off")
        parts.append(live)
        return " | ".join(parts)
