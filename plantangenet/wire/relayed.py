"""A chem step's second half on its way to the process that owns the peer session.

With several ``serve`` processes (see :mod:`plantangenet.wire.ownership`), the process
that stored a chem step in the acting session passes the step's record in the peer
session on to the peer's owner, on the forward subject, as a ``RELAYED`` request: the
step as the operator's, with every field (its acting side too, which a bot's request
may not set). Only the service's own account may send it (the owner refuses it from
anyone else).
"""

from __future__ import annotations

from typing import Any

from plantangenet.domain import commands as c
from plantangenet.errors import InvalidCommand
from plantangenet.events.envelope import OPERATOR
from plantangenet.wire.protocol import (
    _BASE_FIELDS,
    _COMMAND_ID,
    COMMANDS,
    PROTOCOL_VERSION,
    SIDE_FIELDS,
    _check_version,
    _pack,
    _shape,
    _tuples,
    _unpack_map,
    wire_fields,
)

#: The command name of a relayed step (on ``forward_subject`` only).
RELAYED = "relayed_step"
#: The commands a relayed step may carry.
_RELAYABLE = frozenset(
    {"propose_chem", "accept_chem", "refuse_chem", "revoke_chem", "disclose_chem"}
)
_NAME_OF = {cls: name for name, cls in COMMANDS.items() if name in _RELAYABLE}


def encode_relayed(command: c.Command) -> bytes:
    """A chem step's second half (``command``, recorded in the peer as the operator) as
    the payload of a ``RELAYED`` request: every field of the command, its acting side
    too (which a bot's request may not set)."""
    name = _NAME_OF.get(type(command))
    if name is None:
        raise InvalidCommand(f"{type(command).__name__} is not a chem step")
    args = {f.name: getattr(command, f.name) for f in wire_fields(type(command))}
    side = SIDE_FIELDS.get(type(command))
    if side is not None:
        args[side] = getattr(command, side)
    return _pack(
        {
            "v": PROTOCOL_VERSION,
            "cmd": name,
            "id": command.command_id,
            "corr": command.correlation_id,
            "args": args,
        }
    )


def decode_relayed(payload: bytes) -> c.Command:
    """The command of a ``RELAYED`` request (see ``encode_relayed``), as the operator's."""
    raw = _unpack_map(payload, "relayed step")
    _check_version(raw)
    name = raw.get("cmd")
    if not isinstance(name, str) or name not in _RELAYABLE:
        raise InvalidCommand(f"cmd: {name!r:.60} is not a chem step")
    command_id, correlation, args = raw.get("id"), raw.get("corr"), raw.get("args")
    if not isinstance(command_id, str) or not _COMMAND_ID.fullmatch(command_id):
        raise InvalidCommand("id: the command id must be 1-128 printable ASCII characters")
    if correlation is not None and (
        not isinstance(correlation, str) or not _COMMAND_ID.fullmatch(correlation)
    ):
        raise InvalidCommand("corr: a correlation id is nil or 1-128 printable ASCII characters")
    if type(args) is not dict:
        raise InvalidCommand("args: must be a map")
    cls = COMMANDS[name]
    fields, sequences = _shape(cls)
    values: dict[str, Any] = {}
    for key, value in args.items():
        if key not in fields or key in _BASE_FIELDS:
            raise InvalidCommand(f"args.{key}: {name} has no such field")
        values[key] = _tuples(value) if key in sequences else value
    try:
        return cls(
            command_id=command_id,
            issued_by=None,
            correlation_id=correlation,
            context={},
            principal=OPERATOR,
            **values,
        )
    except TypeError as exc:
        raise InvalidCommand(f"{name}: {exc}") from None
