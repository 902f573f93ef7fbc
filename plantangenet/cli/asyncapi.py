"""The wire protocol as an AsyncAPI 3.0 document, generated from the code's own registries.

``python -m plantangenet.cli.asyncapi [--check] [PATH]`` writes ``PATH`` (default
``docs/asyncapi.yaml``); with ``--check`` it writes nothing and exits 1 if the file
differs from what it would write. ``tests/test_asyncapi.py`` runs the check, so the
committed document cannot drift from the code.

Nothing in the document is typed twice. It is built from:

* :mod:`plantangenet.wire.protocol`: the command names (``COMMANDS``), the queries, the
  batch, the request envelope's keys, the reply shapes, the error classes, the subject
  forms and the size limits;
* :mod:`plantangenet.domain.commands`: each command's fields and their type hints (the
  ``args`` of its request), and what counts as its content (the idempotency fingerprint);
* :mod:`plantangenet.domain.authorize`: the action and resources each command is authorized as
  (:func:`~plantangenet.authorize.request_of`, called on a command with placeholders);
* :mod:`plantangenet.errors` and every other module of the package: each
  :class:`~plantangenet.errors.PlantangenetError` subclass's ``code`` and docstring;
* :mod:`plantangenet.events` (``EVENTS``): every event type, its current version's
  fields, and the older versions the registry's upcasters still read;
* :mod:`plantangenet.events.codec`: the stored envelope's keys (a key the codec writes
  that this module does not describe stops the generation);
* :mod:`plantangenet.log.journal`: the stream, the subject prefixes and the message ids.

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
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from plantangenet.cli.asyncapi_components import _Components
from plantangenet.cli.asyncapi_schemas import _NONE, _described, _doc, _ref
from plantangenet.cli.asyncapi_schemas import Schemas as Schemas
from plantangenet.cli.asyncapi_schemas import authorization_of as authorization_of
from plantangenet.cli.asyncapi_schemas import error_classes as error_classes
from plantangenet.cli.asyncapi_schemas import markdown as markdown
from plantangenet.cli.asyncapi_schemas import readable_versions as readable_versions
from plantangenet.cli.asyncapi_texts import (
    _FIELD_RULES,
    _REQUEST_COMPONENTS,
    _REQUEST_HEADERS,
    _REQUEST_KEYS,
)
from plantangenet.cli.asyncapi_texts import CONTENT_TYPE as CONTENT_TYPE
from plantangenet.cli.asyncapi_yaml import REGENERATE as REGENERATE
from plantangenet.cli.asyncapi_yaml import quoted as quoted
from plantangenet.cli.asyncapi_yaml import render as render
from plantangenet.cli.asyncapi_yaml import scalar as scalar
from plantangenet.data.disclose import QUERY_ACTION
from plantangenet.domain import commands as c
from plantangenet.domain.authorize import OWNER_COMMANDS
from plantangenet.events.dust import TREASURY
from plantangenet.log.journal import (
    DEFAULT_LIVE_PREFIX,
    DEFAULT_STREAM,
    DEFAULT_SUBJECT_PREFIX,
)
from plantangenet.wire import protocol

#: Where the document is written unless told otherwise (relative to the working directory).
DEFAULT_PATH = Path("docs/asyncapi.yaml")
#: The AsyncAPI version the document follows.
ASYNCAPI_VERSION = "3.0.0"


# -- the document -------------------------------------------------------------------------


class _Builder(_Components):
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
            raise RuntimeError("the lane subject form changed: update plantangenet/cli/asyncapi.py")
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


def _sorted(mapping: Mapping[str, Any]) -> dict[str, Any]:
    """``mapping`` with its keys in sorted order."""
    return {key: mapping[key] for key in sorted(mapping)}


def build() -> dict[str, Any]:
    """The AsyncAPI 3.0 document of the wire protocol, as plain data (deterministic)."""
    return _Builder().build()


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
