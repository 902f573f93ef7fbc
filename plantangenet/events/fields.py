"""Typed conversion between event field values and msgpack primitives.

Decoding never trusts its input: every value read from the log is checked
against the field's annotation, and a mismatch raises
:class:`~plantangenet.errors.DecodeError` naming the field. Converters are
compiled once per event type, so the replay hot path does no introspection.

Supported annotations: ``str``, ``int``, ``float``, ``bool``, ``bytes``,
``None``, ``Literal[...]`` of strings, unions (``X | None``),
``tuple[X, ...]``, ``Mapping[str, X]``, and frozen dataclasses of those
(value objects such as policy statements, stored as maps).
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from collections.abc import Callable, Mapping
from typing import Any

from plantangenet.errors import DecodeError, EncodeError
from plantangenet.events.slots import slot_builder

#: ``convert(value, path) -> value``; ``path`` names the field for errors.
Converter = Callable[[Any, str], Any]

#: Values allowed in free-form metadata mappings.
MetadataValue = str | int | float | bool | None

_NAMES = {str: "a string", int: "an integer", float: "a number", bool: "a boolean"}


def _identity(value: Any, path: str) -> Any:
    return value


def _describe(value: Any) -> str:
    return type(value).__name__


def _scalar_decoder(tp: type) -> Converter:
    if tp is float:

        def decode_float(value: Any, path: str) -> float:
            if type(value) is float or (type(value) is int):
                number = float(value)
                if math.isfinite(number):
                    return number
                raise DecodeError(f"{path}: must be a finite number", field=path)
            raise DecodeError(f"{path}: expected a number, got {_describe(value)}", field=path)

        return decode_float
    if tp is type(None):

        def decode_none(value: Any, path: str) -> None:
            if value is not None:
                raise DecodeError(f"{path}: expected nil, got {_describe(value)}", field=path)

        return decode_none

    name = _NAMES[tp]

    def decode_exact(value: Any, path: str) -> Any:
        # ``type(...) is`` rather than isinstance: a bool is not an int here.
        if type(value) is not tp:
            raise DecodeError(f"{path}: expected {name}, got {_describe(value)}", field=path)
        return value

    return decode_exact


def _scalar_encoder(tp: type) -> Converter:
    if tp is float:

        def encode_float(value: Any, path: str) -> float:
            if type(value) in (float, int):
                try:
                    number = float(value)
                except OverflowError:  # an int too large for a float
                    number = math.inf
                if math.isfinite(number):
                    return number
            raise EncodeError(f"{path}: must be a finite number, got {value!r}", field=path)

        return encode_float
    if tp is type(None):
        return _scalar_decoder(tp)
    name = _NAMES[tp]

    def encode_exact(value: Any, path: str) -> Any:
        if type(value) is not tp:
            raise EncodeError(f"{path}: expected {name}, got {_describe(value)}", field=path)
        if isinstance(value, str) and not value.isascii():  # ASCII is UTF-8 (an O(1) check)
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                raise EncodeError(f"{path}: not encodable as UTF-8", field=path) from None
        return value

    return encode_exact


def _union(
    members: tuple[Converter, ...],
    error: type[DecodeError] | type[EncodeError],
    label: str,
    optional: bool,
) -> Converter:
    def convert(value: Any, path: str) -> Any:
        if value is None and optional:
            return None
        for member in members:
            try:
                return member(value, path)
            except (DecodeError, EncodeError):
                continue
        raise error(f"{path}: expected {label}, got {_describe(value)}", field=path)

    return convert


def _compile(tp: Any, encode: bool) -> Converter:
    error: type[DecodeError] | type[EncodeError] = EncodeError if encode else DecodeError
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if tp in _NAMES or tp is type(None) or tp is None:
        scalar = type(None) if tp is None else tp
        return _scalar_encoder(scalar) if encode else _scalar_decoder(scalar)
    if origin in (typing.Union, types.UnionType):
        label = " or ".join(getattr(a, "__name__", str(a)) for a in args)
        optional = type(None) in args
        members = tuple(_compile(a, encode) for a in args if a is not type(None))
        return _union(members, error, label, optional)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = _compile(args[0], encode)
        exact = args[0] if args[0] in (str, int, bool) else None

        def convert_tuple(value: Any, path: str) -> Any:
            if not isinstance(value, list | tuple):
                raise error(f"{path}: expected a list, got {_describe(value)}", field=path)
            if (
                exact is not None
                and set(map(type, value)) <= {exact}  # (C loops: no per-item Python call)
                and (exact is not str or not encode or "".join(value).isascii())
            ):
                return list(value) if encode else tuple(value)  # the common case, checked
            out = tuple(item(v, f"{path}[{i}]") for i, v in enumerate(value))
            return list(out) if encode else out

        return convert_tuple
    if origin in (Mapping, dict, typing.Mapping) and len(args) == 2 and args[0] is str:
        item = _compile(args[1], encode)

        def convert_mapping(value: Any, path: str) -> Any:
            if not isinstance(value, Mapping):
                raise error(f"{path}: expected a map, got {_describe(value)}", field=path)
            out: dict[str, Any] = {}
            for key, v in value.items():
                if type(key) is not str:
                    raise error(f"{path}: keys must be strings, got {_describe(key)}", field=path)
                out[key] = item(v, f"{path}.{key}")
            # Decoded events are immutable values: hand out a read-only view.
            return out if encode else types.MappingProxyType(out)

        return convert_mapping
    if origin is typing.Literal:
        allowed = frozenset(args)
        label = " or ".join(repr(a) for a in args)

        def convert_literal(value: Any, path: str) -> Any:
            if type(value) is not str or value not in allowed:
                raise error(f"{path}: expected {label}, got {value!r}", field=path)
            return value

        return convert_literal
    if tp is bytes:

        def convert_bytes(value: Any, path: str) -> Any:
            if type(value) is not bytes:
                raise error(f"{path}: expected bytes, got {_describe(value)}", field=path)
            return value

        return convert_bytes
    if dataclasses.is_dataclass(tp) and isinstance(tp, type):
        return _dataclass_converter(tp, encode, error)
    raise TypeError(f"unsupported event field annotation: {tp!r}")


def _dataclass_converter(
    cls: type, encode: bool, error: type[DecodeError] | type[EncodeError]
) -> Converter:
    """Nested value objects (frozen dataclasses) travel as maps of their fields."""
    hints = typing.get_type_hints(cls)
    fields = dataclasses.fields(cls)
    names = frozenset(f.name for f in fields)
    members = tuple((f.name, _compile(hints[f.name], encode)) for f in fields)
    required = frozenset(
        f.name
        for f in fields
        if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    )

    def convert(value: Any, path: str) -> Any:
        if encode:
            if not isinstance(value, cls):
                raise error(f"{path}: expected {cls.__name__}, got {_describe(value)}", field=path)
            return {name: conv(getattr(value, name), f"{path}.{name}") for name, conv in members}
        if type(value) is not dict:
            raise error(f"{path}: expected a map, got {_describe(value)}", field=path)
        unknown = value.keys() - names
        if unknown:
            name = sorted(map(str, unknown))[0]
            raise error(f"{path}: unknown field {name!r}", field=f"{path}.{name}")
        values = {}
        for name, conv in members:
            if name in value:
                values[name] = conv(value[name], f"{path}.{name}")
            elif name in required:
                raise error(f"{path}.{name}: missing", field=f"{path}.{name}")
        return cls(**values)

    return convert


def compile_decoder(tp: Any) -> Converter:
    """A converter that checks a msgpack value against annotation ``tp``."""
    return _compile(tp, encode=False)


def compile_encoder(tp: Any) -> Converter:
    """A converter that checks an event value and returns its msgpack form."""
    return _compile(tp, encode=True)


#: The check that lets a value of this annotation through unchanged, as Python source
#: over ``v`` (anything it refuses goes to the field's full converter).
_FAST_CHECKS = {
    str: "type(v) is str and v.isascii()",
    float: "type(v) is float and isfinite(v)",
    int: "type(v) is int",
    bool: "type(v) is bool",
    bytes: "type(v) is bytes",
}


def _fast_check(tp: Any) -> str | None:
    if tp in _FAST_CHECKS:
        return _FAST_CHECKS[tp]
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        others = [a for a in args if a is not type(None)]
        if len(others) == 1 and others[0] in _FAST_CHECKS:
            return f"v is None or ({_FAST_CHECKS[others[0]]})"
    return None


def compile_fields_encoder(
    names: tuple[str, ...], hints: Mapping[str, Any]
) -> Callable[[Any], dict[str, Any]]:
    """``encode(event) -> {field: msgpack value}`` for an event class's fields, in order.

    The same result as calling each field's :func:`compile_encoder` converter,
    generated as one function: values of the common shapes (ASCII strings,
    finite floats, ints, optional ones of those) are checked inline and pass
    unchanged; anything else goes through the field's converter, which raises
    the :class:`~plantangenet.errors.EncodeError` naming it.
    """
    namespace: dict[str, Any] = {"isfinite": math.isfinite}
    lines = ["def encode_fields(event):"]
    for i, name in enumerate(names):
        if not name.isidentifier():
            raise TypeError(f"event field {name!r} is not an identifier")
        namespace[f"c{i}"] = compile_encoder(hints[name])
        check = _fast_check(hints[name])
        lines.append(f"    v = event.{name}")
        if check is None:
            lines.append(f"    v{i} = c{i}(v, {name!r})")
        else:
            lines.append(f"    v{i} = v if {check} else c{i}(v, {name!r})")
    body = ", ".join(f"{name!r}: v{i}" for i, name in enumerate(names))
    lines.append(f"    return {{{body}}}")
    exec("\n".join(lines), namespace)  # the source is built above, from field names only
    encode_fields: Callable[[Any], dict[str, Any]] = namespace["encode_fields"]
    return encode_fields


#: As :data:`_FAST_CHECKS`, for values read from the log (any string is a string there).
_FAST_DECODE_CHECKS = {**_FAST_CHECKS, str: "type(v) is str"}


def compile_fields_decoder(
    cls: type, names: tuple[str, ...], hints: Mapping[str, Any]
) -> Callable[[dict[str, Any]], Any]:
    """``decode(data) -> event or None``: the common case of decoding an event's data, fast.

    When ``data`` holds exactly the class's fields, each value is checked
    against its annotation -- inline for the common shapes (strings, finite
    floats, ints, booleans, bytes and optional ones of those), through the
    field's :func:`compile_decoder` converter otherwise, which raises the
    :class:`~plantangenet.errors.DecodeError` naming it -- and the event is built
    from them. Anything else (a field missing, a field too many, a default to
    apply) returns ``None``: the caller's complete path decides, and names what
    is wrong. Every value still gets the full check; only the bookkeeping is
    generated once per event type instead of looped over per event.
    """
    namespace: dict[str, Any] = {"isfinite": math.isfinite, "cls": slot_builder(cls)}
    lines = ["def decode_fields(data):", f"    if len(data) != {len(names)}:"]
    lines += ["        return None", "    try:"]
    for i, name in enumerate(names):
        if not name.isidentifier():
            raise TypeError(f"event field {name!r} is not an identifier")
        lines.append(f"        r{i} = data[{name!r}]")
    lines += ["    except KeyError:", "        return None"]
    for i, name in enumerate(names):
        namespace[f"c{i}"] = compile_decoder(hints[name])
        tp = hints[name]
        check = _FAST_DECODE_CHECKS.get(tp)
        if check is None:
            args = typing.get_args(tp)
            if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
                others = [a for a in args if a is not type(None)]
                if len(others) == 1 and others[0] in _FAST_DECODE_CHECKS:
                    check = f"v is None or ({_FAST_DECODE_CHECKS[others[0]]})"
        if check is None:
            lines.append(f"    v{i} = c{i}(r{i}, {name!r})")
        else:
            lines.append(f"    v = r{i}")
            lines.append(f"    v{i} = v if {check} else c{i}(v, {name!r})")
    lines.append(f"    return cls({', '.join(f'v{i}' for i in range(len(names)))})")
    exec("\n".join(lines), namespace)  # the source is built above, from field names only
    decode_fields: Callable[[dict[str, Any]], Any] = namespace["decode_fields"]
    return decode_fields
