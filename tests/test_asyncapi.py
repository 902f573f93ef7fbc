"""The AsyncAPI document (docs/asyncapi.yaml) is current, complete, and says what the code does.

Pure: no NATS. The committed file must be exactly what ``python -m plantangenet.cli.asyncapi``
writes (the freshness test). It is read back with a small reader of the YAML subset the
generator writes (and with PyYAML too, when it is installed), and real payloads, made by
the code's own codec, encoders and reply builders, are checked against its schemas with a
small JSON Schema checker: a key, type or value the code writes that the document does
not describe (or the other way round) fails a test.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import types
import typing
from collections.abc import Iterator, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import msgpack
import pytest

from plantangenet.actors.session import CommandResult
from plantangenet.cli import asyncapi, asyncapi_schemas
from plantangenet.domain.authorize import request_of
from plantangenet.domain.disclosure import Sample
from plantangenet.errors import InvalidCommand, PlantangenetError
from plantangenet.events import CODEC, EVENTS, Authorization, Envelope, Event, envelope_layout
from plantangenet.events.codec import ENVELOPE_FORMAT, FINGERPRINT_BYTES
from plantangenet.projections.session import SessionState, evolve
from plantangenet.projections.views import plain
from plantangenet.wire import protocol

ROOT = Path(__file__).resolve().parent.parent
DOCUMENT = ROOT / "docs" / "asyncapi.yaml"
PROTOCOL_MD = ROOT / "docs" / "protocol.md"


@pytest.fixture(scope="module")
def built() -> dict[str, Any]:
    """The document as the code describes the protocol now."""
    return asyncapi.build()


@pytest.fixture(scope="module")
def committed() -> dict[str, Any]:
    """The committed docs/asyncapi.yaml, read back."""
    document: dict[str, Any] = parse_yaml(DOCUMENT.read_text(encoding="utf-8"))
    return document


# -- a reader of the YAML subset asyncapi.render writes ------------------------------------


def parse_yaml(text: str) -> Any:
    """The value of ``text``: block mappings and sequences, plain and double-quoted
    scalars, ``|-`` literal blocks, ``{}`` and ``[]``; full-line comments at column 0.

    Anything else raises: this reads what the generator writes, strictly.
    """
    lines = [line for line in text.split("\n") if not line.startswith("#")]
    while lines and lines[-1] == "":
        lines.pop()
    value, end = _node(lines, 0, 0)
    if end != len(lines):
        raise ValueError(f"line {end + 1}: unexpected {lines[end]!r}")
    return value


def _indent(line: str) -> int:
    """The number of spaces ``line`` starts with."""
    return len(line) - len(line.lstrip(" "))


def _node(lines: list[str], i: int, indent: int) -> tuple[Any, int]:
    """The block (mapping or sequence) at line ``i``, ``indent`` deep; and the line after it."""
    rest = lines[i][indent:]
    if rest == "-" or rest.startswith("- "):
        return _sequence(lines, i, indent)
    return _mapping(lines, i, indent)


def _mapping(lines: list[str], i: int, indent: int) -> tuple[dict[str, Any], int]:
    """The block mapping whose entries start ``indent`` deep from line ``i``."""
    out: dict[str, Any] = {}
    while i < len(lines):
        line = lines[i]
        if _indent(line) < indent:
            break
        if _indent(line) > indent or line[indent:].startswith("-"):
            raise ValueError(f"line {i + 1}: unexpected {line!r}")
        key, rest = _split_key(line[indent:])
        if key in out:
            raise ValueError(f"line {i + 1}: key {key!r} twice")
        out[key], i = _value(lines, i, rest, indent + 2)
    return out, i


def _sequence(lines: list[str], i: int, indent: int) -> tuple[list[Any], int]:
    """The block sequence whose dashes are ``indent`` deep from line ``i``."""
    out: list[Any] = []
    while i < len(lines) and _indent(lines[i]) == indent and lines[i][indent:][:1] == "-":
        item = lines[i][indent + 1 :]
        if item and not item.startswith(" "):
            raise ValueError(f"line {i + 1}: unexpected {lines[i]!r}")
        item = item[1:]
        if _starts_mapping(item):
            lines[i] = " " * (indent + 2) + item
            value, i = _mapping(lines, i, indent + 2)
        else:
            value, i = _value(lines, i, item, indent + 2)
        out.append(value)
    return out, i


def _starts_mapping(item: str) -> bool:
    """Whether a sequence item's text (after ``- ``) is the first entry of a mapping."""
    if item.startswith('"'):
        return item[_quoted_end(item) :].startswith(":")
    colon = item.find(":")
    return colon > 0 and item[colon + 1 : colon + 2] in ("", " ")


