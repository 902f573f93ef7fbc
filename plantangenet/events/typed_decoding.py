"""Envelopes and events decoded straight into their types, checked in C (msgspec).

Reading a log decodes every stored message. The codec's complete path
(:meth:`~plantangenet.events.codec.EventCodec.decode`) unpacks the msgpack map
into Python dicts, checks each value in Python and builds the objects; this
module gives it a *typed* path for the common case: a current-format envelope
of a current-version event whose fields all have annotations msgspec checks
exactly as the field converters of :mod:`plantangenet.events.fields` do. The
msgpack bytes go to a msgspec decoder for the envelope (the event's data and
authorization left as raw msgpack) and then to one for the event's fields; both
check every value while they read it, in C.

The typed path never decides a refusal. Whatever it cannot take -- an older
format or version, an unknown type, a field annotation it does not map, or any
value it refuses -- goes to the complete path, which decodes it or raises the
:class:`~plantangenet.errors.DecodeError` naming what is wrong. So the typed
path only has to accept exactly what the complete path accepts, with equal
results, which ``tests/test_typed_decoding.py`` checks value by value and with
random payloads.

Annotations mapped (the rest: the complete path, per event type):

* ``str``, ``int``, ``bool``, ``bytes``, ``None``: the exact msgpack type (a
  bool is not an int, a str is not bytes), as ``type(v) is ...`` in the
  converters;
* ``float``: a float or an int, finite (NaN and the infinities are refused
  through bounds, which NaN fails too), as ``float(v)``;
* ``Literal[...]`` of strings, ``X | None`` and ``tuple[X, ...]`` of mapped ``X``;
* unions of several of ``str``, ``int``, ``float``, ``bool`` and ``bytes`` (each
  its own msgpack type, so the member the converters try first that accepts a
  value is the one msgspec picks), as long as ``int`` comes before ``float``
  (else the converters turn an int into a float) and msgspec takes the union
  (not ``str`` with ``bytes``: the event type then goes the complete path);
* a field annotated ``Mapping[str, X]`` (no default), handed out as a read-only
  view as the converters do.

Not mapped: nested dataclasses (value objects such as policy statements), maps
inside other values, and other unions.
"""

from __future__ import annotations

import dataclasses
import sys
import types
import typing
from collections.abc import Callable, Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal

import msgspec

from plantangenet.events.slots import slot_builder

__all__ = ["envelope_decoder", "fields_checker", "fields_decoder", "typed_annotation"]

#: A finite float: bounds NaN and the infinities fail (as ``math.isfinite`` in the converters).
_FINITE = Annotated[float, msgspec.Meta(ge=-sys.float_info.max, le=sys.float_info.max)]
_SCALARS: dict[Any, Any] = {
    str: str,
    int: int,
    bool: bool,
    bytes: bytes,
    float: _FINITE,
    type(None): None,
    None: None,
}
_UNMAPPED = object()
#: The types a union may hold and still be mapped (each its own msgpack type).
_UNION_MEMBERS = (str, int, float, bool, bytes)


def typed_annotation(tp: Any) -> Any:
    """The msgspec annotation that accepts exactly what ``tp``'s converter accepts,
    with the same value, or ``_UNMAPPED``."""
    try:
        if tp in _SCALARS:
            return _SCALARS[tp]
    except TypeError:  # an unhashable annotation object
        return _UNMAPPED
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if origin is Literal:
        return tp if args and all(type(a) is str for a in args) else _UNMAPPED
    if origin in (typing.Union, types.UnionType):
        others = [a for a in args if a is not type(None)]
        if len(others) == 1:
            inner = typed_annotation(others[0])
            return _UNMAPPED if inner is _UNMAPPED else inner | None
        # Several types: the converter takes the first that accepts the value; msgspec,
        # the one of the value's own msgpack type. The same while the members are plain
        # types of distinct msgpack types, and an int stays an int (int before float).
        if any(a not in _UNION_MEMBERS for a in others) or (
            float in others and int in others and others.index(float) < others.index(int)
        ):
            return _UNMAPPED
        members = tuple(_SCALARS[a] for a in args)
        return typing.Union[members]  # noqa: UP007 (built at run time)
    if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
        item = typed_annotation(args[0])
        return _UNMAPPED if item is _UNMAPPED else tuple[item, ...]  # type: ignore[valid-type]
    return _UNMAPPED


