"""Persistent maps for the folds: an update shares structure instead of copying.

A fold's state is immutable, so every event that changes a map used to copy it
whole: linear in the map's size per event, quadratic over a session's life.
:class:`FrozenMap` is an immutable mapping over a hash array mapped trie
(``immutables.Map``, the structure behind :mod:`contextvars`): :meth:`FrozenMap.set`
and :meth:`FrozenMap.delete` return a new map in O(log n) that shares all but one
path of nodes with the old one, which is left as it was.

A :class:`FrozenMap` is an ordinary read-only :class:`collections.abc.Mapping`:
it compares equal to any mapping with the same items (a ``dict``, a
``MappingProxyType``, another ``FrozenMap``), and ``dict(frozen_map)`` copies it.
It iterates in key order (a trie has no insertion order, and its hash order
changes from one process to the next: sorted, what a state lists is the same
in every run), or in hash order if its keys cannot be ordered.

The folds publish a state's maps as ``MappingProxyType(frozen_map)``, as they
published ``MappingProxyType(dict)`` before; :func:`frozen` recovers the
``FrozenMap`` behind such a view in O(1) (``mappingproxy.copy()`` returns the
underlying map's ``copy()``, and a ``FrozenMap``, never changing, is its own copy),
and builds one, once, from any other mapping.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterable, Iterator, Mapping, ValuesView
from operator import itemgetter
from types import MappingProxyType
from typing import Any, TypeVar, overload

from immutables import Map

K = TypeVar("K")
V = TypeVar("V")
D = TypeVar("D")


class FrozenMap(Mapping[K, V]):
    """An immutable mapping whose updates (:meth:`set`, :meth:`delete`,
    :meth:`update`) return a new map sharing structure with this one."""

    __slots__ = ("_map",)

    _map: Map[K, V]

    def __init__(self, items: Mapping[K, V] | Iterable[tuple[K, V]] = ()) -> None:
        if isinstance(items, FrozenMap):
            self._map = items._map
        elif isinstance(items, Mapping) and not isinstance(items, dict | Map):
            self._map = Map(items.items())  # Map() takes dicts, maps and pairs
        else:
            self._map = Map(items)

    # -- reading (the C map's own methods, without the Mapping mixins' Python loops) --

    def __getitem__(self, key: K) -> V:
        return self._map[key]

    def __contains__(self, key: object) -> bool:
        return key in self._map

    def __iter__(self) -> Iterator[K]:
        try:
            return iter(sorted(self._map))  # type: ignore[type-var]
        except TypeError:  # keys that cannot be ordered
            return iter(self._map)

    def __len__(self) -> int:
        return len(self._map)

    @overload
    def get(self, key: K, /) -> V | None: ...
    @overload
    def get(self, key: K, /, default: V | D) -> V | D: ...
    def get(self, key: K, /, default: object = None) -> object:
        return self._map.get(key, default)

    def items(self) -> ItemsView[K, V]:
        return _Items(self)

    def values(self) -> ValuesView[V]:
        return _Values(self)

    def __eq__(self, other: object) -> bool:
        if type(other) is MappingProxyType:  # as a state publishes a map
            other = other.copy()  # the FrozenMap behind it (itself), or a dict's copy
        if isinstance(other, FrozenMap):
            return self._map is other._map or self._map == other._map
        if not isinstance(other, Mapping):
            return NotImplemented
        mine = self._map
        if len(mine) != len(other):
            return False
        missing = _MISSING
        for key, value in other.items():
            held = mine.get(key, missing)
            if held is missing or not (held == value):
                return False
        return True

    __hash__ = None  # type: ignore[assignment]  # equal to dicts, which are unhashable

    def __repr__(self) -> str:
        return f"FrozenMap({dict(_sorted_items(self._map))!r})"

    def __reduce__(self) -> tuple[type[FrozenMap[K, V]], tuple[dict[K, V]]]:
        return (type(self), (dict(self._map.items()),))

    def copy(self) -> FrozenMap[K, V]:
        """This map: it never changes, so it is its own copy (as a tuple is)."""
        return self

    # -- updating: a new map, this one unchanged --------------------------------------

    def set(self, key: K, value: V) -> FrozenMap[K, V]:
        """This map with ``key`` set to ``value``."""
        new: FrozenMap[K, V] = _new(FrozenMap)  # the fold's hot path: no __init__
        new._map = self._map.set(key, value)
        return new

    def delete(self, key: K) -> FrozenMap[K, V]:
        """This map without ``key`` (itself if it has no ``key``)."""
        if key not in self._map:
            return self
        new: FrozenMap[K, V] = _new(FrozenMap)
        new._map = self._map.delete(key)
        return new

    def update(
        self, changed: Mapping[K, V] | Iterable[tuple[K, V]] = (), removed: Iterable[K] = ()
    ) -> FrozenMap[K, V]:
        """This map without the keys in ``removed``, then with the items of ``changed``."""
        mutation = self._map.mutate()
        for key in removed:
            mutation.pop(key, None)
        pairs = changed.items() if isinstance(changed, Mapping) else changed
        for key, value in pairs:
            mutation[key] = value
        new: FrozenMap[K, V] = _new(FrozenMap)
        new._map = mutation.finish()
        return new


class _Items(ItemsView[K, V]):
    __slots__ = ()
    _mapping: FrozenMap[K, V]

    def __iter__(self) -> Iterator[tuple[K, V]]:
        return iter(_sorted_items(self._mapping._map))


class _Values(ValuesView[V]):
    __slots__ = ()
    _mapping: FrozenMap[Any, V]

    def __iter__(self) -> Iterator[V]:
        return (value for _, value in _sorted_items(self._mapping._map))


def _sorted_items(inner: Map[K, V]) -> list[tuple[K, V]]:
    """``inner``'s items in key order (in hash order if its keys cannot be ordered)."""
    try:
        return sorted(inner.items(), key=_KEY)
    except TypeError:
        return list(inner.items())


_KEY = itemgetter(0)


_MISSING: Any = object()
_new = object.__new__

#: The empty map (shared: it never changes).
EMPTY: FrozenMap[Any, Any] = FrozenMap()
#: ``MappingProxyType(EMPTY)``: the published form of an empty map.
EMPTY_VIEW: Mapping[Any, Any] = MappingProxyType(EMPTY)


def frozen(mapping: Mapping[K, V]) -> FrozenMap[K, V]:
    """The :class:`FrozenMap` behind ``mapping`` (a view the folds published, or the
    map itself) in O(1); or, for any other mapping, one built from it (O(n), once)."""
    if type(mapping) is MappingProxyType:
        inner: object = mapping.copy()  # a FrozenMap's copy() is itself, in O(1)
        if type(inner) is FrozenMap:
            return inner
        return FrozenMap(mapping)  # a view of another mapping
    if type(mapping) is FrozenMap:
        return mapping
    return FrozenMap(mapping)


#: ``view(frozen_map)``: a map as a state publishes it, a read-only ``MappingProxyType``.
view = MappingProxyType
