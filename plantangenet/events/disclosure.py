"""Events of data disclosure: compositors a session coordinates with, and what it disclosed.

The data itself is never stored: a ``DisclosureMade`` records that a query
happened, at which level and how much it disclosed, so auditors can see who
saw what without the log becoming a copy of the data.
"""

from __future__ import annotations

from collections.abc import Mapping

from plantangenet.events.base import Event, event_type
from plantangenet.events.policy_values import Level


@event_type("CompositorRegistered", version=1)
class CompositorRegistered(Event):
    """The session coordinates with the compositor ``name`` from now on."""

    name: str
    description: str = ""


@event_type("DisclosureMade", version=1)
class DisclosureMade(Event):
    """A compositor query was answered for ``agent_id``.

    ``cursor_id`` is the cursor queried through (``None`` for a query across a
    chem, then ``chem_id`` and ``peer`` name it and the session asking).
    ``levels`` gives each axis's disclosure level, ``level`` the least of them;
    ``amount`` counts the samples disclosed; ``price`` the dust charged for it.
    """

    agent_id: str | None
    cursor_id: str | None
    compositor: str
    level: Level
    levels: Mapping[str, Level]
    amount: int
    price: int = 0
    chem_id: str | None = None
    peer: str | None = None


DISCLOSURE_EVENTS: tuple[type[Event], ...] = (CompositorRegistered, DisclosureMade)
