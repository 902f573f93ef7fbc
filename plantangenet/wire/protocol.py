"""The wire protocol bots use to talk to sessions over NATS (see ``docs/protocol.md``).

Commands are NATS requests on ``<prefix>.cmd.<session_id>.<command>``, with a
msgpack map payload; the reply is a msgpack map. Events are read from the
JetStream stream (subject ``<events prefix>.<session_id>``) with ordered
consumers. This module turns payloads into :class:`~plantangenet.domain.commands.Command`
objects and outcomes into replies; it never trusts its input: anything
malformed becomes an ``InvalidCommand`` (or ``DecodeError``) naming the field.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import typing
from collections.abc import Mapping, Sequence
from typing import Any

import msgpack

from plantangenet import errors
from plantangenet.actors.session import CommandResult
from plantangenet.domain import commands as c
from plantangenet.errors import DecodeError, InvalidCommand, PlantangenetError
from plantangenet.events.envelope import OPERATOR
from plantangenet.wire.subjects import BATCH as BATCH
from plantangenet.wire.subjects import COMMAND_NAMES
from plantangenet.wire.subjects import DEFAULT_COMMAND_PREFIX as DEFAULT_COMMAND_PREFIX
from plantangenet.wire.subjects import DEFAULT_LANES as DEFAULT_LANES
from plantangenet.wire.subjects import QUERIES as QUERIES

#: The protocol version this code speaks.
PROTOCOL_VERSION = 1
#: Largest request payload accepted (bytes).
MAX_REQUEST_BYTES = 256 * 1024


@dataclasses.dataclass(frozen=True, slots=True, kw_only=True)
class QueryChemRequest(c.QueryChem):
    """Ask the chem's peer for data: ``agent_id``'s query of ``axes`` over ``[start, end]``.

    The session the request is sent to records (and charges) the query as ``QueryChem``
    (the agent's policy, the peer's terms, the price); the service then asks the peer
    session, as the operator, to disclose it (``DiscloseChem``, from the peer's
    ``compositor``, shaped by the peer's terms). If the peer refuses, the charge is
    refunded (``DustGranted`` from the treasury) and the refusal is the reply.
    """

    #: The peer's compositor that answers (the asking side's log does not name it).
    compositor: str

    def asked(self) -> c.QueryChem:
        """The ``QueryChem`` the asking session records."""
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(c.QueryChem)}
        return c.QueryChem(**fields)


#: Chem steps recorded by both sessions: the acting side's field names the session the
#: request is sent to (the service sets it; a request may not), and once that session
#: stored the step the service records it in the chem's peer session as the operator.
SIDE_FIELDS: dict[type[c.Command], str] = {
    c.ProposeChem: "proposed_by",
    c.AcceptChem: "accepted_by",
    c.RefuseChem: "refused_by",
    c.RevokeChem: "revoked_by",
}

#: Wire name -> command class. Queries (``state``) are handled by the service.
COMMANDS: dict[str, type[c.Command]] = {
    "start": c.StartSession,
    "change_metadata": c.ChangeMetadata,
    "attach": c.AttachAgent,
    "detach": c.DetachAgent,
    "add_cursor": c.AddCursor,
    "move_cursor": c.MoveCursor,
    "remove_cursor": c.RemoveCursor,
    "change_policy": c.ChangePolicy,
    "bind_identity": c.BindIdentity,
    "grant_role": c.GrantRole,
    "revoke_role": c.RevokeRole,
    "end": c.EndSession,
    "register_compositor": c.RegisterCompositor,
    "query_cursor": c.QueryCursor,
    "set_prices": c.SetPrices,
    "deposit": c.DepositDust,
    "grant": c.GrantDust,
    "add_owner": c.AddOwner,
    "remove_owner": c.RemoveOwner,
    "bind_agent": c.BindAgent,
    "propose_chem": c.ProposeChem,
    "accept_chem": c.AcceptChem,
    "refuse_chem": c.RefuseChem,
    "revoke_chem": c.RevokeChem,
    "query_chem": QueryChemRequest,
    "disclose_chem": c.DiscloseChem,
}
if COMMANDS.keys() != COMMAND_NAMES:  # the names the accounts and metrics know
    raise RuntimeError("plantangenet.wire.subjects.COMMAND_NAMES and COMMANDS disagree")
#: The chem steps the service carries to the peer session too (see ``SIDE_FIELDS``).
CHEM_STEPS = frozenset({"propose_chem", "accept_chem", "refuse_chem", "revoke_chem", "query_chem"})
#: The most events one ``history`` page holds.
MAX_HISTORY_PAGE = 1000
#: The most commands one batch may carry (its reply must fit in one NATS message).
MAX_BATCH_COMMANDS = 256
#: Commands a batch may not carry: their replies carry data of unbounded size, or they
#: write to a second session (the chem steps).
UNBATCHED = frozenset({"query_cursor", "disclose_chem", *CHEM_STEPS})
_ENVELOPE_KEYS = frozenset({"v", "id", "by", "corr", "ctx", "args"})
_BATCH_KEYS = frozenset({"v", "commands"})
_COMMAND_ID = re.compile(r"[!-~]{1,128}")
_BASE_FIELDS = frozenset(f.name for f in dataclasses.fields(c.Command))


def wire_fields(cls: type[c.Command]) -> list[dataclasses.Field[Any]]:
    """The fields of ``cls`` a request's ``args`` may carry: not the envelope's, nor the
    acting side of a chem step (``SIDE_FIELDS``)."""
    side = SIDE_FIELDS.get(cls)
    return [f for f in dataclasses.fields(cls) if f.name not in _BASE_FIELDS and f.name != side]


def relay_id(principal: str, session_id: str, command_id: str) -> str:
    """The command id under which the service records a chem step in the peer session:
    one per (sender, acting session, request id), the same for every retry."""
    digest = hashlib.blake2b(
        f"{principal}\0{session_id}\0{command_id}".encode(), digest_size=16
    ).hexdigest()
    return f"chem-{digest}"


def command_subject(session_id: str, name: str, prefix: str = DEFAULT_COMMAND_PREFIX) -> str:
    """The subject a command ``name`` for ``session_id`` is sent to."""
    return f"{prefix}.{session_id}.{name}"


def parse_subject(
    subject: str, prefix: str = DEFAULT_COMMAND_PREFIX
) -> tuple[str, str, str | None]:
    """``(session_id, command name, account)`` from a command subject.

    A bot's request arrives in the service's account on
    ``<prefix>.<lane>.<account>.<session_id>.<command>`` (its import maps its own
    ``<prefix>.<session_id>.<command>`` there; nats-server checks the account token);
    a request from the service's own account on ``<prefix>.<session_id>.<command>``
    (account ``None``).
    """
    rest = subject[len(prefix) + 1 :] if subject.startswith(prefix + ".") else ""
    tokens = rest.split(".")
    if len(tokens) == 2 and all(tokens):
        return tokens[0], tokens[1], None
    if len(tokens) == 4 and all(tokens) and tokens[0].isdigit():
        return tokens[2], tokens[3], tokens[1]
    if len(tokens) == 4 and all(tokens) and tokens[0] == FORWARDED:
        return tokens[2], tokens[3], None
    raise InvalidCommand(f"not a command subject: {subject[:300]!r}")


#: The W3C Trace Context header (https://www.w3.org/TR/trace-context/).
TRACEPARENT_HEADER = "traceparent"
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


def traceparent(headers: Mapping[str, str] | None) -> tuple[str, str] | None:
    """``(header value, trace id)`` of a request's valid W3C ``traceparent`` header (any
    case of the name), else ``None``: a malformed one is ignored, as the spec says. The
    service records the trace id as the correlation id of the request's commands that
    name none, and sends the header back on the reply."""
    if not headers:
        return None
    found_value = [
        v for k, v in headers.items() if isinstance(k, str) and k.casefold() == "traceparent"
    ]
    if len(found_value) != 1:  # none, or sent twice in different cases: ignored
        return None
    value = found_value[0]
    if not isinstance(value, str) or len(value) > 512:
        return None
    value = value.strip()
    found = _TRACEPARENT.fullmatch(value)
    if found is None:
        return None
    version, trace_id, parent_id, _, rest = found.groups()
    if (
        version == "ff"
        or (version == "00" and rest)
        or trace_id == "0" * 32
        or parent_id == "0" * 16
    ):
        return None
    return value, trace_id


#: The token that marks a request one ``serve`` process passed on to another.
FORWARDED = "fwd"
#: The header that carries a passed-on request's principal (as its first process read it).
PRINCIPAL_HEADER = "Plantangenet-Principal"
#: The header that counts how often a request was passed on.
HOPS_HEADER = "Plantangenet-Hops"


def forward_subject(
    member: str, session_id: str, name: str, prefix: str = DEFAULT_COMMAND_PREFIX
) -> str:
    """Where a ``serve`` process passes a request for ``session_id`` on to the process
    ``member`` that owns the session (see :mod:`plantangenet.wire.ownership`). Only the
    service's own account reaches it: bots' imports map onto lanes, never here."""
    return f"{prefix}.{FORWARDED}.{member}.{session_id}.{name}"


def lane_subjects(lane: int, prefix: str = DEFAULT_COMMAND_PREFIX) -> str:
    """What the service subscribes to for ingress lane ``lane``."""
    return f"{prefix}.{lane}.*.*.*"


def encode_request(
    args: Mapping[str, Any],
    *,
    command_id: str,
    issued_by: str | None = None,
    correlation_id: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> bytes:
    """The payload of a request (used by the bot client)."""
    request = request_map(
        args,
        command_id=command_id,
        issued_by=issued_by,
        correlation_id=correlation_id,
        context=context,
    )
    payload: bytes = msgpack.packb(request, use_bin_type=True)
    return payload


def request_map(
    args: Mapping[str, Any],
    *,
    command_id: str,
    issued_by: str | None = None,
    correlation_id: str | None = None,
    context: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A request as a map: what :func:`encode_request` packs, and what a batch lists."""
    return {
        "v": PROTOCOL_VERSION,
        "id": command_id,
        "by": issued_by,
        "corr": correlation_id,
        "ctx": dict(context or {}),
        "args": _plain(args),
    }


