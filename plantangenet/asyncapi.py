"""The wire protocol as an AsyncAPI 3.0 document, generated from the code's own registries.

``python -m plantangenet.asyncapi [--check] [PATH]`` writes ``PATH`` (default
``docs/asyncapi.yaml``); with ``--check`` it writes nothing and exits 1 if the file
differs from what it would write. ``tests/test_asyncapi.py`` runs the check, so the
committed document cannot drift from the code.

Nothing in the document is typed twice. It is built from:

* :mod:`plantangenet.protocol`: the command names (``COMMANDS``), the queries, the
  batch, the request envelope's keys, the reply shapes, the error classes, the subject
  forms and the size limits;
* :mod:`plantangenet.commands`: each command's fields and their type hints (the
  ``args`` of its request), and what counts as its content (the idempotency fingerprint);
* :mod:`plantangenet.authorize`: the action and resources each command is authorized as
  (:func:`~plantangenet.authorize.request_of`, called on a command with placeholders);
* :mod:`plantangenet.errors` and every other module of the package: each
  :class:`~plantangenet.errors.PlantangenetError` subclass's ``code`` and docstring;
* :mod:`plantangenet.events` (``EVENTS``): every event type, its current version's
  fields, and the older versions the registry's upcasters still read;
* :mod:`plantangenet.events.codec`: the stored envelope's keys (a key the codec writes
  that this module does not describe stops the generation);
* :mod:`plantangenet.journal`: the stream, the subject prefixes and the message ids.

What the code cannot say (what a key *means*) is written here once, next to the
check that the code still has that key. Type hints map to JSON Schema: ``str``,
``int``, ``float``, ``bool``, ``None`` to their types; ``bytes`` to a binary string (a
msgpack bin); ``tuple[X, ...]`` and ``Sequence[X]`` to arrays; ``Mapping[str, X]`` to
objects; unions and optionals to type lists or ``anyOf``; ``Literal`` to ``enum``;
dataclasses to component schemas of their fields. The YAML is written by a small
deterministic emitter (:func:`render`): no YAML library is needed.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import inspect
import math
import pkgutil
import re
import sys
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import plantangenet
from plantangenet import commands as c
from plantangenet import protocol
from plantangenet.access import REQUEST_INFO_HEADER
from plantangenet.authorize import OWNER_COMMANDS, request_of
from plantangenet.decide import COMMAND_ID_PATTERN, ID_PATTERN, PRINCIPAL_PATTERN
from plantangenet.disclose import QUERY_ACTION
from plantangenet.disclosure import Sample
from plantangenet.errors import PlantangenetError
from plantangenet.events import codec
from plantangenet.events.base import EVENTS, EventRegistry
from plantangenet.events.dust import TREASURY, DustDeposited
from plantangenet.events.envelope import OPERATOR, Envelope
from plantangenet.journal import (
    DEFAULT_LIVE_PREFIX,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
    _msg_ids,
)
from plantangenet.policy import _ROLE
from plantangenet.projections.session import SessionState

#: Where the document is written unless told otherwise (relative to the working directory).
DEFAULT_PATH = Path("docs/asyncapi.yaml")
#: The AsyncAPI version the document follows.
ASYNCAPI_VERSION = "3.0.0"
#: The content type of every payload.
CONTENT_TYPE = "application/x-msgpack"
#: The command to run when the document is stale.
REGENERATE = "python -m plantangenet.asyncapi"

_HEADER = (
    "# The plantangenet wire protocol, for a bot in any language (AsyncAPI 3.0).\n"
    f"# Generated from the code's registries by `{REGENERATE}`: do not edit;\n"
    "# tests/test_asyncapi.py fails when it is not current. Prose: docs/protocol.md.\n"
)

# -- what keys mean (the code holds the keys; these texts say what they are) ---------------

#: The request map's keys: the command field each one sets, and what it is.
_REQUEST_KEYS: dict[str, tuple[str | None, str]] = {
    "v": (None, "Protocol version: must be {version}; any other is refused (`invalid_command`)."),
    "id": (
        "command_id",
        "The command id: 1-128 printable ASCII characters, no spaces. It is the idempotency "
        "key of the sending principal: the same id again with the same content is a retry "
        "(answered with the first outcome, `duplicate: true`); with other content it is "
        "refused (`idempotency_conflict`), nothing written. Content is {content}; "
        "{not_content} is not.",
    ),
    "by": (
        "issued_by",
        "The agent the command is sent as (an agent bound to the sender); nil: the owner "
        "form (owners only; the policy does not restrict it).",
    ),
    "corr": (
        "correlation_id",
        "Correlation id: nil or 1-128 printable ASCII characters; defaults to the command id.",
    ),
    "ctx": (
        "context",
        "Extra attributes policy conditions may test; they never override the session's own "
        "(`hour`, `weekday`, `principal`, `identity.*`, `agent.*`, `command.*`, and the "
        "command's `resolution`, `start`, `end`, `axes`).",
    ),
    "args": (None, "The command's own fields (nil: none)."),
}

#: The stored envelope's keys (see ``plantangenet.events.codec``): what each one is.
_ENVELOPE_TEXT: dict[str, str] = {
    "f": "Envelope format: {format} is written; format 2 (written before revisions were "
    "recorded) is still read: it has no `n` (readers number its events); so is format 1 "
    "(written before principals were recorded): it has neither `u` nor `k` nor `n` "
    "(principal unknown, no fingerprint).",
    "t": "The event's stable type name (see `EventType`).",
    "v": "The event's schema version as stored; an older version is upcast when read "
    "(see the `event.*` schemas).",
    "id": "Event id, unique.",
    "s": "Session id.",
    "a": "The agent the command was sent as (the request's `by`); nil for the owner form. "
    "The agent an event is *about* is in the event's fields.",
    "c": "Causation id: the id of the command that caused the event (the request's `id`).",
    "r": "Correlation id: the request's `corr`, or the command id when it had none.",
    "at": "When the command was decided: an integer count of **microseconds** since the "
    "Unix epoch (1970-01-01T00:00:00Z), UTC. Every event of one command has the same `at`.",
    "p": "The hash chain: the SHA-256 digest (32 bytes) of the previous event of the same "
    "session exactly as stored, i.e. of the complete msgpack payload of that message (all "
    "its keys, `p` included); empty (0 bytes) on the session's first event. A message of the "
    "session's subject that is not an event of the session (a quarantined stray) is not a "
    "link: the event after it links to the event before it. `plantangenet verify SESSION` "
    "recomputes the chain.",
    "z": "On a command's first event: the authorization that let it through (the action, the "
    "resources, the id of the statement that allowed each resource or nil when none was "
    "needed, the policy version); nil on its other events and on a recorded refusal.",
    "u": "The principal that sent the command, as the NATS server vouched for it: "
    "`<user>@<account>`, or `{operator}` for the process that runs the session (and the "
    "service's own account); at most {max_principal} characters. Absent in format 1.",
    "k": "On a command's first event: the {fingerprint_bytes}-byte fingerprint of the "
    "command's content (what makes a reused command id a retry or a conflict); empty on its "
    "other events. Absent in format 1.",
    "n": "The revision: the event's position within its session (1 for its first event, "
    "then 2, 3, ... with no gap), the same in every copy of the session (a fork), where "
    "stream sequences differ. Stamped by the session's single writer; nil when the writer "
    "did not number it. Absent in formats 1 and 2: a reader counts those events in order.",
    "d": "The event's fields: the `event.<t>.v<v>` schema (see `StoredEvent`).",
}

#: The component schema of each shared request key.
_REQUEST_COMPONENTS = {
    "v": "ProtocolVersion",
    "id": "CommandId",
    "by": "IssuedBy",
    "corr": "CorrelationId",
    "ctx": "RequestContext",
}

#: Headers of a command request that the service reads (set by the NATS server).
_REQUEST_HEADERS: dict[str, str] = {
    REQUEST_INFO_HEADER: "Set by the NATS server on a request that crossed the service "
    "import of a bot's account (the import shares it): the service reads the sender's user "
    "and account from it. A header of that name sent by the bot is replaced by the server.",
}

#: Headers of an event republished on the live subject (set by JetStream's republish).
_LIVE_HEADERS: dict[str, str] = {
    "Nats-Stream": "The stream the event is stored in.",
    "Nats-Subject": "The subject the event is stored on (`<events prefix>.<session_id>`).",
    "Nats-Sequence": "The event's stream sequence (decimal).",
    "Nats-Time-Stamp": "When the stream stored it (RFC 3339).",
    "Nats-Last-Sequence": "The stream sequence of the session's event before it (decimal; "
    "`0` for the first). A follower that has delivered events up to sequence N and gets an "
    "event whose `Nats-Last-Sequence` is greater than N missed some: it reads them with "
    "`history` from N + 1 (live delivery is at most once).",
}

#: Headers of an append to the events subject (written by the journal, read by JetStream).
_APPEND_HEADERS: dict[str, str] = {
    "Nats-Msg-Id": "The message id JetStream deduplicates on: {msg_id} (operator), "
    "{remote_msg_id} (a remote principal's command); the index counts the command's events.",
    "Nats-Expected-Last-Subject-Sequence": "The session's last sequence the writer decided "
    "on (optimistic concurrency: a stale writer's append is refused, nothing stored).",
    "Nats-Batch-Id": "On each message of an atomic batch (a command with several events).",
    "Nats-Batch-Sequence": "The message's place in its atomic batch, from 1.",
    "Nats-Batch-Commit": "`1` on the last message of an atomic batch: store them all or none.",
}

#: Extra words on a command field, where the field's name says what the code checks.
_FIELD_RULES: dict[str, tuple[re.Pattern[str], str]] = {
    "agent_id": (ID_PATTERN, "An agent id."),
    "cursor_id": (ID_PATTERN, "A cursor id."),
    "kind": (
        ID_PATTERN,
        "What the agent is, e.g. `bot`, `client`, `bridge`: any id (not a fixed set). It is "
        "recorded and shown to policy conditions as `agent.kind`; an agent attaching itself "
        "states its own kind.",
    ),
    "role": (_ROLE, "A role name."),
    "bound_to": (
        PRINCIPAL_PATTERN,
        "A principal (`<user>@<account>`); only an owner may name one other than itself.",
    ),
    "owner": (PRINCIPAL_PATTERN, "A principal (`<user>@<account>`)."),
}

#: Placeholder item names for a command's list fields (for the authorization patterns).
_ITEM_NAMES = {"axes": "axis"}


# -- docstrings as markdown -----------------------------------------------------------------

_ROLE_TILDE = re.compile(r":[a-z]+:`~[\w.]*?\.?(\w+)`")
_ROLE_PLAIN = re.compile(r":[a-z]+:`([^`]+)`")
_LITERAL = re.compile(r"``(.+?)``", re.S)


def markdown(text: str) -> str:
    """``text`` (a docstring) cleaned and its reStructuredText roles and literals as markdown.

    ``:class:`~a.b.C``` becomes ```C```, ``:func:`a.b``` becomes ```a.b```, and a double
    backquoted literal a single backquoted one; lines lose their trailing spaces.
    """
    text = inspect.cleandoc(text)
    text = _ROLE_TILDE.sub(r"`\1`", text)
    text = _ROLE_PLAIN.sub(r"`\1`", text)
    text = _LITERAL.sub(r"`\1`", text)
    return "\n".join(line.rstrip() for line in text.split("\n")).strip()


def _doc(obj: object) -> str:
    """The markdown of ``obj``'s own docstring (empty if it has none)."""
    own = obj.__dict__.get("__doc__") if isinstance(obj, type) else getattr(obj, "__doc__", None)
    return markdown(own) if isinstance(own, str) else ""


