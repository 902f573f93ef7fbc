"""Type hints as JSON Schema, and docstrings as markdown, for the AsyncAPI document.

:class:`Schemas` turns the code's type hints (commands' fields, events' fields,
dataclasses) into JSON Schema components; :func:`markdown` turns docstrings into the
document's descriptions; :func:`error_classes`, :func:`readable_versions` and
:func:`authorization_of` read the code's registries. Used by :mod:`plantangenet.cli.asyncapi`.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import pkgutil
import re
import types
import typing
from collections.abc import Callable, Iterator, Mapping, Sequence
from datetime import datetime
from typing import Any

import plantangenet
from plantangenet.domain import commands as c
from plantangenet.domain.authorize import request_of
from plantangenet.errors import PlantangenetError
from plantangenet.events.base import EventRegistry
from plantangenet.wire import protocol

#: Placeholder item names for a command's list fields (for the authorization patterns).
_ITEM_NAMES = {"axes": "axis"}


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


_SCALARS: dict[Any, str] = {str: "string", int: "integer", float: "number", bool: "boolean"}


_NONE: dict[str, Any] = {"type": "null"}


class Schemas:
    """Turns type hints into JSON Schema, collecting dataclasses as component schemas.

    :param plain: describe values as :func:`plantangenet.projections.views.plain` renders them (the
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