def encode_batch(commands: Sequence[tuple[str, Mapping[str, Any]]]) -> bytes:
    """The payload of a batch: ``(wire name, request_map(...))`` per command, in order."""
    items = [{**request, "cmd": name} for name, request in commands]
    payload: bytes = msgpack.packb({"v": PROTOCOL_VERSION, "commands": items}, use_bin_type=True)
    return payload


_SCALARS = (str, int, float, bool, bytes, type(None))


def _plain(value: Any) -> Any:
    if type(value) in _SCALARS:  # most of a request's values: nothing to convert
        return value
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Mapping):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def decode_request(
    name: str, payload: bytes, principal: str = OPERATOR, session_id: str | None = None
) -> c.Command:
    """The command in a request payload, sent by ``principal`` (who the NATS server says
    sent the request; never a field of the payload) to ``session_id`` (the acting side of
    a chem step: see ``SIDE_FIELDS``); raises ``InvalidCommand``/``DecodeError``."""
    if name not in COMMANDS:
        raise InvalidCommand(f"unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})")
    raw = _unpack_map(payload, "request")
    unknown = raw.keys() - _ENVELOPE_KEYS
    if unknown:
        raise InvalidCommand(f"unknown request field {sorted(map(str, unknown))[0]!r}")
    return _command(name, raw, principal, session_id)