def _map_annotation(tp: Any) -> Any:
    """``dict[str, X]`` for a field annotated ``Mapping[str, X]`` with ``X`` mapped (the
    decoder hands the dict out as a read-only view), or ``_UNMAPPED``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) not in (Mapping, dict) or len(args) != 2 or args[0] is not str:
        return _UNMAPPED
    item = typed_annotation(args[1])
    return _UNMAPPED if item is _UNMAPPED else dict[str, item]  # type: ignore[valid-type]


def fields_decoder(cls: type, hints: dict[str, Any]) -> Callable[[Any], Any] | None:
    """``decode(raw msgpack of the fields) -> event`` for dataclass ``cls``, or ``None``
    when one of its fields has an annotation :func:`typed_annotation` does not map (or
    fields the class is not built from positionally).

    The decoder raises ``msgspec`` errors for anything it refuses (a field missing,
    unknown or mistyped): the caller's complete path then decides.
    """
    made = _fields_struct(cls, hints)
    if made is None:
        return None
    decode, maps = made
    values = msgspec.structs.astuple
    build: Callable[..., Any] = slot_builder(cls)

    if maps:
        viewed = tuple(maps)

        def decode_fields(raw: Any) -> Any:
            decoded = list(values(decode(raw)))
            for i in viewed:
                decoded[i] = MappingProxyType(decoded[i])
            return build(*decoded)

    else:

        def decode_fields(raw: Any) -> Any:
            return build(*values(decode(raw)))

    decode_fields.__qualname__ = decode_fields.__name__ = f"decode_{cls.__name__}"
    return decode_fields


def fields_checker(cls: type, hints: dict[str, Any]) -> Callable[[Any], Any] | None:
    """``check(raw msgpack of the fields) -> struct`` for dataclass ``cls``: every value
    checked as :func:`fields_decoder`'s decoder checks it, the event itself not built
    (the struct has the event's fields as attributes, with the same values). ``None``
    where :func:`fields_decoder` gives ``None``, and for a class with map fields (the
    struct would hold them as dicts, not the event's read-only views)."""
    made = _fields_struct(cls, hints)
    return None if made is None or made[1] else made[0]


def _fields_struct(
    cls: type, hints: dict[str, Any]
) -> tuple[Callable[[Any], Any], list[int]] | None:
    """A msgspec decoder of ``cls``'s stored fields into a struct, and the positions of
    its map fields; ``None`` where the typed path does not apply (see :func:`fields_decoder`)."""
    fields = dataclasses.fields(cls)
    if any(not f.init or f.kw_only is True for f in fields):
        return None
    spec: list[tuple[str, Any, Any]] = []
    maps: list[int] = []  # the fields handed out as read-only views, as the converters do
    for i, f in enumerate(fields):
        annotation = _map_annotation(hints[f.name])
        if annotation is not _UNMAPPED:
            if f.default is not dataclasses.MISSING or f.default_factory is not dataclasses.MISSING:
                return None  # a default map stays as the class made it: not a view of it
            maps.append(i)
        else:
            annotation = typed_annotation(hints[f.name])
        if annotation is _UNMAPPED:
            return None
        if f.default is not dataclasses.MISSING:
            default: Any = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = msgspec.field(default_factory=f.default_factory)
        else:
            default = msgspec.NODEFAULT
        spec.append((f.name, annotation, default))
    try:
        stored = msgspec.defstruct(
            f"Stored{cls.__name__}",
            spec,
            kw_only=True,  # fields keep the class's order; defaults may come anywhere
            forbid_unknown_fields=True,
        )
        decode = msgspec.msgpack.Decoder(stored).decode
    except TypeError:  # a combination msgspec does not take (e.g. ``str | bytes``)
        return None
    if tuple(stored.__struct_fields__) != tuple(f.name for f in fields):
        return None
    return decode, maps


def envelope_decoder(max_principal: int, fingerprint_bytes: int) -> Callable[[Any], Any]:
    """``decode(payload) -> stored envelope``: a format-3 envelope as stored (see
    :mod:`plantangenet.events.codec`), every value checked -- the principal's and the
    fingerprint's limits and a positive revision too -- with the event's data (``d``)
    and the authorization (``z``) left as raw msgpack for the codec. Raises ``msgspec``
    errors for anything else (an older format among them: keys missing)."""
    stored = msgspec.defstruct(
        "StoredEnvelope",
        [
            ("f", int),
            ("t", str),
            ("v", int),
            ("id", str),
            ("s", str),
            ("a", str | None),
            ("c", str),
            ("r", str),
            ("at", int),
            ("p", bytes),
            ("z", msgspec.Raw),
            ("u", Annotated[str, msgspec.Meta(max_length=max_principal)] | None),
            ("k", Annotated[bytes, msgspec.Meta(max_length=fingerprint_bytes)]),
            ("n", Annotated[int, msgspec.Meta(ge=1)] | None),
            ("d", msgspec.Raw),
        ],
        forbid_unknown_fields=True,
    )
    decode: Callable[[Any], Any] = msgspec.msgpack.Decoder(stored).decode
    return decode
