"""The base of every event type, and the registry that names and versions them.

An event type is a frozen, slotted dataclass decorated with
:func:`event_type`, which gives it a stable type name and a schema version
and registers it. The registry also holds *upcasters*: functions that turn
the stored data of version ``n`` of a type into version ``n + 1``. Stored
events are never rewritten; old versions are upcast when they are read.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from typing import Any, ClassVar, TypeVar, dataclass_transform

from plantangenet.errors import UnknownEventType, UnknownEventVersion
from plantangenet.events.fields import (
    Converter,
    compile_decoder,
    compile_encoder,
    compile_fields_decoder,
    compile_fields_encoder,
)


class Event:
    """Base class of all domain events.

    Subclasses are declared with :func:`event_type`; they are immutable
    values, compared by content.
    """

    __slots__ = ()

    #: The stable name under which the event is stored (never the class name
    #: by accident: renaming a class must not change history).
    type_name: ClassVar[str]
    #: The schema version of the current class.
    version: ClassVar[int]


E = TypeVar("E", bound=Event)

#: A function that turns the stored data of one version into the next.
Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


@dataclasses.dataclass(frozen=True, slots=True)
class EventSpec:
    """What the registry knows about one event type."""

    cls: type[Event]
    type_name: str
    version: int
    field_names: tuple[str, ...]
    encoders: tuple[Converter, ...]
    decoders: tuple[Converter, ...]
    required: frozenset[str]
    #: All of ``encoders`` as one call: the event's fields as msgpack values.
    encode_fields: Callable[[Any], dict[str, Any]]
    #: All of ``decoders`` as one call when the data holds exactly the class's fields
    #: (``None`` otherwise: the codec's complete path decides).
    decode_fields: Callable[[dict[str, Any]], Any]


class EventRegistry:
    """Maps stable type names to event classes, and holds upcasters."""

    def __init__(self) -> None:
        self._specs: dict[str, EventSpec] = {}
        self._by_class: dict[type[Event], EventSpec] = {}
        self._upcasters: dict[tuple[str, int], Upcaster] = {}

    def register(self, cls: type[E], type_name: str, version: int) -> type[E]:
        """Register ``cls`` as the current version of ``type_name``."""
        if not dataclasses.is_dataclass(cls):
            raise TypeError(f"{cls.__name__} must be a dataclass")
        if version < 1:
            raise ValueError("event versions start at 1")
        if type_name in self._specs and self._specs[type_name].cls is not cls:
            raise ValueError(f"event type {type_name!r} is already registered")
        hints = _type_hints(cls)
        fields = dataclasses.fields(cls)
        spec = EventSpec(
            cls=cls,
            type_name=type_name,
            version=version,
            field_names=tuple(f.name for f in fields),
            encoders=tuple(compile_encoder(hints[f.name]) for f in fields),
            decoders=tuple(compile_decoder(hints[f.name]) for f in fields),
            required=frozenset(
                f.name
                for f in fields
                if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
            ),
            encode_fields=compile_fields_encoder(tuple(f.name for f in fields), hints),
            decode_fields=compile_fields_decoder(cls, tuple(f.name for f in fields), hints),
        )
        self._specs[type_name] = spec
        self._by_class[cls] = spec
        return cls

    def add_upcaster(self, type_name: str, from_version: int, upcaster: Upcaster) -> None:
        """Register a function that turns ``from_version`` data into ``from_version + 1``."""
        key = (type_name, from_version)
        if key in self._upcasters:
            raise ValueError(f"an upcaster for {type_name} v{from_version} already exists")
        self._upcasters[key] = upcaster

    def spec_of(self, event: Event | type[Event]) -> EventSpec:
        """The spec of a registered event (instance or class)."""
        cls = event if isinstance(event, type) else type(event)
        try:
            return self._by_class[cls]
        except KeyError:
            raise UnknownEventType(f"{cls.__name__} is not a registered event type") from None

    def spec(self, type_name: str) -> EventSpec:
        """The spec registered under ``type_name``."""
        try:
            return self._specs[type_name]
        except KeyError:
            raise UnknownEventType(f"unknown event type {type_name!r}", field="type") from None

    def upcast(self, type_name: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
        """Bring stored ``data`` of ``version`` up to the current version."""
        spec = self.spec(type_name)
        if version > spec.version:
            raise UnknownEventVersion(
                f"{type_name} v{version} is newer than this code (v{spec.version})",
                field="version",
            )
        while version < spec.version:
            upcaster = self._upcasters.get((type_name, version))
            if upcaster is None:
                raise UnknownEventVersion(
                    f"no upcaster from {type_name} v{version} to v{version + 1}",
                    field="version",
                )
            data = upcaster(dict(data))
            version += 1
        return data

    def types(self) -> Mapping[str, type[Event]]:
        """All registered event classes by type name."""
        return {name: spec.cls for name, spec in self._specs.items()}


def _type_hints(cls: type) -> dict[str, Any]:
    import typing

    return typing.get_type_hints(cls)


#: The registry holding plantangenet's own events.
EVENTS = EventRegistry()


@dataclass_transform(frozen_default=True)
def event_type(
    type_name: str, version: int = 1, *, registry: EventRegistry | None = None
) -> Callable[[type[E]], type[E]]:
    """Class decorator: make ``cls`` a frozen, slotted event dataclass and register it.

    >>> @event_type("ExampleHappened", version=1, registry=EventRegistry())
    ... class ExampleHappened(Event):
    ...     what: str
    >>> ExampleHappened("x").type_name
    'ExampleHappened'
    """

    def decorate(cls: type[E]) -> type[E]:
        data_cls = dataclasses.dataclass(frozen=True, slots=True)(cls)
        data_cls.type_name = type_name
        data_cls.version = version
        return (registry or EVENTS).register(data_cls, type_name, version)

    return decorate