def decode_history(payload: bytes) -> tuple[int, int]:
    """``(from sequence, most events)`` of a ``history`` request.

    ``{"v": 1, "from": <stream sequence, default 1>, "max": <1..1000, default 1000>}``;
    an empty payload asks for the first page.
    """
    raw = _unpack_map(payload, "history request") if payload else {"v": PROTOCOL_VERSION}
    unknown = raw.keys() - {"v", "from", "max"}
    if unknown:
        raise InvalidCommand(f"unknown history field {sorted(map(str, unknown))[0]!r}")
    _check_version(raw)
    start, most = raw.get("from", 1), raw.get("max", MAX_HISTORY_PAGE)
    if type(start) is not int or start < 1:
        raise InvalidCommand(f"from: a stream sequence (1 or more), got {start!r:.40}")
    if type(most) is not int or not 1 <= most <= MAX_HISTORY_PAGE:
        raise InvalidCommand(f"max: 1 to {MAX_HISTORY_PAGE} events, got {most!r:.40}")
    return start, most


def decode_batch(payload: bytes, principal: str = OPERATOR) -> list[c.Command | PlantangenetError]:
    """The commands of a batch request, in order: each one, or the error that refuses it.

    A malformed item is refused on its own (the others still count); a malformed
    batch (not a map, wrong version, no list of commands, too many) raises.
    """
    raw = _unpack_map(payload, "batch request")
    unknown = raw.keys() - _BATCH_KEYS
    if unknown:
        raise InvalidCommand(f"unknown batch field {sorted(map(str, unknown))[0]!r}")
    _check_version(raw)
    items = raw.get("commands")
    if type(items) is not list:
        raise InvalidCommand("commands: a batch carries a list of commands")
    if len(items) > MAX_BATCH_COMMANDS:
        raise InvalidCommand(
            f"commands: {len(items)} in one batch; the limit is {MAX_BATCH_COMMANDS}"
        )
    decoded: list[c.Command | PlantangenetError] = []
    for index, item in enumerate(items):
        try:
            decoded.append(_batch_item(index, item, principal))
        except PlantangenetError as exc:
            decoded.append(exc)
    return decoded


