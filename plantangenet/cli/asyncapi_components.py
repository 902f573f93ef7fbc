"""The AsyncAPI document's shared components: the envelopes, events, errors and replies.

A base of the document's builder (``plantangenet.cli.asyncapi._Builder``): each method adds
the component schemas and messages of one part of the wire to the builder's
``schemas`` and ``messages``, from the code's registries.
"""

from __future__ import annotations

import dataclasses
import typing
from collections.abc import Mapping, Sequence
from typing import Any

from plantangenet.cli.asyncapi_schemas import (
    Schemas,
    _anchored,
    _described,
    _doc,
    _qualified,
    _ref,
    error_classes,
    markdown,
    readable_versions,
)
from plantangenet.cli.asyncapi_texts import (
    _APPEND_HEADERS,
    _ENVELOPE_TEXT,
    _LIVE_HEADERS,
    _REQUEST_KEYS,
    CONTENT_TYPE,
    _message_ids,
)
from plantangenet.domain import commands as c
from plantangenet.domain.decide import COMMAND_ID_PATTERN, ID_PATTERN
from plantangenet.domain.disclosure import Sample
from plantangenet.events import codec, envelope_layout
from plantangenet.events.base import EVENTS
from plantangenet.events.envelope import OPERATOR, Envelope
from plantangenet.projections.session import SessionState
from plantangenet.wire import protocol


class _Components:
    """The AsyncAPI document's shared components: the envelopes, events, errors and replies."""

    schemas: dict[str, Any]
    messages: dict[str, Any]
    wire: Schemas
    view: Schemas

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
                f"Command fields: {base}): describe them in plantangenet/cli/asyncapi.py"
            )
        return base

    # -- the stored envelope and the events ---------------------------------------------

    def _envelope(self) -> None:
        """The ``Envelope`` schema: each key the codec stores, its type and meaning.

        Raises :class:`RuntimeError` if the codec's keys are not the ones described here.
        """
        keys = envelope_layout._ENVELOPE_FIELDS
        if set(keys) != set(_ENVELOPE_TEXT):
            missing = sorted(set(keys) ^ set(_ENVELOPE_TEXT))
            raise RuntimeError(
                f"the codec's envelope keys changed ({missing}): describe them in "
                "plantangenet/cli/asyncapi.py"
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
        v1 = sorted(envelope_layout._V1_KEYS)
        since_v2 = sorted(envelope_layout._V2_KEYS - envelope_layout._V1_KEYS)
        since_v3 = sorted(set(keys) - envelope_layout._V2_KEYS)

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

                A client maps a code to its error class with
                `plantangenet.wire.protocol.ERROR_CLASSES`
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
        """A schema and a message per reply shape of :mod:`plantangenet.wire.protocol`."""
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