def _value(lines: list[str], i: int, rest: str, content: int) -> tuple[Any, int]:
    """The value after a key or a dash on line ``i`` (``rest``); nested lines at ``content``."""
    if rest == "":
        if i + 1 >= len(lines) or _indent(lines[i + 1]) < content:
            raise ValueError(f"line {i + 1}: an empty value")
        return _node(lines, i + 1, _indent(lines[i + 1]))
    if rest == "|-":
        block: list[str] = []
        i += 1
        while i < len(lines) and (lines[i] == "" or _indent(lines[i]) >= content):
            block.append(lines[i][content:])
            i += 1
        return "\n".join(block), i
    if rest == "{}":
        return {}, i + 1
    if rest == "[]":
        return [], i + 1
    return _scalar(rest), i + 1


def _split_key(text: str) -> tuple[str, str]:
    """``(key, the text after "key: ")`` of a mapping entry."""
    if text.startswith('"'):
        end = _quoted_end(text)
        key, rest = _unquote(text[:end]), text[end:]
    else:
        colon = text.index(":")
        key, rest = text[:colon], text[colon:]
    if not rest.startswith(":") or rest[1:2] not in ("", " "):
        raise ValueError(f"not a mapping entry: {text!r}")
    return key, rest[2:]


def _quoted_end(text: str) -> int:
    """The index just past the double-quoted string ``text`` starts with."""
    i = 1
    while i < len(text):
        if text[i] == "\\":
            i += 2
        elif text[i] == '"':
            return i + 1
        else:
            i += 1
    raise ValueError(f"unterminated string: {text!r}")


_ESCAPES = {'"': '"', "\\": "\\", "n": "\n", "t": "\t"}


def _unquote(text: str) -> str:
    """The value of a double-quoted scalar (the escapes ``quoted`` writes)."""
    out: list[str] = []
    i = 1
    while i < len(text) - 1:
        ch = text[i]
        if ch != "\\":
            out.append(ch)
            i += 1
            continue
        kind = text[i + 1]
        if kind in _ESCAPES:
            out.append(_ESCAPES[kind])
            i += 2
        elif kind in "uU":
            size = 4 if kind == "u" else 8
            out.append(chr(int(text[i + 2 : i + 2 + size], 16)))
            i += 2 + size
        else:
            raise ValueError(f"unknown escape in {text!r}")
    return "".join(out)


def _scalar(text: str) -> Any:
    """A scalar: quoted text, ``null``, booleans, numbers, or plain text."""
    if text.startswith('"'):
        if _quoted_end(text) != len(text):
            raise ValueError(f"text after a string: {text!r}")
        return _unquote(text)
    plain: dict[str, Any] = {"null": None, "true": True, "false": False}
    if text in plain:
        return plain[text]
    if re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if re.fullmatch(r"-?[0-9]+\.[0-9]+(e[-+][0-9]+)?", text):
        return float(text)
    if re.search(r": | #|^[-?:,\[\]{}#&*!|>'%@`]|^[0-9]+(\.[0-9]+)?$", text):
        raise ValueError(f"not a plain scalar: {text!r}")
    return text


# -- a checker of the JSON Schema keywords the document uses -----------------------------------