def _batch_item(index: int, item: Any, principal: str) -> c.Command:
    where = f"commands[{index}]"
    if type(item) is not dict:
        raise InvalidCommand(f"{where}: a command is a map, got {type(item).__name__}")
    name = item.get("cmd")
    if isinstance(name, str) and (name in UNBATCHED or name in QUERIES):
        raise InvalidCommand(f"{where}: {name} cannot be batched; send it on its own")
    if not isinstance(name, str) or name not in COMMANDS:
        raise InvalidCommand(
            f"{where}.cmd: unknown command {name!r} (known: {', '.join(sorted(COMMANDS))})"
        )
    unknown = item.keys() - _ENVELOPE_KEYS - {"cmd"}
    if unknown:
        raise InvalidCommand(f"{where}: unknown request field {sorted(map(str, unknown))[0]!r}")
    return _command(name, {"v": PROTOCOL_VERSION, **item}, principal)  # its own "v" is checked


def _unpack_map(payload: bytes, what: str) -> dict[Any, Any]:
    if len(payload) > MAX_REQUEST_BYTES:
        raise InvalidCommand(f"{what} is {len(payload)} bytes; the limit is {MAX_REQUEST_BYTES}")
    try:
        raw = msgpack.unpackb(payload, raw=False, strict_map_key=True)
    except Exception as exc:
        raise DecodeError(f"malformed msgpack: {type(exc).__name__}: {exc}") from None
    if type(raw) is not dict:
        raise DecodeError(f"a {what} is a map, got {type(raw).__name__}")
    return raw


def _check_version(raw: dict[Any, Any]) -> None:
    version = raw.get("v")
    if version != PROTOCOL_VERSION or type(version) is not int:
        raise InvalidCommand(
            f"unsupported protocol version {version!r}; this service speaks {PROTOCOL_VERSION}"
        )


