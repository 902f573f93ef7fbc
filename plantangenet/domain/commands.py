"""Commands: what callers ask a session to do.

A command is an immutable request. The session decides on it (see
:func:`plantangenet.decide.decide`) and either emits events or refuses with a
:class:`~plantangenet.errors.CommandRejected`. Every command has an id: the
log stores a command at most once, so retrying with the same id is safe.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from plantangenet.domain.policy import Statement
from plantangenet.events.chem import ChemClause
from plantangenet.events.envelope import OPERATOR, new_id
from plantangenet.events.fields import MetadataValue


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class Command:
    """Fields shared by every command.

    :param command_id: idempotency key; a retried command keeps its id.
    :param correlation_id: ties the command to a larger request (defaults to
        the command id).
    :param issued_by: the agent on whose behalf the command is sent; ``None``
        means the session's owner (its connection), which policy does not restrict.
    :param context: request attributes that policy conditions may test (e.g.
        ``{"region": "north"}``); the session adds ``hour``, ``weekday``,
        ``principal``, ``identity.*``, ``agent.*`` and the attributes of the
        command itself (``resolution``, ``start``, ``end``, ``axes``), which
        callers cannot override.
    :param principal: who sends the command, as the NATS server vouched for it
        (``"<user>@<account>"``). The session service sets it from the request;
        commands made in-process come from the :data:`~plantangenet.events.OPERATOR`,
        the process that runs the session, which may act as any agent and as an owner.
        A remote principal may send the owner form only if it owns the session, and
        act only as the agents bound to it.
    """

    command_id: str = dataclasses.field(default_factory=new_id)
    correlation_id: str | None = None
    issued_by: str | None = None
    context: Mapping[str, MetadataValue] = dataclasses.field(default_factory=dict)
    principal: str = OPERATOR


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
    """Attach an agent (``kind`` is e.g. ``"bot"``, ``"client"``, ``"bridge"``).

    The agent is bound to the principal that attaches it, or to ``bound_to`` if an
    owner names one: only that principal may then issue commands as the agent.
    """

    agent_id: str
    kind: str = "bot"
    name: str = ""
    bound_to: str | None = None


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class BindAgent(Command):
    """Bind an attached agent to ``bound_to`` (owners only): it speaks as the agent from now on."""

    agent_id: str
    bound_to: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class AddOwner(Command):
    """Make ``owner`` (a principal) an owner of the session (owners only)."""

    owner: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class RemoveOwner(Command):
    """Take ownership of the session away from ``owner`` (owners only)."""

    owner: str


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class SummariseRefusals(Command):
    """Record that ``count`` refusals of ``refused`` were answered but not stored (the operator).

    Sent by the session actor itself when a principal's refusals pass the rate at which
    they are recorded one by one (see :class:`~plantangenet.actors.session.RefusalLimit`).
    """

    refused: str
    count: int
    commands: Mapping[str, int]
    seconds: float


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QuarantineMessage(Command):
    """Skip the unreadable message at stream ``sequence`` in every fold (the operator only).

    For a message that reached the session's log behind its writer's back and is
    not a valid event of the session: the session takes no other command until it
    is quarantined. The message stays in the log; ``reason`` is recorded with it.
    """

    sequence: int
    reason: str = ""


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
    :class:`~plantangenet.domain.policy.Statement` s or mappings of the same fields;
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
    session plans them (:func:`plantangenet.domain.query_plan.plan`), asks the
    compositor, then shapes the data and records the disclosure
    (:func:`plantangenet.domain.query_plan.disclose`).
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

    Sent by :class:`~plantangenet.data.chems.Chems` to the disclosing session
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
    #: Bounds the disclosed data's encoded size, as ``QueryCursor.max_bytes`` does.
    max_bytes: int | None = None


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


#: Command fields that say how a command travels, not what it asks (a fingerprint skips them).
_NOT_CONTENT = frozenset({"command_id", "correlation_id", "principal"})
_CONTENT_FIELDS: dict[type, tuple[str, ...]] = {}


def fingerprint(command: Command) -> bytes:
    """A 16-byte digest of what ``command`` asks: its type, issuer, context and fields.

    Two commands with the same id from the same principal are the same command
    (a retry) only if their fingerprints are equal; otherwise the second is refused
    (:class:`~plantangenet.errors.IdempotencyConflict`). Mappings count in their
    order, as a retry of the same bytes (or of the same object) keeps it.
    """
    cls = type(command)
    names = _CONTENT_FIELDS.get(cls)
    if names is None:
        names = tuple(f.name for f in dataclasses.fields(cls) if f.name not in _NOT_CONTENT)
        _CONTENT_FIELDS[cls] = names
    values = [cls.__name__, *[getattr(command, name) for name in names]]
    try:
        packed = msgpack.packb(values, use_bin_type=True, default=_content)
    except Exception:  # values no command should hold (decide refuses them): still a digest
        packed = repr(type(command)).encode() + b"".join(
            repr(type(v)).encode() + str(id(v)).encode() for v in values
        )
    return hashlib.blake2b(packed, digest_size=16).digest()


def _content(value: Any) -> Any:
    """msgpack's fallback for values it does not pack itself."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return [type(value).__name__, *[getattr(value, f.name) for f in dataclasses.fields(value)]]
    if isinstance(value, Mapping):
        return dict(value)
    raise TypeError(f"cannot fingerprint a {type(value).__name__}")


__all__ = [
    "AcceptChem",
    "AddCursor",
    "AddOwner",
    "AttachAgent",
    "BindAgent",
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
    "QuarantineMessage",
    "QueryChem",
    "QueryCursor",
    "RefuseChem",
    "RegisterCompositor",
    "RemoveCursor",
    "RemoveOwner",
    "RevokeChem",
    "RevokeRole",
    "SetPrices",
    "StartSession",
    "SummariseRefusals",
    "fingerprint",
]
