"""Event filters: the one syntax shared by ``history --type/--agent`` and the explorer.

A filter is a set of event-type patterns and a set of agent ids. Type patterns
are event type names or shell-style globs (``Cursor*``, ``*Denied``,
``Role[GR]*``), compared case-insensitively (``cursormoved`` is
``CursorMoved``); a pattern that matches no known event type is an error, so a
typo is caught rather than silently matching nothing. Agent ids match an event
issued by the agent or about it.

The explorer reads the whole filter from one line (``Cursor* agent:bot-1``, comma
or space separated: :meth:`EventFilter.parse`); the command line takes the same
patterns from repeated ``--type`` and the agent from ``--agent``
(:meth:`EventFilter.of`). Either way the same :class:`EventFilter` decides.
"""

from __future__ import annotations

import dataclasses
import fnmatch
from collections.abc import Iterable

from plantangenet.events.base import EVENTS
from plantangenet.events.envelope import Envelope

__all__ = ["EventFilter", "agents_of", "type_pattern"]

_WILDCARDS = "*?["


def agents_of(envelope: Envelope) -> frozenset[str]:
    """The agents an event concerns: the one that issued it and the one it is about."""
    about = getattr(envelope.event, "agent_id", None)
    return frozenset(a for a in (envelope.agent_id, about) if isinstance(a, str))


def type_pattern(token: str) -> str:
    """``token`` checked against the known event types.

    A name without wildcards comes back spelled as registered (``cursormoved``
    -> ``CursorMoved``); a glob comes back as given.

    :raises ValueError: no known event type matches ``token``.
    """
    known = sorted(EVENTS.types())
    pattern = token.lower()
    matched = [name for name in known if fnmatch.fnmatchcase(name.lower(), pattern)]
    if not token or not matched:
        raise ValueError(f"no event type matches {token!r} (known: {', '.join(known)})")
    return token if any(c in token for c in _WILDCARDS) else matched[0]


@dataclasses.dataclass(frozen=True, slots=True)
class EventFilter:
    """Which events to keep.

    ``types`` are event type names or ``fnmatch`` patterns, compared
    case-insensitively; ``agents`` are agent ids, matching an event issued by
    the agent or about it. An event matches when it matches one of the types
    (if any are given) *and* one of the agents (if any are given). An empty
    filter keeps everything (and is false).
    """

    types: tuple[str, ...] = ()
    agents: tuple[str, ...] = ()

    @classmethod
    def of(cls, types: Iterable[str] = (), agents: Iterable[str | None] = ()) -> EventFilter:
        """From separate lists (the command line's ``--type`` and ``--agent``).

        :raises ValueError: naming a type pattern that matches no known event type,
            or an empty agent id.
        """
        checked = tuple(type_pattern(t) for t in types)
        ids = tuple(a for a in agents if a is not None)
        if any(not a for a in ids):
            raise ValueError("an agent filter needs an agent id, e.g. agent:bot-1")
        return cls(checked, ids)

    @classmethod
    def parse(cls, text: str) -> EventFilter:
        """From one line: type names or patterns and ``agent:ID``, comma or space separated.

        An empty text is no filter.

        :raises ValueError: naming the unknown type or the empty agent id.
        """
        types: list[str] = []
        agents: list[str] = []
        for token in text.replace(",", " ").split():
            if token.lower().startswith("agent:"):
                agent = token[len("agent:") :]
                if not agent:
                    raise ValueError("agent: needs an agent id, e.g. agent:bot-1")
                agents.append(agent)
            else:
                types.append(token)
        return cls.of(types, agents)

    def __bool__(self) -> bool:
        return bool(self.types or self.agents)

    def matches(self, envelope: Envelope) -> bool:
        """Whether ``envelope`` passes the filter."""
        if self.types:
            name = envelope.type_name.lower()
            if not any(fnmatch.fnmatchcase(name, p.lower()) for p in self.types):
                return False
        return not self.agents or bool(agents_of(envelope) & set(self.agents))

    def __str__(self) -> str:
        parts = [*self.types, *(f"agent:{a}" for a in self.agents)]
        return " ".join(parts) if parts else "(none)"