def _command(
    name: str, raw: dict[Any, Any], principal: str, session_id: str | None = None
) -> c.Command:
    """The ``name`` command a request map describes (its keys already checked)."""
    _check_version(raw)
    command_id = raw.get("id")
    if not isinstance(command_id, str) or not _COMMAND_ID.fullmatch(command_id):
        raise InvalidCommand("id: the command id must be 1-128 printable ASCII characters")
    issued_by, correlation = raw.get("by"), raw.get("corr")
    if issued_by is not None and not isinstance(issued_by, str):
        raise InvalidCommand("by: must be an agent id or nil")
    if correlation is not None and (
        not isinstance(correlation, str) or not _COMMAND_ID.fullmatch(correlation)
    ):
        raise InvalidCommand("corr: a correlation id is nil or 1-128 printable ASCII characters")
    context = raw.get("ctx") or {}
    if type(context) is not dict:
        raise InvalidCommand("ctx: must be a map")
    args = raw.get("args") or {}
    if type(args) is not dict:
        raise InvalidCommand("args: must be a map")
    cls = COMMANDS[name]
    fields, sequences, required = _shape(cls)
    values: dict[str, Any] = {}
    side = SIDE_FIELDS.get(cls)
    for key, value in args.items():
        if key not in fields or key in _BASE_FIELDS:
            raise InvalidCommand(f"args.{key}: {name} has no such field")
        if key == side:
            raise InvalidCommand(
                f"args.{key}: set by the service: the acting side is the session the "
                "request is sent to"
            )
        values[key] = _tuples(value) if key in sequences else value
    if side is not None:
        if session_id is None:
            raise InvalidCommand(f"{name} is sent to a session (its acting side)")
        values[side] = session_id
    if not required.issubset(values):
        key = next(k for k in fields if k in required and k not in values)
        raise InvalidCommand(f"args.{key}: missing (required by {name})")
    return cls(
        command_id=command_id,
        issued_by=issued_by,
        correlation_id=correlation,
        context=context,
        principal=principal,
        **values,
    )


_Shape = tuple[dict[str, dataclasses.Field[Any]], frozenset[str], frozenset[str]]
_SHAPES: dict[type[c.Command], _Shape] = {}


def _shape(cls: type[c.Command]) -> _Shape:
    """A command class's fields, those of them that hold sequences (a request's lists
    become tuples there), and those a request must give (no default, not set by the
    service); resolving the annotations is slow: cached per class."""
    shape = _SHAPES.get(cls)
    if shape is None:
        hints = typing.get_type_hints(cls)
        fields = {f.name: f for f in dataclasses.fields(cls)}
        shape = _SHAPES[cls] = (
            fields,
            frozenset(name for name, tp in hints.items() if _is_sequence(tp)),
            frozenset(
                key
                for key, f in fields.items()
                if key not in _BASE_FIELDS
                and f.default is dataclasses.MISSING
                and f.default_factory is dataclasses.MISSING
            ),
        )
    return shape


def _is_sequence(tp: Any) -> bool:
    text = str(tp)
    return "tuple" in text or "Sequence" in text