def problems(value: Any, schema: Any, document: Mapping[str, Any], path: str = "$") -> list[str]:
    """Why ``value`` does not fit ``schema`` (empty: it fits). ``$ref`` resolves in ``document``."""
    if schema is True or schema == {}:
        return []
    if schema is False:
        return [f"{path}: no value is allowed here"]
    found: list[str] = []
    if "$ref" in schema:
        target: Any = document
        for part in schema["$ref"].removeprefix("#/").split("/"):
            target = target[part]
        found += problems(value, target, document, path)
    for sub in schema.get("allOf", ()):
        found += problems(value, sub, document, path)
    if "anyOf" in schema and all(problems(value, s, document, path) for s in schema["anyOf"]):
        found.append(f"{path}: fits none of anyOf")
    if "oneOf" in schema:
        fits = sum(not problems(value, s, document, path) for s in schema["oneOf"])
        if fits != 1:
            found.append(f"{path}: fits {fits} of oneOf, not exactly one")
    if "not" in schema and not problems(value, schema["not"], document, path):
        found.append(f"{path}: fits what `not` excludes")
    if "if" in schema:
        branch = "else" if problems(value, schema["if"], document, path) else "then"
        if branch in schema:
            found += problems(value, schema[branch], document, path)
    if "const" in schema and not _same(value, schema["const"]):
        found.append(f"{path}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and not any(_same(value, e) for e in schema["enum"]):
        found.append(f"{path}: {value!r} is not one of the enum")
    if "type" in schema:
        kinds = schema["type"] if isinstance(schema["type"], list) else [schema["type"]]
        if not any(_is(value, kind, schema.get("format")) for kind in kinds):
            return [*found, f"{path}: {type(value).__name__} is not {kinds}"]
    if isinstance(value, str):
        if "pattern" in schema and not re.search(schema["pattern"], value):
            found.append(f"{path}: {value!r} does not match {schema['pattern']}")
        if len(value) > schema.get("maxLength", len(value)):
            found.append(f"{path}: longer than {schema['maxLength']}")
    number = isinstance(value, int | float) and not isinstance(value, bool)
    if number and not schema.get("minimum", value) <= value <= schema.get("maximum", value):
        found.append(f"{path}: {value} out of range")
    if isinstance(value, list):
        found += _array(value, schema, document, path)
    if isinstance(value, dict):
        found += _object(value, schema, document, path)
    return found


def _array(value: list[Any], schema: Any, document: Mapping[str, Any], path: str) -> list[str]:
    """:func:`problems` of an array: its length and its items."""
    found: list[str] = []
    if not schema.get("minItems", 0) <= len(value) <= schema.get("maxItems", len(value)):
        found.append(f"{path}: {len(value)} items")
    items = schema.get("items")
    if isinstance(items, list):
        for n, (item, sub) in enumerate(zip(value, items, strict=False)):
            found += problems(item, sub, document, f"{path}[{n}]")
    elif items is not None:
        for n, item in enumerate(value):
            found += problems(item, items, document, f"{path}[{n}]")
    return found


def _object(
    value: dict[Any, Any], schema: Any, document: Mapping[str, Any], path: str
) -> list[str]:
    """:func:`problems` of an object: required, known and other keys."""
    found = [
        f"{path}: {key!r} is missing" for key in schema.get("required", ()) if key not in value
    ]
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not isinstance(key, str):
            found.append(f"{path}: key {key!r} is not a string")
        elif key in properties:
            found += problems(item, properties[key], document, f"{path}.{key}")
        else:
            found += problems(item, extra, document, f"{path}.{key}")
        if "propertyNames" in schema:
            found += problems(key, schema["propertyNames"], document, f"{path} key")
    return found


def _is(value: Any, kind: str, form: str | None) -> bool:
    """Whether ``value`` (as msgpack unpacks it) is of JSON Schema type ``kind``."""
    match kind:
        case "null":
            return value is None
        case "boolean":
            return type(value) is bool
        case "integer":
            return type(value) is int
        case "number":
            return type(value) in (int, float)
        case "string":
            return type(value) is (bytes if form == "binary" else str)
        case "array":
            return type(value) is list
        case "object":
            return type(value) is dict
    raise ValueError(f"unknown type {kind!r}")


def _same(a: Any, b: Any) -> bool:
    """Equal and of the same type (``True`` is not ``1`` here)."""
    return type(a) is type(b) and a == b


def schema(document: Mapping[str, Any], name: str) -> dict[str, Any]:
    """The component schema ``name``."""
    found: dict[str, Any] = document["components"]["schemas"][name]
    return found


def fits(value: Any, name: str, document: Mapping[str, Any]) -> None:
    """Assert that ``value`` fits the component schema ``name``."""
    wrong = problems(value, schema(document, name), document)
    assert not wrong, f"{name}: " + "; ".join(wrong[:5])


# -- values of every field, from the type hints ---------------------------------------------


def example(hint: Any, rich: bool) -> Any:
    """A value of type ``hint``: ``rich`` fills optional values and containers, else leaves
    them empty or nil (the two cover both branches of every optional field)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    simple = {str: "x", int: 7, float: 1.5, bool: True, bytes: b"\x01\x02"}
    if hint in simple:
        return simple[hint]
    if hint is None or hint is type(None):
        return None
    if origin is typing.Literal:
        return args[-1] if rich else args[0]
    if origin in (typing.Union, types.UnionType):
        members = [a for a in args if a is not type(None)]
        if not rich and len(members) < len(args):
            return None
        return example(members[0], rich)
    if origin in (tuple, list, Sequence):
        return (example(args[0], rich),) if rich else ()
    if isinstance(origin, type) and issubclass(origin, Mapping):
        return {"k": example(args[1], rich)} if rich else {}
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        hints = typing.get_type_hints(hint)
        return hint(**{f.name: example(hints[f.name], rich) for f in dataclasses.fields(hint)})
    raise TypeError(f"no example of {hint!r}")


def event_of(cls: type[Event], rich: bool) -> Event:
    """An event of ``cls`` with :func:`example` values."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)  # type: ignore[arg-type]
    return cls(**{f.name: example(hints[f.name], rich) for f in fields})


MOMENT = datetime(2024, 11, 25, 13, 26, 40, 123456, tzinfo=UTC)


def envelope_of(event: Event, first: bool) -> Envelope:
    """``event`` in an envelope as a command's first event (authorization, fingerprint) or not."""
    return Envelope(
        event,
        "session-1",
        "e" * 32,
        "command-1",
        "correlation-1",
        MOMENT,
        "bot-1" if first else None,
        None,
        hashlib.sha256(b"the previous event").digest() if first else b"",
        Authorization("cursor.move", ("axis.a",), ("s1",), 3) if first else None,
        b"",
        "alice@BOTS" if first else None,
        b"\x05" * FINGERPRINT_BYTES if first else b"",
    )


def stored(envelope: Envelope) -> dict[str, Any]:
    """The msgpack map the codec stores for ``envelope``."""
    raw: dict[str, Any] = msgpack.unpackb(CODEC.encode(envelope), raw=False)
    return raw


def every_event() -> Iterator[Envelope]:
    """Two envelopes per registered event type: a rich first event, a minimal later one."""
    for cls in EVENTS.types().values():
        for rich in (True, False):
            yield envelope_of(event_of(cls, rich), first=rich)


# -- the tests ----------------------------------------------------------------------------------


def test_asyncapi_document_is_current() -> None:
    written = DOCUMENT.read_text(encoding="utf-8") if DOCUMENT.exists() else ""
    generated = asyncapi.generate()
    if written != generated:
        pytest.fail(
            f"docs/asyncapi.yaml is not what the code describes "
            f"({asyncapi._difference(written, generated)}): "
            "run `python -m plantangenet.cli.asyncapi`"
        )


def test_check_mode_fails_on_a_stale_file_and_passes_on_a_current_one(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = tmp_path / "asyncapi.yaml"
    assert asyncapi.main(["--check", str(path)]) == 1
    assert "is missing" in capsys.readouterr().err
    assert asyncapi.main([str(path)]) == 0
    assert asyncapi.main(["--check", str(path)]) == 0
    path.write_text(path.read_text().replace("session.attach", "session.join"))
    assert asyncapi.main(["--check", str(path)]) == 1
    error = capsys.readouterr().err
    assert "out of date" in error and "python -m plantangenet.cli.asyncapi" in error


def test_document_parses_as_asyncapi_3(built: dict[str, Any], committed: dict[str, Any]) -> None:
    assert committed == built  # what the reader reads is what the generator meant
    assert committed["asyncapi"] == "3.0.0"
    assert DOCUMENT.read_text().splitlines()[3] == "asyncapi: 3.0.0"
    assert {"info", "channels", "operations", "components"} <= committed.keys()


def test_pyyaml_reads_the_document_as_the_generator_meant_it(built: dict[str, Any]) -> None:
    # Only this check needs PyYAML (not a dependency): the reader above runs always.
    yaml = pytest.importorskip("yaml", reason="PyYAML is not installed: the reader above checked")
    assert yaml.safe_load(DOCUMENT.read_text(encoding="utf-8")) == built


def test_every_reference_resolves(committed: dict[str, Any]) -> None:
    def references(value: Any) -> Iterator[str]:
        """Every ``$ref`` in ``value``."""
        if isinstance(value, dict):
            for key, item in value.items():
                if key == "$ref":
                    yield item
                else:
                    yield from references(item)
        elif isinstance(value, list):
            for item in value:
                yield from references(item)

    refs = set(references(committed))
    assert len(refs) > 100
    for ref in refs:
        target: Any = committed
        for part in ref.removeprefix("#/").split("/"):
            assert isinstance(target, dict) and part in target, f"{ref} resolves to nothing"
            target = target[part]
    for operation in committed["operations"].values():
        assert operation["action"] in ("send", "receive")


def test_document_names_every_command_error_code_and_event_version(
    committed: dict[str, Any],
) -> None:
    schemas = committed["components"]["schemas"]
    messages = committed["components"]["messages"]
    for name in [*protocol.COMMANDS, *protocol.QUERIES, protocol.BATCH]:
        channel = committed["channels"][f"cmd.{name}"]
        assert channel["address"] == protocol.command_subject("{session_id}", name)
        assert f"request.{name}" in messages
        assert "reply" in committed["operations"][f"send.{name}"]
    for name, cls in protocol.COMMANDS.items():
        arguments = {f.name for f in protocol.wire_fields(cls)}
        assert set(schemas[f"args.{name}"]["properties"]) == arguments
        action, _ = request_of(asyncapi_schemas._placeholder(cls))
        assert messages[f"request.{name}"]["x-authorization"]["action"] == action

    codes = schemas["ErrorCode"]["enum"]
    assert codes == sorted(set(codes))
    assert set(protocol.ERROR_CLASSES) <= set(codes)
    assert {cls.code for cls in asyncapi.error_classes()} == set(codes)
    assert "idempotency_conflict" in codes and "error" in codes
    assert [entry["const"] for entry in schemas["ErrorCode"]["oneOf"]] == codes

    assert schemas["EventType"]["enum"] == sorted(EVENTS.types())
    for type_name, event in EVENTS.types().items():
        current = schemas[f"event.{type_name}.v{event.version}"]
        assert current["x-current"] is True
        fields = dataclasses.fields(event)  # type: ignore[arg-type]
        assert list(current["properties"]) == [f.name for f in fields]
        for version in range(1, event.version):
            try:
                EVENTS.upcast(type_name, version, {})
            except PlantangenetError:
                readable = False  # no upcaster chain from this version
            except Exception:
                readable = True  # an upcaster ran (and disliked the empty data)
            else:
                readable = True
            assert (f"event.{type_name}.v{version}" in schemas) == readable
    assert schemas["event.PolicyChanged.v1"]["x-upcast-by"].endswith("_v1_to_v2")


def test_stored_envelope_keys_are_exactly_the_documented_ones(committed: dict[str, Any]) -> None:
    envelope = schema(committed, "Envelope")
    documented = set(envelope["properties"])
    for first in (True, False):
        raw = stored(envelope_of(event_of(EVENTS.types()["CursorMoved"], first), first))
        assert set(raw) == documented, "the codec writes keys the document does not describe"
        assert raw["f"] == ENVELOPE_FORMAT
    by_format = {case["if"]["properties"]["f"]["const"]: case["then"] for case in envelope["allOf"]}
    assert set(envelope["required"]) | set(by_format[ENVELOPE_FORMAT]["required"]) == documented
    # The units: `at` counts microseconds since the epoch, and says so.
    raw = stored(envelope_of(event_of(EVENTS.types()["CursorMoved"], True), True))
    assert raw["at"] == int(MOMENT.timestamp()) * 1_000_000 + MOMENT.microsecond
    assert "microseconds" in envelope["properties"]["at"]["x-unit"]
    assert "**microseconds**" in envelope["properties"]["at"]["description"]
    assert "SHA-256" in envelope["properties"]["p"]["description"]
    # Each documented key names the codec's own field for it.
    for key, field in envelope_layout._ENVELOPE_FIELDS.items():
        assert envelope["properties"][key]["x-field"] == field


def test_every_event_the_codec_stores_fits_the_document(committed: dict[str, Any]) -> None:
    count = 0
    for envelope in every_event():
        raw = stored(envelope)
        fits(raw, "StoredEvent", committed)
        assert CODEC.decode(msgpack.packb(raw, use_bin_type=True)) == envelope
        count += 1
    assert count == 2 * len(EVENTS.types())
    # Format 2 (no revision) and format 1 (no principal, no fingerprint either) are
    # described too; format 3 needs all three, format 2 the principal and fingerprint.
    raw = stored(next(every_event()))
    v2 = {k: v for k, v in raw.items() if k != "n"} | {"f": 2}
    v1 = {k: v for k, v in v2.items() if k not in ("u", "k")} | {"f": 1}
    fits(v2, "StoredEvent", committed)
    fits(v1, "StoredEvent", committed)
    statement = schema(committed, "StoredEvent")
    assert problems({**raw, "f": 1}, statement, committed)
    assert problems({**raw, "f": 2}, statement, committed)
    assert problems(v1 | {"f": 2}, statement, committed)
    assert problems(v2 | {"f": ENVELOPE_FORMAT}, statement, committed)


def test_the_checker_refuses_what_the_codec_would_not_write(committed: dict[str, Any]) -> None:
    stored_event = schema(committed, "StoredEvent")
    raw = stored(envelope_of(event_of(EVENTS.types()["CursorMoved"], True), True))
    assert not problems(raw, stored_event, committed)
    assert problems({**raw, "x": 1}, stored_event, committed)  # an unknown key
    assert problems({**raw, "at": 1.5}, stored_event, committed)  # time as a float
    assert problems({**raw, "p": "text"}, stored_event, committed)  # str, not bin
    assert problems({**raw, "t": "NoSuchEvent"}, stored_event, committed)
    assert problems({**raw, "d": {**raw["d"], "start": "soon"}}, stored_event, committed)
    assert problems({**raw, "d": {**raw["d"], "colour": "red"}}, stored_event, committed)
    without = {k: v for k, v in raw["d"].items() if k != "cursor_id"}
    assert problems({**raw, "d": without}, stored_event, committed)


def test_requests_fit_the_document_exactly_when_the_service_decodes_them(
    committed: dict[str, Any],
) -> None:
    for name, cls in protocol.COMMANDS.items():
        hints = typing.get_type_hints(cls)
        fields = protocol.wire_fields(cls)
        for rich in (True, False):
            args = {f.name: example(hints[f.name], rich) for f in fields}
            request = msgpack.unpackb(
                protocol.encode_request(
                    args, command_id="c-1", issued_by="bot-1", context={"region": "north"}
                )
            )
            fits(request, f"request.{name}", committed)
            protocol.decode_request(name, msgpack.packb(request), session_id="s-1")
        for missing in schema(committed, f"args.{name}").get("required", ()):
            request = protocol.request_map(
                {f.name: example(hints[f.name], True) for f in fields if f.name != missing},
                command_id="c-1",
            )
            assert problems(request, schema(committed, f"request.{name}"), committed)
            with pytest.raises(InvalidCommand, match=missing):
                protocol.decode_request(name, msgpack.packb(request), session_id="s-1")
        unknown = protocol.request_map({"no_such_field": 1}, command_id="c-1")
        assert problems(unknown, schema(committed, f"request.{name}"), committed)
        with pytest.raises(InvalidCommand):
            protocol.decode_request(name, msgpack.packb(unknown))
    history = {"v": 1, "from": 3, "max": 10}
    fits(history, "request.history", committed)
    assert protocol.decode_history(msgpack.packb(history)) == (3, 10)
    assert problems({"v": 1, "max": 0}, schema(committed, "request.history"), committed)
    batch = msgpack.unpackb(
        protocol.encode_batch(
            [
                ("attach", protocol.request_map({"agent_id": "a"}, command_id="c-1")),
                ("end", protocol.request_map({}, command_id="c-2")),
            ]
        )
    )
    fits(batch, "request.batch", committed)
    assert all(not isinstance(c, Exception) for c in protocol.decode_batch(msgpack.packb(batch)))
    batch["commands"][0]["cmd"] = "query_cursor"  # not batchable
    assert problems(batch, schema(committed, "request.batch"), committed)


def test_replies_fit_the_document(committed: dict[str, Any]) -> None:
    events = [envelope_of(event_of(cls, True), True) for cls in EVENTS.types().values()]
    events = [e.stored_at(n) for n, e in enumerate(events, 1)]
    sample = Sample("ocean.temp", 1.0, None, {"depth": 3})
    result = CommandResult("c-1", "session-1", tuple(events[:2]), samples=(sample,))
    ok = msgpack.unpackb(protocol.ok_reply(result))
    fits(ok, "reply.ok", committed)
    assert set(ok) == set(schema(committed, "reply.ok")["properties"])  # samples included
    assert set(sample.to_dict()) == {f.name for f in dataclasses.fields(Sample)}
    plain_ok = msgpack.unpackb(protocol.ok_reply(CommandResult("c-1", "s", tuple(events[:1]))))
    fits(plain_ok, "reply.ok", committed)

    for code, cls in protocol.ERROR_CLASSES.items():
        error = protocol.error_from({"code": code, "message": "m" * 3000, "field": "f", "seq": 9})
        assert type(error) is cls
        reply = msgpack.unpackb(protocol.error_reply(error))
        fits(reply, "reply.error", committed)
        assert set(reply["error"]) == set(schema(committed, "Error")["properties"])
    fits(msgpack.unpackb(protocol.error_reply(ValueError("boom"))), "reply.error", committed)

    batch = msgpack.unpackb(protocol.batch_reply([result, InvalidCommand("bad")]))
    fits(batch, "reply.batch", committed)

    pages = [(e.sequence or 0, CODEC.encode(e)) for e in events]
    history = msgpack.unpackb(protocol.history_reply(pages, len(pages), True), raw=False)
    fits(history, "reply.history", committed)
    for _, data in history["events"]:
        fits(msgpack.unpackb(data, raw=False), "StoredEvent", committed)

    state = SessionState("session-1")
    seen: set[str] = set()
    for n, envelope in enumerate([None, *every_event()]):
        if envelope is not None:
            state = evolve(state, envelope.stored_at(n))
        reply = msgpack.unpackb(protocol.data_reply({"state": plain(state)}))
        fits(reply, "reply.state", committed)
        seen |= {key for key, value in reply["state"].items() if value}
    assert {"agents", "cursors", "policy", "identity", "chems", "balances", "owners"} <= seen
    assert problems(
        {"v": 1, "ok": True, "state": {**plain(state), "extra": 1}},
        schema(committed, "reply.state"),
        committed,
    )


def test_headers_the_document_names_are_the_codes(committed: dict[str, Any]) -> None:
    source = "\n".join(
        p.read_text() for p in (ROOT / "plantangenet").rglob("*.py") if p.name != "asyncapi.py"
    )
    headers = {
        header
        for name in ("RequestHeaders", "LiveHeaders", "AppendHeaders")
        for header in schema(committed, name)["properties"]
    }
    assert {"Nats-Msg-Id", "Nats-Last-Sequence", "Nats-Request-Info"} <= headers
    for header in headers:
        assert header in source, f"{header} is not named by the code"
    msg_id = schema(committed, "AppendHeaders")["properties"]["Nats-Msg-Id"]["description"]
    assert "`<session_id>:<principal>:<command_id>:<index>`" in msg_id


def test_protocol_md_gives_each_commands_action_and_links_the_document() -> None:
    text = PROTOCOL_MD.read_text(encoding="utf-8")
    assert "asyncapi.yaml" in text
    for name, cls in protocol.COMMANDS.items():
        action, _ = request_of(asyncapi_schemas._placeholder(cls))
        assert f"`{name}`" in text and f"`{action}`" in text, name
    for phrase in ("idempotency_conflict", "Nats-Last-Sequence", "`more: false`", "`kind`"):
        assert phrase in text


def test_yaml_scalars_read_back_as_written() -> None:
    tricky = [
        "yes",
        "No",
        "null",
        "~",
        "1.0",
        "3.0.0",
        "007",
        "-x",
        "a: b",
        "a #b",
        "#x",
        '"q"',
        "back\\slash",
        "tab\there",
        "é…\u2028\U0001f600",
        "",
        " lead",
        "trail ",
        "$ref",
        "it's",
        "on",
        "Off",
        "1e3",
        "0x1F",
        "12:30",
        ".inf",
        "2024-01-01",
        "<<",
        "[a]",
        "{a}",
        "|",
        "1.2.3.4",
    ]
    for value in [*tricky, 0, -3, 1.5, 1e-9, 2.0e16, True, False, None]:
        data = {"k": value, "l": [value], "m": [{"k": value}], "n": [[value]]}
        assert parse_yaml(asyncapi.render(data)) == data, value
    block = "first line\n\n  indented\nlast"
    text = asyncapi.render({"k": block, "l": [block]})
    assert "k: |-" in text
    assert parse_yaml(text) == {"k": block, "l": [block]}
    with pytest.raises(ValueError):
        asyncapi.scalar(float("nan"))
