"""A chem step's second half on its way to the process that owns the peer session.

With several ``serve`` processes (see :mod:`plantangenet.wire.ownership`), the process
that stored a chem step in the acting session passes the step's record in the peer
session on to the peer's owner, on the forward subject, as a ``RELAYED`` request: the
step as the operator's, with every field (its acting side too, which a bot's request
may not set). Only the service's own account may send it (the owner refuses it from
anyone else).
"""

from __future__ import annotations

from plantangenet.domain import commands as c
from plantangenet.errors import InvalidCommand
from plantangenet.events.envelope import OPERATOR
from plantangenet.wire.protocol import (
    _ENVELOPE_KEYS,
    COMMANDS,
    SIDE_FIELDS,
    _command,
    _pack,
    _unpack_map,
    request_map,
    wire_fields,
)

#: The command name of a relayed step (on ``forward_subject`` only).
RELAYED = "relayed_step"
#: The commands a relayed step may carry.
_RELAYABLE = frozenset(
    {"propose_chem", "accept_chem", "refuse_chem", "revoke_chem", "disclose_chem"}
)
_NAME_OF = {cls: name for name, cls in COMMANDS.items() if name in _RELAYABLE}
#: Beside a request's own keys: the step's wire name and its acting side.
_RELAYED_KEYS = _ENVELOPE_KEYS | {"cmd", "side"}


def encode_relayed(command: c.Command) -> bytes:
    """A chem step's second half (``command``, recorded in the peer as the operator) as
    the payload of a ``RELAYED`` request: the request a bot would send for it, with the
    step's name and its acting side (which a bot's request may not set)."""
    name = _NAME_OF.get(type(command))
    if name is None:
        raise InvalidCommand(f"{type(command).__name__} is not a chem step")
    args = {f.name: getattr(command, f.name) for f in wire_fields(type(command))}
    request = request_map(
        args, command_id=command.command_id, correlation_id=command.correlation_id
    )
    side = SIDE_FIELDS.get(type(command))
    return _pack({**request, "cmd": name, "side": getattr(command, side) if side else None})


def decode_relayed(payload: bytes) -> c.Command:
    """The command of a ``RELAYED`` request (see ``encode_relayed``), as the operator's:
    decoded and checked as any request is, its acting side the one it names."""
    raw = _unpack_map(payload, "relayed step")
    unknown = raw.keys() - _RELAYED_KEYS
    if unknown:
        raise InvalidCommand(f"unknown relayed step field {sorted(map(str, unknown))[0]!r}")
    name, side = raw.pop("cmd", None), raw.pop("side", None)
    if not isinstance(name, str) or name not in _RELAYABLE:
        raise InvalidCommand(f"cmd: {name!r:.60} is not a chem step")
    if raw.get("by") is not None or raw.get("ctx"):
        raise InvalidCommand("a relayed step is the operator's: no 'by', no 'ctx'")
    if side is not None and not isinstance(side, str):
        raise InvalidCommand("side: the acting session's id")
    return _command(name, raw, OPERATOR, session_id=side)