def _tuples(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


# -- replies -----------------------------------------------------------------------


def ok_reply(result: CommandResult) -> bytes:
    """The reply to a stored command."""
    if result.samples:
        return _pack(_ok(result))
    # Plain already (strings, numbers, a list of type names): no need to walk it.
    payload: bytes = msgpack.packb(_ok(result), use_bin_type=True)
    return payload


def _ok(result: CommandResult) -> dict[str, Any]:
    return {
        "v": PROTOCOL_VERSION,
        "ok": True,
        "id": result.command_id,
        "first": result.first_sequence,
        "seq": result.sequence,
        "events": [e.type_name for e in result.events],
        "duplicate": result.duplicate,
        **({"samples": [s.to_dict() for s in result.samples]} if result.samples else {}),
    }


def batch_reply(outcomes: Sequence[CommandResult | BaseException]) -> bytes:
    """The reply to a batch: per command, in order, the map its own request would get."""
    return _pack(
        {
            "v": PROTOCOL_VERSION,
            "ok": True,
            "outcomes": [_ok(o) if isinstance(o, CommandResult) else _error(o) for o in outcomes],
        }
    )


def history_reply(events: Sequence[tuple[int, bytes]], last: int, more: bool) -> bytes:
    """The reply to a ``history`` request: ``[sequence, stored bytes]`` per event, in order.

    ``last`` is the session's last stream sequence as the page saw it; ``more`` says
    whether events after the page exist (ask again from the last one + 1).
    """
    return _pack(
        {
            "v": PROTOCOL_VERSION,
            "ok": True,
            "events": [[sequence, payload] for sequence, payload in events],
            "last": last,
            "more": more,
        }
    )


def data_reply(data: Mapping[str, Any]) -> bytes:
    """The reply to a query."""
    return _pack({"v": PROTOCOL_VERSION, "ok": True, **data})


def error_reply(exc: BaseException) -> bytes:
    """The reply for a failure: a stable code, a message, and the field when known."""
    return _pack(_error(exc))


def _error(exc: BaseException) -> dict[str, Any]:
    if not isinstance(exc, PlantangenetError):
        exc = PlantangenetError("internal error; see the service log")
    message = str(exc)
    if len(message) > 2000:  # an error about a huge value must still fit in a reply
        message = message[:2000] + "…"
    error: dict[str, Any] = {"code": exc.code, "message": message}
    field = getattr(exc, "field", None)
    if field:
        error["field"] = field
    sequence = getattr(exc, "sequence", 0)
    if sequence:
        error["seq"] = sequence
    return {"v": PROTOCOL_VERSION, "ok": False, "error": error}


def _pack(value: Any) -> bytes:
    payload: bytes = msgpack.packb(_plain(value), use_bin_type=True, default=str)
    return payload


#: Error code -> exception class, for clients turning replies back into errors.
ERROR_CLASSES: dict[str, type[PlantangenetError]] = {
    cls.code: cls
    for cls in vars(errors).values()
    if isinstance(cls, type) and issubclass(cls, PlantangenetError)
}


def decode_reply(payload: bytes) -> dict[str, Any]:
    """A reply as a map; a failure reply is raised as its typed error."""
    try:
        reply = msgpack.unpackb(payload, raw=False)
    except Exception as exc:
        raise DecodeError(f"malformed reply: {exc}") from None
    if type(reply) is not dict or "ok" not in reply:
        raise DecodeError("a reply is a map with 'ok'")
    if not reply["ok"]:
        raise error_from(reply.get("error"))
    return reply


def _loaded_error_class(code: str) -> type[PlantangenetError]:
    """The error class with ``code`` among those defined outside ``plantangenet.errors``.

    (E.g. ``store_in_use``, ``projection_error``: found if their module is loaded.)
    """
    pending: list[type[PlantangenetError]] = [PlantangenetError]
    while pending:
        cls = pending.pop()
        if vars(cls).get("code") == code:
            return cls
        pending.extend(cls.__subclasses__())
    return PlantangenetError


def error_from(error: object) -> PlantangenetError:
    """The typed exception for an ``error`` map of a failure reply."""
    info: dict[str, Any] = error if isinstance(error, dict) else {}
    code = str(info.get("code", "error"))
    message = str(info.get("message", "error"))
    cls = ERROR_CLASSES.get(code) or _loaded_error_class(code)
    failure = cls.__new__(cls)
    PlantangenetError.__init__(failure, message)
    failure.code = code
    vars(failure).update(field=info.get("field"), sequence=info.get("seq", 0))
    return failure
