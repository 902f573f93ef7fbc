"""User projections: what one is (a name, an initial state, a fold), registry, errors.

The values :mod:`plantangenet.projections.user` rebuilds with; see there for how a
rebuild keeps its checkpoint.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

import msgpack

from plantangenet.errors import ConcurrencyError, PlantangenetError
from plantangenet.events.envelope import Envelope

S = TypeVar("S")


#: The KV bucket holding checkpoints unless told otherwise.
DEFAULT_BUCKET = "plantangenet-projections"


#: The checkpoint layout written by this code.
CHECKPOINT_FORMAT = 1


#: Events folded between two checkpoints unless told otherwise.
DEFAULT_CHECKPOINT_EVERY = 1000


#: A projection name is also its KV key.
_NAME = re.compile(r"[A-Za-z0-9_-]{1,128}")


_SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,128}")


#: ``progress(session_id, sequence_reached, last_sequence_of_the_session)``
RebuildProgress = Callable[[str, int, int], None]


class ProjectionError(PlantangenetError):
    """A user-defined projection could not be found or rebuilt."""

    code = "projection_error"


class UnknownProjection(ProjectionError):
    """No projection is registered under this name."""

    code = "unknown_projection"


class CheckpointError(ProjectionError):
    """A stored checkpoint cannot be used (unreadable, of another version or
    stream, ahead of the log), or a state cannot be saved as one.

    The message names the projection and the bucket; :func:`reset` discards
    the checkpoint so the next rebuild starts from scratch.
    """

    code = "checkpoint_error"

    def __init__(self, message: str, *, projection: str, field: str | None = None) -> None:
        super().__init__(message)
        self.projection = projection
        self.field = field


class CheckpointConflict(ConcurrencyError):
    """Another rebuilder (or a reset) wrote the projection's checkpoint first.

    Nothing was saved by the loser; :attr:`expected` is the KV revision it
    expected. Rebuild again to continue from the checkpoint that won.
    """

    code = "checkpoint_conflict"

    def __init__(self, message: str, *, projection: str, expected: int) -> None:
        super().__init__(message, expected=expected)
        self.projection = projection


def _identity(value: Any) -> Any:
    return value


@dataclasses.dataclass(frozen=True, slots=True)
class Projection(Generic[S]):
    """A named fold over sessions' events, with a msgpack-serialisable state.

    :param name: stable name, also the checkpoint's KV key
        (``[A-Za-z0-9_-]{1,128}``).
    :param initial: the state before any event (never mutated: each rebuild
        from scratch starts from ``decode(encode(initial))``).
    :param fold: ``fold(state, envelope) -> state``; deterministic, no mutation.
    :param encode: state -> a msgpack-serialisable value (default: as is).
    :param decode: that value -> state (default: as is).
    :param version: bump it whenever the fold or the state's shape changes;
        checkpoints of another version are refused.
    """

    name: str
    initial: S
    fold: Callable[[S, Envelope], S]
    encode: Callable[[S], Any] = _identity
    decode: Callable[[Any], S] = _identity
    version: int = 1

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.fullmatch(self.name):
            raise ValueError(
                "a projection name must be 1-128 characters of letters, digits, '_' or '-', "
                f"got {self.name!r}"
            )
        if type(self.version) is not int or self.version < 1:
            raise ValueError(f"projection {self.name!r}: versions start at 1")
        try:
            self.fresh()
        except Exception as exc:
            raise TypeError(
                f"projection {self.name!r}: the initial state must survive "
                f"decode(msgpack(encode(initial))): {type(exc).__name__}: {exc}"
            ) from exc

    def fresh(self) -> S:
        """A new initial state, as a rebuild from scratch starts from it."""
        return self.decode(_unpack(_pack(self.encode(self.initial))))


class ProjectionRegistry:
    """Projections by name (a name is registered once)."""

    def __init__(self) -> None:
        self._by_name: dict[str, Projection[Any]] = {}

    def register(self, projection: Projection[S]) -> Projection[S]:
        """Register ``projection`` under its name; another one of that name is refused."""
        existing = self._by_name.get(projection.name)
        if existing is not None and existing is not projection:
            raise ValueError(f"a projection named {projection.name!r} is already registered")
        self._by_name[projection.name] = projection
        return projection

    def projection(
        self,
        name: str,
        initial: S,
        *,
        encode: Callable[[S], Any] = _identity,
        decode: Callable[[Any], S] = _identity,
        version: int = 1,
    ) -> Callable[[Callable[[S, Envelope], S]], Projection[S]]:
        """Decorator: register a fold function as the projection ``name``."""

        def decorate(fold: Callable[[S, Envelope], S]) -> Projection[S]:
            return self.register(Projection(name, initial, fold, encode, decode, version))

        return decorate

    def get(self, name: str) -> Projection[Any]:
        """The projection registered under ``name``."""
        try:
            return self._by_name[name]
        except KeyError:
            raise UnknownProjection(f"no projection named {name!r} is registered") from None

    def names(self) -> tuple[str, ...]:
        """Registered names, sorted."""
        return tuple(sorted(self._by_name))

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Projection[Any]]:
        return iter([self._by_name[n] for n in self.names()])

    def __len__(self) -> int:
        return len(self._by_name)


#: The default registry (used when :func:`rebuild` is given a name).
PROJECTIONS = ProjectionRegistry()


@dataclasses.dataclass(frozen=True, slots=True)
class Checkpoint(Generic[S]):
    """A projection's saved progress, as read from the KV bucket.

    ``revision`` is the KV revision it was read at (0: none was ever saved,
    or it was reset: then ``state`` is the fresh initial state).
    """

    name: str
    state: S
    positions: Mapping[str, int]
    events: int
    revision: int
    saved_at: int = 0


@dataclasses.dataclass(frozen=True, slots=True)
class RebuildResult(Generic[S]):
    """What :func:`rebuild` reached.

    ``events`` counts every event in ``state`` (this run and earlier ones);
    ``folded`` those folded by this run; ``checkpoints`` the saves it made;
    ``complete`` is false when ``stop_after`` ended it early (what was folded
    after the last checkpoint is then not saved, as after a crash).
    """

    name: str
    state: S
    positions: Mapping[str, int]
    events: int
    folded: int
    checkpoints: int
    complete: bool
    revision: int


def _pack(value: Any) -> bytes:
    packed: bytes = msgpack.packb(value, use_bin_type=True)
    return packed


def _unpack(data: bytes) -> Any:
    return msgpack.unpackb(data, raw=False, strict_map_key=False, use_list=True)
