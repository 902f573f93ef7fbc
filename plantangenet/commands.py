"""Commands: what callers ask a session to do.

A command is an immutable request. The session decides on it (see
:func:`plantangenet.decide.decide`) and either emits events or refuses with a
:class:`~plantangenet.errors.CommandRejected`. Every command has an id: the
log stores a command at most once, so retrying with the same id is safe.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence
from typing import Any

from plantangenet.events.chem import ChemClause
from plantangenet.events.envelope import new_id
from plantangenet.events.fields import MetadataValue
from plantangenet.policy import Statement


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Fields shared by every command.

    :param command_id: idempotency key; a retried command keeps its id.
    :param correlation_id: ties the command to a larger request (defaults to
        the command id).
    :param issued_by: the agent on whose behalf the command is sent; ``None``
        means the session's owner (its connection), which policy does not restrict.
    :param context: request attributes that policy conditions may test (e.g.
        ``{"resolution": 3}``); the session adds ``hour``, ``weekday``,
        ``identity.*`` and ``agent.*``, which callers cannot override.
    """

    command_id: str = dataclasses.field(default_factory=new_id)
    correlation_id: str | None = None
    issued_by: str | None = None
    context: Mapping[str, MetadataValue] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class StartSession(Command):
    """Create the session with initial metadata."""

    metadata: Mapping[str, MetadataValue] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChangeMetadata(Command):
    """Set keys in (``changed``) and remove keys from (``removed``) the metadata."""

    changed: Mapping[str, MetadataValue] = dataclasses.field(default_factory=dict)
    removed: tuple[str, ...] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AttachAgent(Command):
    """Attach an agent (``kind`` is e.g. ``"bot"``, ``"client"``, ``"bridge"``)."""

    agent_id: str
    kind: str = "bot"
    name: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DetachAgent(Command):
    """Detach an agent; its cursors are removed first."""

    agent_id: str
    reason: str = "detached"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AddCursor(Command):
    """Open a cursor for an agent over ``axes`` and ``[start, end]``, at ``resolution``."""

    agent_id: str
    cursor_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    resolution: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class MoveCursor(Command):
    """Give an agent's cursor a new region: move it, resize it, or change its resolution."""

    agent_id: str
    cursor_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    resolution: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RemoveCursor(Command):
    """Close an agent's cursor."""

    agent_id: str
    cursor_id: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ChangePolicy(Command):
    """Change the session's policy.

    ``replace`` (if given) becomes the whole policy; then statements with ids
    in ``remove`` are dropped and ``add`` statements appended. Statements are
    :class:`~plantangenet.policy.Statement` s or mappings of the same fields;
    they are validated, and a malformed one refuses the whole change.
    """

    replace: Sequence[Statement | Mapping[str, Any]] | None = None
    add: Sequence[Statement | Mapping[str, Any]] = ()
    remove: Sequence[str] = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BindIdentity(Command):
    """Bind the session's connection to an identity (id, display name, attributes)."""

    identity_id: str
    display_name: str = ""
    attributes: Mapping[str, MetadataValue] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrantRole(Command):
    """Give an attached agent a role."""

    agent_id: str
    role: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RevokeRole(Command):
    """Take a role away from an agent."""

    agent_id: str
    role: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class EndSession(Command):
    """End the session: detach every agent, then close it."""

    reason: str = "ended"


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RegisterCompositor(Command):
    """Record that the session coordinates with the compositor ``name``.

    The compositor's code is provided to the process (see
    :meth:`~plantangenet.runtime.Plantangenet.add_compositor`); the session
    records only that it uses it.
    """

    name: str
    description: str = ""


class DataQuery(Command):
    """Base of the commands that fetch data from a compositor.

    They are not decided by :func:`~plantangenet.decide.decide` alone: the
    session plans them (:func:`plantangenet.disclose.plan`), asks the
    compositor, then shapes the data and records the disclosure
    (:func:`plantangenet.disclose.disclose`).
    """

    __slots__ = ()


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueryCursor(DataQuery):
    """Ask ``compositor`` for the data under ``agent_id``'s cursor, as policy discloses it.

    ``max_bytes`` (optional) bounds the disclosed data's encoded size: a larger
    answer is refused (``LimitExceeded``) before anything is recorded or charged.
    The wire service sets it so that an answer always fits in a reply.
    """

    agent_id: str
    cursor_id: str
    compositor: str
    max_bytes: int | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DiscloseChem(DataQuery):
    """Disclose data to the peer of a chem (``agent_id`` is the peer's agent asking).

    Sent by :class:`~plantangenet.chems.Chems` to the disclosing session
    after the asking session recorded (and charged) the query.
    """

    chem_id: str
    peer: str
    agent_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    compositor: str
    resolution: float | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SetPrices(Command):
    """Make ``prices`` (action or ``action.level`` -> dust) the session's price table."""

    prices: Mapping[str, int]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class DepositDust(Command):
    """Create ``amount`` dust in ``account`` (an agent id, or the treasury)."""

    account: str
    amount: int
    memo: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class GrantDust(Command):
    """Move ``amount`` dust from ``source`` to ``target``."""

    source: str
    target: str
    amount: int
    memo: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class ProposeChem(Command):
    """Record a proposal (or, on a proposed chem, a counter-proposal) of chem terms.

    Both sessions record it: ``proposed_by`` is the session proposing,
    ``peer`` the other session (from the recording session's point of view).
    Terms are :class:`~plantangenet.events.chem.ChemClause` s or mappings of
    their fields (``disclosure`` as a level name or a mapping).
    """

    chem_id: str
    peer: str
    proposed_by: str
    terms: Sequence[ChemClause | Mapping[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AcceptChem(Command):
    """Record that ``accepted_by`` accepted the chem's latest proposal."""

    chem_id: str
    accepted_by: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RefuseChem(Command):
    """Record that ``refused_by`` refused (or withdrew) the chem's proposal."""

    chem_id: str
    refused_by: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RevokeChem(Command):
    """Record that ``revoked_by`` revoked the active chem."""

    chem_id: str
    revoked_by: str
    reason: str = ""


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueryChem(Command):
    """Record (and charge) ``agent_id``'s query of the chem's peer for ``axes``."""

    chem_id: str
    agent_id: str
    axes: tuple[str, ...]
    start: float
    end: float
    resolution: float | None = None


__all__ = [
    "AcceptChem",
    "AddCursor",
    "AttachAgent",
    "BindIdentity",
    "ChangeMetadata",
    "ChangePolicy",
    "Command",
    "DataQuery",
    "DepositDust",
    "DetachAgent",
    "DiscloseChem",
    "EndSession",
    "GrantDust",
    "GrantRole",
    "MoveCursor",
    "ProposeChem",
    "QueryChem",
    "QueryCursor",
    "RefuseChem",
    "RegisterCompositor",
    "RemoveCursor",
    "RevokeChem",
    "RevokeRole",
    "SetPrices",
    "StartSession",
]