def _described(schema: dict[str, Any], text: str) -> dict[str, Any]:
    """``schema`` with a description (a ``$ref`` is wrapped: its siblings would be ignored)."""
    if not text:
        return schema
    if "$ref" in schema:
        return {"description": text, "allOf": [schema]}
    return {"description": text, **schema}


def _ref(kind: str, name: str) -> dict[str, Any]:
    """A reference to ``#/components/<kind>/<name>``."""
    return {"$ref": f"#/components/{kind}/{name}"}


def _anchored(pattern: re.Pattern[str]) -> str:
    """A Python ``fullmatch`` pattern as an anchored JSON Schema pattern."""
    return f"^(?:{pattern.pattern})$" if "|" in pattern.pattern else f"^{pattern.pattern}$"


# -- type hints as JSON Schema ----------------------------------------------------------------

_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}
_NONE: dict[str, Any] = {"type": "null"}


class Schemas:
    """Turns type hints into JSON Schema, collecting dataclasses as component schemas.

    :param plain: describe values as :func:`plantangenet.views.plain` renders them (the
        ``state`` reply): bytes as hex text, datetimes as ISO 8601 text, map keys as text,
        every field present and none whose name starts with ``_``; a dataclass is described
        by its docstring's first paragraph. Otherwise values are as msgpack carries them
        (bytes as bin), and a dataclass by its whole docstring.
    """

    def __init__(self, components: dict[str, Any], *, plain: bool = False) -> None:
        self.components = components
        self.plain = plain
        self._names: dict[type, str] = {}

    def of(self, hint: Any) -> dict[str, Any]:
        """The JSON Schema of a value of type ``hint``."""
        if hint is Any:
            return {}
        if hint in _SCALARS:
            return {"type": _SCALARS[hint]}
        if hint is None or hint is type(None):
            return dict(_NONE)
        if hint is bytes:
            if self.plain:
                return {"type": "string", "pattern": "^[0-9a-f]*$"}
            return {"type": "string", "format": "binary"}
        if hint is datetime and self.plain:
            return {"type": "string", "format": "date-time"}
        origin, args = typing.get_origin(hint), typing.get_args(hint)
        if origin in (typing.Union, types.UnionType):
            return self._union(args)
        if origin is typing.Literal:
            kinds = {_SCALARS.get(type(a)) for a in args}
            schema: dict[str, Any] = {"enum": list(args)}
            if len(kinds) == 1 and None not in kinds:
                schema = {"type": kinds.pop(), **schema}
            return schema
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return {"type": "array", "items": self.of(args[0])}
        if origin in (Sequence, list, typing.Sequence):
            return {"type": "array", "items": self.of(args[0] if args else Any)}
        if origin in (Mapping, dict, typing.Mapping):
            return self._mapping(args)
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            return _ref("schemas", self.dataclass(hint))
        raise TypeError(f"no JSON Schema for the type hint {hint!r}")

    def _union(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """A union: plain types merged into one type list, other members in ``anyOf``."""
        members = list(args)
        # On the wire a dataclass travels as a map of its fields: "D or a mapping of the
        # same fields" (a convenience of the Python API) is D.
        if any(dataclasses.is_dataclass(m) for m in members):
            members = [m for m in members if typing.get_origin(m) not in (Mapping, dict)]
        merged: list[str] = []
        others: list[dict[str, Any]] = []
        for member in members:
            schema = self.of(member)
            if set(schema) == {"type"}:
                kind = schema["type"]
                names: list[str] = kind if isinstance(kind, list) else [kind]
                for name in names:
                    if name not in merged:
                        merged.append(name)
            elif schema not in others:
                others.append(schema)
        if merged:
            others.insert(0, {"type": merged[0] if len(merged) == 1 else merged})
        return others[0] if len(others) == 1 else {"anyOf": others}

    def _mapping(self, args: tuple[Any, ...]) -> dict[str, Any]:
        """``Mapping[K, V]``: an object of V (keys are text; int keys only in plain mode)."""
        key, value = args if args else (str, Any)
        schema: dict[str, Any] = {"type": "object"}
        if key is int and self.plain:
            schema["propertyNames"] = {"pattern": "^[0-9]+$"}
        elif key is not str:
            raise TypeError(f"no JSON Schema for a map keyed by {key!r}")
        if value is not Any:
            schema["additionalProperties"] = self.of(value)
        return schema

    def dataclass(self, cls: type) -> str:
        """The component name of ``cls``'s schema (added to the components on first use)."""
        name = self._names.get(cls)
        if name is not None:
            return name
        body = self.fields(cls, self._fields(cls))
        text = _doc(cls)
        if self.plain:  # a view's docstring goes on about how it is kept: its summary only
            text = text.split("\n\n")[0]
        body = {"title": cls.__name__, **_described(body, text)}
        name = cls.__name__
        while name in self.components and self.components[name] != body:
            name += ".view" if self.plain else "_"
        self._names[cls] = name
        self.components[name] = body
        return name

    def _fields(self, cls: type) -> list[dataclasses.Field[Any]]:
        """The fields of ``cls`` that its values carry."""
        fields = dataclasses.fields(cls)
        return [f for f in fields if not (self.plain and f.name.startswith("_"))]

    def fields(
        self,
        cls: type,
        fields: Sequence[dataclasses.Field[Any]],
        rules: Mapping[str, tuple[re.Pattern[str], str]] | None = None,
    ) -> dict[str, Any]:
        """An object schema of ``fields`` of ``cls``: their types, defaults and which are required.

        ``rules`` add a pattern and a description to fields of those names.
        """
        hints = typing.get_type_hints(cls)
        properties: dict[str, Any] = {}
        required: list[str] = []
        for f in fields:
            schema = self.of(hints[f.name])
            default = _default(f)
            if default is not dataclasses.MISSING:
                if "$ref" not in schema and not self.plain:
                    schema = {**schema, "default": default}
            elif not self.plain:
                required.append(f.name)
            rule = (rules or {}).get(f.name)
            kind = schema.get("type")
            if rule is not None and (kind == "string" or "string" in (kind or ())):
                schema = {**schema, "pattern": _anchored(rule[0])}
            properties[f.name] = _described(schema, rule[1] if rule else "")
        if self.plain:  # views.plain writes every field
            required = [f.name for f in fields]
        body: dict[str, Any] = {"type": "object", "additionalProperties": False}
        if required:
            body["required"] = required
        body["properties"] = properties
        return body


def _default(f: dataclasses.Field[Any]) -> Any:
    """A field's default as a JSON value, or ``MISSING`` (no default, or none to show)."""
    if f.default is not dataclasses.MISSING:
        value = f.default
    elif f.default_factory is not dataclasses.MISSING:
        value = f.default_factory()
    else:
        return dataclasses.MISSING
    if isinstance(value, tuple | list) and not value:
        return []
    if isinstance(value, Mapping) and not value:
        return {}
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return dataclasses.MISSING


# -- the registries ---------------------------------------------------------------------------


def error_classes() -> list[type[PlantangenetError]]:
    """Every :class:`PlantangenetError` subclass of the package that sets its own ``code``.

    Every module of the package is imported first (``__main__`` excepted), so a subclass
    defined outside :mod:`plantangenet.errors` is found too. Sorted by code, then module.
    """
    for module in pkgutil.walk_packages(plantangenet.__path__, "plantangenet."):
        if not module.name.endswith("__main__"):
            importlib.import_module(module.name)

    def below(cls: type[PlantangenetError]) -> Iterator[type[PlantangenetError]]:
        """Every subclass of ``cls``, at any depth."""
        for sub in cls.__subclasses__():
            yield sub
            yield from below(sub)

    found: set[type[PlantangenetError]] = {PlantangenetError, *below(PlantangenetError)}
    own = [
        cls
        for cls in found
        if cls.__module__.split(".")[0] == "plantangenet" and "code" in vars(cls)
    ]
    return sorted(own, key=lambda cls: (cls.code, cls.__module__, cls.__qualname__))


def readable_versions(registry: EventRegistry, type_name: str) -> list[int]:
    """The versions of ``type_name`` that ``registry`` reads, ascending.

    The current one, and every older one from which its upcasters (kept privately by
    the registry, which keeps no class for an older version) reach the current one.
    """
    current = registry.spec(type_name).version
    upcasters = registry._upcasters
    readable = [current]
    for version in range(current - 1, 0, -1):
        if (type_name, version) not in upcasters:
            break
        readable.insert(0, version)
    return readable


def _qualified(function: Callable[..., Any]) -> str:
    """``module.qualname`` of ``function``."""
    return f"{function.__module__}.{function.__qualname__}"


def _placeholder(cls: type[c.Command], issued_by: str | None = None) -> c.Command:
    """A ``cls`` command whose fields name themselves (``agent_id="<agent_id>"``...).

    What :func:`~plantangenet.authorize.request_of` makes of it shows the resources'
    patterns: text fields hold their own name, maps one key ``<key>``, required lists one
    item, required numbers 1; optional fields keep their defaults.
    """
    hints = typing.get_type_hints(cls)
    values: dict[str, Any] = {}
    for f in dataclasses.fields(cls):
        if f.name in protocol._BASE_FIELDS:
            continue
        hint, text = hints[f.name], str(hints[f.name])
        required = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
        if hint is str:
            values[f.name] = f"<{f.name}>"
        elif "Mapping" in text:
            values[f.name] = {"<key>": None}
        elif required and ("tuple" in text or "Sequence" in text):
            values[f.name] = (f"<{_ITEM_NAMES.get(f.name, f.name)}>",)
        elif required:
            values[f.name] = 1
    return cls(issued_by=issued_by, **values)


def authorization_of(cls: type[c.Command]) -> tuple[str, list[str], list[str]]:
    """How a ``cls`` command is authorized: its action, its resources' patterns, and the
    resources it also needs when sent as another agent than the one it acts on."""
    action, resources = request_of(_placeholder(cls))
    _, as_other = request_of(_placeholder(cls, issued_by="<by>"))
    return action, list(resources), [r for r in as_other if r not in resources]


# -- the document -------------------------------------------------------------------------


class _Builder:
    """Builds the document (see :func:`build`)."""

    def __init__(self) -> None:
        self.schemas: dict[str, Any] = {}
        self.messages: dict[str, Any] = {}
        self.parameters: dict[str, Any] = {}
        self.wire = Schemas(self.schemas)
        self.view = Schemas(self.schemas, plain=True)

    def build(self) -> dict[str, Any]:
        """The whole document; components, channels and operations sorted by name."""
        self._shared()
        self._envelope()
        self._events()
        self._errors()
        self._replies()
        requests = self._requests()
        channels, operations = self._channels(requests)
        return {
            "asyncapi": ASYNCAPI_VERSION,
            "info": self._info(),
            "defaultContentType": CONTENT_TYPE,
            "servers": {
                "nats": {
                    "host": "localhost:4222",
                    "protocol": "nats",
                    "description": "A NATS server with JetStream that `plantangenet serve` "
                    "answers on. In a locked-down deployment (`plantangenet nats-config`) a "
                    "bot connects as a user of an account of its own.",
                }
            },
            "channels": _sorted(channels),
            "operations": _sorted(operations),
            "components": {
                "schemas": _sorted(self.schemas),
                "messages": _sorted(self.messages),
                "parameters": _sorted(self.parameters),
            },
        }

    def _info(self) -> dict[str, Any]:
        """The info object: title, protocol version, and what the document describes."""
        return {
            "title": "Plantangenet wire protocol",
            "version": str(protocol.PROTOCOL_VERSION),
            "description": (
                "How a bot talks to plantangenet sessions with nothing but a NATS "
                "connection; operations are described from the **bot's** point of view. "
                "Commands and queries are NATS request/reply on "
                f"`{protocol.DEFAULT_COMMAND_PREFIX}.<session_id>.<command>`; a session's "
                "events are read in `history` pages and followed live on "
                f"`{DEFAULT_LIVE_PREFIX}.<session_id>`.\n\n"
                "Every payload is a msgpack map; the schemas describe the unpacked values "
                "(a `string` is a msgpack str, a `string` of `format: binary` a msgpack "
                "bin). Prefixes are the defaults (configurable by the deployment). Prose, "
                "standing and policy, retries: `docs/protocol.md`.\n\n"
                f"Generated by `{REGENERATE}` from the code's registries; do not edit."
            ),
        }

    # -- shared pieces -------------------------------------------------------------------

    def _shared(self) -> None:
        """Schemas several others use: the event type names, a disclosed data sample."""
        self.schemas["EventType"] = {
            "description": "The stable name of an event type.",
            "type": "string",
            "enum": sorted(EVENTS.types()),
        }
        self.wire.dataclass(Sample)

    def _request_key(self, key: str) -> dict[str, Any]:
        """The schema of one key of a request map."""
        field_name, text = _REQUEST_KEYS[key]
        content = [f for f in self._base_fields() if f not in c._NOT_CONTENT]
        wire = {name: k for k, (name, _) in _REQUEST_KEYS.items() if name}
        text = text.format(
            version=protocol.PROTOCOL_VERSION,
            content=", ".join(["the command name", *(f"`{wire[f]}`" for f in content if f in wire)])
            + " and `args` (maps in their key order: a retry must send the same bytes)",
            not_content=", ".join(
                f"`{wire[f]}`" for f in sorted(c._NOT_CONTENT) if f in wire and f != "command_id"
            ),
        )
        if key == "v":
            schema: dict[str, Any] = {"type": "integer", "const": protocol.PROTOCOL_VERSION}
        elif key == "id":
            schema = {"type": "string", "pattern": _anchored(protocol._COMMAND_ID)}
        elif key == "by":
            schema = {"type": ["string", "null"], "pattern": _anchored(ID_PATTERN)}
        elif key == "corr":
            schema = {"type": ["string", "null"], "pattern": _anchored(COMMAND_ID_PATTERN)}
        elif key == "ctx":
            hint = typing.get_type_hints(c.Command)[field_name or ""]
            schema = self.wire._union((hint, type(None)))
        else:
            raise KeyError(key)
        return _described(schema, text)

    def _base_fields(self) -> list[str]:
        """The fields every command has (checked against the request keys this module knows)."""
        base = [f.name for f in dataclasses.fields(c.Command)]
        known = {name for name, _ in _REQUEST_KEYS.values() if name}
        if set(base) != known | {"principal"} or set(_REQUEST_KEYS) != protocol._ENVELOPE_KEYS:
            raise RuntimeError(
                f"the request keys changed (protocol: {sorted(protocol._ENVELOPE_KEYS)}, "
                f"Command fields: {base}): describe them in plantangenet/asyncapi.py"
            )
        return base

    # -- the stored envelope and the events ---------------------------------------------

    def _envelope(self) -> None:
        """The ``Envelope`` schema: each key the codec stores, its type and meaning.

        Raises :class:`RuntimeError` if the codec's keys are not the ones described here.
        """
        keys = codec._ENVELOPE_FIELDS
        if set(keys) != set(_ENVELOPE_TEXT):
            missing = sorted(set(keys) ^ set(_ENVELOPE_TEXT))
            raise RuntimeError(
                f"the codec's envelope keys changed ({missing}): describe them in "
                "plantangenet/asyncapi.py"
            )
        hints = typing.get_type_hints(Envelope)
        properties: dict[str, Any] = {}
        for key, name in keys.items():
            text = _ENVELOPE_TEXT[key].format(
                format=codec.ENVELOPE_FORMAT,
                operator=OPERATOR,
                max_principal=codec.MAX_PRINCIPAL,
                fingerprint_bytes=codec.FINGERPRINT_BYTES,
            )
            schema: dict[str, Any]
            if key == "f":
                schema = {"type": "integer", "enum": list(range(1, codec.ENVELOPE_FORMAT + 1))}
            elif key == "t":
                schema = _ref("schemas", "EventType")
            elif key == "v":
                schema = {"type": "integer", "minimum": 1}
            elif key == "at":
                schema = {"type": "integer", "x-unit": "microseconds since the Unix epoch, UTC"}
            elif key == "d":
                schema = {"type": "object"}
            else:
                schema = self.wire.of(hints[name])
                if key == "u":
                    schema = {**schema, "maxLength": codec.MAX_PRINCIPAL}
            properties[key] = {**_described(schema, text), "x-field": name}
        v1 = sorted(codec._V1_KEYS)
        since_v2 = sorted(codec._V2_KEYS - codec._V1_KEYS)
        since_v3 = sorted(set(keys) - codec._V2_KEYS)

        def absent(names: list[str]) -> dict[str, Any]:
            return {"not": {"anyOf": [{"required": [k]} for k in names]}}

        self.schemas["Envelope"] = {
            "title": "Envelope",
            "description": markdown(
                f"""One stored event: a msgpack map with short keys (`plantangenet.events.codec`).

                The stream sequence is not in it: it is the message's (the `Nats-Sequence`
                header of a live event, or the number paired with it in a `history` page).
                The largest envelope is {codec.DEFAULT_MAX_EVENT_BYTES} bytes."""
            ),
            "type": "object",
            "additionalProperties": False,
            "required": v1,
            "properties": properties,
            "allOf": [
                {
                    "if": {"properties": {"f": {"const": 1}}},
                    "then": absent(since_v2 + since_v3),
                },
                {
                    "if": {"properties": {"f": {"const": 2}}},
                    "then": {"required": since_v2, **absent(since_v3)},
                },
                {
                    "if": {"properties": {"f": {"const": codec.ENVELOPE_FORMAT}}},
                    "then": {"required": since_v2 + since_v3},
                },
            ],
        }

    def _events(self) -> None:
        """A payload schema per event type and readable version; ``StoredEvent`` ties each
        ``(t, v)`` to its payload; the messages that carry stored events."""
        cases: list[dict[str, Any]] = []
        for type_name in sorted(EVENTS.types()):
            spec = EVENTS.spec(type_name)
            for version in readable_versions(EVENTS, type_name):
                name = f"event.{type_name}.v{version}"
                if version == spec.version:
                    fields = dataclasses.fields(spec.cls)  # type: ignore[arg-type]
                    body = self.wire.fields(spec.cls, fields)
                    body = {
                        "title": f"{type_name} v{version}",
                        **_described(body, _doc(spec.cls)),
                        "x-current": True,
                    }
                else:
                    upcaster = EVENTS._upcasters[(type_name, version)]
                    onwards = f" (then on to v{spec.version})" if version + 1 < spec.version else ""
                    body = {
                        "title": f"{type_name} v{version}",
                        "description": (
                            f"An older version of `{type_name}`, still read (never written): "
                            f"it is upcast to v{version + 1} by `{_qualified(upcaster)}`"
                            f"{onwards}. The registry keeps no class for it: its fields are "
                            f"the ones that upcaster reads; the description of "
                            f"`event.{type_name}.v{spec.version}` says what changed."
                        ),
                        "type": "object",
                        "x-current": False,
                        "x-upcast-by": _qualified(upcaster),
                    }
                self.schemas[name] = body
                cases.append(
                    {
                        "if": {
                            "required": ["t", "v"],
                            "properties": {"t": {"const": type_name}, "v": {"const": version}},
                        },
                        "then": {"properties": {"d": _ref("schemas", name)}},
                    }
                )
        self.schemas["StoredEvent"] = {
            "title": "StoredEvent",
            "description": "An envelope whose `d` is the payload of its type `t` at "
            "version `v`. This code writes each type at its current version (`x-current`).",
            "allOf": [_ref("schemas", "Envelope"), *cases],
        }
        self.messages["event.stored"] = {
            "name": "StoredEvent",
            "title": "A stored event",
            "summary": "One event of a session, as stored (decode with the `Envelope` layout).",
            "payload": _ref("schemas", "StoredEvent"),
        }
        self.messages["event.live"] = {
            "name": "LiveEvent",
            "title": "A stored event, republished live",
            "summary": "Each event the stream stores, republished on the session's live "
            "subject with its sequence headers.",
            "headers": self._headers("LiveHeaders", _LIVE_HEADERS, ["Nats-Sequence"]),
            "payload": _ref("schemas", "StoredEvent"),
        }
        ids = _message_ids()
        self.messages["event.append"] = {
            "name": "AppendedEvent",
            "title": "An event appended to the log",
            "summary": "How the service writes an event to the stream (bots never do).",
            "headers": self._headers(
                "AppendHeaders",
                {k: v.format(**ids) for k, v in _APPEND_HEADERS.items()},
                ["Nats-Msg-Id"],
            ),
            "payload": _ref("schemas", "StoredEvent"),
        }

    def _headers(
        self, name: str, headers: Mapping[str, str], required: Sequence[str] = ()
    ) -> dict[str, Any]:
        """A reference to the headers schema ``name`` (each header a string, described)."""
        schema: dict[str, Any] = {"type": "object"}
        if required:
            schema["required"] = list(required)
        schema["properties"] = {
            header: {"description": text, "type": "string"} for header, text in headers.items()
        }
        self.schemas[name] = schema
        return _ref("schemas", name)

    # -- errors and replies --------------------------------------------------------------

    def _errors(self) -> None:
        """``ErrorCode`` (every code, with its classes' docstrings) and ``Error``."""
        classes = error_classes()
        codes = sorted({cls.code for cls in classes})
        wire = set(protocol.ERROR_CLASSES)
        described = []
        for code in codes:
            owners = [cls for cls in classes if cls.code == code]
            text = "\n\n".join(_doc(cls) for cls in owners)
            entry: dict[str, Any] = {
                "const": code,
                "description": text,
                "x-class": ", ".join(f"{cls.__module__}.{cls.__qualname__}" for cls in owners),
            }
            if code not in wire:
                entry["x-local"] = True
            described.append(entry)
        self.schemas["ErrorCode"] = {
            "description": markdown(
                """The stable code of a failure (each error class's `code`).

                A client maps a code to its error class with `plantangenet.protocol.ERROR_CLASSES`
                (the classes of `plantangenet.errors`); an unknown code reads as the base
                error (`error`). Codes marked `x-local` are those of errors defined outside
                `plantangenet.errors` (access configuration, projections, the store): local
                tooling's, which a reply is not expected to carry."""
            ),
            "type": "string",
            "enum": codes,
            "oneOf": described,
        }
        self.schemas["Error"] = {
            "description": "What went wrong.",
            "type": "object",
            "additionalProperties": False,
            "required": ["code", "message"],
            "properties": {
                "code": _ref("schemas", "ErrorCode"),
                "message": {
                    "description": "For people; at most 2,000 characters (then `…`).",
                    "type": "string",
                    "maxLength": 2001,
                },
                "field": {
                    "description": "The offending field (a dotted path), when known.",
                    "type": "string",
                },
                "seq": {
                    "description": "A stream sequence: where an `access_refused` or "
                    "`insufficient_dust` refusal was recorded; the damaged message of "
                    "`log_damaged`; the sequence a too large state was at "
                    "(`reply_too_large`).",
                    "type": "integer",
                    "minimum": 1,
                },
            },
        }

    def _replies(self) -> None:
        """A schema and a message per reply shape of :mod:`plantangenet.protocol`."""
        version = {"type": "integer", "const": protocol.PROTOCOL_VERSION}
        self.schemas["reply.ok"] = {
            "title": "Command accepted",
            "description": "The reply to a stored command (`protocol.ok_reply`).",
            "type": "object",
            "additionalProperties": False,
            "required": ["v", "ok", "id", "first", "seq", "events", "duplicate"],
            "properties": {
                "v": version,
                "ok": {"const": True},
                "id": {"description": "The command id.", "type": "string"},
                "first": {
                    "description": "Stream sequence of the command's first event.",
                    "type": "integer",
                },
                "seq": {
                    "description": "Stream sequence of the command's last event.",
                    "type": "integer",
                },
                "events": {
                    "description": "The type names of the command's events, in order.",
                    "type": "array",
                    "items": _ref("schemas", "EventType"),
                },
                "duplicate": {
                    "description": "True: the command id was stored before (a retry); "
                    "nothing new was written and the reply describes the original.",
                    "type": "boolean",
                },
                "samples": {
                    "description": "`query_cursor` only: the compositor's data as the "
                    "policy discloses it to the cursor's agent (never stored; absent on a "
                    "retry and when there is none).",
                    "type": "array",
                    "items": _ref("schemas", "Sample"),
                },
            },
        }
        self.schemas["reply.error"] = {
            "title": "Failure",
            "description": "The reply to anything refused or failed (`protocol.error_reply`). "
            "Nothing of a refused command was written, except the refusal events "
            "(`AccessDenied`, `ChargeRefused`) that `seq` names.",
            "type": "object",
            "additionalProperties": False,
            "required": ["v", "ok", "error"],
            "properties": {"v": version, "ok": {"const": False}, "error": _ref("schemas", "Error")},
        }
        self.schemas["reply.batch"] = {
            "title": "Batch outcomes",
            "description": "The reply to a batch (`protocol.batch_reply`): per command, in "
            "the order sent, the reply its own request would have had.",
            "type": "object",
            "additionalProperties": False,
            "required": ["v", "ok", "outcomes"],
            "properties": {
                "v": version,
                "ok": {"const": True},
                "outcomes": {
                    "type": "array",
                    "maxItems": protocol.MAX_BATCH_COMMANDS,
                    "items": {
                        "oneOf": [_ref("schemas", "reply.ok"), _ref("schemas", "reply.error")]
                    },
                },
            },
        }
        self.schemas["reply.history"] = {
            "title": "A page of history",
            "description": markdown(
                """The reply to `history` (`protocol.history_reply`).

                A reader has **caught up** when a page says `more: false` and it has
                delivered every event up to that page's `last`; while `more` is true, it asks
                again from the page's last sequence + 1."""
            ),
            "type": "object",
            "additionalProperties": False,
            "required": ["v", "ok", "events", "last", "more"],
            "properties": {
                "v": version,
                "ok": {"const": True},
                "events": {
                    "description": "`[stream sequence, stored bytes]` per event, in order; "
                    "the bytes are a `StoredEvent` (msgpack). At most what fits in one "
                    "NATS message.",
                    "type": "array",
                    "maxItems": protocol.MAX_HISTORY_PAGE,
                    "items": {
                        "type": "array",
                        "minItems": 2,
                        "maxItems": 2,
                        "items": [
                            {"type": "integer", "minimum": 1},
                            {
                                "type": "string",
                                "format": "binary",
                                "contentMediaType": CONTENT_TYPE,
                                "x-decodes-to": "#/components/schemas/StoredEvent",
                            },
                        ],
                    },
                },
                "last": {
                    "description": "The session's last stream sequence as the page saw it "
                    "(0: no events).",
                    "type": "integer",
                    "minimum": 0,
                },
                "more": {
                    "description": "Whether events after the page exist.",
                    "type": "boolean",
                },
            },
        }
        state = self.view.dataclass(SessionState)
        self.schemas["reply.state"] = {
            "title": "A session's state",
            "description": "The reply to `state` (`protocol.data_reply`): the session folded "
            "from its log. A session with no events answers its new state "
            "(`status: new`), starting nothing.",
            "type": "object",
            "additionalProperties": False,
            "required": ["v", "ok", "state"],
            "properties": {"v": version, "ok": {"const": True}, "state": _ref("schemas", state)},
        }
        replies = {
            "reply.ok": "CommandAccepted",
            "reply.error": "Failure",
            "reply.batch": "BatchOutcomes",
            "reply.history": "HistoryPage",
            "reply.state": "SessionState",
        }
        for key, name in replies.items():
            self.messages[key] = {
                "name": name,
                "title": self.schemas[key]["title"],
                "payload": _ref("schemas", key),
            }

    # -- requests ------------------------------------------------------------------------

    def _request_properties(self, args: dict[str, Any]) -> dict[str, Any]:
        """A request map's properties: the shared keys, and ``args`` of ``args``."""
        if "CommandId" not in self.schemas:
            for key, component in _REQUEST_COMPONENTS.items():
                self.schemas[component] = self._request_key(key)
        properties = {key: _ref("schemas", name) for key, name in _REQUEST_COMPONENTS.items()}
        properties["args"] = _described({"anyOf": [args, _NONE]}, _REQUEST_KEYS["args"][1])
        return properties

    def _requests(self) -> dict[str, str]:
        """Request messages by wire name (every command, query and the batch)."""
        requests: dict[str, str] = {}
        batch_items: list[dict[str, Any]] = []
        for name in sorted(protocol.COMMANDS):
            cls = protocol.COMMANDS[name]
            side = protocol.SIDE_FIELDS.get(cls)
            fields = protocol.wire_fields(cls)
            args = self.wire.fields(cls, fields, _FIELD_RULES)
            description = _doc(cls)
            if side is not None:
                description += (
                    f"\n\n`{side}` is the session the request is sent to (the service sets "
                    "it; a request naming it is refused). Once that session stored the step, "
                    "the service records it in the chem's peer session too, as the operator, "
                    "under a command id derived from the sender, the session and the request's "
                    "`id`: a request that failed half-way is completed by sending it again."
                )
            args = {"title": f"{name} args", **_described(args, description)}
            self.schemas[f"args.{name}"] = args
            properties = self._request_properties(_ref("schemas", f"args.{name}"))
            self.schemas[f"request.{name}"] = {
                "title": f"{name} request",
                "type": "object",
                "additionalProperties": False,
                "required": ["v", "id"],
                "properties": properties,
            }
            action, resources, as_other = authorization_of(cls)
            authorization: dict[str, Any] = {"action": action, "resources": resources}
            notes = []
            if cls is c.DiscloseChem:
                notes.append(
                    "Sent by the service to the disclosing session of a `query_chem`; a bot "
                    "needs standing in the disclosing session. The chem's terms, not the "
                    "policy, say what is disclosed."
                )
            elif cls is protocol.QueryChemRequest:
                notes.append(
                    "Recorded and charged in the session it is sent to (`QueryChem`); the "
                    "service then sends `DiscloseChem` to the chem's peer session, as the "
                    "operator, and refunds the charge if the peer refuses."
                )
            elif issubclass(cls, c.DataQuery):
                authorization["resources"] = ["axis.<axis>"]
                notes.append(
                    f"`{QUERY_ACTION}` is evaluated for the cursor's agent (even in the owner "
                    "form) on `axis.<axis>` for each axis of the cursor; the allowing "
                    "statement's `disclosure` shapes the data."
                )
            if as_other:
                authorization["as_another_agent"] = as_other
                notes.append(
                    "Sent as another agent (`by`) than the one it acts on, it also needs the "
                    "action on `as_another_agent`."
                )
            if any(r.startswith("dust.agent.") for r in resources):
                notes.append(
                    f"The dust account `{TREASURY}` (the session's own) is `dust.treasury`."
                )
            if cls in OWNER_COMMANDS:
                notes.append("Owners only, in the owner form (`by: nil`); never an agent.")
            if cls is c.StartSession:
                notes.append(
                    "Sent in the owner form; whoever starts a new session becomes its first owner."
                )
            if cls is c.DetachAgent:
                notes.append("An agent detaching itself needs no policy.")
            if cls is c.AttachAgent:
                notes.append(
                    "Any principal may attach itself (sent `by` the agent it attaches) if the "
                    "policy allows this to an agent with no role; an owner attaches anyone."
                )
            text = " ".join(n for n in notes if n)
            if text:
                authorization["notes"] = text
            batchable = name not in protocol.UNBATCHED
            self.messages[f"request.{name}"] = {
                "name": name,
                "title": f"{name} ({cls.__name__})",
                "summary": _doc(cls).split("\n\n")[0].replace("\n", " "),
                "headers": self._headers("RequestHeaders", _REQUEST_HEADERS),
                "payload": _ref("schemas", f"request.{name}"),
                "x-authorization": authorization,
                "x-batchable": batchable,
                "x-max-bytes": protocol.MAX_REQUEST_BYTES,
            }
            requests[name] = f"request.{name}"
            if batchable:
                item = {"cmd": {"const": name}, **properties}
                item["v"] = _described(item["v"], "Optional in a batch item.")
                batch_items.append(
                    {
                        "type": "object",
                        "additionalProperties": False,
                        "required": ["cmd", "id"],
                        "properties": item,
                    }
                )
        self.schemas["request.history"] = {
            "title": "history request",
            "description": "A page of the session's stored events (an empty payload asks "
            "for the first page).",
            "type": "object",
            "additionalProperties": False,
            "required": ["v"],
            "properties": {
                "v": {"type": "integer", "const": protocol.PROTOCOL_VERSION},
                "from": {
                    "description": "The first stream sequence wanted.",
                    "type": "integer",
                    "minimum": 1,
                    "default": 1,
                },
                "max": {
                    "description": "The most events in the page.",
                    "type": "integer",
                    "minimum": 1,
                    "maximum": protocol.MAX_HISTORY_PAGE,
                    "default": protocol.MAX_HISTORY_PAGE,
                },
            },
        }
        self.schemas["request.state"] = {
            "title": "state request",
            "description": "The payload is not read: send an empty one.",
        }
        unbatched = sorted(protocol.UNBATCHED | protocol.QUERIES)
        self.schemas["request.batch"] = {
            "title": "batch request",
            "description": markdown(
                f"""Several commands for one session in one request, decided and stored in
                order, each on its own (a refused one does not stop the others). Each item is
                a request map plus `cmd`, its command's wire name; {", ".join(unbatched)}
                cannot be batched. A malformed item is refused on its own; a malformed batch
                gets one failure reply and nothing of it is stored."""
            ),
            "type": "object",
            "additionalProperties": False,
            "required": ["v", "commands"],
            "properties": {
                "v": {"type": "integer", "const": protocol.PROTOCOL_VERSION},
                "commands": {
                    "type": "array",
                    "maxItems": protocol.MAX_BATCH_COMMANDS,
                    "items": {"oneOf": batch_items},
                },
            },
        }
        for name in sorted(protocol.QUERIES | {protocol.BATCH}):
            self.messages[f"request.{name}"] = {
                "name": name,
                "title": self.schemas[f"request.{name}"]["title"],
                "headers": self._headers("RequestHeaders", _REQUEST_HEADERS),
                "payload": _ref("schemas", f"request.{name}"),
                "x-max-bytes": protocol.MAX_REQUEST_BYTES,
            }
            requests[name] = f"request.{name}"
        return requests

    # -- channels and operations ---------------------------------------------------------

    def _channels(self, requests: Mapping[str, str]) -> tuple[dict[str, Any], dict[str, Any]]:
        """The channels (a subject per request, the lane form, replies, live, the log) and
        the operations on them; ``requests`` maps wire names to request messages."""
        self.parameters["session_id"] = {
            "description": "The session id: 1-128 of `[A-Za-z0-9_-]` (one subject token).",
        }
        session = _ref("parameters", "session_id")
        replies = ["reply.ok", "reply.error", "reply.batch", "reply.history", "reply.state"]
        channels: dict[str, Any] = {
            "reply": {
                "address": None,
                "title": "Replies",
                "description": "The request's reply subject (the requester's inbox): NATS "
                "request/reply. A request from another account is answered only on the "
                "`_R_.` reply subject the server issued for it.",
                "messages": {key: _ref("messages", key) for key in replies},
            }
        }
        operations: dict[str, Any] = {}
        for name, message in requests.items():
            if name == "history":
                answers = ["reply.history"]
            elif name == "state":
                answers = ["reply.state"]
            elif name == protocol.BATCH:
                answers = ["reply.batch"]
            else:
                answers = ["reply.ok"]
            channel = f"cmd.{name}"
            channels[channel] = {
                "address": protocol.command_subject("{session_id}", name),
                "title": f"{name} requests",
                "messages": {"request": _ref("messages", message)},
                "parameters": {"session_id": session},
            }
            operations[f"send.{name}"] = {
                "action": "send",
                "title": f"Send {name}",
                "channel": {"$ref": f"#/channels/{channel}"},
                "messages": [{"$ref": f"#/channels/{channel}/messages/request"}],
                "reply": {
                    "channel": {"$ref": "#/channels/reply"},
                    "messages": [
                        {"$ref": f"#/channels/reply/messages/{key}"}
                        for key in [*answers, "reply.error"]
                    ],
                },
            }
        prefix = protocol.DEFAULT_COMMAND_PREFIX
        address = f"{prefix}.{{lane}}.{{account}}.{{session_id}}.{{command}}"
        # The service's own parser and subscription agree with this form (or it changed).
        if protocol.parse_subject(f"{prefix}.3.ACC.S.start") != ("S", "start", "ACC") or (
            protocol.lane_subjects(3) != f"{prefix}.3.*.*.*"
        ):
            raise RuntimeError("the lane subject form changed: update plantangenet/asyncapi.py")
        channels["cmd.lane"] = {
            "address": address,
            "title": "Requests as the service receives them",
            "description": markdown(
                f"""A bot publishes on `{prefix}.<session_id>.<command>`; in a locked-down
                deployment its account's import of the command service maps that onto its
                ingress lane, `{prefix}.<lane>.<account>.<session_id>.<command>` in the
                service's account, where nats-server sets the account token. Bots never
                publish here themselves; the payloads are the same."""
            ),
            "parameters": {
                "lane": {
                    "description": f"The bot's ingress lane: 0 to lanes - 1 (default "
                    f"{protocol.DEFAULT_LANES} lanes; `plantangenet nats-config --lanes`)."
                },
                "account": {"description": "The bot's NATS account."},
                "session_id": session,
                "command": {
                    "description": "The command or query's wire name.",
                    "enum": sorted(requests),
                },
            },
            "messages": {name: _ref("messages", requests[name]) for name in sorted(requests)},
        }
        channels["live"] = {
            "address": f"{DEFAULT_LIVE_PREFIX}.{{session_id}}",
            "title": "A session's events, live",
            "description": markdown(
                """The stream republishes every event it stores here, with its sequence
                headers. Subscribe *first*, then read `history` pages until one says
                `more: false`, delivering up to its `last`; then take live events, skipping
                those already delivered. An event whose `Nats-Last-Sequence` is past the last
                one delivered means some were missed (live delivery is at most once): read
                them with `history`. After a quiet while, a `history` request from the next
                sequence says whether anything was missed."""
            ),
            "parameters": {"session_id": session},
            "messages": {"event": _ref("messages", "event.live")},
        }
        channels["events"] = {
            "address": f"{DEFAULT_SUBJECT_PREFIX}.{{session_id}}",
            "title": "A session's log",
            "description": f"Where the session's events are stored, in the stream "
            f"`{DEFAULT_STREAM}` (one subject per session; the stream holds every session). "
            "Only the service reads and writes it; bots use `history` and the live subject.",
            "parameters": {"session_id": session},
            "messages": {"event": _ref("messages", "event.append")},
        }
        operations["receive.live"] = {
            "action": "receive",
            "title": "Follow a session's events",
            "channel": {"$ref": "#/channels/live"},
            "messages": [{"$ref": "#/channels/live/messages/event"}],
        }
        return channels, operations


def _message_ids() -> dict[str, str]:
    """The ``Nats-Msg-Id`` forms the journal writes, as patterns (from the journal itself)."""
    event = DustDeposited("<account>", 1)
    forms = {}
    for key, principal in (("msg_id", OPERATOR), ("remote_msg_id", "<principal>")):
        envelope = Envelope(event, "s", "e", "<command_id>", "r", _EPOCH, principal=principal)
        (msg_id,) = _msg_ids("<session_id>", [envelope])
        forms[key] = f"`{msg_id.replace(':0', ':<index>')}`"
    return forms


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _sorted(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` with its keys in sorted order."""
    return {key: mapping[key] for key in sorted(mapping)}


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the wire protocol, as plain data (deterministic)."""
    return _Builder().build()


# -- YAML ---------------------------------------------------------------------------------

_PLAIN = re.compile(r"[A-Za-z_$][A-Za-z0-9_.$/-]*(?: [A-Za-z0-9_.$/-]+)*")
_VERSION_LIKE = re.compile(r"\d+(?:\.\d+){2,}")
#: Words YAML (1.1 or 1.2) reads as something other than a string.
_RESERVED = frozenset({"y", "yes", "n", "no", "true", "false", "on", "off", "null"})
_LINE_BREAKS = frozenset({"\x85", "\u2028", "\u2029", "\ufeff"})


def quoted(text: str) -> str:
    """``text`` as a YAML double-quoted scalar (every character that needs it escaped)."""
    out = ['"']
    for ch in text:
        code = ord(ch)
        if ch in '"\\':
            out.append("\\" + ch)
        elif 0x20 <= code < 0x7F:
            out.append(ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif code >= 0xA0 and ch.isprintable() and ch not in _LINE_BREAKS:
            out.append(ch)
        elif code <= 0xFFFF:
            out.append(f"\\u{code:04x}")
        else:
            out.append(f"\\U{code:08x}")
    out.append('"')
    return "".join(out)


def scalar(value: Any) -> str:
    """One scalar (``None``, a bool, an int, a finite float or a string) as YAML."""
    if value is None:
        return "null"
    if value is True:
        return "true"
    if value is False:
        return "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no YAML for {value!r}")
        mantissa, e, exponent = repr(value).partition("e")
        if "." not in mantissa:
            mantissa += ".0"  # YAML 1.1 reads a float only with its point
        if e and exponent[0] not in "+-":
            exponent = "+" + exponent
        return mantissa + (f"e{exponent}" if e else "")
    if isinstance(value, str):
        plain = _PLAIN.fullmatch(value) and value.lower() not in _RESERVED
        return value if plain or _VERSION_LIKE.fullmatch(value) else quoted(value)
    raise TypeError(f"no YAML scalar for a {type(value).__name__}")


def _literal(value: Any) -> bool:
    """Whether ``value`` is text best written as a literal block (``|-``)."""
    if not isinstance(value, str) or "\n" not in value:
        return False
    lines = value.split("\n")
    return (
        value == value.strip()
        and not lines[0].startswith(" ")
        and all(line == line.rstrip() for line in lines)
        and all(ch.isprintable() and ch not in _LINE_BREAKS for ch in value.replace("\n", ""))
    )


def _inline(head: str, value: Any, indent: int) -> list[str]:
    """``head`` followed by ``value`` on the same line (or a literal block under it)."""
    if isinstance(value, dict):
        return [head + " {}"]
    if isinstance(value, list):
        return [head + " []"]
    if _literal(value):
        pad = " " * indent
        return [head + " |-", *(pad + line if line else "" for line in value.split("\n"))]
    return [f"{head} {scalar(value)}"]


def _block(value: dict[str, Any] | list[Any], indent: int) -> list[str]:
    """The lines of a non-empty mapping or sequence, as a block at ``indent``."""
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise TypeError(f"YAML keys here are strings, got {key!r}")
            head = f"{pad}{scalar(key)}:"
            if isinstance(item, dict | list) and item:
                lines += [head, *_block(item, indent + 2)]
            else:
                lines += _inline(head, item, indent + 2)
        return lines
    for item in value:
        if isinstance(item, dict) and item:
            nested = _block(item, indent + 2)
            lines += [f"{pad}- {nested[0][indent + 2 :]}", *nested[1:]]
        elif isinstance(item, list) and item:
            lines += [f"{pad}-", *_block(item, indent + 2)]
        else:
            lines += _inline(f"{pad}-", item, indent + 2)
    return lines


def render(document: dict[str, Any]) -> str:
    """``document`` as YAML text: block style, keys in the order given, a header comment."""
    return _HEADER + "\n".join(_block(document, 0)) + "\n"


def generate() -> str:
    """The text of ``docs/asyncapi.yaml`` as the code now describes the protocol."""
    return render(build())


def main(argv: Sequence[str] | None = None) -> int:
    """Write the document, or (``--check``) say whether the file is current; the exit status."""
    parser = argparse.ArgumentParser(
        prog=REGENERATE, description="Write (or check) the wire protocol's AsyncAPI document."
    )
    parser.add_argument("path", nargs="?", type=Path, default=DEFAULT_PATH)
    parser.add_argument(
        "--check", action="store_true", help="exit 1 if the file is not what would be written"
    )
    options = parser.parse_args(argv)
    path: Path = options.path
    text = generate()
    if options.check:
        current = path.read_text(encoding="utf-8") if path.exists() else None
        if current == text:
            return 0
        why = "is missing" if current is None else f"is out of date: {_difference(current, text)}"
        print(f"{path} {why}: run `{REGENERATE}`", file=sys.stderr)
        return 1
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return 0


def _difference(old: str, new: str) -> str:
    """Where ``old`` (the file) first differs from ``new`` (what would be written)."""
    for number, (a, b) in enumerate(zip(old.split("\n"), new.split("\n"), strict=False), 1):
        if a != b:
            return f"line {number} differs"
    return "it differs in length"


if __name__ == "__main__":
    raise SystemExit(main())
